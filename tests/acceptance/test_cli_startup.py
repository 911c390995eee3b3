"""Acceptance: the CLI starts fast, imports nothing heavy for --help, documents every command with an
example, and refuses to run against an out-of-date schema with a one-line pointer to `forgetd db upgrade`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import click
import pytest
from click.testing import CliRunner

from tests.conftest import new_master_key, run_cli

HEAVY = ("torch", "peft", "diffusers", "transformers", "sqlalchemy")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGETD_")}
    env.update(extra)
    return env


def _heavy(modules) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def _walk(command: click.Command, path: tuple[str, ...] = ()):
    """Yield (path, command) for the root, every group and every leaf command."""
    yield path, command
    if isinstance(command, click.Group):
        for name in sorted(command.list_commands(click.Context(command))):
            yield from _walk(command.get_command(click.Context(command), name), (*path, name))


def _all_paths() -> list[tuple[str, ...]]:
    from forgetd.cli.main import cli

    return [path for path, _ in _walk(cli)]


def _leaf_paths() -> list[tuple[str, ...]]:
    from forgetd.cli.main import cli

    return [path for path, cmd in _walk(cli) if not isinstance(cmd, click.Group)]


# --- start-up time and lazy imports ------------------------------------------------------------------


def test_help_runs_in_under_a_second_from_a_cold_start(tmp_path):
    env = _clean_env(FORGETD_HOME=str(tmp_path / "home"))
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "forgetd", "--help"], env=env, capture_output=True, text=True,
                                timeout=60)
        timings.append(time.perf_counter() - start)
        assert result.returncode == 0, result.stderr
        assert "Usage:" in result.stdout and result.stderr == ""
    assert min(timings) < 1.0, f"forgetd --help took {min(timings):.2f}s at best ({timings})"


def test_help_imports_no_heavy_module(tmp_path):
    """No `--help` anywhere in the tree pulls in torch, peft, diffusers, transformers or sqlalchemy."""
    paths = [list(p) for p in _all_paths()]
    child = (
        "import json, sys\n"
        "from forgetd.cli.main import main\n"
        f"for path in {json.dumps(paths)}:\n"
        "    try:\n"
        "        main([*path, '--help'])\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code in (0, None), (path, exc.code)\n"
        "sys.stderr.write('MODULES=' + json.dumps(sorted(sys.modules)))\n"
    )
    env = _clean_env(FORGETD_HOME=str(tmp_path / "home"))
    result = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    modules = json.loads(result.stderr.split("MODULES=", 1)[1])
    assert "forgetd.cli.main" in modules and "click" in modules
    assert _heavy(modules) == []


def test_importtime_of_help_shows_no_heavy_module(tmp_path):
    env = _clean_env(FORGETD_HOME=str(tmp_path / "home"))
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "forgetd", "--help"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    imported = [line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert "forgetd.cli.main" in imported
    assert _heavy(imported) == []


# --- every command documents an example -----------------------------------------------------------------


def test_every_command_help_has_an_example():
    from forgetd.cli.main import cli

    runner = CliRunner()
    paths = _all_paths()
    assert len(paths) > 20  # the walk really found the tree
    missing = []
    for path in paths:
        result = runner.invoke(cli, [*path, "--help"], prog_name="forgetd")
        assert result.exit_code == 0, (path, result.output)
        if "Example" not in result.output:
            missing.append(" ".join(("forgetd", *path)))
    assert missing == [], f"--help without an Example: {missing}"


# --- out-of-date schema -----------------------------------------------------------------------------------

RID = "rq_aaaaaaaaaaaaaaaa"
# Commands that never need the configured database's schema: they create or migrate it (init, db …),
# use their own throwaway database (demo), or only read YAML (policy …).
NO_SCHEMA_NEEDED = {"init", "db", "demo", "policy"}
# Well-formed values for required parameters, by parameter name, so each command gets past input
# validation and reaches the schema check. "{model_dir}" and "{tickets}" are filled in by the test.
VALUES = {
    "request_id": RID,
    "name": "credit-mlp",
    "model": "credit-mlp",
    "policy": "gdpr-erasure",
    "subject": "a@example.org",
    "reason": "withdrawn",
    "months": "1",
    "version": "1",
    "path": "{model_dir}",
    "file": "{tickets}",
    "explanation_id": "ex_aaaaaaaaaaaaaaaa",
    "input_file": "{features}",
    "out": "{png}",
}
# Whole argument lists where the name-based filling above is not enough.
OVERRIDES: dict[tuple[str, ...], list[str]] = {
    ("request", "extend"): ["request", "extend", RID, "--months", "1", "--reason", "complex",
                            "--notified-at", "2026-01-05T00:00:00Z"],
}


def _database_commands() -> dict[tuple[str, ...], click.Command]:
    from forgetd.cli.main import cli

    return {p: c for p, c in _walk(cli) if not isinstance(c, click.Group) and p[0] not in NO_SCHEMA_NEEDED}


def _well_formed_args(path: tuple[str, ...], command: click.Command) -> list[str]:
    if path in OVERRIDES:
        return list(OVERRIDES[path])
    args: list[str] = []
    options: list[str] = []
    for param in command.params:
        if not param.required:
            continue
        if param.name in VALUES:
            value = VALUES[param.name]
        elif isinstance(param.type, click.Choice):
            value = str(param.type.choices[0])
        elif isinstance(param.type, (click.types.IntParamType, click.IntRange)):
            value = str(getattr(param.type, "min", None) or 1)
        else:
            value = "x"
        if isinstance(param, click.Argument):
            args.append(value)
        else:
            options += [param.opts[0], value]
    return [*path, *args, *options]


def test_database_commands_are_found():
    found = set(_database_commands())
    assert {("request", "submit"), ("request", "import"), ("request", "list"), ("model", "register"),
            ("audit", "verify"), ("audit", "log"), ("audit", "export"), ("sweep",)} <= found


def test_database_commands_refuse_an_out_of_date_schema(tmp_path):
    from tests.conftest import make_model_dir

    database = tmp_path / "empty.db"
    env = _clean_env(
        FORGETD_HOME=str(tmp_path / "home"),
        FORGETD_DATABASE_URL=f"sqlite:///{database}",
        FORGETD_MASTER_KEY=new_master_key(),
        FORGETD_OPERATOR="alice",
    )
    (tmp_path / "home" / "data").mkdir(parents=True)
    tickets = tmp_path / "t.jsonl"
    tickets.write_text(json.dumps({"model": "credit-mlp", "policy": "gdpr-erasure", "subject": "a@example.org"}) + "\n")
    features = tmp_path / "person.json"
    features.write_text(json.dumps({"age": 40, "income": 50000}))
    fill = {"{model_dir}": str(make_model_dir(tmp_path / "model")), "{tickets}": str(tickets),
            "{features}": str(features), "{png}": str(tmp_path / "drawn.png")}
    argvs = [[fill.get(a, a) for a in _well_formed_args(p, c)] for p, c in sorted(_database_commands().items())]
    with ThreadPoolExecutor(max_workers=4) as pool:  # independent read-only processes
        results = list(pool.map(lambda argv: run_cli(argv, env), argvs))
    failures = []
    for argv, result in zip(argvs, results):
        lines = result.stderr.splitlines()
        ok = (
            result.returncode == 1
            and len(lines) == 1
            and lines[0].startswith("error: ")
            and "forgetd db upgrade" in lines[0]
            and "Traceback" not in result.stdout + result.stderr
        )
        if not ok:
            failures.append((" ".join(argv), result.returncode, result.stderr))
    # A failure with exit 2 naming a parameter means this test's filling needs a VALUES/OVERRIDES entry.
    assert failures == []
    # Nothing was created behind the operator's back: the database is still empty.
    import sqlite3

    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall() == []


def test_db_status_commands_fail_on_an_empty_database(tmp_path):
    env = _clean_env(FORGETD_HOME=str(tmp_path / "home"), FORGETD_DATABASE_URL=f"sqlite:///{tmp_path / 'empty.db'}")
    current = run_cli(["db", "current"], env)
    assert current.returncode == 1, (current.stdout, current.stderr)
    assert "up_to_date" in current.stdout and "Traceback" not in current.stdout + current.stderr
    check = run_cli(["db", "check"], env)
    assert check.returncode == 1, (check.stdout, check.stderr)
    lines = check.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "forgetd db upgrade" in lines[0]


@pytest.mark.parametrize("command", [["tick"], ["serve", "--executor", "local"]])
def test_tick_and_serve_refuse_a_cuda_device_this_machine_lacks(tmp_path, command):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    env = _clean_env(FORGETD_HOME=str(tmp_path / "home"), FORGETD_DATABASE_URL=f"sqlite:///{tmp_path / 'f.db'}",
                     FORGETD_MASTER_KEY=new_master_key())
    assert run_cli(["db", "upgrade"], env).returncode == 0
    refused = run_cli(command, {**env, "FORGETD_DEVICE": "cuda:0"})
    assert refused.returncode != 0, (refused.stdout, refused.stderr)
    lines = refused.stderr.splitlines()
    assert len(lines) == 1 and "FORGETD_DEVICE" in lines[0] and "no CUDA device" in lines[0], lines
    assert "Traceback" not in refused.stdout + refused.stderr
    assert json.loads(run_cli(["job", "list", "--json"], env).stdout) == []  # nothing was planned or queued


def test_a_command_on_a_home_never_initialised_creates_nothing(tmp_path):
    """A read on a new FORGETD_HOME used to create the folder and an empty forgetd.db, then advise `db upgrade`
    (which leaves the master key missing); now nothing is created and `forgetd init` is named."""
    env = _clean_env(FORGETD_HOME=str(tmp_path / "operator-home"))
    listed = run_cli(["request", "list"], env)
    assert listed.returncode == 1 and "Traceback" not in listed.stderr
    assert listed.stderr.startswith("error: no database at ") and "forgetd init" in listed.stderr
    assert not (tmp_path / "operator-home").exists()
    assert run_cli(["init"], env).returncode == 0
    assert run_cli(["request", "list"], env).returncode == 0
