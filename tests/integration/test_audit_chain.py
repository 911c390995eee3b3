"""The audit trail is append-only and `audit verify` finds the first row anyone tampered with."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from forgetd import api, audit
from forgetd.db.engine import make_engine
from tests.conftest import run_cli


@pytest.fixture
def trail(ctx, model):
    """A trail of 14 events: registration (2) and four requests (3 each)."""
    for i in range(4):
        record = api.request_submit(ctx, {"model": model, "policy": "gdpr-erasure", "subject": f"s{i}@example.org"})
        api.request_verify_identity(ctx, record["id"])
    assert api.audit_verify(ctx) == {"ok": True, "checked": 14, "bad_seq": None, "problem": None}
    return ctx


class Tamper:
    """Direct SQL as an attacker with database access would run it, bypassing the triggers."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.dialect = self.engine.dialect.name

    def run(self, sql: str, **params) -> None:
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.exec_driver_sql("SET LOCAL session_replication_role = replica")  # skips triggers
                conn.execute(text(sql), params)
            else:
                conn.exec_driver_sql("DROP TRIGGER audit_events_no_update")
                conn.exec_driver_sql("DROP TRIGGER audit_events_no_delete")
                conn.execute(text(sql), params)
                conn.exec_driver_sql(
                    "CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events "
                    "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused'); END"
                )
                conn.exec_driver_sql(
                    "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events "
                    "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: DELETE refused'); END"
                )

    def close(self):
        self.engine.dispose()


@pytest.fixture
def tamper(settings):
    t = Tamper(settings.database_url)
    yield t
    t.close()


def test_triggers_refuse_update_and_delete(trail, settings):
    engine = make_engine(settings.database_url)
    try:
        for sql in ("UPDATE audit_events SET actor = 'mallory' WHERE seq = 3", "DELETE FROM audit_events WHERE seq = 3"):
            with pytest.raises(DatabaseError, match="append-only"):
                with engine.begin() as conn:
                    conn.execute(text(sql))
    finally:
        engine.dispose()
    assert api.audit_verify(trail)["ok"]


def test_edited_row_is_named(trail, tamper):
    tamper.run("UPDATE audit_events SET actor = 'mallory' WHERE seq = 5")
    result = api.audit_verify(trail)
    assert (result["ok"], result["bad_seq"]) == (False, 5) and "hash" in result["problem"]


def test_edited_payload_is_named(trail, tamper):
    tamper.run("""UPDATE audit_events SET payload = '{"to":"approved"}' WHERE seq = 7""")
    assert api.audit_verify(trail)["bad_seq"] == 7


def test_edited_row_with_recomputed_hash_breaks_the_next_link(trail, tamper):
    with trail.session() as s:
        row = s.get(audit.AuditEvent, 6)
        forged = audit.row_hash(
            seq=6, at=row.at, actor="mallory", action=row.action, resource_type=row.resource_type,
            resource_id=row.resource_id, payload_digest=row.payload_digest, prev_hash=row.prev_hash,
        )
    tamper.run("UPDATE audit_events SET actor = 'mallory', hash = :h WHERE seq = 6", h=forged)
    result = api.audit_verify(trail)
    assert (result["ok"], result["bad_seq"]) == (False, 7) and "prev_hash" in result["problem"]


def test_deleted_row_is_named(trail, tamper):
    tamper.run("DELETE FROM audit_events WHERE seq = 4")
    result = api.audit_verify(trail)
    assert (result["ok"], result["bad_seq"]) == (False, 4) and "missing" in result["problem"]


def test_deleted_tail_is_named(trail, tamper):
    tamper.run("DELETE FROM audit_events WHERE seq = 14")
    assert api.audit_verify(trail)["bad_seq"] == 14


def test_inserted_row_is_named(trail, tamper):
    tamper.run(
        "INSERT INTO audit_events (seq, at, actor, action, resource_type, resource_id, payload, payload_digest, "
        "prev_hash, hash) SELECT 15, at, 'mallory', 'request.approved', resource_type, resource_id, payload, "
        "payload_digest, hash, :h FROM audit_events WHERE seq = 14",
        h="f" * 64,
    )
    result = api.audit_verify(trail)
    assert (result["ok"], result["bad_seq"]) == (False, 15)


