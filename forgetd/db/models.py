"""The tables of DESIGN section 4 that exist so far.

Migrations never import this module (revisions are self-contained); `alembic check` compares the
two so they cannot drift apart silently.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from forgetd.db.types import Real, UTCDateTime
from forgetd.enums import RequestKind
from forgetd.lifecycle import RequestStatus


NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _enum(enum_cls, name: str) -> Enum:
    return Enum(
        enum_cls,
        name=name,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    family: Mapped[str] = mapped_column(String(32))
    base_uri: Mapped[str] = mapped_column(Text)
    base_sha256: Mapped[str] = mapped_column(String(64))
    weight_files: Mapped[list] = mapped_column(JSON)
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    registered_by: Mapped[str] = mapped_column(String(128))
    # The model's registered data (retain set, reference set, record ids), stored content-addressed.
    dataset_sha256: Mapped[str | None] = mapped_column(String(64))


class Request(Base):
    __tablename__ = "requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    # keyed digest of the submission, so a reused key with different content is refused
    idempotency_digest: Mapped[str | None] = mapped_column(String(64))
    policy: Mapped[str] = mapped_column(String(64))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    kind: Mapped[RequestKind] = mapped_column(_enum(RequestKind, "request_kind"))
    subject_ref: Mapped[str] = mapped_column(String(64), index=True)
    scope_ref: Mapped[str] = mapped_column(String(64))
    payload_ct: Mapped[bytes] = mapped_column(LargeBinary)
    payload_bytes: Mapped[int] = mapped_column(Integer)
    wrapped_dek: Mapped[bytes | None] = mapped_column(LargeBinary)
    status: Mapped[RequestStatus] = mapped_column(_enum(RequestStatus, "request_status"), index=True)
    status_reason: Mapped[str | None] = mapped_column(Text)
    held_from: Mapped[RequestStatus | None] = mapped_column(_enum(RequestStatus, "request_status"))
    failed_step: Mapped[str | None] = mapped_column(String(32))
    submitted_by: Mapped[str] = mapped_column(String(128))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    extended_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    extension_months: Mapped[int | None] = mapped_column(Integer)
    extension_reason: Mapped[str | None] = mapped_column(Text)
    extension_notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    clock_paused_total: Mapped[int] = mapped_column(BigInteger, default=0)
    clock_paused_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    canonical_request_id: Mapped[int | None] = mapped_column(ForeignKey("requests.id"))
    at_risk_alerted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    breached_alerted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    shredded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    model: Mapped[Model] = relationship(lazy="joined", innerjoin=True)
    canonical: Mapped["Request | None"] = relationship(remote_side="Request.id")

    __table_args__ = (Index("ix_requests_dup_lookup", "subject_ref", "model_id", "kind", "scope_ref"),)

    @property
    def effective_due_at(self) -> datetime:
        return self.extended_due_at or self.due_at


class RequestTransition(Base):
    __tablename__ = "request_transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("requests.id"), index=True)
    from_status: Mapped[RequestStatus | None] = mapped_column(_enum(RequestStatus, "request_status"))
    to_status: Mapped[RequestStatus] = mapped_column(_enum(RequestStatus, "request_status"))
    reason_code: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class AuditEvent(Base):
    """Append-only (triggers refuse UPDATE and DELETE); `hash` chains every row to the previous one."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64), index=True)
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    payload_digest: Mapped[str] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)

    __table_args__ = (Index("ix_audit_events_resource", "resource_type", "resource_id"),)


class AuditChainHead(Base):
    """One row: the last seq and hash. Appenders lock it, so the chain has exactly one tip."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (CheckConstraint("id = 1", name="singleton"),)


ADAPTER_STATUSES = ("trained", "rejected", "composed", "withdrawn")
CHECKPOINT_STATUSES = ("building", "candidate", "rejected", "served", "retired")


def _str_enum(values: tuple[str, ...], name: str) -> Enum:
    return Enum(*values, name=name, validate_strings=True)


class Adapter(Base):
    """A trained forgetting adapter, stored content-addressed (sha256 of its directory)."""

    __tablename__ = "adapters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    recipe: Mapped[str] = mapped_column(String(64))
    trained_against_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id"))
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    uri: Mapped[str] = mapped_column(Text)
    rank: Mapped[int] = mapped_column(Integer)
    target_modules: Mapped[list] = mapped_column(JSON)
    metrics: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(_str_enum(ADAPTER_STATUSES, "adapter_status"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AdapterRequest(Base):
    """Which requests an adapter forgets (one adapter may serve a batch of one model's requests)."""

    __tablename__ = "adapter_requests"

    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"), primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("requests.id"), primary_key=True, index=True)


class Checkpoint(Base):
    """The base plus an ordered manifest of adapters; version 0 of every model is its pristine base."""

    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    version: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id"))
    manifest: Mapped[dict] = mapped_column(JSON)
    content_id: Mapped[str] = mapped_column(String(64))
    uri: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(_str_enum(CHECKPOINT_STATUSES, "checkpoint_status"))
    status_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    model: Mapped[Model] = relationship(lazy="joined", innerjoin=True)

    __table_args__ = (
        UniqueConstraint("model_id", "version", name="uq_checkpoints_model_version"),
        UniqueConstraint("model_id", "content_id", name="uq_checkpoints_model_content"),
    )


class CheckpointCoverage(Base):
    """The requests whose forgetting a checkpoint carries."""

    __tablename__ = "checkpoint_coverage"

    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id"), primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("requests.id"), primary_key=True, index=True)


class Alias(Base):
    __tablename__ = "aliases"

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AliasHistory(Base):
    """Append-only: every alias move, so `lineage subject` can say what was served when."""

    __tablename__ = "alias_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    alias: Mapped[str] = mapped_column(String(32))
    from_checkpoint_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id"))
    to_checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id"))
    actor: Mapped[str] = mapped_column(String(128))
    reason_code: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_alias_history_model_alias", "model_id", "alias", "id"),)


class Evaluation(Base):
    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    target_kind: Mapped[str] = mapped_column(String(16))
    target_id: Mapped[int] = mapped_column(Integer)
    request_id: Mapped[int | None] = mapped_column(ForeignKey("requests.id"), index=True)
    metric: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Real)
    threshold: Mapped[float | None] = mapped_column(Real)
    passed: Mapped[bool | None] = mapped_column(Boolean)
    evidence_uri: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_evaluations_target", "target_kind", "target_id"),)


