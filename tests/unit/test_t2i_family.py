"""Family text_to_image and the shapes demo: the word-level tokenizer, the dataset, forget-data resolution,
the verifier's save/load, generation shape and determinism, metrics and checks, the hash check on load.

Loading and generation tests use a tiny random-init pipeline built from configs (seconds); the tests that
need a model that draws shapes train `ShapesConfig.for_tests()` once per module into a temporary cache.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never touch a hub

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from forgetd.datasets import load_dataset_file, parse_dataset  # noqa: E402
from forgetd.demo import shapes  # noqa: E402
from forgetd.errors import DomainError, IntegrityFailure  # noqa: E402
from forgetd.families import text_to_image as family  # noqa: E402
from tests.conftest import shapes_test_home  # noqa: E402

TINY = replace(shapes.ShapesConfig.for_tests(), vae_steps=2, unet_steps=2, verifier_steps=2, n_images=64)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-reproducible, and no OpenMP spin-waits on a shared 2-core machine
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """A pipeline directory with (nearly) untrained weights: for loading and shape tests only."""
    root = tmp_path_factory.mktemp("tiny")
    shapes.train_shapes_t2i(TINY, root)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The for_tests model (about a minute on one thread). The home is the run's shared temp directory, so
    every test module (on any pytest-xdist worker) that uses this convention shares one cached build per run."""
    home = shapes_test_home(tmp_path_factory)
    root = shapes.ensure_shapes_t2i(home, shapes.ShapesConfig.for_tests())
    model_dir = shapes.model_path(root)
    return {"root": root, "model_dir": model_dir, "pipe": family.load_model(model_dir),
            "verifier": family.load_tokenizer(model_dir), "dataset": load_dataset_file(shapes.dataset_path(root))}


# --- pure parts ------------------------------------------------------------------------------------------


def test_every_vocabulary_word_is_one_token():
    cfg = shapes.ShapesConfig()
    tok = shapes.build_tokenizer(cfg)
    words = {w for s in cfg.shapes for syn in shapes.SHAPES[s] for w in syn.split()} | set(cfg.colours)
    for word in sorted(words):
        ids = tok(word).input_ids
        assert len(ids) == 3, (word, tok.convert_ids_to_tokens(ids))  # <start> word <end>
    ids = tok("a red round shape", padding="max_length", max_length=tok.model_max_length).input_ids
    assert len(ids) == cfg.max_length


def test_caption_ids_equal_tokenizing_the_batch():
    """The UNet build tokenizes each distinct caption once; a batch's rows must be what tokenizing the whole
    batch gives (repeats, the dropped "" caption, one longer than max_length), or the build's weights change."""
    import numpy as np
    import torch

    cfg = shapes.ShapesConfig()
    tok = shapes.build_tokenizer(cfg)
    rng = np.random.default_rng(0)
    ids = shapes._CaptionIds(tok)
    for _ in range(3):
        batch = [shapes.caption(s, c, rng) for s in cfg.shapes for c in (None, *cfg.colours)]
        batch += ["", batch[0], "a red circle in the picture of a red disc"]
        expected = tok(batch, padding="max_length", max_length=tok.model_max_length, truncation=True,
                       return_tensors="pt").input_ids
        assert torch.equal(ids(batch), expected)


def test_dataset_validates_and_lists_synonyms():
    cfg = shapes.ShapesConfig()
    dataset = parse_dataset(shapes.build_dataset(cfg))
    assert dataset.records["circle"].texts[0] == "circle"
    assert "disc" in dataset.records["circle"].texts
    assert dataset.records["red"].labels == [family.COLOUR_LABEL]


def test_render_is_seeded_and_verifier_classes_cover_shapes():
    import numpy as np

    a = shapes.render("circle", "red", 16, np.random.default_rng(1))
    b = shapes.render("circle", "red", 16, np.random.default_rng(1))
    assert a.shape == (16, 16, 3) and a.dtype == np.uint8 and (a == b).all()
    assert a[..., 0].max() > 150 and a[..., 2].max() < 100  # red


def test_config_cache_key_and_validation():
    assert shapes.ShapesConfig().cache_key() != shapes.ShapesConfig.for_tests().cache_key()
    assert shapes.ShapesConfig.from_dict(shapes.ShapesConfig().to_dict()) == shapes.ShapesConfig()
    with pytest.raises(ValueError):
        shapes.ShapesConfig(shapes=("circle", "hexagon"))
    with pytest.raises(ValueError):
        shapes.ShapesConfig(image_size=12)


