"""Settings: environment variables FORGETD_* override an optional forgetd.toml, which overrides defaults.

The config file is `$FORGETD_CONFIG` if set, else `$FORGETD_HOME/forgetd.toml` when it exists.
"""

from __future__ import annotations

import getpass
import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from forgetd.errors import ConfigError, InputError

DEFAULT_MAX_PAYLOAD_BYTES = 10 * 1024 * 1024

_TOML_KEYS = {
    "database_url",
    "lease_seconds",
    "retry_base_seconds",
    "retry_cap_seconds",
    "max_attempts",
    "master_key_file",
    "operator",
    "max_payload_bytes",
    "policies_dir",
    "adapters_dir",
    "data_root",
    "cache_dir",
    "device",
    "worker_start",
}

DEVICES = "cpu, auto (a CUDA device when one is visible), cuda or cuda:N"
WORKER_STARTS = ("forkserver", "spawn")


def _repo_or_installed_dir(name: str) -> Path:
    """policies/, adapters/ and migrations/ live beside the package in a checkout, or under
    <prefix>/share/forgetd/ when installed from a wheel (pyproject's data-files)."""
    import sys

    checkout = Path(__file__).resolve().parent.parent / name
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "forgetd" / name


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    master_key_file: Path
    master_key_env: str | None = field(default=None, repr=False)
    operator: str = "unknown"
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    policies_dir: Path = field(default_factory=lambda: _repo_or_installed_dir("policies"))
    adapters_dir: Path = field(default_factory=lambda: _repo_or_installed_dir("adapters"))
    migrations_dir: Path = field(default_factory=lambda: _repo_or_installed_dir("migrations"))
    data_root: Path | None = None
    # Tiny demo and test models, keyed by config hash: survives throwaway FORGETD_HOMEs.
    cache_dir: Path = field(default_factory=lambda: _default_cache())
    # The job queue (DESIGN 8): how long a lease lives without a heartbeat, and the retry backoff.
    lease_seconds: float = 60.0
    retry_base_seconds: float = 10.0
    retry_cap_seconds: float = 600.0
    max_attempts: int = 5
    # Where causal-LM models train and are evaluated: "cpu" (bit-reproducible: a retried job stores the same
    # bytes and measures the same metrics), "auto", "cuda" or "cuda:N". Composition always runs on the CPU in
    # fp32 (exact); other families run on the CPU.
    device: str = "cpu"
    # How the local executor starts a job's worker: forked from a fork server that imported torch & co. once
    # ("forkserver"), or as a fresh interpreter ("spawn").
    worker_start: str = "forkserver"

    def with_operator(self, operator: str | None) -> "Settings":
        return replace(self, operator=operator) if operator else self


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "forgetd"


def _default_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "forgetd"


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}", field="FORGETD_CONFIG") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", field="FORGETD_CONFIG") from None
    section = data.get("forgetd", data)
    unknown = sorted(set(section) - _TOML_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(_TOML_KEYS))}",
            field=unknown[0],
        )
    return section


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


def load_settings(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    home = Path(env.get("FORGETD_HOME") or _default_home()).expanduser()
    config_path = env.get("FORGETD_CONFIG")
    file_values: dict = {}
    if config_path:
        file_values = _read_toml(Path(config_path).expanduser())
    elif (home / "forgetd.toml").is_file():
        file_values = _read_toml(home / "forgetd.toml")

    def pick(env_key: str, toml_key: str, default):
        if env.get(env_key):
            return env[env_key]
        return file_values.get(toml_key, default)

    database_url = pick("FORGETD_DATABASE_URL", "database_url", f"sqlite:///{home / 'forgetd.db'}")
    raw_max = pick("FORGETD_MAX_PAYLOAD_BYTES", "max_payload_bytes", DEFAULT_MAX_PAYLOAD_BYTES)
    try:
        max_payload = int(raw_max)
        if max_payload <= 0:
            raise ValueError
    except (TypeError, ValueError):
        raise InputError("must be a positive integer number of bytes", field="FORGETD_MAX_PAYLOAD_BYTES") from None

    kwargs: dict = {}
    for env_key, toml_key, convert, low in (
        ("FORGETD_LEASE_SECONDS", "lease_seconds", float, 1.0),
        ("FORGETD_RETRY_BASE_SECONDS", "retry_base_seconds", float, 0.0),
        ("FORGETD_RETRY_CAP_SECONDS", "retry_cap_seconds", float, 0.0),
        ("FORGETD_MAX_ATTEMPTS", "max_attempts", int, 1),
    ):
        value = pick(env_key, toml_key, None)
        if value is None or value == "":
            continue
        try:
            kwargs[toml_key] = convert(value)
            if kwargs[toml_key] < low:
                raise ValueError
        except (TypeError, ValueError):
            raise InputError(f"must be a number ≥ {low:g}", field=env_key) from None
    for env_key, toml_key in (
        ("FORGETD_POLICIES_DIR", "policies_dir"),
        ("FORGETD_ADAPTERS_DIR", "adapters_dir"),
        ("FORGETD_DATA_ROOT", "data_root"),
        ("FORGETD_CACHE_DIR", "cache_dir"),
    ):
        value = pick(env_key, toml_key, None)
        if value:
            kwargs[toml_key] = Path(value).expanduser()

    device = str(pick("FORGETD_DEVICE", "device", "cpu")).strip().lower()
    kind, _, index = device.partition(":")
    if not (device in ("cpu", "auto", "cuda") or (kind == "cuda" and index.isdigit())):
        raise InputError(f"must be {DEVICES}, not {device!r}", field="FORGETD_DEVICE")

    worker_start = str(pick("FORGETD_WORKER_START", "worker_start", "forkserver")).strip().lower()
    if worker_start not in WORKER_STARTS:
        raise InputError(f"must be {' or '.join(WORKER_STARTS)}, not {worker_start!r}", field="FORGETD_WORKER_START")

    return Settings(
        home=home,
        device=device,
        worker_start=worker_start,
        database_url=str(database_url),
        master_key_file=Path(pick("FORGETD_MASTER_KEY_FILE", "master_key_file", home / "master.key")).expanduser(),
        master_key_env=env.get("FORGETD_MASTER_KEY") or None,
        operator=str(pick("FORGETD_OPERATOR", "operator", None) or _os_user()),
        max_payload_bytes=max_payload,
        **kwargs,
    )
