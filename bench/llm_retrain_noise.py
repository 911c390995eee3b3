"""How far apart two retrainings are: the gold standard's own spread on the Min-K% MIA AUC.

    .venv/bin/python bench/llm_retrain_noise.py [--seeds 3] [--people 20] [--first 5] [--folds 4]
        [--fold-seeds 1] [--statements-per-attribute 1] [--threads 2]

The forgetting bench (bench/llm_forgetting.py) compares npo-lora's MIA AUC with that of one model
retrained without the forget candidates, on the mean over the first `--first` people. Here the same
retraining runs `--seeds` times with different training seeds (same data, same config), and each
retrained model's per-person AUC is measured exactly as there (forget texts against the verification half
of the reference set, the halves matched on the original's scores as registration matches them). Reported: every retraining's mean over the first `--first` people and over all
`--people`, the pairwise differences of those means, the per-person spread across retrainings, and
per-person correlations. Also measured: a name-swap estimate of the retrained AUC that needs no
retraining (the person's texts with their name and e-mail replaced by holdout people's, scored by the
original model), and how well it predicts each retraining's per-person AUC. Also one that needs counting
only: a token bigram model counted on what the retraining trains on, scoring the person's texts against the
calibration half as Min-K% does, next to other counts (unigram, bigram with other smoothing weights,
trigram) and the bigram calibrated per model on the holdout people. And an estimate that costs
retraining once per model instead of once per request: `--folds` reference models, each trained without
one fold of the trained people (fold = sha256 of the person's id modulo `--folds`, training seed 0), so
that every person is unseen by exactly one of them; a person's estimate is their AUC under that one.
With `--fold-seeds R` above 1, that is repeated with training seeds 1..R-1, each with its own fold
assignment (sha256 of "seed:id"), and a person's estimate is the mean of their R AUCs: whether averaging
more reference models brings the estimate closer to what a retraining gives.
Then npo-lora forgets each of the first `--first` people (seed i forgets person i, as in the forgetting
bench): as shipped (stopping band centred on the recipe's own counting estimate, verify.unseen_estimate,
which is the bigram estimate here with one person left out instead of all of them), and with the band
centred instead on the person's reference-model estimate (with R above 1 the R-model one) and on 0.5 (what
npo-lora did before the counting estimate).
`--statements-per-attribute N` builds the demo corpus with N paraphrased sentences per attribute instead of
the demo's one (a different model, and different people drawn): whether more texts per person make a
person's AUC under a retraining less person-specific. The spread of the retrainings' per-person means splits
into what repeats across retrainings (the person effect, a variance estimated as that of the per-person means
less a third of the mean within-person variance, for three retrainings) and what does not.
Writes llm_retrain_noise.json and .md under `--out` (default bench/results/).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
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


def _bigram_estimates(tokenizer, documents: list[str], forget: list) -> list[float]:
    """Each person's AUC (calibration half) under a token bigram model counted on `documents` (what the
    retraining trains on): the estimate npo-lora's stopping band is centred on (verify.unseen_estimate),
    here counted without all forget candidates, as the retrainings are trained."""
    from forgetd.verify.unseen_estimate import unseen_auc

    return [unseen_auc(tokenizer, documents, data.forget_texts, data.calibration_half().reference_texts) for data in forget]


def _trigram_logprobs(counts, trigrams, context, ids, beta: float) -> list[float]:
    """log p(c | a b): trigram counts interpolated with the bigram model's p(c | b), weight `beta`."""
    bigram = [math.exp(lp) for lp in counts.logprobs(ids)]
    out = [math.log(bigram[0])] if bigram else []
    for i in range(2, len(ids)):
        a, b, c = ids[i - 2], ids[i - 1], ids[i]
        out.append(math.log((trigrams[(a, b, c)] + beta * bigram[i - 1]) / (context[(a, b)] + beta)))
    return out


