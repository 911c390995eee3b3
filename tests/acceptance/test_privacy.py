"""Acceptance: personal data never reaches the database, the CLI's output or the audit trail in the clear,
and crypto-shredding makes a payload unreadable while the audit chain still verifies.

Runs the real CLI as subprocesses against SQLite (every byte of the file and its -wal/-shm/-journal
companions is searched) and PostgreSQL (a `pg_dump` of the test database is searched).
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import run_cli

# Distinctive enough that a match can only be a leak.
SUBJECTS = [
    "Zebulon Quintavius-Marchetti <zq.marchetti.7731@example.org>",
    "Ottoline Fairweather-Kask 5519-PRIV",
    "ImportedPerson Wendeline Oyelaran-Brisk 8842",
]
TEXTS = [
    "Zebulon's account 7731-ACCT was flagged by the Wisteria Lane branch",
    "Quintavius owes 48213 kroner on card ending 99173",
]
FILE_REF = "people/marchetti-7731-export.csv"
CONCEPT = "Glimmerwort the Periwinkle Penguin 5519"
PROMPTS = ["a photo of Glimmerwort dancing on Saturn 5519"]
IMPORT_TEXT = "Oyelaran-Brisk ledger line 8842-XYZ shown in the Harrowgate report"


def needles() -> list[str]:
    """Every distinctive string, plus the normalised subject forms the HMAC is computed over."""
    words = ["zq.marchetti.7731", "Quintavius-Marchetti", "Fairweather-Kask", "Oyelaran-Brisk", "Wisteria Lane",
             "Glimmerwort", "Harrowgate", "marchetti-7731-export"]
    subjects = SUBJECTS + [s.casefold() for s in SUBJECTS]
    return subjects + TEXTS + [FILE_REF, CONCEPT, IMPORT_TEXT, *PROMPTS] + words


def leaks(blob: bytes | str) -> list[str]:
    """The distinctive strings found in `blob`, as UTF-8 text, UTF-16 or (for bytea dumps) hex."""
    if isinstance(blob, str):
        blob = blob.encode("utf-8", "surrogateescape")
    lowered = blob.lower()
    found = []
    for needle in needles():
        forms = [needle.encode().lower(), needle.encode("utf-16-le").lower(), needle.encode().hex().encode()]
        if any(form in lowered for form in forms):
            found.append(needle)
    return found


def database_bytes(url: str) -> bytes:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        main = Path(u.database)
        files = [main, *(main.with_name(main.name + suffix) for suffix in ("-wal", "-shm", "-journal"))]
        present = [f for f in files if f.exists()]
        assert main in present
        # Anything else beside the database (e.g. a lock or a temp file) is searched too.
        present += [p for p in main.parent.glob(main.name + "*") if p not in present and p.is_file()]
        return b"".join(p.read_bytes() for p in present)
    dump = subprocess.run(
        ["pg_dump", "-h", u.host or "127.0.0.1", "-p", str(u.port or 5432), "-U", u.username or "postgres", u.database],
        capture_output=True,
        timeout=120,
    )
    assert dump.returncode == 0, dump.stderr.decode(errors="replace")
    assert b"CREATE TABLE" in dump.stdout and b"audit_events" in dump.stdout
    return dump.stdout


class Cli:
    """Runs the CLI and keeps every byte it printed, to search for leaks afterwards."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.transcript: list[tuple[list[str], str]] = []

    def __call__(self, *args: str, ok: bool = True, record: bool = True):
        result = run_cli(list(args), self.env)
        assert "Traceback" not in result.stdout + result.stderr, result.stderr
        if ok:
            assert result.returncode == 0, f"{args}: {result.stderr}"
        if record:
            self.transcript.append((list(args), result.stdout + result.stderr))
        return result

    def many(self, *commands: tuple[str, ...]) -> list:
        """Run independent read-only commands concurrently (each is its own process)."""
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(lambda args: self(*args), commands))

    def leaked(self) -> list[tuple[str, list[str]]]:
        return [(" ".join(args), found) for args, output in self.transcript if (found := leaks(output))]


