"""The explanation part of the demo (and of bench/explanations.py): recourse issued to rejected applicants
of the tabular credit model, then data-erasure requests of other people honoured one at a time through the
normal pipeline, with every issued record re-checked on each new served checkpoint.

Everything goes through the product's own code: `api.explain_issue` (encrypted records under the served
checkpoint), `api.request_submit/verify_identity/approve` under the real `gdpr-erasure` policy, `api.tick`
(train → evaluate → compose → verify → promote, then the `revalidate` job the alias move enqueued) and
`api.explain_report` for each transition. Optionally (`retrained=True`, the benchmark) the same records are
also re-checked on a model retrained from scratch without every subject erased so far: the gold standard
the unlearned checkpoints stand in for.

δ, the margin a deletion-robust counterfactual must keep under the worst-case deletion of any k training
rows, comes from the data (`calibrate`): the 0.9-quantile of validation margin drops of two models retrained
without k random rows.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

from forgetd import api

MODEL = "demo-credit"
APPROVER = "bob"
OPERATOR = "alice"


def calibrate(cfg, k: int, *, seed: int = 0, retrains: int = 2) -> float:
    import numpy as np

    from forgetd.demo.credit import fit_credit_model
    from forgetd.explain.counterfactual import calibrate_delta, margin_changes

    base = fit_credit_model(cfg)
    X, _ = base.data.arrays(base.train_ids())
    Xv, _ = base.data.arrays(base.data.validation)
    rng = np.random.default_rng(seed)
    drops: list[float] = []
    for _ in range(retrains):
        other = fit_credit_model(cfg, exclude_rows=rng.choice(len(X), k, replace=False)).model
        drops += margin_changes(base.model, other, Xv, 1)
    return round(calibrate_delta(drops, quantile=0.9), 4)


def cached_delta(root: Path, cfg, k: int, *, seed: int = 0, retrains: int = 2) -> float:
    """`calibrate`'s δ, kept beside the cached model it was calibrated for: it is a function of the model's
    config, k and the seed alone, and its retrainings were the credit part's longest step on a cached run."""
    from forgetd.demo.cache import write_atomic

    path = root / f"delta-k{k}-seed{seed}-retrains{retrains}.json"
    if path.is_file():
        return float(json.loads(path.read_text())["delta"])
    delta = calibrate(cfg, k, seed=seed, retrains=retrains)
    write_atomic(path, json.dumps({"delta": delta, "k": k, "seed": seed, "retrains": retrains}))
    return delta


def rejected_applicants(model_dir: Path, dataset, n: int) -> list[tuple[str, dict[str, float]]]:
    """The first `n` applications (rows) of never-trained subjects that the model rejects, with their
    subject: a subject with several rejected applications is owed recourse for each."""
    import numpy as np
    import torch

    from forgetd.families import tabular_classifier as tc

    model = tc.load_model(model_dir)
    names = model.tabular_config.feature_names
    out = []
    for subject in dataset.reference:
        rows = np.asarray(dataset.records[subject].rows, dtype=np.float32)
        with torch.no_grad():
            decided = model(torch.as_tensor(rows)).argmax(-1).numpy()
        for row, d in zip(rows, decided):
            if d == 0 and len(out) < n:
                out.append((subject, {name: float(v) for name, v in zip(names, row.tolist())}))
    if len(out) < n:
        raise ValueError(f"the demo dataset has only {len(out)} rejected never-trained applications")
    return out


def _weights(ctx, version: int) -> Path:
    from sqlalchemy import select

    from forgetd import pipeline
    from forgetd.db.models import Checkpoint, Model

    with ctx.session() as s:
        model = s.execute(select(Model).where(Model.name == MODEL)).scalar_one()
        checkpoint = s.execute(select(Checkpoint).where(Checkpoint.model_id == model.id,
                                                        Checkpoint.version == version)).scalar_one()
        return pipeline.checkpoint_dir(ctx, checkpoint)


