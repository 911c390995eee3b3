"""forgetd.demo.prebuild: the demo's shapes model built by a child process through the shared cache."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from forgetd.demo import prebuild, shapes  # noqa: E402

TINY = replace(shapes.ShapesConfig.for_tests(), vae_steps=2, unet_steps=2, verifier_steps=2, n_images=64)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the prebuild only starts with two cores")
def test_child_builds_into_the_cache_and_threads_come_back(tmp_path):
    threads = torch.get_num_threads()
    assert not prebuild.shapes_cached(tmp_path, TINY)
    build = prebuild.start(tmp_path, tmp_path / "logs" / "prebuild.log", TINY)
    assert build is not None
    assert torch.get_num_threads() == 1  # the other core is the child's while it builds
    assert build.wait() == 0, build.log_path.read_text()
    assert torch.get_num_threads() == threads
    assert prebuild.shapes_cached(tmp_path, TINY)
    # the demo's own call finds the child's build, and a second start has nothing to do
    root = shapes.ensure_shapes_t2i(tmp_path, TINY)
    assert (shapes.model_path(root) / shapes.DEMO_META_FILE).is_file()
    assert prebuild.start(tmp_path, tmp_path / "logs" / "again.log", TINY) is None
    assert not (tmp_path / "logs" / "again.log").exists()


def test_stop_ends_a_running_child_and_leaves_no_cache(tmp_path):
    build = prebuild.start(tmp_path, tmp_path / "prebuild.log", replace(TINY, unet_steps=100_000))
    if build is None:
        pytest.skip("one core: no prebuild")
    build.stop()
    assert build.proc.poll() is not None
    assert not prebuild.shapes_cached(tmp_path, TINY)
    assert not prebuild.shapes_cached(tmp_path, replace(TINY, unet_steps=100_000))


def test_main_rejects_wrong_arguments(capsys):
    assert prebuild.main([]) == 2
    assert "python -m forgetd.demo.prebuild" in capsys.readouterr().err
