"""`python -m forgetd.jobs.worker JOB_ID --owner O --attempt N`: run one claimed job in this process.

Started by the local executor (stdout and stderr go to the job's log), forked from its fork server
(`run_forked`) or as a fresh interpreter. The worker holds the lease the daemon took for it: it
heartbeats, publishes under the lease, and settles the job itself, so it needs nothing from the daemon
once started.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _progress(event: dict) -> None:
    keys = ("stage", "phase", "request", "model", "step", "max_steps", "loss", "forget_qa_acc", "mia_auc")
    print(" ".join(f"{k}={event[k]}" for k in keys if k in event), flush=True)


def claim_from_db(ctx, job_id: int, owner: str, attempt: int, lease_seconds: float):
    from forgetd.db.models import Job
    from forgetd.jobs.queue import Claim

    with ctx.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            return None
        return Claim(job_id=job.id, attempt=attempt, owner=owner, kind=job.kind, model_id=job.model_id,
                     request_ids=tuple(job.request_ids or ()), args=dict(job.args or {}), lease_seconds=lease_seconds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m forgetd.jobs.worker")
    ap.add_argument("job_id", type=int)
    ap.add_argument("--owner", required=True)
    ap.add_argument("--attempt", type=int, required=True)
    ap.add_argument("--lease-seconds", type=float, required=True)
    args = ap.parse_args(argv)

    from forgetd import api, safe_traceback
    from forgetd.config import load_settings
    from forgetd.jobs.executors.local import log_path_for, store_log
    from forgetd.jobs.runner import run_claim
    from forgetd.jobs.service import backoff_from_settings

    if not safe_traceback.debugging():
        # anything that escapes run_claim lands in the job's log, which is kept: no exception messages there
        sys.excepthook = lambda _type, exc, _tb: print(safe_traceback.withheld(exc), file=sys.stderr)

    threads = os.environ.get("FORGETD_TORCH_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    settings = load_settings()
    ctx = api.open_context(settings)
    claim = claim_from_db(ctx, args.job_id, args.owner, args.attempt, args.lease_seconds)
    if claim is None:
        print(f"job {args.job_id} does not exist", file=sys.stderr)
        return 3
    started = time.perf_counter()
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
    print(f"worker pid {os.getpid()} job {claim.job_id} kind {claim.kind} attempt {claim.attempt}"
          f" slot {os.environ.get('FORGETD_JOB_SLOT', '-')}" + (f" gpu {gpu}" if gpu is not None else ""), flush=True)
    log_path = log_path_for(ctx, claim)

    def log_uri():
        print(f"finished in {time.perf_counter() - started:.1f}s", flush=True)
        sys.stdout.flush()
        return store_log(ctx, log_path)

    outcome, _ = run_claim(ctx, claim, backoff=backoff_from_settings(settings), progress=_progress, log_uri=log_uri)
    print(f"outcome {outcome}", flush=True)
    ctx.close()
    return 0


def run_forked(argv: list[str], env: dict[str, str], log_path: str) -> None:
    """The same worker, in a process the local executor's fork server made (torch & co. already imported):
    its own session, its output appended to the job's log, the environment the executor chose."""
    os.setsid()  # as start_new_session does for a spawned worker: a terminal's Ctrl-C reaches the daemon only
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    sys.exit(main(argv))


if __name__ == "__main__":
    raise SystemExit(main())
