"""What an operator can do about a database driver's OperationalError, from its error code alone.

The driver's own text may quote statement parameters (personal data), so it is never shown; SQLite's
result codes and PostgreSQL's SQLSTATEs are enough to tell a full disk, a read-only file, a refused
login or a server that is down from a bug in forgetd, and to name the fix.
"""

from __future__ import annotations

from typing import Any

# The machine's side: the operator frees space or fixes permissions, and the command then works.
DISK = "disk"
# The database's side: the server, the login or the URL.
SERVER = "server"

_SQLITE = (
    ("SQLITE_FULL", DISK, "the disk holding the SQLite database is full; free some space, then run the command "
                          "again"),
    ("SQLITE_IOERR", DISK, "the SQLite database could not be read or written ({name}; most often a full disk or "
                           "a file-size limit, ulimit -f); check free space and the file system, then run the "
                           "command again"),
    ("SQLITE_READONLY", DISK, "the SQLite database is read-only ({name}); give the user running forgetd write "
                              "access to the file, its -wal and -shm files and its folder"),
    ("SQLITE_CANTOPEN", DISK, "the SQLite database file cannot be opened ({name}); check that its folder exists "
                              "and that the user running forgetd may write there"),
    ("SQLITE_BUSY", SERVER, "the SQLite database stayed locked by another process for 30 s; run the command again "
                            "once it is done"),
    ("SQLITE_LOCKED", SERVER, "the SQLite database stayed locked by another process for 30 s; run the command again "
                              "once it is done"),
)

_POSTGRES = (
    ("53100", DISK, "the PostgreSQL server's disk is full; free space there, then run the command again"),
    ("53200", SERVER, "the PostgreSQL server is out of memory; run the command again later"),
    ("53300", SERVER, "the PostgreSQL server has no connection slot free (max_connections); run the command again "
                      "later, or raise the limit"),
    ("57P", SERVER, "the PostgreSQL server is shutting down or starting up; run the command again once it is up"),
    ("3D000", SERVER, "the database named in FORGETD_DATABASE_URL does not exist on the server; create it, or fix "
                      "the URL"),
    ("28", SERVER, "the PostgreSQL server refused the login; check the user and password in "
                   "FORGETD_DATABASE_URL"),
    ("08", SERVER, "the connection to the PostgreSQL server failed; check FORGETD_DATABASE_URL and that the server "
                   "is running"),
)


def describe(exc: BaseException) -> tuple[str, str] | None:
    """(kind, message) for an OperationalError (SQLAlchemy's or the driver's) whose cause an operator can
    fix, else None."""
    orig: Any = getattr(exc, "orig", None) or exc
    name = getattr(orig, "sqlite_errorname", None)
    if isinstance(name, str):
        for prefix, kind, message in _SQLITE:
            if name.startswith(prefix):
                return kind, message.format(name=name)
        return None
    if type(orig).__module__.split(".")[0] == "psycopg":
        state = getattr(orig, "sqlstate", None)
        if state is None:
            # psycopg raises connection failures (refused, unknown host, timeout) before any SQLSTATE exists
            return SERVER, _POSTGRES[-1][2]
        for prefix, kind, message in _POSTGRES:
            if state.startswith(prefix):
                return kind, message
    return None
