"""`forgetd serve` and `forgetd tick`: the loops that plan, claim and run jobs (DESIGN 8).

Every daemon claims and runs jobs; exactly one, the leader, runs APScheduler, which only *triggers*
planning, composition on each policy's cadence and the deadline sweep (the database stays the source of
truth: a trigger enqueues jobs, it never holds state of its own). Leadership is a PostgreSQL advisory
lock on a dedicated connection, or an fcntl lock beside the SQLite file; both vanish with the process.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from forgetd.api import utcnow
from forgetd.jobs import planner, queue
from forgetd.jobs.executors.ray import CONNECT_WAIT_SECONDS
from forgetd.jobs.queue import Backoff

log = logging.getLogger("forgetd.serve")
LEADER_LOCK_KEY = 0x666F7267657464  # "forgetd": the advisory-lock id every forgetd daemon agrees on


def backoff_from_settings(settings) -> Backoff:
    return Backoff(base_seconds=settings.retry_base_seconds, cap_seconds=settings.retry_cap_seconds)


def worker_identity(prefix: str) -> str:
    return f"{prefix}:{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"


# --- leadership ----------------------------------------------------------------------------------------


class LeaderLock:
    def __init__(self, engine) -> None:
        self.engine = engine
        self._conn = None
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy import text

            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LEADER_LOCK_KEY}).scalar()
            if got:
                self._conn = conn
            else:
                conn.close()
            return bool(got)
        import fcntl

        path = Path(self.engine.url.database).with_suffix(".leader")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def still_held(self) -> bool:
        if self._fd is not None:
            return True  # an flock lives as long as the descriptor
        if self._conn is None:
            return False
        from sqlalchemy import text

        try:
            self._conn.execute(text("SELECT 1"))
            return True
        except Exception:
            self._conn = None
            return False

    def release(self) -> None:
        if self._conn is not None:
            from sqlalchemy import text

            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LEADER_LOCK_KEY})
            finally:
                self._conn.close()
                self._conn = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# --- shared steps ------------------------------------------------------------------------------------


def reap(ctx, backoff: Backoff) -> list[tuple[int, str]]:
    """Expired leases back to the queue (or dead, failing the requests they held)."""
    from forgetd.db.models import Job
    from forgetd.jobs.kinds import give_up

    with ctx.session() as s:
        now = utcnow()
        reaped = queue.reap(s, now=now, backoff=backoff)
        for job_id, status in reaped:
            if status == queue.DEAD:
                job = s.get(Job, job_id)
                give_up(s, job, now=now, actor="system:reaper", why=job.last_error or "lease expired")
    return reaped


def claim_next(ctx, owner: str, *, executor: str, kinds: tuple[str, ...] | None = None, model_id: int | None = None):
    from sqlalchemy.exc import IntegrityError

    try:
        with ctx.session() as s:
            return queue.claim(s, owner, now=utcnow(), lease_seconds=ctx.settings.lease_seconds, executor=executor,
                               kinds=kinds, model_id=model_id)
    except IntegrityError:
        return None  # another daemon took the same merge lock a moment earlier: try again next loop


# --- tick: the same jobs, run inline until nothing is runnable -------------------------------------------


def run_until_idle(ctx, *, model_id: int | None = None, progress=None, max_jobs: int = 10_000) -> dict[str, Any]:
    """With `model_id`, only that model's jobs run (and are reported): another tick or a daemon may work on
    the other models' jobs meanwhile."""
    from sqlalchemy import select

    from forgetd.db.models import Job, Request, RequestTransition
    from forgetd.jobs.executors.inline import InlineExecutor
    from forgetd.lifecycle import RequestStatus as St

    backoff = backoff_from_settings(ctx.settings)
    executor = InlineExecutor(slots=1, backoff=backoff)
    owner = worker_identity("tick")
    started = utcnow()
    report: dict[str, Any] = {"scheduled": [], "trained": [], "evaluated": [], "candidates": [], "completed": [],
                              "failed": [], "jobs": []}
    reap(ctx, backoff)
    for _ in range(max_jobs):
        plan = planner.plan(ctx, now=utcnow(), compose=planner.ALL, max_attempts=ctx.settings.max_attempts)
        report["scheduled"] += plan.scheduled
        claim = claim_next(ctx, owner, executor="inline", model_id=model_id)
        if claim is None:
            if not plan.enqueued:
                break
            continue
        label = ",".join(claim.request_ids) or f"job {claim.job_id}"
        if progress:
            progress({"stage": claim.kind, "request": label})
        try:
            outcome, result = executor.run(
                ctx, claim, progress=(lambda e, k=claim.kind, l=label: progress({"stage": k, "request": l, **e})) if progress else None
            )
        except KeyboardInterrupt:
            # Ctrl-C: give the job back now (the attempt not counted). Its lease used to stay with the dead
            # tick, so the next tick found nothing runnable for that model until the lease ran out.
            with ctx.session() as s:
                queue.release(s, claim, now=utcnow(), reason="tick interrupted")
            raise
        report["jobs"].append({"job": claim.job_id, "kind": claim.kind, "outcome": outcome})
        result = result or {}
        if claim.kind == "train" and result.get("adapter"):
            report["trained"] += result["requests"]
        elif claim.kind == "evaluate":
            report["evaluated"] += result.get("passed", [])
        elif claim.kind == "compose" and result.get("candidate"):
            report["candidates"].append(result["candidate"])
        elif claim.kind == "promote":
            report["completed"] += result.get("completed", [])
    with ctx.session() as s:
        failed_now = (
            select(Request.public_id, Request.failed_step).join(RequestTransition, RequestTransition.request_id == Request.id)
            .where(RequestTransition.to_status == St.failed, RequestTransition.at >= started,
                   Request.status == St.failed).distinct()
        )
        queued = select(Job).where(Job.status == queue.QUEUED).order_by(Job.run_after)
        if model_id is not None:
            failed_now, queued = failed_now.where(Request.model_id == model_id), queued.where(Job.model_id == model_id)
        report["failed"] = [{"request": pid, "stage": step} for pid, step in s.execute(failed_now).all()]
        waiting = s.execute(queued).scalars().all()
        report["waiting"] = [{"job": j.id, "kind": j.kind, "run_after": j.run_after.isoformat(),
                              "last_error": j.last_error} for j in waiting]
    return report


