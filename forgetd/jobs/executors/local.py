"""A subprocess per job (`python -m forgetd.jobs.worker JOB_ID`), so a crash or an out-of-memory kill
in training never takes the daemon down. The worker heartbeats and completes its own lease: if the
daemon dies, a running worker finishes and publishes, and the restarted daemon leaves it alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from forgetd.api import utcnow
from forgetd.jobs import queue
from forgetd.jobs.queue import Backoff, Claim
from forgetd.jobs.runner import settle_failure


STARTUP_SECONDS = 60.0  # the daemon keeps a new worker's lease alive while it imports torch & co.


@dataclass
class _Child:
    claim: Claim
    proc: subprocess.Popen
    slot: int
    log_path: Path
    started: float


def store_log(ctx, log_path: Path) -> str | None:
    """Keep a job's log in the artifact store (content-addressed, so storing it twice is harmless)."""
    import shutil
    import tempfile

    if not log_path.is_file():
        return None
    with tempfile.TemporaryDirectory(dir=ctx.settings.home) as tmp:
        shutil.copyfile(log_path, Path(tmp) / "job.log")
        return ctx.store.uri("log", ctx.store.put_dir("log", Path(tmp)))


def log_path_for(ctx, claim: Claim) -> Path:
    logs = ctx.settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return logs / f"job-{claim.job_id}-a{claim.attempt}.log"


class LocalExecutor:
    name = "local"

    def __init__(self, *, slots: int, backoff: Backoff, gpus: list[str]) -> None:
        self.slots = slots
        self.backoff = backoff
        self.gpus = gpus
        self._children: dict[int, _Child] = {}

    def _free_slot(self) -> int:
        used = {c.slot for c in self._children.values()}
        return next(i for i in range(self.slots) if i not in used)

    def start(self, ctx, claim: Claim) -> None:
        slot = self._free_slot()
        env = dict(os.environ)
        env["FORGETD_JOB_SLOT"] = str(slot)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        log_path = log_path_for(ctx, claim)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "forgetd.jobs.worker", *claim.to_argv()],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # a terminal's Ctrl-C reaches the daemon, which decides
            )
        self._children[claim.job_id] = _Child(claim, proc, slot, log_path, time.monotonic())
        with ctx.session() as s:
            queue.set_executor_ref(s, claim, f"local:pid={proc.pid}")

    def poll(self, ctx) -> list[tuple[int, str]]:
        done = []
        for job_id, child in list(self._children.items()):
            code = child.proc.poll()
            if code is None:
                if time.monotonic() - child.started < STARTUP_SECONDS:
                    # Until the worker's own heartbeat runs; after that a hung worker must lose its lease.
                    with ctx.session() as s:
                        queue.heartbeat(s, child.claim, now=utcnow())
                continue
            del self._children[job_id]
            if code == 0:
                done.append((job_id, "exited"))
                continue
            # The worker died without settling its job (killed, out of memory, crashed interpreter):
            # count the attempt, unless the lease moved on meanwhile.
            status = settle_failure(ctx, child.claim, error=f"worker process exited with code {code}",
                                    retryable=True, backoff=self.backoff, log_uri=store_log(ctx, child.log_path))
            done.append((job_id, status or "lease_lost"))
        return done

    def running(self) -> int:
        return len(self._children)

    def adopt(self, ctx, job) -> bool:
        return False  # a live worker of an earlier daemon heartbeats and settles its own lease

    def shutdown(self, ctx, grace_seconds: float) -> None:
        deadline = time.monotonic() + grace_seconds
        while self._children and time.monotonic() < deadline:
            self.poll(ctx)
            time.sleep(0.2)
        for child in self._children.values():
            _signal(child.proc, signal.SIGTERM)
        stop_by = time.monotonic() + 5
        while any(c.proc.poll() is None for c in self._children.values()) and time.monotonic() < stop_by:
            time.sleep(0.1)
        for child in self._children.values():
            if child.proc.poll() is None:
                _signal(child.proc, signal.SIGKILL)
                child.proc.wait(timeout=5)
            with ctx.session() as s:
                queue.release(s, child.claim, now=utcnow(), reason="shutdown")
        self._children.clear()


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass
