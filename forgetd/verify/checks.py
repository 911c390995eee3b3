"""Policy thresholds applied to measured metrics. Fail-closed: a missing metric fails its check."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Check:
    metric: str
    value: float
    threshold: float
    passed: bool

    def describe(self) -> str:
        return f"{self.metric}={self.value:.4f} (threshold {self.threshold:g})"


def _ok(value: float, condition: bool) -> bool:
    return not math.isnan(value) and condition


def causal_lm_checks(metrics: dict[str, Any], original: dict[str, Any], thresholds: dict[str, float]) -> list[Check]:
    """forget QA ≤ reference QA + t; retain QA ≥ t × original's; |MIA AUC − c| ≤ t, c the AUC a model that
    never saw the forget set would give (`mia_auc_unseen`, verify.unseen_estimate; 0.5 where not measured)."""
    checks: list[Check] = []
    nan = float("nan")
    if "forget_qa_acc_max_over_reference" in thresholds:
        t = thresholds["forget_qa_acc_max_over_reference"]
        gap = metrics.get("forget_qa_acc", nan) - metrics.get("reference_qa_acc", nan)
        checks.append(Check("forget_qa_acc_over_reference", gap, t, _ok(gap, gap <= t + 1e-12)))
    if "retain_acc_min_ratio" in thresholds:
        t = thresholds["retain_acc_min_ratio"]
        base = original.get("retain_qa_acc", nan)
        ratio = metrics.get("retain_qa_acc", nan) / base if base and not math.isnan(base) else nan
        checks.append(Check("retain_qa_acc_ratio", ratio, t, _ok(ratio, ratio >= t - 1e-12)))
    if "mia_auc_max_dev" in thresholds:
        t = thresholds["mia_auc_max_dev"]
        dev = abs(metrics.get("mia_auc", nan) - metrics.get("mia_auc_unseen", 0.5))
        checks.append(Check("mia_auc_deviation", dev, t, _ok(dev, dev <= t + 1e-12)))
    return checks


def image_classifier_checks(
    metrics: dict[str, Any], original: dict[str, Any], thresholds: dict[str, float]
) -> list[Check]:
    """Forgotten classes' held-out accuracy ≤ t; retain accuracy ≥ t × original's; for a subject's data,
    accuracy on it ≤ reference accuracy + t and |MIA AUC − 0.5| ≤ t (those metrics exist only for kind data,
    so a policy asking for them on a class request fails closed)."""
    checks: list[Check] = []
    nan = float("nan")
    if "forget_acc_max" in thresholds:
        t = thresholds["forget_acc_max"]
        value = metrics.get("forget_acc", nan)
        checks.append(Check("forget_acc", value, t, _ok(value, value <= t + 1e-12)))
    if "retain_acc_min_ratio" in thresholds:
        t = thresholds["retain_acc_min_ratio"]
        base = original.get("retain_acc", nan)
        ratio = metrics.get("retain_acc", nan) / base if base and not math.isnan(base) else nan
        checks.append(Check("retain_acc_ratio", ratio, t, _ok(ratio, ratio >= t - 1e-12)))
    if "forget_qa_acc_max_over_reference" in thresholds:
        t = thresholds["forget_qa_acc_max_over_reference"]
        gap = metrics.get("data_acc", nan) - metrics.get("reference_acc", nan)
        checks.append(Check("data_acc_over_reference", gap, t, _ok(gap, gap <= t + 1e-12)))
    if "mia_auc_max_dev" in thresholds:
        t = thresholds["mia_auc_max_dev"]
        dev = abs(metrics.get("mia_auc", nan) - 0.5)
        checks.append(Check("mia_auc_deviation", dev, t, _ok(dev, dev <= t + 1e-12)))
    return checks


def _tabular_checks(metrics: dict[str, Any], original: dict[str, Any], thresholds: dict[str, float]) -> list[Check]:
    from forgetd.families.tabular_classifier import checks

    return checks(metrics, original, thresholds)


CHECKERS = {
    "causal_lm": causal_lm_checks,
    "image_classifier": image_classifier_checks,
    "tabular_classifier": _tabular_checks,
}


def failing(checks: list[Check]) -> list[Check]:
    return [c for c in checks if not c.passed]
