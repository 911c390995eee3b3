import base64
import os
import stat
from pathlib import Path

import pytest

from forgetd.config import Settings
from forgetd.errors import ConfigError, DomainError, InputError, IntegrityFailure
from forgetd.privacy import (
    DataKeyShredded,
    KeyRing,
    create_master_key_file,
    decrypt,
    encrypt,
    load_master_key,
    open_payload,
    seal_payload,
)

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
IDENTITY = "Alice.Example@Example.COM"


def settings(tmp_path: Path, env: str | None = None) -> Settings:
    return Settings(home=tmp_path, database_url="sqlite://", master_key_file=tmp_path / "keys" / "master.key",
                    master_key_env=env)


def test_subject_ref_is_stable_normalised_and_keyed():
    ring = KeyRing(KEY_A)
    ref = ring.subject_ref(IDENTITY)
    assert ref == KeyRing(KEY_A).subject_ref(IDENTITY)
    assert len(ref) == 64 and int(ref, 16) >= 0
    assert ring.subject_ref("  alice.example@example.com\t") == ref
    assert ring.subject_ref("ＡＬＩＣＥ.example@example.com") == ref  # full-width letters (NFKC)
    assert ring.subject_ref("bob@example.com") != ref
    assert KeyRing(KEY_B).subject_ref(IDENTITY) != ref
    assert IDENTITY.lower() not in ref and "alice" not in ref


def test_subject_and_scope_refs_use_separate_keys():
    ring = KeyRing(KEY_A)
    assert ring.scope_ref("alice@example.com") != ring.subject_ref("alice@example.com")
    assert ring.scope_ref("concept:mickey") == KeyRing(KEY_A).scope_ref("concept:mickey")


@pytest.mark.parametrize("identity", ["", "   ", "\u3000"])
def test_empty_identity_is_refused(identity):
    with pytest.raises(InputError) as info:
        KeyRing(KEY_A).subject_ref(identity)
    assert info.value.field == "--subject"


def test_master_key_must_be_32_bytes():
    with pytest.raises(ValueError):
        KeyRing(b"short")


def test_encrypt_decrypt_roundtrip_with_wrapped_data_key():
    ring = KeyRing(KEY_A)
    wrapped, blob = seal_payload(ring, b'{"texts": ["secret"]}', aad=b"req_1")
    assert b"secret" not in blob and blob[0] == 1
    assert open_payload(ring, wrapped, blob, aad=b"req_1") == b'{"texts": ["secret"]}'
    dek = ring.new_data_key()
    assert decrypt(dek, encrypt(dek, b"", aad=b"x"), aad=b"x") == b""
    assert encrypt(dek, b"same", aad=b"x") != encrypt(dek, b"same", aad=b"x")  # fresh nonce


def test_tampering_wrong_aad_and_wrong_key_are_detected():
    ring = KeyRing(KEY_A)
    dek = ring.new_data_key()
    blob = encrypt(dek, b"payload", aad=b"req_1")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    for bad in (
        lambda: decrypt(dek, tampered, aad=b"req_1"),
        lambda: decrypt(dek, blob, aad=b"req_2"),
        lambda: decrypt(ring.new_data_key(), blob, aad=b"req_1"),
        lambda: decrypt(dek, b"\x02" + blob[1:], aad=b"req_1"),
        lambda: decrypt(dek, blob[:10], aad=b"req_1"),
    ):
        with pytest.raises(IntegrityFailure):
            bad()


def test_wrapped_key_is_bound_to_master_key_and_aad():
    wrapped = KeyRing(KEY_A).wrap_data_key(bytes(32), aad=b"req_1")
    assert KeyRing(KEY_A).unwrap_data_key(wrapped, aad=b"req_1") == bytes(32)
    with pytest.raises(IntegrityFailure):
        KeyRing(KEY_B).unwrap_data_key(wrapped, aad=b"req_1")
    with pytest.raises(IntegrityFailure):
        KeyRing(KEY_A).unwrap_data_key(wrapped, aad=b"req_2")


def test_shredded_payload_cannot_be_opened():
    ring = KeyRing(KEY_A)
    _, blob = seal_payload(ring, b"payload", aad=b"r")
    with pytest.raises(DataKeyShredded, match="shredded") as info:
        open_payload(ring, None, blob, aad=b"r")
    assert isinstance(info.value, DomainError)


def test_key_file_is_created_0600_and_never_overwritten(tmp_path):
    s = settings(tmp_path)
    assert create_master_key_file(s.master_key_file) is True
    assert stat.S_IMODE(s.master_key_file.stat().st_mode) == 0o600
    key = load_master_key(s)
    assert len(key) == 32
    assert create_master_key_file(s.master_key_file) is False
    assert load_master_key(s) == key


def test_key_file_readable_by_others_is_refused(tmp_path):
    s = settings(tmp_path)
    create_master_key_file(s.master_key_file)
    os.chmod(s.master_key_file, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_master_key(s)


def test_missing_key_tells_how_to_create_one(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_master_key(settings(tmp_path))
    assert info.value.field == "FORGETD_MASTER_KEY"
    assert "forgetd init" in info.value.message and "FORGETD_MASTER_KEY" in info.value.message


def test_key_from_environment_wins(tmp_path):
    env = base64.urlsafe_b64encode(KEY_B).decode()
    assert load_master_key(settings(tmp_path, env)) == KEY_B
    assert load_master_key(settings(tmp_path, env.rstrip("="))) == KEY_B


@pytest.mark.parametrize("bad", ["not a key", base64.urlsafe_b64encode(b"x" * 16).decode(), "é" * 44])
def test_malformed_keys_are_refused_without_echoing_them(tmp_path, bad):
    with pytest.raises(ConfigError) as info:
        load_master_key(settings(tmp_path, bad))
    assert bad not in str(info.value)
    s = settings(tmp_path)
    s.master_key_file.parent.mkdir(exist_ok=True)
    s.master_key_file.write_text(bad + "\n")
    os.chmod(s.master_key_file, 0o600)
    with pytest.raises(ConfigError, match="malformed") as info:
        load_master_key(s)
    assert bad not in str(info.value)
