"""Acceptance: a corpus of malformed inputs fed to the real CLI (subprocesses).

Every case must fail with exit code 1 or 2, print exactly one line `error: …` on stderr that names the
offending field, show no traceback, and write nothing (row counts of requests, request_transitions,
models and audit_events unchanged). The corpus runs on SQLite; one PostgreSQL case shows the same
no-row-written property there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import run_cli

TABLES = ("requests", "request_transitions", "models", "audit_events")
MODEL = "credit-mlp"  # registered by the `model` fixture
UNKNOWN_ID = "rq_aaaaaaaaaaaaaaaa"  # well formed, never issued
GOOD = {"model": MODEL, "policy": "gdpr-erasure", "subject": "good.person@example.org"}
POLICY_FILE = Path(__file__).resolve().parents[2] / "policies" / "gdpr-erasure.yaml"


@pytest.fixture
def db_url(request) -> str:
    """SQLite for the corpus (keeps CI fast); PostgreSQL for tests marked `postgres`."""
    if request.node.get_closest_marker("postgres"):
        return request.getfixturevalue("pg_url")
    return request.getfixturevalue("sqlite_url")


def row_counts(url: str) -> dict[str, int]:
    from sqlalchemy import text

    from forgetd.db.engine import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}
    finally:
        engine.dispose()


def jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def submit(*extra: str) -> tuple[str, ...]:
    return ("request", "submit", "--model", MODEL, "--policy", "gdpr-erasure", "--subject", "x@example.org", *extra)


def submit_forget(spec, policy: str = "gdpr-erasure") -> dict:
    """A submit with a --forget-file holding `spec` (JSON-encoded unless already text/bytes)."""
    content = spec if isinstance(spec, (str, bytes)) else json.dumps(spec)
    args = ("request", "submit", "--model", MODEL, "--policy", policy, "--subject", "x@example.org",
            "--forget-file", "{in}/forget.json")
    return {"args": args, "files": {"forget.json": content}}


def policy_text(**replace: str) -> str:
    text = POLICY_FILE.read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    return text


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    field: str  # must appear in the error line
    files: dict[str, str | bytes] = field(default_factory=dict)  # written under {in}
    env: dict[str, str] = field(default_factory=dict)
    also: tuple[str, ...] = ()  # further substrings the error line must contain
    prepare: Callable[[Path, Path], None] | None = None  # (input dir, FORGETD_HOME)


def _symlink_file_out(indir: Path, home: Path) -> None:
    (home / "data" / "passwd").symlink_to("/etc/passwd")


def _symlink_dir_out(indir: Path, home: Path) -> None:
    outside = indir / "outside"
    outside.mkdir()
    (outside / "records.txt").write_text("someone else's records\n")
    (home / "data" / "shared").symlink_to(outside, target_is_directory=True)


def _huge_forget_file(indir: Path, home: Path) -> None:
    # 11 MiB against the default 10 MiB limit (FORGETD_MAX_PAYLOAD_BYTES unset).
    with (indir / "huge.json").open("w") as fh:
        fh.write('{"texts": ["')
        fh.write("a" * (11 * 1024 * 1024))
        fh.write('"]}')


def _empty_model_dir(indir: Path, home: Path) -> None:
    (indir / "empty-model").mkdir()
    (indir / "empty-model" / "config.json").write_text("{}")


def _model_dir(indir: Path, home: Path) -> None:
    from tests.conftest import make_model_dir

    make_model_dir(indir / "model2")


def _truncated_model_dir(indir: Path, home: Path) -> None:
    _model_dir(indir, home)
    weights = indir / "model2" / "model.safetensors"
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size - 4)


def _policies_with_a_broken_file(indir: Path, home: Path) -> None:
    import shutil

    shutil.copytree(POLICY_FILE.parent, indir / "policies")
    (indir / "policies" / "zz-broken.yaml").write_text("name: zz-broken\nkind: [")


def _adapters_without_npo_lora(indir: Path, home: Path) -> None:
    import shutil

    shutil.copytree(POLICY_FILE.parents[1] / "adapters", indir / "adapters")
    (indir / "adapters" / "npo-lora.yaml").unlink()


def _dataset_json(**extra) -> str:
    return json.dumps({"format": "forgetd-records/v1", "retain": ["a"], "reference": ["b"],
                       "records": {"a": {"texts": ["trained"]}, "b": {"texts": ["never seen", "nor this"]}}, **extra})


SMALL_LIMIT = {"FORGETD_MAX_PAYLOAD_BYTES": "2048"}
BIG_TEXT = {"texts": ["b" * 3000]}
SQL = "'; DROP TABLE requests; --"

CASES = [
    # --- request submit: options ---------------------------------------------------------------------
    Case("submit-missing-subject", ("request", "submit", "--model", MODEL, "--policy", "gdpr-erasure"), "--subject"),
    Case("submit-empty-subject", ("request", "submit", "--model", MODEL, "--policy", "gdpr-erasure", "--subject", ""),
         "subject"),
    Case("submit-blank-subject", ("request", "submit", "--model", MODEL, "--policy", "gdpr-erasure", "--subject", "   "),
         "subject"),
    Case("submit-subject-control-char",
         ("request", "submit", "--model", MODEL, "--policy", "gdpr-erasure", "--subject", "eve\x1b[2Jmallory"), "subject"),
    Case("submit-subject-too-long",
         ("request", "submit", "--model", MODEL, "--policy", "gdpr-erasure", "--subject", "s" * 600), "subject"),
    Case("submit-unknown-policy", ("request", "submit", "--model", MODEL, "--policy", "ccpa-delete", "--subject", "x@y"),
         "policy"),
    Case("submit-policy-path-traversal",
         ("request", "submit", "--model", MODEL, "--policy", "../policies/gdpr-erasure", "--subject", "x@y"), "policy"),
    Case("submit-unknown-model", ("request", "submit", "--model", "gpt-17", "--policy", "gdpr-erasure", "--subject", "x@y"),
         "model"),
    Case("tick-unknown-model", ("tick", "--model", "gpt-17"), "--model", also=("forgetd model list",)),
    Case("submit-sql-model-name",
         ("request", "submit", "--model", f"credit-mlp{SQL}", "--policy", "gdpr-erasure", "--subject", "x@y"), "model"),
    Case("submit-bad-kind-choice", submit("--kind", "person"), "--kind"),
    Case("submit-kind-policy-mismatch", submit("--kind", "concept"), "kind"),
    Case("submit-received-at-not-a-date", submit("--received-at", "last tuesday"), "received_at"),
    Case("submit-received-at-invalid-day", submit("--received-at", "2026-02-30T10:00:00Z"), "received_at"),
    Case("submit-received-at-no-timezone", submit("--received-at", "2026-01-05T10:00:00"), "received_at"),
    Case("submit-received-at-future", submit("--received-at", "2999-01-01T00:00:00Z"), "received_at"),
    Case("submit-received-at-control-char", submit("--received-at", "2026-01-05\x07"), "received_at"),
    Case("submit-sql-idempotency-key", submit("--idempotency-key", "1' OR '1'='1"), "idempotency_key"),
    Case("submit-bad-operator", ("--operator", "robert'); DROP TABLE models;--", *submit()), "--operator"),
    Case("submit-invalid-master-key", submit(), "FORGETD_MASTER_KEY", env={"FORGETD_MASTER_KEY": "not-a-key"}),
    # --- request submit: --forget-file contents ------------------------------------------------------
    Case("forget-file-missing", submit("--forget-file", "{in}/nope.json"), "--forget-file"),
    Case("forget-file-is-directory", submit("--forget-file", "{in}"), "--forget-file"),
    Case("forget-file-broken-json", **submit_forget('{"texts": ["a", }'), field="--forget-file", also=("JSON",)),
    Case("forget-file-not-utf8", **submit_forget(b'{"texts": ["\xff\xfe"]}'), field="--forget-file"),
    Case("forget-not-an-object", **submit_forget(["a", "b"]), field="forget"),
    Case("forget-unknown-key", **submit_forget({"textz": ["a"]}), field="forget.textz"),
    Case("forget-texts-not-a-list", **submit_forget({"texts": "just one"}), field="forget.texts"),
    Case("forget-texts-empty-list", **submit_forget({"texts": []}), field="forget.texts", also=("not be empty",)),
    Case("forget-corpus-id-blank", **submit_forget({"corpus_ids": ["p0001", " "]}), field="forget.corpus_ids[1]",
         also=("blank",)),
    Case("forget-texts-item-wrong-type", **submit_forget({"texts": ["ok", 7]}), field="forget.texts[1]"),
    Case("forget-texts-control-char", **submit_forget({"texts": ["nul\u0000byte"]}), field="forget.texts[0]"),
    Case("forget-labels-item-wrong-type", **submit_forget({"labels": [{"a": 1}]}, "class-removal"),
         field="forget.labels[0]"),
    Case("forget-concept-wrong-type", **submit_forget({"concept": 42}, "copyright-concept"), field="forget.concept"),
    Case("forget-concept-missing", **submit_forget({"prompts": ["a mouse"]}, "copyright-concept"), field="forget.concept"),
    Case("forget-labels-missing", **submit_forget({"labels": []}, "class-removal"), field="forget.labels"),
    # well formed, but not something the model can forget: refused at intake instead of failing at training
    Case("forget-texts-for-a-tabular-model", **submit_forget({"texts": ["Jane Doe's loan file"]}),
         field="forget.texts", also=("forget.corpus_ids",)),
    Case("forget-corpus-id-not-in-the-dataset", **submit_forget({"corpus_ids": ["applicant-0001", "applicant-9999"]}),
         field="forget.corpus_ids[1]", also=("not a record of model credit-mlp",)),
    Case("forget-policy-without-a-recipe-for-the-family", **submit_forget({"labels": [1]}, "class-removal"),
         field="policy", also=("no recipe for tabular_classifier",)),
    Case("import-line-not-in-the-dataset",
         ("request", "import", "{in}/lines.jsonl"),
         "line 2", files={"lines.jsonl": jsonl({**GOOD, "forget": {"corpus_ids": ["applicant-0001"]}},
                                               {**GOOD, "subject": "b@example.org", "forget": {"corpus_ids": ["x"]}})},
         also=("forget.corpus_ids[0]", "nothing imported")),
    Case("forget-files-dotdot", **submit_forget({"files": ["../../etc/passwd"]}), field="forget.files[0]"),
    Case("forget-files-absolute", **submit_forget({"files": ["/etc/passwd"]}), field="forget.files[0]"),
    Case("forget-files-symlink-file-outside", **submit_forget({"files": ["passwd"]}), field="forget.files[0]",
         prepare=_symlink_file_out),
    Case("forget-files-symlink-dir-outside", **submit_forget({"files": ["shared/records.txt"]}),
         field="forget.files[0]", prepare=_symlink_dir_out),
    Case("forget-files-backslash", **submit_forget({"files": ["..\\..\\etc\\passwd"]}), field="forget.files[0]"),
    Case("forget-files-missing", **submit_forget({"files": ["not-there.csv"]}), field="forget.files[0]"),
    Case("forget-file-over-configured-limit", **submit_forget(BIG_TEXT), field="--forget-file", env=SMALL_LIMIT,
         also=("FORGETD_MAX_PAYLOAD_BYTES",)),
    Case("forget-file-over-default-10mib", submit("--forget-file", "{in}/huge.json"), "--forget-file",
         prepare=_huge_forget_file, also=("10485760",)),
    # --- request import -------------------------------------------------------------------------------
    Case("import-mixed-good-and-bad-lines", ("request", "import", "{in}/t.jsonl"), "FILE",
         files={"t.jsonl": jsonl(GOOD, {**GOOD, "policy": "nope"}, '{"model": "credit-mlp",', GOOD,
                                 {**GOOD, "kind": "concept"})},
         also=("invalid lines 2, 3, 5", "nothing imported", "policy", "kind")),
    Case("import-good-line-then-bad-line", ("request", "import", "{in}/t.jsonl"), "line 2: subject",
         files={"t.jsonl": jsonl(GOOD, {**GOOD, "subject": 12345})}),
    Case("import-missing-field", ("request", "import", "{in}/t.jsonl"), "line 1: policy",
         files={"t.jsonl": jsonl({"model": MODEL, "subject": "x@y"})}),
    Case("import-unknown-field", ("request", "import", "{in}/t.jsonl"), "subjet",
         files={"t.jsonl": jsonl({**GOOD, "subjet": "typo"})}),
    Case("import-line-not-object", ("request", "import", "{in}/t.jsonl"), "line 1: request",
         files={"t.jsonl": jsonl("[1, 2, 3]")}),
    Case("import-wrong-type-received-at", ("request", "import", "{in}/t.jsonl"), "received_at",
         files={"t.jsonl": jsonl({**GOOD, "received_at": 1700000000})}),
    Case("import-unknown-model", ("request", "import", "{in}/t.jsonl"), "line 2: model",
         files={"t.jsonl": jsonl(GOOD, {**GOOD, "model": "not-registered"})}),
    Case("import-oversized-line", ("request", "import", "{in}/t.jsonl"), "line 2: forget", env=SMALL_LIMIT,
         files={"t.jsonl": jsonl(GOOD, {**GOOD, "forget": BIG_TEXT})}),
    Case("import-empty-file", ("request", "import", "{in}/t.jsonl"), "FILE", files={"t.jsonl": "\n\n"}),
    Case("import-missing-file", ("request", "import", "{in}/none.jsonl"), "FILE"),
    Case("import-not-utf8", ("request", "import", "{in}/t.jsonl"), "FILE", files={"t.jsonl": b"\xff\xfe{}\n"}),
    # --- request list ---------------------------------------------------------------------------------
    Case("list-unknown-status", ("request", "list", "--status", "finished"), "--status"),
    Case("list-sql-status", ("request", "list", "--status", "approved' OR '1'='1"), "--status"),
    Case("list-due-within-garbage", ("request", "list", "--due-within", "7 parsecs"), "--due-within"),
    Case("list-due-within-months", ("request", "list", "--due-within", "P1M"), "--due-within"),
    Case("list-due-within-negative", ("request", "list", "--due-within", "-5d"), "--due-within"),
    Case("list-due-within-huge", ("request", "list", "--due-within", "9" * 40 + "d"), "--due-within"),
    # --- request extend ---------------------------------------------------------------------------------
    Case("extend-months-too-many", ("request", "extend", UNKNOWN_ID, "--months", "3", "--reason", "complex"), "--months"),
    Case("extend-months-not-a-number",
         ("request", "extend", UNKNOWN_ID, "--months", "two", "--reason", "complex"), "--months"),
    Case("extend-notified-at-garbage",
         ("request", "extend", UNKNOWN_ID, "--months", "1", "--reason", "complex", "--notified-at", "yesterday"),
         "--notified-at"),
    Case("extend-notified-at-future",
         ("request", "extend", UNKNOWN_ID, "--months", "1", "--reason", "c", "--notified-at", "2999-01-01T00:00:00Z"),
         "--notified-at"),
    Case("extend-reason-control-char",
         ("request", "extend", UNKNOWN_ID, "--months", "1", "--reason", "bad\x08reason"), "--reason"),
    Case("extend-missing-reason", ("request", "extend", UNKNOWN_ID, "--months", "1"), "--reason"),
    # --- request show / approve -------------------------------------------------------------------------
    Case("show-malformed-id", ("request", "show", "../../etc/passwd"), "ID"),
    Case("show-unknown-id", ("request", "show", UNKNOWN_ID), "ID"),
    Case("show-sql-id", ("request", "show", "rq_' OR 1=1 --"), "ID"),
    Case("approve-malformed-id", ("request", "approve", "RQ_AAAAAAAAAAAAAAAA"), "ID"),
    Case("approve-unknown-id", ("request", "approve", UNKNOWN_ID), "ID"),
    # --- model register -------------------------------------------------------------------------------
    Case("model-register-missing-path-option", ("model", "register", "m2", "--family", "causal_lm"), "--path"),
    Case("model-register-path-does-not-exist",
         ("model", "register", "m2", "--family", "causal_lm", "--path", "{in}/no-such-dir"), "--path"),
    Case("model-register-path-is-a-file",
         ("model", "register", "m2", "--family", "causal_lm", "--path", "{in}/f.txt"), "--path", files={"f.txt": "x"}),
    Case("model-register-no-weight-files",
         ("model", "register", "m2", "--family", "causal_lm", "--path", "{in}/empty-model"), "--path",
         prepare=_empty_model_dir, also=("no weight files",)),
    Case("model-register-bad-name",
         ("model", "register", "My Model!", "--family", "causal_lm", "--path", "{in}/model2"), "NAME",
         prepare=_model_dir),
    Case("model-register-sql-name",
         ("model", "register", "m'; DROP TABLE models; --", "--family", "causal_lm", "--path", "{in}/model2"), "NAME",
         prepare=_model_dir),
    Case("model-register-unknown-family",
         ("model", "register", "m2", "--family", "llama", "--path", "{in}/model2"), "--family", prepare=_model_dir),
    Case("model-register-duplicate-name",
         ("model", "register", MODEL, "--family", "tabular_classifier", "--path", "{in}/model2"), "NAME",
         prepare=_model_dir),
    Case("model-register-reference-split-wrong-length",
         ("model", "register", "m2", "--family", "tabular_classifier", "--path", "{in}/model2", "--dataset",
          "{in}/ds.json"),
         "--dataset", prepare=_model_dir, also=("reference_split", "one 0 (calibration) or 1"),
         files={"ds.json": _dataset_json(reference_split=[0, 1, 1])}),
    Case("model-register-reference-split-one-half",
         ("model", "register", "m2", "--family", "tabular_classifier", "--path", "{in}/model2", "--dataset",
          "{in}/ds.json"),
         "--dataset", prepare=_model_dir, also=("reference_split", "each half"),
         files={"ds.json": _dataset_json(reference_split=[1, 1])}),
    # registration checks the directory is a model of the family named (a tabular model is no causal LM)
    Case("model-register-wrong-family", ("model", "register", "m2", "--family", "causal_lm", "--path", "{in}/model2"),
         "--path", prepare=_model_dir, also=("not a causal LM", "check --family")),
    Case("model-register-dataset-rows-of-another-width",
         ("model", "register", "m2", "--family", "tabular_classifier", "--path", "{in}/model2", "--dataset",
          "{in}/narrow.json"), "--dataset", prepare=_model_dir,
         files={"narrow.json": json.dumps({"format": "forgetd-records/v1",
                                           "records": {"a1": {"rows": [[1.0, 2.0]], "labels": [0]},
                                                       "a2": {"rows": [[2.0, 1.0]], "labels": [1]}},
                                           "retain": ["a1"], "reference": ["a2"]})},
         also=("records[0] has rows of 2 values; the model takes 10 features",)),
    Case("model-register-truncated-weights",
         ("model", "register", "m2", "--family", "tabular_classifier", "--path", "{in}/model2"), "--path",
         prepare=_truncated_model_dir,
         also=("model.safetensors is cut short",)),
    Case("model-register-causal-lm-does-not-load",
         ("model", "register", "m2", "--family", "causal_lm", "--path", "{in}/model2", "--dataset", "{in}/ds.json"),
         "--path", prepare=_model_dir, also=("causal LM",), files={"ds.json": _dataset_json()}),
    # --- policy validate --------------------------------------------------------------------------------
    Case("policy-validate-missing-file", ("policy", "validate", "{in}/gone.yaml"), "gone.yaml"),
    Case("policy-validate-broken-yaml", ("policy", "validate", "{in}/gdpr-erasure.yaml"), "gdpr-erasure.yaml",
         files={"gdpr-erasure.yaml": "name: gdpr-erasure\napplies_to: {kind: data\n"}, also=("YAML",)),
    Case("policy-validate-empty-file", ("policy", "validate", "{in}/gdpr-erasure.yaml"), "gdpr-erasure.yaml",
         files={"gdpr-erasure.yaml": ""}),
    Case("policy-validate-unknown-kind", ("policy", "validate", "{in}/gdpr-erasure.yaml"), "applies_to.kind",
         files={"gdpr-erasure.yaml": policy_text(**{"kind: data": "kind: person"})}),
    Case("policy-validate-unknown-field", ("policy", "validate", "{in}/gdpr-erasure.yaml"), "identity_requird",
         files={"gdpr-erasure.yaml": policy_text(**{"identity_required:": "identity_requird:"})}),
    Case("policy-validate-wrong-type", ("policy", "validate", "{in}/gdpr-erasure.yaml"), "approval.required",
         files={"gdpr-erasure.yaml": policy_text(**{"approval: {required: true": 'approval: {required: "yes"'})}),
    Case("policy-validate-bad-duration", ("policy", "validate", "{in}/gdpr-erasure.yaml"), "deadline.extension_max",
         files={"gdpr-erasure.yaml": policy_text(**{"extension_max: P2M": "extension_max: two months"})}),
    Case("policy-validate-unknown-family", ("policy", "validate", "{in}/gdpr-erasure.yaml"), "recipes",
         files={"gdpr-erasure.yaml": policy_text(**{"causal_lm: npo-lora": "llm: npo-lora"})}),
    Case("policy-validate-recipe-not-deployed", ("policy", "validate", "{in}/gdpr-erasure.yaml"), "recipes.causal_lm",
         files={"gdpr-erasure.yaml": POLICY_FILE.read_text().replace("npo-lora", "npo-lora-v2")},
         also=("'npo-lora-v2'", "no adapter recipe")),
    Case("policy-validate-name-mismatch", ("policy", "validate", "{in}/other.yaml"), "name",
         files={"other.yaml": policy_text()}),
    # --- audit log ----------------------------------------------------------------------------------------
    Case("audit-log-malformed-request", ("audit", "log", "--request", "42"), "--request"),
    Case("audit-log-empty-subject", ("audit", "log", "--subject", ""), "--subject"),
    Case("audit-log-subject-control-char", ("audit", "log", "--subject", "a\x1fb"), "--subject"),
    Case("audit-log-both-filters", ("audit", "log", "--request", UNKNOWN_ID, "--subject", "x@y"), "--subject"),
    Case("audit-log-bad-limit", ("audit", "log", "--limit", "0"), "--limit"),
    Case("audit-export-into-a-missing-folder", ("audit", "export", "--out", "{in}/no/trail.jsonl"), "--out",
         also=("create it first",)),
    Case("audit-export-onto-a-folder", ("audit", "export", "--out", "{in}"), "--out", also=("is a folder",)),
    # --- db ---------------------------------------------------------------------------------------------------
    Case("db-upgrade-unknown-revision", ("db", "upgrade", "--revision", "0009"), "--revision", also=("0001",)),
    # --- environment --------------------------------------------------------------------------------------
    Case("env-database-url-unsupported", submit(), "FORGETD_DATABASE_URL", env={"FORGETD_DATABASE_URL": "mysql://x/y"}),
    Case("env-database-url-garbage", ("request", "list"), "FORGETD_DATABASE_URL",
         env={"FORGETD_DATABASE_URL": "not a url at all"}),
    Case("env-database-url-unreachable", submit(), "FORGETD_DATABASE_URL",
         env={"FORGETD_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/forgetd"}),
    Case("env-max-payload-not-a-number", submit(), "FORGETD_MAX_PAYLOAD_BYTES",
         env={"FORGETD_MAX_PAYLOAD_BYTES": "ten megabytes"}),
    Case("env-max-payload-negative", ("request", "list"), "FORGETD_MAX_PAYLOAD_BYTES",
         env={"FORGETD_MAX_PAYLOAD_BYTES": "-1"}),
    Case("env-max-payload-zero", submit(), "FORGETD_MAX_PAYLOAD_BYTES", env={"FORGETD_MAX_PAYLOAD_BYTES": "0"}),
    Case("env-device-unknown", submit(), "FORGETD_DEVICE", env={"FORGETD_DEVICE": "gpu"},
         also=("cpu, auto", "cuda:N", "'gpu'")),
    Case("env-device-bad-index", ("request", "list"), "FORGETD_DEVICE",
         env={"FORGETD_DEVICE": "cuda:first"}),
    # --- serve: refused before it claims, plans or audits anything ---------------------------------------------
    Case("serve-gpus-not-an-id", ("serve", "--gpus", "0,first"), "--gpus", also=("'first'",)),
    Case("serve-gpus-with-inline-executor", ("serve", "--executor", "inline", "--gpus", "0"), "--gpus",
         also=("--executor local",)),
    Case("serve-broken-policy-file", ("serve", "--executor", "inline"), "zz-broken.yaml",
         env={"FORGETD_POLICIES_DIR": "{in}/policies"}, prepare=_policies_with_a_broken_file, also=("invalid YAML",)),
    Case("serve-policy-names-a-missing-recipe", ("serve", "--executor", "inline"), "recipes.causal_lm",
         env={"FORGETD_ADAPTERS_DIR": "{in}/adapters"}, prepare=_adapters_without_npo_lora,
         also=("names recipe 'npo-lora'", "no adapter recipe")),
    Case("serve-ray-address-malformed", ("serve", "--executor", "ray", "--ray-address", "head-node"), "--ray-address",
         also=("host:port",)),
    Case("serve-ray-address-nothing-listening",
         ("serve", "--executor", "ray", "--ray-address", "127.0.0.1:1", "--ray-wait", "0"), "--ray-address",
         also=("no Ray cluster answers at 127.0.0.1:1",)),
    Case("env-home-is-a-file", ("init",), "FORGETD_HOME", env={"FORGETD_HOME": "{in}/f.txt"}, files={"f.txt": "x"},
         also=("is a file",)),
    Case("env-worker-start-unknown", ("serve", "--executor", "local"), "FORGETD_WORKER_START",
         env={"FORGETD_WORKER_START": "fork"}, also=("forkserver or spawn", "'fork'")),
]


def _materialise(case: Case, indir: Path, home: Path) -> list[str]:
    indir.mkdir(parents=True, exist_ok=True)
    for name, content in case.files.items():
        path = indir / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    if case.prepare is not None:
        case.prepare(indir, home)
    return [a.replace("{in}", str(indir)).replace("{home}", str(home)) for a in case.args]


def assert_rejected(result, case: Case) -> str:
    out = result.stdout + result.stderr
    assert "Traceback" not in out, out
    assert result.returncode in (1, 2), f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected one error line, got {result.stderr!r}"
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in (case.field, *case.also):
        assert needle in line, f"{needle!r} not named in {line!r}"
    return line


def test_corpus_is_large_and_ids_unique():
    assert len(CASES) >= 35
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_input_is_rejected_without_writing(case: Case, model, cli_env, db_url, home, tmp_path):
    args = _materialise(case, tmp_path / "in", home)
    before = row_counts(db_url)
    env = {k: v.replace("{in}", str(tmp_path / "in")) for k, v in case.env.items()}
    result = run_cli(args, {**cli_env, **env})
    assert_rejected(result, case)
    assert row_counts(db_url) == before


def test_sql_looking_subject_is_stored_only_as_a_hash(model, cli_env, db_url):
    """A subject is data, not a query fragment: it is accepted, hashed, and never stored in the clear."""
    subject = "Robert'); DROP TABLE requests; -- xkcd327"
    result = run_cli(["request", "submit", "--model", model, "--policy", "gdpr-erasure", "--subject", subject,
                      "--json"], cli_env)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert subject not in result.stdout + result.stderr
    listed = run_cli(["request", "list", "--json"], cli_env)
    assert listed.returncode == 0, listed.stderr
    assert [r["id"] for r in json.loads(listed.stdout)] == [record["id"]]
    assert row_counts(db_url)["requests"] == 1  # the table still exists
    found = run_cli(["audit", "log", "--subject", subject, "--json"], cli_env)
    assert found.returncode == 0, found.stderr
    assert {e["resource_id"] for e in json.loads(found.stdout)} == {record["id"]}
    database = Path(db_url.removeprefix("sqlite:///"))
    blobs = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    for needle in (subject, subject.casefold(), "xkcd327", "DROP TABLE requests"):
        assert needle.encode() not in blobs


@pytest.mark.postgres
def test_malformed_import_writes_nothing_on_postgres(model, cli_env, db_url, tmp_path):
    assert db_url.startswith("postgresql")
    tickets = tmp_path / "t.jsonl"
    tickets.write_text(jsonl(GOOD, {**GOOD, "subject": "y@example.org", "forget": {"files": ["../../etc/passwd"]}},
                             {**GOOD, "policy": SQL}))
    before = row_counts(db_url)
    assert before["models"] == 1 and before["requests"] == 0
    case = Case("pg", (), "FILE", also=("invalid lines 2, 3", "forget.files[0]", "policy"))
    assert_rejected(run_cli(["request", "import", str(tickets)], cli_env), case)
    assert_rejected(run_cli(list(submit("--idempotency-key", SQL)), cli_env), Case("pg", (), "idempotency_key"))
    assert row_counts(db_url) == before


def test_a_metrics_port_in_use_is_refused_before_the_daemon_starts(model, cli_env, db_url):
    import socket

    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        before = row_counts(db_url)
        result = run_cli(["serve", "--executor", "inline", "--metrics-port", str(port)], cli_env)
    line = assert_rejected(result, Case("metrics-port-in-use", (), "--metrics-port", also=(str(port), "in use")))
    assert "pick another port" in line
    assert row_counts(db_url) == before  # no service.* audit event: it never started


def _with_file_size_limit(kib: int):
    import resource

    def limit() -> None:
        # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG, as a full disk fails with ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (kib * 1024, kib * 1024))

    return limit


def test_a_write_the_machine_refuses_is_named_and_leaves_nothing_behind(model, cli_env, db_url, tmp_path):
    """A full disk (here: a file-size limit, which fails writes the same way without filling this machine's
    disk) is the operator's to fix: exit 74 and a line that says what to do, not "internal error", and no
    partial write: the database unchanged, an earlier export of the same name intact, no temporary file."""
    import subprocess
    import sys

    def cli(args: list[str], kib: int):
        return subprocess.run([sys.executable, "-m", "forgetd", *args], env=cli_env, capture_output=True, text=True,
                              timeout=120, preexec_fn=_with_file_size_limit(kib))

    tickets = tmp_path / "tickets.jsonl"
    tickets.write_text(jsonl(*({**GOOD, "subject": f"s{i}@example.org"} for i in range(150))))
    before = row_counts(db_url)
    # the import's one transaction outgrows the limit in SQLite's write-ahead log: rolled back whole
    refused = cli(["request", "import", str(tickets)], kib=36)
    assert refused.returncode == 74, refused.stderr
    assert refused.stderr.startswith("error: FORGETD_DATABASE_URL: ") and len(refused.stderr.splitlines()) == 1
    assert "SQLITE_IOERR" in refused.stderr and "ulimit -f" in refused.stderr and "Traceback" not in refused.stderr
    assert row_counts(db_url) == before

    assert run_cli(["request", "import", str(tickets)], cli_env).returncode == 0
    out = tmp_path / "exports" / "trail.jsonl"
    out.parent.mkdir()
    out.write_text("the export of last week\n")
    refused = cli(["audit", "export", "--out", str(out)], kib=40)
    assert refused.returncode == 74, refused.stderr
    assert refused.stderr.startswith("error: File too large") and "ulimit -f" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1
    assert out.read_text() == "the export of last week\n" and [p.name for p in out.parent.iterdir()] == ["trail.jsonl"]
