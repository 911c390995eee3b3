"""Request states and the transition table (DESIGN 5).

The table is data: `TRANSITIONS[from][to]` names the action and the guards that must hold. Every move
goes through `move()`, which writes the transition row and its audit event in the caller's
transaction, so either both exist or neither does.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from forgetd.errors import DomainError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from forgetd.db.models import Request, RequestTransition
    from forgetd.policies import Policy


class RequestStatus(str, enum.Enum):
    received = "received"
    identity_pending = "identity_pending"
    pending_review = "pending_review"
    approved = "approved"
    scheduled = "scheduled"
    training = "training"
    evaluating = "evaluating"
    awaiting_compose = "awaiting_compose"
    composing = "composing"
    verifying = "verifying"
    completed = "completed"
    on_hold = "on_hold"
    failed = "failed"
    denied = "denied"
    duplicate = "duplicate"
    canceled = "canceled"


S = RequestStatus

TERMINAL = frozenset({S.completed, S.denied, S.duplicate, S.canceled})
# Requests in these states still count for duplicate detection.
ACTIVE = frozenset(set(S) - TERMINAL)
# States an operator may put on hold; `release` returns to exactly the state it came from.
HOLDABLE = frozenset({S.received, S.identity_pending, S.pending_review, S.approved, S.scheduled, S.awaiting_compose})
# A failed request is retried from a named step; the step names the state it re-enters.
RETRY_STEPS = {"train": S.scheduled, "evaluate": S.evaluating, "compose": S.awaiting_compose}
# The pipeline step a failure in each state is attributed to.
FAILABLE_STEP = {
    S.scheduled: "train",
    S.training: "train",
    S.evaluating: "evaluate",
    S.awaiting_compose: "compose",
    S.composing: "compose",
    S.verifying: "verify",
}


@dataclass(frozen=True)
class Move:
    action: str
    guards: tuple[str, ...] = ()


@dataclass(frozen=True)
class MoveContext:
    request: "Request"
    to: RequestStatus
    actor: str
    policy: "Policy | None"


def _four_eyes(ctx: MoveContext) -> str | None:
    if ctx.policy is not None and ctx.policy.approval.four_eyes and ctx.actor == ctx.request.submitted_by:
        return f"four-eyes approval: the approver must differ from the submitter ({ctx.actor})"
    return None


def _approval_required(ctx: MoveContext) -> str | None:
    if ctx.policy is not None and not ctx.policy.approval.required:
        return "policy does not require approval: the request is approved automatically"
    return None


def _approval_not_required(ctx: MoveContext) -> str | None:
    if ctx.policy is None or ctx.policy.approval.required:
        return "the policy requires an operator's approval"
    return None


def _identity_required(ctx: MoveContext) -> str | None:
    if ctx.policy is not None and not ctx.policy.identity_required:
        return "the policy does not require identity verification"
    return None


def _identity_not_required(ctx: MoveContext) -> str | None:
    if ctx.policy is None or ctx.policy.identity_required:
        return "the policy requires identity verification first"
    return None


def _returns_to_prior(ctx: MoveContext) -> str | None:
    if ctx.request.held_from is not ctx.to:
        prior = ctx.request.held_from.value if ctx.request.held_from else "unknown"
        return f"a held request returns to the state it was held in ({prior})"
    return None


GUARDS: dict[str, Callable[[MoveContext], str | None]] = {
    "four_eyes": _four_eyes,
    "approval_required": _approval_required,
    "approval_not_required": _approval_not_required,
    "identity_required": _identity_required,
    "identity_not_required": _identity_not_required,
    "returns_to_prior": _returns_to_prior,
}

_deny = Move("deny")
_cancel = Move("cancel")
_hold = Move("hold")
_fail = Move("fail")
_retry = Move("retry")

TRANSITIONS: dict[RequestStatus, dict[RequestStatus, Move]] = {
    S.received: {
        S.identity_pending: Move("intake", ("identity_required",)),
        S.pending_review: Move("intake", ("identity_not_required", "approval_required")),
        S.approved: Move("intake", ("identity_not_required", "approval_not_required")),
        S.duplicate: Move("intake"),
        S.denied: _deny,
        S.canceled: _cancel,
        S.on_hold: _hold,
    },
    S.identity_pending: {
        S.pending_review: Move("verify_identity", ("approval_required",)),
        S.approved: Move("verify_identity", ("approval_not_required",)),
        S.denied: _deny,
        S.canceled: _cancel,
        S.on_hold: _hold,
    },
    S.pending_review: {
        S.approved: Move("approve", ("approval_required", "four_eyes")),
        S.denied: _deny,
        S.canceled: _cancel,
        S.on_hold: _hold,
    },
    S.approved: {S.scheduled: Move("schedule"), S.canceled: _cancel, S.on_hold: _hold},
    S.scheduled: {S.training: Move("start_training"), S.failed: _fail, S.canceled: _cancel, S.on_hold: _hold},
    S.training: {S.evaluating: Move("trained"), S.failed: _fail, S.canceled: _cancel},
    S.evaluating: {S.awaiting_compose: Move("evaluated"), S.failed: _fail, S.canceled: _cancel},
    S.awaiting_compose: {S.composing: Move("compose"), S.failed: _fail, S.canceled: _cancel, S.on_hold: _hold},
    # Once a checkpoint carrying the request is being built or verified, only the pipeline decides.
    S.composing: {S.verifying: Move("composed"), S.failed: _fail},
    S.verifying: {S.completed: Move("complete"), S.failed: _fail},
    S.on_hold: {
        **{state: Move("release", ("returns_to_prior",)) for state in HOLDABLE},
        S.denied: _deny,
        S.canceled: _cancel,
    },
    S.failed: {**{state: _retry for state in RETRY_STEPS.values()}, S.canceled: _cancel},
    S.completed: {},
    S.denied: {},
    S.duplicate: {},
    S.canceled: {},
}

# Waiting on the data subject stops the legal clock (DESIGN 6).
CLOCK_PAUSING = frozenset({S.identity_pending})


def allowed_moves(current: RequestStatus) -> list[str]:
    return [to.value for to in TRANSITIONS[current]]


def check_move(request: "Request", to: RequestStatus, *, actor: str, policy: "Policy | None") -> Move:
    """Return the move or raise DomainError naming the current state and what is allowed."""
    current = request.status
    move = TRANSITIONS[current].get(to)
    if move is None:
        allowed = ", ".join(allowed_moves(current)) or "none (terminal state)"
        raise DomainError(
            f"request {request.public_id} is {current.value}; cannot move to {to.value}; allowed: {allowed}",
            field="status",
        )
    ctx = MoveContext(request=request, to=to, actor=actor, policy=policy)
    for name in move.guards:
        problem = GUARDS[name](ctx)
        if problem:
            raise DomainError(f"request {request.public_id}: {problem}", field="status")
    return move


def move(
    session: "Session",
    request: "Request",
    to: RequestStatus,
    *,
    actor: str,
    now: datetime,
    policy: "Policy | None",
    reason_code: str,
    reason: str | None = None,
    pause_clock: bool = False,
    failed_step: str | None = None,
) -> "RequestTransition":
    """Apply one legal move: state, clock, transition row and audit event, in the caller's transaction."""
    from forgetd import audit, deadlines
    from forgetd.db.models import RequestTransition

    move_ = check_move(request, to, actor=actor, policy=policy)
    previous = request.status

    if request.clock_paused_since is not None:
        paused = int((now - request.clock_paused_since).total_seconds())
        request.clock_paused_total += max(paused, 0)
        request.clock_paused_since = None
        request.due_at = deadlines.due_at(request.received_at, request.clock_paused_total)
    if to in CLOCK_PAUSING or (to is S.on_hold and (pause_clock or previous in CLOCK_PAUSING)):
        request.clock_paused_since = now

    request.held_from = previous if to is S.on_hold else None
    request.failed_step = (failed_step or FAILABLE_STEP.get(previous)) if to is S.failed else None
    if to in TERMINAL:
        request.closed_at = now
    request.status = to
    request.status_reason = reason
    request.updated_at = now

    row = RequestTransition(
        request_id=request.id,
        from_status=previous,
        to_status=to,
        reason_code=reason_code,
        reason=reason,
        actor=actor,
        at=now,
    )
    session.add(row)
    session.flush()
    audit.append(
        session,
        actor=actor,
        action=f"request.{to.value}",
        resource_type="request",
        resource_id=request.public_id,
        payload={
            "from": previous.value,
            "to": to.value,
            "move": move_.action,
            "reason_code": reason_code,
            "transition_id": row.id,
            **({"failed_step": request.failed_step} if request.failed_step else {}),
        },
        at=now,
    )
    return row


def record_receipt(session: "Session", request: "Request", *, actor: str, now: datetime) -> "RequestTransition":
    """The first row of every request's history: it entered `received`."""
    from forgetd import audit
    from forgetd.db.models import RequestTransition

    row = RequestTransition(
        request_id=request.id,
        from_status=None,
        to_status=S.received,
        reason_code="submitted",
        actor=actor,
        at=now,
    )
    session.add(row)
    session.flush()
    audit.append(
        session,
        actor=actor,
        action="request.received",
        resource_type="request",
        resource_id=request.public_id,
        payload={
            "to": S.received.value,
            "policy": request.policy,
            "model": request.model.name,
            "kind": request.kind.value,
            "payload_bytes": request.payload_bytes,
            "transition_id": row.id,
        },
        at=now,
    )
    return row
