"""explanations: encrypted explanation records and their append-only re-checks

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""
# Self-contained: never import forgetd.db.models here.

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

EXPLANATION_STATUSES = ("VALID", "AT_RISK", "INVALIDATED", "REISSUED", "ERASED")
EXPLANATION_KINDS = ("counterfactual", "attribution")
CHECK_STATUSES = ("VALID", "AT_RISK", "INVALIDATED")
UTC = sa.DateTime(timezone=True)


def _enum(values, name):
    if op.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        postgresql.ENUM(*values, name=name).create(op.get_bind())
        return postgresql.ENUM(*values, name=name, create_type=False)
    return sa.Enum(*values, name=name)


def upgrade() -> None:
    status = _enum(EXPLANATION_STATUSES, "explanation_status")
    kind = _enum(EXPLANATION_KINDS, "explanation_kind")
    check_status = _enum(CHECK_STATUSES, "explanation_check_status")
    op.create_table(
        "explanations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("public_id", sa.String(32), nullable=False),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", name="fk_explanations_model_id_models"),
                  nullable=False),
        sa.Column("checkpoint_id", sa.Integer(),
                  sa.ForeignKey("checkpoints.id", name="fk_explanations_checkpoint_id_checkpoints"), nullable=False),
        sa.Column("subject_ref", sa.String(64), nullable=False),
        sa.Column("kind", kind, nullable=False),
        sa.Column("status", status, nullable=False),
        # In the clear and never personal: explainer settings, robustness parameters, noise floor, margin.
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("robustness", sa.JSON(), nullable=True),
        sa.Column("noise_floor", sa.JSON(), nullable=True),
        sa.Column("issued_margin", sa.Float(), nullable=True),
        # The record itself (the person's features, the advice, the attributions): sealed.
        sa.Column("payload_ct", sa.LargeBinary(), nullable=True),
        sa.Column("payload_bytes", sa.Integer(), nullable=False),
        sa.Column("wrapped_dek", sa.LargeBinary(), nullable=True),
        sa.Column("issued_by", sa.String(128), nullable=False),
        sa.Column("reissued_as_id", sa.Integer(),
                  sa.ForeignKey("explanations.id", name="fk_explanations_reissued_as_id_explanations"), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.Column("erased_at", UTC, nullable=True),
        sa.UniqueConstraint("public_id", name="uq_explanations_public_id"),
    )
    op.create_index("ix_explanations_model_status", "explanations", ["model_id", "status"])
    op.create_index("ix_explanations_subject_ref", "explanations", ["subject_ref"])

    op.create_table(
        "explanation_checks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("explanation_id", sa.Integer(),
                  sa.ForeignKey("explanations.id", name="fk_explanation_checks_explanation_id_explanations"),
                  nullable=False),
        sa.Column("checkpoint_id", sa.Integer(),
                  sa.ForeignKey("checkpoints.id", name="fk_explanation_checks_checkpoint_id_checkpoints"),
                  nullable=False),
        sa.Column("status", check_status, nullable=False),
        sa.Column("margin", sa.Float(), nullable=True),
        sa.Column("spearman", sa.Float(), nullable=True),
        sa.Column("topk", sa.Float(), nullable=True),
        sa.Column("decision_changed", sa.Boolean(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
    )
    op.create_index("ix_explanation_checks_explanation_id", "explanation_checks", ["explanation_id", "id"])
    op.create_index("ix_explanation_checks_checkpoint_id", "explanation_checks", ["checkpoint_id"])

    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE TRIGGER explanation_checks_append_only BEFORE UPDATE OR DELETE ON explanation_checks "
            "FOR EACH ROW EXECUTE FUNCTION forgetd_audit_append_only()"
        )
    else:
        op.execute(
            "CREATE TRIGGER explanation_checks_no_update BEFORE UPDATE ON explanation_checks "
            "BEGIN SELECT RAISE(ABORT, 'explanation_checks is append-only: UPDATE refused'); END"
        )
        op.execute(
            "CREATE TRIGGER explanation_checks_no_delete BEFORE DELETE ON explanation_checks "
            "BEGIN SELECT RAISE(ABORT, 'explanation_checks is append-only: DELETE refused'); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS explanation_checks_append_only ON explanation_checks")
    else:
        op.execute("DROP TRIGGER IF EXISTS explanation_checks_no_delete")
        op.execute("DROP TRIGGER IF EXISTS explanation_checks_no_update")
    op.drop_index("ix_explanation_checks_checkpoint_id", table_name="explanation_checks")
    op.drop_index("ix_explanation_checks_explanation_id", table_name="explanation_checks")
    op.drop_table("explanation_checks")
    op.drop_index("ix_explanations_subject_ref", table_name="explanations")
    op.drop_index("ix_explanations_model_status", table_name="explanations")
    op.drop_table("explanations")
    if op.get_bind().dialect.name == "postgresql":
        for name in ("explanation_check_status", "explanation_kind", "explanation_status"):
            op.execute(f"DROP TYPE IF EXISTS {name}")
