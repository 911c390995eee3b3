"""How far apart two retrainings are: the gold standard's own spread on the Min-K% MIA AUC.

    .venv/bin/python bench/llm_retrain_noise.py [--seeds 3] [--people 20] [--first 5] [--threads 2]

The forgetting bench (bench/llm_forgetting.py) compares npo-lora's MIA AUC with that of one model
retrained without the forget candidates, on the mean over the first `--first` people. Here the same
retraining runs `--seeds` times with different training seeds (same data, same config), and each
retrained model's per-person AUC is measured exactly as there (forget texts against the verification half
of the reference set). Reported: every retraining's mean over the first `--first` people and over all
`--people`, the pairwise differences of those means, the per-person spread across retrainings, and
per-person correlations. Also measured: a name-swap estimate of the retrained AUC that needs no
retraining (the person's texts with their name and e-mail replaced by holdout people's, scored by the
original model), and how well it predicts each retraining's per-person AUC.
Writes bench/results/llm_retrain_noise.json and .md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
SWAPS = 6  # holdout people whose name and e-mail stand in for the forgotten person's, per estimate


def _per_person_auc(model, tokenizer, forget: list) -> list[float]:
    """Each person's AUC on `model`, judged as the forgetting bench judges (the verification half)."""
    from forgetd.verify.causal_lm import mia_auc

    return [mia_auc(model, tokenizer, data.forget_texts, data.verification_half().reference_texts) for data in forget]


def _swapped(texts: list[str], person, stand_in) -> list[str]:
    """`texts` about `person` with their full name, name parts and e-mail replaced by `stand_in`'s."""
    pairs = [(person.name, stand_in.name), (person.attributes["email"], stand_in.attributes["email"])]
    pairs += list(zip(person.name.split(), stand_in.name.split()))
    out = []
    for text in texts:
        for old, new in pairs:
            text = text.replace(old, new)
        out.append(text)
    return out


def _name_swap_estimates(model, tokenizer, corpus, people, forget: list) -> list[float]:
    from forgetd.verify.causal_lm import mia_auc

    out = []
    for person, data in zip(people, forget):
        reference = data.calibration_half().reference_texts  # what a stopping rule may look at
        out.append(statistics.mean(
            mia_auc(model, tokenizer, _swapped(data.forget_texts, person, stand_in), reference)
            for stand_in in corpus.holdout[:SWAPS]
        ))
    return out


def _corr(a: list[float], b: list[float]) -> float:
    return statistics.correlation(a, b) if len(a) > 1 else float("nan")


def _summary(per_seed: dict[str, list[float]], estimate: list[float], first: int) -> dict:
    seeds = sorted(per_seed, key=int)
    means_first = {s: statistics.mean(per_seed[s][:first]) for s in seeds}
    means_all = {s: statistics.mean(per_seed[s]) for s in seeds}
    pairs = list(itertools.combinations(seeds, 2))
    per_person_sd = [statistics.stdev([per_seed[s][i] for s in seeds]) for i in range(len(estimate))]
    return {
        "mean_first": means_first,
        "mean_all": means_all,
        "pairwise_abs_diff_first": {f"{a}-{b}": abs(means_first[a] - means_first[b]) for a, b in pairs},
        "pairwise_abs_diff_all": {f"{a}-{b}": abs(means_all[a] - means_all[b]) for a, b in pairs},
        "per_person_sd_mean": statistics.mean(per_person_sd),
        "per_person_corr": {f"{a}-{b}": _corr(per_seed[a], per_seed[b]) for a, b in pairs},
        "name_swap_corr": {s: _corr(estimate, per_seed[s]) for s in seeds},
        "name_swap_mean_abs_err": {s: statistics.mean(abs(e - v) for e, v in zip(estimate, per_seed[s])) for s in seeds},
        "constant_half_mean_abs_err": {s: statistics.mean(abs(0.5 - v) for v in per_seed[s]) for s in seeds},
    }


