"""The demo models' on-disk cache: `<home>/cache/<name>`, built once, shared by every process.

A model is built into a temporary directory beside its final name and renamed into place under a lock
file, so concurrent callers wait for one builder and a half-built directory is never visible; builders
killed midway leave temporary directories that the next holder of the lock removes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

# Every cached model is trained on one thread, whoever builds it (the demo, a bench, a test): the key is the
# config alone, and on some machines (an Intel Xeon under AVX2 kernels) one- and two-thread training give
# different weights, so with the count left to the caller an entry depended on which process built it first.
CACHE_BUILD_THREADS = 1


def finished_build(meta_file: Path) -> bool:
    """Whether a cached entry is finished and built as entries are now: its metadata file (written last) is
    there and records a `CACHE_BUILD_THREADS` build (`metrics.threads`). One an earlier version built on
    more threads (the benches did) is built again, so a key never keeps another build's weights."""
    try:
        meta = json.loads(Path(meta_file).read_text())
    except (OSError, ValueError):
        return False
    metrics = meta.get("metrics") if isinstance(meta, dict) else None
    return isinstance(metrics, dict) and metrics.get("threads") == CACHE_BUILD_THREADS


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file renamed into place: a concurrent reader (another demo
    process, the demo's other half) sees the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def relax_tree(directory: Path) -> None:
    """mkdtemp makes 0700 directories: give the finished model the modes the umask allows (readable by the
    daemon's user and the operator's alike, if the umask says so)."""
    umask = os.umask(0)
    os.umask(umask)
    for d in [directory, *(p for p in directory.rglob("*") if p.is_dir())]:
        d.chmod(0o777 & ~umask)
        for f in d.iterdir():
            if f.is_file():
                f.chmod(0o666 & ~umask)


def ensure_built(home: Path | str, name: str, *, ready: Callable[[Path], bool], build: Callable[[Path], None]) -> Path:
    """`home/cache/name`, first built by `build(directory)` unless `ready(final directory)` already holds."""
    cache = Path(home) / "cache"
    final = cache / name
    if ready(final):
        return final
    with file_lock(cache / f".{name}.lock"):
        if ready(final):
            return final
        if final.exists():  # left over from an interrupted manual copy: rebuild
            shutil.rmtree(final)
        for stale in cache.glob(f".{name}-*"):  # builders killed midway (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
        try:
            build(tmp)
            relax_tree(tmp)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final
