"""forgetting engine: adapters, checkpoints, coverage, aliases, evaluations, lineage

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""
# Self-contained: never import forgetd.db.models here.

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ADAPTER_STATUSES = ("trained", "rejected", "composed", "withdrawn")
CHECKPOINT_STATUSES = ("building", "candidate", "rejected", "served", "retired")
UTC = sa.DateTime(timezone=True)


def _enum(values, name):
    if op.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        postgresql.ENUM(*values, name=name).create(op.get_bind())
        return postgresql.ENUM(*values, name=name, create_type=False)
    return sa.Enum(*values, name=name)


def upgrade() -> None:
    adapter_status = _enum(ADAPTER_STATUSES, "adapter_status")
    checkpoint_status = _enum(CHECKPOINT_STATUSES, "checkpoint_status")

    op.add_column("models", sa.Column("dataset_sha256", sa.String(64), nullable=True))

    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", name="fk_checkpoints_model_id_models"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column(
            "parent_id", sa.Integer(), sa.ForeignKey("checkpoints.id", name="fk_checkpoints_parent_id_checkpoints"), nullable=True
        ),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("content_id", sa.String(64), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("status", checkpoint_status, nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.UniqueConstraint("model_id", "version", name="uq_checkpoints_model_version"),
        sa.UniqueConstraint("model_id", "content_id", name="uq_checkpoints_model_content"),
    )

    op.create_table(
        "adapters",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", name="fk_adapters_model_id_models"), nullable=False),
        sa.Column("recipe", sa.String(64), nullable=False),
        sa.Column(
            "trained_against_id",
            sa.Integer(),
            sa.ForeignKey("checkpoints.id", name="fk_adapters_trained_against_id_checkpoints"),
            nullable=False,
        ),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("target_modules", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("status", adapter_status, nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.UniqueConstraint("sha256", name="uq_adapters_sha256"),
    )
    op.create_index("ix_adapters_model_id", "adapters", ["model_id"])

    op.create_table(
        "adapter_requests",
        sa.Column(
            "adapter_id", sa.Integer(), sa.ForeignKey("adapters.id", name="fk_adapter_requests_adapter_id_adapters"),
            primary_key=True,
        ),
        sa.Column(
            "request_id", sa.Integer(), sa.ForeignKey("requests.id", name="fk_adapter_requests_request_id_requests"),
            primary_key=True,
        ),
    )
    op.create_index("ix_adapter_requests_request_id", "adapter_requests", ["request_id"])

    op.create_table(
        "checkpoint_coverage",
        sa.Column(
            "checkpoint_id",
            sa.Integer(),
            sa.ForeignKey("checkpoints.id", name="fk_checkpoint_coverage_checkpoint_id_checkpoints"),
            primary_key=True,
        ),
        sa.Column(
            "request_id", sa.Integer(), sa.ForeignKey("requests.id", name="fk_checkpoint_coverage_request_id_requests"),
            primary_key=True,
        ),
    )
    op.create_index("ix_checkpoint_coverage_request_id", "checkpoint_coverage", ["request_id"])

    op.create_table(
        "aliases",
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", name="fk_aliases_model_id_models"), primary_key=True),
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column(
            "checkpoint_id", sa.Integer(), sa.ForeignKey("checkpoints.id", name="fk_aliases_checkpoint_id_checkpoints"),
            nullable=False,
        ),
        sa.Column("updated_at", UTC, nullable=False),
    )

    op.create_table(
        "alias_history",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", name="fk_alias_history_model_id_models"), nullable=False),
        sa.Column("alias", sa.String(32), nullable=False),
        sa.Column(
            "from_checkpoint_id",
            sa.Integer(),
            sa.ForeignKey("checkpoints.id", name="fk_alias_history_from_checkpoint_id_checkpoints"),
            nullable=True,
        ),
        sa.Column(
            "to_checkpoint_id",
            sa.Integer(),
            sa.ForeignKey("checkpoints.id", name="fk_alias_history_to_checkpoint_id_checkpoints"),
            nullable=False,
        ),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("reason_code", sa.String(64), nullable=False),
        sa.Column("at", UTC, nullable=False),
    )
    op.create_index("ix_alias_history_model_alias", "alias_history", ["model_id", "alias", "id"])

    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("target_kind", sa.String(16), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column(
            "request_id", sa.Integer(), sa.ForeignKey("requests.id", name="fk_evaluations_request_id_requests"), nullable=True
        ),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("passed", sa.Boolean(), nullable=True),
        sa.Column("evidence_uri", sa.Text(), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
    )
    op.create_index("ix_evaluations_target", "evaluations", ["target_kind", "target_id"])
    op.create_index("ix_evaluations_request_id", "evaluations", ["request_id"])

    op.create_table(
        "lineage_edges",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("src_kind", sa.String(16), nullable=False),
        sa.Column("src_id", sa.String(64), nullable=False),
        sa.Column("relation", sa.String(32), nullable=False),
        sa.Column("dst_kind", sa.String(16), nullable=False),
        sa.Column("dst_id", sa.String(64), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.UniqueConstraint("src_kind", "src_id", "relation", "dst_kind", "dst_id", name="uq_lineage_edges_edge"),
    )
    op.create_index("ix_lineage_edges_dst", "lineage_edges", ["dst_kind", "dst_id"])

    # alias_history is append-only like the audit trail.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE TRIGGER alias_history_append_only BEFORE UPDATE OR DELETE ON alias_history "
            "FOR EACH ROW EXECUTE FUNCTION forgetd_audit_append_only()"
        )
    else:
        op.execute(
            "CREATE TRIGGER alias_history_no_update BEFORE UPDATE ON alias_history "
            "BEGIN SELECT RAISE(ABORT, 'alias_history is append-only: UPDATE refused'); END"
        )
        op.execute(
            "CREATE TRIGGER alias_history_no_delete BEFORE DELETE ON alias_history "
            "BEGIN SELECT RAISE(ABORT, 'alias_history is append-only: DELETE refused'); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS alias_history_append_only ON alias_history")
    else:
        op.execute("DROP TRIGGER IF EXISTS alias_history_no_delete")
        op.execute("DROP TRIGGER IF EXISTS alias_history_no_update")
    op.drop_table("lineage_edges")
    op.drop_table("evaluations")
    op.drop_table("alias_history")
    op.drop_table("aliases")
    op.drop_table("checkpoint_coverage")
    op.drop_table("adapter_requests")
    op.drop_table("adapters")
    op.drop_table("checkpoints")
    # Plain ALTER (SQLite ≥ 3.35 and PostgreSQL): a batch table rebuild would break the views on models.
    op.execute("ALTER TABLE models DROP COLUMN dataset_sha256")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TYPE IF EXISTS checkpoint_status")
        op.execute("DROP TYPE IF EXISTS adapter_status")
