"""One lead's traits cannot grow without bound, and one costly lead never holds back the others.

The attack: thousands of ``identify`` calls for one ``userId``, each adding 80 new 100-character keys.
Unbounded, every merge re-read a history that grew with each call and each batch was slower than the
last; a normal lead published behind it waited for an hour. Capped, the updates past 200 keys are
refused whole (dead-lettered, counted in ``status``) and the normal lead is scored and alerted at once.
"""

from __future__ import annotations

import time

from tests.support.alerting import fast_rules, hot_lead
from tests.support.pipeline import Pipeline
from tests.support.stack import wait_until
from worker.adapters import db


def attack(n: int, keys: int = 80) -> list[dict]:
    return [{"type": "identify", "messageId": f"grow-{i}", "userId": "attacker",
             "traits": {f"k{i}x{j}": "v" * 100 for j in range(keys)}} for i in range(n)]


def test_trait_growth_is_capped_and_a_normal_lead_behind_it_is_alerted_at_once(pipeline: Pipeline) -> None:
    from worker.services.status import status

    fast_rules(pipeline.config)        # every rep in hours: the first alert is due at once
    pipeline.processes.celery_worker(queues="events,fast,alerts", concurrency=2)
    events = attack(3000)
    for i in range(0, len(events), 500):
        pipeline.publish(events[i:i + 500])
    started = time.monotonic()
    pipeline.publish(hot_lead("normal-1"))

    def alerted() -> bool:
        with pipeline.sessions() as s:
            lead = s.get(db.Lead, "normal-1")
            return lead is not None and lead.score >= 75 and pipeline.count(
                db.AlertStep, db.AlertStep.lead_id == "normal-1", db.AlertStep.step == 0,
                db.AlertStep.status == "done") == 1
    wait_until(alerted, timeout=90, message="the normal lead scored and alerted behind the attack")
    print(f"normal lead alerted {time.monotonic() - started:.1f} s after it was published behind 3,000 "
          f"growing identifies")
    wait_until(pipeline.drained, timeout=120, message="the attack processed")
    attacker = pipeline.lead("attacker")
    assert attacker is not None
    assert sum(1 for _ in attacker.traits) == 160              # two updates of 80 keys; the third would pass 200
    refused = pipeline.rows(db.DeadLetter)
    assert len(refused) == 2998
    assert all(d.error.startswith("traits over the lead's cap: 240 keys") for d in refused)
    assert pipeline.count(db.Event, db.Event.lead_id == "attacker") == 2
    with pipeline.sessions() as s:
        from routing.config import load_rules

        shown = status(s, pipeline.redis, load_rules(pipeline.config))
    assert shown.queues.trait_updates_refused == 2998


def test_updates_within_the_caps_are_taken_and_a_value_change_always_counts(pipeline: Pipeline) -> None:
    pipeline.worker()
    pipeline.publish([{"type": "identify", "messageId": "a", "userId": "u-cap", "timestamp": "2026-11-02T10:00:00Z",
                       "traits": {f"t{j}": "x" for j in range(199)}}])
    pipeline.publish([{"type": "identify", "messageId": "b", "userId": "u-cap", "timestamp": "2026-11-02T10:01:00Z",
                       "traits": {"t0": "changed", "t199": "the 200th key"}}])
    pipeline.publish([{"type": "identify", "messageId": "c", "userId": "u-cap", "timestamp": "2026-11-02T10:02:00Z",
                       "traits": {"t200": "one too many"}}])
    wait_until(lambda: pipeline.drained() and pipeline.count(db.Event) + pipeline.count(db.DeadLetter) == 3,
               timeout=30, message="three updates processed")
    lead = pipeline.lead("u-cap")
    assert lead is not None and len(lead.traits) == 200 and lead.traits["t0"] == "changed"
    [refused] = pipeline.rows(db.DeadLetter)
    assert refused.message_id == "c" and "201 keys" in refused.error


def test_a_batch_past_its_time_limit_is_applied_in_halves_and_nothing_is_lost(service_env, monkeypatch,
                                                                               caplog) -> None:
    import worker.entrypoints.tasks
    from tests.support.alerting import send
    from worker.adapters import stream
    from worker.adapters.engines import make_engine, make_sessionmaker

    monkeypatch.setattr(worker.entrypoints.tasks, "DRAIN_TIME_LIMIT", 0.0)   # every batch of two or more runs late
    events = [{"type": "track", "messageId": f"slow-{i}", "userId": f"u-slow-{i % 3}", "event": "Email Clicked"}
              for i in range(8)]
    send(events)
    taken, result = worker.entrypoints.tasks.drain_once(stream.NORMAL)
    assert taken == 8 and result.processed == 8
    assert "applying it in halves" in caplog.text
    engine = make_engine(service_env["DATABASE_URL"])
    try:
        with make_sessionmaker(engine)() as s:
            counts = {lead.id: lead.event_count for lead in s.query(db.Lead)}
    finally:
        engine.dispose()
    assert counts == {"u-slow-0": 3, "u-slow-1": 3, "u-slow-2": 2}


def test_entries_of_a_batch_being_worked_on_stay_young_so_no_one_takes_them_over(service_env) -> None:
    import redis

    from tests.support.alerting import send
    from worker.adapters import stream

    send([{"type": "track", "messageId": f"held-{i}", "userId": "u-held", "event": "Email Clicked"} for i in range(5)])
    r = redis.Redis.from_url(service_env["REDIS_URL"])
    entries = stream.read_batch(r, stream.NORMAL, "slow-consumer", 10, reclaim_idle_ms=60_000)
    assert len(entries) == 5
    key = stream.stream_key(stream.NORMAL)

    def idle_ms() -> list[int]:
        return [row["time_since_delivered"] for row in
                r.xpending_range(key, stream.GROUP, min="-", max="+", count=10, consumername="slow-consumer")]

    with stream.keep_claimed(r, stream.NORMAL, "slow-consumer", [e.id for e in entries], every=0.1):
        time.sleep(1.0)                      # a batch that takes a while: the time passing is the point
        assert max(idle_ms()) < 500          # refreshed meanwhile: a 0.5 s reclaim would not take them
        stolen = r.xautoclaim(key, stream.GROUP, "other", min_idle_time=500, start_id="0-0", count=10)
        assert stolen[1] == []
    time.sleep(0.6)                          # let go: now they age, and another consumer may take them
    stolen = r.xautoclaim(key, stream.GROUP, "other", min_idle_time=500, start_id="0-0", count=10)
    assert len(stolen[1]) == 5
