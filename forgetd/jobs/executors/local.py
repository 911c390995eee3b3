"""A process per job, so a crash or an out-of-memory kill in training never takes the daemon down. The
worker heartbeats and completes its own lease: if the daemon dies, a running worker finishes and
publishes, and the restarted daemon leaves it alone.

Workers are forked from a fork server that imported torch, transformers, peft and diffusers once
(`forgetd.jobs.preload`): a fresh interpreter spends 5-7 s of a short job on those imports. Until the
server has finished its imports, after the daemon starts, and whenever it cannot start a worker, a job
starts as a fresh interpreter (`python -m forgetd.jobs.worker JOB_ID`), as it does throughout with
FORGETD_WORKER_START=spawn.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from forgetd.api import utcnow
from forgetd.jobs import queue
from forgetd.jobs.queue import Backoff, Claim
from forgetd.jobs.runner import settle_failure

STARTUP_SECONDS = 60.0  # the daemon keeps a new worker's lease alive while it imports torch & co.

log = logging.getLogger(__name__)


def _noop() -> None:
    pass


class _Forked:
    """A worker forked by the fork server, behind the Popen methods the executor uses."""

    def __init__(self, process) -> None:
        self._process = process
        self.pid = process.pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and self._process.exitcode is not None:
            self.returncode = self._process.exitcode
            self._process.close()  # its sentinel pipe; a long-lived daemon starts thousands of jobs
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        if self.poll() is None:
            self._process.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(f"job worker pid {self.pid}", timeout)
        return self.returncode


class _ForkServer:
    """multiprocessing's fork server preloaded with forgetd.jobs.preload, warmed up off the daemon's loop:
    the first connection waits for the server's imports, and a claimed job must not wait that long."""

    def __init__(self) -> None:
        import multiprocessing

        self._mp = multiprocessing.get_context("forkserver")
        self._mp.set_forkserver_preload(["forgetd.jobs.preload"])
        self.ready = threading.Event()
        threading.Thread(target=self._warm_up, name="forkserver-warm-up", daemon=True).start()

    def _warm_up(self) -> None:
        began = time.monotonic()
        try:
            process = self._mp.Process(target=_noop, name="forgetd-forkserver-warm-up")
            process.start()
            process.join()
            process.close()
        except Exception as exc:
            log.warning("the fork server did not start (%s: %s); jobs start as fresh interpreters",
                        type(exc).__name__, exc)
            return
        log.info("fork server ready in %.1fs: jobs start forked from it", time.monotonic() - began)
        self.ready.set()

    def start(self, argv: list[str], env: dict[str, str], log_path: Path) -> _Forked:
        from forgetd.jobs.worker import run_forked

        process = self._mp.Process(target=run_forked, args=(argv, env, str(log_path)), name="forgetd-job")
        process.start()
        return _Forked(process)


@dataclass
class _Child:
    claim: Claim
    proc: subprocess.Popen | _Forked
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

    def __init__(self, *, slots: int, backoff: Backoff, gpus: list[str], worker_start: str) -> None:
        self.slots = slots
        self.backoff = backoff
        self.gpus = gpus
        self._children: dict[int, _Child] = {}
        self._fork_server = _ForkServer() if worker_start == "forkserver" else None

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
        proc = self._fork(claim.to_argv(), env, log_path) or _spawn(claim.to_argv(), env, log_path)
        self._children[claim.job_id] = _Child(claim, proc, slot, log_path, time.monotonic())
        with ctx.session() as s:
            queue.set_executor_ref(s, claim, f"local:pid={proc.pid}")

    def _fork(self, argv: list[str], env: dict[str, str], log_path: Path) -> _Forked | None:
        server = self._fork_server
        if server is None or not server.ready.is_set():
            return None
        try:
            return server.start(argv, env, log_path)
        except Exception as exc:  # the server died or cannot fork: stop using it, start this job afresh
            log.warning("the fork server could not start a worker (%s: %s); jobs start as fresh interpreters",
                        type(exc).__name__, exc)
            self._fork_server = None
            return None

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


def _spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "forgetd.jobs.worker", *argv],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,  # a terminal's Ctrl-C reaches the daemon, which decides
        )


def _signal(proc: subprocess.Popen | _Forked, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass
