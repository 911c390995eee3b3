"""Forgetting one person from the demo's tiny LM: every recipe against retraining, in one run.

    .venv/bin/python bench/llm_forgetting.py [--seeds 5] [--sequential 20] [--retrain-per-seed] [--threads 2]

Rows: original, retrained without the forget set (gold standard; trained in this run, so its seconds are
the baseline), ga-full, graddiff-lora, npo-lora, simnpo-lora. Each recipe forgets person i with seed i,
for i < --seeds, on the original model; metrics are measured on the verification half of the reference
(holdout) set, which no stopping rule saw:
  forget QA accuracy, VerbMem (ROUGE-L of greedy continuations), Min-K% MIA AUC forget-vs-holdout,
  retain QA accuracy, holdout-text perplexity, seconds, seconds as % of retraining.
With --retrain-per-seed, person i is also judged against a model retrained with training seed i (seed 0
is the model above), an extra "retrained per seed" row: the retrained model is a random variable whose
five-person mean moves by 0.01-0.11 between training seeds (bench/llm_retrain_noise.py), and one retraining
shared by all seeds carries its own draw into every seed.
Sequential: --sequential people forgotten one request at a time through the real pipeline (submit,
approve, tick: train against the served checkpoint, compose, verify, promote); after each request, every
earlier person's forget QA and the retain QA accuracy of the served checkpoint.
Writes bench/results/llm_forgetting.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
RECIPES = ["ga-full", "graddiff-lora", "npo-lora", "simnpo-lora"]
PER_SEED = "retrained per seed"


def _machine() -> str:
    """Architecture, CPU model, torch's CPU capability and cores: retrained and unlearned models differ between
    CPUs (their float kernels do), so a result is tied to the kind of CPU that measured it."""
    import platform

    cpu = platform.processor() or ""
    try:
        cpu = next(
            line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    try:  # the vector instructions torch's CPU kernels use: one CPU model name covers several generations
        import torch

        cpu += f", torch {torch.backends.cpu.get_cpu_capability()}"
    except (ImportError, AttributeError):
        pass
    return f"{platform.machine()} {cpu} {os.cpu_count()} cores".replace("  ", " ")


def _metrics(model, tokenizer, data) -> dict[str, float]:
    from forgetd.verify.causal_lm import evaluate

    m = evaluate(model, tokenizer, data, include_verbmem=True)
    return {k: m[k] for k in ("forget_qa_acc", "verbmem", "mia_auc", "mia_auc_unseen", "retain_qa_acc", "reference_ppl")}


def _single(
    args, original_dir: Path, retrained_dir: Path, retrain_seconds: float, corpus, dataset,
    per_seed: list[tuple[Path, float]] = (),
) -> dict:
    """Rows per method, one entry per seed; with `per_seed` ((model, seconds) per seed), also the "retrained
    per seed" row: person i under the model retrained with training seed i."""
    from forgetd.families import causal_lm

    people = [p.id for p in corpus.forget_candidates][: args.seeds]
    tokenizer = causal_lm.load_tokenizer(original_dir)
    rows: dict[str, list[dict]] = {"original": [], "retrained": []}
    for seed, person in enumerate(people):
        data = causal_lm.forget_data(dataset, [{"corpus_ids": [person]}])
        judge = data.verification_half()
        rows["original"].append({"person": person, **_metrics(causal_lm.load_model(original_dir), tokenizer, judge)})
        rows["retrained"].append({"person": person, **_metrics(causal_lm.load_model(retrained_dir), tokenizer, judge),
                                  "seconds": retrain_seconds})
        if per_seed:
            model_dir, seconds = per_seed[seed]
            rows.setdefault(PER_SEED, []).append(
                {"person": person, **_metrics(causal_lm.load_model(model_dir), tokenizer, judge), "seconds": seconds}
            )
        for name in args.recipes:
            measured, seconds, result = _train_and_measure(name, seed, original_dir, tokenizer, data, judge)
            rows.setdefault(name, []).append({"person": person, **measured, "seconds": seconds,
                                              "steps": result["steps"], "stop_reason": result["stop_reason"]})
            print(f"[{name} seed {seed} {person}] {measured} {seconds:.1f}s steps {result['steps']}", flush=True)
    return rows


def _train_and_measure(name: str, seed: int, original_dir: Path, tokenizer, data, judge) -> tuple[dict, float, dict]:
    """Train recipe `name` with `seed` on the original model; (metrics on `judge`, seconds, recipe result)."""
    import torch

    from forgetd.families import causal_lm
    from forgetd.training.registry import get_recipe

    recipe = get_recipe(ROOT / "adapters", name, seed=seed)
    model = causal_lm.load_model(original_dir)
    # A tokenizer of its own, as a job's worker process loads: the texts a run tokenizes and the bigram counts
    # it makes are kept per tokenizer, and with a shared one each run after the first (ga-full, then
    # graddiff-lora, on the same person) found them made and was timed without them (npo-lora ~0.3 s less).
    cold_tokenizer = causal_lm.load_tokenizer(original_dir)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = recipe.module().train(recipe, model=model, tokenizer=cold_tokenizer, data=data,
                                       out_dir=Path(tmp) / "out")
        seconds = time.perf_counter() - started
        if recipe.composable:
            from peft import PeftModel

            trained = PeftModel.from_pretrained(causal_lm.load_model(original_dir), str(Path(tmp) / "out"))
        else:
            trained = causal_lm.load_model(Path(tmp) / "out")
        trained.eval()
        with torch.no_grad():
            measured = _metrics(trained, tokenizer, judge)
    return measured, seconds, result


def _wide(args, original_dir: Path, retrained_dir: Path, corpus, dataset, rows: dict[str, list[dict]]) -> dict:
    """npo-lora and the retrained model on every forget candidate (seed i forgets person i), reusing the
    first seeds' runs: how much of the 5-seed MIA gap is which five people were drawn. A never-seen
    person's AUC against the holdout people is a property of that person (how predictable their texts
    are), spread widely around 0.5, so five people's mean is far from 0.5 more often than not."""
    import torch

    from forgetd.families import causal_lm

    people = [p.id for p in corpus.forget_candidates][: args.wide]
    tokenizer = causal_lm.load_tokenizer(original_dir)
    retrained = causal_lm.load_model(retrained_dir)
    out = {"people": people, "retrained": [], "npo-lora": [], "unseen_estimate": []}
    for seed, person in enumerate(people):
        data = causal_lm.forget_data(dataset, [{"corpus_ids": [person]}])
        judge = data.verification_half()
        out["unseen_estimate"].append(judge.unseen_mia_auc(tokenizer))
        if seed < len(rows.get("npo-lora", [])):
            out["retrained"].append(rows["retrained"][seed]["mia_auc"])
            out["npo-lora"].append(rows["npo-lora"][seed]["mia_auc"])
            continue
        with torch.no_grad():
            out["retrained"].append(_metrics(retrained, tokenizer, judge)["mia_auc"])
        out["npo-lora"].append(_train_and_measure("npo-lora", seed, original_dir, tokenizer, data, judge)[0]["mia_auc"])
        print(f"[wide {seed} {person}] retrained {out['retrained'][-1]:.3f} npo-lora {out['npo-lora'][-1]:.3f}", flush=True)
    for key in ("retrained", "npo-lora", "unseen_estimate"):
        out[key + "_mean"] = statistics.fmean(out[key])
        out[key + "_sd"] = statistics.pstdev(out[key])
    out["abs_diff_of_means"] = abs(out["npo-lora_mean"] - out["retrained_mean"])
    return out


def _summary(rows: dict[str, list[dict]], retrain_seconds: float) -> list[dict]:
    table = []
    for name, runs in rows.items():
        row = {"method": name, "runs": len(runs)}
        for key in ("forget_qa_acc", "verbmem", "mia_auc", "mia_auc_unseen", "retain_qa_acc", "reference_ppl", "seconds"):
            values = [r[key] for r in runs if key in r]
            if values:
                row[key] = statistics.fmean(values)
                row[key + "_sd"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        if "seconds" in row and name != PER_SEED:  # the baseline is the first retraining's time
            row["pct_of_retraining"] = 100 * row["seconds"] / retrain_seconds
        table.append(row)
    return table


def _targets(rows: dict[str, list[dict]], table: list[dict]) -> dict:
    by = {r["method"]: r for r in table}
    npo, gold, orig = by.get("npo-lora"), by["retrained"], by["original"]
    if npo is None:
        return {}
    per_seed_mia = [abs(a["mia_auc"] - b["mia_auc"]) for a, b in zip(rows["npo-lora"], rows["retrained"])]
    return {
        "forget_qa_over_retrained_points": 100 * (npo["forget_qa_acc"] - gold["forget_qa_acc"]),
        "forget_qa_target_points": 5.0,
        "mia_auc_abs_diff_vs_retrained": abs(npo["mia_auc"] - gold["mia_auc"]),
        "mia_auc_abs_diff_per_seed": per_seed_mia,
        "mia_auc_unseen_per_seed": [r["mia_auc_unseen"] for r in rows["npo-lora"]],
        "retrained_mia_auc_per_seed": [r["mia_auc"] for r in rows["retrained"]],
        "npo_mia_auc_per_seed": [r["mia_auc"] for r in rows["npo-lora"]],
        "mia_target": 0.05,
        "retain_ratio_vs_original": npo["retain_qa_acc"] / orig["retain_qa_acc"],
        "retain_target": 0.95,
        "pct_of_retraining": npo["pct_of_retraining"],
        "time_target_pct": 5.0,
        **_per_seed_targets(rows, by),
    }


def _per_seed_targets(rows: dict[str, list[dict]], by: dict[str, dict]) -> dict:
    if PER_SEED not in by:
        return {}
    return {
        "mia_auc_abs_diff_vs_retrained_per_seed": abs(by["npo-lora"]["mia_auc"] - by[PER_SEED]["mia_auc"]),
        "mia_auc_abs_diff_per_seed_vs_retrained_per_seed": [
            abs(a["mia_auc"] - b["mia_auc"]) for a, b in zip(rows["npo-lora"], rows[PER_SEED])
        ],
        "forget_qa_over_retrained_per_seed_points": 100 * (by["npo-lora"]["forget_qa_acc"] - by[PER_SEED]["forget_qa_acc"]),
    }


def _centre_lines(t: dict) -> list[str]:
    """Where npo-lora aimed: the estimated AUC of a model that never saw the person (verify.unseen_estimate)."""
    if "mia_auc_unseen_per_seed" not in t:
        return []
    est = t["mia_auc_unseen_per_seed"]
    return [
        f"- npo-lora's MIA band is centred on the estimated unseen AUC (verify.unseen_estimate; verification half): "
        f"mean {statistics.fmean(est):.3f}; per seed "
        + ", ".join(f"{e:.2f} (npo-lora {n:.2f}, retrained {r:.2f})"
                    for e, n, r in zip(est, t["npo_mia_auc_per_seed"], t["retrained_mia_auc_per_seed"]))
    ]


def _per_seed_lines(t: dict) -> list[str]:
    if "mia_auc_abs_diff_vs_retrained_per_seed" not in t:
        return []
    return [
        f"- against one retraining per seed (training seed i for person i): |MIA AUC − retrained's| "
        f"{t['mia_auc_abs_diff_vs_retrained_per_seed']:.3f} (target ≤ 0.05); per seed "
        + ", ".join(f"{v:.3f}" for v in t["mia_auc_abs_diff_per_seed_vs_retrained_per_seed"])
        + f"; forget QA − retrained: {t['forget_qa_over_retrained_per_seed_points']:+.1f} points"
    ]


def _sequential(args, original_dir: Path, dataset_path: Path, corpus, workdir: Path) -> dict:
    from forgetd import api
    from forgetd.config import load_settings
    from forgetd.demo.llm import _measure

    n = args.sequential
    people = [p.id for p in corpus.forget_candidates][:n]
    settings = load_settings({"FORGETD_HOME": str(workdir / "home"), "FORGETD_OPERATOR": "bench"})
    ctx = api.open_context(settings, check_schema=False)
    api.init(ctx)
    ctx = api.open_context(settings)
    bob = api.open_context(replace(settings, operator="bench-approver"))
    api.model_register(ctx, "demo-lm", "causal_lm", str(original_dir), dataset=str(dataset_path))
    start = _measure(ctx, "demo-lm", 0, people)
    steps, completed = [], []
    started = time.perf_counter()

    def observe(label, person: str, request_id: str, so_far: list[str]) -> dict:
        shown = api.request_show(ctx, request_id)
        served = [c for c in api.checkpoint_list(ctx, "demo-lm") if "prod" in c["aliases"]][0]
        measured = _measure(ctx, "demo-lm", served["version"], so_far)
        forgotten = [measured["people"][p]["forget_qa_acc"] for p in so_far]
        if shown["status"] == "completed":
            completed.append(person)
        # how the last training of this request ended: the adapter.trained audit event's steps and stop reason
        trained = [e["payload"] for e in api.audit_log(ctx, request_id=request_id) if e["action"] == "adapter.trained"]
        step = {
            "request": label, "person": person, "status": shown["status"], "reason": shown["status_reason"],
            "steps": trained[-1]["steps"] if trained else None,
            "stop_reason": trained[-1]["stop_reason"] if trained else None,
            "served_version": served["version"], "retain_qa_acc": measured["retain_qa_acc"],
            "retain_ratio": measured["retain_qa_acc"] / start["retain_qa_acc"],
            "max_earlier_forget_qa": max(forgotten), "mean_earlier_forget_qa": statistics.fmean(forgotten),
            "completed": len(completed),
            "max_completed_forget_qa": max((measured["people"][p]["forget_qa_acc"] for p in completed), default=0.0),
            "forget_qa_by_person": {p: measured["people"][p]["forget_qa_acc"] for p in so_far},
            "mia_auc_by_person": {p: measured["people"][p]["mia_auc"] for p in so_far},
            "mia_auc_unseen_by_person": {p: measured["people"][p]["mia_auc_unseen"] for p in so_far},
            "elapsed_seconds": time.perf_counter() - started,
        }
        print(f"[sequential {label}/{n}] {step}", flush=True)
        return step

    ids = {}
    for i, person in enumerate(people):
        submitted = api.request_submit(ctx, {"model": "demo-lm", "policy": "gdpr-erasure",
                                             "subject": f"{person}@people.example", "forget": {"corpus_ids": [person]}})
        ids[person] = submitted["id"]
        api.request_verify_identity(ctx, submitted["id"])
        api.request_approve(bob, submitted["id"])
        api.tick(ctx)
        steps.append(observe(i + 1, person, submitted["id"], people[: i + 1]))
    # What an operator does with a refused request: retry it once from training (`forgetd request retry ID
    # --from train`), against the checkpoint served by then.
    retries = []
    for step in [s for s in steps if s["status"] == "failed"]:
        api.request_retry(ctx, ids[step["person"]], "train")
        api.tick(ctx)
        retries.append(observe(f"retry of {step['request']}", step["person"], ids[step["person"]], people))
    return {"people": people, "start_retain_qa_acc": start["retain_qa_acc"], "steps": steps, "retries": retries}


def _gold_retain_line(result: dict) -> list[str]:
    """The retain QA the gold standard keeps after losing every forget candidate: the scale for the
    sequential run's 90% target."""
    by = {row["method"]: row for row in result.get("table", [])}
    if "retrained" not in by or "original" not in by:
        return []
    ratio = by["retrained"]["retain_qa_acc"] / by["original"]["retain_qa_acc"]
    return [f"For scale: the model retrained without all forget candidates keeps {ratio:.3f} of the original's "
            "retain QA accuracy."]


def _halves_auc(model, tokenizer, dataset) -> dict[str, float]:
    """Min-K% AUC of the calibration half against the verification half under the original model, for
    the dataset's split and for alternating halves: how far apart the two halves start."""
    from forgetd.verify.causal_lm import auc, min_k_scores

    texts = dataset.texts_of(dataset.reference)
    scores = min_k_scores(model, tokenizer, texts)
    out = {"alternating": auc(scores[::2], scores[1::2])}
    if dataset.reference_split:
        out["matched"] = auc([s for s, h in zip(scores, dataset.reference_split) if h == 0],
                             [s for s, h in zip(scores, dataset.reference_split) if h == 1])
    return out


def _halves_line(result: dict) -> list[str]:
    halves = result.get("reference_halves_auc_original")
    if not halves:
        return []
    line = f"Holdout halves (calibration vs verification) under the original: AUC {halves['alternating']:.3f} alternating"
    if "matched" in halves:
        line += f", {halves['matched']:.3f} as split (matched on the original's Min-K% scores, as registration does)"
    return [line + "."]


def _mean_retraining_line(result: dict) -> list[str]:
    """npo-lora's time against the mean of the run's retrainings (with --retrain-per-seed): one retraining's
    time varies by a fifth between runs on the same machine, and the shared one need not be typical."""
    retrainings = [r["seconds"] for r in result["runs"].get(PER_SEED, []) if "seconds" in r]
    npo = [r["seconds"] for r in result["runs"].get("npo-lora", []) if "seconds" in r]
    if not retrainings or not npo:
        return []
    mean = statistics.fmean(retrainings)
    return [f"- time against the mean of the run's {len(retrainings)} retrainings ({mean:.1f} s): "
            f"{100 * statistics.fmean(npo) / mean:.2f}%"]


def _markdown(result: dict) -> str:
    lines = [
        "# Forgetting one person from the demo LM",
        "",
        f"Measured {result['measured_at']} on {result['machine']} ({result['threads']} threads); "
        f"retraining took {result['retrain_seconds']:.1f} s. Means over {result['seeds']} people (seed i forgets "
        "person i); metrics on the verification half of the holdout set.",
        *_halves_line(result),
        "",
        "| method | forget QA | VerbMem | MIA AUC | retain QA | holdout ppl | seconds | % of retraining |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["table"]:
        pct = f"{r['pct_of_retraining']:.2f}" if "pct_of_retraining" in r else "-"
        secs = f"{r['seconds']:.1f}" if "seconds" in r else "-"
        lines.append(
            f"| {r['method']} | {r['forget_qa_acc']:.3f} | {r['verbmem']:.3f} | {r['mia_auc']:.3f} ± {r['mia_auc_sd']:.3f} "
            f"| {r['retain_qa_acc']:.3f} | {r['reference_ppl']:.2f} | {secs} | {pct} |"
        )
    t = result.get("targets")
    if t:
        lines += [
            "",
            "## npo-lora against the targets",
            "",
            f"- forget QA − retrained: {t['forget_qa_over_retrained_points']:+.1f} points (target ≤ +5)",
            f"- |MIA AUC − retrained's|: {t['mia_auc_abs_diff_vs_retrained']:.3f} (target ≤ 0.05); per seed "
            + ", ".join(f"{v:.3f}" for v in t["mia_auc_abs_diff_per_seed"]),
            *_centre_lines(t),
            *_per_seed_lines(t),
            f"- retain QA / original: {t['retain_ratio_vs_original']:.3f} (target ≥ 0.95)",
            f"- time: {t['pct_of_retraining']:.2f}% of retraining (target ≤ 5%)",
            *_mean_retraining_line(result),
        ]
    wide = result.get("wide")
    if wide:
        n = len(wide["people"])
        lines += [
            "",
            f"## MIA AUC on all {n} forget candidates (seed i forgets person i; the first rows are the runs above)",
            "",
            f"- retrained: {wide['retrained_mean']:.3f} ± {wide['retrained_sd']:.3f}; "
            f"npo-lora: {wide['npo-lora_mean']:.3f} ± {wide['npo-lora_sd']:.3f}; "
            f"|difference of means|: {wide['abs_diff_of_means']:.3f}",
            "- per person, retrained: " + ", ".join(f"{v:.2f}" for v in wide["retrained"]),
            "- per person, npo-lora: " + ", ".join(f"{v:.2f}" for v in wide["npo-lora"]),
        ]
        if "unseen_estimate" in wide:
            lines += ["- per person, the estimate npo-lora's band is centred on: "
                      + ", ".join(f"{v:.2f}" for v in wide["unseen_estimate"])
                      + f" (mean {wide['unseen_estimate_mean']:.3f})"]
    seq = result.get("sequential")
    if seq:
        lines += ["", f"## Sequential: {len(seq['steps'])} people, one request at a time through composition", "",
                  "Forget QA of the served checkpoint on the people whose requests completed so far (what the",
                  "pipeline verified) and on every person so far (a failed request leaves its person unforgotten).",
                  *_gold_retain_line(result), "",
                  "| request | status | training steps | served | retain QA / original | completed "
                  "| max forget QA, completed people | max forget QA, all people so far |",
                  "|---|---|---|---|---|---|---|---|"]
        if seq.get("retries"):
            lines[-3:-3] = ["Rows 'retry of N': after the last request, each refused request retried once from training",
                            "(`forgetd request retry ID --from train`, what an operator does), against the checkpoint",
                            "served by then; their last column covers all the people."]
        rows = [*seq["steps"], *seq.get("retries", [])]
        for s in rows:
            lines.append(f"| {s['request']} | {s['status']} | {s.get('steps') or '-'} | v{s['served_version']} "
                         f"| {s['retain_ratio']:.3f} | {s.get('completed', '-')} "
                         f"| {s.get('max_completed_forget_qa', float('nan')):.3f} | {s['max_earlier_forget_qa']:.3f} |")
        last = rows[-1]
        forgotten = [p for p in last["mia_auc_by_person"] if last["forget_qa_by_person"][p] == 0.0]
        aucs = [last["mia_auc_by_person"][p] for p in forgotten]
        if aucs:
            line = (f"Min-K% MIA AUC of the last served checkpoint (v{last['served_version']}) on the {len(aucs)} "
                    f"people it answers nothing about, verification half: {min(aucs):.2f} to {max(aucs):.2f}")
            unseen = last.get("mia_auc_unseen_by_person")
            if unseen:
                dev = [last["mia_auc_by_person"][p] - unseen[p] for p in forgotten]
                line += (f"; minus each person's estimated unseen AUC: {min(dev):+.2f} to {max(dev):+.2f} "
                         "(policy bound: within 0.10 of the estimate).")
            else:
                line += " (policy bound: within 0.10 of 0.5)."
            lines += ["", line]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--sequential", type=int, default=20)
    ap.add_argument("--recipes", nargs="*", default=RECIPES)
    ap.add_argument("--wide", type=int, default=20, help="also npo-lora and retrained MIA AUC on this many people")
    ap.add_argument("--retrain-per-seed", action="store_true",
                    help="also judge person i against a model retrained with training seed i")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=None, help="model cache (default: FORGETD_CACHE_DIR or ~/.cache/forgetd)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)

    import torch

    from forgetd.config import load_settings
    from forgetd.datasets import load_dataset_file
    from forgetd.demo.llm_dataset import write_corpus_dataset
    from forgetd.demo.tiny_lm import TinyLMConfig, ensure_tiny_lm, load_demo_corpus, train_tiny_lm

    torch.set_num_threads(args.threads)
    cache = args.cache or load_settings().cache_dir
    cfg = TinyLMConfig()
    original = ensure_tiny_lm(cache, cfg)  # the demo's model: cached builds are one-thread
    corpus = load_demo_corpus(original)
    forget_set = tuple(p.id for p in corpus.forget_candidates)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        retrained = work / "retrained"
        started = time.perf_counter()
        train_tiny_lm(replace(cfg, exclude_ids=forget_set), retrained, threads=args.threads)
        retrain_seconds = time.perf_counter() - started
        print(f"retrained without {len(forget_set)} people in {retrain_seconds:.1f}s", flush=True)
        per_seed = [(retrained, retrain_seconds)] if args.retrain_per_seed else []
        for seed in range(1, args.seeds if args.retrain_per_seed else 0):
            started = time.perf_counter()
            train_tiny_lm(replace(cfg, exclude_ids=forget_set, seed=seed), work / f"retrained-{seed}", threads=args.threads)
            per_seed.append((work / f"retrained-{seed}", time.perf_counter() - started))
            print(f"retrained with training seed {seed} in {per_seed[-1][1]:.1f}s", flush=True)
        dataset_path = write_corpus_dataset(corpus, work / "dataset.json")
        # as registration does: reference halves matched on the original model's scores
        from forgetd.families import causal_lm

        with torch.no_grad():
            model, tokenizer = causal_lm.load_model(original), causal_lm.load_tokenizer(original)
            dataset = causal_lm.with_matched_reference_split(load_dataset_file(dataset_path), model, tokenizer)
            halves_auc = _halves_auc(model, tokenizer, dataset)
            del model
        rows = _single(args, original, retrained, retrain_seconds, corpus, dataset, per_seed)
        table = _summary(rows, retrain_seconds)
        result = {
            "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": _machine(),
            "threads": args.threads,
            "seeds": args.seeds,
            "retrain_seconds": retrain_seconds,
            "retrain_note": f"one model retrained without all {len(forget_set)} forget candidates",
            "reference_halves_auc_original": halves_auc,
            "table": table,
            "targets": _targets(rows, table),
            "runs": rows,
        }
        if args.wide and "npo-lora" in args.recipes:
            result["wide"] = _wide(args, original, retrained, corpus, dataset, rows)
        if args.sequential:
            result["sequential"] = _sequential(args, original, dataset_path, corpus, work)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "llm_forgetting.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    (args.out / "llm_forgetting.md").write_text(_markdown(result))
    print(_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
