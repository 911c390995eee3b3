"""SQLite engine set-up: processes opening the same new database file at once all get a connection."""

from __future__ import annotations

import multiprocessing
import time


def _open_at(url: str, start: float, results) -> None:
    from forgetd.db.engine import make_engine

    engine = make_engine(url)
    while time.time() < start:  # every process past its imports, then all connect together
        pass
    try:
        with engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        results.put(f"ok {mode}")
    except Exception as exc:  # the outcome is what the test checks
        results.put(f"{type(exc).__name__}: {exc}")
    finally:
        engine.dispose()


def test_concurrent_first_opens_of_a_new_file_all_connect_in_wal_mode(tmp_path):
    # Before the retry, the losers of the switch to WAL got "database is locked" at once in about one
    # round in four of six processes (and `forgetd` commands run side by side said "cannot open the database").
    ctx = multiprocessing.get_context("fork")
    for round_ in range(8):
        url = f"sqlite:///{tmp_path / f'new-{round_}.db'}"
        results = ctx.Queue()
        start = time.time() + 0.5
        workers = [ctx.Process(target=_open_at, args=(url, start, results)) for _ in range(6)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        outcomes = [results.get(timeout=5) for _ in workers]
        assert outcomes == ["ok wal"] * 6, (round_, outcomes)
