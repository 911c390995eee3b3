"""The job queue's contract (DESIGN 8) on SQLite and PostgreSQL: dedupe, claim order, merge locks,
leases and fencing, retries with backoff, dead letters, the reaper, and append-only events."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from forgetd import api
from forgetd.db.models import Job, JobEvent
from forgetd.jobs import queue
from forgetd.jobs.queue import Backoff, LeaseLost

BACKOFF = Backoff(base_seconds=10, cap_seconds=100)


def _enqueue(ctx, kind="selftest", **kw):
    with ctx.session() as s:
        job, created = queue.enqueue(s, kind, now=api.utcnow(), **kw)
        return job.id, created


def _claim(ctx, owner="w1", *, now=None, lease=30.0, kinds=None):
    with ctx.session() as s:
        return queue.claim(s, owner, now=now or api.utcnow(), lease_seconds=lease, executor="inline", kinds=kinds)


def _job(ctx, job_id):
    with ctx.session() as s:
        return s.get(Job, job_id)


def _events(ctx, job_id):
    with ctx.session() as s:
        return [e.event for e in s.execute(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)).scalars()]


def test_dedupe_key_is_unique_among_live_jobs_only(ctx):
    first, created = _enqueue(ctx, dedupe_key="k")
    again, created_again = _enqueue(ctx, dedupe_key="k")
    assert created and not created_again and again == first
    claim = _claim(ctx)
    with ctx.session() as s:
        assert queue.complete(s, claim, now=api.utcnow(), result={"ok": 1})
    third, created_third = _enqueue(ctx, dedupe_key="k")
    assert created_third and third != first  # finished jobs do not block new work with the same key


def test_the_database_refuses_two_live_jobs_with_one_dedupe_key(ctx):
    _enqueue(ctx, dedupe_key="k")
    with pytest.raises(IntegrityError):
        with ctx.session() as s:
            s.add(Job(kind="selftest", request_ids=[], args={}, status="queued", priority=1, run_after=api.utcnow(),
                      attempts=0, max_attempts=1, dedupe_key="k", created_at=api.utcnow()))


def test_claim_order_priority_then_run_after_and_future_jobs_wait(ctx):
    now = api.utcnow()
    low, _ = _enqueue(ctx, priority=100)
    high, _ = _enqueue(ctx, priority=10)
    later, _ = _enqueue(ctx, priority=1, run_after=now + timedelta(hours=1))
    assert _claim(ctx, "a").job_id == high
    assert _claim(ctx, "b").job_id == low
    assert _claim(ctx, "c") is None
    assert _claim(ctx, "d", now=now + timedelta(hours=2)).job_id == later


def test_a_claim_increments_the_attempt_and_records_the_event(ctx):
    job_id, _ = _enqueue(ctx)
    claim = _claim(ctx, "w1")
    assert (claim.job_id, claim.attempt, claim.owner) == (job_id, 1, "w1")
    job = _job(ctx, job_id)
    assert job.status == "running" and job.lease_owner == "w1" and job.attempts == 1
    assert _events(ctx, job_id) == ["enqueued", "claimed"]


def test_one_running_job_per_lock_key(ctx):
    a, _ = _enqueue(ctx, lock_key="merge:1", priority=1)
    b, _ = _enqueue(ctx, lock_key="merge:1", priority=2)
    c, _ = _enqueue(ctx, lock_key="merge:2", priority=3)
    assert _claim(ctx, "w1").job_id == a
    assert _claim(ctx, "w2").job_id == c  # b waits for a's lock
    assert _claim(ctx, "w3") is None
    with ctx.session() as s:
        s.get(Job, a)
        queue.complete(s, queue.Claim(a, 1, "w1", "selftest", None, (), {}, 30.0), now=api.utcnow())
    assert _claim(ctx, "w4").job_id == b


def test_the_database_refuses_two_running_jobs_with_one_lock_key(ctx):
    _enqueue(ctx, lock_key="merge:1")
    _claim(ctx)
    with pytest.raises(IntegrityError):
        with ctx.session() as s:
            s.add(Job(kind="selftest", request_ids=[], args={}, status="running", priority=1, run_after=api.utcnow(),
                      attempts=1, max_attempts=1, lock_key="merge:1", created_at=api.utcnow()))


def test_fencing_a_taken_over_lease_publishes_nothing(ctx):
    job_id, _ = _enqueue(ctx)
    now = api.utcnow()
    stale = _claim(ctx, "old", now=now, lease=5)
    with ctx.session() as s:  # the old worker goes quiet; its lease expires and is reaped
        assert queue.reap(s, now=now + timedelta(seconds=6), backoff=Backoff(0, 0)) == [(job_id, "queued")]
    fresh = _claim(ctx, "new", now=now + timedelta(seconds=7))
    assert fresh.attempt == stale.attempt + 1
    with ctx.session() as s:
        assert not queue.heartbeat(s, stale, now=api.utcnow())
        with pytest.raises(LeaseLost):
            queue.fence(s, stale, now=api.utcnow())
        assert not queue.complete(s, stale, now=api.utcnow(), result={"from": "old"})
        assert queue.fail(s, stale, now=api.utcnow(), error="x", retryable=True, backoff=BACKOFF) is None
        assert not queue.release(s, stale, now=api.utcnow(), reason="shutdown")
    with ctx.session() as s:
        assert queue.complete(s, fresh, now=api.utcnow(), result={"from": "new"})
    job = _job(ctx, job_id)
    assert job.status == "succeeded" and job.result == {"from": "new"}


def test_failures_back_off_exponentially_then_dead_letter(ctx):
    job_id, _ = _enqueue(ctx, max_attempts=3)
    now = api.utcnow()
    delays = []
    for attempt in (1, 2, 3):
        claim = _claim(ctx, f"w{attempt}", now=now)
        assert claim.attempt == attempt
        with ctx.session() as s:
            status = queue.fail(s, claim, now=now, error="RuntimeError", retryable=True, backoff=BACKOFF)
        job = _job(ctx, job_id)
        if attempt < 3:
            assert status == "queued"
            delays.append((job.run_after - now).total_seconds())
            now = job.run_after
        else:
            assert status == "dead" and job.finished_at is not None
    assert delays == [10.0, 20.0]
    assert _events(ctx, job_id)[-2:] == ["attempt_failed", "dead"]


def test_a_non_retryable_failure_fails_at_once(ctx):
    job_id, _ = _enqueue(ctx, max_attempts=5)
    claim = _claim(ctx)
    with ctx.session() as s:
        assert queue.fail(s, claim, now=api.utcnow(), error="bad recipe", retryable=False, backoff=BACKOFF) == "failed"
    assert _job(ctx, job_id).attempts == 1


def test_release_does_not_spend_an_attempt(ctx):
    job_id, _ = _enqueue(ctx, max_attempts=2)
    claim = _claim(ctx)
    with ctx.session() as s:
        assert queue.release(s, claim, now=api.utcnow(), reason="shutdown")
    job = _job(ctx, job_id)
    assert job.status == "queued" and job.lease_owner is None and job.max_attempts == 3


def test_reaper_dead_letters_after_max_attempts(ctx):
    job_id, _ = _enqueue(ctx, max_attempts=1)
    now = api.utcnow()
    _claim(ctx, now=now, lease=1)
    with ctx.session() as s:
        assert queue.reap(s, now=now + timedelta(seconds=0.5), backoff=BACKOFF) == []
        assert queue.reap(s, now=now + timedelta(seconds=2), backoff=BACKOFF) == [(job_id, "dead")]
    assert "lease_expired" in _events(ctx, job_id)


def test_cancel_and_retry_through_the_api(ctx):
    job_id, _ = _enqueue(ctx, dedupe_key="x")
    claim = _claim(ctx)
    assert api.job_cancel(ctx, job_id)["status"] == "canceled"
    with ctx.session() as s:  # the canceled worker can publish nothing
        assert not queue.complete(s, claim, now=api.utcnow())
    retried = api.job_retry(ctx, job_id)
    assert retried["status"] == "queued" and retried["max_attempts"] == 1 + queue.RETRY_BUDGET
    shown = api.job_show(ctx, job_id)
    assert [e["event"] for e in shown["events"]] == ["enqueued", "claimed", "canceled", "retried"]


def test_job_events_are_append_only(ctx):
    job_id, _ = _enqueue(ctx)
    for statement in ("UPDATE job_events SET event = 'x'", "DELETE FROM job_events"):
        with pytest.raises(DBAPIError):
            with ctx.session() as s:
                s.execute(text(statement))
    assert _events(ctx, job_id) == ["enqueued"]


def test_concurrent_claimers_never_share_a_job(ctx):
    n = 40
    for _ in range(n):
        _enqueue(ctx)
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            try:
                claim = _claim(ctx, name)
            except IntegrityError:
                continue
            if claim is None:
                return
            with lock:
                claimed.append(claim.job_id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == n and len(set(claimed)) == n
