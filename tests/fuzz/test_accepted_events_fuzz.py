"""What the tracking API accepts, the workers can process (SPEC §2, §8): a hostile but accepted event is
scored or counted as a duplicate, never dead-lettered for something ingestion could have refused, and
never left in the stream where it would block the events behind it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from tests.support.fuzz import Api
from tests.support.stack import hold_alerts
from tests.support.strategies import FUZZ, event_dicts, odd_events
from worker.adapters import db, stream


@pytest.fixture
def no_alerts(fuzz_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Steps a drain makes due are recorded, not sent to Celery: this is about the events, not the alerts."""
    from worker.app import app

    assert app.conf.broker_url == fuzz_env["REDIS_URL"], "Celery would talk to another Redis than the test's"

    due: list[int] = []
    hold_alerts(monkeypatch, due)
    return due


@settings(FUZZ, max_examples=15)
@given(batch=st.lists(st.one_of(odd_events(), event_dicts()), min_size=1, max_size=6))
def test_every_accepted_event_is_processed_and_none_is_stuck(api: Api, no_alerts: list[int],
                                                              batch: list[dict[str, Any]]) -> None:
    from worker.adapters.runtime import get_runtime
    from worker.entrypoints.tasks import drain_once

    api.reset_queue()
    r = api.post("/v1/batch", content=json.dumps({"batch": batch}).encode())
    assert r.status_code in (200, 413), r.text
    accepted = r.json()["accepted"] if r.status_code == 200 else 0
    with get_runtime().sessions() as s:
        dead_before = s.scalar(select(func.count()).select_from(db.DeadLetter))
    drained = 0
    for lane in stream.LANES:
        while True:
            n, result = drain_once(lane)
            if n == 0:
                break
            drained += n          # scored, a duplicate, or ignored (an unknown type): all acknowledged
            assert result.dead_lettered == 0, "an accepted event was dead-lettered"
    assert drained == accepted
    for lane in stream.LANES:
        assert api.redis.xlen(stream.stream_key(lane)) == 0 and stream.pending_count(api.redis, lane) == 0
    with get_runtime().sessions() as s:
        assert s.scalar(select(func.count()).select_from(db.DeadLetter)) == dead_before
