"""Counterfactual recourse for tabular_classifier models, plain and deletion-robust.

Search (both variants): proximal gradient descent on the change δ in standardised units (feature minus
training mean, over training std):

    minimise  ‖δ‖  subject to  r(x + δ) ≥ goal

with the constraint as a hinge λ·max(0, goal − r) whose weight λ doubles after every round that found no
valid point; the L1 norm (default) is handled by soft-thresholding, which makes the advice sparse (few
features change), L2 by shrinkage. After every step δ is projected: immutable features are reset to the
person's values and every feature is clamped to its [min, max] range. The best valid point seen is kept
(the iterates oscillate around the boundary once they reach it, each oscillation a bit closer). Integer
and binary features are rounded at the end in the direction that raises r, then validity is re-checked
(and reported honestly if rounding broke it).

- Plain: r = margin of the target class (its logit over the best other), goal = `min_margin`.
- Deletion-robust (Krishna, Ma & Lakkaraju 2023, "Towards Bridging the Gaps between the Right to
  Explanation and the Right to be Forgotten"): the recourse must stay valid if the model is updated
  after *any* k training rows are deleted. With the first-order influence model of a deletion
  (forgetd.explain.influence), the margin after deleting a set S is  r(x′) + Σ_{i∈S} Δ_i(x′)  with
  Δ_i(x′) = (1/n)·∇θ r(x′)ᵀ H⁻¹ ∇θ ℓ(z_i); the worst S of size k holds the k most negative Δ_i, so the
  constraint is  r(x′) + Σ(k smallest Δ_i(x′)) ≥ δ  (DESIGN 11), differentiated through Δ(x′) (double
  back-propagation) at every step. δ > 0 absorbs what the first-order model misses (a retrain from
  scratch also moves the model by optimisation noise); `calibrate_delta` sets it from observed margin
  drops.

Records are plain JSON-serializable dicts (see `counterfactual` for the fields).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from forgetd.explain.influence import DeletionInfluence, margin_of

SCHEMA = "forgetd-explanation/v1"


@dataclass(frozen=True)
class SearchSettings:
    norm: str = "l1"  # distance in standardised units: "l1" (sparse advice) or "l2"
    steps: int = 300  # proximal-gradient steps per round
    rounds: int = 6  # λ doublings allowed when a round finds no valid point
    lr: float = 0.05  # step size in standardised units
    lam: float = 2.0  # initial weight of the constraint hinge against the distance
    min_margin: float = 0.0  # plain search: required target margin (logits)

    def __post_init__(self) -> None:
        if self.norm not in ("l1", "l2"):
            raise ValueError("norm must be 'l1' or 'l2'")


def _tensor(x, dtype=None):
    import numpy as np
    import torch

    return torch.as_tensor(np.asarray(x, dtype=np.float32), dtype=dtype)


def _schema(model):
    from forgetd.families.tabular_classifier import base_of

    base = base_of(model)
    return base, base.tabular_config


def decide(model, x) -> tuple[int, list[float]]:
    """The model's class for one row and its logits."""
    import torch

    base, _ = _schema(model)
    with torch.no_grad():
        logits = model(_tensor(x, next(base.parameters()).dtype).reshape(1, -1)).squeeze(0)
    return int(logits.argmax()), [float(v) for v in logits]


def target_margin(model, x, target: int) -> float:
    import torch

    base, _ = _schema(model)
    with torch.no_grad():
        logits = model(_tensor(x, next(base.parameters()).dtype).reshape(1, -1)).squeeze(0)
    return float(margin_of(logits, target))


def _default_target(config, original: int) -> int:
    if config.favorable_class is not None and config.favorable_class != original:
        return config.favorable_class
    if len(config.class_names) == 2:
        return 1 - original
    raise ValueError("pass target= for a multi-class model without a favourable class different from the decision")