def test_cli_verify_exit_codes(trail, tamper, cli_env):
    ok = run_cli(["audit", "verify"], cli_env)
    assert ok.returncode == 0 and "intact: 14 events" in ok.stdout
    tamper.run("UPDATE audit_events SET action = 'request.denied' WHERE seq = 9")
    bad = run_cli(["audit", "verify"], cli_env)
    assert bad.returncode == 1 and "seq 9" in bad.stderr and "Traceback" not in bad.stderr


def test_export_matches_the_chain(trail, cli_env):
    out = run_cli(["audit", "export", "--format", "jsonl"], cli_env)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["seq"] for r in rows] == list(range(1, 15))
    assert all(rows[i]["prev_hash"] == rows[i - 1]["hash"] for i in range(1, len(rows)))
    csv_out = run_cli(["audit", "export", "--format", "csv"], cli_env)
    assert csv_out.stdout.splitlines()[0].startswith("seq,at,actor,action")
    assert len(csv_out.stdout.splitlines()) == 15


def test_export_to_a_file_is_whole_or_nothing(trail, cli_env, tmp_path):
    tmp_path = tmp_path / "exports"
    tmp_path.mkdir()
    out = tmp_path / "trail.jsonl"
    done = run_cli(["audit", "export", "--out", str(out)], cli_env)
    assert done.returncode == 0 and "wrote 14 lines" in done.stderr and done.stdout == ""
    assert out.read_text() == run_cli(["audit", "export"], cli_env).stdout
    assert [p.name for p in tmp_path.iterdir()] == ["trail.jsonl"]  # no temporary file left behind
    # a folder that is not there: refused by name, nothing created (click.File used to open lazily and exit 0)
    missing = run_cli(["audit", "export", "--out", str(tmp_path / "no" / "trail.jsonl")], cli_env)
    assert missing.returncode == 2 and "--out" in missing.stderr and "create it first" in missing.stderr
    assert not (tmp_path / "no").exists() and "Traceback" not in missing.stderr
    folder = run_cli(["audit", "export", "--out", str(tmp_path)], cli_env)
    assert folder.returncode == 2 and "is a folder" in folder.stderr


def test_export_that_fails_half_way_keeps_the_earlier_file(trail, tmp_path, monkeypatch):
    tmp_path = tmp_path / "exports"
    tmp_path.mkdir()
    out = tmp_path / "trail.csv"
    out.write_text("the archive from yesterday\n")

    def failing(s, fmt):
        yield "seq,at\n"
        raise RuntimeError("connection lost")

    monkeypatch.setattr(audit, "export_lines", failing)
    with pytest.raises(RuntimeError, match="connection lost"):
        api.audit_export_file(trail, "csv", out)
    assert out.read_text() == "the archive from yesterday\n"
    assert [p.name for p in tmp_path.iterdir()] == ["trail.csv"]


APPENDER = textwrap.dedent(
    """
    import sys
    from datetime import datetime, timezone
    from forgetd import audit
    from forgetd.db.engine import make_engine, session_scope
    engine = make_engine(sys.argv[1])
    for i in range(int(sys.argv[3])):
        with session_scope(engine) as s:
            audit.append(s, actor="proc" + sys.argv[2], action="test.append", resource_type="test",
                         resource_id=f"{sys.argv[2]}-{i}", payload={"i": i}, at=datetime.now(timezone.utc))
    """
)


@pytest.mark.postgres
def test_concurrent_appenders_form_one_chain(pg_url, tmp_path):
    per_process = 50
    procs = [
        subprocess.Popen([sys.executable, "-c", APPENDER, pg_url, str(n), str(per_process)]) for n in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    engine = make_engine(pg_url)
    try:
        from forgetd.db.engine import session_scope

        with session_scope(engine) as s:
            result = audit.verify(s)
            actors = s.execute(text("SELECT actor, count(*) FROM audit_events GROUP BY actor")).all()
    finally:
        engine.dispose()
    assert result.ok and result.checked == 4 * per_process
    assert sorted(actors) == [(f"proc{n}", per_process) for n in range(4)]