# --- serve ---------------------------------------------------------------------------------------------


@dataclass
class ServeOptions:
    executor: str = "local"
    slots: int = 1
    gpus: list[str] = field(default_factory=list)
    poll_seconds: float = 1.0
    plan_seconds: float = 10.0
    sweep_seconds: float = 300.0
    compose_every: float | None = None  # seconds; None: each policy's cron cadence
    grace_seconds: float = 20.0
    metrics_port: int | None = None
    ray_address: str | None = None
    ray_wait_seconds: float = CONNECT_WAIT_SECONDS


class Daemon:
    def __init__(self, ctx, options: ServeOptions) -> None:
        self.ctx = ctx
        self.options = options
        self.id = worker_identity("serve")
        self.stop = threading.Event()
        self.backoff = backoff_from_settings(ctx.settings)
        self.leader = LeaderLock(ctx.engine)
        self.is_leader = False
        self.scheduler = None
        self._claims = 0

    # leadership
    def _audit(self, action: str, payload: dict[str, Any]) -> None:
        from forgetd import audit

        with self.ctx.session() as s:
            audit.append(s, actor="system:serve", action=action, resource_type="service", resource_id=self.id,
                         payload=payload, at=utcnow())

    def _become_leader(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        from forgetd.policies import load_policies

        self.is_leader = True
        self._audit("service.leader_acquired", {"executor": self.options.executor})
        log.info("leader: %s", self.id)
        # Memory job store only: APScheduler's SQL store cannot be shared between processes and drops
        # rows it cannot unpickle. The triggers hold no state the database does not have.
        scheduler = BackgroundScheduler(
            timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60}
        )
        o = self.options
        scheduler.add_job(self._plan, IntervalTrigger(seconds=o.plan_seconds), id="plan", next_run_time=utcnow())
        scheduler.add_job(self._sweep, IntervalTrigger(seconds=o.sweep_seconds), id="sweep", next_run_time=utcnow())
        if o.compose_every:
            scheduler.add_job(self._plan, IntervalTrigger(seconds=o.compose_every), id="compose:all",
                              kwargs={"compose": planner.ALL})
        else:
            for policy in load_policies(self.ctx.settings.policies_dir).values():
                scheduler.add_job(self._plan, CronTrigger.from_crontab(policy.compose.cadence, timezone="UTC"),
                                  id=f"compose:{policy.name}", kwargs={"compose": {policy.name}})
        scheduler.start()
        self.scheduler = scheduler

    def _lose_leadership(self, why: str) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
        if self.is_leader:
            self.is_leader = False
            try:  # recorded before the lock goes, so the trail never shows two leaders at once
                self._audit("service.leader_released", {"why": why})
            except Exception:
                log.exception("could not record the end of leadership")
            self.leader.release()

    def _plan(self, compose: set[str] | str = frozenset()) -> None:
        try:
            planner.plan(self.ctx, now=utcnow(), compose=compose, max_attempts=self.ctx.settings.max_attempts)
        except Exception:
            log.exception("planning failed; the next trigger retries")

    def _sweep(self) -> None:
        from forgetd import api

        try:
            api.sweep(self.ctx)
        except Exception:
            log.exception("deadline sweep failed; the next trigger retries")

    # the loop
    def _claim_and_start(self, executor) -> None:
        while executor.running() < executor.slots and not self.stop.is_set():
            self._claims += 1
            claim = claim_next(self.ctx, f"{self.id}#{self._claims}", executor=executor.name)
            if claim is None:
                return
            log.info("job %s (%s) attempt %s started", claim.job_id, claim.kind, claim.attempt)
            try:
                executor.start(self.ctx, claim)
            except Exception as exc:
                from forgetd.jobs.runner import error_text, settle_failure

                log.exception("could not start job %s", claim.job_id)
                settle_failure(self.ctx, claim, error=f"executor could not start it: {error_text(exc)}",
                               retryable=True, backoff=self.backoff)

    def _adopt(self, executor) -> None:
        from sqlalchemy import select

        from forgetd.db.models import Job

        with self.ctx.session() as s:
            running = s.execute(select(Job).where(Job.status == queue.RUNNING, Job.executor == executor.name)).scalars().all()
        for job in running:
            if executor.adopt(self.ctx, job):
                with self.ctx.session() as s:
                    queue.event(s, job.id, "adopted", attempt=job.attempts, now=utcnow(), worker=self.id,
                                detail={"executor_ref": job.executor_ref})
                log.info("adopted running job %s (%s)", job.id, job.executor_ref)

    def run(self) -> int:
        from forgetd.jobs.executors import StoppedWhileStarting, make_executor

        o = self.options
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        if o.metrics_port is not None:  # first: a port in use is refused before any worker or Ray connection
            from forgetd.jobs.metrics import start_metrics_server

            start_metrics_server(self.ctx, o.metrics_port)
        try:
            executor = make_executor(o.executor, slots=o.slots, backoff=self.backoff, gpus=o.gpus,
                                     ray_address=o.ray_address, ray_wait_seconds=o.ray_wait_seconds,
                                     worker_start=self.ctx.settings.worker_start, stop=self.stop)
        except StoppedWhileStarting as exc:  # a SIGTERM before anything started: a clean stop
            log.info("%s", exc)
            return 0
        log.info("serving as %s with the %s executor (%d slots)", self.id, executor.name, executor.slots)
        self._adopt(executor)
        try:
            while not self.stop.is_set():
                if not self.is_leader:
                    if self.leader.try_acquire():
                        self._become_leader()
                elif not self.leader.still_held():
                    self._lose_leadership("lock lost")
                for job_id, status in reap(self.ctx, self.backoff):
                    log.warning("job %s lease expired: %s", job_id, status)
                for job_id, outcome in executor.poll(self.ctx):
                    log.info("job %s finished: %s", job_id, outcome)
                self._claim_and_start(executor)
                self.stop.wait(o.poll_seconds)
        finally:
            log.info("stopping: finishing or releasing %d running job(s)", executor.running())
            if self.scheduler is not None:
                self.scheduler.shutdown(wait=False)
                self.scheduler = None
            executor.shutdown(self.ctx, o.grace_seconds)
            self._lose_leadership("shutdown")
        return 0


def lease_age(job, now) -> float | None:
    if job.heartbeat_at is None:
        return None
    return (now - job.heartbeat_at) / timedelta(seconds=1)

