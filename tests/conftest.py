"""Shared fixtures: a private redis-server, a database of the test run's own, worker processes.

``DATABASE_URL`` chooses the database: unset, each test gets a SQLite file; a
PostgreSQL URL makes the run create its own database there and drop it at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.stack import RedisServer as BenchRedis
from bench.stack import free_port as free_port  # re-exported for the tests

# pytest imports this file as ``conftest`` and the tests import it as ``tests.conftest``: make
# that one module, so state kept here (the running test's processes) is the same for both.
sys.modules.setdefault("tests.conftest", sys.modules[__name__])

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "routing.yaml"
ACCEPTANCE = ROOT.parent / "shared" / "acceptance"
SECRET_KEY = "test-only-claim-and-webhook-signing-key-0123456789"   # LEADROUTER_SECRET_KEY of service_env


class RedisServer(BenchRedis):
    """A private redis-server with AOF in a temp directory; can be killed and restarted."""

    def start(self) -> None:
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not on PATH (apt-get install redis-server)")
        super().start()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def database_server() -> Iterator[str | None]:
    """A PostgreSQL database made for this run (when DATABASE_URL is PostgreSQL), dropped after."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgresql"):
        yield None
        return
    import sqlalchemy as sa

    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    name = f"lr_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    base, _, _ = url.rpartition("/")
    yield f"{base}/{name}"
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def _migrated_pg(database_server: str | None) -> str | None:
    if database_server is None:
        return None
    from worker.migrate import upgrade

    upgrade(database_server)
    return database_server


def _truncate_all(url: str) -> None:
    import sqlalchemy as sa

    from worker.db import Base

    eng = sa.create_engine(url)
    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with eng.begin() as c:
        c.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    eng.dispose()


@pytest.fixture
def database_url(_migrated_pg: str | None, tmp_path: Path) -> str:
    """A migrated, empty database for one test."""
    if _migrated_pg is not None:
        _truncate_all(_migrated_pg)
        return _migrated_pg
    from worker.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'leadrouter.db'}"
    upgrade(url)
    return url


@pytest.fixture
def service_env(redis_server: RedisServer, database_url: str, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for the product, in this process and for the processes a test starts."""
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    rules = tmp_path / "routing.yaml"
    rules.write_text(CONFIG.read_text())
    env = {
        "REDIS_URL": redis_server.url,
        "DATABASE_URL": database_url,
        "LEADROUTER_CONFIG": str(rules),
        "LEADROUTER_SECRET_KEY": SECRET_KEY,
        "LEADROUTER_TICK_SECONDS": "0.1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("TWILIO_ACCOUNT_SID", "SENDGRID_API_KEY", "TWILIO_API_BASE_URL", "SENDGRID_API_BASE_URL"):
        monkeypatch.delenv(k, raising=False)
    _reset_process_state()
    yield env
    _reset_process_state()


def _reset_process_state() -> None:
    from worker.runtime import reset_runtime
    from worker.settings import reset_settings

    reset_settings()
    reset_runtime()


def handles_sigusr1(pid: int) -> bool:
    """Whether ``pid`` has a handler for SIGUSR1 (the signal would otherwise end it)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            caught = next(line.split()[1] for line in fh if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(int(caught, 16) & (1 << (signal.SIGUSR1 - 1)))


_LIVE: list[Processes] = []   # the running test's processes, for ``wait_until``'s report on a timeout


class Processes:
    """Product processes a test starts; every one is killed at teardown."""

    def __init__(self, env: dict[str, str], logdir: Path):
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []
        _LIVE.append(self)

    def start(self, *args: str, name: str = "proc", extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen(list(args), env={**self.env, **(extra_env or {})}, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def celery_worker(self, queues: str = "events,fast,alerts", concurrency: int = 2,
                      name: str = "worker") -> subprocess.Popen[bytes]:
        return self.start(sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", queues,
                          "-c", str(concurrency), "--pool", "prefork", "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h",
                          "--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "WARNING",
                          name=name)

    def leadrouter(self, *args: str, name: str = "leadrouter") -> subprocess.Popen[bytes]:
        return self.start(sys.executable, "-m", "worker.cli", *args, name=name)

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}" for p in self.logdir.glob("*.log"))

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

    def stop_all(self) -> None:
        if self in _LIVE:
            _LIVE.remove(self)
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                self.kill(p)


@pytest.fixture
def processes(service_env: dict[str, str], tmp_path: Path) -> Iterator[Processes]:
    logdir = tmp_path / "logs"
    logdir.mkdir()
    procs = Processes(service_env, logdir)
    yield procs
    procs.stop_all()


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05, message: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` (a database or Redis read) until it is truthy; fail with ``message``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            report = "".join(f"\n{procs.report()}" for procs in _LIVE)
            raise AssertionError(f"timed out after {timeout}s waiting for {message}{report}")
        time.sleep(interval)


@pytest.fixture
def tmpdir_path() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="leadrouter-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def hold_alerts(monkeypatch: pytest.MonkeyPatch, record: list[int] | None = None) -> None:
    """Drains in this process leave the alert steps they make due as pending rows (recorded in ``record``):
    not queued for a Celery worker, not fired by the fast lane itself. For tests about something else."""
    import worker.dispatch
    import worker.tasks

    monkeypatch.setattr(worker.dispatch, "dispatch_steps",
                        lambda ids, eta=None: (record.extend(ids) if record is not None else None) or 0)
    monkeypatch.setattr(worker.tasks, "INLINE_FIRING", 0)   # no thread to fire on: the steps are dispatched
    monkeypatch.setattr(worker.tasks, "_inline", None)