def _search(model, x, goal: float, settings: SearchSettings, requirement) -> dict[str, Any]:
    """Shared proximal-gradient loop. `requirement(x_raw)` returns (r, extra) as tensors with a graph to x."""
    import torch

    base, config = _schema(model)
    dtype = next(base.parameters()).dtype
    mean, std = base.input_mean.detach().to(dtype), base.input_std.detach().to(dtype)
    x0 = _tensor(x, dtype).reshape(-1)
    z0 = (x0 - mean) / std
    lo = (_tensor([f.min for f in config.features], dtype) - mean) / std - z0
    hi = (_tensor([f.max for f in config.features], dtype) - mean) / std - z0
    mutable = torch.tensor([not f.immutable for f in config.features])
    delta = torch.zeros_like(z0)
    lam = settings.lam
    best: tuple[float, Any] | None = None
    steps_done = 0

    def cost(d) -> float:
        return float(d.abs().sum() if settings.norm == "l1" else d.pow(2).sum().sqrt())

    for _ in range(settings.rounds):
        for _ in range(settings.steps):
            steps_done += 1
            d = delta.clone().requires_grad_(True)
            r, _ = requirement(mean + std * (z0 + d))
            violation = goal - r
            if float(violation.detach()) <= 0:
                c = cost(delta)
                if best is None or c < best[0]:
                    best = (c, delta.clone())
                step = torch.zeros_like(delta)
            else:
                (grad,) = torch.autograd.grad(lam * violation, d)
                step = grad
            with torch.no_grad():
                delta = delta - settings.lr * step
                if settings.norm == "l1":
                    delta = torch.sign(delta) * (delta.abs() - settings.lr).clamp(min=0)
                else:
                    delta = delta / (1 + 2 * settings.lr)
                delta = torch.where(mutable, delta, torch.zeros_like(delta))
                delta = torch.minimum(torch.maximum(delta, lo), hi)
        if best is not None:
            break
        lam *= 2
    chosen = best[1] if best is not None else delta
    if best is not None:
        # The iterates cross the boundary in steps of about lr; shrinking the best valid change towards
        # the person's own row by bisection removes that overshoot (the box and immutables hold on the
        # whole segment, both of its ends being feasible).
        low, high = 0.0, 1.0
        for _ in range(20):
            mid = (low + high) / 2
            # not under no_grad: the robust requirement differentiates w.r.t. the parameters
            r_mid, _ = requirement(mean + std * (z0 + mid * chosen))
            if float(r_mid.detach()) >= goal:
                high = mid
            else:
                low = mid
        chosen = high * chosen
    # Unchanged features (immutables included) are copied, not recomputed: the round trip through
    # standardisation is not exact in float32, and "change your age by 0.001" is not advice.
    x_cf = _round(model, torch.where(chosen == 0, x0, mean + std * (z0 + chosen)), config, requirement)
    r_final, extra = requirement(x_cf.clone())
    z_cf = (x_cf - mean) / std
    change = (z_cf - z0).detach()
    return {
        "x_cf": x_cf.detach(),
        "requirement": float(r_final.detach()),
        "extra": extra,
        "found": best is not None,
        "steps": steps_done,
        "final_lambda": lam,
        "l1": float(change.abs().sum()),
        "l2": float(change.pow(2).sum().sqrt()),
        "changed": int((change.abs() > 1e-6).sum()),
    }


def _round(model, x_cf, config, requirement):
    """Integer/binary features to whole values, each in the direction that raises the requirement."""
    import torch

    integral = [i for i, f in enumerate(config.features) if f.kind in ("integer", "binary")]
    x = x_cf.detach().clone()
    if not integral:
        return x
    probe = x.clone().requires_grad_(True)
    r, _ = requirement(probe)
    (grad,) = torch.autograd.grad(r, probe)
    for i in integral:
        f = config.features[i]
        value = float(x[i])
        if abs(value - round(value)) < 1e-4:
            rounded = round(value)
        else:
            rounded = float(torch.ceil(x[i])) if float(grad[i]) > 0 else float(torch.floor(x[i]))
        x[i] = min(max(rounded, f.min), f.max)
    return x


def _record(model, x, result, *, target, original, method, settings, robustness, goal) -> dict[str, Any]:
    _, config = _schema(model)
    x_list = [float(v) for v in x]
    cf_list = [float(v) for v in result["x_cf"].tolist()]
    margin = target_margin(model, cf_list, target)
    changes = [
        {"feature": f.name, "from": a, "to": b}
        for f, a, b in zip(config.features, x_list, cf_list)
        if abs(a - b) > 1e-6 * max(1.0, abs(a))
    ]
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": "counterfactual",
        "method": method,
        "feature_names": config.feature_names,
        "x": x_list,
        "x_cf": cf_list,
        "original_class": original,
        "target_class": target,
        "target_name": config.class_names[target],
        "margin": margin,
        # valid: the model now decides the target class; meets_requirement: with the required margin
        # (plain) or robust margin (deletion-robust) — rounding integers can break the latter.
        "valid": margin > 0,
        "meets_requirement": margin > 0 and result["requirement"] >= goal - 1e-6,
        "distance": {"norm": settings.norm, "l1": result["l1"], "l2": result["l2"], "changed": result["changed"]},
        "changes": changes,
        "settings": asdict(settings),
        "steps": result["steps"],
        "robustness": robustness,
    }
    if robustness is not None:
        record["worst_case_shift"] = result["extra"]
        record["robust_margin"] = result["requirement"]
    return record


