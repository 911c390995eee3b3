"""Jobs on a Ray cluster: one detached, named actor per attempt (`forgetd-<job>-a<attempt>`).

The actor runs the job in a background thread, heartbeats its lease and settles the job itself, so it
does not depend on the daemon that started it. A restarted daemon finds it by its deterministic name
and adopts it (watches it and cleans it up) instead of running the job again; starting an attempt
whose actor already exists attaches to it (`get_if_exists`). Ray's own state is not trusted for the
outcome: the database (the job row, under its lease) decides.
"""

from __future__ import annotations

import os
from typing import Any

from forgetd.jobs.queue import Backoff, Claim

NAMESPACE = "forgetd"


def actor_name(job_id: int, attempt: int) -> str:
    return f"forgetd-{job_id}-a{attempt}"


class _JobActor:
    """Lives in a Ray worker process; holds one job attempt."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {"state": "idle"}
        self._thread = None

    def start(self, claim: Claim) -> dict[str, Any]:
        import threading

        if self._thread is None:  # a second start (a daemon re-submitting) attaches, never re-runs
            self.state = {"state": "running", "pid": os.getpid()}
            self._thread = threading.Thread(target=self._run, args=(claim,), daemon=True)
            self._thread.start()
        return dict(self.state)

    def _run(self, claim: Claim) -> None:
        try:
            from forgetd import api
            from forgetd.config import load_settings
            from forgetd.jobs.runner import run_claim
            from forgetd.jobs.service import backoff_from_settings

            settings = load_settings()
            ctx = api.open_context(settings)
            outcome, _ = run_claim(ctx, claim, backoff=backoff_from_settings(settings))
            ctx.close()
            self.state = {"state": "done", "outcome": outcome, "pid": os.getpid()}
        except BaseException as exc:  # noqa: BLE001 -- reported to the daemon, which settles the attempt
            self.state = {"state": "crashed", "error": type(exc).__name__, "pid": os.getpid()}

    def status(self) -> dict[str, Any]:
        return dict(self.state)


def _forgetd_env() -> dict[str, str]:
    # The actor opens the same database and store as the daemon. On a shared cluster prefer a master
    # key file on a shared volume to FORGETD_MASTER_KEY, which would travel in the runtime env.
    return {k: v for k, v in os.environ.items() if k.startswith("FORGETD_") or k in ("HF_HUB_OFFLINE",)}


CONNECT_WAIT_SECONDS = 60.0  # a head that starts beside the daemon (docker compose) is up well within this


def connect(address: str | None, *, wait_seconds: float = CONNECT_WAIT_SECONDS, stop=None) -> None:
    """ray.init on the cluster the operator named, or a clear error naming where the address came from.

    Ray keeps retrying an address nothing answers at (it logged "Failed to connect to GCS" for minutes
    here, and the daemon never started), and with no cluster at all it raises a ConnectionError that
    reached the operator as an internal error. So a `host:port` address is resolved and connected to
    first, for up to `wait_seconds` (or until the `stop` event is set: SIGTERM while waiting), then Ray is
    asked to join."""
    from forgetd.errors import ConfigError, InputError

    given = address or os.environ.get("RAY_ADDRESS")
    field = "--ray-address" if address else "RAY_ADDRESS" if given else "--executor"
    target = (given or "auto").strip()
    host_port = _host_port(target)
    if host_port is None and target not in ("auto", "local"):
        raise InputError(f"{target!r} is not a Ray address: give host:port (e.g. 10.0.0.5:6379), ray://host:port "
                         "or auto", field=field)
    if host_port is not None:
        problem = _wait_for_port(*host_port, wait_seconds, stop=stop)
        if problem and stop is not None and stop.is_set():
            from forgetd.jobs.executors import StoppedWhileStarting

            raise StoppedWhileStarting(f"stopped while waiting for Ray at {target}")
        if problem:
            raise ConfigError(f"no Ray cluster answers at {target} after {wait_seconds:g} s ({problem}); start "
                              "its head (`ray start --head`) or fix the address", field=field)
    import ray

    try:
        ray.init(address=target, namespace=NAMESPACE, log_to_driver=False, logging_level="WARNING")
    except ConnectionError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300].rstrip(".")
        where = f"at {target}" if given else "on this machine (RAY_ADDRESS is not set)"
        raise ConfigError(f"no Ray cluster {where}: {first}; start one (`ray start --head`) or give "
                          "--ray-address", field=field) from exc


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of `host:port`, `[v6]:port` or `ray://host:port`; None for what is not of that form."""
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.removeprefix("[").removesuffix("]"), int(port)


