"""The job queue (DESIGN 8): enqueue, claim, heartbeat, fence, complete, fail, release, reap.

A claim is one conditional UPDATE that takes a lease and increments `attempts`. The attempt number is
the fencing token: every later write of the claimant (heartbeat, the effects of the job, completion)
is conditional on `lease_owner = ? AND attempts = ? AND status = 'running'`, so a worker whose lease
expired and was taken over publishes nothing. Execution is at-least-once; effects are exactly-once
because every output is content-addressed and every publication is fenced.

All functions take a session: the caller owns the transaction (one unit of work each).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from forgetd.db.models import Job, JobEvent

QUEUED, RUNNING, SUCCEEDED, FAILED, DEAD, CANCELED = "queued", "running", "succeeded", "failed", "dead", "canceled"
LIVE = (QUEUED, RUNNING)
FINISHED = (SUCCEEDED, FAILED, DEAD, CANCELED)
RETRY_BUDGET = 3  # attempts an operator's `job retry` grants


class LeaseLost(Exception):
    """The claimant no longer holds the job's lease: it must publish nothing."""


@dataclass(frozen=True)
class Claim:
    job_id: int
    attempt: int
    owner: str
    kind: str
    model_id: int | None
    request_ids: tuple[str, ...]
    args: dict[str, Any]
    lease_seconds: float

    def to_argv(self) -> list[str]:
        return [str(self.job_id), "--owner", self.owner, "--attempt", str(self.attempt),
                "--lease-seconds", str(self.lease_seconds)]


@dataclass(frozen=True)
class Backoff:
    base_seconds: float = 5.0
    cap_seconds: float = 300.0

    def delay(self, attempt: int) -> timedelta:
        return timedelta(seconds=min(self.cap_seconds, self.base_seconds * 2 ** max(0, attempt - 1)))


def event(s, job_id: int, name: str, *, attempt: int, now: datetime, worker: str | None = None,
          detail: dict[str, Any] | None = None) -> None:
    s.add(JobEvent(job_id=job_id, at=now, event=name, attempt=attempt, worker=worker, detail=detail))


# --- enqueue -----------------------------------------------------------------------------------------


def find_live(s, dedupe_key: str) -> Job | None:
    return s.execute(select(Job).where(Job.dedupe_key == dedupe_key, Job.status.in_(LIVE))).scalar_one_or_none()


def enqueue(s, kind: str, *, now: datetime, model_id: int | None = None, request_ids=(), args=None,
            dedupe_key: str | None = None, lock_key: str | None = None, priority: int = 100,
            max_attempts: int = 5, run_after: datetime | None = None) -> tuple[Job, bool]:
    """Add a job unless a live one has the same dedupe key; returns (job, created)."""
    if dedupe_key is not None:
        live = find_live(s, dedupe_key)
        if live is not None:
            return live, False
    job = Job(kind=kind, model_id=model_id, request_ids=list(request_ids), args=dict(args or {}), status=QUEUED,
              priority=priority, run_after=run_after or now, attempts=0, max_attempts=max_attempts,
              dedupe_key=dedupe_key, lock_key=lock_key, created_at=now)
    try:
        with s.begin_nested():  # PostgreSQL: a concurrent enqueue of the same key loses on the unique index
            s.add(job)
            s.flush()
    except IntegrityError:
        live = find_live(s, dedupe_key) if dedupe_key else None
        if live is None:
            raise
        return live, False
    event(s, job.id, "enqueued", attempt=0, now=now, detail={"kind": kind, "dedupe_key": dedupe_key})
    return job, True


# --- claim -------------------------------------------------------------------------------------------


def _runnable(now: datetime, kinds: tuple[str, ...] | None, model_id: int | None = None):
    other = aliased(Job)
    lock_free = ~exists().where(and_(other.lock_key == Job.lock_key, other.status == RUNNING))
    query = (
        select(Job.id)
        .where(Job.status == QUEUED, Job.run_after <= now, (Job.lock_key.is_(None)) | lock_free)
        .order_by(Job.priority, Job.run_after, Job.id)
        .limit(1)
    )
    if kinds:
        query = query.where(Job.kind.in_(kinds))
    if model_id is not None:
        query = query.where(Job.model_id == model_id)
    return query


def claim(s, owner: str, *, now: datetime, lease_seconds: float, executor: str,
          kinds: tuple[str, ...] | None = None, model_id: int | None = None) -> Claim | None:
    """Take the first runnable job (of one model, with `model_id`). The caller commits; on PostgreSQL a lost
    race on a lock key raises IntegrityError, which the caller treats as 'nothing claimed this time'."""
    pick = _runnable(now, kinds, model_id)
    if s.get_bind().dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    row = s.execute(
        update(Job)
        .where(Job.id == pick.scalar_subquery())
        .values(status=RUNNING, lease_owner=owner, attempts=Job.attempts + 1,
                lease_expires_at=now + timedelta(seconds=lease_seconds), heartbeat_at=now,
                started_at=func.coalesce(Job.started_at, now), executor=executor, executor_ref=None)
        .returning(Job.id, Job.attempts, Job.kind, Job.model_id, Job.request_ids, Job.args)
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        return None
    event(s, row.id, "claimed", attempt=row.attempts, now=now, worker=owner, detail={"executor": executor})
    return Claim(job_id=row.id, attempt=row.attempts, owner=owner, kind=row.kind, model_id=row.model_id,
                 request_ids=tuple(row.request_ids or ()), args=dict(row.args or {}), lease_seconds=lease_seconds)


def _fenced(claim: Claim):
    return and_(Job.id == claim.job_id, Job.lease_owner == claim.owner, Job.attempts == claim.attempt,
                Job.status == RUNNING)


def fence(s, claim: Claim, *, now: datetime) -> None:
    """Prove the lease is still ours inside the caller's transaction (and extend it), or raise LeaseLost.
    The row lock this takes on PostgreSQL (the table lock on SQLite) holds until the caller commits, so a
    takeover cannot slip between this check and the effects published with it."""
    done = s.execute(
        update(Job).where(_fenced(claim))
        .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=claim.lease_seconds))
        .execution_options(synchronize_session=False)
    ).rowcount
    if done != 1:
        raise LeaseLost(f"job {claim.job_id} attempt {claim.attempt}: lease lost")


