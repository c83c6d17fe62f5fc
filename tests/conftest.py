"""Shared fixtures: a private redis-server, a database of the test run's own, product processes, and the
local provider server with the environment pointing the product at it. The code is in ``tests/support``.

``DATABASE_URL`` chooses the database: unset, each test gets a SQLite file; a
PostgreSQL URL makes the run create its own database there and drop it at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.providers import FakeProviderServer
from tests.support.alerting import alert_environment, wait_for_inline_sends, webhooks_client
from tests.support.stack import (
    CONFIG,
    SECRET_KEY,
    Processes,
    RedisServer,
    create_database,
    drop_database,
    psycopg_url,
    reset_process_state,
    truncate_all,
)


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
    url = psycopg_url(url)
    name = create_database(url, "lr_test")
    base, _, _ = url.rpartition("/")
    yield f"{base}/{name}"
    drop_database(url, name)


@pytest.fixture(scope="session")
def _migrated_pg(database_server: str | None) -> str | None:
    if database_server is None:
        return None
    from worker.adapters.migrate import upgrade

    upgrade(database_server)
    return database_server


@pytest.fixture
def database_url(_migrated_pg: str | None, tmp_path: Path) -> str:
    """A migrated, empty database for one test."""
    if _migrated_pg is not None:
        truncate_all(_migrated_pg)
        return _migrated_pg
    from worker.adapters.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'leadrouter.db'}"
    upgrade(url)
    return url


@pytest.fixture
def service_env(redis_server: RedisServer, database_url: str, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
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
    reset_process_state()
    yield env
    reset_process_state()


@pytest.fixture
def processes(service_env: dict[str, str], tmp_path: Path) -> Iterator[Processes]:
    logdir = tmp_path / "logs"
    logdir.mkdir()
    procs = Processes(service_env, logdir)
    yield procs
    procs.stop_all()


@pytest.fixture
def tmpdir_path() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="leadrouter-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def providers() -> Iterator[FakeProviderServer]:
    server = FakeProviderServer(validation="background")
    yield server
    server.stop()


@pytest.fixture
def alert_env(service_env: dict[str, str], providers: FakeProviderServer,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    yield alert_environment(service_env, providers, monkeypatch)
    wait_for_inline_sends()


@pytest.fixture
def client(alert_env: dict[str, str]) -> Any:
    return webhooks_client()
