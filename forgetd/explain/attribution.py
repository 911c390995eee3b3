"""Integrated-gradients feature attributions for tabular_classifier decisions, with the explainer's own
noise floor recorded alongside.

What is explained: F(x) = the margin of the class the model decided for the person (its logit over the
best other class), so a positive attribution means "this feature pushed towards the decision you got".
IG_j = (x_j − b_j)·∫₀¹ ∂F/∂x_j(b + α(x − b)) dα, by the midpoint rule with m steps. IG is invariant to
per-feature affine rescaling, so raw units and standardised units give the same attributions.

Baseline: by default the training-data mean (the model's standardisation mean), i.e. "compared with the
average applicant". Zero is not a neutral tabular input (age 0, income 0 are not a reference anyone is
compared with) and lies outside the feature ranges. Immutable features are attributed like any other:
an attribution explains the decision, it is not advice.

Completeness: Σ_j IG_j = F(x) − F(b) exactly for the integral; the midpoint rule's error is recorded as
`completeness_gap` (and should shrink as m grows).

Noise floor: how much the explainer disagrees with itself. The attribution is recomputed with other
step counts (m/2 and 2m) and baselines jittered by N(0, jitter²) in standardised units (seeded); the
floor is the worst (and mean) Spearman ρ and top-k agreement of those runs against the issued
attribution. Re-validation compares a later model's attribution against the issued one on the same
scale: a change smaller than the explainer's own wobble is not evidence that the explanation changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from forgetd.explain.influence import margin_of

SCHEMA = "forgetd-explanation/v1"


def _tensor(x, dtype):
    import numpy as np
    import torch

    return torch.as_tensor(np.asarray(x, dtype=np.float32), dtype=dtype)


def ig_values(model, x, baseline, target: int, steps: int) -> tuple[list[float], float, float]:
    """(attributions, F(x), F(baseline)) with F = margin of `target`."""
    import torch

    from forgetd.families.tabular_classifier import base_of

    dtype = next(base_of(model).parameters()).dtype
    x_t, b_t = _tensor(x, dtype).reshape(-1), _tensor(baseline, dtype).reshape(-1)
    alphas = (torch.arange(steps, dtype=dtype) + 0.5) / steps
    path = (b_t + alphas[:, None] * (x_t - b_t)).requires_grad_(True)
    out = margin_of(model(path), target)
    (grads,) = torch.autograd.grad(out.sum(), path)
    attributions = (x_t - b_t) * grads.mean(0)
    with torch.no_grad():
        ends = margin_of(model(torch.stack([x_t, b_t])), target)
    return [float(v) for v in attributions], float(ends[0]), float(ends[1])


def ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties given their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for t in range(i, j + 1):
            out[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's ρ (Pearson correlation of ranks); NaN when either side is constant."""
    ra, rb = ranks(a), ranks(b)
    n = len(ra)
    if n < 2:
        return float("nan")
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    return cov / (va * vb) ** 0.5 if va > 0 and vb > 0 else float("nan")


def top_k(values: Sequence[float], k: int) -> list[int]:
    """Indices of the k largest |values| (ties broken by index, so the result is deterministic)."""
    return sorted(range(len(values)), key=lambda i: (-abs(values[i]), i))[:k]


def topk_agreement(a: Sequence[float], b: Sequence[float], k: int) -> float:
    """|top-k(a) ∩ top-k(b)| / k on absolute attributions."""
    k = min(k, len(a))
    return len(set(top_k(a, k)) & set(top_k(b, k))) / k if k else float("nan")


def integrated_gradients(
    model,
    x: Sequence[float],
    *,
    target: int | None = None,
    baseline: Sequence[float] | None = None,
    steps: int = 64,
    top: int = 3,
    noise_runs: int = 6,
    jitter: float = 0.1,
    seed: int = 0,
) -> dict[str, Any]:
    """An attribution record.

    Fields: schema, kind ("attribution"), method ("integrated_gradients"), output ("margin"),
    feature_names, x, target_class (the decided class unless given), target_name, baseline,
    baseline_kind ("training_mean" | "given"), steps, attributions, f_x, f_baseline, completeness_gap
    (Σ attributions − (f_x − f_baseline)), top_k (indices, by |attribution|), k, noise_floor {spearman_min,
    spearman_mean, topk_min, topk_mean, runs, jitter, seed}."""
    import numpy as np

    from forgetd.explain.counterfactual import decide
    from forgetd.families.tabular_classifier import base_of

    base = base_of(model)
    config = base.tabular_config
    decided, _ = decide(model, x)
    target = decided if target is None else int(target)
    baseline_kind = "given"
    if baseline is None:
        baseline = base.input_mean.detach().tolist()
        baseline_kind = "training_mean"
    attributions, f_x, f_b = ig_values(model, x, baseline, target, steps)
    gap = sum(attributions) - (f_x - f_b)
    floor = noise_floor(model, x, baseline, target, attributions, steps=steps, k=top, runs=noise_runs,
                        jitter=jitter, seed=seed)
    return {
        "schema": SCHEMA,
        "kind": "attribution",
        "method": "integrated_gradients",
        "output": "margin",
        "feature_names": config.feature_names,
        "x": [float(v) for v in np.asarray(x, dtype=np.float64)],
        "target_class": target,
        "target_name": config.class_names[target],
        "baseline": [float(v) for v in baseline],
        "baseline_kind": baseline_kind,
        "steps": int(steps),
        "attributions": attributions,
        "f_x": f_x,
        "f_baseline": f_b,
        "completeness_gap": gap,
        "k": int(top),
        "top_k": top_k(attributions, top),
        "noise_floor": floor,
    }


def noise_floor(
    model,
    x,
    baseline,
    target: int,
    issued: Sequence[float],
    *,
    steps: int,
    k: int = 3,
    runs: int = 6,
    jitter: float = 0.1,
    seed: int = 0,
) -> dict[str, Any]:
    """Agreement of the issued attribution with re-runs at m/2 and 2m steps and jittered baselines."""
    import numpy as np

    from forgetd.families.tabular_classifier import base_of

    base = base_of(model)
    std = base.input_std.detach().double().numpy()
    rng = np.random.default_rng(seed)
    rhos, tops = [], []
    for run in range(runs):
        m = max(2, steps // 2) if run % 2 == 0 else steps * 2
        b = np.asarray(baseline, dtype=np.float64) + rng.normal(0.0, jitter, size=len(std)) * std
        other, _, _ = ig_values(model, x, b, target, m)
        rhos.append(spearman(issued, other))
        tops.append(topk_agreement(issued, other, k))
    # None rather than NaN: records are stored as strict JSON.
    finite = [r for r in rhos if r == r]
    return {
        "spearman_min": min(finite) if finite else None,
        "spearman_mean": sum(finite) / len(finite) if finite else None,
        "topk_min": min(tops) if tops else None,
        "topk_mean": sum(tops) / len(tops) if tops else None,
        "runs": int(runs),
        "jitter": float(jitter),
        "seed": int(seed),
    }
