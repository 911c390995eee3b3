from pathlib import Path

import pytest

from forgetd.errors import IntegrityFailure, NotFoundError
from forgetd.store import ArtifactStore, tree_digest


def _artifact(path: Path, content: bytes = b"weights") -> Path:
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(content)
    (path / "sub").mkdir()
    (path / "sub" / "config.json").write_text('{"r": 8}')
    return path


def test_put_is_content_addressed_and_idempotent(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    a = _artifact(tmp_path / "a")
    digest = store.put_dir("adapter", a)
    assert digest == tree_digest(a)
    assert store.put_dir("adapter", _artifact(tmp_path / "b")) == digest  # same content, same id
    assert len(list((tmp_path / "store" / "adapter").rglob("adapter_model.safetensors"))) == 1
    assert store.put_dir("adapter", _artifact(tmp_path / "c", b"other")) != digest
    opened = store.open_dir("adapter", digest)
    assert (opened / "sub" / "config.json").read_text() == '{"r": 8}'


def test_a_flipped_byte_is_detected_on_read(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    digest = store.put_dir("adapter", _artifact(tmp_path / "a", bytes(range(200))))
    weights = store.path("adapter", digest) / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityFailure, match="corrupt"):
        store.open_dir("adapter", digest)


def test_missing_and_malformed_ids(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(NotFoundError):
        store.open_dir("adapter", "0" * 64)
    with pytest.raises(IntegrityFailure):
        store.open_dir("adapter", "../../etc")


def test_move_consumes_the_source(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    source = _artifact(tmp_path / "a")
    digest = store.put_dir("checkpoint", source, move=True)
    assert not source.exists() and store.exists("checkpoint", digest)
