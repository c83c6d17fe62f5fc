"""Fixtures of the integration suite: the pipeline (publish, start workers, read the database) and the
operator's environment, from ``tests/support``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.operator import around_the_clock
from tests.support.pipeline import Pipeline
from tests.support.stack import Processes


@pytest.fixture
def pipeline(service_env: dict[str, str], processes: Processes) -> Iterator[Pipeline]:
    from worker.app import app

    # the Celery app reads REDIS_URL when first imported; kicks must reach this test's Redis
    assert app.conf.broker_url == service_env["REDIS_URL"]
    p = Pipeline(service_env, processes)
    yield p
    p.close()


@pytest.fixture
def env(service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Every rep in hours around the clock, so routing does not depend on when the test runs; due alerts
    stay pending rows, which is what the operator's views read."""
    return around_the_clock(service_env, monkeypatch)
