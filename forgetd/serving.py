"""Checkpoints and serving aliases (DESIGN 4 and 10).

Invariant: an alias never points at a checkpoint that lacks a request already `completed` for its model.
It is checked inside the transaction that moves the alias, so a promotion or rollback that would
resurrect forgotten data is refused, whoever asks.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from forgetd import audit
from forgetd.db.models import (
    Alias,
    AliasHistory,
    Checkpoint,
    CheckpointCoverage,
    LineageEdge,
    Model,
    Request,
)
from forgetd.errors import DomainError, NotFoundError
from forgetd.lifecycle import RequestStatus

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

DEFAULT_ALIAS = "prod"
BASE_METHOD = "base"


def add_edge(s: "Session", src: tuple[str, str], relation: str, dst: tuple[str, str], *, now: datetime) -> None:
    """Lineage edges are facts; recording one twice is a no-op."""
    exists = s.execute(
        select(LineageEdge.id).where(
            LineageEdge.src_kind == src[0],
            LineageEdge.src_id == src[1],
            LineageEdge.relation == relation,
            LineageEdge.dst_kind == dst[0],
            LineageEdge.dst_id == dst[1],
        )
    ).first()
    if exists is None:
        s.add(
            LineageEdge(src_kind=src[0], src_id=src[1], relation=relation, dst_kind=dst[0], dst_id=dst[1], created_at=now)
        )


def checkpoint_ref(checkpoint: Checkpoint) -> tuple[str, str]:
    return ("checkpoint", f"{checkpoint.model.name}@v{checkpoint.version}")


def create_base_checkpoint(s: "Session", model: Model, *, actor: str, now: datetime) -> Checkpoint:
    """Version 0 is the pristine base; the default alias starts there."""
    from forgetd.compose import content_id

    checkpoint = Checkpoint(
        model=model,
        version=0,
        parent_id=None,
        manifest={"adapters": [], "method": BASE_METHOD},
        content_id=content_id(model.base_sha256, [], dtype="native", versions={}),
        uri=model.base_uri,
        status="candidate",
        created_at=now,
    )
    s.add(checkpoint)
    s.flush()
    move_alias(s, model, checkpoint, actor=actor, reason_code="registered", now=now)
    return checkpoint


def alias_target(s: "Session", model_id: int, alias: str = DEFAULT_ALIAS) -> Checkpoint | None:
    row = s.get(Alias, (model_id, alias))
    return s.get(Checkpoint, row.checkpoint_id) if row else None


def served_checkpoint(s: "Session", model: Model, alias: str = DEFAULT_ALIAS) -> Checkpoint:
    checkpoint = alias_target(s, model.id, alias)
    if checkpoint is None:
        raise NotFoundError(f"model {model.name} has no alias {alias}", field="--alias")
    return checkpoint


def coverage_ids(s: "Session", checkpoint_id: int) -> set[int]:
    return set(
        s.execute(select(CheckpointCoverage.request_id).where(CheckpointCoverage.checkpoint_id == checkpoint_id)).scalars()
    )


def missing_completed(s: "Session", model_id: int, checkpoint_id: int, *, extra_completed: set[int] = frozenset()) -> list[str]:
    """Public ids of completed requests of the model that the checkpoint does not carry."""
    completed = set(
        s.execute(
            select(Request.id).where(Request.model_id == model_id, Request.status == RequestStatus.completed)
        ).scalars()
    ) | set(extra_completed)
    missing = completed - coverage_ids(s, checkpoint_id)
    if not missing:
        return []
    return sorted(s.execute(select(Request.public_id).where(Request.id.in_(missing))).scalars())


def move_alias(
    s: "Session",
    model: Model,
    checkpoint: Checkpoint,
    *,
    actor: str,
    reason_code: str,
    now: datetime,
    alias: str = DEFAULT_ALIAS,
) -> AliasHistory:
    """Point `alias` at `checkpoint`, refusing if that would serve data of a completed request again."""
    if checkpoint.model_id != model.id:
        raise DomainError("the checkpoint belongs to another model", field="checkpoint")
    if checkpoint.status in ("building", "rejected"):
        raise DomainError(f"checkpoint v{checkpoint.version} is {checkpoint.status} and cannot be served", field="checkpoint")
    # Lock the alias row so two movers cannot interleave their checks.
    row = s.execute(
        select(Alias).where(Alias.model_id == model.id, Alias.name == alias).with_for_update()
    ).scalar_one_or_none()
    missing = missing_completed(s, model.id, checkpoint.id)
    if missing:
        shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
        raise DomainError(
            f"refused: checkpoint v{checkpoint.version} lacks completed request(s) {shown}; serving it would "
            "resurrect forgotten data",
            field="checkpoint",
        )
    previous = s.get(Checkpoint, row.checkpoint_id) if row else None
    if previous is not None and previous.id == checkpoint.id:
        raise DomainError(f"{alias} already serves v{checkpoint.version}", field="checkpoint")
    if row is None:
        row = Alias(model_id=model.id, name=alias, checkpoint_id=checkpoint.id, updated_at=now)
        s.add(row)
    else:
        row.checkpoint_id = checkpoint.id
        row.updated_at = now
    if previous is not None and previous.status == "served":
        still_served = s.execute(
            select(Alias.name).where(Alias.checkpoint_id == previous.id, Alias.name != alias)
        ).first()
        if still_served is None:
            previous.status = "retired"
    checkpoint.status = "served"
    history = AliasHistory(
        model_id=model.id,
        alias=alias,
        from_checkpoint_id=previous.id if previous else None,
        to_checkpoint_id=checkpoint.id,
        actor=actor,
        reason_code=reason_code,
        at=now,
    )
    s.add(history)
    add_edge(s, checkpoint_ref(checkpoint), "served_as", ("alias", f"{model.name}:{alias}"), now=now)
    s.flush()
    # Every move re-checks the model's live explanation records on the new checkpoint (DESIGN 11).
    from forgetd.jobs import queue

    queue.enqueue(s, "revalidate", now=now, model_id=model.id, args={"checkpoint_id": checkpoint.id},
                  dedupe_key=f"revalidate:{model.id}:{checkpoint.id}", priority=60)
    audit.append(
        s,
        actor=actor,
        action="alias.moved",
        resource_type="model",
        resource_id=model.name,
        payload={
            "alias": alias,
            "from_version": previous.version if previous else None,
            "to_version": checkpoint.version,
            "to_content_id": checkpoint.content_id,
            "reason_code": reason_code,
        },
        at=now,
    )
    return history


def checkpoint_dict(s: "Session", checkpoint: Checkpoint) -> dict[str, Any]:
    aliases = list(s.execute(select(Alias.name).where(Alias.checkpoint_id == checkpoint.id)).scalars())
    covered = sorted(
        s.execute(
            select(Request.public_id)
            .join(CheckpointCoverage, CheckpointCoverage.request_id == Request.id)
            .where(CheckpointCoverage.checkpoint_id == checkpoint.id)
        ).scalars()
    )
    parent = s.get(Checkpoint, checkpoint.parent_id) if checkpoint.parent_id else None
    return {
        "model": checkpoint.model.name,
        "version": checkpoint.version,
        "status": checkpoint.status,
        "status_reason": checkpoint.status_reason,
        "aliases": aliases,
        "parent_version": parent.version if parent else None,
        "content_id": checkpoint.content_id,
        "uri": checkpoint.uri,
        "adapters": [a["sha256"] for a in checkpoint.manifest.get("adapters", [])],
        "manifest": checkpoint.manifest,
        "covers": covered,
        "created_at": checkpoint.created_at.isoformat(),
    }


def get_checkpoint(s: "Session", model: Model, version: int) -> Checkpoint:
    checkpoint = s.execute(
        select(Checkpoint).where(Checkpoint.model_id == model.id, Checkpoint.version == version)
    ).scalar_one_or_none()
    if checkpoint is None:
        raise NotFoundError(f"model {model.name} has no checkpoint v{version}", field="VERSION")
    return checkpoint
