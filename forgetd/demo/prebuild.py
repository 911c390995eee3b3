"""Build the demo's text-to-image model (or run its whole text-to-image part) in a second process while the
demo runs its other parts.

On a fresh machine the shapes pipeline is the demo's longest build (about three minutes on one thread here),
and every model build uses one thread, so on a machine with two cores a child process takes it off the
critical path while the language, vision and credit parts run on the other core. The child goes through the
same `ensure_shapes_t2i` as the demo (file lock, temporary directory, rename into place): the demo's own call
then finds the model cached, or, if the child failed, builds it itself as before.

    python -m forgetd.demo.prebuild CACHE_DIR [CONFIG_JSON]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import IO


class Prebuild:
    """A running child build. While it runs, this process's torch uses one thread: with both cores busy,
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


def shapes_cached(cache_dir: Path, cfg=None) -> bool:
    from forgetd.demo import shapes

    return shapes.is_built(Path(cache_dir) / "cache" / shapes.cache_name(cfg or shapes.ShapesConfig()))


def start(cache_dir: Path, log_path: Path, cfg=None) -> Prebuild | None:
    """Start building the shapes model in a child process; None when it is cached already or this machine
    has a single core (a second process would only compete for it)."""
    if shapes_cached(cache_dir, cfg) or (os.cpu_count() or 1) < 2:
        return None
    argv = [sys.executable, "-m", "forgetd.demo.prebuild", str(cache_dir)]
    if cfg is not None:
        argv.append(json.dumps(asdict(cfg)))
    return _spawn(argv, log_path)


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


def main(argv: list[str] | None = None) -> int:
    from forgetd.demo import shapes

    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    cfg = shapes.ShapesConfig(**json.loads(args[1])) if len(args) == 2 else shapes.ShapesConfig()
    root = shapes.ensure_shapes_t2i(Path(args[0]), cfg)
    print(f"built {root}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