def _markdown(result: dict) -> str:
    s, first, people = result["summary"], result["first"], result["people"]
    seeds = sorted(int(k) for k in result["per_seed"])
    lines = [
        "# How far apart two retrainings are (Min-K% MIA AUC)",
        "",
        f"Measured {result['measured_at']} on {result['machine']} ({result['threads']} threads). The demo LM "
        f"retrained {len(seeds)} times without all {result['forget_candidates']} forget candidates, training seeds "
        f"{', '.join(map(str, seeds))} (same data and config; {', '.join(f'{t:.0f}' for t in result['retrain_seconds'])} s). "
        "Per person: the forget texts' AUC against the verification half of the reference set, as in "
        "bench/llm_forgetting.py.",
        "",
        f"| retraining seed | mean, first {first} people | mean, all {len(people)} |",
        "|---|---|---|",
    ]
    for seed in seeds:
        lines.append(f"| {seed} | {s['mean_first'][str(seed)]:.3f} | {s['mean_all'][str(seed)]:.3f} |")
    lines += [
        "",
        f"- |difference of the first-{first} means| between two retrainings: "
        + ", ".join(f"{k}: {v:.3f}" for k, v in s["pairwise_abs_diff_first"].items())
        + f" (the forgetting bench's MIA target allows 0.05 against one of them)",
        f"- |difference of the all-{len(people)} means|: "
        + ", ".join(f"{k}: {v:.3f}" for k, v in s["pairwise_abs_diff_all"].items()),
        f"- per-person standard deviation across retrainings, averaged over people: {s['per_person_sd_mean']:.3f}",
        "- per-person correlation between retrainings: "
        + ", ".join(f"{k}: {v:.2f}" for k, v in s["per_person_corr"].items()),
        "",
        "## A retraining-free estimate: swapping the name",
        "",
        f"Each person's texts with their name and e-mail replaced by those of {SWAPS} holdout people, scored by the "
        "original model against the calibration half of the reference set, averaged over the swaps.",
        "",
        "- correlation with each retraining's per-person AUC: "
        + ", ".join(f"seed {k}: {v:.2f}" for k, v in s["name_swap_corr"].items()),
        "- mean absolute error: " + ", ".join(f"seed {k}: {v:.3f}" for k, v in s["name_swap_mean_abs_err"].items())
        + "; predicting 0.5 for everyone: "
        + ", ".join(f"seed {k}: {v:.3f}" for k, v in s["constant_half_mean_abs_err"].items()),
        "",
        "| person | " + " | ".join(f"retrained, seed {k}" for k in seeds) + " | name-swap estimate |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for i, person in enumerate(people):
        values = " | ".join(f"{result['per_seed'][str(k)][i]:.3f}" for k in seeds)
        lines.append(f"| {person} | {values} | {result['name_swap'][i]:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="retrainings, training seeds 0..N-1")
    ap.add_argument("--people", type=int, default=20, help="forget candidates measured")
    ap.add_argument("--first", type=int, default=5, help="the forgetting bench's number of people")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=None, help="model cache (default: FORGETD_CACHE_DIR or ~/.cache/forgetd)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    if args.seeds < 2 or args.people < args.first or args.first < 1:
        ap.error("need --seeds ≥ 2 and 1 ≤ --first ≤ --people")

    import platform

    import torch

    from forgetd.config import load_settings
    from forgetd.datasets import load_dataset_file
    from forgetd.demo.llm_dataset import write_corpus_dataset
    from forgetd.demo.tiny_lm import TinyLMConfig, ensure_tiny_lm, load_demo_corpus, train_tiny_lm
    from forgetd.families import causal_lm

    torch.set_num_threads(args.threads)
    cfg = TinyLMConfig()
    original = ensure_tiny_lm(args.cache or load_settings().cache_dir, cfg, threads=args.threads)
    corpus = load_demo_corpus(original)
    forget_set = tuple(p.id for p in corpus.forget_candidates)
    people = corpus.forget_candidates[: args.people]
    tokenizer = causal_lm.load_tokenizer(original)
    per_seed: dict[str, list[float]] = {}  # by training seed, as text: the JSON's keys
    seconds: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dataset = load_dataset_file(write_corpus_dataset(corpus, work / "dataset.json"))
        forget = [causal_lm.forget_data(dataset, [{"corpus_ids": [p.id]}]) for p in people]
        with torch.no_grad():
            estimate = _name_swap_estimates(causal_lm.load_model(original).eval(), tokenizer, corpus, people, forget)
        for seed in range(args.seeds):
            started = time.perf_counter()
            train_tiny_lm(replace(cfg, exclude_ids=forget_set, seed=seed), work / f"retrained-{seed}", threads=args.threads)
            seconds.append(time.perf_counter() - started)
            with torch.no_grad():
                model = causal_lm.load_model(work / f"retrained-{seed}").eval()
                per_seed[str(seed)] = _per_person_auc(model, tokenizer, forget)
            print(f"[retrained seed {seed}] {seconds[-1]:.1f}s  first {args.first}: "
                  f"{statistics.mean(per_seed[str(seed)][: args.first]):.3f}", flush=True)
    result = {
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "threads": args.threads,
        "forget_candidates": len(forget_set),
        "first": args.first,
        "people": [p.id for p in people],
        "retrain_seconds": seconds,
        "per_seed": per_seed,
        "name_swap": estimate,
        "summary": _summary(per_seed, estimate, args.first),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "llm_retrain_noise.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "llm_retrain_noise.md").write_text(_markdown(result))
    print(_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