def _count_variants(tokenizer, documents: list[str], forget: list, holdout_model_scores) -> dict[str, list[float]]:
    """Each person's estimate (calibration half) under other counting models than the shipped bigram, and
    the shipped bigram calibrated on the holdout people: the original never saw them either, so a line
    fitted through (bigram estimate, the original's AUC) over holdout people, each against the others,
    maps a bigram estimate to what this model gives an unseen person."""
    from collections import Counter

    from forgetd.verify.causal_lm import _encode, auc, min_k_score
    from forgetd.verify.unseen_estimate import ALPHA, BigramCounts

    ids = tokenizer(documents)["input_ids"]
    trigrams = Counter(t for seq in ids for t in zip(seq, seq[1:], seq[2:]))
    context = Counter(t for seq in ids for t in zip(seq, seq[1:]))
    bigram = BigramCounts(tokenizer, documents)
    unigram_total = bigram.total + ALPHA * bigram.vocab

    def unigram(seq):
        return [math.log((bigram.unigrams[b] + ALPHA) / unigram_total) for b in seq[1:]]

    models = {"unigram": unigram}
    for alpha in (0.01, 1.0):
        other = BigramCounts(tokenizer, documents, alpha=alpha)
        models[f"bigram, α = {alpha}"] = other.logprobs
    for beta in (1.0, 5.0, 20.0):
        models[f"trigram, β = {beta:g}"] = lambda seq, beta=beta: _trigram_logprobs(bigram, trigrams, context, seq, beta)
    reference = forget[0].calibration_half().reference_texts
    out = {}
    for name, logprobs in models.items():
        ref = [min_k_score(logprobs(seq)) for seq in _encode(tokenizer, reference)]
        out[name] = [auc([min_k_score(logprobs(seq)) for seq in _encode(tokenizer, d.forget_texts)], ref) for d in forget]
    # the holdout calibration: each holdout person's texts against the calibration half without them
    texts_by_person, model_scores = holdout_model_scores
    bigram_ref = {t: min_k_score(bigram.logprobs(seq)) for t, seq in zip(reference, _encode(tokenizer, reference))}
    xs, ys = [], []
    for texts in texts_by_person:
        own = set(texts)
        others = [t for t in reference if t not in own]
        xs.append(auc([min_k_score(bigram.logprobs(seq)) for seq in _encode(tokenizer, texts)], [bigram_ref[t] for t in others]))
        ys.append(auc([model_scores[t] for t in texts], [model_scores[t] for t in others]))
    fit = statistics.linear_regression(xs, ys)
    shipped = [auc([min_k_score(bigram.logprobs(seq)) for seq in _encode(tokenizer, d.forget_texts)], list(bigram_ref.values()))
               for d in forget]
    out[f"bigram calibrated on the holdout ({fit.intercept:.2f} + {fit.slope:.2f} × bigram)"] = [
        fit.intercept + fit.slope * x for x in shipped
    ]
    return out


def _fold(person_id: str, folds: int, seed: int = 0) -> int:
    key = person_id if seed == 0 else f"{seed}:{person_id}"  # seed 0 keeps the first measurement's folds
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % folds


def _fold_estimates(cfg, corpus, people, forget: list, tokenizer, folds: int, work: Path, threads: int, seed: int = 0):
    """Each person's AUC (calibration half) under the reference model, trained with `seed`, that did not see
    them; and the seconds each reference model took to train."""
    import torch

    from forgetd.demo.tiny_lm import train_tiny_lm
    from forgetd.families import causal_lm
    from forgetd.verify.causal_lm import mia_auc

    estimate: list[float | None] = [None] * len(people)
    seconds = []
    for k in range(folds):
        left_out = tuple(p.id for p in corpus.trained if _fold(p.id, folds, seed) == k)
        started = time.perf_counter()
        out = work / f"fold-{seed}-{k}"
        train_tiny_lm(replace(cfg, exclude_ids=left_out, seed=seed), out, threads=threads)
        seconds.append(time.perf_counter() - started)
        with torch.no_grad():
            model = causal_lm.load_model(out).eval()
            for i, (person, data) in enumerate(zip(people, forget)):
                if _fold(person.id, folds, seed) == k:
                    estimate[i] = mia_auc(model, tokenizer, data.forget_texts, data.calibration_half().reference_texts)
        print(f"[reference model {k}, seed {seed}] {len(left_out)} people left out, {seconds[-1]:.1f}s", flush=True)
    return estimate, seconds


def _centred_stop_check(centre: float):
    """npo-lora's StopCheck with its band centred on `centre` instead of the recipe's own estimate."""
    from forgetd.training.common import StopCheck

    def make(**kw):
        return StopCheck(**{**kw, "mia_centre": centre})

    return make


