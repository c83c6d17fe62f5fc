"""The database engine bounds every wait and keeps data out of its errors: statement parameters are
never printed (they are traits, emails, phone numbers), and on PostgreSQL a statement is cancelled
by the server past ``LEADROUTER_DB_STATEMENT_TIMEOUT``, connections use TCP keepalives, and a
request waits a bounded time for a pooled connection."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError

from tests.support.stack import postgres_server_url
from worker.adapters.engines import POOL_TIMEOUT, make_engine


def test_statement_parameters_never_appear_in_errors(database_url):
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn, pytest.raises(DBAPIError) as info:
            conn.execute(text("SELECT * FROM no_such_table WHERE x = :x"), {"x": "jane.doe@acme-corp.com"})
        assert "jane.doe" not in str(info.value) and "parameters hidden" in str(info.value)
    finally:
        engine.dispose()


def test_postgresql_statements_time_out_on_the_server():
    engine = make_engine(postgres_server_url(), statement_timeout=0.3)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "300ms"
            start = time.monotonic()
            with pytest.raises(OperationalError, match="statement timeout"):
                conn.execute(text("SELECT pg_sleep(5)"))
            assert time.monotonic() - start < 3
        with engine.connect() as conn:
            params = conn.connection.dbapi_connection.info.get_parameters()  # type: ignore[union-attr]
        assert params["keepalives"] == "1" and params["connect_timeout"] == "5" and "tcp_user_timeout" in params
        assert engine.pool.timeout() == POOL_TIMEOUT  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def test_the_services_take_the_timeout_from_their_settings(service_env, monkeypatch):
    from worker.adapters.runtime import Runtime
    from worker.adapters.settings import Settings

    monkeypatch.setenv("DATABASE_URL", postgres_server_url())
    monkeypatch.setenv("LEADROUTER_DB_STATEMENT_TIMEOUT", "7.5")
    rt = Runtime(Settings())
    try:
        with rt.engine.connect() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "7500ms"
    finally:
        rt.engine.dispose()
