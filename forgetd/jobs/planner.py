"""Turn request states into jobs. Safe to run as often as wanted from any process: every job has a
dedupe key that is unique among live jobs, so planning twice enqueues once.

Continual forgetting (DESIGN 9): a model trains its next adapter only when none of its requests is
between training and promotion, so each adapter is trained against the checkpoint that already carries
the previous ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from forgetd.db.models import Job, Model, Request
from forgetd.jobs import queue
from forgetd.jobs.kinds import KINDS
from forgetd.lifecycle import RequestStatus as St

IN_FLIGHT = (St.training, St.evaluating, St.awaiting_compose, St.composing, St.verifying)
ALL = "all"


@dataclass
class Plan:
    scheduled: list[str] = field(default_factory=list)
    enqueued: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"scheduled": self.scheduled, "enqueued": self.enqueued}


def _enqueue(s, plan: Plan, kind: str, *, now, model_id: int, request_ids=(), dedupe_key: str,
             lock_key: str | None = None, max_attempts: int) -> None:
    job, created = queue.enqueue(s, kind, now=now, model_id=model_id, request_ids=request_ids, dedupe_key=dedupe_key,
                                 lock_key=lock_key, priority=KINDS[kind].priority, max_attempts=max_attempts)
    if created:
        plan.enqueued.append({"job": job.id, "kind": kind, "requests": list(request_ids)})


def _by_deadline(query):
    return query.order_by(func.coalesce(Request.extended_due_at, Request.due_at), Request.id)


def _batch_size(ctx, family: str, policy_name: str) -> int:
    from forgetd.policies import get_policy
    from forgetd.training.registry import get_recipe

    recipe_name = get_policy(ctx.settings.policies_dir, policy_name).recipes.get(family)
    if recipe_name is None:
        return 1
    return get_recipe(ctx.settings.adapters_dir, recipe_name).train.batch_requests


def models_waiting_to_compose(s, policies: set[str] | str = ALL) -> list[int]:
    query = select(Request.model_id).where(Request.status == St.awaiting_compose).distinct()
    if policies != ALL:
        query = query.where(Request.policy.in_(sorted(policies)))
    return sorted(s.execute(query).scalars())


def plan(ctx, *, now, compose: set[str] | str = ALL, max_attempts: int = 5) -> Plan:
    """One planning pass in one transaction. `compose` says which policies' waiting requests may be
    composed now (all of them for `tick`; the service passes the policies whose cadence fired)."""
    from forgetd import pipeline

    out = Plan()
    out.scheduled = pipeline.schedule(ctx, now=now)
    with ctx.session() as s:
        models = {m.id: m for m in s.execute(select(Model)).scalars()}
        busy = set(s.execute(select(Request.model_id).where(Request.status.in_(IN_FLIGHT)).distinct()).scalars())
        live_train = set(s.execute(
            select(Job.model_id).where(Job.kind == "train", Job.status.in_(queue.LIVE))).scalars())

        # train: the earliest-due scheduled requests of each idle model, up to the recipe's batch size
        scheduled = s.execute(_by_deadline(
            select(Request.public_id, Request.model_id, Request.policy).where(Request.status == St.scheduled))).all()
        batches: dict[int, list[str]] = {}
        batch_policy: dict[int, str] = {}
        for public_id, model_id, policy_name in scheduled:
            if model_id in busy or model_id in live_train:
                continue
            if batch_policy.setdefault(model_id, policy_name) != policy_name:
                continue
            batch = batches.setdefault(model_id, [])
            if len(batch) < _batch_size(ctx, models[model_id].family, policy_name):
                batch.append(public_id)
        for model_id, batch in batches.items():
            _enqueue(s, out, "train", now=now, model_id=model_id, request_ids=batch,
                     dedupe_key=f"train:{model_id}:{','.join(batch)}", max_attempts=max_attempts)

        # evaluate: every request whose adapter is trained, one job per model (one worker start-up)
        evaluating: dict[int, list[str]] = {}
        for public_id, model_id in s.execute(_by_deadline(
                select(Request.public_id, Request.model_id).where(Request.status == St.evaluating))).all():
            evaluating.setdefault(model_id, []).append(public_id)
        for model_id, pids in evaluating.items():
            _enqueue(s, out, "evaluate", now=now, model_id=model_id, request_ids=pids,
                     dedupe_key=f"evaluate:{model_id}", max_attempts=max_attempts)

        # compose: when the policy's cadence allows it, or to finish one a crash interrupted; never while
        # an adapter of the model is still being trained or evaluated (a batch composes together)
        settling = set(s.execute(select(Request.model_id).where(
            Request.status.in_([St.training, St.evaluating])).distinct()).scalars())
        to_compose = set(models_waiting_to_compose(s, compose)) - settling
        to_compose |= set(s.execute(select(Request.model_id).where(Request.status == St.composing).distinct()).scalars())
        for model_id in sorted(to_compose):
            _enqueue(s, out, "compose", now=now, model_id=model_id, dedupe_key=f"compose:{model_id}",
                     lock_key=f"merge:{model_id}", max_attempts=max_attempts)

        # promote: verify the candidate and move the alias (serialized with compose per model)
        for model_id in sorted(set(s.execute(
                select(Request.model_id).where(Request.status == St.verifying).distinct()).scalars())):
            _enqueue(s, out, "promote", now=now, model_id=model_id, dedupe_key=f"promote:{model_id}",
                     lock_key=f"merge:{model_id}", max_attempts=max_attempts)
    return out
