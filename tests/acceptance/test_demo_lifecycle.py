"""`forgetd demo --no-models` as an operator runs it: the request lifecycle on a fresh home, and a home that
is not new refused before anything in it changes (the full demo, with its models, runs outside CI)."""

from __future__ import annotations

import json
import os

from tests.conftest import run_cli


def _env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGETD_")}
    env["FORGETD_HOME"] = str(tmp_path / "operator-home")  # the configured home the demo must not touch
    return env


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_lifecycle_demo_runs_on_a_new_home_and_refuses_a_used_one(tmp_path):
    home = tmp_path / "demo-home"
    first = run_cli(["demo", "--no-models", "--home", str(home), "--json"], _env(tmp_path))
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["audit"]["ok"] and result["requests"]
    assert {"completed", "duplicate", "canceled"} & {r["status"] for r in result["requests"]}
    assert not (tmp_path / "operator-home").exists()

    before = _snapshot(home)
    again = run_cli(["demo", "--no-models", "--home", str(home)], _env(tmp_path))
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert again.stderr.startswith("error: --home: ") and "not empty" in again.stderr
    assert _snapshot(home) == before  # registered weights and the database as they were

    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    refused = run_cli(["demo", "--no-models", "--home", str(a_file)], _env(tmp_path))
    assert refused.returncode == 2 and "is a file" in refused.stderr and a_file.read_text() == "x"
