"""Explanation records on SQLite and PostgreSQL: issued encrypted under the served checkpoint, re-checked by
the `revalidate` job every alias move enqueues, erased with their subject's erasure request, reported per
transition and reissued — on the tiny demo credit model, through the real pipeline (`api.tick`)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
from sqlalchemy import func, select, update

pytest.importorskip("peft")

from forgetd import api  # noqa: E402
from forgetd.db.models import AuditEvent, Explanation, ExplanationCheck, Job  # noqa: E402
from forgetd.errors import DomainError, InputError  # noqa: E402
from tests.conftest import REPO  # noqa: E402

POLICY = """
name: p
applies_to: {kind: data}
deadline: {rule: calendar-month, extension_max: P2M}
identity_required: false
approval: {required: false}
recipes: {tabular_classifier: graddiff-lora-tabular}
verification: {retain_acc_min_ratio: 0.9}
compose: {cadence: "*/15 * * * *", max_batch: 16}
retention: {shred_payload_after: P30D}
"""


@pytest.fixture(scope="module")
def credit(tmp_path_factory):
    """The tiny credit model (trained once per module) and, for each role, a person the model rejects."""
    import numpy as np
    import torch

    from forgetd.demo.credit import CreditConfig, ensure_credit_model, load_credit_dataset
    from forgetd.families import tabular_classifier as tc

    torch.set_num_threads(1)
    demo = ensure_credit_model(tmp_path_factory.mktemp("credit"), CreditConfig(n_subjects=60, hidden_sizes=(16,),
                                                                               steps=300))
    dataset = load_credit_dataset(demo)
    model = tc.load_model(demo.model_dir)
    names = model.tabular_config.feature_names

    def rejected_row(ids):
        for subject in ids:
            rows = np.asarray(dataset.records[subject].rows, dtype=np.float32)
            with torch.no_grad():
                decided = model(torch.as_tensor(rows)).argmax(-1).numpy()
            for row, d in zip(rows, decided):
                if d == 0:
                    return subject, {n: float(v) for n, v in zip(names, row.tolist())}
        raise AssertionError("no rejected row")

    erased = rejected_row(dataset.retain)  # a training subject who will ask for erasure
    others = [s for s in dataset.reference]
    people = []
    for _ in range(3):
        subject, x = rejected_row(others)
        others.remove(subject)
        people.append((subject, x))
    return demo, erased, people


def _context(settings, tmp_path):
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(POLICY)
    adapters = tmp_path / "adapters"
    shutil.copytree(REPO / "adapters", adapters)
    return api.open_context(replace(settings, policies_dir=policies, adapters_dir=adapters))


def _input(tmp_path, name, values) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(values))
    return str(path)


def _count(ctx, table) -> int:
    with ctx.session() as s:
        return s.execute(select(func.count()).select_from(table)).scalar_one()


def _database_bytes(url: str) -> bytes:
    from sqlalchemy.engine import make_url

    main = make_url(url).database
    from pathlib import Path

    main = Path(main)
    return b"".join(p.read_bytes() for p in main.parent.glob(main.name + "*") if p.is_file())


def test_records_are_issued_rechecked_erased_reported_and_reissued(settings, tmp_path, credit):
    import torch

    torch.set_num_threads(1)
    demo, (erased_subject, erased_x), people = credit
    ctx = _context(settings, tmp_path)
    api.model_register(ctx, "credit", "tabular_classifier", str(demo.model_dir), dataset=str(demo.dataset_path))
    erasing = f"{erased_subject}@example.org"

    # Issue: the erasing subject's plain recourse, and three other people's records of every kind.
    mine = api.explain_issue(ctx, "credit", erasing, _input(tmp_path, "mine", erased_x))
    plain = api.explain_issue(ctx, "credit", f"{people[0][0]}@example.org", _input(tmp_path, "p0", people[0][1]))
    robust = api.explain_issue(ctx, "credit", f"{people[1][0]}@example.org", _input(tmp_path, "p1", people[1][1]),
                               robust_k=3, delta=0.2)
    attrib = api.explain_issue(ctx, "credit", f"{people[2][0]}@example.org", _input(tmp_path, "p2", people[2][1]),
                               "attribution")
    for record in (mine, plain, robust, attrib):
        assert record["status"] == "VALID" and record["issued_under"] == 0 and record["id"].startswith("ex_")
    assert robust["robust"] and (robust["robust_k"], robust["delta"]) == (3, 0.2)
    shown = api.explain_show(ctx, robust["id"], include_record=True)
    assert shown["robustness"]["k"] == 3 and shown["record"]["x"] == pytest.approx(list(people[1][1].values()))
    assert shown["record"]["valid"] and shown["settings"]["method"] == "deletion-robust"
    assert api.explain_show(ctx, attrib["id"])["noise_floor"]["spearman_min"] is not None
    assert "record" not in api.explain_show(ctx, plain["id"])

    # Encrypted at rest: no feature value, no record field name, no identity in the database bytes.
    if ctx.engine.dialect.name == "sqlite":
        blob = _database_bytes(settings.database_url)
        for subject, x in [(erased_subject, erased_x), *people]:
            for name in ("income", "debt", "savings", "loan_amount"):
                assert json.dumps(x[name]).encode() not in blob, name
            assert f"{subject}@example.org".encode() not in blob
        assert b'"x_cf"' not in blob and b'"attributions"' not in blob

    with ctx.session() as s:
        mine_ct = s.execute(select(Explanation.payload_ct).where(Explanation.public_id == mine["id"])).scalar_one()

    # The subject's erasure request runs through the pipeline; the alias move enqueues `revalidate`.
    request = api.request_submit(ctx, {"model": "credit", "policy": "p", "subject": erasing,
                                       "forget": {"corpus_ids": [erased_subject]}})["id"]
    report = api.tick(ctx)
    assert report["completed"] == [request], report
    revalidations = [j for j in report["jobs"] if j["kind"] == "revalidate"]
    assert revalidations and all(j["outcome"] == "succeeded" for j in revalidations)
    with ctx.session() as s:
        jobs = s.execute(select(Job).where(Job.kind == "revalidate").order_by(Job.id)).scalars().all()
        assert [j.args["checkpoint_id"] for j in jobs] == [1, 2]  # registration (v0), then the move to v1
        assert jobs[-1].result["checked"] == 3 and jobs[0].result["checked"] == 0

    # The erased subject's record: ERASED, key and ciphertext gone, nothing to show.
    gone = api.explain_show(ctx, mine["id"])
    assert gone["status"] == "ERASED" and gone["erased_at"] and gone["checks"] == []
    with pytest.raises(DomainError, match="erased"):
        api.explain_show(ctx, mine["id"], include_record=True)
    with ctx.session() as s:
        row = s.execute(select(Explanation).where(Explanation.public_id == mine["id"])).scalar_one()
        assert row.wrapped_dek is None and row.payload_ct is None
    erased_events = [e for e in api.audit_log(ctx, request_id=request) if e["action"] == "explanation.erased"]
    assert len(erased_events) == 1
    if ctx.engine.dialect.name == "sqlite":  # no copy left in the file, its free pages or the WAL
        assert len(mine_ct) > 64 and mine_ct[16:80] not in _database_bytes(settings.database_url)

    # Everyone else's record: one check on v1, status taken from it.
    live = {}
    for record in (plain, robust, attrib):
        shown = api.explain_show(ctx, record["id"])
        assert [c["version"] for c in shown["checks"]] == [1]
        assert shown["status"] == shown["checks"][0]["status"] in ("VALID", "AT_RISK", "INVALIDATED")
        assert shown["last_checked_on"] == 1
        live[record["id"]] = shown["status"]
    attrib_check = api.explain_show(ctx, attrib["id"])["checks"][0]
    assert attrib_check["spearman"] is not None and attrib_check["topk"] is not None
    assert api.explain_show(ctx, plain["id"])["checks"][0]["margin"] is not None

    # A retried job changes nothing (exactly-once effect).
    with ctx.session() as s:
        model_id = s.execute(select(Explanation.model_id).limit(1)).scalar_one()
    assert api.revalidate(ctx, model_id, 2)["checked"] == 0
    assert _count(ctx, ExplanationCheck) == 3

    # The transition report: counts among the checks made on v1 and the invalidation rate.
    rep = api.explain_report(ctx, "credit", 1)
    assert rep["from_version"] == 0 and rep["checked"] == 3 and sum(rep["counts"].values()) == 3
    invalidated = sum(s == "INVALIDATED" for s in live.values())
    assert rep["invalidation_rate"] == pytest.approx(invalidated / 3)
    assert api.explain_report(ctx, "credit", 0)["checked"] == 0
    assert {r["id"] for r in api.explain_list(ctx, status="ERASED")} == {mine["id"]}

    # Reissue under the served checkpoint; the old record points at the new one.
    new = api.explain_reissue(ctx, plain["id"])
    assert new["status"] == "VALID" and new["issued_under"] == 1
    old = api.explain_show(ctx, plain["id"])
    assert old["status"] == "REISSUED" and old["reissued_as"] == new["id"]
    assert api.explain_show(ctx, new["id"], include_record=True)["record"]["x"] == pytest.approx(
        list(people[0][1].values()))
    with pytest.raises(DomainError, match="already reissued"):
        api.explain_reissue(ctx, plain["id"])
    with pytest.raises(DomainError, match="erased"):
        api.explain_reissue(ctx, mine["id"])
    assert {e["relation"] for e in api.lineage_request(ctx, request)["edges"]} >= {"fulfils"}

    # Check rows are append-only; the audit chain holds.
    with pytest.raises(Exception):
        with ctx.session() as s:
            s.execute(update(ExplanationCheck).values(status="VALID"))
    actions = [e["action"] for e in api.audit_log(ctx)]
    assert actions.count("explanation.issued") == 5 and actions.count("explanation.reissued") == 1
    assert actions.count("explanation.revalidated") == 1 and actions.count("explanation.erased") == 1
    assert api.audit_verify(ctx)["ok"]
    ctx.close()


def test_bad_input_names_the_field_and_writes_nothing(settings, tmp_path, credit):
    demo, _, people = credit
    ctx = _context(settings, tmp_path)
    api.model_register(ctx, "credit", "tabular_classifier", str(demo.model_dir), dataset=str(demo.dataset_path))
    good = people[0][1]
    before = (_count(ctx, Explanation), _count(ctx, AuditEvent))
    cases = [
        (dict(model="nope", input_path=_input(tmp_path, "ok", good)), "--model"),
        (dict(input_path=str(tmp_path / "missing.json")), "--input"),
        (dict(input_path=_input(tmp_path, "list", [1, 2])), "--input"),
        (dict(input_path=_input(tmp_path, "short", {k: v for k, v in good.items() if k != "income"})), "input.income"),
        (dict(input_path=_input(tmp_path, "old", {**good, "age": 130})), "input.age"),
        (dict(input_path=_input(tmp_path, "frac", {**good, "num_accounts": 2.5})), "input.num_accounts"),
        (dict(input_path=_input(tmp_path, "extra", {**good, "shoe_size": 44})), "input.shoe_size"),
        (dict(input_path=_input(tmp_path, "ok2", good), kind="attribution", robust_k=3), "--robust-k"),
        (dict(input_path=_input(tmp_path, "ok3", good), robust_k=3), "--delta"),
        (dict(input_path=_input(tmp_path, "ok4", good), kind="why"), "--kind"),
    ]
    for kwargs, field in cases:
        args = {"model": "credit", "subject": "someone@example.org", "kind": "counterfactual", **kwargs}
        with pytest.raises(InputError) as err:
            api.explain_issue(ctx, args.pop("model"), args.pop("subject"), args.pop("input_path"), **args)
        assert err.value.field == field, (kwargs, str(err.value))
        assert "someone" not in str(err.value)
    with pytest.raises(InputError):
        api.explain_show(ctx, "rq_aaaaaaaaaaaaaaaa")
    with pytest.raises(InputError):
        api.explain_list(ctx, status="GOOD")
    assert (_count(ctx, Explanation), _count(ctx, AuditEvent)) == before
    ctx.close()
