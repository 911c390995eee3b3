"""Family image_classifier and GS-LoRA on the digits demo: stock HF save/load with the hash check, forget
data resolution, forgetting one class, group sparsity, a stock-loadable adapter, merge parity.

A deliberately small ViT (3 blocks of width 32, 30 epochs, ≈ 95% test accuracy, about 10 s on one thread)
keeps the file fast; the default demo model is measured by bench/vision_forgetting.py. With 15 epochs
(≈ 92%) the model was too weak to show the property reliably: CI on one machine measured retain accuracy
after forgetting at 0.923 of the original's (floor 0.95), and this machine (AMD EPYC, AVX-512) 0.953-0.990
over training seeds 0-3; with 30 epochs, 0.990-1.003 here, every seed dropping 2 blocks, and the shipped
recipe first forgetting at retain 0.79-0.86 against the stopping floor 0.93.
"""

from __future__ import annotations

import json
from pathlib import Path
import math
import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never touch a hub

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
pytest.importorskip("sklearn")

from forgetd import compose  # noqa: E402
from forgetd.datasets import load_dataset_file  # noqa: E402
from forgetd.demo import digits  # noqa: E402
from forgetd.errors import DomainError, IntegrityFailure  # noqa: E402
from forgetd.families import family_module  # noqa: E402
from forgetd.families import image_classifier as family  # noqa: E402
from forgetd.training.common import TrainingFailed  # noqa: E402
from forgetd.training.registry import get_recipe  # noqa: E402
from forgetd.verify.checks import CHECKERS  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

SMALL = digits.DigitsConfig(hidden_size=32, num_heads=2, intermediate_size=64, epochs=30, lr=3e-3)
FORGET = 3
# A longer warm-up and a stronger lasso than the default recipe's, so that this narrow model reliably has a
# block to drop: on the 15-epoch model, with {warmup 40, α 0.1} the smallest block ended at 0.15 of the largest and
# dropping it broke the calibration check (nothing pruned), and training seeds 1 and 2 pruned nothing either;
# with these, seeds 0-3 each end with a block at ≤ 0.02 of the largest (the sparsity phase runs as long as
# the warm-up: stop ≥ 2 × warm-up).
GS_OVERRIDES = {"warmup_steps": 60, "group_alpha": 0.3}
CLASS_REMOVAL = {"forget_acc_max": 0.05, "retain_acc_min_ratio": 0.95}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-reproducible, and no OpenMP spin-waits on a shared 2-core machine
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    root = digits.ensure_digits_vit(home, SMALL)
    return {"home": home, "root": root, "model": digits.model_path(root),
            "dataset": load_dataset_file(digits.dataset_path(root))}


@pytest.fixture(scope="module")
def forgot_one(demo, tmp_path_factory):
    """GS-LoRA forgetting class FORGET from the small demo model (trained once for the module)."""
    out = tmp_path_factory.mktemp("gs") / "adapter"
    recipe = get_recipe(REPO / "adapters", "gs-lora", **GS_OVERRIDES)
    data = family.forget_data(demo["dataset"], [{"labels": [FORGET]}])
    result = recipe.module().train(recipe, model=family.load_model(demo["model"]), tokenizer=None, data=data,
                                   out_dir=out)
    return {"adapter": out, "data": data, "result": result}


@pytest.fixture(scope="module")
def forgot_one_shipped(demo, tmp_path_factory):
    """GS-LoRA as shipped (no overrides) forgetting class FORGET. The stopping-rule test uses it: with
    GS_OVERRIDES' stronger lasso, retain accuracy on this narrow model hovered at 0.91-0.93 against a floor of
    0.937 on an Intel machine with the 15-epoch model, so the rule never fired there (it did on an AMD one);
    as shipped, training seeds 0-2 stopped by the rule at steps 75, 105 and 125 of 200 there, and on the
    30-epoch model seeds 0-3 stop at step 60 (AMD EPYC, AVX-512)."""
    out = tmp_path_factory.mktemp("gs-shipped") / "adapter"
    recipe = get_recipe(REPO / "adapters", "gs-lora")
    data = family.forget_data(demo["dataset"], [{"labels": [FORGET]}])
    return recipe.module().train(recipe, model=family.load_model(demo["model"]), tokenizer=None, data=data,
                                 out_dir=out)


