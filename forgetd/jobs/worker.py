"""`python -m forgetd.jobs.worker JOB_ID --owner O --attempt N`: run one claimed job in this process.

Started by the local executor (stdout and stderr go to the job's log). The worker holds the lease the
daemon took for it: it heartbeats, publishes under the lease, and settles the job itself, so it needs
nothing from the daemon once started.
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

    from forgetd import api
    from forgetd.config import load_settings
    from forgetd.jobs.executors.local import log_path_for, store_log
    from forgetd.jobs.runner import run_claim
    from forgetd.jobs.service import backoff_from_settings

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
    print(f"worker pid {os.getpid()} job {claim.job_id} kind {claim.kind} attempt {claim.attempt}", flush=True)
    log_path = log_path_for(ctx, claim)

    def log_uri():
        print(f"finished in {time.perf_counter() - started:.1f}s", flush=True)
        sys.stdout.flush()
        return store_log(ctx, log_path)

    outcome, _ = run_claim(ctx, claim, backoff=backoff_from_settings(settings), progress=_progress, log_uri=log_uri)
    print(f"outcome {outcome}", flush=True)
    ctx.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