def heartbeat(s, claim: Claim, *, now: datetime) -> bool:
    try:
        fence(s, claim, now=now)
    except LeaseLost:
        return False
    return True


def set_executor_ref(s, claim: Claim, ref: str) -> bool:
    return s.execute(
        update(Job).where(_fenced(claim)).values(executor_ref=ref).execution_options(synchronize_session=False)
    ).rowcount == 1


# --- finish ------------------------------------------------------------------------------------------


def complete(s, claim: Claim, *, now: datetime, result: dict[str, Any] | None = None,
             log_uri: str | None = None) -> bool:
    """Mark the job succeeded if (and only if) the lease is still ours."""
    done = s.execute(
        update(Job).where(_fenced(claim))
        .values(status=SUCCEEDED, result=result or {}, log_uri=log_uri, finished_at=now, lease_owner=None,
                lease_expires_at=None, last_error=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    if done == 1:
        event(s, claim.job_id, "succeeded", attempt=claim.attempt, now=now, worker=claim.owner,
              detail={"result": result or {}})
    return done == 1


def fail(s, claim: Claim, *, now: datetime, error: str, retryable: bool, backoff: Backoff,
         log_uri: str | None = None) -> str | None:
    """Record a failed attempt: back to the queue after a backoff, or `dead` once attempts are spent
    (`failed` at once when retrying cannot help). Returns the new status, None if the lease was lost."""
    job = s.execute(select(Job).where(_fenced(claim)).with_for_update()).scalar_one_or_none()
    if job is None:
        return None
    return _settle_failure(s, job, now=now, error=error, retryable=retryable, backoff=backoff,
                           worker=claim.owner, log_uri=log_uri)


def _settle_failure(s, job: Job, *, now, error, retryable, backoff, worker, log_uri=None, how="attempt_failed") -> str:
    job.last_error = error[:2000]
    job.lease_owner = job.lease_expires_at = None
    if log_uri:
        job.log_uri = log_uri
    if retryable and job.attempts < job.max_attempts:
        job.status = QUEUED
        job.run_after = now + backoff.delay(job.attempts)
        event(s, job.id, how, attempt=job.attempts, now=now, worker=worker,
              detail={"error": job.last_error, "retry_at": job.run_after.isoformat()})
        return QUEUED
    job.status = DEAD if retryable else FAILED
    job.finished_at = now
    event(s, job.id, how, attempt=job.attempts, now=now, worker=worker, detail={"error": job.last_error})
    event(s, job.id, job.status, attempt=job.attempts, now=now, worker=worker,
          detail={"attempts": job.attempts, "max_attempts": job.max_attempts})
    return job.status


def release(s, claim: Claim, *, now: datetime, reason: str) -> bool:
    """Give a job back without counting the attempt against it (shutdown): queued again at once."""
    done = s.execute(
        update(Job).where(_fenced(claim))
        .values(status=QUEUED, lease_owner=None, lease_expires_at=None, run_after=now,
                max_attempts=Job.max_attempts + 1)
        .execution_options(synchronize_session=False)
    ).rowcount
    if done == 1:
        event(s, claim.job_id, "released", attempt=claim.attempt, now=now, worker=claim.owner, detail={"reason": reason})
    return done == 1


def reap(s, *, now: datetime, backoff: Backoff) -> list[tuple[int, str]]:
    """Jobs whose lease expired (the worker died or hung): retried, or dead after max attempts."""
    expired = s.execute(
        select(Job).where(Job.status == RUNNING, Job.lease_expires_at < now).order_by(Job.id).with_for_update()
    ).scalars().all()
    out = []
    for job in expired:
        worker = job.lease_owner
        status = _settle_failure(s, job, now=now, error=f"lease expired (worker {worker} stopped heartbeating)",
                                 retryable=True, backoff=backoff, worker=worker, how="lease_expired")
        out.append((job.id, status))
    return out


# --- operator actions --------------------------------------------------------------------------------


def cancel(s, job: Job, *, now: datetime, actor: str) -> None:
    """A queued job is canceled at once; a running one loses its lease, so nothing it does is published."""
    attempt = job.attempts
    job.status = CANCELED
    job.lease_owner = job.lease_expires_at = None
    job.finished_at = now
    event(s, job.id, "canceled", attempt=attempt, now=now, worker=actor)


def retry(s, job: Job, *, now: datetime, actor: str) -> None:
    """A dead, failed or canceled job runs again with a fresh attempt budget."""
    job.status = QUEUED
    job.run_after = now
    job.max_attempts = job.attempts + RETRY_BUDGET
    job.finished_at = None
    event(s, job.id, "retried", attempt=job.attempts, now=now, worker=actor)
