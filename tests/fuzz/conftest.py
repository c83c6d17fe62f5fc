"""The HTTP app in this process, with every verifier configured (write keys, Twilio, SendGrid, claim
tokens), so hostile requests reach the code that must refuse them. Built on the alert environment of
the top conftest; the code is in ``tests/support``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.support.fuzz import KEYS, Api, sendgrid_public_key


@pytest.fixture
def fuzz_env(alert_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """alert_env plus write keys, a SendGrid verification key and a rate limit no fuzz run reaches."""
    from worker.adapters.runtime import reset_runtime
    from worker.adapters.settings import reset_settings
    from worker.entrypoints.ingest_access import get_ingest_settings

    extra = {"LEADROUTER_WRITE_KEYS": ",".join(f"{name}:{key}" for name, key in KEYS.items()),
             "LEADROUTER_RATE_LIMIT": "1000000", "LEADROUTER_RATE_BURST": "1000000000",
             "SENDGRID_WEBHOOK_PUBLIC_KEY": sendgrid_public_key()}
    for k, v in extra.items():
        monkeypatch.setenv(k, v)
    reset_settings()
    reset_runtime()
    get_ingest_settings.cache_clear()
    yield {**alert_env, **extra}
    get_ingest_settings.cache_clear()


@pytest.fixture
def api(fuzz_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    from fastapi.testclient import TestClient

    from worker.entrypoints import api_ingest
    from worker.entrypoints.api import create_app

    kicks: list[str] = []
    # A drain kick is a Celery message; no worker runs here, so the kick is recorded instead of sent.
    monkeypatch.setattr(api_ingest, "_safe_kick", lambda _r, lane: kicks.append(lane))
    app = create_app()
    with TestClient(app) as client:
        yield Api(client, app, redis.Redis.from_url(fuzz_env["REDIS_URL"]), kicks)
