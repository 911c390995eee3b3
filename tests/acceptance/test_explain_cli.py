"""Acceptance: `forgetd explain …` as a subprocess. Bad input exits 2 with one line naming the field, echoes
nothing personal and writes nothing; a good input issues a record that list/show/report can see."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from forgetd import api
from forgetd.db.models import AuditEvent, Explanation
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def credit(tmp_path_factory):
    import numpy as np
    import torch

    from forgetd.demo.credit import CreditConfig, ensure_credit_model, load_credit_dataset
    from forgetd.families import tabular_classifier as tc

    torch.set_num_threads(1)
    demo = ensure_credit_model(tmp_path_factory.mktemp("credit"), CreditConfig(n_subjects=60, hidden_sizes=(16,),
                                                                               steps=300))
    dataset = load_credit_dataset(demo)
    model = tc.load_model(demo.model_dir)
    for subject in dataset.reference:
        rows = np.asarray(dataset.records[subject].rows, dtype=np.float32)
        with torch.no_grad():
            decided = model(torch.as_tensor(rows)).argmax(-1).numpy()
        if (decided == 0).any():
            row = rows[int(np.argmax(decided == 0))].tolist()
            return demo, dict(zip(model.tabular_config.feature_names, row))
    raise AssertionError("no rejected applicant")


def _counts(ctx) -> tuple[int, int]:
    with ctx.session() as s:
        return (s.execute(select(func.count()).select_from(Explanation)).scalar_one(),
                s.execute(select(func.count()).select_from(AuditEvent)).scalar_one())


def test_explain_cli_bad_input_then_issue(ctx, cli_env, tmp_path, credit):
    demo, person = credit
    api.model_register(ctx, "credit", "tabular_classifier", str(demo.model_dir), dataset=str(demo.dataset_path))
    before = _counts(ctx)
    identity = "Wendeline Quorra-Vask 4471"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**person, "age": 131}))
    result = run_cli(["explain", "issue", "--model", "credit", "--subject", identity, "--input", str(bad)], cli_env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: input.age: "), result.stderr
    assert "Traceback" not in result.stderr and "Quorra" not in result.stdout + result.stderr and "131" not in lines[0]
    robust_only = run_cli(["explain", "issue", "--model", "credit", "--subject", identity, "--input", str(bad),
                           "--kind", "attribution", "--robust-k", "3"], cli_env)
    assert robust_only.returncode == 2 and robust_only.stderr.startswith("error: --robust-k: ")
    assert _counts(ctx) == before, "nothing written"

    good = tmp_path / "good.json"
    good.write_text(json.dumps(person))
    issued = run_cli(["explain", "issue", "--model", "credit", "--subject", identity, "--input", str(good), "--json"],
                     cli_env)
    assert issued.returncode == 0, issued.stderr
    record = json.loads(issued.stdout)
    assert record["status"] == "VALID" and "Quorra" not in issued.stdout
    listed = json.loads(run_cli(["explain", "list", "--json"], cli_env).stdout)
    assert [r["id"] for r in listed] == [record["id"]]
    shown = run_cli(["explain", "show", record["id"]], cli_env)
    assert shown.returncode == 0 and "record (personal data" not in shown.stdout
    report = run_cli(["explain", "report", "--model", "credit", "--checkpoint", "0"], cli_env)
    assert report.returncode == 0 and "checked" in report.stdout
    missing = run_cli(["explain", "show", "ex_aaaaaaaaaaaaaaaa"], cli_env)
    assert missing.returncode == 1 and missing.stderr.startswith("error: ID: no explanation")
