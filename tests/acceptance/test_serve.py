"""Acceptance: `forgetd serve` as real processes. Crash safety under SIGKILL (daemon and workers), two
daemons on one PostgreSQL database, SIGTERM, metrics, and the schema guard."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from forgetd import api
from forgetd.db.models import AuditEvent, Checkpoint, Job, JobEvent, Request
from tests.conftest import LOOSE, edit_recipe, pipeline_dirs, run_cli

pytestmark = pytest.mark.slow


STARTED: list["Daemon"] = []


@pytest.fixture(autouse=True)
def _no_daemon_outlives_its_test():
    yield
    while STARTED:
        daemon = STARTED.pop()
        if daemon.proc.poll() is None:
            daemon.kill()
        # its workers run in their own sessions: stop any that still point at this test's database
        for pid in daemon.worker_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Daemon:
    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        self.home = env.get("FORGETD_HOME", "")
        STARTED.append(self)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "forgetd", "serve", "--log-level", "info", *args],
            env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def worker_pids(self) -> list[int]:
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
                environ = (proc / "environ").read_bytes()
            except OSError:
                continue
            # a spawned worker, or the fork server (whose forked workers share its command line and environment)
            ours = b"forgetd.jobs.worker" in cmdline or b"forgetd.jobs.preload" in cmdline
            if ours and f"FORGETD_HOME={self.home}".encode() in environ.split(b"\0"):
                pids.append(int(proc.name))
        return pids

    def terminate(self, timeout: float = 40) -> float:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=timeout)
        return time.monotonic() - started


def _wait(condition, timeout: float, what: str, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _service_env(cli_env, **extra) -> dict[str, str]:
    env = dict(cli_env)
    env.update({"FORGETD_LEASE_SECONDS": "4", "FORGETD_RETRY_BASE_SECONDS": "0.5", "FORGETD_RETRY_CAP_SECONDS": "2",
                "FORGETD_TORCH_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra})
    return env


def _pipeline_settings(settings, tmp_path, *, batch: int, max_steps: int = 6, **train):
    policies, adapters = pipeline_dirs(tmp_path, loose=LOOSE)
    edit_recipe(adapters / "npo-lora.yaml", max_steps=max_steps, batch_requests=batch, **train)
    return replace(settings, policies_dir=policies, adapters_dir=adapters)


def _submit_all(ctx, people) -> list[str]:
    ids = []
    for person in people:
        record = api.request_submit(ctx, {"model": "lm", "policy": "loose", "subject": f"{person}@example.org",
                                          "forget": {"corpus_ids": [person]}})
        ids.append(record["id"])
    return ids


@pytest.fixture
def db_url(sqlite_url):
    return sqlite_url


def test_twenty_requests_survive_daemon_and_worker_kills(settings, cli_env, tmp_path, tiny_lm):
    from forgetd.demo.tiny_lm import load_demo_corpus

    model_dir, dataset, _ = tiny_lm
    people = [p.id for p in load_demo_corpus(model_dir).trained][:20]
    s = _pipeline_settings(settings, tmp_path, batch=5, max_steps=10, stop="fixed")
    ctx = api.open_context(s)
    api.model_register(ctx, "lm", "causal_lm", str(model_dir), dataset=str(dataset))
    ids = _submit_all(ctx, people)
    env = _service_env(cli_env, FORGETD_POLICIES_DIR=str(s.policies_dir), FORGETD_ADAPTERS_DIR=str(s.adapters_dir))
    args = ("--executor", "local", "--slots", "2", "--poll", "0.2", "--plan-every", "0.5", "--compose-every", "1")
    log = tmp_path / "serve.log"
    rng = random.Random(7)
    daemon = Daemon(env, log, *args)
    killed_workers: list[int] = []

    def done() -> bool:
        with ctx.session() as sess:
            return all(r.status.value == "completed" for r in sess.execute(select(Request)).scalars())

    def training_worker() -> int | None:
        """pid of a worker that is past its imports and inside the training loop."""
        with ctx.session() as sess:
            for job in sess.execute(select(Job).where(Job.kind == "train", Job.status == "running")).scalars():
                if not (job.executor_ref or "").startswith("local:pid="):
                    continue
                logfile = s.home / "logs" / f"job-{job.id}-a{job.attempts}.log"
                if logfile.is_file() and "phase=start" in logfile.read_text():
                    return int(job.executor_ref.split("=", 1)[1])
        return None

    def stale_running() -> list[int]:
        """Jobs `running` although their lease ran out well before now: the reaper should have taken them."""
        limit = api.utcnow() - timedelta(seconds=10)
        with ctx.session() as sess:
            return list(sess.execute(select(Job.id).where(Job.status == "running", Job.lease_expires_at < limit)).scalars())

    deadline = time.monotonic() + 900
    daemon_kills = 0
    next_kill = time.monotonic() + rng.uniform(2, 12)
    while not done():
        assert time.monotonic() < deadline, f"requests not completed; daemon log:\n{log.read_text()[-4000:]}"
        if len(killed_workers) < 2:
            pid = training_worker()
            if pid and pid not in killed_workers:
                os.kill(pid, signal.SIGKILL)
                killed_workers.append(pid)
        if daemon_kills < 5 and time.monotonic() >= next_kill:
            daemon.kill()
            daemon_kills += 1
            daemon = Daemon(env, log, *args)
            next_kill = time.monotonic() + rng.uniform(2, 12)
        assert stale_running() == []
        time.sleep(0.1)
    assert daemon.terminate() < 30
    assert daemon_kills == 5 and len(killed_workers) == 2

    with ctx.session() as sess:
        served = sess.execute(select(Checkpoint).where(Checkpoint.status == "served")).scalar_one()
    shas = [e["sha256"] for e in served.manifest["adapters"]]
    assert len(shas) == len(set(shas)) == 4  # 20 requests in batches of 5: each adapter exactly once
    assert sorted(api.checkpoint_show(ctx, "lm", served.version)["covers"]) == sorted(ids)
    with ctx.session() as sess:
        running = sess.execute(select(Job).where(Job.status == "running")).scalars().all()
        assert running == []  # after a clean stop nothing runs; during the run see the reaper events below
        events = sess.execute(select(JobEvent.event)).scalars().all()
        assert events.count("attempt_failed") + events.count("lease_expired") >= 2  # the killed workers
        assert "dead" not in events
    result = run_cli(["audit", "verify", "--json"], env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ok"]
    ctx.close()


def test_lease_takeover_fences_out_the_old_worker_on_real_processes(settings, cli_env, tmp_path):
    """A worker that stopped heartbeating (SIGSTOP) loses its lease to another daemon; when it resumes,
    its completion updates nothing and its artifact is referenced nowhere."""
    ctx = api.open_context(settings)
    env = _service_env(cli_env, FORGETD_LEASE_SECONDS="2")
    job_id = api.job_selftest(ctx, count=1, seconds=6)["jobs"][0]
    first = Daemon(env, tmp_path / "a.log", "--executor", "local", "--poll", "0.2")
    ref = _wait(lambda: api.job_show(ctx, job_id)["executor_ref"], 60, "the first worker to start")
    worker_pid = int(ref.split("=", 1)[1])
    first.kill()  # the worker is orphaned; now freeze it so its heartbeats stop
    os.kill(worker_pid, signal.SIGSTOP)
    second = Daemon(env, tmp_path / "b.log", "--executor", "local", "--poll", "0.2")
    _wait(lambda: api.job_show(ctx, job_id)["status"] == "succeeded", 90, "the second attempt to finish")
    os.kill(worker_pid, signal.SIGCONT)
    _wait(lambda: not Path(f"/proc/{worker_pid}").exists() or
          "Z" in Path(f"/proc/{worker_pid}/stat").read_text().split()[2], 60, "the old worker to exit")
    second.terminate()
    shown = api.job_show(ctx, job_id)
    assert shown["attempts"] == 2 and shown["status"] == "succeeded"
    events = [(e["event"], e["attempt"]) for e in shown["events"]]
    assert ("lease_expired", 1) in events and ("succeeded", 2) in events and ("lease_lost", 1) in events
    assert ("succeeded", 1) not in events
    # both attempts stored an artifact (content differs by attempt); only the second is referenced
    referenced = shown["result"]["artifact"]
    attempts = {f.parent.name: f.read_text() for f in (settings.home / "store" / "log").rglob("selftest.txt")}
    assert referenced in attempts and "attempt 2 " in attempts[referenced]
    stale = [sha for sha, text in attempts.items() if "attempt 1 " in text]
    assert len(stale) == 1
    with ctx.session() as sess:
        blobs = [json.dumps(j.result) for j in sess.execute(select(Job)).scalars()]
    assert not any(stale[0] in b for b in blobs)
    ctx.close()


def test_sigterm_stops_within_30_seconds_and_releases_leases_metrics_served(settings, cli_env, tmp_path):
    ctx = api.open_context(settings)
    env = _service_env(cli_env, FORGETD_LEASE_SECONDS="30")
    job_id = api.job_selftest(ctx, count=1, seconds=120)["jobs"][0]
    port = 20000 + os.getpid() % 20000
    daemon = Daemon(env, tmp_path / "serve.log", "--executor", "local", "--poll", "0.2", "--metrics-port", str(port))
    _wait(lambda: api.job_show(ctx, job_id)["status"] == "running", 60, "the job to start")
    body = _wait(lambda: _scrape(port), 30, "the metrics endpoint")
    assert 'forgetd_jobs{kind="selftest",state="running"} 1.0' in body
    for family in ("forgetd_job_attempts_total", "forgetd_job_duration_seconds", "forgetd_requests_deadline"):
        assert family in body
    owner = api.job_show(ctx, job_id)["lease_owner"]
    elapsed = daemon.terminate()
    assert daemon.proc.returncode == 0 and elapsed < 30, elapsed
    shown = api.job_show(ctx, job_id)
    assert shown["status"] == "queued" and shown["lease_owner"] is None
    assert [e["event"] for e in shown["events"]][-1] == "released" and shown["events"][-1]["worker"] == owner
    ctx.close()


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return response.read().decode()
    except OSError:
        return None


def test_serve_refuses_an_out_of_date_schema(settings, cli_env):
    from forgetd.db import schema
    from forgetd.db.engine import make_engine

    engine = make_engine(settings.database_url)
    schema.downgrade(engine, settings.migrations_dir, "0002")
    engine.dispose()
    result = subprocess.run([sys.executable, "-m", "forgetd", "serve"], env=cli_env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0 and "forgetd db upgrade" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.postgres
def test_ctrl_c_in_tick_gives_the_running_job_back(settings, cli_env, tmp_path, tiny_lm):
    """An operator interrupting `forgetd tick` mid-training: the job is released at once (attempt not counted),
    so the next tick or a daemon takes it now; its lease used to stay with the dead tick until it expired."""
    model_dir, dataset, people = tiny_lm
    s = _pipeline_settings(settings, tmp_path, batch=1, max_steps=100_000, stop="fixed")  # still training at ^C
    ctx = api.open_context(s)
    api.model_register(ctx, "lm", "causal_lm", str(model_dir), dataset=str(dataset))
    _submit_all(ctx, people[:1])
    env = _service_env(cli_env, FORGETD_POLICIES_DIR=str(s.policies_dir), FORGETD_ADAPTERS_DIR=str(s.adapters_dir))
    tick = subprocess.Popen([sys.executable, "-m", "forgetd", "tick"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        def training() -> Job | None:
            with ctx.session() as sess:
                running = select(Job).where(Job.kind == "train", Job.status == "running")
                return sess.execute(running).scalar_one_or_none()

        job = _wait(training, 120, "tick to start training")
        time.sleep(1.0)
        tick.send_signal(signal.SIGINT)
        out, _ = tick.communicate(timeout=60)
    finally:
        tick.kill()
    # exit 1 ("error: aborted"); on a loaded machine the process was seen to end on the SIGINT itself after
    # printing that line (-2, 1 run in 3 with both cores busy): either way interrupted, without a traceback
    assert tick.returncode in (1, -signal.SIGINT) and "Traceback" not in out, out
    assert "error: aborted" in out or "error: interrupted" in out, out
    shown = api.job_show(ctx, job.id)
    assert shown["status"] == "queued" and shown["lease_owner"] is None, shown
    assert shown["max_attempts"] == job.max_attempts + 1  # the interrupted attempt does not count
    assert [e["event"] for e in shown["events"]][-2:] == ["claimed", "released"]
    assert shown["events"][-1]["detail"] == {"reason": "tick interrupted"}


def test_sigterm_while_waiting_for_ray_is_a_clean_stop(settings, cli_env, tmp_path):
    """The daemon waits up to --ray-wait for the cluster (a head starting beside it); a SIGTERM meanwhile
    ends the wait at once, exit 0, with nothing audited (nothing had started)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing answers there
    log = tmp_path / "ray-wait.log"
    daemon = Daemon(_service_env(cli_env), log, "--executor", "ray", "--ray-address", f"127.0.0.1:{port}",
                    "--ray-wait", "120")
    _wait(lambda: "waiting up to 120 s for Ray" in log.read_text(), 60, "the daemon to wait for Ray")
    assert daemon.terminate(timeout=20) < 10
    assert daemon.proc.returncode == 0, log.read_text()
    assert "stopped while waiting for Ray" in log.read_text() and "Traceback" not in log.read_text()
    assert api.audit_log(api.open_context(settings)) == []