def _dataset():
    return parse_dataset(shapes.build_dataset(shapes.ShapesConfig()))


def test_forget_data_resolves_synonyms_and_excludes_other_requests():
    data = family.forget_data(_dataset(), [{"concept": "disc"}], exclude_from_retain={"square"})
    assert data.kind == "concept" and data.targets == ("circle",)
    assert "a red circle" in data.target_prompts and len(data.target_prompts) == 4
    assert "a red disc" in data.synonym_prompts and "a blue round shape" in data.synonym_prompts
    assert all("circle" not in p for p in data.synonym_prompts)
    assert {s for _, s in data.other_prompts} == {"triangle", "cross"}
    assert data.anchors == ("triangle", "cross")
    cal, ver = data.calibration_half(), data.verification_half()
    assert cal.seed != ver.seed and cal.half == "calibration" and ver.half == "verification"
    assert ver.calibration_half() == cal
    assert cal.seed_for("a red circle") != ver.seed_for("a red circle")


def test_forget_data_payload_errors_name_the_field():
    with pytest.raises(DomainError) as err:
        family.forget_data(_dataset(), [{"concept": "hexagon"}])
    assert err.value.field == "forget.concept"
    with pytest.raises(DomainError):
        family.forget_data(_dataset(), [{}])
    with pytest.raises(DomainError) as err:
        family.forget_data(_dataset(), [{"concept": "circle", "anchors": [""]}])
    assert err.value.field == "forget.anchors"
    payload = {"concept": "circle", "anchors": ["box", "circle"], "replacement": "square"}
    data = family.forget_data(_dataset(), [payload])
    assert data.anchors == ("box",) and data.replacement == "square"
    with pytest.raises(DomainError) as err:
        family.forget_data(_dataset(), [{"concept": "circle", "replacement": "Disc"}])
    assert err.value.field == "forget.replacement"


def test_spm_steers_towards_the_named_replacement_in_the_erase_texts_template():
    from forgetd.training.recipes import spm

    plain = family.forget_data(_dataset(), [{"concept": "circle"}])
    assert spm.replacement_text("a circle", plain) == ""
    swapped = family.forget_data(_dataset(), [{"concept": "disc", "replacement": "cross"}])
    assert spm.replacement_text("a circle", swapped) == "a cross"
    assert spm.replacement_text("circle", swapped) == "cross"
    assert spm.replacement_text("round", swapped) == "cross"  # no target word to swap: the replacement alone


def test_two_targets_in_one_batch():
    data = family.forget_data(_dataset(), [{"concept": "circle"}, {"concept": "cross"}])
    assert data.targets == ("circle", "cross")
    assert {s for _, s in data.other_prompts} == {"square", "triangle"}


def test_checks_are_fail_closed():
    thresholds = {"erase_rate_max": 0.10, "synonym_erase_rate_max": 0.20, "other_acc_min_ratio": 0.90}
    original = {"other_acc": 1.0}
    good = {"erase_rate": 0.05, "synonym_erase_rate": 0.2, "other_acc": 0.95}
    assert all(c.passed for c in family.checks(good, original, thresholds))
    bad = family.checks({"erase_rate": 0.11, "other_acc": 0.89}, original, thresholds)
    assert [c.passed for c in bad] == [False, False, False]  # synonym_erase_rate missing → NaN → fails
    assert not family.checks({**good, "other_acc": float("nan")}, original, thresholds)[-1].passed


# --- a tiny random-init pipeline ---------------------------------------------------------------------------


def test_directory_layout_load_and_hash_check(tiny_root):
    from forgetd.api import hash_model_dir

    model_dir = shapes.model_path(tiny_root)
    for name in ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler",
                 "verifier/config.json", "verifier/model.safetensors", family.SETTINGS_FILE):
        assert (model_dir / name).exists(), name
    assert load_dataset_file(shapes.dataset_path(tiny_root)).records["circle"].texts[0] == "circle"
    digest, files = hash_model_dir(model_dir)
    assert any(f["path"].startswith("unet/") for f in files) and any(f["path"].startswith("verifier/") for f in files)
    family.check_weights(model_dir, digest)
    with pytest.raises(IntegrityFailure):
        family.load_model(model_dir, expected_sha256="0" * 64)
    pipe = family.load_model(model_dir, expected_sha256=digest)
    assert pipe.safety_checker is None
    assert getattr(pipe, family.SETTINGS_ATTR)["image_size"] == TINY.image_size


