"""Explanation records on the demo credit model: counterfactual constraints, deletion-robust recourse
measured against real retraining, integrated-gradients completeness and noise floor, and the
re-validation classification on hand-built models whose margins are known exactly."""

from __future__ import annotations

import json
import math
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

from forgetd.demo.credit import CreditConfig, fit_credit_model  # noqa: E402
from forgetd.explain.attribution import integrated_gradients, spearman, topk_agreement  # noqa: E402
from forgetd.explain.counterfactual import (  # noqa: E402
    SearchSettings,
    calibrate_delta,
    counterfactual,
    deletion_robust_counterfactual,
    margin_changes,
)
from forgetd.explain.influence import DeletionInfluence  # noqa: E402
from forgetd.explain.revalidate import (  # noqa: E402
    AT_RISK,
    INVALIDATED,
    VALID,
    Thresholds,
    classify_attribution,
    invalidation_rate,
    revalidate,
)
from forgetd.families.tabular_classifier import Feature, TabularConfig, build_model  # noqa: E402

CFG = CreditConfig()  # the demo default: stable enough that a retrain lands near the original optimum
K = 10  # deletions the robust recourse must survive


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def demo():
    trained = fit_credit_model(CFG)
    data = trained.data
    X, y = data.arrays(data.train)
    Xt, _ = data.arrays(data.test)
    with torch.no_grad():
        rejected = np.where(trained.model(torch.as_tensor(Xt)).argmax(-1).numpy() == 0)[0]
    influence = DeletionInfluence(trained.model, X, y, l2=CFG.l2, damping=1e-3)
    return trained, X, y, Xt[rejected], influence


def _strict_json(record) -> None:
    json.dumps(record, allow_nan=False)


def test_counterfactuals_respect_immutables_ranges_and_flip(demo):
    trained, X, y, rejected, influence = demo
    config = trained.model.tabular_config
    for x in rejected[:4]:
        plain = counterfactual(trained.model, x)
        robust = deletion_robust_counterfactual(trained.model, x, X, y, k=K, delta=0.2, influence=influence,
                                                settings=SearchSettings(steps=150))
        for record in (plain, robust):
            _strict_json(record)
            assert record["original_class"] == 0 and record["target_class"] == 1 and record["valid"]
            assert record["meets_requirement"] and record["changes"]
            for f, a, b in zip(config.features, record["x"], record["x_cf"]):
                if f.immutable:
                    assert a == b, f"{f.name} is immutable"
                assert f.min - 1e-6 <= b <= f.max + 1e-6
                if f.kind == "integer":
                    assert b == round(b)
            assert {c["feature"] for c in record["changes"]}.isdisjoint({"age", "credit_history_months"})
        assert 0 < plain["margin"] < 0.3, "a plain counterfactual stops just past the boundary"
        assert robust["worst_case_shift"] < 0 and robust["robust_margin"] >= 0.2 - 1e-6
        assert robust["margin"] > plain["margin"] and robust["distance"]["l1"] >= plain["distance"]["l1"]
        assert robust["robustness"] == {"k": K, "delta": 0.2, "influence_scope": "full", "damping": 1e-3,
                                        "l2": CFG.l2, "n_train": len(X)}


def test_deletion_robust_recourse_survives_retraining_more_often(demo):
    """Issue plain and robust (k=10, δ calibrated on validation rows from one retrain) recourse, then
    actually retrain without 10 random training rows three times: the robust recourse must stay valid
    more often, and at least as often as a plain search simply asked for margin δ."""
    trained, X, y, rejected, influence = demo
    data = trained.data
    rng = np.random.default_rng(7)
    Xv, _ = data.arrays(data.validation)
    calibration = fit_credit_model(CFG, exclude_rows=rng.choice(len(X), K, replace=False)).model
    delta = calibrate_delta(margin_changes(trained.model, calibration, Xv, 1), quantile=0.9)
    assert 0 < delta < 1
    people = rejected[:16]
    fast = SearchSettings(steps=150)
    plain = [counterfactual(trained.model, x) for x in people]
    with_delta = [counterfactual(trained.model, x, settings=SearchSettings(min_margin=delta)) for x in people]
    robust = [deletion_robust_counterfactual(trained.model, x, X, y, k=K, delta=delta, influence=influence,
                                             settings=fast) for x in people]
    kept = {"plain": [], "plain_delta": [], "robust": []}
    for _ in range(3):
        updated = fit_credit_model(CFG, exclude_rows=rng.choice(len(X), K, replace=False)).model
        for name, records in (("plain", plain), ("plain_delta", with_delta), ("robust", robust)):
            checks = [revalidate(r, updated) for r in records]
            kept[name].append(1 - invalidation_rate(checks))
    rates = {name: float(np.mean(v)) for name, v in kept.items()}
    print({"delta": delta, "valid_after_retraining": rates})
    assert rates["robust"] > rates["plain"] + 0.1
    assert rates["robust"] >= rates["plain_delta"]
    assert rates["robust"] >= 0.9


