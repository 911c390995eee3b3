"""How issued explanations hold up while the tabular credit model honours erasure requests, through the real
pipeline.

    .venv/bin/python bench/explanations.py [--people 100] [--attributions 20] [--requests 10] [--k 5]
                                           [--out bench/results]

k = 5 was chosen before this run from a probe on 30 other rejected applications (same model, δ calibrated
the same way): robust-over-plain L2 cost overhead was +18% at k=3, +22% at k=5 and +40% at k=10, and the
issue's target is ≤ 30%. With k=10 the same 10-request run left 1/100 robust records invalidated (5/100 on
the retrained model); see bench/results/explanations.md for k=5.

On the demo credit model (forgetd.demo.credit, default config, one thread), in a fresh SQLite forgetd home
with the repository's policies and recipes (forgetd.demo.credit_explanations does the work):
1. δ from the margin drops on validation rows of two models retrained without k random rows;
2. `api.explain_issue` to `--people` rejected never-trained applicants: a plain counterfactual and a
   deletion-robust one (k, δ) each, and integrated-gradients attributions to the first `--attributions`;
3. `--requests` data-erasure requests of training subjects (seeded), each submitted under `gdpr-erasure`,
   identity-verified, approved by a second operator and ticked through the pipeline (adapter, verification,
   composition, promotion, and the `revalidate` job the alias move enqueues) before the next one;
4. after each promotion: cumulative invalidated / at-risk records per variant, read from the records' own
   statuses; and the same records re-checked on a model retrained from scratch without every subject erased
   so far (the gold standard).

Writes bench/results/explanations.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=100)
    ap.add_argument("--attributions", type=int, default=20)
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from forgetd import api
    from forgetd.config import load_settings
    from forgetd.demo import credit_explanations

    t0 = time.perf_counter()
    home = Path(tempfile.mkdtemp(prefix="bench-explanations-"))
    settings = replace(load_settings({"FORGETD_HOME": str(home)}), policies_dir=ROOT / "policies",
                       adapters_dir=ROOT / "adapters")
    api.init(api.open_context(settings, check_schema=False))
    contexts: dict[str, api.Context] = {}

    def as_(operator: str) -> api.Context:
        if operator not in contexts:
            contexts[operator] = api.open_context(replace(settings, operator=operator))
        return contexts[operator]

    result = credit_explanations.run(
        as_, home, home, people=args.people, attributions=args.attributions, requests=args.requests, k=args.k,
        seed=args.seed, retrained=True, progress=lambda msg: print(msg, flush=True),
    )
    audit = api.audit_verify(as_("alice"))
    report = {
        **result,
        "people": args.people,
        "requests": args.requests,
        "audit_ok": audit["ok"],
        "total_seconds": round(time.perf_counter() - t0, 2),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": 1,
                    "loadavg": [round(v, 2) for v in os.getloadavg()]},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "explanations.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "explanations.md").write_text(markdown(report) + "\n")
    print(markdown(report))
    return 0


def _rate(entry: dict) -> str:
    return f"{entry['invalidated']}/{entry['of']} ({entry['invalidated'] / entry['of']:.0%})"


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(r: dict) -> str:
    m, issued = r["model_metrics"], r["issued"]
    lines = [
        "# Explanation robustness under erasure requests (tabular demo credit model, real pipeline)",
        "",
        f"Model: MLP ({m['params']} parameters), test acc {m['test_acc']:.3f} (majority "
        f"{m['test_majority_baseline']:.3f}). {issued['plain']['count']} rejected never-trained applicants each got "
        f"a plain and a deletion-robust counterfactual (any k={r['k']} deletions, δ={r['delta']:.3f}: the "
        f"0.9-quantile of validation margin drops after retraining without {r['k']} random rows, "
        f"{r['calibrate_seconds']:.1f}s), and {issued['attribution']['count']} of them an integrated-gradients "
        f"attribution. Then {r['requests']} data-erasure requests (gdpr-erasure policy) went through `forgetd tick` "
        "one at a time; each promotion's `revalidate` job re-checked every live record.",
        "",
        "## Issued",
        "",
        "| variant | count | valid | mean L2 cost (std units) | mean L1 cost | mean features changed | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant in ("plain", "robust"):
        i = issued[variant]
        lines.append(f"| {variant} | {i['count']} | {i['valid']:.2f} | {i['mean_l2']:.3f} | {i['mean_l1']:.3f} | "
                     f"{i['mean_changed']:.2f} | {i['seconds']:.1f} |")
    o = r["cost_overhead"]
    lines += [
        "",
        f"Cost overhead of robust over plain: **L2 {o['l2']:+.1%}**, L1 {o['l1']:+.1%}. Attributions: explainer "
        f"noise floor (worst Spearman ρ of the explainer against itself, mean over records) "
        f"{issued['attribution']['noise_floor_spearman']:.3f}.",
        "",
        "## After each promotion (records invalid on that checkpoint, of all issued)",
        "",
        "| request | status | prod | plain: unlearned | plain: retrained | robust: unlearned | robust: retrained |"
        " robust at risk (unlearned) | attributions flagged: unlearned / retrained | attribution mean ρ: unlearned /"
        " retrained | min forget/leave-out loss: unlearned / retrained | pipeline s | retrain s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in r["steps"]:
        u, g = s["unlearned"], s["retrained"]
        ua, ga = u["attribution"], g["attribution"]
        rho_u = f"{ua['mean_spearman']:.3f}" if ua.get("mean_spearman") is not None else "-"
        lines.append(
            f"| {s['request']} | {s['status']} | v{s['served_version']} | {_rate(u['plain'])} | {_rate(g['plain'])} | "
            f"{_rate(u['robust'])} | {_rate(g['robust'])} | {u['robust']['at_risk']} | "
            f"{ua['invalidated'] + ua['at_risk']} / {ga['invalidated'] + ga['at_risk']} | {rho_u} / "
            f"{ga['mean_spearman']:.3f} | {_num(s['leave_out_ratio_min']['unlearned'])} / "
            f"{_num(s['leave_out_ratio_min']['retrained'])} | {s['pipeline_seconds']:.1f} | {s['retrain_seconds']:.1f} |"
        )
    last = r["steps"][-1]
    lines += [
        "",
        f"Overall after {len(r['steps'])} requests: plain {_rate(last['unlearned']['plain'])} invalidated on the "
        f"served checkpoint ({_rate(last['retrained']['plain'])} on the retrained model); deletion-robust "
        f"{_rate(last['unlearned']['robust'])} ({_rate(last['retrained']['robust'])} retrained). "
        f"Audit chain verified: {r['audit_ok']}. Total run {r['total_seconds']:.0f}s on one thread.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
