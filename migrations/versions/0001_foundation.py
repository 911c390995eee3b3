"""foundation: models, requests, transitions, audit trail, auditor views

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""
# Self-contained: never import forgetd.db.models here; a revision must keep working after the
# models move on.

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

REQUEST_STATUSES = (
    "received",
    "identity_pending",
    "pending_review",
    "approved",
    "scheduled",
    "training",
    "evaluating",
    "awaiting_compose",
    "composing",
    "verifying",
    "completed",
    "on_hold",
    "failed",
    "denied",
    "duplicate",
    "canceled",
)
REQUEST_KINDS = ("data", "concept", "class")

UTC = sa.DateTime(timezone=True)


def _is_pg() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _pg_enum(name, values):
    from sqlalchemy.dialects import postgresql

    return postgresql.ENUM(*values, name=name, create_type=False)


def upgrade() -> None:
    pg = _is_pg()
    if pg:
        from sqlalchemy.dialects import postgresql

        postgresql.ENUM(*REQUEST_STATUSES, name="request_status").create(op.get_bind())
        postgresql.ENUM(*REQUEST_KINDS, name="request_kind").create(op.get_bind())
        status_type = _pg_enum("request_status", REQUEST_STATUSES)
        kind_type = _pg_enum("request_kind", REQUEST_KINDS)
    else:
        status_type = sa.Enum(*REQUEST_STATUSES, name="request_status")
        kind_type = sa.Enum(*REQUEST_KINDS, name="request_kind")

    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("family", sa.String(32), nullable=False),
        sa.Column("base_uri", sa.Text(), nullable=False),
        sa.Column("base_sha256", sa.String(64), nullable=False),
        sa.Column("weight_files", sa.JSON(), nullable=False),
        sa.Column("registered_at", UTC, nullable=False),
        sa.Column("registered_by", sa.String(128), nullable=False),
        sa.UniqueConstraint("name", name="uq_models_name"),
    )

    op.create_table(
        "requests",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("public_id", sa.String(32), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=True),
        sa.Column("idempotency_digest", sa.String(64), nullable=True),
        sa.Column("policy", sa.String(64), nullable=False),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", name="fk_requests_model_id_models"), nullable=False),
        sa.Column("kind", kind_type, nullable=False),
        sa.Column("subject_ref", sa.String(64), nullable=False),
        sa.Column("scope_ref", sa.String(64), nullable=False),
        sa.Column("payload_ct", sa.LargeBinary(), nullable=False),
        sa.Column("payload_bytes", sa.Integer(), nullable=False),
        sa.Column("wrapped_dek", sa.LargeBinary(), nullable=True),
        sa.Column("status", status_type, nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("held_from", status_type, nullable=True),
        sa.Column("failed_step", sa.String(32), nullable=True),
        sa.Column("submitted_by", sa.String(128), nullable=False),
        sa.Column("received_at", UTC, nullable=False),
        sa.Column("due_at", UTC, nullable=False),
        sa.Column("extended_due_at", UTC, nullable=True),
        sa.Column("extension_months", sa.Integer(), nullable=True),
        sa.Column("extension_reason", sa.Text(), nullable=True),
        sa.Column("extension_notified_at", UTC, nullable=True),
        sa.Column("clock_paused_total", sa.BigInteger(), nullable=False),
        sa.Column("clock_paused_since", UTC, nullable=True),
        sa.Column(
            "canonical_request_id",
            sa.Integer(),
            sa.ForeignKey("requests.id", name="fk_requests_canonical_request_id_requests"),
            nullable=True,
        ),
        sa.Column("at_risk_alerted_at", UTC, nullable=True),
        sa.Column("breached_alerted_at", UTC, nullable=True),
        sa.Column("closed_at", UTC, nullable=True),
        sa.Column("shredded_at", UTC, nullable=True),
        sa.Column("updated_at", UTC, nullable=False),
        sa.UniqueConstraint("public_id", name="uq_requests_public_id"),
        sa.UniqueConstraint("idempotency_key", name="uq_requests_idempotency_key"),
    )
    op.create_index("ix_requests_subject_ref", "requests", ["subject_ref"])
    op.create_index("ix_requests_status", "requests", ["status"])
    op.create_index("ix_requests_due_at", "requests", ["due_at"])
    op.create_index("ix_requests_dup_lookup", "requests", ["subject_ref", "model_id", "kind", "scope_ref"])

    op.create_table(
        "request_transitions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "request_id",
            sa.Integer(),
            sa.ForeignKey("requests.id", name="fk_request_transitions_request_id_requests"),
            nullable=False,
        ),
        sa.Column("from_status", status_type, nullable=True),
        sa.Column("to_status", status_type, nullable=False),
        sa.Column("reason_code", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("at", UTC, nullable=False),
    )
    op.create_index("ix_request_transitions_request_id", "request_transitions", ["request_id"])

    op.create_table(
        "audit_events",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=False),
        sa.Column("at", UTC, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("resource_type", sa.String(32), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("payload_digest", sa.String(64), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("hash", name="uq_audit_events_hash"),
    )
    op.create_index("ix_audit_events_action", "audit_events", ["action"])
    op.create_index("ix_audit_events_resource", "audit_events", ["resource_type", "resource_id"])

    op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_audit_chain_head_singleton"),
    )
    op.execute(sa.text("INSERT INTO audit_chain_head (id, seq, hash) VALUES (1, 0, :h)").bindparams(h="0" * 64))

    if pg:
        op.execute(
            """
            CREATE FUNCTION forgetd_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP;
            END;
            $$
            """
        )
        op.execute(
            "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events "
            "FOR EACH ROW EXECUTE FUNCTION forgetd_audit_append_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
            "FOR EACH STATEMENT EXECUTE FUNCTION forgetd_audit_append_only()"
        )
    else:
        op.execute(
            "CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events "
            "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused'); END"
        )
        op.execute(
            "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events "
            "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: DELETE refused'); END"
        )

    # Views for auditors: plain SQL that reads the same from psql and sqlite3.
    op.execute(
        """
        CREATE VIEW v_request_status AS
        SELECT r.public_id AS request_id,
               m.name AS model,
               r.policy AS policy,
               r.kind AS kind,
               r.status AS status,
               r.status_reason AS status_reason,
               r.subject_ref AS subject_ref,
               r.received_at AS received_at,
               r.due_at AS due_at,
               r.extended_due_at AS extended_due_at,
               COALESCE(r.extended_due_at, r.due_at) AS effective_due_at,
               r.closed_at AS closed_at,
               r.shredded_at AS shredded_at,
               c.public_id AS duplicate_of
        FROM requests r
        JOIN models m ON m.id = r.model_id
        LEFT JOIN requests c ON c.id = r.canonical_request_id
        """
    )
    op.execute(
        """
        CREATE VIEW v_audit_trail AS
        SELECT a.seq AS seq,
               a.at AS at,
               a.actor AS actor,
               a.action AS action,
               a.resource_type AS resource_type,
               a.resource_id AS resource_id,
               r.subject_ref AS subject_ref,
               a.payload AS payload,
               a.prev_hash AS prev_hash,
               a.hash AS hash
        FROM audit_events a
        LEFT JOIN requests r ON a.resource_type = 'request' AND r.public_id = a.resource_id
        """
    )


def downgrade() -> None:
    pg = _is_pg()
    op.execute("DROP VIEW IF EXISTS v_audit_trail")
    op.execute("DROP VIEW IF EXISTS v_request_status")
    if pg:
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events")
        op.execute("DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS forgetd_audit_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_delete")
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_update")
    op.drop_table("audit_chain_head")
    op.drop_table("audit_events")
    op.drop_table("request_transitions")
    op.drop_table("requests")
    op.drop_table("models")
    if pg:
        op.execute("DROP TYPE IF EXISTS request_kind")
        op.execute("DROP TYPE IF EXISTS request_status")
