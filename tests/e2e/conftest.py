"""Fixtures of the end-to-end tests: steps queued for Celery recorded instead, and one API process
shared by a test module. The local provider server and the alert environment are the top conftest's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.alerting import record_queued
from tests.support.ingest import Api, shared_api_process
from tests.support.voice import app_client, player, voice_env, voice_stack  # noqa: F401  (fixtures)


@pytest.fixture
def queued(alert_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[int], object]]:
    """Steps the code under test hands to Celery: (step ids, eta) per task, instead of a broker."""
    return record_queued(monkeypatch)


@pytest.fixture(scope="module")
def shared_api(redis_server: Any, _migrated_pg: str | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One API process for the tests that need no special settings (starting one takes seconds)."""
    yield from shared_api_process(redis_server.url, _migrated_pg, tmp_path_factory.mktemp("api"))
