"""jobs: the leased job queue and its append-only event log

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""
# Self-contained: never import forgetd.db.models here.

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "dead", "canceled")
UTC = sa.DateTime(timezone=True)
LIVE = "status IN ('queued', 'running')"
RUNNING = "status = 'running'"


def _enum(values, name):
    if op.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        postgresql.ENUM(*values, name=name).create(op.get_bind())
        return postgresql.ENUM(*values, name=name, create_type=False)
    return sa.Enum(*values, name=name)


def upgrade() -> None:
    job_status = _enum(JOB_STATUSES, "job_status")
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", name="fk_jobs_model_id_models"), nullable=True),
        sa.Column("request_ids", sa.JSON(), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("status", job_status, nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("run_after", UTC, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_expires_at", UTC, nullable=True),
        sa.Column("heartbeat_at", UTC, nullable=True),
        sa.Column("dedupe_key", sa.String(200), nullable=True),
        sa.Column("lock_key", sa.String(128), nullable=True),
        sa.Column("executor", sa.String(16), nullable=True),
        sa.Column("executor_ref", sa.String(200), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("log_uri", sa.Text(), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("started_at", UTC, nullable=True),
        sa.Column("finished_at", UTC, nullable=True),
    )
    # What a claim scans: runnable jobs in priority order.
    op.create_index("ix_jobs_claim", "jobs", ["status", "priority", "run_after", "id"])
    # At most one live job per unit of work, and one running job per lock (merges are serialized per
    # model): the database enforces what the planner and the claim query intend.
    op.create_index("uq_jobs_dedupe_live", "jobs", ["dedupe_key"], unique=True,
                    postgresql_where=sa.text(LIVE), sqlite_where=sa.text(LIVE))
    op.create_index("uq_jobs_lock_running", "jobs", ["lock_key"], unique=True,
                    postgresql_where=sa.text(RUNNING), sqlite_where=sa.text(RUNNING))

    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id", name="fk_job_events_job_id_jobs"), nullable=False),
        sa.Column("at", UTC, nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(128), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
    )
    op.create_index("ix_job_events_job_id", "job_events", ["job_id", "id"])

    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE TRIGGER job_events_append_only BEFORE UPDATE OR DELETE ON job_events "
            "FOR EACH ROW EXECUTE FUNCTION forgetd_audit_append_only()"
        )
    else:
        op.execute(
            "CREATE TRIGGER job_events_no_update BEFORE UPDATE ON job_events "
            "BEGIN SELECT RAISE(ABORT, 'job_events is append-only: UPDATE refused'); END"
        )
        op.execute(
            "CREATE TRIGGER job_events_no_delete BEFORE DELETE ON job_events "
            "BEGIN SELECT RAISE(ABORT, 'job_events is append-only: DELETE refused'); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS job_events_append_only ON job_events")
    else:
        op.execute("DROP TRIGGER IF EXISTS job_events_no_delete")
        op.execute("DROP TRIGGER IF EXISTS job_events_no_update")
    op.drop_index("ix_job_events_job_id", table_name="job_events")
    op.drop_table("job_events")
    op.drop_index("uq_jobs_lock_running", table_name="jobs")
    op.drop_index("uq_jobs_dedupe_live", table_name="jobs")
    op.drop_index("ix_jobs_claim", table_name="jobs")
    op.drop_table("jobs")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TYPE IF EXISTS job_status")