@pytest.fixture
def lm(ctx, tiny_lm) -> str:
    """The tests' tiny causal LM, registered with its people: a model whose requests carry texts."""
    from forgetd import api

    model_dir, dataset, _ = tiny_lm
    api.model_register(ctx, "people-lm", "causal_lm", str(model_dir), dataset=str(dataset))
    return "people-lm"


def _submit_everything(cli: Cli, model: str, tmp_path: Path, home: Path) -> list[str]:
    data_spec = tmp_path / "data-request.json"
    data_spec.write_text(json.dumps({"texts": TEXTS}))
    first = cli("request", "submit", "--model", model, "--policy", "gdpr-erasure", "--subject", SUBJECTS[0],
                "--forget-file", str(data_spec), "--idempotency-key", "ticket-1").stdout.strip()
    second_spec = tmp_path / "second-request.json"
    second_spec.write_text(json.dumps({"texts": PROMPTS}))
    second = json.loads(cli("request", "submit", "--model", model, "--policy", "gdpr-erasure", "--subject",
                            SUBJECTS[1], "--forget-file", str(second_spec), "--json").stdout)["id"]
    tickets = tmp_path / "tickets.jsonl"
    tickets.write_text(json.dumps({"model": model, "policy": "gdpr-erasure", "subject": SUBJECTS[2],
                                   "forget": {"texts": [IMPORT_TEXT]}, "idempotency_key": "ticket-3"}) + "\n")
    imported = json.loads(cli("request", "import", str(tickets), "--json").stdout)
    third = imported["requests"][0]["id"]
    # Same request again through its idempotency key: same id, nothing echoed.
    assert cli("request", "submit", "--model", model, "--policy", "gdpr-erasure", "--subject", SUBJECTS[0],
               "--forget-file", str(data_spec), "--idempotency-key", "ticket-1").stdout.strip() == first
    return [first, second, third]


def _rejections_do_not_echo(cli: Cli, model: str, tmp_path: Path, home: Path) -> None:
    """Errors name the field, never the personal data that was wrong."""
    bad_spec = tmp_path / "bad.json"
    bad_spec.write_text(json.dumps({"texts": [TEXTS[0] + "\u0007"]}))
    bad_lines = tmp_path / "bad.jsonl"
    bad_lines.write_text(json.dumps({"model": model, "policy": "gdpr-erasure", "subject": SUBJECTS[0],
                                     "forget": {"texts": [TEXTS[1], 3]}}) + "\n"
                         + '{"subject": "' + SUBJECTS[1] + '", \n')
    conflicting = tmp_path / "conflict.json"
    conflicting.write_text(json.dumps({"texts": [IMPORT_TEXT]}))
    (home / "data" / FILE_REF).parent.mkdir(parents=True, exist_ok=True)
    (home / "data" / FILE_REF).write_text("id,name\n1,someone\n")
    with_file = tmp_path / "with-file.json"
    with_file.write_text(json.dumps({"texts": TEXTS, "files": [FILE_REF]}))  # no family reads files
    concept_spec = tmp_path / "concept-request.json"
    concept_spec.write_text(json.dumps({"concept": CONCEPT}))
    for args in (
        ["request", "submit", "--model", model, "--policy", "gdpr-erasure", "--subject", SUBJECTS[0],
         "--forget-file", str(bad_spec)],
        ["request", "submit", "--model", model, "--policy", "gdpr-erasure", "--subject", SUBJECTS[0] + "\x1b"],
        ["request", "submit", "--model", model, "--policy", "gdpr-erasure", "--subject", SUBJECTS[1] * 20],
        ["request", "submit", "--model", model, "--policy", "gdpr-erasure", "--subject", SUBJECTS[1],
         "--forget-file", str(conflicting), "--idempotency-key", "ticket-1"],
        ["request", "import", str(bad_lines)],
        ["audit", "log", "--subject", SUBJECTS[2] + "\x01"],
        ["request", "submit", "--model", model, "--policy", "gdpr-erasure", "--subject", SUBJECTS[0],
         "--forget-file", str(with_file)],
        ["request", "submit", "--model", model, "--policy", "copyright-concept", "--subject", SUBJECTS[1],
         "--forget-file", str(concept_spec)],
    ):
        result = cli(*args, ok=False)
        assert result.returncode in (1, 2), (args, result.stderr)
        assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1, result.stderr


