"""The stack a test starts, through the product's launcher: a private redis-server, product processes
whose logs (and thread stacks) a failing wait reports, and a database of the run's own."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from worker.adapters import launcher
from worker.adapters.launcher import free_port

__all__ = ["ACCEPTANCE", "CONFIG", "ROOT", "SECRET_KEY", "Processes", "RedisServer", "free_port",
           "handles_sigusr1", "hold_alerts", "postgres_server_url", "reset_process_state", "wait_until"]

ROOT = launcher.ROOT
CONFIG = ROOT / "config" / "routing.yaml"
ACCEPTANCE = ROOT.parent / "shared" / "acceptance"
SECRET_KEY = "test-only-claim-and-webhook-signing-key-0123456789"   # LEADROUTER_SECRET_KEY of service_env
POSTGRES_DEFAULT = "postgresql+psycopg://root@127.0.0.1:5432/test"
T = TypeVar("T")


class RedisServer(launcher.RedisServer):
    """A private redis-server with AOF in a temp directory: killed, paused and restarted at will."""

    def wait_written(self, timeout: float = 5.0) -> None:
        """Until every write acknowledged so far is in the AOF file, where a ``kill -9`` of Redis no
        longer reaches it. With ``appendfsync everysec`` Redis acknowledges a write before it writes
        it out, and holds it back for up to 2 s while the previous second's fsync is still running:
        on a busy disk a ``kill -9`` right after a write loses it, whatever its client does."""
        r = redis.Redis.from_url(self.url)
        try:
            wait_until(lambda: r.info("persistence")["aof_buffer_length"] == 0, timeout=timeout, interval=0.005,
                       message="Redis to write its AOF buffer")
        finally:
            r.close()


def handles_sigusr1(pid: int) -> bool:
    """Whether ``pid`` has a handler for SIGUSR1 (the signal would otherwise end it)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            caught = next(line.split()[1] for line in fh if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(int(caught, 16) & (1 << (signal.SIGUSR1 - 1)))


_LIVE: list[Processes] = []   # the running test's processes, for ``wait_until``'s report on a timeout


class Processes(launcher.Processes):
    """Product processes a test starts; every one is stopped at teardown, and a wait that times out
    reports their logs."""

    def __init__(self, env: dict[str, str], logdir: Path):
        super().__init__(env, logdir)
        self.logdir: Path = logdir
        _LIVE.append(self)

    def report(self) -> str:
        """The logs as they are now, ending with the thread stacks of each live process started here
        that writes them on ``kill -USR1`` (the scheduler, the API, a Celery worker's main process;
        never a pool process, for which SIGUSR1 is the soft time limit)."""
        asked = [proc for proc in self.procs if proc.poll() is None and handles_sigusr1(proc.pid)]
        for proc in asked:
            os.kill(proc.pid, signal.SIGUSR1)
        if asked:
            time.sleep(1.0)
        return self.logs(tail=12_000)

    def stop_all(self, grace: float = 5.0) -> None:
        if self in _LIVE:
            _LIVE.remove(self)
        super().stop_all(grace)


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.05,
               message: str = "condition") -> T:
    """Poll ``predicate`` (a database or Redis read) until it is truthy; fail with ``message`` and what the
    running test's processes logged."""
    try:
        return launcher.wait_for(predicate, timeout, message, interval=interval)
    except TimeoutError:
        report = "".join(f"\n{procs.report()}" for procs in _LIVE)
        raise AssertionError(f"timed out after {timeout}s waiting for {message}{report}") from None


def reset_process_state() -> None:
    """Settings and runtime read again from the environment, in this process."""
    from worker.adapters.runtime import reset_runtime
    from worker.adapters.settings import reset_settings

    reset_settings()
    reset_runtime()


def hold_alerts(monkeypatch: pytest.MonkeyPatch, record: list[int] | None = None) -> None:
    """Drains in this process leave the alert steps they make due as pending rows (recorded in ``record``):
    not queued for a Celery worker, not fired by the fast lane itself. For tests about something else."""
    import worker.entrypoints.tasks
    import worker.services.dispatch

    monkeypatch.setattr(worker.services.dispatch, "dispatch_steps",
                        lambda rt, ids, eta=None: (record.extend(ids) if record is not None else None) or 0)
    monkeypatch.setattr(worker.entrypoints.tasks, "INLINE_FIRING", 0)   # no thread to fire on: the steps are dispatched
    monkeypatch.setattr(worker.entrypoints.tasks, "_inline", None)


# ---------------------------------------------------------------- databases


def psycopg_url(url: str) -> str:
    return "postgresql+psycopg://" + url.removeprefix("postgresql://") if url.startswith("postgresql://") else url


def postgres_server_url() -> str:
    """The PostgreSQL server of this run: ``DATABASE_URL`` when it is one, else the CI default."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgresql"):
        url = os.environ.get("CI_POSTGRES_URL") or POSTGRES_DEFAULT
    return psycopg_url(url)


def create_database(server_url: str, prefix: str) -> str:
    """A new, empty PostgreSQL database named ``<prefix>_<random>`` on the server of ``server_url``: its name."""
    import sqlalchemy as sa

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return name


def drop_database(server_url: Any, name: str) -> None:
    import sqlalchemy as sa

    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


DEADLOCK = "40P01"


def truncate_all(url: str, timeout: float = 30.0) -> None:
    """Every table emptied. TRUNCATE locks the tables one by one, so a straggler of the test before
    (a transaction that was still finishing when that test ended) can deadlock with it; PostgreSQL
    then cancels the TRUNCATE, and it is tried again once the straggler is done. Past ``timeout``
    the error names who is still connected."""
    import sqlalchemy as sa
    from sqlalchemy.exc import OperationalError

    from worker.adapters.db import Base

    eng = sa.create_engine(url)
    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                with eng.begin() as c:
                    c.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
                return
            except OperationalError as exc:
                if getattr(exc.orig, "sqlstate", None) != DEADLOCK:
                    raise
                if time.monotonic() > deadline:
                    with eng.connect() as c:
                        others = c.execute(sa.text(
                            "SELECT pid, application_name, state, left(query, 200) FROM pg_stat_activity"
                            " WHERE datname = current_database() AND pid <> pg_backend_pid()")).all()
                    raise AssertionError(f"the tables could not be emptied; connected: {others}") from exc
                time.sleep(0.2)
    finally:
        eng.dispose()