def test_two_daemons_on_postgres_run_200_jobs_once_each_with_one_leader(pg_url, settings, cli_env, tmp_path):
    s = replace(settings, database_url=pg_url)
    ctx = api.open_context(s)
    env = _service_env({**cli_env, "FORGETD_DATABASE_URL": pg_url})
    ids = api.job_selftest(ctx, count=200, seconds=0.02)["jobs"]
    args = ("--executor", "inline", "--slots", "4", "--poll", "0.05", "--plan-every", "0.5")
    a = Daemon(env, tmp_path / "a.log", *args)
    b = Daemon(env, tmp_path / "b.log", *args)

    def finished() -> int:
        with ctx.session() as sess:
            return sum(1 for j in sess.execute(select(Job.status)).scalars() if j == "succeeded")

    _wait(lambda: finished() >= 100, 120, "half of the jobs")
    # hand leadership over mid-run: stop whichever daemon leads, start a third
    with ctx.session() as sess:
        acquired = sess.execute(select(AuditEvent).where(AuditEvent.action == "service.leader_acquired")
                                .order_by(AuditEvent.seq)).scalars().all()
    leader_id = acquired[-1].resource_id
    leader = a if f":{a.proc.pid}:" in leader_id else b
    other = b if leader is a else a
    leader.terminate()
    c = Daemon(env, tmp_path / "c.log", *args)
    _wait(lambda: finished() == 200, 180, "all 200 jobs")
    other.terminate()
    c.terminate()

    with ctx.session() as sess:
        events = sess.execute(select(JobEvent).where(JobEvent.job_id.in_(ids)).order_by(JobEvent.id)).scalars().all()
        leadership = sess.execute(select(AuditEvent).where(AuditEvent.action.like("service.leader_%"))
                                  .order_by(AuditEvent.seq)).scalars().all()
    runs: dict[int, list[tuple]] = defaultdict(list)
    open_runs: dict[int, tuple] = {}
    for e in events:
        if e.event == "claimed":
            assert e.job_id not in open_runs, f"job {e.job_id} claimed while already running"
            open_runs[e.job_id] = (e.worker, e.at)
        elif e.event in ("succeeded", "attempt_failed", "lease_expired", "released", "dead"):
            worker, started = open_runs.pop(e.job_id)
            runs[e.job_id].append((worker, started, e.at))
    assert not open_runs and len(runs) == 200
    assert all(len(r) == 1 for r in runs.values())  # no retries were needed, so exactly one run each
    workers = {r[0][0].split("#")[0] for r in runs.values()}
    assert len(workers) >= 2  # the work really was shared
    # one leader at a time: acquisitions and releases alternate, and three daemons led in turn at most
    leaders = []
    current = None
    for e in leadership:
        if e.action == "service.leader_acquired":
            assert current is None, f"{e.resource_id} became leader while {current} led"
            current = e.resource_id
            leaders.append(current)
        else:
            assert e.resource_id == current
            current = None
    assert len(leaders) >= 2 and len(set(leaders)) == len(leaders)
    ctx.close()


