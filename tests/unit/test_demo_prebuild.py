"""forgetd.demo.prebuild: the demo's second process. While a child runs this process uses one thread; the
threads come back when it ends or is stopped, and its output goes to its log."""

from __future__ import annotations

import os
import sys
import time

import pytest

torch = pytest.importorskip("torch")

from forgetd.demo import prebuild  # noqa: E402

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the second process only starts with two cores")


def test_a_failing_shapes_part_reports_its_status_and_log_and_threads_come_back(tmp_path):
    threads = torch.get_num_threads()
    # a cache path that is a file: the child's text-to-image part fails at once, as a real failure would
    cache = tmp_path / "cache"
    cache.write_text("not a directory")
    child = prebuild.start_shapes_part(tmp_path / "home", cache, tmp_path / "logs" / "shapes.log",
                                       tmp_path / "result.json")
    assert child is not None
    assert torch.get_num_threads() == 1  # the other core is the child's while it runs
    assert child.wait() != 0
    assert torch.get_num_threads() == threads
    assert "Traceback" in child.log_path.read_text() and not (tmp_path / "result.json").exists()


def test_stop_ends_a_running_child(tmp_path):
    threads = torch.get_num_threads()
    child = prebuild._spawn([sys.executable, "-c", "import time; time.sleep(120)"], tmp_path / "child.log")
    assert child.proc.poll() is None
    child.stop()
    assert child.proc.poll() is not None and torch.get_num_threads() == threads
    child.stop()  # a second stop is harmless


def test_waiting_hands_this_process_threads_to_the_child(tmp_path):
    """The demo waits for the child only when its own parts are done: the child then takes the threads."""
    cores = tmp_path / "demo-shapes.cores"
    script = "\n".join([
        "import sys, time, torch",
        "from pathlib import Path",
        "from forgetd.demo.prebuild import FreeCores",
        "cores = FreeCores(Path(sys.argv[1]))",
        "print(torch.get_num_threads(), cores.free(), flush=True)",
        "while not cores.free():",
        "    time.sleep(0.02)",
        "print(torch.get_num_threads())",
    ])
    original = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        child = prebuild._spawn([sys.executable, "-c", script, str(cores)], tmp_path / "child.log", cores_path=cores)
        time.sleep(3)  # the child is running, and must keep one thread until this process waits
        assert not cores.exists()
        assert child.wait() == 0
        assert child.log_path.read_text().split() == ["1", "False", "2"]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(original)


def test_cores_file_without_a_count_keeps_one_thread(tmp_path):
    cores = tmp_path / "x.cores"
    cores.write_text("two")
    free = prebuild.FreeCores(cores)
    before = torch.get_num_threads()
    try:
        assert free.free() and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert prebuild.FreeCores(None).free()  # nothing to wait for


def test_a_build_keeps_its_threads_whatever_its_progress_callback_does():
    """The demo's shapes process took the parent's freed cores at a build's progress event, half way through
    the unet: the entry recorded two threads, was not a one-thread build, and every later demo built it again
    (cached demo 149 s on an Intel Xeon, 137 of them rebuilding). A build's thread count is now pinned."""
    import torch

    from forgetd.demo import shapes

    cfg = shapes.ShapesConfig(colours=("red",), n_images=64, vae_steps=100, vae_batch=8, unet_steps=1,
                              unet_batch=8, verifier_steps=1, verifier_batch=8)
    before = torch.get_num_threads()
    seen = []

    def takes_the_cores(event):
        seen.append(torch.get_num_threads())
        torch.set_num_threads(2)

    trained = shapes.fit_shapes_t2i(cfg, takes_the_cores, threads=1)
    assert seen and set(seen) == {1}, "every event (the vae's step 100, done) found the build on one thread"
    assert trained.metrics["threads"] == 1
    assert torch.get_num_threads() == before
