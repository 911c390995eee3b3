"""Where a claimed job runs. Every executor runs the same `forgetd.jobs.runner.run_claim`; they differ
only in isolation: a thread of the daemon (inline), a subprocess per job (local), or a Ray actor (ray)."""

from __future__ import annotations

from typing import Any, Protocol

from forgetd.errors import InputError
from forgetd.jobs.executors.ray import CONNECT_WAIT_SECONDS
from forgetd.jobs.queue import Claim

EXECUTORS = ("local", "inline", "ray")


class StoppedWhileStarting(Exception):
    """The daemon was told to stop (SIGTERM) before its executor was ready, e.g. while waiting for Ray."""


class Executor(Protocol):
    name: str
    slots: int

    def start(self, ctx, claim: Claim) -> None:
        """Begin running the claim; return at once."""

    def poll(self, ctx) -> list[tuple[int, str]]:
        """(job id, outcome) of the jobs that finished since the last poll."""

    def running(self) -> int:
        """Jobs this executor is running or watching now."""

    def adopt(self, ctx, job: Any) -> bool:
        """Watch a job an earlier daemon started and that is still alive; False when it cannot."""

    def shutdown(self, ctx, grace_seconds: float) -> None:
        """Let running jobs finish within the grace period, then stop them and release their leases."""


def make_executor(name: str, *, slots: int, backoff, gpus: list[str] | None = None,
                  ray_address: str | None = None, ray_wait_seconds: float = CONNECT_WAIT_SECONDS, worker_start: str,
                  stop=None) -> Executor:
    if name == "inline":
        from forgetd.jobs.executors.inline import InlineExecutor

        return InlineExecutor(slots=slots, backoff=backoff)
    if name == "local":
        from forgetd.jobs.executors.local import LocalExecutor

        return LocalExecutor(slots=slots, backoff=backoff, gpus=gpus or [], worker_start=worker_start)
    if name == "ray":
        from forgetd.jobs.executors.ray import RayExecutor

        return RayExecutor(slots=slots, backoff=backoff, address=ray_address, gpus_per_job=1.0 if gpus else 0.0,
                           wait_seconds=ray_wait_seconds, stop=stop)
    raise InputError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}", field="executor")
