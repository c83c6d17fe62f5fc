"""The database cut off for 20 s mid-stream, through a TCP proxy in front of PostgreSQL.

Always PostgreSQL, in a SQLite run too: a database server that goes away is what this is about.
Nothing is dead-lettered because of the outage, nothing is processed twice once it is back, and the
workers and the scheduler carry on by themselves.
"""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import select

from tests.support.alerting import hot_lead
from tests.support.faults import ProxiedDatabase, Publisher, Store, background, running, start_service
from tests.support.stack import Processes, wait_until
from worker.adapters import db

OUTAGE_SECONDS = 20.0


def test_the_database_cut_off_mid_stream_loses_dead_letters_and_doubles_nothing(
        service_env: dict[str, str], processes: Processes, postgres_behind_proxy: ProxiedDatabase) -> None:
    pg = postgres_behind_proxy
    rules = Path(service_env["LEADROUTER_CONFIG"])
    worker, beat = start_service(processes, rules, DATABASE_URL=pg.url)
    pub = Publisher(service_env["REDIS_URL"], rules)
    store = Store(pg.direct_url)
    try:
        before = hot_lead("d-hot-1") + background("d1", 400, leads=40)
        pub.publish(before, chunk=200)
        wait_until(lambda: store.count(db.Event) >= 60, timeout=40, message="processing")

        pg.proxy.cut()
        cut_at = time.monotonic()
        time.sleep(0.5)   # a commit that was on the wire when the proxy cut lands, or does not, by now
        at_cut = store.count(db.Event)
        assert at_cut < len(before), "the outage starts with work left"
        during = background("d2", 200) + hot_lead("d-hot-2")
        pub.publish(during)
        while time.monotonic() - cut_at < OUTAGE_SECONDS:   # the outage itself
            assert store.count(db.DeadLetter) == 0
            time.sleep(0.5)
        assert store.count(db.Event) == at_cut               # nothing got through meanwhile
        assert not pub.drained()                             # ... and nothing was acknowledged without it
        pg.proxy.restore()

        waiting = before + during
        wait_until(lambda: running(processes, worker, beat) and store.count(db.Event) >= len(waiting)
                   and pub.drained(), timeout=60,
                   message="the backlog after the outage")
        after = background("d3", 50)
        pub.publish(after)
        everything = waiting + after
        wait_until(lambda: running(processes, worker, beat) and store.count(db.Event) >= len(everything)
                   and pub.drained(), timeout=30,
                   message="events published after the outage")
        store.exactly_once(everything)
        assert store.count(db.DeadLetter) == 0

        def reminded(lead: str) -> bool:   # a retry step only the scheduler fires
            with store.sessions() as s:
                return bool(s.scalar(select(db.AlertStep.id).where(db.AlertStep.lead_id == lead,
                                                                   db.AlertStep.kind == "retry",
                                                                   db.AlertStep.status == "done")))

        wait_until(lambda: reminded("d-hot-2"), timeout=30,
                   message="the scheduler to fire reminders after the outage")
        for lead in ("d-hot-1", "d-hot-2"):
            assert store.count(db.HotEpisode, db.HotEpisode.lead_id == lead) == 1
            assert store.count(db.Assignment, db.Assignment.lead_id == lead) == 1
        assert worker.poll() is None and beat.poll() is None   # nobody was restarted
        assert pg.proxy.accepted > 0
    finally:
        pub.close()
        store.close()
