"""Hash-chained, append-only audit trail (DESIGN 12).

Each row's hash covers its fields, the digest of its payload and the previous row's hash; the single
`audit_chain_head` row holds the tip and is locked by every append, so concurrent writers form one
chain. Payloads carry ids and codes only, never personal data.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from forgetd.db.models import AuditChainHead, AuditEvent, Request

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

GENESIS_HASH = "0" * 64


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _timestamp(at: datetime) -> str:
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def row_hash(
    *,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    resource_type: str,
    resource_id: str,
    payload_digest: str,
    prev_hash: str,
) -> str:
    fields = {
        "seq": seq,
        "at": _timestamp(at),
        "actor": actor,
        "action": action,
        "resource_type": resource_type,
        "resource_id": resource_id,
        "payload_digest": payload_digest,
    }
    return _sha256(canonical_json(fields) + prev_hash)


def _lock_head(session: "Session") -> AuditChainHead:
    head = session.execute(select(AuditChainHead).where(AuditChainHead.id == 1).with_for_update()).scalar_one()
    return head


def append(
    session: "Session",
    *,
    actor: str,
    action: str,
    resource_type: str,
    resource_id: str,
    payload: dict[str, Any],
    at: datetime,
) -> AuditEvent:
    """Append one event in the caller's transaction (the caller commits or rolls back both)."""
    payload_text = canonical_json(payload)
    digest = _sha256(payload_text)
    head = _lock_head(session)
    seq = head.seq + 1
    # Microseconds survive both databases; anything finer would break re-hashing on read.
    at = at.astimezone(timezone.utc)
    event = AuditEvent(
        seq=seq,
        at=at,
        actor=actor,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        payload=payload_text,
        payload_digest=digest,
        prev_hash=head.hash,
        hash=row_hash(
            seq=seq,
            at=at,
            actor=actor,
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            payload_digest=digest,
            prev_hash=head.hash,
        ),
    )
    session.add(event)
    head.seq = seq
    head.hash = event.hash
    session.flush()
    return event


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    bad_seq: int | None = None
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "bad_seq": self.bad_seq, "problem": self.problem}


def verify(session: "Session") -> VerifyResult:
    """Walk the chain from seq 1; report the first row that does not hold."""
    expected_seq = 1
    prev_hash = GENESIS_HASH
    checked = 0
    rows = session.execute(select(AuditEvent).order_by(AuditEvent.seq).execution_options(yield_per=1000)).scalars()
    for event in rows:
        if event.seq != expected_seq:
            return VerifyResult(False, checked, expected_seq, f"seq {expected_seq} is missing (next row is {event.seq})")
        if event.prev_hash != prev_hash:
            return VerifyResult(False, checked, event.seq, "prev_hash does not match the previous row's hash")
        if _sha256(event.payload) != event.payload_digest:
            return VerifyResult(False, checked, event.seq, "payload does not match its digest")
        recomputed = row_hash(
            seq=event.seq,
            at=event.at,
            actor=event.actor,
            action=event.action,
            resource_type=event.resource_type,
            resource_id=event.resource_id,
            payload_digest=event.payload_digest,
            prev_hash=event.prev_hash,
        )
        if recomputed != event.hash:
            return VerifyResult(False, checked, event.seq, "row hash does not match its contents")
        prev_hash = event.hash
        expected_seq += 1
        checked += 1
    head = session.get(AuditChainHead, 1)
    last_seq = expected_seq - 1
    if head is None:
        return VerifyResult(False, checked, None, "the audit chain head row is missing")
    if head.seq > last_seq:
        return VerifyResult(False, checked, last_seq + 1, f"seq {last_seq + 1} is missing (chain head says {head.seq})")
    if head.seq < last_seq:
        return VerifyResult(False, checked, head.seq + 1, f"seq {head.seq + 1} is beyond the chain head ({head.seq})")
    if head.hash != prev_hash:
        return VerifyResult(False, checked, last_seq, "chain head hash does not match the last row")
    return VerifyResult(True, checked)


def _event_dict(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "at": _timestamp(event.at),
        "actor": event.actor,
        "action": event.action,
        "resource_type": event.resource_type,
        "resource_id": event.resource_id,
        "payload": json.loads(event.payload),
        "payload_digest": event.payload_digest,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def events_for_request(public_id: str):
    return (
        select(AuditEvent)
        .where(AuditEvent.resource_type == "request", AuditEvent.resource_id == public_id)
        .order_by(AuditEvent.seq)
    )


def events_for_subject(subject_ref: str):
    request_ids = select(Request.public_id).where(Request.subject_ref == subject_ref)
    return (
        select(AuditEvent)
        .where(AuditEvent.resource_type == "request", AuditEvent.resource_id.in_(request_ids))
        .order_by(AuditEvent.seq)
    )


def all_events():
    return select(AuditEvent).order_by(AuditEvent.seq)


def log(session: "Session", statement, *, limit: int | None = None) -> list[dict[str, Any]]:
    if limit is not None:
        statement = statement.limit(limit)
    return [_event_dict(e) for e in session.execute(statement).scalars()]


EXPORT_COLUMNS = ("seq", "at", "actor", "action", "resource_type", "resource_id", "payload", "payload_digest", "prev_hash", "hash")


def export_lines(session: "Session", fmt: str) -> Iterator[str]:
    """Stream the whole trail as JSON lines or CSV (payloads as canonical JSON text)."""
    rows = session.execute(all_events().execution_options(yield_per=1000)).scalars()
    if fmt == "jsonl":
        for event in rows:
            yield canonical_json(_event_dict(event)) + "\n"
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    yield buffer.getvalue()
    for event in rows:
        buffer.seek(0)
        buffer.truncate()
        record = _event_dict(event)
        record["payload"] = event.payload
        writer.writerow([record[c] for c in EXPORT_COLUMNS])
        yield buffer.getvalue()