def _wait_for_port(host: str, port: int, wait_seconds: float, *, stop=None) -> str | None:
    """None once a TCP connection to host:port opens; else, after `wait_seconds` (or once `stop` is set), why
    the last try failed."""
    import logging
    import socket
    import time

    deadline = time.monotonic() + wait_seconds
    told = False
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, max(wait_seconds, 0.1))):
                return None
        except OSError as exc:
            problem = f"cannot resolve {host}" if isinstance(exc, socket.gaierror) else (exc.strerror or str(exc))
        if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
            return problem
        if not told:
            logging.getLogger("forgetd.serve").warning("waiting up to %.0f s for Ray at %s:%d (%s)", wait_seconds,
                                                       host, port, problem)
            told = True
        pause = min(1.0, max(0.0, deadline - time.monotonic()))
        if stop is not None:
            stop.wait(pause)
        else:
            time.sleep(pause)


class RayExecutor:
    name = "ray"

    def __init__(self, *, slots: int, backoff: Backoff, address: str | None, gpus_per_job: float = 0.0,
                 wait_seconds: float = CONNECT_WAIT_SECONDS, stop=None) -> None:
        try:
            import ray
        except ImportError as exc:
            from forgetd.errors import ConfigError

            raise ConfigError("Ray is not installed here: pip install 'forgetd[ray]', or use --executor local",
                              field="--executor") from exc

        self.slots = slots
        self.backoff = backoff
        self.gpus_per_job = gpus_per_job
        if not ray.is_initialized():
            connect(address, wait_seconds=wait_seconds, stop=stop)
        self._actor_cls = ray.remote(max_concurrency=2)(_JobActor)
        self._watched: dict[int, tuple[Any, Claim | None, str]] = {}

    def start(self, ctx, claim: Claim) -> None:
        import ray

        from forgetd.jobs import queue

        name = actor_name(claim.job_id, claim.attempt)
        actor = self._actor_cls.options(
            name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=1,
            num_gpus=self.gpus_per_job, runtime_env={"env_vars": _forgetd_env()},
        ).remote()
        ray.get(actor.start.remote(claim), timeout=120)
        with ctx.session() as s:
            queue.set_executor_ref(s, claim, f"ray:{name}")
        self._watched[claim.job_id] = (actor, claim, name)

    def adopt(self, ctx, job) -> bool:
        import ray

        ref = job.executor_ref or ""
        if not ref.startswith("ray:") or job.id in self._watched:
            return False
        try:
            actor = ray.get_actor(ref[4:], namespace=NAMESPACE)
        except ValueError:
            return False  # gone: the lease will expire and the reaper retries the job
        self._watched[job.id] = (actor, None, ref[4:])
        return True

    def poll(self, ctx) -> list[tuple[int, str]]:
        import ray

        from forgetd.jobs.runner import settle_failure

        done = []
        for job_id, (actor, claim, name) in list(self._watched.items()):
            try:
                state = ray.get(actor.status.remote(), timeout=10)
            except ray.exceptions.GetTimeoutError:
                continue
            except ray.exceptions.RayActorError:
                state = {"state": "crashed", "error": "ray actor died"}
            if state["state"] == "running":
                continue
            del self._watched[job_id]
            if state["state"] == "crashed" and claim is not None:
                settle_failure(ctx, claim, error=f"ray actor {name}: {state.get('error')}", retryable=True,
                               backoff=self.backoff)
            done.append((job_id, state.get("outcome", state["state"])))
            try:
                ray.kill(actor)
            except Exception:
                pass
        return done

    def running(self) -> int:
        return len(self._watched)

    def shutdown(self, ctx, grace_seconds: float) -> None:
        import time

        deadline = time.monotonic() + grace_seconds
        while self._watched and time.monotonic() < deadline:
            self.poll(ctx)
            time.sleep(0.5)
        # Actors still running hold their own leases and outlive this daemon: the next one adopts them.
        self._watched.clear()
