"""Run the demo's text-to-image part in a second process while the demo runs its other parts.

The shapes part is the demo's longest (its model build too, about three minutes on one thread here), and
each part's tiny models use about one core well, so on a machine with two cores a child process
(`python -m forgetd.demo.t2i`) takes it off the critical path while the language, vision and credit parts run
on the other core. The child builds the model through the same `ensure_shapes_t2i` as everything else (file
lock, temporary directory, rename into place), on the demo's own database.

When this process has run its parts it waits, and hands its threads to the child (`Prebuild.wait` writes the
count to the child's cores file, `FreeCores` in the child takes them at its next progress event): from an
empty cache the child's chain (shapes model, then its request) is the demo's critical path, and the core
would otherwise idle for the last minute or two. Only then: with both processes computing, two threads in
one of them made steps slower, not faster (OpenMP workers spin-waiting for a core).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import IO


class Prebuild:
    """A running child process. While it runs, this process's torch uses one thread: with both cores busy,
    OpenMP workers spin-waiting for a core made steps several times slower here (see forgetd.demo.shapes)."""

    def __init__(self, proc: subprocess.Popen, log: IO[bytes], log_path: Path, threads_before: int,
                 cores_path: Path | None = None) -> None:
        self.proc, self._log, self.log_path, self._threads_before = proc, log, log_path, threads_before
        self.cores_path = cores_path

    def wait(self) -> int:
        """Hand this process's threads to the child while waiting for it (this process computes nothing
        meanwhile), then take them back; the child's exit status."""
        try:
            if self.cores_path is not None and self.proc.poll() is None:
                from forgetd.demo.cache import write_atomic

                write_atomic(self.cores_path, str(self._threads_before))
            return self.proc.wait()
        finally:
            self._release()

    def stop(self) -> None:
        """Stop a child still running (the demo failed or was interrupted); its temporary build directory is
        cleared by the next builder (forgetd.demo.cache)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._release()

    def _release(self) -> None:
        if not self._log.closed:
            self._log.close()
            import torch

            torch.set_num_threads(self._threads_before)


class FreeCores:
    """The child's side: `free()` sets torch's threads to the count its parent wrote to `path`, once the file
    is there; True once it has. Called at the child's progress events, from its main thread (torch's thread
    count is that thread's OpenMP setting)."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.taken = path, path is None

    def free(self) -> bool:
        """Take the cores if the file is there; True once there is nothing left to wait for."""
        if not self.taken and self.path.exists():
            import torch

            try:
                threads = int(self.path.read_text())
            except ValueError:  # not the parent's: keep one thread
                threads = 1
            torch.set_num_threads(max(1, threads))
            self.taken = True
        return self.taken

    def wrap(self, progress):
        """`progress` that first takes the cores if they are free."""
        if progress is None or self.path is None:
            return progress

        def show(event):
            self.free()
            progress(event)

        return show


def start_shapes_part(home: Path, cache_dir: Path, log_path: Path, result_path: Path) -> Prebuild | None:
    """Run the demo's whole text-to-image part in a child process (`python -m forgetd.demo.t2i`): the model
    built first if it is not cached, then its request ticked through on the demo's own database, with
    `api.tick(model=…)` so neither process takes the other's jobs. Its result is written to `result_path`.
    None on a single core. With the models cached it is the demo's longest part, and each part's models use
    about one core well (two threads on these tiny models gained 20%), so the two halves overlap."""
    if (os.cpu_count() or 1) < 2:
        return None
    cores_path = result_path.with_name(f"{result_path.stem}.cores")
    cores_path.unlink(missing_ok=True)
    return _spawn([sys.executable, "-m", "forgetd.demo.t2i", str(home), str(cache_dir), str(result_path),
                   str(cores_path)], log_path, cores_path=cores_path)


def _spawn(argv: list[str], log_path: Path, *, cores_path: Path | None = None) -> Prebuild:
    import torch

    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    return Prebuild(proc, log, log_path, threads_before, cores_path)