def counterfactual(
    model, x: Sequence[float], *, target: int | None = None, settings: SearchSettings | None = None
) -> dict[str, Any]:
    """Plain minimal-change counterfactual: the closest point (in the chosen norm, standardised units)
    that respects immutables and ranges and gets the target class with margin ≥ settings.min_margin.

    Record fields: schema, kind, method ("gradient-prox"), feature_names, x, x_cf, original_class,
    target_class, target_name, margin (target logit over best other at x_cf), valid (margin > 0),
    meets_requirement, distance {norm, l1, l2, changed}, changes [{feature, from, to}], settings, steps,
    robustness (None)."""
    settings = settings or SearchSettings()
    _, config = _schema(model)
    original, _ = decide(model, x)
    target = _default_target(config, original) if target is None else int(target)

    def requirement(x_raw):
        logits = model(x_raw.reshape(1, -1)).squeeze(0)
        return margin_of(logits, target), None

    goal = settings.min_margin
    result = _search(model, x, goal + 1e-4, settings, requirement)
    return _record(model, x, result, target=target, original=original, method="gradient-prox", settings=settings,
                   robustness=None, goal=goal)


def deletion_robust_counterfactual(
    model,
    x: Sequence[float],
    train_X,
    train_y,
    k: int,
    delta: float,
    *,
    target: int | None = None,
    settings: SearchSettings | None = None,
    influence: DeletionInfluence | None = None,
    l2: float = 0.0,
    damping: float = 1e-3,
    scope: str = "full",
) -> dict[str, Any]:
    """Counterfactual whose margin stays ≥ `delta` under the worst-case deletion of any `k` training rows
    (first-order influence, greedy = the k most adverse single-row effects).

    `influence` (a DeletionInfluence over the model's training rows) is built from train_X/train_y when
    not given; build it once per model and pass it when issuing many records. The record adds
    robustness {k, delta, influence_scope, damping, l2, n_train}, worst_case_shift (≤ 0) and robust_margin
    (margin + worst_case_shift) to the plain fields; method is "deletion-robust"."""
    settings = settings or SearchSettings()
    _, config = _schema(model)
    if influence is None:
        influence = DeletionInfluence(model, train_X, train_y, l2=l2, damping=damping, scope=scope)
    original, _ = decide(model, x)
    target = _default_target(config, original) if target is None else int(target)
    if delta < 0:
        raise ValueError("delta must be ≥ 0")

    def requirement(x_raw):
        shift, g = influence.worst_case_shift(x_raw, target, k, create_graph=x_raw.requires_grad)
        return g + shift, float(shift.detach())

    result = _search(model, x, float(delta) + 1e-4, settings, requirement)
    robustness = {
        "k": int(k),
        "delta": float(delta),
        "influence_scope": influence.scope,
        "damping": influence.damping,
        "l2": influence.l2,
        "n_train": influence.n,
    }
    return _record(model, x, result, target=target, original=original, method="deletion-robust",
                   settings=settings, robustness=robustness, goal=float(delta))


def calibrate_delta(margin_drops: Sequence[float], *, quantile: float = 0.9, floor: float = 0.0) -> float:
    """δ from observed drops of margins when a model was updated (retrained or unlearned after deleting
    rows): the `quantile` of the drops (rises count as 0). The influence term covers the deletions'
    first-order effect; δ covers the rest (optimisation noise, higher-order effects)."""
    import numpy as np

    drops = np.clip(-np.asarray(list(margin_drops), dtype=np.float64), 0, None)
    if drops.size == 0:
        return float(floor)
    return float(max(floor, np.quantile(drops, quantile)))


def margin_changes(before, after, X, target: int) -> list[float]:
    """Per row: target margin under `after` minus under `before` (negative = moved towards rejection)."""
    import torch

    xb = _tensor(X)
    with torch.no_grad():
        return (margin_of(after(xb), target) - margin_of(before(xb), target)).tolist()