def _variant(summary: dict[str, Any]) -> str:
    if summary["kind"] == "attribution":
        return "attribution"
    return "robust" if summary["robust"] else "plain"


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def run(
    as_: Callable[[str], "api.Context"],
    cache_dir: Path,
    workdir: Path,
    *,
    people: int = 8,
    attributions: int = 4,
    requests: int = 2,
    k: int = 5,
    delta: float | None = None,
    seed: int = 0,
    retrained: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    import numpy as np

    from forgetd.demo.credit import CreditConfig, ensure_credit_model, load_credit_dataset, retrain_without
    from forgetd.explain.revalidate import INVALIDATED, revalidate

    say = progress or (lambda _msg: None)
    cfg = CreditConfig()
    demo = ensure_credit_model(cache_dir, cfg)
    dataset = load_credit_dataset(demo)
    alice = as_(OPERATOR)
    api.model_register(alice, MODEL, "tabular_classifier", str(demo.model_dir), dataset=str(demo.dataset_path))
    started = time.perf_counter()
    if delta is None:
        delta = cached_delta(demo.root, cfg, k, seed=seed)
    calibrate_seconds = time.perf_counter() - started
    say(f"δ = {delta:.3f} for any k={k} deletions ({calibrate_seconds:.1f}s)")

    applicants = rejected_applicants(demo.model_dir, dataset, people)
    inputs = workdir / "explain-inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    issued: dict[str, list[dict[str, Any]]] = {"plain": [], "robust": [], "attribution": []}
    seconds: dict[str, float] = {}
    for variant in issued:
        started = time.perf_counter()
        chosen = applicants if variant != "attribution" else applicants[:attributions]
        for i, (subject, row) in enumerate(chosen):
            path = inputs / f"application-{i}.json"
            path.write_text(json.dumps(row))
            if variant == "plain":
                summary = api.explain_issue(alice, MODEL, f"{subject}@example.org", str(path))
            elif variant == "robust":
                summary = api.explain_issue(alice, MODEL, f"{subject}@example.org", str(path), robust_k=k, delta=delta)
            else:
                summary = api.explain_issue(alice, MODEL, f"{subject}@example.org", str(path), "attribution")
            issued[variant].append(api.explain_show(alice, summary["id"], include_record=True))
        seconds[variant] = round(time.perf_counter() - started, 3)
        say(f"issued {len(issued[variant])} {variant} records in {seconds[variant]:.1f}s")

    def cost(variant: str, norm: str) -> float | None:
        return _mean([r["record"]["distance"][norm] for r in issued[variant]])

    summary_issued = {
        variant: {
            "count": len(records),
            "seconds": seconds[variant],
            **({"valid": _mean([float(r["record"]["valid"]) for r in records]),
                "mean_l2": cost(variant, "l2"), "mean_l1": cost(variant, "l1"),
                "mean_changed": _mean([float(r["record"]["distance"]["changed"]) for r in records])}
               if variant != "attribution" else
               {"noise_floor_spearman": _mean([r["record"]["noise_floor"]["spearman_min"] for r in records])}),
        }
        for variant, records in issued.items()
    }
    plain_l2, robust_l2 = summary_issued["plain"]["mean_l2"], summary_issued["robust"]["mean_l2"]
    overhead = {"l2": robust_l2 / plain_l2 - 1 if plain_l2 else None,
                "l1": summary_issued["robust"]["mean_l1"] / summary_issued["plain"]["mean_l1"] - 1
                if summary_issued["plain"]["mean_l1"] else None}

    rng = np.random.default_rng(seed)
    erasing = [str(s) for s in rng.choice(sorted(dataset.retain), requests, replace=False)]
    completed: list[str] = []
    leave_out: dict[str, tuple[Any, float]] = {}  # subject -> (verification data, original leave-out loss)
    ids = {variant: {r["id"] for r in records} for variant, records in issued.items()}
    steps: list[dict[str, Any]] = []
    for step, subject in enumerate(erasing, start=1):
        started = time.perf_counter()
        record = api.request_submit(alice, {"model": MODEL, "policy": "gdpr-erasure",
                                            "subject": f"{subject}@example.org",
                                            "forget": {"corpus_ids": [subject]}})
        api.request_verify_identity(alice, record["id"])
        api.request_approve(as_(APPROVER), record["id"])
        api.tick(alice, model=MODEL)
        shown = api.request_show(alice, record["id"])
        served = [c for c in api.checkpoint_list(alice, MODEL) if "prod" in c["aliases"]][0]
        pipeline_seconds = time.perf_counter() - started
        report = api.explain_report(alice, MODEL, served["version"]) if served["version"] else None
        current = {r["id"]: r for r in api.explain_list(alice)}
        row: dict[str, Any] = {
            "request": step, "request_id": record["id"], "status": shown["status"],
            "reason": shown["status_reason"], "served_version": served["version"],
            "pipeline_seconds": round(pipeline_seconds, 2), "checked": report["checked"] if report else 0,
            "unlearned": {},
        }
        for variant, members in ids.items():
            statuses = [current[i]["status"] for i in members]
            row["unlearned"][variant] = {
                "invalidated": sum(st == INVALIDATED for st in statuses),
                "at_risk": sum(st == "AT_RISK" for st in statuses),
                "of": len(statuses),
            }
        if shown["status"] == "completed":
            completed.append(subject)
        if retrained:
            from forgetd.families import tabular_classifier as tc

            started = time.perf_counter()
            gold = retrain_without(completed, cfg)
            row["retrain_seconds"] = round(time.perf_counter() - started, 2)
            row["retrained"] = {}
            for variant, records in issued.items():
                checks = [revalidate(r["record"], gold) for r in records]
                entry = {"invalidated": sum(c["status"] == INVALIDATED for c in checks),
                         "at_risk": sum(c["status"] == "AT_RISK" for c in checks), "of": len(checks)}
                if variant == "attribution":
                    entry["mean_spearman"] = _mean([c["spearman"] for c in checks])
                row["retrained"][variant] = entry
            # How the forgotten subjects' rows look to the served model and to the retrained one, against
            # the leave-out estimate the gdpr-erasure policy checks (forget loss / leave-out loss).
            served_model = tc.load_model(_weights(alice, served["version"]))
            original_model = tc.load_model(demo.model_dir)
            ratios: dict[str, list[float]] = {"unlearned": [], "retrained": []}
            for done in completed:
                if done not in leave_out:
                    data = tc.forget_data(dataset, [{"corpus_ids": [done]}]).verification_half()
                    leave_out[done] = (data, tc.evaluate(original_model, None, data)["leave_out_loss"])
                data, bound = leave_out[done]
                ratios["unlearned"].append(tc.evaluate(served_model, None, data)["forget_loss"] / bound)
                ratios["retrained"].append(tc.evaluate(gold, None, data)["forget_loss"] / bound)
            row["leave_out_ratio_min"] = {k: round(min(v), 4) if v else None for k, v in ratios.items()}
        if issued["attribution"]:
            row["unlearned"]["attribution"]["mean_spearman"] = _mean(
                [c["spearman"] for r in issued["attribution"]
                 for c in api.explain_show(alice, r["id"])["checks"][-1:] if c["version"] == served["version"]])
        steps.append(row)
        u = row["unlearned"]
        say(f"erasure {step}/{requests} ({record['id']}): {shown['status']}, prod v{served['version']}; invalidated "
            f"plain {u['plain']['invalidated']}/{u['plain']['of']}, robust {u['robust']['invalidated']}/"
            f"{u['robust']['of']}")
    return {
        "model": MODEL, "k": k, "delta": delta, "calibrate_seconds": round(calibrate_seconds, 2),
        "issued": summary_issued, "cost_overhead": overhead, "steps": steps,
        "model_metrics": demo.meta()["metrics"],
    }


def table(result: dict[str, Any]) -> list[str]:
    """The invalidation table as markdown lines (cumulative counts after each promotion)."""
    lines = [
        "| after request | status | prod | plain invalidated | robust invalidated | robust at risk |"
        " attributions flagged |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in result["steps"]:
        u = s["unlearned"]
        attr = u["attribution"]
        lines.append(
            f"| {s['request']} | {s['status']} | v{s['served_version']} | {u['plain']['invalidated']}/{u['plain']['of']} | "
            f"{u['robust']['invalidated']}/{u['robust']['of']} | {u['robust']['at_risk']}/{u['robust']['of']} | "
            f"{attr['invalidated'] + attr['at_risk']}/{attr['of']} |"
        )
    return lines
