"""Many workers pushing the same lead over the hot threshold at once: one episode, one assignment,
one first alert per channel.

Each lead sits at 70 points; eight different events, each enough on its own to reach 75, arrive at
the same instant, every one of them delivered twice, from several publishers at once, and are taken
by six pool processes in three workers one entry at a time, in both lanes. (The integration suite
routes hundreds of leads that two events cross at once, and counts one messageId delivered fifty
times at once through real workers; this is the many-crossers-one-lead corner of both.)
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from tests.support.alerting import fast_rules
from tests.support.faults import Publisher, Store, identify, track, ts
from tests.support.stack import Processes, wait_until
from worker.adapters import db

# each one alone takes a lead from 70 to 75 or more; four of them go by the fast lane
CROSSERS = ["Pricing Page Viewed", "Webinar Attended", "Comparison Viewed", "Case Study Viewed",
            "Pricing Downloaded", "Trial Started", "ROI Calculator Used", "Consultation Booked"]
LEADS = [f"x-{i}" for i in range(6)]
COPIES = 2


def test_many_workers_pushing_one_lead_over_the_threshold_at_once_route_it_once(
        service_env: dict[str, str], processes: Processes) -> None:
    rules = Path(service_env["LEADROUTER_CONFIG"])
    fast_rules(rules, first_contact_sla="60s", retries=["60s"])
    processes.env["LEADROUTER_BATCH_SIZE"] = "1"
    for i in range(3):
        processes.celery_worker(queues="events,fast,alerts", concurrency=2, name=f"worker{i}")
    pub = Publisher(service_env["REDIS_URL"], rules)
    store = Store(service_env["DATABASE_URL"])
    try:
        warm = [e for lead in LEADS for e in (identify(f"{lead}-id", lead),
                                              track(f"{lead}-demo", lead, "Demo Requested", seconds_ago=90))]
        pub.publish(warm)
        wait_until(lambda: store.count(db.Event) == len(warm) and pub.drained(), timeout=40,
                   message="the leads to warm up")
        assert {(lead.score, lead.tier) for lead in store.rows(db.Lead)} == {(70, "warm")}

        at = ts(30)
        crossing = [{"type": "track", "messageId": f"{lead}-{name}", "userId": lead, "event": name, "timestamp": at}
                    for lead in LEADS for name in CROSSERS]
        start = threading.Barrier(len(CROSSERS))
        errors: list[BaseException] = []

        def send(name: str) -> None:
            try:
                start.wait(10)
                for _ in range(COPIES):
                    for event in crossing:
                        if event["event"] == name:
                            pub.publish([event])   # one publish each: one kick each, so drains overlap
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=send, args=(name,)) for name in CROSSERS]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        everything = warm + crossing
        wait_until(lambda: store.count(db.Event) >= len(everything) and pub.drained(), timeout=60,
                   message="the crossings")
        store.exactly_once(everything)

        with store.sessions() as s:
            episodes = Counter(s.scalars(select(db.HotEpisode.lead_id)))
            assignments = Counter(s.scalars(select(db.Assignment.lead_id)))
            effects = s.execute(select(db.Event.lead_id, db.Event.effect, func.count())
                                .where(db.Event.effect.is_not(None))
                                .group_by(db.Event.lead_id, db.Event.effect)).all()
            firsts = Counter(s.scalars(select(db.AlertStep.lead_id).where(db.AlertStep.step == 0)))
        assert episodes == dict.fromkeys(LEADS, 1)
        assert assignments == dict.fromkeys(LEADS, 1)
        assert sorted(effects) == [(lead, "route", 1) for lead in LEADS]   # one crossing each, no FYI, no second
        assert firsts == dict.fromkeys(LEADS, 1)

        def first_alerts_sent() -> list[Any]:
            with store.sessions() as s:
                return list(s.execute(select(db.Delivery.lead_id, db.Delivery.channel, func.count())
                                      .group_by(db.Delivery.lead_id, db.Delivery.channel)).all())

        sent = wait_until(lambda: len(first_alerts_sent()) == 2 * len(LEADS) and first_alerts_sent(), timeout=30,
                          message="the first alerts")
        assert sorted(sent) == sorted((lead, channel, 1) for lead in LEADS for channel in ("email", "sms"))
        assert len({name for name in pub.held_by()}) >= 3, "several worker processes took part"
    finally:
        pub.close()
        store.close()
