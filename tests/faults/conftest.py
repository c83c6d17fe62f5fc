"""Fixtures of the fault suite: a Redis of one test's own, and PostgreSQL behind a proxy that can cut it off.

The provider fakes and the alert environment are the top conftest's; the code is in ``tests/support``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support.faults import PrivateRedis, ProxiedDatabase, TcpProxy
from tests.support.stack import Processes, create_database, drop_database, postgres_server_url


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


@pytest.fixture
def postgres_behind_proxy() -> Iterator[ProxiedDatabase]:
    """A migrated PostgreSQL database of the test's own, created and reached through a TCP proxy.

    PostgreSQL even in a SQLite run: an outage of a database server is what this stands for.
    """
    from worker.adapters.migrate import upgrade

    server = sa.make_url(postgres_server_url())
    proxy = TcpProxy((server.host or "127.0.0.1", server.port or 5432)).start()
    via_proxy = server.set(host="127.0.0.1", port=proxy.port)
    try:
        name = create_database(via_proxy.render_as_string(hide_password=False), "lr_fault")
    except sa.exc.OperationalError as exc:
        proxy.stop()
        pytest.fail(f"PostgreSQL at {server.host}:{server.port} is needed for the outage scenario: {exc}")
    url = via_proxy.set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    try:
        yield ProxiedDatabase(proxy, url, server.set(database=name).render_as_string(hide_password=False))
    finally:
        proxy.stop()
        drop_database(server, name)
