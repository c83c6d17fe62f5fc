"""Engines and sessions, the same on SQLite and PostgreSQL: connection settings and statement timeouts,
SQLite's checkpoints off the commit path and its gate that lets urgent writes go first, PostgreSQL's
planner statistics. The tables are :mod:`worker.adapters.db`."""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

from sqlalchemy import (
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import sessionmaker

from worker.adapters.db import Base

log = logging.getLogger("leadrouter.db")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")   # the checkpointer's thread does it (below)
    cur.close()


READ_ONLY = "leadrouter_read_only"


def _sqlite_begin(conn: Any) -> None:
    # Take the write lock at BEGIN: two processes never interleave read-then-write. A read-only
    # transaction (reading()) begins deferred: it reads a snapshot and locks nothing.
    conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")


STATEMENT_TIMEOUT = 60.0   # seconds; LEADROUTER_DB_STATEMENT_TIMEOUT
POOL_TIMEOUT = 10.0        # seconds to wait for a pooled connection before giving up


def make_engine(url: str, statement_timeout: float = STATEMENT_TIMEOUT) -> Engine:
    """The engine for ``url``. Statement parameters stay out of error messages and logs
    (``hide_parameters``): they carry traits, emails and phone numbers. On PostgreSQL no call
    waits for ever: a statement is cancelled by the server after ``statement_timeout``, TCP
    keepalives and a user timeout notice a peer that went away, and a request waits at most
    ``POOL_TIMEOUT`` for a connection."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            from pathlib import Path

            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "isolation_level": None}, hide_parameters=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        if path and path != ":memory:":
            def _written(conn: Connection) -> None:
                if not conn.get_execution_options().get(READ_ONLY):
                    CHECKPOINTER.written(path)

            event.listen(engine, "commit", _written)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, pool_timeout=POOL_TIMEOUT,
                         hide_parameters=True, connect_args=pg_connect_args(statement_timeout))


def pg_connect_args(statement_timeout: float = STATEMENT_TIMEOUT) -> dict[str, Any]:
    """libpq connection parameters: bounded connect, keepalives, a server-side statement timeout."""
    return {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
            "keepalives_count": 3, "tcp_user_timeout": 60_000,
            "options": f"-c statement_timeout={max(1, int(statement_timeout * 1000))}"}


# ---------------------------------------------------------------- SQLite: checkpoints off the commit path
#
# In WAL mode a commit appends the pages it changed to the WAL, and the WAL's pages must be copied
# back into the database now and then (a checkpoint, with an fsync of each file). By default the
# commit that takes the WAL past 1,000 pages does that itself, holding up its caller: with many
# leads a batch changes pages all over the database, so at a million leads nearly every batch
# paid for one (about 40 ms of a 500-event batch). Here a thread of each writing process
# checkpoints right after its commits (at most every ``CHECKPOINT_GAP``), in PASSIVE mode: it
# takes no lock that readers or writers wait for, and the worker goes on meanwhile (a drain
# reads its next batch). Once a checkpoint has copied the whole WAL, the next writer starts
# it again from the top. A commit checkpoints only if the WAL grows past ``BACKSTOP_PAGES``
# anyway (the thread starved, or a process that never gets to it).

CHECKPOINT_SETTLE = 0.01  # seconds from the commit that wakes the thread to its checkpoint
CHECKPOINT_GAP = 0.1      # at least this long between one process's checkpoints
BACKSTOP_PAGES = 20_000   # about 80 MB of WAL


class Checkpointer:
    """The thread that checkpoints the SQLite databases this process wrote to."""

    def __init__(self) -> None:
        self._forked()

    def _forked(self) -> None:
        # a fresh start in a forked child: no thread came along, and the lock may have been held
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._wake = threading.Event()
        self._started = False

    def written(self, path: str) -> None:
        """A transaction on ``path`` is committing: checkpoint it soon."""
        with self._lock:
            self._pending.add(path)
            if not self._started:
                self._started = True
                threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True).start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(CHECKPOINT_SETTLE)   # woken as a commit starts: let it land
            with self._lock:
                self._wake.clear()
                paths, self._pending = self._pending, set()
            for path in paths:
                self.checkpoint(path)
            time.sleep(CHECKPOINT_GAP)

    def checkpoint(self, path: str) -> None:
        try:   # mode=rw: a database removed meanwhile is not created again
            conn = sqlite3.connect(f"file:{quote(path)}?mode=rw", uri=True, timeout=0, isolation_level=None)
        except sqlite3.Error:
            return
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:   # e.g. the database was removed: nothing to keep in shape
            logging.getLogger("leadrouter.db").debug("checkpoint of %s: %s", path, exc)
        finally:
            conn.close()


CHECKPOINTER = Checkpointer()
os.register_at_fork(after_in_child=CHECKPOINTER._forked)


# ---------------------------------------------------------------- PostgreSQL: planner statistics
#
# A batch looks up its 500 message ids and its leads' histories with ``= ANY`` lists, planned from
# the tables' statistics. Without them (autovacuum turned off, or not yet round after a large
# import) the planner takes 500 keys to match most of a table and scans it, comparing each row
# with each key: at 170,000 events a lookup took a second, at a million events a drained event
# cost 2 ms instead of 0.3. The scheduler's housekeeping analyzes each of our tables that changed
# by more than autovacuum's own threshold since anyone last analyzed it; where autovacuum keeps
# up, it finds nothing to do.

ANALYZE_ROWS, ANALYZE_SHARE = 50, 0.1   # as autovacuum's defaults: 50 rows and a tenth of the table


def refresh_statistics(engine: Engine) -> list[str]:
    """``ANALYZE`` the tables whose statistics fell behind; their names. A no-op on SQLite, whose
    planner needs none for these lookups."""
    if engine.dialect.name != "postgresql":
        return []
    stale = text("SELECT relname FROM pg_stat_user_tables WHERE schemaname = current_schema() "
                 "AND relname = ANY(:tables) AND n_mod_since_analyze > :rows + :share * n_live_tup "
                 "ORDER BY relname")
    with engine.connect() as conn:
        names = list(conn.execute(stale, {"tables": list(Base.metadata.tables), "rows": ANALYZE_ROWS,
                                          "share": ANALYZE_SHARE}).scalars())
        for name in names:   # takes no lock that reads or writes wait for
            conn.execute(text(f'ANALYZE "{name}"'))
        conn.commit()
    return names


# ---------------------------------------------------------------- SQLite: urgent writes first
#
# SQLite has one writer at a time, and a writer that finds the lock taken polls for it with
# growing sleeps: first come is not first served. A drain of the normal lane holds the lock for
# a whole batch (hundreds of events), and two of them can pass it back and forth while a demo
# request's routing or an alert waits. So urgent writers (the fast lane, alert firing) hold a
# shared lock on a file beside the database while they wait for and run their transaction, and
# the normal lane takes that file's exclusive lock for an instant before each batch: it starts
# no new batch while an urgent write is waiting. A kernel lock, so nobody polls and a process
# that dies lets go. PostgreSQL locks rows and needs none of this.

GATE_WAIT = 2.0   # the longest a normal-lane batch waits for urgent writes before going anyway


def _gate_path(engine: Engine) -> str | None:
    if engine.dialect.name != "sqlite":
        return None
    path = engine.url.database
    return f"{path}-gate" if path and path != ":memory:" else None


@contextmanager
def urgent(engine: Engine) -> Iterator[None]:
    """Around an urgent write transaction: the normal lane starts no batch until it is done."""
    path = _gate_path(engine)
    if path is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)   # shared: urgent writers never wait for one another here
        yield
    finally:
        os.close(fd)


def yield_to_urgent(engine: Engine) -> float:
    """Before a normal-lane batch: wait (at most ``GATE_WAIT``) while urgent writes wait or run.
    Returns the seconds waited."""
    path = _gate_path(engine)
    if path is None:
        return 0.0
    started = time.monotonic()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - started >= GATE_WAIT:
                    break
                time.sleep(0.002)
    finally:
        os.close(fd)
    return time.monotonic() - started


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction: on SQLite it takes no write lock, so writers go on meanwhile."""
    with engine.connect().execution_options(**{READ_ONLY: True}) as conn, conn.begin():
        yield conn


def make_sessionmaker(engine: Engine) -> sessionmaker:  # type: ignore[type-arg]
    return sessionmaker(engine, expire_on_commit=False)
