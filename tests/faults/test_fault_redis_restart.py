"""``kill -9`` of Redis (AOF, ``appendfsync everysec``) mid-stream, restarted on the same port.

The events queued at the kill are the ones Redis had written to its AOF; what it had only
acknowledged is not Redis's to keep through a ``kill -9`` under ``everysec`` (see ``wait_written``).

Workers and the scheduler are never restarted: they reconnect by themselves. What was queued before
the kill is processed once, and the scheduler fires the cadence steps due after it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from sqlalchemy import select

from tests.support.alerting import hot_lead
from tests.support.faults import PrivateRedis, Publisher, Store, background, running, start_service
from tests.support.stack import Processes, wait_until
from worker.adapters import db


def test_redis_killed_and_restarted_loses_and_doubles_nothing(
        service_env: dict[str, str], processes: Processes, own_redis: PrivateRedis) -> None:
    rules = Path(service_env["LEADROUTER_CONFIG"])
    worker, beat = start_service(processes, rules, REDIS_URL=own_redis.url)
    pub = Publisher(own_redis.url, rules)
    store = Store(service_env["DATABASE_URL"])
    try:
        before = background("r1", 100) + hot_lead("r-hot-1")
        pub.publish(before)
        wait_until(lambda: store.count(db.Event) == len(before) and pub.drained(), timeout=40,
                   message="the first wave")

        queued = background("r2", 1500, leads=50)
        os.killpg(worker.pid, signal.SIGSTOP)   # the events wait for the worker...
        try:
            pub.publish(queued, chunk=500)
            own_redis.wait_written()            # ...accepted and in Redis's AOF (see wait_written)
        finally:
            os.killpg(worker.pid, signal.SIGCONT)
        # Redis dies while the worker drains them
        wait_until(lambda: store.count(db.Event) > len(before), timeout=20, interval=0.005,
                   message="the worker to start on the queued events")
        own_redis.kill()
        at_kill = store.count(db.Event)
        assert at_kill < len(before) + len(queued), "events were still waiting in Redis when it died"
        own_redis.start()   # same port, same directory: the AOF is replayed

        wait_until(lambda: running(processes, worker, beat) and store.count(db.Event) >= len(before) + len(queued)
                   and pub.drained(), timeout=60,
                   message="the events queued before the kill")
        after = background("r3", 50) + hot_lead("r-hot-2")
        pub.publish(after)
        everything = before + queued + after
        wait_until(lambda: running(processes, worker, beat) and store.count(db.Event) >= len(everything)
                   and pub.drained(), timeout=30,
                   message="events published after the restart")
        store.exactly_once(everything)
        assert store.count(db.DeadLetter) == 0

        def reminded() -> bool:   # a retry step is fired by the scheduler only
            with store.sessions() as s:
                return bool(s.scalar(select(db.AlertStep.id).where(db.AlertStep.lead_id == "r-hot-2",
                                                                   db.AlertStep.kind == "retry",
                                                                   db.AlertStep.status == "done")))

        wait_until(reminded, timeout=30, message="the scheduler to fire a reminder after the restart")
        for lead in ("r-hot-1", "r-hot-2"):
            assert store.count(db.HotEpisode, db.HotEpisode.lead_id == lead) == 1
            assert store.count(db.Assignment, db.Assignment.lead_id == lead) == 1
        assert worker.poll() is None and beat.poll() is None   # nobody was restarted
    finally:
        pub.close()
        store.close()