def _npo_runs(
    original: Path, tokenizer, people, forget: list, estimates: dict[str, list[float]]
) -> dict[str, list[dict]]:
    """npo-lora on each person (seed i forgets person i), as shipped (centred on its counting estimate,
    verify.unseen_estimate) and centred on each of `estimates` (by name); metrics on the verification
    half, as in bench/llm_forgetting.py."""
    from llm_forgetting import _train_and_measure  # this script's directory is on sys.path

    from forgetd.training.recipes import npo_lora

    shipped = npo_lora.StopCheck
    runs: dict[str, list[dict]] = {"as shipped": [], **{name: [] for name in estimates}}
    for seed, (person, data) in enumerate(zip(people, forget)):
        for name in runs:
            npo_lora.StopCheck = shipped if name == "as shipped" else _centred_stop_check(estimates[name][seed])
            try:
                measured, seconds, result = _train_and_measure(
                    "npo-lora", seed, original, tokenizer, data, data.verification_half()
                )
            finally:
                npo_lora.StopCheck = shipped
            runs[name].append({"person": person.id, **measured, "seconds": seconds, "steps": result["steps"]})
            print(f"[npo-lora {name}, seed {seed} {person.id}] AUC {measured['mia_auc']:.3f} "
                  f"forget QA {measured['forget_qa_acc']:.2f} retain QA {measured['retain_qa_acc']:.3f}", flush=True)
    return runs


def _estimate_summary(estimate: list[float], per_seed: dict[str, list[float]], first: int) -> dict:
    return {
        "corr": {s: _corr(estimate, v) for s, v in per_seed.items()},
        "mean_abs_err": {s: statistics.mean(abs(e - x) for e, x in zip(estimate, v)) for s, v in per_seed.items()},
        "mean_first": statistics.mean(estimate[:first]),
        "abs_diff_first": {s: abs(statistics.mean(estimate[:first]) - statistics.mean(v[:first])) for s, v in per_seed.items()},
    }


def _corr(a: list[float], b: list[float]) -> float:
    """Pearson correlation; NaN where it is undefined (fewer than two people, or one side constant, as with
    `--people 2` when two people's estimates tie)."""
    try:
        return statistics.correlation(a, b)
    except statistics.StatisticsError:
        return float("nan")


def _summary(per_seed: dict[str, list[float]], estimate: list[float], first: int) -> dict:
    seeds = sorted(per_seed, key=int)
    means_first = {s: statistics.mean(per_seed[s][:first]) for s in seeds}
    means_all = {s: statistics.mean(per_seed[s]) for s in seeds}
    pairs = list(itertools.combinations(seeds, 2))
    per_person_sd = [statistics.stdev([per_seed[s][i] for s in seeds]) for i in range(len(estimate))]
    person_means = [statistics.mean(per_seed[s][i] for s in seeds) for i in range(len(estimate))]
    within = statistics.mean(sd**2 for sd in per_person_sd)
    return {
        "person_means_sd": statistics.stdev(person_means),
        "within_person_sd": within**0.5,
        # what repeats across retrainings: the person's own "easiness", which no stopping rule at 0.5 can match
        "person_effect_sd": max(0.0, statistics.variance(person_means) - within / len(seeds)) ** 0.5,
        "mean_first": means_first,
        "mean_all": means_all,
        "pairwise_abs_diff_first": {f"{a}-{b}": abs(means_first[a] - means_first[b]) for a, b in pairs},
        "pairwise_abs_diff_all": {f"{a}-{b}": abs(means_all[a] - means_all[b]) for a, b in pairs},
        "per_person_sd_mean": statistics.mean(per_person_sd),
        "per_person_corr": {f"{a}-{b}": _corr(per_seed[a], per_seed[b]) for a, b in pairs},
        "per_person_abs_diff": {
            f"{a}-{b}": statistics.mean(abs(x - y) for x, y in zip(per_seed[a], per_seed[b])) for a, b in pairs
        },
        "name_swap_corr": {s: _corr(estimate, per_seed[s]) for s in seeds},
        "name_swap_mean_abs_err": {s: statistics.mean(abs(e - v) for e, v in zip(estimate, per_seed[s])) for s in seeds},
        "constant_half_mean_abs_err": {s: statistics.mean(abs(0.5 - v) for v in per_seed[s]) for s in seeds},
    }


def _by_gold(values: dict[str, float], fmt: str) -> str:
    """Values keyed by retraining seed, and "mean" for the retrainings' per-person mean."""
    return ", ".join(f"{'seed ' + k if k != 'mean' else 'their mean'}: {v:{fmt}}" for k, v in values.items())