def _load_base(demo):
    return lambda: family.load_model(demo["model"])


def _logits(model, images):
    return family.predict(model, images)


# --- the demo model and its dataset ------------------------------------------------------------------------


def test_demo_model_round_trip_stock_loading_and_hash(demo):
    from forgetd.api import hash_model_dir

    model_dir = demo["model"]
    meta = digits.read_demo_meta(demo["root"])
    assert meta["cache_key"] == SMALL.cache_key() and meta["metrics"]["test_acc"] >= 0.85
    stock = transformers.ViTForImageClassification.from_pretrained(model_dir, local_files_only=True).eval()
    ours = family.load_model(model_dir, expected_sha256=hash_model_dir(model_dir)[0])
    images = family.images_of(demo["dataset"], demo["dataset"].test[:50])
    assert torch.equal(_logits(stock, images), _logits(ours, images))
    assert ours.use_kernels is False  # stock loading swaps in Hugging Face hub kernels; ours never does
    with pytest.raises(IntegrityFailure):
        family.load_model(model_dir, expected_sha256="0" * 64)
    assert family.load_tokenizer(model_dir) is None
    assert family_module("image_classifier") is family
    # cached by config: a second call returns the same directory without training again
    before = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert digits.ensure_digits_vit(demo["home"], SMALL) == demo["root"]
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == before


def test_dataset_splits_are_disjoint_and_stratified(demo):
    ds = demo["dataset"]
    train, val, test = set(ds.retain), set(ds.validation), set(ds.test)
    assert len(ds.records) == 1797 and not (train & val or train & test or val & test)
    assert len(train | val | test) == 1797
    labels_in_test = {ds.records[i].labels[0] for i in test}
    assert labels_in_test == set(range(10))
    assert json.loads(digits.dataset_path(demo["root"]).read_text())["format"] == "forgetd-records/v1"


def test_forget_data_resolves_classes_subjects_and_exclusions(demo):
    ds = demo["dataset"]
    data = family.forget_data(ds, [{"labels": [FORGET]}], exclude_from_retain=frozenset({7}))
    assert data.kind == "class" and data.forget_classes == (FORGET,)
    assert set(data.forget_train.labels.tolist()) == {FORGET}
    assert not {FORGET, 7} & set(data.retain_train.labels.tolist())
    calib, verif = data.calibration_half(), data.verification_half()
    assert data.split == "validation"  # a view nobody halved never sees test data
    for view, ids in ((calib, ds.validation), (verif, ds.test)):
        labels = [ds.records[i].labels[0] for i in ids]
        assert set(view.forget_eval.labels.tolist()) == {FORGET}
        assert len(view.forget_eval) == labels.count(FORGET)
        assert len(view.retain_eval) == sum(1 for label in labels if label not in (FORGET, 7))
    # kind data: a subject's samples, judged on themselves, never part of retain data
    subject = ds.retain[:5]
    data = family.forget_data(ds, [{"corpus_ids": subject}])
    assert data.kind == "data" and len(data.forget_train) == 5 and len(data.retain_train) == len(ds.retain) - 5
    with pytest.raises(DomainError):
        family.forget_data(ds, [{"labels": [42]}])
    with pytest.raises(DomainError):
        family.forget_data(ds, [{"corpus_ids": ["nobody"]}])
    with pytest.raises(DomainError):
        family.forget_data(ds, [{}])


def test_lora_targets_are_the_feed_forward_linears_of_every_block(demo):
    model = family.load_model(demo["model"])
    names, fan_in_fan_out = family.lora_targets(model, "mlp")
    assert not fan_in_fan_out and len(names) == 2 * SMALL.num_layers
    assert all(family.block_of(n) is not None for n in names)
    assert not any("attention" in n for n in names)
    attn, _ = family.lora_targets(model, "attn")
    assert len(attn) == 4 * SMALL.num_layers and not set(attn) & set(names)


# --- metrics and checks ------------------------------------------------------------------------------------


