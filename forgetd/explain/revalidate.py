"""Re-check one issued explanation record on a new model (DESIGN 11). Pure: no database, no side effects;
the caller stores the returned dict as an explanation check and moves the record's status.

Statuses decided here: VALID, AT_RISK, INVALIDATED (REISSUED and ERASED are set by the record store).

Counterfactual records:
- INVALIDATED when the new model no longer decides the target class at x_cf (margin ≤ 0);
- AT_RISK when it still does but with a margin below the record's robustness δ (deletion-robust
  records) or below `cf_at_risk_margin` (plain records, which carry no δ): one more update may flip it;
- VALID otherwise.

Attribution records (F = margin of the explained class, same baseline and steps as issued):
- INVALIDATED when the new model decides differently at x (the explanation is of a decision the person
  no longer gets) or when Spearman ρ(new, issued) < `rho_invalid`;
- AT_RISK when ρ is below the record's valid threshold — its own noise floor (the worst ρ of the
  explainer against itself), capped at `rho_valid` so a near-perfectly stable explainer does not turn
  every small change into a risk — or when the top-k agreement falls below min(noise-floor top-k,
  `topk_valid`);
- VALID otherwise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

VALID = "VALID"
AT_RISK = "AT_RISK"
INVALIDATED = "INVALIDATED"
STATUSES = (VALID, AT_RISK, INVALIDATED)


@dataclass(frozen=True)
class Thresholds:
    # Plain counterfactuals have no δ: a margin (logits) below this after an update counts as at risk.
    # 0.25 logits ≈ a 6-point move of the approval probability near 50%.
    cf_at_risk_margin: float = 0.25
    # Attributions: ρ below this invalidates (the ranking of reasons is no longer recognisably the one
    # given); ρ at or above min(noise floor, rho_valid) is valid; in between at risk.
    rho_invalid: float = 0.5
    rho_valid: float = 0.9
    topk_valid: float = 2 / 3


def revalidate(record: dict[str, Any], model, *, thresholds: Thresholds | None = None) -> dict[str, Any]:
    """Dispatch on record["kind"]."""
    kind = record.get("kind")
    if kind == "counterfactual":
        return revalidate_counterfactual(record, model, thresholds=thresholds)
    if kind == "attribution":
        return revalidate_attribution(record, model, thresholds=thresholds)
    raise ValueError(f"unknown explanation kind {kind!r}")


def classify_counterfactual(margin: float, *, at_risk_margin: float) -> str:
    if not isinstance(margin, (int, float)) or math.isnan(margin) or margin <= 0:
        return INVALIDATED
    return AT_RISK if margin < at_risk_margin else VALID


def revalidate_counterfactual(record: dict[str, Any], model, *, thresholds: Thresholds | None = None) -> dict[str, Any]:
    """{status, kind, margin (new), margin_issued, at_risk_margin, decision_at_x (new model's class at
    the person's own x), thresholds}."""
    from forgetd.explain.counterfactual import decide, target_margin

    t = thresholds or Thresholds()
    robustness = record.get("robustness")
    at_risk = float(robustness["delta"]) if robustness else t.cf_at_risk_margin
    margin = target_margin(model, record["x_cf"], int(record["target_class"]))
    decision_at_x, _ = decide(model, record["x"])
    return {
        "kind": "counterfactual",
        "status": classify_counterfactual(margin, at_risk_margin=at_risk),
        "margin": margin,
        "margin_issued": record.get("margin"),
        "at_risk_margin": at_risk,
        "decision_at_x": decision_at_x,
        "thresholds": asdict(t),
    }


def classify_attribution(
    rho: float,
    topk: float,
    *,
    decision_changed: bool,
    noise_floor: dict[str, Any] | None,
    thresholds: Thresholds | None = None,
) -> str:
    t = thresholds or Thresholds()
    if decision_changed or not isinstance(rho, (int, float)) or math.isnan(rho) or rho < t.rho_invalid:
        return INVALIDATED
    floor_rho = (noise_floor or {}).get("spearman_min", t.rho_valid)
    floor_top = (noise_floor or {}).get("topk_min", t.topk_valid)
    floor_rho = t.rho_valid if floor_rho is None or math.isnan(floor_rho) else floor_rho
    floor_top = t.topk_valid if floor_top is None or math.isnan(floor_top) else floor_top
    if rho < min(floor_rho, t.rho_valid) - 1e-12 or topk < min(floor_top, t.topk_valid) - 1e-12:
        return AT_RISK
    return VALID


def revalidate_attribution(record: dict[str, Any], model, *, thresholds: Thresholds | None = None) -> dict[str, Any]:
    """{status, kind, spearman, topk, decision_at_x, decision_changed, attributions (new), f_x,
    completeness_gap, thresholds}."""
    from forgetd.explain.attribution import ig_values, spearman, topk_agreement
    from forgetd.explain.counterfactual import decide

    t = thresholds or Thresholds()
    target = int(record["target_class"])
    decision, _ = decide(model, record["x"])
    new, f_x, f_b = ig_values(model, record["x"], record["baseline"], target, int(record["steps"]))
    rho = spearman(new, record["attributions"])
    topk = topk_agreement(new, record["attributions"], int(record.get("k", 3)))
    changed = decision != target
    return {
        "kind": "attribution",
        "status": classify_attribution(rho, topk, decision_changed=changed, noise_floor=record.get("noise_floor"),
                                       thresholds=t),
        "spearman": rho if not math.isnan(rho) else None,  # strict JSON
        "topk": topk,
        "decision_at_x": decision,
        "decision_changed": changed,
        "attributions": new,
        "f_x": f_x,
        "completeness_gap": sum(new) - (f_x - f_b),
        "thresholds": asdict(t),
    }


def invalidation_rate(checks: list[dict[str, Any]]) -> float:
    """Share of re-checked records that are INVALIDATED (NaN for none)."""
    return sum(c["status"] == INVALIDATED for c in checks) / len(checks) if checks else float("nan")
