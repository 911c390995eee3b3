"""Lineage queries: how a request was honoured, and which served versions held a subject's data."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from forgetd.db.models import (
    Adapter,
    AdapterRequest,
    AliasHistory,
    Checkpoint,
    CheckpointCoverage,
    Evaluation,
    LineageEdge,
    Request,
)
from forgetd.enums import RequestKind
from forgetd.serving import coverage_ids

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


def _edges_touching(s: "Session", kind: str, ident: str) -> list[dict[str, str]]:
    rows = s.execute(
        select(LineageEdge).where(
            ((LineageEdge.src_kind == kind) & (LineageEdge.src_id == ident))
            | ((LineageEdge.dst_kind == kind) & (LineageEdge.dst_id == ident))
        ).order_by(LineageEdge.id)
    ).scalars()
    return [
        {"src": f"{e.src_kind}:{e.src_id}", "relation": e.relation, "dst": f"{e.dst_kind}:{e.dst_id}"} for e in rows
    ]


def for_request(s: "Session", request: Request) -> dict[str, Any]:
    """Request → adapters → checkpoints that carry it → when each was served, with the evidence."""
    adapters = s.execute(
        select(Adapter).join(AdapterRequest, AdapterRequest.adapter_id == Adapter.id).where(
            AdapterRequest.request_id == request.id
        ).order_by(Adapter.id)
    ).scalars().all()
    checkpoints = s.execute(
        select(Checkpoint)
        .join(CheckpointCoverage, CheckpointCoverage.checkpoint_id == Checkpoint.id)
        .where(CheckpointCoverage.request_id == request.id)
        .order_by(Checkpoint.version)
    ).scalars().all()
    served = _served_intervals(s, request.model_id)
    evaluations = s.execute(
        select(Evaluation).where(Evaluation.request_id == request.id).order_by(Evaluation.id)
    ).scalars().all()
    first_served = min(
        (iv["from"] for iv in served if iv["checkpoint_id"] in {c.id for c in checkpoints}), default=None
    )
    edges = _edges_touching(s, "request", request.public_id)
    for adapter in adapters:
        edges += [e for e in _edges_touching(s, "adapter", adapter.sha256) if e not in edges]
    return {
        "request": request.public_id,
        "model": request.model.name,
        "status": request.status.value,
        "honoured_at": first_served.isoformat() if first_served else None,
        "adapters": [
            {"sha256": a.sha256, "recipe": a.recipe, "status": a.status, "trained_against_id": a.trained_against_id}
            for a in adapters
        ],
        "checkpoints": [
            {
                "version": c.version,
                "status": c.status,
                "content_id": c.content_id,
                "served": [
                    {"alias": iv["alias"], "from": iv["from"].isoformat(), "to": iv["to"].isoformat() if iv["to"] else None}
                    for iv in served
                    if iv["checkpoint_id"] == c.id
                ],
            }
            for c in checkpoints
        ],
        "evaluations": [
            {"target": f"{e.target_kind}:{e.target_id}", "metric": e.metric, "value": e.value,
             "threshold": e.threshold, "passed": e.passed}
            for e in evaluations
        ],
        "edges": edges,
    }


def _served_intervals(s: "Session", model_id: int) -> list[dict[str, Any]]:
    """[from, to) intervals during which each checkpoint was behind each alias."""
    history = s.execute(
        select(AliasHistory).where(AliasHistory.model_id == model_id).order_by(AliasHistory.id)
    ).scalars().all()
    intervals: list[dict[str, Any]] = []
    open_by_alias: dict[str, dict[str, Any]] = {}
    for move in history:
        current = open_by_alias.get(move.alias)
        if current is not None:
            current["to"] = move.at
        interval = {"alias": move.alias, "checkpoint_id": move.to_checkpoint_id, "from": move.at, "to": None}
        intervals.append(interval)
        open_by_alias[move.alias] = interval
    return intervals


def for_subject(s: "Session", subject_ref: str, *, now: datetime) -> dict[str, Any]:
    """For each model a subject's data-erasure request targets: every served interval, and whether the
    checkpoint then served still held the subject's data (it did until one covering the request)."""
    requests = s.execute(
        select(Request).where(Request.subject_ref == subject_ref, Request.kind == RequestKind.data).order_by(Request.id)
    ).scalars().all()
    models: dict[int, dict[str, Any]] = {}
    for request in requests:
        if request.canonical_request_id is not None:
            continue  # a duplicate is honoured through its canonical request
        entry = models.setdefault(
            request.model_id, {"model": request.model.name, "requests": [], "served": [], "data_served_until": None}
        )
        entry["requests"].append({"id": request.public_id, "status": request.status.value})
    for model_id, entry in models.items():
        request_ids = set(
            s.execute(
                select(Request.id).where(Request.public_id.in_([r["id"] for r in entry["requests"]]))
            ).scalars()
        )
        versions = {c.id: c for c in s.execute(select(Checkpoint).where(Checkpoint.model_id == model_id)).scalars()}
        holding_until = None
        still_holding = False
        for iv in _served_intervals(s, model_id):
            covered = coverage_ids(s, iv["checkpoint_id"])
            holds = not request_ids <= covered
            entry["served"].append(
                {
                    "alias": iv["alias"],
                    "version": versions[iv["checkpoint_id"]].version,
                    "from": iv["from"].isoformat(),
                    "to": iv["to"].isoformat() if iv["to"] else None,
                    "contains_subject_data": holds,
                }
            )
            if holds:
                if iv["to"] is None:
                    still_holding = True
                else:
                    holding_until = max(holding_until or iv["to"], iv["to"])
        entry["data_served_until"] = "still served" if still_holding else (
            holding_until.isoformat() if holding_until else None
        )
    return {"subject_ref": subject_ref, "models": list(models.values())}

