"""Job kinds: what each kind runs, and what giving up on it means for the requests it carries.

Each handler is a pipeline stage run under a fenced context (every transaction it opens first proves
the lease is still held), so a worker that lost its lease publishes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from forgetd.api import utcnow
from forgetd.lifecycle import RequestStatus as St

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Kind:
    name: str
    run: Callable[..., dict[str, Any]]
    # Request states a job of this kind owns: if the job is given up, requests still there are failed.
    owns: frozenset[St]
    per_model: bool  # owned requests are found by model (compose, promote) rather than by id
    priority: int


def _model_name(ctx, model_id: int) -> str:
    from forgetd.db.models import Model

    with ctx.session() as s:
        return s.get(Model, model_id).name


def _train(ctx, claim, progress: Progress | None) -> dict[str, Any]:
    from forgetd import pipeline

    sha = pipeline.train(ctx, list(claim.request_ids), now_fn=utcnow, progress=progress, resume=True)
    return {"adapter": sha, "requests": list(claim.request_ids)}


def _evaluate(ctx, claim, progress: Progress | None) -> dict[str, Any]:
    from forgetd import pipeline

    passed = {pid: pipeline.evaluate_adapter(ctx, pid, now_fn=utcnow) for pid in claim.request_ids}
    return {"passed": [p for p, ok in passed.items() if ok], "requests": list(claim.request_ids)}


def _compose(ctx, claim, progress: Progress | None) -> dict[str, Any]:
    from forgetd import pipeline

    name = _model_name(ctx, claim.model_id)
    if progress:
        progress({"stage": "compose", "model": name})
    return {"candidate": pipeline.compose(ctx, name, now_fn=utcnow, resume=True)}


def _promote(ctx, claim, progress: Progress | None) -> dict[str, Any]:
    from forgetd import pipeline

    name = _model_name(ctx, claim.model_id)
    if progress:
        progress({"stage": "verify", "model": name})
    return {"completed": pipeline.verify_and_promote(ctx, name, now_fn=utcnow)}


def _revalidate(ctx, claim, progress: Progress | None) -> dict[str, Any]:
    """Re-check the model's live explanation records on the checkpoint an alias moved to (a cheap no-op
    when it has none). Owns no request states."""
    from forgetd.explain import records

    if progress:
        progress({"stage": "revalidate", "model_id": claim.model_id})
    return records.revalidate(ctx, claim.model_id, int(claim.args["checkpoint_id"]))


def _selftest(ctx, claim, progress: Progress | None) -> dict[str, Any]:
    """A worker-fleet check: holds its lease for `seconds`, then publishes a content-addressed artifact
    under the lease. Used to prove the queue's guarantees on real processes without training a model."""
    import tempfile
    from pathlib import Path

    seconds = float(claim.args.get("seconds", 0.0))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    with tempfile.TemporaryDirectory(dir=ctx.settings.home) as tmp:
        (Path(tmp) / "selftest.txt").write_text(
            f"job {claim.job_id} attempt {claim.attempt} token {claim.args.get('token', '')}\n")
        sha = ctx.store.put_dir("log", Path(tmp))
    with ctx.session():  # fenced: proves the lease is still held when the artifact is published
        pass
    return {"artifact": sha}


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("train", _train, frozenset({St.scheduled, St.training}), per_model=False, priority=50),
        Kind("evaluate", _evaluate, frozenset({St.evaluating}), per_model=False, priority=40),
        Kind("compose", _compose, frozenset({St.composing}), per_model=True, priority=30),
        Kind("promote", _promote, frozenset({St.verifying}), per_model=True, priority=20),
        Kind("revalidate", _revalidate, frozenset(), per_model=False, priority=60),
        Kind("selftest", _selftest, frozenset(), per_model=False, priority=100),
    )
}
HEAVY = frozenset({"train", "evaluate", "compose", "promote", "revalidate"})  # load models: worth a subprocess


def give_up(s, job, *, now, actor: str, why: str) -> list[str]:
    """A job that will not run again (dead, failed, canceled) fails the requests it still holds, so no
    request is left in a working state that nothing will move."""
    from sqlalchemy import select

    from forgetd import lifecycle
    from forgetd.db.models import Request

    kind = KINDS.get(job.kind)
    if kind is None or not kind.owns:
        return []
    query = select(Request).where(Request.status.in_(list(kind.owns))).with_for_update(of=Request)
    if kind.per_model:
        query = query.where(Request.model_id == job.model_id)
    else:
        query = query.where(Request.public_id.in_(list(job.request_ids)))
    failed = []
    for request in s.execute(query.order_by(Request.id)).scalars():
        lifecycle.move(s, request, St.failed, actor=actor, now=now, policy=None, reason_code=f"job_{job.status}",
                       reason=f"{job.kind} job {job.id} {job.status} after {job.attempts} attempt(s): {why}"[:2000])
        failed.append(request.public_id)
    return failed
