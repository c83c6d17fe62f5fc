"""Routing hundreds of simultaneous hot crossings with several real worker processes.

Two Celery worker processes of two children each drain small batches at once;
the database alone keeps the outcome the same as one worker's: one assignment
per hot episode, and a weighted split within one lead of the ideal.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, func, select

from routing.config import load_rules
from routing.events import iso
from tests.support.stack import CONFIG, Processes, wait_until
from worker.adapters import db, engines, stream
from worker.services.publish import publish

LEADS = 300
WEIGHTS = {"r1": 1, "r2": 1, "r3": 2}

ROUTING = """
reps:
  - {id: r1, name: Rep One, email: r1@example.com, timezone: UTC, hours: Mon-Sun 00:00-24:00, channels: [email], weight: 1}
  - {id: r2, name: Rep Two, email: r2@example.com, timezone: UTC, hours: Mon-Sun 00:00-24:00, channels: [email], weight: 1}
  - {id: r3, name: Rep Three, email: r3@example.com, timezone: UTC, hours: Mon-Sun 00:00-24:00, channels: [email], weight: 2}
  - {id: r4, name: Rep Four, email: r4@example.com, timezone: Europe/Berlin, hours: Mon-Sun 00:00-24:00, channels: [email]}
teams:
  - id: dach
    match: {address.country: [DE, AT, CH]}
    reps: [r4]
  - id: default
    reps: [r1, r2, r3]
accounts: {}
routing:
  after_hours: queue
  unrouted_notify: [revops@example.com]

"""


def rules_text() -> str:
    """The shipped scoring, alerts and pages, with this test's reps and teams."""
    text = CONFIG.read_text()
    start, end = text.index("\nreps:"), text.index("\nalerts:")
    return text[:start] + "\n" + ROUTING + text[end + 1:]


@pytest.fixture
def live(service_env: dict[str, str], processes: Processes, tmp_path: Path) -> Iterator[dict[str, Any]]:
    from worker.app import app

    assert app.conf.broker_url == service_env["REDIS_URL"]
    path = tmp_path / "routing-live.yaml"
    path.write_text(rules_text())
    rules = load_rules(path)
    assert [(r.id, r.weight) for r in rules.reps][:3] == list(WEIGHTS.items())
    processes.env["LEADROUTER_CONFIG"] = str(path)
    processes.env["LEADROUTER_BATCH_SIZE"] = "8"
    r = redis.Redis.from_url(service_env["REDIS_URL"])
    engine = create_engine(service_env["DATABASE_URL"])
    yield {"rules": rules, "redis": r, "sessions": engines.make_sessionmaker(engine), "processes": processes}
    engine.dispose()
    r.close()


def crossing(i: int, at: str) -> list[dict[str, Any]]:
    """Traits worth 45 and two high-value events worth 45, all at one instant: exactly one of them crosses 75."""
    lead = f"u-hot-{i}"
    traits = {"name": f"Lead {i}", "company": {"industry": "software", "employee_count": 800},
              "address": {"country": "US"}, "role": "decision_maker"}
    return [
        {"type": "identify", "messageId": f"{lead}-id", "userId": lead, "traits": traits, "timestamp": at},
        {"type": "track", "messageId": f"{lead}-demo", "userId": lead, "event": "Demo Requested", "timestamp": at},
        {"type": "track", "messageId": f"{lead}-price", "userId": lead, "event": "Pricing Downloaded",
         "timestamp": at},
    ]


def publish_all(live: dict[str, Any], batches: list[list[dict[str, Any]]], threads: int = 6) -> None:
    start = threading.Barrier(threads)
    errors: list[Any] = []

    def send(mine: list[list[dict[str, Any]]]) -> None:
        start.wait(10)
        for events in mine:
            result = publish(live["redis"], events, live["rules"])
            errors.extend(result.errors)

    workers = [threading.Thread(target=send, args=(batches[k::threads],)) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    assert errors == []


def scalar(live: dict[str, Any], stmt: Any) -> Any:
    with live["sessions"]() as s:
        return s.scalar(stmt)


def drained(live: dict[str, Any]) -> bool:
    return all(stream.backlog(live["redis"], lane) == {"waiting": 0, "pending": 0} for lane in stream.LANES)


def test_hundreds_of_simultaneous_crossings_route_once_each_and_split_by_weight(live: dict[str, Any]) -> None:
    procs: Processes = live["processes"]
    procs.celery_worker(queues="events,fast", concurrency=2)
    procs.celery_worker(queues="events,fast", concurrency=2)
    at = iso(datetime.now().astimezone() - timedelta(minutes=1)) or ""
    batches = [crossing(i, at) for i in range(LEADS)]
    publish_all(live, batches + batches[::7])   # some crossings delivered twice from the start

    def events_stored() -> bool:
        return scalar(live, select(func.count()).select_from(db.Event)) == 3 * LEADS and drained(live)

    wait_until(events_stored, timeout=60, message="all crossings processed")

    with live["sessions"]() as s:
        episodes = s.execute(select(db.HotEpisode.lead_id, func.count()).group_by(db.HotEpisode.lead_id)).all()
        assignments = list(s.scalars(select(db.Assignment)))
        leads = list(s.scalars(select(db.Lead)))
    assert len(leads) == LEADS
    assert all(lead.tier == "hot" and lead.score == 90 and lead.event_count == 3 for lead in leads)
    assert len(episodes) == LEADS and all(n == 1 for _, n in episodes)
    per_lead = Counter(a.lead_id for a in assignments)
    assert len(per_lead) == LEADS and set(per_lead.values()) == {1}
    assert all(a.current and a.team_id == "default" for a in assignments)
    assert len({a.episode_id for a in assignments}) == LEADS
    assert {lead.owner for lead in leads} <= set(WEIGHTS)

    split = Counter(a.rep_id for a in assignments)
    total = sum(WEIGHTS.values())
    for rep, weight in WEIGHTS.items():
        ideal = LEADS * weight / total
        assert abs(split[rep] - ideal) <= 1, (rep, split)
    names = set()
    for lane in stream.LANES:
        try:
            names |= {c["name"] for c in live["redis"].xinfo_consumers(stream.stream_key(lane), stream.GROUP)}
        except redis.ResponseError:
            pass
    assert len(names) >= 2, "several worker processes took part"

    # the same crossings delivered again, after the fact: nothing routes twice
    publish_all(live, batches[:100])
    wait_until(lambda: drained(live), timeout=30, message="the re-delivery drained")
    wait_until(lambda: scalar(live, select(func.count()).select_from(db.Event)) == 3 * LEADS, timeout=5)
    assert scalar(live, select(func.count()).select_from(db.Assignment)) == LEADS
    assert scalar(live, select(func.count()).select_from(db.HotEpisode)) == LEADS
