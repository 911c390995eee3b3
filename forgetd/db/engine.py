"""Engines and the one session scope every unit of work runs in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from forgetd.errors import ConfigError


def normalise_url(url: str) -> str:
    """Plain `postgresql://` URLs would pick psycopg2, which we do not ship: use psycopg 3."""
    try:
        parsed = make_url(url)
    except Exception:
        raise ConfigError("not a valid database URL", field="FORGETD_DATABASE_URL") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"unsupported database {parsed.get_backend_name()!r}: use sqlite:/// or postgresql://",
            field="FORGETD_DATABASE_URL",
        )
    return parsed.render_as_string(hide_password=False)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Let SQLAlchemy's "begin" event issue BEGIN IMMEDIATE: every unit of work takes the
        # write lock up front, so two writers never deadlock upgrading a shared lock.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=30000")
        _switch_to_wal(cur)
        cur.execute("PRAGMA foreign_keys=ON")
        # Shredded keys must not linger in free pages of the file.
        cur.execute("PRAGMA secure_delete=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _switch_to_wal(cur, wait_seconds: float = 30.0) -> None:
    """WAL is a property of the file, so only a new file needs switching. Several processes opening the same
    new file at once contend for the switch, and SQLite answers the losers "database is locked" at once,
    without waiting on busy_timeout: retry until the winner is done."""
    import sqlite3
    import time

    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def sqlite_file(url: str):
    """The database file of a file-backed SQLite URL (as a Path), else None."""
    from pathlib import Path

    parsed = make_url(normalise_url(url))
    database = parsed.database if parsed.get_backend_name() == "sqlite" else None
    return Path(database).expanduser() if database and database != ":memory:" else None


def make_engine(url: str, **kwargs) -> Engine:
    url = normalise_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        database = sqlite_file(url)
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **kwargs)
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any exception."""
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    session = factory()
    try:
        with session.begin():
            yield session
    finally:
        session.close()


def compact_sqlite_wal(engine: Engine) -> None:
    """Move the WAL into the main file and truncate it, so destroyed keys and ciphertexts leave no copy in
    the WAL (a no-op on other databases)."""
    if engine.dialect.name == "sqlite":
        # Outside any transaction (BEGIN IMMEDIATE would lock the table against the checkpoint).
        raw = engine.raw_connection()
        try:
            raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            raw.close()
