"""The event pipeline end to end: publish into Redis Streams, real Celery worker
processes drain it, the database holds the outcome.

Every test runs on SQLite and, with ``DATABASE_URL`` pointing at PostgreSQL, on
PostgreSQL. Workers consume only the ``events`` and ``fast`` queues.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import redis

from routing.config import load_rules
from routing.events import iso
from tests.support.pipeline import Pipeline
from tests.support.stack import ROOT, wait_until
from worker.adapters import db, stream

NOW = datetime.now().astimezone()


def ts(minutes_ago: float) -> str:
    """A timestamp ``minutes_ago`` before the test run started (fresh: never stale)."""
    return iso(NOW - timedelta(minutes=minutes_ago)) or ""


def track(mid: str, event: str, minutes_ago: float, user: str | None = None, anon: str | None = None,
          **props: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {"type": "track", "messageId": mid, "event": event, "timestamp": ts(minutes_ago),
                          "properties": props}
    if user:
        ev["userId"] = user
    if anon:
        ev["anonymousId"] = anon
    return ev


def identify(mid: str, traits: dict[str, Any], minutes_ago: float, user: str | None = None,
             anon: str | None = None) -> dict[str, Any]:
    ev: dict[str, Any] = {"type": "identify", "messageId": mid, "traits": traits, "timestamp": ts(minutes_ago)}
    if user:
        ev["userId"] = user
    if anon:
        ev["anonymousId"] = anon
    return ev


def page(mid: str, path: str, minutes_ago: float, anon: str) -> dict[str, Any]:
    return {"type": "page", "messageId": mid, "anonymousId": anon, "name": path, "properties": {"path": path},
            "timestamp": ts(minutes_ago)}


FIT = {"company": {"industry": "software", "employee_count": 1200}, "address": {"country": "US"},
       "role": "decision_maker"}   # 10 + 10 + 5 + 20 = 45 fit points under the default rules


# ---------------------------------------------------------------- 1. scoring through the live pipeline


def test_published_event_is_scored_and_stored_with_its_breakdown(pipeline: Pipeline) -> None:
    pipeline.worker()
    pipeline.publish([identify("i-1", {"email": "jane@acme.com", **FIT}, 30, user="u-1"),
                      track("t-1", "Webinar Attended", 20, user="u-1"),
                      track("t-2", "Pricing Page Viewed", 10, user="u-1")])
    pipeline.wait_events(3)

    lead = pipeline.lead("u-1")
    assert lead is not None
    assert (lead.score, lead.behavior, lead.fit, lead.tier) == (65, 20, 45, "warm")
    assert lead.event_count == 3
    assert lead.breakdown["events"]["Webinar Attended"] == {"occurrences": 1, "counted": 1, "points": 10}
    assert lead.breakdown["fit_rules"] == {"industry match": 10, "company size": 10, "geography": 5, "role": 20}
    assert lead.traits["company"] == {"industry": "software", "employee_count": 1200}
    assert lead.rules_hash == load_rules(pipeline.config).hash
    events = pipeline.rows(db.Event, db.Event.lead_id == "u-1")
    assert [(e.message_id, e.score_after) for e in events] == [("i-1", 45), ("t-1", 55), ("t-2", 65)]


def test_anonymous_page_views_merge_into_the_user_on_identify_and_count(pipeline: Pipeline) -> None:
    pipeline.worker()
    pipeline.publish([page("p-1", "/pricing", 50, anon="a-7"), page("p-2", "/pricing/enterprise", 45, anon="a-7"),
                      page("p-3", "/blog/why", 40, anon="a-7")])
    pipeline.wait_events(3)
    anon = pipeline.lead("anon:a-7")
    assert anon is not None and anon.score == 22   # 2 × Pricing Page Viewed + Blog Post Viewed

    # the form fill: both ids at once, and the traits that make the lead fit
    pipeline.publish([identify("i-7", {"email": "sam@acme.com", **FIT}, 30, user="u-7", anon="a-7")])
    pipeline.wait_events(4)
    user = pipeline.lead("u-7")
    assert user is not None
    assert (user.score, user.behavior, user.fit) == (67, 22, 45)
    assert user.breakdown["events"]["Pricing Page Viewed"]["counted"] == 2
    assert pipeline.lead("anon:a-7").merged_into == "u-7"   # type: ignore[union-attr]
    assert pipeline.count(db.Event, db.Event.lead_id == "anon:a-7") == 0
    assert pipeline.count(db.Event, db.Event.lead_id == "u-7") == 4

    # later events carrying only the anonymous id go to the user's lead
    pipeline.publish([page("p-4", "/compare/us-vs-them", 10, anon="a-7")])
    pipeline.wait_events(5)
    user = pipeline.lead("u-7")
    assert user is not None and (user.score, user.behavior) == (77, 32), json.dumps(user.breakdown)
    assert user.tier == "hot"
    assert pipeline.count(db.Event, db.Event.lead_id == "u-7") == 5
    assert pipeline.count(db.HotEpisode, db.HotEpisode.lead_id == "u-7") == 1


def test_identify_merges_nested_traits_and_the_latest_timestamp_wins(pipeline: Pipeline) -> None:
    pipeline.worker()
    pipeline.publish([identify("n-1", {"name": "Kim", "company": {"name": "Acme", "industry": "software"}}, 30,
                               user="u-n")])
    pipeline.wait_events(1)
    pipeline.publish([identify("n-2", {"company": {"employee_count": 1200}, "address": {"country": "DE"}}, 20,
                               user="u-n")])
    pipeline.wait_events(2)
    # arrives last, happened first: older than the values above, so it changes none of them
    pipeline.publish([identify("n-3", {"name": "Kimberly", "company": {"industry": "retail", "domain": "acme.com"}},
                               60, user="u-n")])
    pipeline.wait_events(3)

    lead = pipeline.lead("u-n")
    assert lead is not None
    assert lead.traits == {"name": "Kim", "address": {"country": "DE"},
                           "company": {"name": "Acme", "industry": "software", "employee_count": 1200,
                                       "domain": "acme.com"}}
    assert lead.fit == 25   # industry 10 + size 10 + geography 5
    assert lead.breakdown["fit_rules"]["industry match"] == 10


def test_a_late_event_is_scored_by_its_own_timestamp(pipeline: Pipeline) -> None:
    pipeline.worker()
    pipeline.publish([track("l-1", "Pricing Page Viewed", 10, user="u-l"),
                      track("l-2", "Pricing Page Viewed", 5, user="u-l")])
    pipeline.wait_events(2)
    # delivered now, happened earlier than both: max_count 2 keeps the two most recent
    pipeline.publish([track("l-3", "Pricing Page Viewed", 60, user="u-l"),
                      track("l-4", "Webinar Attended", 40 * 24 * 60, user="u-l")])
    pipeline.wait_events(4)

    events = {e.message_id: e for e in pipeline.rows(db.Event, db.Event.lead_id == "u-l")}
    assert events["l-3"].score_after == 10          # the score at its own time: nothing else had happened
    assert events["l-4"].score_after == 10          # 40 days ago it counted in full ...
    assert events["l-4"].stale is True              # ... and is too old to alert
    lead = pipeline.lead("u-l")
    assert lead is not None
    assert lead.breakdown["events"]["Pricing Page Viewed"] == {"occurrences": 3, "counted": 2, "points": 20}
    assert lead.breakdown["events"]["Webinar Attended"]["points"] == 5   # ... and counts half today
    assert lead.score == 25


def test_a_late_event_that_turns_the_lead_hot_routes_it_with_the_traits_of_a_newer_identify(
        pipeline: Pipeline) -> None:
    # As a browser client's requests land under load: the identify (stamped last) and one track
    # first, then the other track, late, stamped before the identify. Only the identify's fit
    # makes the lead hot, so its traits decide the team (na: US, 1,200 employees), not the
    # default team's fallback that the traits as of the late track alone would pick.
    traits = {"role": "decision_maker", "address": {"country": "US"},
              "company": {"name": "Acme", "industry": "software", "employee_count": 1200}}
    pipeline.worker()
    pipeline.publish([identify("t-1", traits, 1, user="u-t"), track("t-2", "Pricing Page Viewed", 3, user="u-t")])
    pipeline.wait_events(2)
    assert pipeline.count(db.Assignment, db.Assignment.lead_id == "u-t") == 0
    pipeline.publish([track("t-3", "Demo Requested", 2, user="u-t")])
    pipeline.wait_events(3)
    wait_until(lambda: pipeline.count(db.Assignment, db.Assignment.lead_id == "u-t") == 1,
               message="the lead's assignment")
    [assignment] = pipeline.rows(db.Assignment, db.Assignment.lead_id == "u-t")
    assert assignment.team_id == "na" and assignment.rep_id in ("alice", "bob"), assignment.reasons


# ---------------------------------------------------------------- 2. idempotency under concurrency


def test_one_message_id_delivered_fifty_times_at_once_counts_once_per_source(pipeline: Pipeline) -> None:
    pipeline.worker(concurrency=2, LEADROUTER_BATCH_SIZE="1")
    pipeline.worker(concurrency=2)
    event = track("dup-1", "Email Clicked", 5, user="u-d")
    start = threading.Barrier(51)
    errors: list[BaseException] = []

    def send(source: str) -> None:
        try:
            start.wait(10)
            pipeline.publish([dict(event)], source=source)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=("default",)) for _ in range(50)]
    threads.append(threading.Thread(target=send, args=("website",)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    wait_until(pipeline.drained, message="the stream drained")
    pipeline.wait_events(2)

    rows = pipeline.rows(db.Event)
    assert sorted(e.source for e in rows) == ["default", "website"]
    lead = pipeline.lead("u-d")
    assert lead is not None
    assert lead.event_count == 2
    assert lead.breakdown["events"]["Email Clicked"] == {"occurrences": 2, "counted": 2, "points": 10}
    assert len(consumers(pipeline)) >= 2   # more than one worker process really took part


def consumers(pipeline: Pipeline) -> set[str]:
    names: set[str] = set()
    for lane in stream.LANES:
        try:
            infos = pipeline.redis.xinfo_consumers(stream.stream_key(lane), stream.GROUP)
        except redis.ResponseError:
            continue
        names |= {c["name"].decode() if isinstance(c["name"], bytes) else c["name"] for c in infos}
    return names


# ---------------------------------------------------------------- 3. no lost update


def test_events_for_one_lead_processed_at_the_same_moment_lose_no_update(pipeline: Pipeline) -> None:
    pipeline.worker(concurrency=3, LEADROUTER_BATCH_SIZE="1")
    pipeline.worker(concurrency=3)
    leads = [f"u-race-{i}" for i in range(12)]
    names = ["Webinar Attended"] * 3 + ["Email Clicked"] * 3 + ["Content Downloaded"] * 2   # 30 + 15 + 10
    per_thread = [[track(f"{lead}-{k}", name, 30 - k, user=lead) for lead in leads] for k, name in enumerate(names)]
    start = threading.Barrier(len(per_thread))

    def send(events: list[dict[str, Any]]) -> None:
        start.wait(10)
        for ev in events:   # one publish each: one kick each, so drains overlap
            pipeline.publish([ev])

    threads = [threading.Thread(target=send, args=(evs,)) for evs in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    pipeline.wait_events(len(leads) * len(names), timeout=60)

    for lead_id in leads:
        lead = pipeline.lead(lead_id)
        assert lead is not None
        assert (lead.event_count, lead.score, lead.behavior) == (8, 55, 55), lead_id
        assert lead.breakdown["events"]["Email Clicked"]["occurrences"] == 3
    assert len(consumers(pipeline)) >= 2


# ---------------------------------------------------------------- 4. kill -9 mid-batch


def test_a_worker_killed_mid_batch_loses_and_doubles_nothing(pipeline: Pipeline) -> None:
    env = {"LEADROUTER_RECLAIM_IDLE_SECONDS": "2", "LEADROUTER_BATCH_SIZE": "25"}
    first = pipeline.worker(concurrency=2, **env)
    events = [track(f"k-{i}", ["Email Clicked", "Webinar Attended", "Page Viewed"][i % 3], 20, user=f"u-k{i % 40}")
              for i in range(600)]
    for i in range(0, len(events), 50):
        pipeline.publish(events[i:i + 50])
    wait_until(lambda: pipeline.count(db.Event) > 0, message="the first worker to start")

    def frozen_holding_a_batch() -> bool:
        """Freeze the worker; True if it holds entries it has read, else let it go on and try again."""
        os.killpg(first.pid, signal.SIGSTOP)
        if sum(stream.pending_count(pipeline.redis, lane) for lane in stream.LANES) > 0:
            return True
        os.killpg(first.pid, signal.SIGCONT)
        return False

    wait_until(frozen_holding_a_batch, interval=0.01, message="the worker mid-batch")
    pipeline.processes.kill(first)   # SIGKILL to the whole process group, mid-drain
    killed_at = time.monotonic()
    stored = pipeline.count(db.Event)
    assert 0 < stored < len(events), f"the worker must die with work left ({stored})"
    held = sum(stream.pending_count(pipeline.redis, lane) for lane in stream.LANES)

    pipeline.worker(concurrency=2, **env)
    pipeline.wait_events(len(events), timeout=40)
    assert time.monotonic() - killed_at < 30
    assert held > 0, "the killed worker held a batch it had read"
    assert sum(lead.event_count for lead in pipeline.rows(db.Lead)) == len(events)
    assert pipeline.count(db.DeadLetter) == 0


# ---------------------------------------------------------------- 5. rules hot reload


def test_a_running_worker_picks_up_changed_rules_and_refuses_an_invalid_file(pipeline: Pipeline) -> None:
    pipeline.worker(concurrency=1)
    original = pipeline.config.read_text()
    pipeline.publish([track("r-1", "Webinar Attended", 5, user="u-r1")])
    pipeline.wait_events(1)
    assert pipeline.lead("u-r1").score == 10   # type: ignore[union-attr]

    changed = original.replace("Webinar Attended:      {points: 10,", "Webinar Attended:      {points: 30,")
    assert changed != original
    pipeline.config.write_text(changed)
    good = load_rules(pipeline.config)
    pipeline.publish([track("r-2", "Webinar Attended", 5, user="u-r2")])
    pipeline.wait_events(2)
    lead = pipeline.lead("u-r2")
    assert lead is not None and lead.score == 30 and lead.rules_hash == good.hash

    pipeline.config.write_text(changed.replace("warm: 40", "warm: lots").replace("{points: 30,", "{points: 1,"))
    pipeline.publish([track("r-3", "Webinar Attended", 5, user="u-r3"),
                      track("r-4", "Webinar Attended", 4, user="u-r1")])
    pipeline.wait_events(4)
    lead = pipeline.lead("u-r3")
    assert lead is not None and lead.score == 30 and lead.rules_hash == good.hash   # the last good rules
    assert pipeline.lead("u-r1").score == 60   # type: ignore[union-attr]  # rescored under them: 2 × 30


# ---------------------------------------------------------------- 6. dead letters


def test_an_entry_that_fails_processing_is_dead_lettered_and_the_batch_goes_on(pipeline: Pipeline) -> None:
    received = iso(datetime.now().astimezone()) or ""
    entries = [
        ("default", received, track("ok-1", "Email Clicked", 5, user="u-dl")),
        # each timestamp parses on its own, but together they are refused: sentAt 10,000 years later
        ("default", received, {**track("bad-skew", "Email Clicked", 5, user="u-dl"),
                               "timestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-12-31T00:00:00Z"}),
        ("website", received, {"type": "track", "userId": "u-dl", "event": "Email Clicked"}),   # no messageId
        ("default", received, track("ok-2", "Webinar Attended", 4, user="u-dl")),
    ]
    stream.append(pipeline.redis, stream.NORMAL, entries)
    pipeline.redis.xadd(stream.stream_key(stream.NORMAL), {"s": "default", "r": received, "p": "{not json"})
    pipeline.worker(concurrency=1)   # drains what it finds at start: no kick needed

    wait_until(lambda: pipeline.count(db.DeadLetter) >= 3 and pipeline.drained(),
               message="three dead letters")
    pipeline.wait_events(2)
    lead = pipeline.lead("u-dl")
    assert lead is not None and lead.score == 15 and lead.event_count == 2

    letters = pipeline.rows(db.DeadLetter)
    assert len(letters) == 3
    skew = next(d for d in letters if d.message_id == "bad-skew")
    assert "before sentAt" in skew.error
    assert skew.payload["event"]["sentAt"] == "9999-12-31T00:00:00Z"
    missing = next(d for d in letters if d.source == "website")
    assert "messageId" in missing.error and missing.payload["event"]["event"] == "Email Clicked"
    garbled = next(d for d in letters if d.source == "default" and d.message_id is None)
    assert "{not json" in json.dumps(garbled.payload)

    out = subprocess.run([sys.executable, "-m", "worker.entrypoints.cli", "dead-letters", "list", "--json"], cwd=ROOT,
                         env={**pipeline.processes.env}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert sorted(str(d["message_id"]) for d in listed) == ["None", "None", "bad-skew"]
    assert any("before sentAt" in d["error"] for d in listed)


def test_entries_held_by_a_dead_consumer_are_claimed_with_no_new_event_to_kick_a_drain(pipeline: Pipeline) -> None:
    stream.ensure_groups(pipeline.redis)
    received = iso(datetime.now().astimezone()) or ""
    stream.append(pipeline.redis, stream.NORMAL,
                  [("default", received, track(f"g-{i}", "Email Clicked", 3, user=f"u-g{i % 3}")) for i in range(30)])
    # a worker read them all and died before acknowledging: the state a kill -9 leaves (read before the
    # new worker starts, so its drain at start cannot take them first)
    held = pipeline.redis.xreadgroup(stream.GROUP, "gone-1234", {stream.stream_key(stream.NORMAL): ">"}, count=100)
    assert len(held[0][1]) == 30
    pipeline.worker(concurrency=1, LEADROUTER_RECLAIM_IDLE_SECONDS="2")
    wait_until(lambda: len(consumers(pipeline)) > 1, message="the worker's drain at start")
    from worker.services.publish import kick_drain

    kick_drain(pipeline.redis, stream.NORMAL)   # the last kick there will be; it may find nothing to claim yet
    started = time.monotonic()
    pipeline.wait_events(30, timeout=20)
    assert time.monotonic() - started < 10
    assert sum(lead.event_count for lead in pipeline.rows(db.Lead)) == 30
