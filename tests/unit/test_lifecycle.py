"""The transition table: every allowed move works and writes one transition row plus one audit event;
every other move is refused naming the current state and the allowed moves."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from forgetd import api, lifecycle
from forgetd.db.models import AuditEvent, Request, RequestTransition
from forgetd.errors import DomainError
from forgetd.lifecycle import TRANSITIONS, RequestStatus as S
from forgetd.policies import Approval, get_policy


@pytest.fixture
def db_url(sqlite_url):
    return sqlite_url


def _policy_for(ctx, move: lifecycle.Move, to: S):
    """A policy under which the move's guards hold."""
    base = get_policy(ctx.settings.policies_dir, "gdpr-erasure")
    update = {}
    if "identity_not_required" in move.guards:
        update["identity_required"] = False
    if "approval_not_required" in move.guards:
        update["approval"] = Approval(required=False, four_eyes=False)
    return base.model_copy(update=update)


def _request_in(ctx, model, status: S, *, held_from: S | None = None) -> str:
    record = api.request_submit(ctx, {"model": model, "policy": "gdpr-erasure", "subject": f"s-{status.value}-{held_from}"})
    with ctx.session() as s:
        request = s.execute(select(Request).where(Request.public_id == record["id"])).scalar_one()
        request.status = status
        request.held_from = held_from
    return record["id"]


def _counts(ctx) -> tuple[int, int]:
    with ctx.session() as s:
        return (
            s.execute(select(func.count()).select_from(RequestTransition)).scalar_one(),
            s.execute(select(func.count()).select_from(AuditEvent)).scalar_one(),
        )


# Sorted: some moves are built from sets, and pytest-xdist's workers must collect the same tests in one order.
ALLOWED = sorted(((frm, to, mv) for frm, moves in TRANSITIONS.items() for to, mv in moves.items()),
                 key=lambda m: (m[0].value, m[1].value))
ILLEGAL = sorted(((frm, to) for frm in S for to in S if to not in TRANSITIONS[frm]), key=lambda m: (m[0].value, m[1].value))


def test_table_covers_every_state():
    assert set(TRANSITIONS) == set(S)
    for moves in TRANSITIONS.values():
        for mv in moves.values():
            assert set(mv.guards) <= set(lifecycle.GUARDS)


@pytest.mark.parametrize("frm,to,mv", ALLOWED, ids=[f"{f.value}->{t.value}" for f, t, _ in ALLOWED])
def test_every_allowed_move(ctx, model, frm, to, mv):
    public_id = _request_in(ctx, model, frm, held_from=to if frm is S.on_hold else None)
    before = _counts(ctx)
    now = api.utcnow()
    with ctx.session() as s:
        request = s.execute(select(Request).where(Request.public_id == public_id)).scalar_one()
        lifecycle.move(s, request, to, actor="bob", now=now, policy=_policy_for(ctx, mv, to), reason_code="test")
    with ctx.session() as s:
        request = s.execute(select(Request).where(Request.public_id == public_id)).scalar_one()
        assert request.status is to
        last = s.execute(select(RequestTransition).order_by(RequestTransition.id.desc()).limit(1)).scalar_one()
        assert (last.from_status, last.to_status, last.actor) == (frm, to, "bob")
        event = s.execute(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1)).scalar_one()
        assert event.action == f"request.{to.value}" and event.resource_id == public_id
    after = _counts(ctx)
    assert after == (before[0] + 1, before[1] + 1)


@pytest.mark.parametrize("frm,to", ILLEGAL, ids=[f"{f.value}->{t.value}" for f, t in ILLEGAL])
def test_every_illegal_move_is_refused(ctx, model, frm, to):
    public_id = _request_in(ctx, model, frm)
    before = _counts(ctx)
    with pytest.raises(DomainError) as info:
        with ctx.session() as s:
            request = s.execute(select(Request).where(Request.public_id == public_id)).scalar_one()
            lifecycle.move(s, request, to, actor="bob", now=api.utcnow(), policy=None, reason_code="test")
    message = info.value.message
    assert f"is {frm.value}" in message and f"cannot move to {to.value}" in message
    allowed = lifecycle.allowed_moves(frm)
    for name in allowed:
        assert name in message
    if not allowed:
        assert "terminal" in message
    assert _counts(ctx) == before


def test_four_eyes_refuses_the_submitter(ops, model):
    record = api.request_submit(ops("alice"), {"model": model, "policy": "gdpr-erasure", "subject": "x@example.org"})
    api.request_verify_identity(ops("alice"), record["id"])
    with pytest.raises(DomainError, match="four-eyes"):
        api.request_approve(ops("alice"), record["id"])
    assert api.request_show(ops("alice"), record["id"])["status"] == "pending_review"
    assert api.request_approve(ops("bob"), record["id"])["status"] == "approved"


def test_without_four_eyes_the_submitter_may_approve(ops, model, tmp_path):
    from dataclasses import replace
    from pathlib import Path

    # gdpr-erasure with one approver: the only shipped policy without four-eyes (class-removal) has no recipe
    # for the tabular model, and intake refuses a request its model's family has no recipe for
    policies = tmp_path / "policies"
    policies.mkdir()
    shipped = (Path(__file__).parents[2] / "policies" / "gdpr-erasure.yaml").read_text()
    (policies / "one-approver.yaml").write_text(
        shipped.replace("name: gdpr-erasure", "name: one-approver").replace("identity_required: true",
                                                                          "identity_required: false")
        .replace("four_eyes: true", "four_eyes: false"))
    alice = api.open_context(replace(ops.settings, operator="alice", policies_dir=policies))
    record = api.request_submit(alice, {"model": model, "policy": "one-approver", "subject": "team",
                                        "forget": {"corpus_ids": ["applicant-0003"]}})
    assert record["status"] == "pending_review"
    try:
        assert api.request_approve(alice, record["id"])["status"] == "approved"
    finally:
        alice.close()


def test_release_returns_to_the_prior_state_only(ops, model):
    record = api.request_submit(ops(), {"model": model, "policy": "gdpr-erasure", "subject": "y@example.org"})
    api.request_verify_identity(ops(), record["id"])
    api.request_hold(ops(), record["id"], "need clarification")
    with ctx_session(ops()) as s:
        request = s.execute(select(Request).where(Request.public_id == record["id"])).scalar_one()
        with pytest.raises(DomainError, match="returns to the state it was held in"):
            lifecycle.move(s, request, S.approved, actor="bob", now=api.utcnow(), policy=None, reason_code="x")
    assert api.request_release(ops(), record["id"])["status"] == "pending_review"


def test_failed_records_the_step_and_retry_resumes_there(ctx, model):
    public_id = _request_in(ctx, model, S.evaluating)
    with ctx.session() as s:
        request = s.execute(select(Request).where(Request.public_id == public_id)).scalar_one()
        lifecycle.move(s, request, S.failed, actor="system:test", now=api.utcnow(), policy=None, reason_code="metric")
        assert request.failed_step == "evaluate"
        lifecycle.move(
            s, request, lifecycle.RETRY_STEPS["evaluate"], actor="bob", now=api.utcnow(), policy=None, reason_code="retry"
        )
        assert request.status is S.evaluating and request.failed_step is None


def ctx_session(ctx):
    return ctx.session()
