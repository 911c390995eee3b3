"""FORGETD_DEVICE: where causal-LM adapters train."""

from __future__ import annotations

import pytest

from forgetd.config import load_settings
from forgetd.errors import InputError


@pytest.mark.parametrize("value, parsed", [("", "cpu"), ("cpu", "cpu"), ("AUTO", "auto"), ("cuda", "cuda"),
                                           (" cuda:1 ", "cuda:1")])
def test_accepted_values(tmp_path, value, parsed):
    env = {"FORGETD_HOME": str(tmp_path), "FORGETD_DEVICE": value}
    assert load_settings(env).device == parsed


@pytest.mark.parametrize("value", ["gpu", "cuda:", "cuda:-1", "cuda:0,1", "mps"])
def test_anything_else_is_refused_naming_the_setting(tmp_path, value):
    with pytest.raises(InputError, match="cpu, auto") as refused:
        load_settings({"FORGETD_HOME": str(tmp_path), "FORGETD_DEVICE": value})
    assert refused.value.field == "FORGETD_DEVICE"


def test_the_config_file_can_set_it(tmp_path):
    (tmp_path / "forgetd.toml").write_text('device = "auto"\n')
    assert load_settings({"FORGETD_HOME": str(tmp_path)}).device == "auto"


def test_auto_without_a_cuda_device_trains_on_the_cpu():
    import torch

    from forgetd.pipeline import resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