def test_integrated_gradients_completeness_and_noise_floor(demo):
    trained, _, _, rejected, _ = demo
    x = rejected[0]
    record = integrated_gradients(trained.model, x, steps=64)
    _strict_json(record)
    assert record["target_class"] == 0 and record["baseline_kind"] == "training_mean"
    delta_f = record["f_x"] - record["f_baseline"]
    assert abs(delta_f) > 0.1
    assert abs(record["completeness_gap"]) <= 1e-3 * max(1.0, abs(delta_f))
    coarse = integrated_gradients(trained.model, x, steps=4, noise_runs=0)
    assert abs(coarse["completeness_gap"]) > abs(record["completeness_gap"]), "the midpoint error shrinks with m"
    floor = record["noise_floor"]
    assert 0.5 < floor["spearman_min"] <= floor["spearman_mean"] <= 1.0
    assert 0.0 <= floor["topk_min"] <= floor["topk_mean"] <= 1.0
    assert revalidate(record, trained.model)["status"] == VALID
    assert record["top_k"] == sorted(range(10), key=lambda i: -abs(record["attributions"][i]))[:3]


def _linear(weights, bias=0.0, *, n=4):
    """A model with no hidden layer whose approve-margin is exactly Σ w_j x_j + bias (mean 0, std 1)."""
    config = TabularConfig(
        features=tuple(Feature(f"f{i}", "continuous", -10, 10, immutable=(i == n - 1)) for i in range(n)),
        class_names=("reject", "approve"),
        hidden_sizes=(),
        favorable_class=1,
    )
    model = build_model(config, seed=0, mean=[0.0] * n, std=[1.0] * n)
    with torch.no_grad():
        head = model.layers[-1]
        head.weight.zero_()
        head.bias.zero_()
        head.weight[1] = torch.tensor(weights, dtype=torch.float32)
        head.bias[1] = bias
    return model.eval()


def _cf_record(x_cf, *, delta=None):
    robustness = None if delta is None else {"k": 5, "delta": delta}
    return {"kind": "counterfactual", "x": [-1.0, 0.0, 0.0, 0.0], "x_cf": x_cf, "target_class": 1,
            "margin": 1.0, "robustness": robustness}


def test_revalidate_counterfactual_cases():
    model = _linear([1.0, 0.0, 0.0, 0.0])
    assert revalidate(_cf_record([0.5, 0, 0, 0]), model)["status"] == VALID
    assert revalidate(_cf_record([0.1, 0, 0, 0]), model)["status"] == AT_RISK  # below the 0.25 default
    check = revalidate(_cf_record([-0.2, 0, 0, 0]), model)
    assert check["status"] == INVALIDATED and math.isclose(check["margin"], -0.2, abs_tol=1e-6)
    assert revalidate(_cf_record([0.5, 0, 0, 0], delta=1.0), model)["status"] == AT_RISK
    assert revalidate(_cf_record([1.5, 0, 0, 0], delta=1.0), model)["status"] == VALID
    lenient = Thresholds(cf_at_risk_margin=0.05)
    assert revalidate(_cf_record([0.1, 0, 0, 0]), model, thresholds=lenient)["status"] == VALID
    assert revalidate(_cf_record([0.5, 0, 0, 0]), _linear([1.0, 0, 0, 0], bias=-1.0))["status"] == INVALIDATED
    assert invalidation_rate([{"status": INVALIDATED}, {"status": VALID}]) == 0.5