def test_h_mean_and_checks_fail_closed():
    assert family.h_mean(0.0, 0.9, 1.0) == pytest.approx(2 * 1.0 * 0.9 / 1.9)
    assert family.h_mean(1.0, 0.9, 1.0) == 0.0  # nothing forgotten
    assert math.isnan(family.h_mean(float("nan"), 0.9, 1.0))
    check = CHECKERS["image_classifier"]
    good = check({"forget_acc": 0.0, "retain_acc": 0.95}, {"retain_acc": 0.96}, CLASS_REMOVAL)
    assert [c.passed for c in good] == [True, True]
    bad = check({"forget_acc": float("nan"), "retain_acc": 0.95}, {"retain_acc": float("nan")}, CLASS_REMOVAL)
    assert [c.passed for c in bad] == [False, False]
    # a data-kind threshold on a class request: the metric does not exist, so the check fails
    assert not check({"forget_acc": 0.0}, {}, {"mia_auc_max_dev": 0.1})[0].passed
    assert family.checks is not None and family.checks({"forget_acc": 0.0}, {}, {"forget_acc_max": 0.05})[0].passed


# --- GS-LoRA ------------------------------------------------------------------------------------------------


def test_gs_lora_forgets_one_class_and_keeps_the_rest(demo, forgot_one):
    judge = forgot_one["data"].verification_half()
    original = family.evaluate(family.load_model(demo["model"]), None, judge)
    served = compose.merged_model(_load_base(demo), [forgot_one["adapter"]], [1.0])
    after = family.evaluate(served, None, judge, original=original)
    assert original["forget_acc"] > 0.7
    assert after["forget_acc"] <= 0.05
    assert after["retain_acc"] >= 0.95 * original["retain_acc"]
    assert after["h_mean"] > 0.8
    assert all(c.passed for c in family.checks(after, original, CLASS_REMOVAL))
    result = forgot_one["result"]
    assert result["stop_reason"].startswith(("reference", "max_steps"))
    assert {"steps", "stop_reason", "groups_total", "groups_zeroed", "history"} <= set(result)


def test_gs_lora_stops_only_once_calibration_retain_is_back(forgot_one_shipped):
    # forgotten at the first measurements, but retain accuracy was still low there: stopping waits for it
    result, spec = forgot_one_shipped, get_recipe(REPO / "adapters", "gs-lora").train
    assert spec.stop_retain_ratio > 0
    floor = spec.stop_retain_ratio * result["calibration_original"]["retain_acc"]
    first_forgotten = next(h for h in result["history"] if h["forget_acc"] <= spec.stop_forget_acc)
    assert first_forgotten["retain_acc"] < floor  # the rule has something to wait for on this model
    assert result["stop_reason"] == "reference"
    assert result["history"][-1]["retain_acc"] >= floor


def test_group_sparsity_drops_blocks_and_the_adapter_loads_with_stock_peft(demo, forgot_one):
    from safetensors.torch import load_file

    result = forgot_one["result"]
    assert result["groups_total"] == SMALL.num_layers
    assert result["groups_zeroed"] >= 1
    kept = set(range(SMALL.num_layers)) - set(result["zeroed_blocks"])
    stored = load_file(str(forgot_one["adapter"] / "adapter_model.safetensors"))
    assert {family.block_of(k) for k in stored} == kept  # dropped groups take no space
    config = json.loads((forgot_one["adapter"] / "adapter_config.json").read_text())
    assert not config["use_rslora"] and not config["use_dora"] and config["lora_dropout"] == 0.0
    model = peft.PeftModel.from_pretrained(family.load_model(demo["model"]), str(forgot_one["adapter"])).eval()
    judge = forgot_one["data"].verification_half()
    assert family.accuracy(model, judge.forget_eval) <= 0.05


def test_merge_parity_runtime_merged_and_stock_dir(demo, forgot_one, tmp_path):
    images = forgot_one["data"].verification_half().retain_eval
    runtime = peft.PeftModel.from_pretrained(family.load_model(demo["model"]), str(forgot_one["adapter"])).eval()
    merged = compose.merged_model(_load_base(demo), [forgot_one["adapter"]], [1.0])
    expected = _logits(runtime, images)
    assert torch.allclose(_logits(merged, images), expected, atol=1e-4, rtol=0)
    out = compose.build_merged_dir(_load_base(demo), demo["model"], [forgot_one["adapter"]], [1.0], tmp_path / "ckpt")
    stock = transformers.ViTForImageClassification.from_pretrained(out, local_files_only=True).eval()
    assert torch.allclose(_logits(stock, images), expected, atol=1e-4, rtol=0)
    assert stock.config.forgetd_pixel_mean == merged.config.forgetd_pixel_mean  # preprocessing travels


