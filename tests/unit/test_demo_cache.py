"""forgetd.demo.cache.ensure_built: the one cache the four demo models share."""

from __future__ import annotations

import os
import stat
import threading
import time

import pytest

from forgetd.demo.cache import ensure_built


def _ready(d):
    return (d / "done").is_file()


def test_concurrent_callers_build_once_and_see_only_the_finished_directory(tmp_path):
    builds = []

    def build(d):
        builds.append(d)
        time.sleep(0.3)  # a second caller arrives while this one builds
        (d / "weights").write_text("w")
        (d / "done").write_text("ok")

    results = []
    threads = [threading.Thread(target=lambda: results.append(ensure_built(tmp_path, "m-1", ready=_ready, build=build)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert results == [tmp_path / "cache" / "m-1"] * 3 and _ready(results[0])
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir() and p.name.startswith(".")]


def test_a_failed_build_leaves_nothing_and_stale_builds_are_cleared(tmp_path):
    cache = tmp_path / "cache"
    (cache / ".m-2-killedbuilder").mkdir(parents=True)  # a builder killed midway

    def crash(d):
        (d / "partial").write_text("x")
        raise RuntimeError("training crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        ensure_built(tmp_path, "m-2", ready=_ready, build=crash)
    assert not [p for p in cache.iterdir() if p.is_dir()]


def test_the_finished_tree_gets_the_modes_the_umask_allows(tmp_path):
    def build(d):
        (d / "sub").mkdir()
        (d / "sub" / "f").write_text("x")
        (d / "done").write_text("ok")

    old = os.umask(0o022)
    try:
        root = ensure_built(tmp_path, "m-3", ready=_ready, build=build)
    finally:
        os.umask(old)
    assert stat.S_IMODE(root.stat().st_mode) == 0o755  # mkdtemp alone gives 0700
    assert stat.S_IMODE((root / "sub").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "sub" / "f").stat().st_mode) == 0o644