def test_generation_shape_and_determinism(tiny_root):
    import numpy as np

    model_dir = shapes.model_path(tiny_root)
    pipe = family.load_model(model_dir)
    a = family.generate_images(pipe, "a red circle", 3, seed=7, steps=2)
    b = family.generate_images(pipe, "a red circle", 3, seed=7, steps=2)
    assert a.shape == (3, TINY.image_size, TINY.image_size, 3) and a.dtype == np.uint8
    assert (a == b).all()
    verifier = family.load_tokenizer(model_dir)
    names, colours = family.classify(verifier, a)
    assert len(names) == 3 and set(names) <= {*TINY.shapes, "none"} and set(colours) <= set(TINY.colours)


def test_batched_generation_equals_one_prompt_at_a_time(tiny_root):
    """generate_batch draws each request's noise as a one-prompt call with its seeded generator would, and
    chunks by max_images without changing a pixel."""
    import numpy as np

    pipe = family.load_model(shapes.model_path(tiny_root))
    requests = [("a red circle", 3, 7), ("a blue square", 2, 8), ("a red circle", 3, 9)]
    reference = []
    for prompt, n, seed in requests:  # what generate_images did before batching: one call, one generator
        out = pipe(prompt=[prompt] * n, num_inference_steps=2, guidance_scale=5.0, height=TINY.image_size,
                   width=TINY.image_size, generator=torch.Generator().manual_seed(seed), output_type="np")
        reference.append((np.clip(np.asarray(out.images, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8))
    for max_images in (512, 4, 1):
        batched = family.generate_batch(pipe, requests, steps=2, max_images=max_images)
        assert [b.shape[0] for b in batched] == [3, 2, 3]
        for a, b in zip(batched, reference):
            assert (a == b).all()
    assert not (reference[0] == reference[2]).all()


def test_verifier_round_trip(tmp_path):
    import numpy as np

    v = family.Verifier.build(["circle", "square"], ["red", "blue"], 16)
    v.save(tmp_path / "v")
    w = family.Verifier.load(tmp_path / "v")
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    assert v.classify(images) == w.classify(images)
    with pytest.raises(DomainError):
        w.classify(np.zeros((2, 8, 8, 3), dtype=np.uint8))


# --- the trained for_tests model -------------------------------------------------------------------------


@pytest.mark.slow
def test_trained_model_draws_the_prompted_shapes(trained):
    meta = shapes.read_demo_meta(trained["root"])
    assert meta["metrics"]["verifier_shape_acc"] >= 0.95
    data = family.forget_data(trained["dataset"], [{"concept": "circle"}])
    data = replace(data, images_per_prompt=16)
    metrics = family.evaluate(trained["pipe"], trained["verifier"], data)
    assert metrics["erase_rate"] >= 0.8  # the original draws circles when asked
    assert metrics["synonym_erase_rate"] >= 0.7
    assert metrics["other_acc"] >= 0.8 and metrics["colour_acc"] >= 0.8
    again = family.evaluate(trained["pipe"], trained["verifier"], data, original=metrics)
    assert again["erase_rate"] == metrics["erase_rate"] and math.isclose(again["other_acc_ratio"], 1.0)
    json.dumps(again)
    assert all(c.passed is False for c in family.checks(metrics, metrics, {"erase_rate_max": 0.1}))


@pytest.mark.slow
def test_ensure_is_cached(trained):
    root = trained["root"]
    before = (shapes.model_path(root) / shapes.DEMO_META_FILE).stat().st_mtime_ns
    assert shapes.ensure_shapes_t2i(root.parent.parent, shapes.ShapesConfig.for_tests()) == root
    assert (shapes.model_path(root) / shapes.DEMO_META_FILE).stat().st_mtime_ns == before
    assert not list(Path(root.parent).glob(".shapes-t2i-*-*"))


def test_demo_build_progress_feeds_the_tick_printer(capsys):
    """`forgetd demo` hands the shapes builder the tick printer: its events must be translated, not crash it."""
    from forgetd.cli.tick import _printer
    from forgetd.demo.t2i import _build_progress

    show = _build_progress(_printer(True))
    show({"phase": "unet", "step": 10, "steps": 1200, "loss": 0.5})
    show({"phase": "done", "train_seconds": 1.0})
    assert "step 10/1200" in capsys.readouterr().err
    assert _build_progress(None) is None
