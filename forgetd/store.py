"""Content-addressed artifact store: adapters, checkpoints and logs under FORGETD_HOME/store.

An artifact is a directory; its id is the sha256 of the sorted (relative path, size, file sha256) list.
Putting the same content twice is a no-op (a retried job cannot duplicate an effect), and every read
re-hashes the content so a flipped byte is caught before anything uses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from forgetd.errors import IntegrityFailure, NotFoundError

KINDS = ("adapter", "checkpoint", "dataset", "log", "evidence")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digest(directory: Path) -> str:
    entries = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        entries.append([path.relative_to(directory).as_posix(), path.stat().st_size, _file_sha256(path)])
    if not entries:
        raise IntegrityFailure(f"artifact directory {directory} is empty", field="store")
    return hashlib.sha256(json.dumps(entries, separators=(",", ":")).encode()).hexdigest()


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, kind: str, digest: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise IntegrityFailure("artifact ids are 64 hex characters", field="sha256")
        return self.root / kind / digest[:2] / digest

    def uri(self, kind: str, digest: str) -> str:
        return f"store://{kind}/{digest}"

    def put_dir(self, kind: str, source: Path, *, move: bool = False) -> str:
        """Store a directory's content; returns its digest. Idempotent and atomic (rename into place)."""
        digest = tree_digest(source)
        target = self.path(kind, digest)
        if target.is_dir():
            if move:
                shutil.rmtree(source, ignore_errors=True)
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=target.parent))
        try:
            content = staging / "content"
            if move:
                shutil.move(str(source), content)
            else:
                shutil.copytree(source, content)
            if tree_digest(content) != digest:
                raise IntegrityFailure("artifact changed while it was being stored", field="store")
            try:
                os.rename(content, target)
            except OSError:
                if not target.is_dir():  # a concurrent writer may have won the race; that is fine
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return digest

    def open_dir(self, kind: str, digest: str) -> Path:
        """The artifact's directory, after checking that its content still hashes to its id."""
        target = self.path(kind, digest)
        if not target.is_dir():
            raise NotFoundError(f"{kind} {digest[:12]} is not in the store", field="sha256")
        actual = tree_digest(target)
        if actual != digest:
            raise IntegrityFailure(
                f"{kind} {digest[:12]} is corrupt: its content hashes to {actual[:12]}", field="sha256"
            )
        return target

    def exists(self, kind: str, digest: str) -> bool:
        return self.path(kind, digest).is_dir()
