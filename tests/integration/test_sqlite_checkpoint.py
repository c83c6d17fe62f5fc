"""SQLite checkpoints happen on a thread of the writing process, not in the commits themselves."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sqlite3
import time
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.support.stack import wait_until
from worker.adapters import engines


def _rows_in_main_file(path: Path, copy: Path) -> int:
    """Rows of ``t`` in the database file alone, as if its WAL were lost: only what was checkpointed."""
    shutil.copy(path, copy)
    conn = sqlite3.connect(copy)
    try:
        return conn.execute("SELECT count(*) FROM t").fetchone()[0]
    except sqlite3.OperationalError:   # not even the table is in the file yet
        return -1
    finally:
        conn.close()


def _write(url: str, rows: int) -> Engine:
    """``rows`` commits; the engine is returned with its connection open, as a worker's stays (the
    last connection to close checkpoints the WAL itself)."""
    engine = engines.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS t (n INTEGER)"))
    for n in range(rows):
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (:n)"), {"n": n})
    return engine


def test_commits_leave_the_checkpoint_to_the_thread_which_copies_the_wal_soon_after(tmp_path):
    path = tmp_path / "wal.db"
    engine = engines.make_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == engines.BACKSTOP_PAGES
    writer = _write(f"sqlite:///{path}", 50)
    # 50 commits are far below the backstop: only the thread can have copied them into the file
    wait_until(lambda: _rows_in_main_file(path, tmp_path / "copy.db") == 50, timeout=5,
               message="the WAL checkpointed into the database file")
    writer.dispose()
    engine.dispose()


def _write_and_stay(url: str, rows: int) -> None:
    engine = _write(url, rows)
    time.sleep(1)   # alive while its thread gets to it
    os._exit(0 if engine is not None else 1)   # the connections are never closed


def test_a_forked_child_checkpoints_what_it_writes(tmp_path):
    path = tmp_path / "wal.db"
    parent = _write(f"sqlite:///{path}", 1)   # the parent's thread runs: the child must start its own
    child = multiprocessing.get_context("fork").Process(target=_write_and_stay, args=(f"sqlite:///{path}", 20))
    child.start()
    child.join(10)
    assert child.exitcode == 0
    wait_until(lambda: _rows_in_main_file(path, tmp_path / "copy.db") == 21, timeout=5,
               message="the child's commits checkpointed")
    parent.dispose()


def test_a_database_removed_meanwhile_is_not_created_again(tmp_path):
    path = tmp_path / "gone.db"
    engines.CHECKPOINTER.checkpoint(str(path))
    assert not path.exists()


def test_a_path_that_needs_quoting_in_a_uri_is_checkpointed(tmp_path):
    path = tmp_path / "odd ?name#1%.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (n INTEGER)")
    conn.execute("INSERT INTO t VALUES (1)")
    assert _rows_in_main_file(path, tmp_path / "copy.db") == -1
    engines.CHECKPOINTER.checkpoint(str(path))
    assert _rows_in_main_file(path, tmp_path / "copy.db") == 1
    conn.close()