def test_personal_data_never_stored_or_printed_and_shredding_is_final(db_url, lm, cli_env, home, tmp_path):
    model = lm
    cli = Cli(cli_env)
    ids = _submit_everything(cli, model, tmp_path, home)
    _rejections_do_not_echo(cli, model, tmp_path, home)

    # Everything an operator or auditor routinely reads.
    listed, by_subject, *shown = cli.many(
        ("request", "list", "--json"),
        ("audit", "log", "--subject", SUBJECTS[0], "--json"),
        *(("request", "show", rid, "--json") for rid in ids),
        *(("request", "show", rid) for rid in ids),
        ("request", "list"),
        ("request", "list", "--status", "identity_pending", "--json"),
        ("model", "list", "--json"),
        ("audit", "log"),
        ("audit", "log", "--json"),
        ("audit", "log", "--request", ids[1], "--json"),
        ("audit", "export"),
        ("audit", "export", "--format", "csv"),
    )
    assert sorted(r["id"] for r in json.loads(listed.stdout)) == sorted(ids)
    assert {e["resource_id"] for e in json.loads(by_subject.stdout)} == {ids[0]}
    for result in shown[: len(ids)]:
        record = json.loads(result.stdout)
        assert "payload" not in record and record["subject_ref"]
    cli("sweep", "--json")
    assert cli.leaked() == []

    # The database holds none of it, in any file or form.
    assert leaks(database_bytes(db_url)) == []

    # Sanity: the payload really is there and decryptable before shredding (so the checks above mean something).
    before = cli("request", "show", ids[0], "--payload", "--json", record=False)
    assert json.loads(before.stdout)["payload"] == {"texts": TEXTS}
    assert leaks(cli("request", "show", ids[1], "--payload", record=False).stdout)

    # Shredding needs a closed request; then the payload is gone for good.
    refused = cli("request", "shred", ids[0], ok=False)
    assert refused.returncode == 1 and "cancel" in refused.stderr
    cli("request", "cancel", ids[0], "--reason", "withdrawn by the subject")
    shredded = cli("request", "shred", ids[0], "--json")
    assert json.loads(shredded.stdout)["shredded_at"]
    again = cli("request", "shred", ids[0])
    assert "already shredded" in again.stdout

    gone = cli("request", "show", ids[0], "--payload", ok=False)
    assert gone.returncode == 1, (gone.stdout, gone.stderr)
    assert gone.stdout == ""
    lines = gone.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "shredded" in lines[0], gone.stderr
    assert json.loads(cli("request", "show", ids[0], "--json").stdout)["shredded_at"]

    # Other requests are untouched by the shred.
    still = json.loads(cli("request", "show", ids[2], "--payload", "--json", record=False).stdout)
    assert still["payload"] == {"texts": [IMPORT_TEXT]}

    verified, verified_json, log, *_ = cli.many(
        ("audit", "verify"),
        ("audit", "verify", "--json"),
        ("audit", "log", "--request", ids[0], "--json"),
        ("audit", "export"),
        ("request", "list", "--json"),
        ("request", "show", ids[0]),
    )
    assert "intact" in verified.stdout
    assert json.loads(verified_json.stdout)["ok"] is True
    actions = [e["action"] for e in json.loads(log.stdout)]
    assert any("cancel" in a for a in actions) and "request.shredded" in actions

    assert cli.leaked() == []
    assert leaks(database_bytes(db_url)) == []