def test_counterfactual_on_a_known_linear_model():
    """Only f0..f2 are mutable and f0 is the cheapest lever (largest weight per unit): L1 recourse moves
    just f0, to just past the boundary, and never touches the immutable f3."""
    model = _linear([2.0, 1.0, 0.5, 3.0], bias=-1.0)
    record = counterfactual(model, [0.0, 0.0, 0.0, -1.0])
    assert record["valid"] and [c["feature"] for c in record["changes"]] == ["f0"]
    assert record["x_cf"][3] == -1.0 and math.isclose(record["x_cf"][0], 2.0, abs_tol=0.05)


def _attribution_record(model, x, *, floor_rho=1.0, floor_top=1.0):
    record = integrated_gradients(model, x, baseline=[0.0] * 4, steps=16, noise_runs=0)
    record["noise_floor"] = {"spearman_min": floor_rho, "topk_min": floor_top}
    return record


def test_revalidate_attribution_cases():
    x = [1.0, 1.0, 1.0, 1.0]
    issued = _attribution_record(_linear([4.0, 3.0, 2.0, 1.0]), x)
    assert issued["target_class"] == 1 and issued["attributions"] == pytest.approx([4, 3, 2, 1], abs=1e-5)
    assert revalidate(issued, _linear([4.0, 3.0, 2.0, 1.0]))["status"] == VALID
    assert revalidate(issued, _linear([8.0, 6.0, 4.0, 2.0]))["status"] == VALID  # same ranking, other scale
    swapped = revalidate(issued, _linear([4.0, 2.0, 3.0, 1.0]))  # one adjacent swap: ρ = 0.8, top-3 kept
    assert swapped["status"] == AT_RISK and swapped["spearman"] == pytest.approx(0.8)
    lenient = _attribution_record(_linear([4.0, 3.0, 2.0, 1.0]), x, floor_rho=0.7)
    assert revalidate(lenient, _linear([4.0, 2.0, 3.0, 1.0]))["status"] == VALID  # within the explainer's own noise
    assert revalidate(issued, _linear([1.0, 2.0, 3.0, 4.0]))["status"] == INVALIDATED  # ρ = −1
    flipped = revalidate(issued, _linear([4.0, 3.0, 2.0, 1.0], bias=-20.0))
    assert flipped["status"] == INVALIDATED and flipped["decision_changed"]


def test_classify_attribution_thresholds_and_rank_helpers():
    floor = {"spearman_min": 0.95, "topk_min": 1.0}
    assert classify_attribution(0.92, 1.0, decision_changed=False, noise_floor=floor) == VALID  # capped at 0.9
    assert classify_attribution(0.85, 1.0, decision_changed=False, noise_floor=floor) == AT_RISK
    assert classify_attribution(0.95, 1 / 3, decision_changed=False, noise_floor=floor) == AT_RISK
    assert classify_attribution(0.4, 1.0, decision_changed=False, noise_floor=floor) == INVALIDATED
    assert classify_attribution(float("nan"), 1.0, decision_changed=False, noise_floor=floor) == INVALIDATED
    assert classify_attribution(1.0, 1.0, decision_changed=True, noise_floor=floor) == INVALIDATED
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert topk_agreement([5, -4, 1, 0], [-5, 4, 0, 1], 2) == 1.0
    assert topk_agreement([5, 4, 1, 0], [0, 1, 4, 5], 2) == 0.0


def test_the_demo_delta_is_calibrated_once_per_cached_model(tmp_path):
    from forgetd.demo.credit_explanations import calibrate, cached_delta

    tiny = CreditConfig(n_subjects=30, hidden_sizes=(8,), steps=50)
    first = cached_delta(tmp_path, tiny, 3, seed=1, retrains=1)
    assert first == calibrate(tiny, 3, seed=1, retrains=1)  # the cache holds what calibrate gives
    stored = tmp_path / "delta-k3-seed1-retrains1.json"
    assert json.loads(stored.read_text())["delta"] == first
    stored.write_text(json.dumps({"delta": 0.25}))  # a second call reads the file, it does not retrain
    assert cached_delta(tmp_path, tiny, 3, seed=1, retrains=1) == 0.25
    assert cached_delta(tmp_path, tiny, 4, seed=1, retrains=1) != 0.25  # another k is another calibration
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