@pytest.mark.parametrize("worker_start", ["forkserver", "spawn"])
def test_local_slots_get_their_own_gpu_and_logs_are_kept(settings, cli_env, tmp_path, worker_start):
    """Workers forked from the fork server (once it is ready) or spawned afresh: each slot sees its own GPU
    and each job's log is kept."""
    ctx = api.open_context(settings)
    env = _service_env(cli_env, FORGETD_WORKER_START=worker_start)
    log = tmp_path / "serve.log"
    daemon = Daemon(env, log, "--executor", "local", "--slots", "2", "--gpus", "3,5", "--poll", "0.2")
    if worker_start == "forkserver":
        _wait(lambda: log.is_file() and "fork server ready" in log.read_text(), 120, "the fork server's imports")
    ids = api.job_selftest(ctx, count=2, seconds=4)["jobs"]

    def worker_pids():
        refs = [api.job_show(ctx, i)["executor_ref"] for i in ids]
        return [int(r.split("=", 1)[1]) for r in refs] if all(refs) else None

    pids = _wait(worker_pids, 60, "both workers to start")
    parents = {int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) for pid in pids}
    if worker_start == "forkserver":  # forked by the server, a child of the daemon
        assert daemon.proc.pid not in parents
        assert all(Path(f"/proc/{ppid}/cmdline").read_bytes().count(b"forgetd.jobs.preload") for ppid in parents)
    else:
        assert parents == {daemon.proc.pid}
    _wait(lambda: all(api.job_show(ctx, i)["status"] == "succeeded" for i in ids), 60, "both jobs")
    daemon.terminate()
    gpus = set()
    for i in ids:
        uri = api.job_show(ctx, i)["log_uri"]
        digest = uri.rsplit("/", 1)[-1]
        text = (ctx.store.open_dir("log", digest) / "job.log").read_text()
        assert f"job {i} kind selftest attempt 1" in text and "finished in" in text
        gpus |= set(re.findall(r" gpu (\S+)", text))
    assert gpus == {"3", "5"}
    assert ("fork server ready" in log.read_text()) == (worker_start == "forkserver")
    ctx.close()


