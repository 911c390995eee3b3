"""Registration checks a directory is a model of the family it is registered as, before recording it:
configs parse, safetensors files are whole, a causal LM's tokenizer loads, a tabular model's tensors fit
its config. Without this a ViT registered as a causal LM, or a truncated weights file, was found only when
the first request's training job failed. The text-to-image check is in tests/integration/test_t2i_pipeline.py."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from forgetd.errors import InputError
from forgetd.families import family_module
from forgetd.families.model_files import safetensors_header

FAMILIES = ("causal_lm", "image_classifier", "tabular_classifier", "text_to_image")


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory) -> Path:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32, num_labels=3)
    directory = tmp_path_factory.mktemp("vit")
    ViTForImageClassification(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tabular_dir(tmp_path_factory) -> Path:
    from forgetd.demo.lifecycle import build_demo_weights

    return build_demo_weights(tmp_path_factory.mktemp("tabular") / "model")


@pytest.fixture
def dirs(tiny_lm, vit_dir, tabular_dir) -> dict[str, Path]:
    return {"causal_lm": tiny_lm[0], "image_classifier": vit_dir, "tabular_classifier": tabular_dir}


def _refused(family: str, directory: Path, *needles: str) -> str:
    with pytest.raises(InputError) as refused:
        family_module(family).check_model_dir(directory)
    assert refused.value.field == "--path"
    for needle in needles:
        assert needle in refused.value.message, refused.value.message
    return refused.value.message


def test_each_family_takes_its_own_directory_and_refuses_the_others(dirs):
    for family, directory in dirs.items():
        family_module(family).check_model_dir(directory)  # its own: no error
        for other in FAMILIES:
            if other != family:
                _refused(other, directory)


def test_the_demo_lifecycle_model_loads_as_what_it_is_registered(tabular_dir):
    import torch

    model = family_module("tabular_classifier").load_model(tabular_dir)
    assert model(torch.zeros(2, 10)).shape == (2, 2)


def _copy(directory: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(directory, tmp_path / directory.name))


@pytest.mark.parametrize("family", ["causal_lm", "image_classifier", "tabular_classifier"])
def test_truncated_or_padded_weights_are_refused(dirs, tmp_path, family):
    copy = _copy(dirs[family], tmp_path)
    weights = next(copy.glob("*.safetensors"))
    with weights.open("ab") as f:
        f.write(b"\0")
    _refused(family, copy, weights.name, "cut short or padded")
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size - 2)
    _refused(family, copy, weights.name, "cut short")
    weights.write_bytes(b"\x01\x02")
    _refused(family, copy, "not a safetensors file")


def test_a_header_longer_than_the_file_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(InputError, match="cut short or not a safetensors file"):
        safetensors_header(path)


def test_causal_lm_needs_a_causal_lm_config_and_a_tokenizer(dirs, tmp_path):
    copy = _copy(dirs["causal_lm"], tmp_path)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "model_type": "vit"}))
    _refused("causal_lm", copy, "'vit'", "check --family")
    (copy / "config.json").write_text("{not json")
    _refused("causal_lm", copy, "config.json is not valid JSON")
    (copy / "config.json").write_text(json.dumps(config))
    for tokenizer_file in copy.glob("tokenizer*"):
        tokenizer_file.unlink()
    _refused("causal_lm", copy, "tokenizer does not load")


def test_tabular_weights_must_fit_the_config(dirs, tmp_path):
    copy = _copy(dirs["tabular_classifier"], tmp_path)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "hidden_sizes": [8]}))
    _refused("tabular_classifier", copy, "does not match config.json", "hidden sizes [8]")
    (copy / "config.json").write_text(json.dumps({**config, "format": "something-else"}))
    _refused("tabular_classifier", copy, "config.json: not a forgetd-tabular/v1")


def test_a_registered_directory_that_is_gone_is_named_as_gone(tabular_dir, tmp_path):
    """Every load re-hashes the registered weights; a directory moved away used to read as "hashes to e3b0…",
    the hash of nothing, which sent operators looking for tampering."""
    from forgetd.api import hash_model_dir
    from forgetd.errors import IntegrityFailure
    from forgetd.families.causal_lm import check_weights

    copy = _copy(tabular_dir, tmp_path)
    digest, _ = hash_model_dir(copy)
    check_weights(copy, digest)
    (copy / "model.safetensors").unlink()
    with pytest.raises(IntegrityFailure, match="no weight files left"):
        check_weights(copy, digest)
    shutil.rmtree(copy)
    with pytest.raises(IntegrityFailure, match="is gone"):
        check_weights(copy, digest)
