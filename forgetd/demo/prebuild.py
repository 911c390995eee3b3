"""Run the demo's text-to-image part in a second process while the demo runs its other parts.

The shapes part is the demo's longest (its model build too, about three minutes on one thread here), and
each part's tiny models use about one core well, so on a machine with two cores a child process
(`python -m forgetd.demo.t2i`) takes it off the critical path while the language, vision and credit parts run
on the other core. The child builds the model through the same `ensure_shapes_t2i` as everything else (file
lock, temporary directory, rename into place), on the demo's own database.
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

    def __init__(self, proc: subprocess.Popen, log: IO[bytes], log_path: Path, threads_before: int) -> None:
        self.proc, self._log, self.log_path, self._threads_before = proc, log, log_path, threads_before

    def wait(self) -> int:
        """Wait for the child, give this process its threads back; the child's exit status."""
        try:
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


def start_shapes_part(home: Path, cache_dir: Path, log_path: Path, result_path: Path) -> Prebuild | None:
    """Run the demo's whole text-to-image part in a child process (`python -m forgetd.demo.t2i`): the model
    built first if it is not cached, then its request ticked through on the demo's own database, with
    `api.tick(model=…)` so neither process takes the other's jobs. Its result is written to `result_path`.
    None on a single core. With the models cached it is the demo's longest part, and each part's models use
    about one core well (two threads on these tiny models gained 20%), so the two halves overlap."""
    if (os.cpu_count() or 1) < 2:
        return None
    return _spawn([sys.executable, "-m", "forgetd.demo.t2i", str(home), str(cache_dir), str(result_path)], log_path)


def _spawn(argv: list[str], log_path: Path) -> Prebuild:
    import torch

    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    return Prebuild(proc, log, log_path, threads_before)
