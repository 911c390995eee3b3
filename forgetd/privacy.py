"""Keeping personal data out of the database in the clear (DESIGN 12).

- Subject identities are stored only as keyed HMACs, so equal identities can be matched without the
  database ever holding one.
- Each request's payload is sealed with its own data key, stored wrapped by the master key. Destroying the
  wrapped key (crypto-shredding) makes the payload unreadable while the audit chain keeps its digest.
- All subkeys come from one master key through HKDF, so leaking one use's key does not expose another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import stat
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from forgetd.errors import ConfigError, DomainError, InputError, IntegrityFailure

if TYPE_CHECKING:
    from forgetd.config import Settings

KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16
_PAYLOAD_VERSION = b"\x01"
_KEY_HINT = "expected the urlsafe base64 encoding of 32 random bytes"


class DataKeyShredded(DomainError):
    """The request's data key was destroyed on purpose; its payload is gone for good."""


# --- master key -------------------------------------------------------------------------------------


def _decode_key(text: str) -> bytes | None:
    text = text.strip()
    text += "=" * (-len(text) % 4)
    try:
        key = base64.b64decode(text, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if len(key) == KEY_BYTES else None


def _encode_key(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode("ascii")


def load_master_key(settings: "Settings") -> bytes:
    if settings.master_key_env:
        key = _decode_key(settings.master_key_env)
        if key is None:
            raise ConfigError(f"FORGETD_MASTER_KEY is not a valid master key: {_KEY_HINT}", field="FORGETD_MASTER_KEY")
        return key
    path = Path(settings.master_key_file)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise ConfigError(
            f"no master key: run `forgetd init` to create {path}, or set FORGETD_MASTER_KEY",
            field="FORGETD_MASTER_KEY",
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read master key file {path}: {exc.strerror}", field="FORGETD_MASTER_KEY_FILE"
        ) from None
    with os.fdopen(fd, "rb") as fh:
        # fstat on the open descriptor: the mode checked is the mode of the file actually read.
        mode = os.fstat(fh.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"master key file {path} is accessible to other users: run `chmod 600 {path}`",
                field="FORGETD_MASTER_KEY_FILE",
            )
        raw = fh.read(1024)
    try:
        key = _decode_key(raw.decode("ascii"))
    except UnicodeDecodeError:
        key = None
    if key is None:
        raise ConfigError(f"master key file {path} is malformed: {_KEY_HINT}", field="FORGETD_MASTER_KEY_FILE")
    return key


def create_master_key_file(path: Path) -> bool:
    """Write a fresh key with mode 0600; never replace an existing one (that would orphan every payload)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(_encode_key(secrets.token_bytes(KEY_BYTES)) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return True


# --- keyring ----------------------------------------------------------------------------------------


def _subkey(master_key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(master_key)


def normalise_identity(identity: str) -> str:
    """NFKC, trimmed and case-folded, so 'Alice@Example.com ' and 'alice@example.com' match."""
    folded = unicodedata.normalize("NFKC", identity).strip().casefold()
    # Case folding can produce unnormalised sequences; a second NFKC makes the result stable.
    return unicodedata.normalize("NFKC", folded)


class KeyRing:
    def __init__(self, master_key: bytes) -> None:
        if not isinstance(master_key, bytes) or len(master_key) != KEY_BYTES:
            raise ValueError(f"the master key must be {KEY_BYTES} bytes")
        self._subject_key = _subkey(master_key, b"forgetd subject-ref v1")
        self._wrap = AESGCM(_subkey(master_key, b"forgetd key-wrap v1"))
        self._scope_key = _subkey(master_key, b"forgetd scope-ref v1")

    def __repr__(self) -> str:
        return "KeyRing(<secret>)"

    def subject_ref(self, identity: str) -> str:
        normalised = normalise_identity(identity)
        if not normalised:
            raise InputError("the subject identity must not be empty", field="--subject")
        return hmac.new(self._subject_key, normalised.encode("utf-8"), hashlib.sha256).hexdigest()

    def scope_ref(self, canonical: str) -> str:
        """The caller canonicalises the scope; it is hashed exactly as given."""
        return hmac.new(self._scope_key, canonical.encode("utf-8"), hashlib.sha256).hexdigest()

    @staticmethod
    def new_data_key() -> bytes:
        return secrets.token_bytes(KEY_BYTES)

    def wrap_data_key(self, dek: bytes, *, aad: bytes) -> bytes:
        if len(dek) != KEY_BYTES:
            raise ValueError(f"a data key must be {KEY_BYTES} bytes")
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return nonce + self._wrap.encrypt(nonce, dek, aad)

    def unwrap_data_key(self, blob: bytes, *, aad: bytes) -> bytes:
        if len(blob) != _NONCE_BYTES + KEY_BYTES + _TAG_BYTES:
            raise IntegrityFailure("wrapped data key has the wrong length", field="payload")
        try:
            return self._wrap.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], aad)
        except InvalidTag:
            raise IntegrityFailure(
                "data key could not be unwrapped: wrong master key, or the record was altered", field="payload"
            ) from None


# --- payloads ---------------------------------------------------------------------------------------


def encrypt(dek: bytes, plaintext: bytes, *, aad: bytes) -> bytes:
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return _PAYLOAD_VERSION + nonce + AESGCM(dek).encrypt(nonce, plaintext, aad)


def decrypt(dek: bytes, blob: bytes, *, aad: bytes) -> bytes:
    if len(blob) < 1 + _NONCE_BYTES + _TAG_BYTES:
        raise IntegrityFailure("encrypted payload is truncated", field="payload")
    if blob[:1] != _PAYLOAD_VERSION:
        raise IntegrityFailure("encrypted payload has an unknown format version", field="payload")
    nonce, sealed = blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :]
    try:
        return AESGCM(dek).decrypt(nonce, sealed, aad)
    except InvalidTag:
        raise IntegrityFailure(
            "payload failed authentication: wrong key, or the record was altered", field="payload"
        ) from None


def seal_payload(keyring: KeyRing, plaintext: bytes, *, aad: bytes) -> tuple[bytes, bytes]:
    """Encrypt under a fresh data key; returns (wrapped data key, ciphertext) to store side by side."""
    dek = keyring.new_data_key()
    return keyring.wrap_data_key(dek, aad=aad), encrypt(dek, plaintext, aad=aad)


def open_payload(keyring: KeyRing, wrapped_dek: bytes | None, blob: bytes, *, aad: bytes) -> bytes:
    if wrapped_dek is None:
        raise DataKeyShredded("payload was shredded and cannot be decrypted", field="payload")
    return decrypt(keyring.unwrap_data_key(wrapped_dek, aad=aad), blob, aad=aad)
