"""Running one claimed job, wherever it runs (inline thread, worker subprocess, Ray actor): a fenced
context, a heartbeat thread, and the completion or failure written under the lease."""

from __future__ import annotations

import contextlib
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import Any

from forgetd.api import utcnow
from forgetd.jobs import queue
from forgetd.jobs.kinds import KINDS, Progress, give_up
from forgetd.jobs.queue import Backoff, Claim, LeaseLost

LEASE_LOST = "lease_lost"


class FencedContext:
    """The api Context, except that every transaction first proves the lease is still held (and extends
    it). Pipeline stages take a context and open their own transactions; handing them this one makes
    each of their publications conditional on the lease without the stages knowing about jobs."""

    def __init__(self, ctx, claim: Claim) -> None:
        self._ctx = ctx
        self._claim = claim

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        with self._ctx.session() as s:
            queue.fence(s, self._claim, now=utcnow())
            yield s


class Heartbeat:
    """Extends the lease every third of its length while the job runs."""

    def __init__(self, ctx, claim: Claim) -> None:
        self._ctx, self._claim = ctx, claim
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{claim.job_id}", daemon=True)

    def _run(self) -> None:
        interval = max(0.2, self._claim.lease_seconds / 3)
        while not self._stop.wait(interval):
            try:
                with self._ctx.session() as s:
                    if not queue.heartbeat(s, self._claim, now=utcnow()):
                        self.lost = True
                        return
            except Exception:  # a missed beat is survivable; the lease covers two more intervals
                continue

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def error_text(exc: BaseException) -> str:
    """What the job's `last_error` says: forgetd's own errors are written to be safe; anything else by class
    only (its message could quote data)."""
    from forgetd.safe_traceback import describe

    return describe(exc)


def _report(claim: Claim, exc: BaseException, *, frames: bool) -> None:
    """What a failed job prints: to a worker's job log (`frames`), which is kept, where it failed; to the
    operator's terminal (`forgetd tick`) one line. The message only with FORGETD_DEBUG=1 (forgetd.safe_traceback)."""
    from forgetd import safe_traceback

    if safe_traceback.debugging():
        traceback.print_exception(exc)
        return
    line = f"job {claim.job_id} ({claim.kind}) failed: {error_text(exc)}"
    if frames:
        print(f"{line}\n{safe_traceback.withheld(exc)}", file=sys.stderr)
    else:
        print(f"{line} (FORGETD_DEBUG=1 shows where)", file=sys.stderr)


def settle_failure(ctx, claim: Claim, *, error: str, retryable: bool, backoff: Backoff,
                   log_uri: str | None = None) -> str | None:
    from forgetd.db.models import Job

    with ctx.session() as s:
        now = utcnow()
        status = queue.fail(s, claim, now=now, error=error, retryable=retryable, backoff=backoff, log_uri=log_uri)
        if status in (queue.DEAD, queue.FAILED):
            give_up(s, s.get(Job, claim.job_id), now=now, actor="system:jobs", why=error)
        return status


def run_claim(ctx, claim: Claim, *, backoff: Backoff, progress: Progress | None = None,
              log_uri=None) -> tuple[str, dict[str, Any] | None]:
    """Run the job to an outcome: succeeded, queued (retry later), dead, failed, or lease_lost.
    `log_uri` (a callable) stores the job's log when it finishes, if it has one."""
    from forgetd.errors import ForgetdError

    kind = KINDS[claim.kind]
    with Heartbeat(ctx, claim):
        try:
            result = kind.run(FencedContext(ctx, claim), claim, progress)
        except LeaseLost:
            _lost(ctx, claim)
            return LEASE_LOST, None
        except Exception as exc:
            _report(claim, exc, frames=log_uri is not None)
            retryable = not isinstance(exc, ForgetdError) or exc.retryable
            status = settle_failure(ctx, claim, error=error_text(exc), retryable=retryable, backoff=backoff,
                                    log_uri=log_uri() if log_uri else None)
            if status is None:
                _lost(ctx, claim)
            return status or LEASE_LOST, None
    with ctx.session() as s:
        done = queue.complete(s, claim, now=utcnow(), result=result, log_uri=log_uri() if log_uri else None)
    if not done:
        _lost(ctx, claim)
        return LEASE_LOST, None
    return queue.SUCCEEDED, result


def _lost(ctx, claim: Claim) -> None:
    with ctx.session() as s:
        queue.event(s, claim.job_id, "lease_lost", attempt=claim.attempt, now=utcnow(), worker=claim.owner)