def test_sequential_adapters_compose_exactly(demo, forgot_one, tmp_path):
    """A second request trained against the checkpoint carrying the first; pruned adapters may cover
    different blocks: merged weights, runtime multi-adapter and the `cat` adapter must still agree."""
    recipe = get_recipe(REPO / "adapters", "gs-lora", **GS_OVERRIDES)
    # what the pipeline hands a recipe: the first request's class out of the retain data, and held forgotten
    data = family.forget_data(demo["dataset"], [{"labels": [0]}], exclude_from_retain=frozenset({FORGET}))
    data = family.with_forgotten(data, demo["dataset"], [{"labels": [FORGET]}])
    assert set(data.held_train.labels.tolist()) == {FORGET}
    against = compose.merged_model(_load_base(demo), [forgot_one["adapter"]], [1.0])
    recipe.module().train(recipe, model=against, tokenizer=None, data=data, out_dir=tmp_path / "second")
    adapters = [forgot_one["adapter"], tmp_path / "second"]
    merged = compose.merged_model(_load_base(demo), adapters, [1.0, 1.0])
    runtime = compose.load_with_adapters(_load_base(demo), adapters)
    cat = compose.build_cat_adapter(_load_base(demo), adapters, [1.0, 1.0], tmp_path / "cat")
    cat_model = peft.PeftModel.from_pretrained(family.load_model(demo["model"]), str(cat)).eval()
    judge = family.forget_data(demo["dataset"], [{"labels": [FORGET, 0]}]).verification_half()
    expected = _logits(runtime, judge.retain_eval)
    assert torch.allclose(_logits(merged, judge.retain_eval), expected, atol=1e-4, rtol=0)
    assert torch.allclose(_logits(cat_model, judge.retain_eval), expected, atol=1e-4, rtol=0)
    after = family.evaluate(merged, None, judge)
    assert after["forget_acc_c0"] <= 0.05 and after[f"forget_acc_c{FORGET}"] <= 0.05


def test_gs_lora_is_seeded_and_deterministic(demo, tmp_path):
    from safetensors.torch import load_file

    recipe = get_recipe(REPO / "adapters", "gs-lora", max_steps=20, warmup_steps=5, eval_every=5, stop="fixed")
    data = family.forget_data(demo["dataset"], [{"labels": [FORGET]}])
    tensors = []
    for run in range(2):
        out = tmp_path / f"run{run}"
        recipe.module().train(recipe, model=family.load_model(demo["model"]), tokenizer=None, data=data, out_dir=out)
        tensors.append(load_file(str(out / "adapter_model.safetensors")))
    assert tensors[0].keys() == tensors[1].keys()
    assert all(torch.equal(tensors[0][k], tensors[1][k]) for k in tensors[0])


def test_divergence_fails_and_stores_nothing(demo, tmp_path):
    recipe = get_recipe(REPO / "adapters", "gs-lora", loss_explode=1e-9)
    data = family.forget_data(demo["dataset"], [{"labels": [FORGET]}])
    with pytest.raises(TrainingFailed):
        recipe.module().train(recipe, model=family.load_model(demo["model"]), tokenizer=None, data=data,
                              out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_recipes_registered_for_the_family():
    gs = get_recipe(REPO / "adapters", "gs-lora")
    assert gs.family == "image_classifier" and gs.composable and gs.adapter.target == "mlp"
    assert gs.train.group_alpha > 0 and gs.train.warmup_steps > 0
    ga = get_recipe(REPO / "adapters", "ga-full-vision")
    assert ga.family == "image_classifier" and not ga.composable
    for name in ("npo-lora", "graddiff-lora", "simnpo-lora", "ga-full"):
        assert get_recipe(REPO / "adapters", name).family == "causal_lm"
