"""A batch is scored before its write transaction (worker.services.pipeline.Forecast) and written under the lock.

The forecast reads a snapshot; another worker may commit events for the same leads before the
write lock is ours. These tests make that happen on purpose, in one process, on the test run's
database (SQLite or PostgreSQL), and check that a stale plan is never written.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from routing.config import Rules, load_rules
from routing.events import iso
from worker.adapters import db, engines
from worker.adapters.stream import Entry
from worker.services import pipeline
from worker.services.assign import Router

NOW = db.now_utc().replace(microsecond=0)


@pytest.fixture
def world(service_env: dict[str, str]) -> Iterator[tuple[Any, Rules]]:
    engine = engines.make_engine(service_env["DATABASE_URL"])
    try:
        yield engine, load_rules(service_env["LEADROUTER_CONFIG"])
    finally:
        engine.dispose()


def track(mid: str, user: str, event: str, minutes_ago: float = 1) -> Entry:
    payload = {"type": "track", "messageId": mid, "userId": user, "event": event,
               "timestamp": iso(NOW - timedelta(minutes=minutes_ago))}
    return Entry(f"0-{mid}", "default", iso(NOW) or "", payload)


def forecast(engine: Any, entries: list[Entry], rules: Rules) -> pipeline.Forecast:
    with engines.reading(engine) as conn:
        return pipeline.forecast(conn, entries, rules, NOW)


def apply(engine: Any, entries: list[Entry], rules: Rules, fc: pipeline.Forecast | None = None
          ) -> pipeline.BatchResult:
    with engines.make_sessionmaker(engine).begin() as session:
        return pipeline.process_batch(session, entries, rules, NOW, Router(rules), fc)


def scored_under_lock(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The message ids that ``process_batch`` scores itself from now on (not taken from a plan)."""
    calls: list[str] = []
    real = pipeline.make_plan

    def counting(lead_id: str, before: Any, episode: Any, ev: Any, *args: Any, **kwargs: Any) -> pipeline.Plan:
        calls.append(ev.message_id)
        return real(lead_id, before, episode, ev, *args, **kwargs)

    monkeypatch.setattr(pipeline, "make_plan", counting)
    return calls


def stored(engine: Any, mid: str) -> tuple[float, str]:
    with engine.connect() as c:
        row = c.execute(select(db.Event.score_after, db.Event.lead_id).where(db.Event.message_id == mid)).one()
    return float(row[0]), row[1]


def lead_score(engine: Any, lead_id: str) -> tuple[float, int]:
    with engine.connect() as c:
        row = c.execute(select(db.Lead.score, db.Lead.event_count).where(db.Lead.id == lead_id)).one()
    return float(row[0]), int(row[1])


def test_a_forecast_of_unchanged_leads_is_written_as_planned(world: tuple[Any, Rules],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    engine, rules = world
    apply(engine, [track("seed", "ada", "Pricing Page Viewed")], rules)
    batch = [track("a1", "ada", "Case Study Viewed"), track("b1", "bo", "Webinar Attended"),
             track("a2", "ada", "Comparison Viewed")]
    fc = forecast(engine, batch, rules)
    assert sorted(fc.plans) == [0, 1, 2]

    rescored = scored_under_lock(monkeypatch)
    result = apply(engine, batch, rules, fc)

    assert result.processed == 3
    assert rescored == []
    assert stored(engine, "a1")[0] == 10 + 8
    assert stored(engine, "a2")[0] == 10 + 8 + 10
    ada = stored(engine, "a2")[1]
    assert lead_score(engine, ada) == (28, 3)


def test_a_lead_another_batch_changed_after_the_forecast_is_scored_again_under_the_lock(
        world: tuple[Any, Rules], monkeypatch: pytest.MonkeyPatch) -> None:
    engine, rules = world
    batch = [track("a1", "ada", "Case Study Viewed"), track("b1", "bo", "Webinar Attended"),
             track("a2", "ada", "Comparison Viewed")]
    fc = forecast(engine, batch, rules)
    # meanwhile another worker commits a pricing view for ada (10 points)
    apply(engine, [track("other", "ada", "Pricing Page Viewed")], rules)

    rescored = scored_under_lock(monkeypatch)
    apply(engine, batch, rules, fc)

    assert rescored == ["a1", "a2"]          # bo's plan still held
    assert stored(engine, "a1")[0] == 10 + 8   # the stale plan said 8
    assert stored(engine, "a2")[0] == 10 + 8 + 10
    ada = stored(engine, "a2")[1]
    assert lead_score(engine, ada) == (28, 3)
    assert stored(engine, "b1")[0] == 10


def test_an_event_stored_by_another_batch_after_the_forecast_counts_once(
        world: tuple[Any, Rules], monkeypatch: pytest.MonkeyPatch) -> None:
    engine, rules = world
    batch = [track("a1", "ada", "Case Study Viewed"), track("a2", "ada", "Comparison Viewed")]
    fc = forecast(engine, batch, rules)
    apply(engine, [batch[0]], rules)          # the same a1, delivered twice, landed first elsewhere

    result = apply(engine, batch, rules, fc)

    assert (result.processed, result.duplicates) == (1, 1)
    ada = stored(engine, "a2")[1]
    assert stored(engine, "a2")[0] == 8 + 10
    assert lead_score(engine, ada) == (18, 2)


def test_a_lead_that_crosses_is_planned_no_further_and_routed_under_the_lock(
        world: tuple[Any, Rules], monkeypatch: pytest.MonkeyPatch) -> None:
    engine, rules = world
    traits = {"type": "identify", "messageId": "id", "userId": "cy", "timestamp": iso(NOW - timedelta(minutes=5)),
              "traits": {"email": "cy@acme.com", "role": "decision_maker", "address": {"country": "US"},
                         "company": {"name": "Acme", "industry": "software", "employee_count": 1200}}}
    apply(engine, [Entry("0-id", "default", iso(NOW) or "", traits), track("p", "cy", "Pricing Page Viewed", 4)],
          rules)
    batch = [track("demo", "cy", "Demo Requested", 2), track("after", "cy", "Webinar Attended", 1)]
    fc = forecast(engine, batch, rules)
    assert sorted(fc.plans) == [0]            # the crossing is planned; what follows it is not

    rescored = scored_under_lock(monkeypatch)
    result = apply(engine, batch, rules, fc)

    assert result.crossings == 1
    assert rescored == ["after"]
    cy = stored(engine, "demo")[1]
    with engine.connect() as c:
        assert c.execute(select(db.HotEpisode.id).where(db.HotEpisode.lead_id == cy)).all()
    assert stored(engine, "after")[0] == stored(engine, "demo")[0] + 10