class LineageEdge(Base):
    __tablename__ = "lineage_edges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    src_kind: Mapped[str] = mapped_column(String(16))
    src_id: Mapped[str] = mapped_column(String(64))
    relation: Mapped[str] = mapped_column(String(32))
    dst_kind: Mapped[str] = mapped_column(String(16))
    dst_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("src_kind", "src_id", "relation", "dst_kind", "dst_id", name="uq_lineage_edges_edge"),
        Index("ix_lineage_edges_dst", "dst_kind", "dst_id"),
    )


JOB_STATUSES = ("queued", "running", "succeeded", "failed", "dead", "canceled")
_LIVE = "status IN ('queued', 'running')"
_RUNNING = "status = 'running'"


class Job(Base):
    """One unit of pipeline work (DESIGN 8). The database is the queue: a claim takes a lease, the
    attempt number is the fencing token, and every effect of a job is published under its lease."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"))
    request_ids: Mapped[list] = mapped_column(JSON)  # public ids only: nothing personal in job arguments
    args: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(_str_enum(JOB_STATUSES, "job_status"))
    priority: Mapped[int] = mapped_column(Integer)
    run_after: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer)
    max_attempts: Mapped[int] = mapped_column(Integer)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dedupe_key: Mapped[str | None] = mapped_column(String(200))
    lock_key: Mapped[str | None] = mapped_column(String(128))
    executor: Mapped[str | None] = mapped_column(String(16))
    executor_ref: Mapped[str | None] = mapped_column(String(200))
    last_error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict | None] = mapped_column(JSON)
    log_uri: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_jobs_claim", "status", "priority", "run_after", "id"),
        Index("uq_jobs_dedupe_live", "dedupe_key", unique=True,
              postgresql_where=text(_LIVE), sqlite_where=text(_LIVE)),
        Index("uq_jobs_lock_running", "lock_key", unique=True,
              postgresql_where=text(_RUNNING), sqlite_where=text(_RUNNING)),
    )


class JobEvent(Base):
    """Append-only: every claim, heartbeat gap, retry, lease loss and completion of every job."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    event: Mapped[str] = mapped_column(String(32))
    attempt: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(128))
    detail: Mapped[dict | None] = mapped_column(JSON)

    __table_args__ = (Index("ix_job_events_job_id", "job_id", "id"),)


EXPLANATION_STATUSES = ("VALID", "AT_RISK", "INVALIDATED", "REISSUED", "ERASED")
EXPLANATION_KINDS = ("counterfactual", "attribution")
EXPLANATION_CHECK_STATUSES = ("VALID", "AT_RISK", "INVALIDATED")


class Explanation(Base):
    """An explanation issued to a person (DESIGN 11). The record itself is sealed with its own data key
    (erasing the subject destroys the key); only settings, robustness parameters, the noise floor and the
    issued margin are kept in the clear."""

    __tablename__ = "explanations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id"))  # issued under
    subject_ref: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(_str_enum(EXPLANATION_KINDS, "explanation_kind"))
    status: Mapped[str] = mapped_column(_str_enum(EXPLANATION_STATUSES, "explanation_status"))
    settings: Mapped[dict] = mapped_column(JSON)
    robustness: Mapped[dict | None] = mapped_column(JSON)
    noise_floor: Mapped[dict | None] = mapped_column(JSON)
    issued_margin: Mapped[float | None] = mapped_column(Float)
    payload_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    payload_bytes: Mapped[int] = mapped_column(Integer)
    wrapped_dek: Mapped[bytes | None] = mapped_column(LargeBinary)
    issued_by: Mapped[str] = mapped_column(String(128))
    reissued_as_id: Mapped[int | None] = mapped_column(ForeignKey("explanations.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    model: Mapped[Model] = relationship(lazy="joined", innerjoin=True)

    __table_args__ = (Index("ix_explanations_model_status", "model_id", "status"),)


class ExplanationCheck(Base):
    """Append-only: one re-check of one record on one checkpoint. Nothing personal (no features)."""

    __tablename__ = "explanation_checks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    explanation_id: Mapped[int] = mapped_column(ForeignKey("explanations.id"))
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id"), index=True)
    status: Mapped[str] = mapped_column(_str_enum(EXPLANATION_CHECK_STATUSES, "explanation_check_status"))
    margin: Mapped[float | None] = mapped_column(Float)
    spearman: Mapped[float | None] = mapped_column(Float)
    topk: Mapped[float | None] = mapped_column(Float)
    decision_changed: Mapped[bool | None] = mapped_column(Boolean)
    detail: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_explanation_checks_explanation_id", "explanation_id", "id"),)
