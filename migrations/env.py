"""Alembic environment. The URL comes from the caller's connection, the ini, or FORGETD_DATABASE_URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import pool

from forgetd.db.models import Base

config = context.config
target_metadata = Base.metadata


def _include_object(obj, name, type_, reflected, compare_to):
    # SQLite keeps its own bookkeeping tables; they are not ours to diff.
    return not (type_ == "table" and name.startswith("sqlite_"))


def _configure(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=_include_object,
        transaction_per_migration=True,
    )


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return

    from forgetd.config import load_settings
    from forgetd.db.engine import make_engine

    url = config.get_main_option("sqlalchemy.url") or load_settings().database_url
    engine = make_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run against a database")
run_migrations_online()
