"""Fixtures of the fault suite: a Redis of one test's own, and PostgreSQL behind a proxy that can cut it off.

The provider fakes and the alert environment are the end-to-end suite's.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import Processes
from tests.e2e.test_alerts_flow import alert_env, providers  # noqa: F401
from tests.faults.support import PrivateRedis, ProxiedDatabase, TcpProxy

POSTGRES_DEFAULT = "postgresql+psycopg://root@127.0.0.1:5432/test"


@pytest.fixture(autouse=True)
def _kill_processes_when_done(processes: Processes) -> Iterator[None]:
    """The scenarios are over when their test returns: no graceful shutdown to wait for."""
    yield
    for proc in processes.procs:
        processes.kill(proc)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server for one test, which it may kill, pause and restart."""
    directory = tmp_path / "own-redis"
    directory.mkdir()
    server = PrivateRedis(directory)
    server.start()
    yield server
    server.stop()


def postgres_server_url() -> str:
    """The PostgreSQL server of this run: ``DATABASE_URL`` when it is one, else the CI default."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgresql"):
        url = os.environ.get("CI_POSTGRES_URL") or POSTGRES_DEFAULT
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


@pytest.fixture
def postgres_behind_proxy() -> Iterator[ProxiedDatabase]:
    """A migrated PostgreSQL database of the test's own, created and reached through a TCP proxy.

    PostgreSQL even in a SQLite run: an outage of a database server is what this stands for.
    """
    from worker.migrate import upgrade

    server = sa.make_url(postgres_server_url())
    proxy = TcpProxy((server.host or "127.0.0.1", server.port or 5432)).start()
    name = f"lr_fault_{uuid.uuid4().hex[:10]}"
    via_proxy = server.set(host="127.0.0.1", port=proxy.port)
    admin = sa.create_engine(via_proxy, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        proxy.stop()
        pytest.fail(f"PostgreSQL at {server.host}:{server.port} is needed for the outage scenario: {exc}")
    finally:
        admin.dispose()
    url = via_proxy.set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    try:
        yield ProxiedDatabase(proxy, url, server.set(database=name).render_as_string(hide_password=False))
    finally:
        proxy.stop()
        direct = sa.create_engine(server, isolation_level="AUTOCOMMIT")
        with direct.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        direct.dispose()