def test_the_leader_sweeps_deadlines_and_the_job_cli_works(settings, cli_env, tmp_path, model):
    ctx = api.open_context(settings)
    late = api.request_submit(ctx, {"model": "credit-mlp", "policy": "gdpr-erasure", "subject": "late@example.org",
                                    "received_at": "2026-01-05T09:00:00Z"})["id"]
    env = _service_env(cli_env)
    daemon = Daemon(env, tmp_path / "serve.log", "--executor", "inline", "--poll", "0.1")

    def breached() -> bool:
        with ctx.session() as sess:
            return sess.execute(select(AuditEvent).where(AuditEvent.action == "deadline.breached",
                                                         AuditEvent.resource_id == late)).first() is not None

    _wait(breached, 60, "the leader's first deadline sweep")
    assert daemon.terminate() < 30

    def cli(*args: str, code: int = 0):
        result = run_cli(list(args), env)
        assert result.returncode == code, (args, result.stderr)
        assert "Traceback" not in result.stdout + result.stderr
        return result

    status = json.loads(cli("status", "--json").stdout)
    assert [r["id"] for r in status["requests_breached"]] == [late] and status["running"] == []
    queued = json.loads(cli("job", "selftest", "--count", "2", "--seconds", "0", "--json").stdout)["jobs"]
    rows = json.loads(cli("job", "list", "--status", "queued", "--json").stdout)
    assert sorted(r["id"] for r in rows) == sorted(queued)
    canceled = json.loads(cli("job", "cancel", str(queued[0]), "--json").stdout)
    assert canceled["status"] == "canceled"
    assert json.loads(cli("job", "retry", str(queued[0]), "--json").stdout)["status"] == "queued"
    shown = json.loads(cli("job", "show", str(queued[0]), "--json").stdout)
    assert [e["event"] for e in shown["events"]] == ["enqueued", "canceled", "retried"]
    assert "enqueued" in cli("job", "show", str(queued[0])).stdout
    # operator mistakes: one line, the right exit code, nothing changed
    missing = cli("job", "show", "999999", code=1)
    assert "no job 999999" in missing.stderr and len(missing.stderr.splitlines()) == 1
    assert "--status" in cli("job", "list", "--status", "bogus", code=2).stderr
    again = cli("job", "retry", str(queued[1]), code=1)
    assert "only dead, failed or canceled" in again.stderr
    assert json.loads(cli("job", "show", str(queued[1]), "--json").stdout)["status"] == "queued"
    ctx.close()
