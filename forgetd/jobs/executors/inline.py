"""Jobs as threads of the calling process: `forgetd tick`, tests, and small deployments."""

from __future__ import annotations

import threading

from forgetd.jobs import queue
from forgetd.jobs.queue import Backoff, Claim
from forgetd.jobs.runner import run_claim


class InlineExecutor:
    name = "inline"

    def __init__(self, *, slots: int, backoff: Backoff) -> None:
        self.slots = slots
        self.backoff = backoff
        self._threads: dict[int, tuple[threading.Thread, Claim]] = {}
        self._outcomes: dict[int, str] = {}
        self._lock = threading.Lock()

    def run(self, ctx, claim: Claim, progress=None) -> tuple[str, dict | None]:
        """Synchronously, in the caller's thread (tick)."""
        return run_claim(ctx, claim, backoff=self.backoff, progress=progress)

    def start(self, ctx, claim: Claim) -> None:
        def body() -> None:
            outcome, _ = run_claim(ctx, claim, backoff=self.backoff)
            with self._lock:
                self._outcomes[claim.job_id] = outcome

        thread = threading.Thread(target=body, name=f"job-{claim.job_id}", daemon=True)
        self._threads[claim.job_id] = (thread, claim)
        thread.start()

    def poll(self, ctx) -> list[tuple[int, str]]:
        done = []
        for job_id, (thread, _) in list(self._threads.items()):
            if not thread.is_alive():
                del self._threads[job_id]
                with self._lock:
                    done.append((job_id, self._outcomes.pop(job_id, "unknown")))
        return done

    def running(self) -> int:
        return len(self._threads)

    def adopt(self, ctx, job) -> bool:
        return False  # a thread does not outlive its process

    def shutdown(self, ctx, grace_seconds: float) -> None:
        from forgetd.api import utcnow

        for thread, _ in self._threads.values():
            thread.join(timeout=grace_seconds)
        # Threads cannot be killed: give their leases back; whatever they publish later is fenced out.
        for job_id, (thread, claim) in list(self._threads.items()):
            if thread.is_alive():
                with ctx.session() as s:
                    queue.release(s, claim, now=utcnow(), reason="shutdown")