def _markdown(result: dict) -> str:
    from forgetd.verify.unseen_estimate import ALPHA

    s, first, people = result["summary"], result["first"], result["people"]
    seeds = sorted(int(k) for k in result["per_seed"])
    corpus, bigram = result["corpus"], result["bigram_summary"]
    lines = [
        "# How far apart two retrainings are (Min-K% MIA AUC)",
        "",
        f"Measured {result['measured_at']} on {result['machine']} ({result['threads']} threads). The demo LM "
        f"retrained {len(seeds)} times without all {result['forget_candidates']} forget candidates, training seeds "
        f"{', '.join(map(str, seeds))} (same data and config; {', '.join(f'{t:.0f}' for t in result['retrain_seconds'])} s). "
        f"Corpus: {corpus['texts_per_person']} texts per person ({corpus['statements_per_attribute']} sentence(s) "
        "per attribute and a biography). Per person: the forget texts' AUC against the verification half of the "
        f"reference set, as in bench/llm_forgetting.py (halves {result['reference_halves']}).",
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
        + " (the forgetting bench's MIA target allows 0.05 against one of them)",
        f"- |difference of the all-{len(people)} means|: "
        + ", ".join(f"{k}: {v:.3f}" for k, v in s["pairwise_abs_diff_all"].items()),
        f"- per-person standard deviation across retrainings, averaged over people: {s['per_person_sd_mean']:.3f}",
        f"- the retrainings' per-person means spread by {s['person_means_sd']:.3f} (s.d.); of that, the person "
        f"effect (what repeats across retrainings): {s['person_effect_sd']:.3f}, and the within-person s.d. "
        f"across retrainings: {s['within_person_sd']:.3f}",
        "- per-person mean absolute difference between retrainings: "
        + ", ".join(f"{k}: {v:.3f}" for k, v in s["per_person_abs_diff"].items()),
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
    ]
    lines += [
        "## A counting estimate: a bigram model",
        "",
        "Token bigrams counted on what the retraining trains on (no training; smoothed towards the unigram, "
        f"α = {ALPHA}); Min-K% scores (k = 0.4) against the calibration half of the reference set. "
        "Compared with each retraining and with the retrainings' per-person mean:",
        "",
        f"- correlation: {_by_gold(bigram['corr'], '.2f')}",
        f"- mean absolute error: {_by_gold(bigram['mean_abs_err'], '.3f')}",
        f"- mean over the first {first} people: {bigram['mean_first']:.3f}; distance from the retrainings' "
        f"first-{first} means: {_by_gold(bigram['abs_diff_first'], '.3f')}",
        "",
    ]
    variants = result.get("count_variants")
    if variants:
        lines += [
            "Other counts, and the bigram calibrated per model: a line through (bigram estimate, the original's AUC) "
            "over the holdout people, each against the calibration half without them (the original never saw "
            "them either):",
            "",
            f"| estimate | correlation | mean absolute error | mean, first {first} | distance from the first-{first} mean |",
            "|---|---|---|---|---|",
        ]
        for name, v in {"bigram, α = 0.1 (shipped)": {"summary": bigram}, **variants}.items():
            f = v["summary"]
            lines.append(
                f"| {name} | {_by_gold(f['corr'], '.2f')} | {_by_gold(f['mean_abs_err'], '.3f')} | "
                f"{f['mean_first']:.3f} | {_by_gold(f['abs_diff_first'], '.3f')} |"
            )
        lines.append("")
    folds = result.get("folds")
    if folds:
        n_models = folds["folds"] * folds["fold_seeds"]
        left_out = "; ".join(f"seed {k}: {', '.join(map(str, v))}" for k, v in folds["left_out"].items())
        summaries = {f"{folds['folds']} models, seed {k}": v for k, v in folds["summary_by_seed"].items()}
        if folds["fold_seeds"] > 1:
            summaries[f"{n_models} models, the mean"] = folds["summary"]
        lines += [
            "## An estimate from reference models (retraining once per model, not per request)",
            "",
            f"For each training seed, {folds['folds']} models, each trained without one fold of the "
            f"{result['trained_people']} trained people (fold: sha256 of the id, or of \"seed:id\" for seeds above 0, "
            f"modulo {folds['folds']}; people left out: {left_out}; {n_models} models, "
            f"{sum(folds['seconds']):.0f} s in all, {sum(folds['seconds']) / n_models:.0f} s each). Under one seed, a "
            "person's estimate is their AUC, against the calibration half, under the model that did not see them; "
            "with several seeds, the mean of those. Compared with each retraining and with the retrainings' "
            "per-person mean:",
            "",
            "| estimate | correlation | mean absolute error | mean, first "
            f"{first} | distance from the first-{first} mean |",
            "|---|---|---|---|---|",
        ]
        for name, f in summaries.items():
            lines.append(
                f"| {name} | {_by_gold(f['corr'], '.2f')} | {_by_gold(f['mean_abs_err'], '.3f')} | "
                f"{f['mean_first']:.3f} | {_by_gold(f['abs_diff_first'], '.3f')} |"
            )
        lines += [
            "",
            f"npo-lora forgetting each of the first {first} people (seed i forgets person i; verification half), with "
            "its stopping band as shipped (centred on its counting estimate), centred on the person's reference-model "
            "estimate, and centred on 0.5 (as before the counting estimate):",
            "",
            "| npo-lora | MIA AUC: mean (per person) | forget QA | retain QA | distance from the retrainings' mean |",
            "|---|---|---|---|---|",
        ]
        for name, rows in folds["npo_lora"].items():
            aucs = [r["mia_auc"] for r in rows]
            lines.append(
                f"| {name} | {statistics.mean(aucs):.3f} ({', '.join(f'{a:.2f}' for a in aucs)}) | "
                f"{statistics.mean(r['forget_qa_acc'] for r in rows):.3f} | "
                f"{statistics.mean(r['retain_qa_acc'] for r in rows):.3f} | "
                f"{_by_gold(folds['npo_lora_abs_diff_first'][name], '.3f')} |"
            )
        lines.append("")
    columns = ["name-swap estimate", "bigram estimate"]
    if folds:
        columns.append(f"reference-model estimate ({folds['folds'] * folds['fold_seeds']} models)")
    lines += [
        "| person | " + " | ".join(f"retrained, seed {k}" for k in seeds) + " | " + " | ".join(columns) + " |",
        "|---|" + "---|" * (len(seeds) + len(columns)),
    ]
    for i, person in enumerate(people):
        values = [f"{result['per_seed'][str(k)][i]:.3f}" for k in seeds]
        values += [f"{result['name_swap'][i]:.3f}", f"{result['bigram'][i]:.3f}"]
        if folds:
            values.append(f"{folds['estimate'][i]:.3f}")
        lines.append(f"| {person} | {' | '.join(values)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="retrainings, training seeds 0..N-1")
    ap.add_argument("--people", type=int, default=20, help="forget candidates measured")
    ap.add_argument("--first", type=int, default=5, help="the forgetting bench's number of people")
    ap.add_argument("--folds", type=int, default=4, help="reference models for the fold estimate (0: skip it)")
    ap.add_argument("--fold-seeds", type=int, default=1, help="training seeds of the reference models (estimate: mean)")
    ap.add_argument("--statements-per-attribute", type=int, default=None,
                    help="demo corpus with this many sentences per attribute (default: the demo's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=None, help="model cache (default: FORGETD_CACHE_DIR or ~/.cache/forgetd)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    bad_folds = args.folds == 1 or args.folds < 0 or args.fold_seeds < 1
    if args.seeds < 2 or args.people < args.first or args.first < 1 or bad_folds:
        ap.error("need --seeds ≥ 2, 1 ≤ --first ≤ --people, --folds 0 or ≥ 2, and --fold-seeds ≥ 1")

    import torch
    from llm_forgetting import _machine  # this script's directory is on sys.path

    from forgetd.config import load_settings
    from forgetd.datasets import load_dataset_file
    from forgetd.demo.llm_dataset import write_corpus_dataset
    from forgetd.demo.tiny_lm import TinyLMConfig, ensure_tiny_lm, load_demo_corpus, train_tiny_lm
    from forgetd.families import causal_lm
    from forgetd.verify.causal_lm import min_k_scores

    torch.set_num_threads(args.threads)
    cfg = TinyLMConfig()
    if args.statements_per_attribute is not None:
        cfg = replace(cfg, corpus=replace(cfg.corpus, statements_per_attribute=args.statements_per_attribute))
    original = ensure_tiny_lm(args.cache or load_settings().cache_dir, cfg)  # one-thread, as the demo's
    corpus = load_demo_corpus(original)
    forget_set = tuple(p.id for p in corpus.forget_candidates)
    people = corpus.forget_candidates[: args.people]
    tokenizer = causal_lm.load_tokenizer(original)
    per_seed: dict[str, list[float]] = {}  # by training seed, as text: the JSON's keys
    seconds: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dataset = load_dataset_file(write_corpus_dataset(corpus, work / "dataset.json"))
        with torch.no_grad():
            model = causal_lm.load_model(original).eval()
            # as registration and bench/llm_forgetting.py do: reference halves matched on the original's scores
            dataset = causal_lm.with_matched_reference_split(dataset, model, tokenizer)
            forget = [causal_lm.forget_data(dataset, [{"corpus_ids": [p.id]}]) for p in people]
            estimate = _name_swap_estimates(model, tokenizer, corpus, people, forget)
            holdout_texts = [p.texts for p in corpus.holdout]
            scored = sorted({t for texts in holdout_texts for t in texts} | set(forget[0].calibration_half().reference_texts))
            holdout_scores = (holdout_texts, dict(zip(scored, min_k_scores(model, tokenizer, scored))))
            del model
        bigram = _bigram_estimates(tokenizer, corpus.training_documents(exclude=forget_set), forget)
        variants = _count_variants(tokenizer, corpus.training_documents(exclude=forget_set), forget, holdout_scores)
        for seed in range(args.seeds):
            started = time.perf_counter()
            train_tiny_lm(replace(cfg, exclude_ids=forget_set, seed=seed), work / f"retrained-{seed}", threads=args.threads)
            seconds.append(time.perf_counter() - started)
            with torch.no_grad():
                model = causal_lm.load_model(work / f"retrained-{seed}").eval()
                per_seed[str(seed)] = _per_person_auc(model, tokenizer, forget)
            print(f"[retrained seed {seed}] {seconds[-1]:.1f}s  first {args.first}: "
                  f"{statistics.mean(per_seed[str(seed)][: args.first]):.3f}", flush=True)
        # the retrainings' per-person mean: the closest thing here to what "a retraining" gives
        gold = {**per_seed, "mean": [statistics.mean(v[i] for v in per_seed.values()) for i in range(len(people))]}
        folds = None
        if args.folds:
            by_seed: dict[str, list[float]] = {}
            fold_seconds: list[float] = []
            for fold_seed in range(args.fold_seeds):
                by_seed[str(fold_seed)], spent = _fold_estimates(
                    cfg, corpus, people, forget, tokenizer, args.folds, work, args.threads, fold_seed
                )
                fold_seconds += spent
            n_models = args.folds * args.fold_seeds
            averaged = [statistics.mean(v[i] for v in by_seed.values()) for i in range(len(people))]
            estimates = {f"centred on the estimate ({args.folds} models)": by_seed["0"]}
            if args.fold_seeds > 1:
                estimates[f"centred on the estimate ({n_models} models)"] = averaged
            estimates["centred on 0.5 (before the counting estimate)"] = [0.5] * len(people)
            npo = _npo_runs(original, tokenizer, people[: args.first], forget, estimates)
            folds = {
                "npo_lora": npo,
                "npo_lora_abs_diff_first": {
                    name: {s: abs(statistics.mean(r["mia_auc"] for r in rows) - statistics.mean(v[: args.first]))
                           for s, v in gold.items()}
                    for name, rows in npo.items()
                },
                "folds": args.folds,
                "fold_seeds": args.fold_seeds,
                "left_out": {
                    fs: [sum(_fold(p.id, args.folds, int(fs)) == k for p in corpus.trained) for k in range(args.folds)]
                    for fs in by_seed
                },
                "seconds": fold_seconds,
                "estimate_by_seed": by_seed,
                "estimate": averaged,
                "summary_by_seed": {fs: _estimate_summary(v, gold, args.first) for fs, v in by_seed.items()},
                "summary": _estimate_summary(averaged, gold, args.first),
            }
    result = {
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": _machine(),
        "threads": args.threads,
        "forget_candidates": len(forget_set),
        "reference_halves": "matched on the original's Min-K% scores",
        "corpus": {"statements_per_attribute": cfg.corpus.statements_per_attribute,
                   "texts_per_person": len(people[0].texts)},
        "trained_people": len(corpus.trained),
        "first": args.first,
        "people": [p.id for p in people],
        "retrain_seconds": seconds,
        "per_seed": per_seed,
        "name_swap": estimate,
        "bigram": bigram,
        "summary": _summary(per_seed, estimate, args.first),
        "bigram_summary": _estimate_summary(bigram, gold, args.first),
        "count_variants": {name: {"estimate": v, "summary": _estimate_summary(v, gold, args.first)}
                           for name, v in variants.items()},
        "folds": folds,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "llm_retrain_noise.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "llm_retrain_noise.md").write_text(_markdown(result))
    print(_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
