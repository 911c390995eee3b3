"""The deployment files say what the service needs: PostgreSQL with a volume and a healthcheck, the daemon
migrating before it serves, an optional Ray profile with a GPU reservation, and only real CLI flags."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from forgetd.cli.main import cli

REPO = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_postgres_has_a_volume_and_a_healthcheck():
    pg = _compose()["services"]["postgres"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])


def test_the_daemon_migrates_then_serves_once_postgres_is_healthy():
    svc = _compose()["services"]["forgetd"]
    assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
    command = " ".join(svc["command"])
    assert command.index("forgetd db upgrade") < command.index("forgetd serve")
    assert svc["environment"]["FORGETD_DATABASE_URL"].startswith("postgresql://")
    assert int(svc["stop_grace_period"].rstrip("s")) >= 30


def test_serve_flags_in_the_compose_file_exist():
    command = " ".join(_compose()["services"]["forgetd"]["command"]).split("exec", 1)[1]
    argv = shlex.split(command.replace("$${FORGETD_EXECUTOR}", "ray").replace("$${FORGETD_GPUS}", "0"))
    assert argv[:2] == ["forgetd", "serve"]
    serve = cli.commands["serve"]
    ctx = serve.make_context("serve", argv[2:])  # raises on an unknown flag or a bad value
    assert ctx.params["metrics_port"] == 9464 and ctx.params["executor"] == "ray" and ctx.params["gpus"] == "0"


def test_jobs_train_on_a_gpu_where_their_process_sees_one():
    compose = _compose()
    for name in ("forgetd", "ray-gpu-worker"):
        env = compose["services"][name]["environment"]
        assert env["FORGETD_DEVICE"] == "${FORGETD_DEVICE:-auto}"
    # an empty --gpus (the default) is accepted: local slots without GPUs, Ray jobs asking for none
    serve = cli.commands["serve"]
    assert serve.make_context("serve", ["--executor", "local", "--gpus", ""]).params["gpus"] == ""


def test_the_ray_profile_has_a_head_and_a_gpu_worker():
    services = _compose()["services"]
    head, worker = services["ray-head"], services["ray-gpu-worker"]
    assert head["profiles"] == ["ray"] and worker["profiles"] == ["ray"]
    assert "--head" in head["command"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["count"] >= 1


def test_the_image_installs_torch_first_and_runs_forgetd():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert dockerfile.index('"torch==${TORCH_VERSION}"') < dockerfile.index('pip install --no-cache-dir ".[')
    assert 'ENTRYPOINT ["forgetd"]' in dockerfile
    for folder in ("forgetd", "migrations", "adapters", "policies"):
        assert f"COPY {folder} ./{folder}" in dockerfile
