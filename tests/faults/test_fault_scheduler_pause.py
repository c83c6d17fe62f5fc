"""Two schedulers stopped (SIGSTOP) across two reminders' due times, resumed at the same instant, then
one of them killed and a new one started: every due alert goes out exactly once, and the overdue
reminders of a cadence collapse into its latest one (SPEC §5, §8).

(Two schedulers ticking side by side without a stop are covered by the end-to-end alert tests.)
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

from tests.fakes.providers import FakeProviderServer
from tests.support.alerting import fast_rules, hot_lead
from tests.support.faults import Publisher, Store, delivery_id_of
from tests.support.stack import Processes, wait_until
from worker.adapters import db

LEADS = ["s-0", "s-1", "s-2"]


def look_ahead() -> float:
    """How long before its due time the scheduler may hand a step over to a worker, in seconds."""
    from worker.entrypoints import scheduler

    return float(getattr(scheduler, "LOOK_AHEAD", timedelta(0)).total_seconds())


def test_stopped_schedulers_resume_without_a_burst_and_send_each_due_alert_once(
        alert_env: dict[str, str], processes: Processes, providers: FakeProviderServer) -> None:
    # Reminders 2 s apart, the first one due only after the scheduler could have handed it over at the
    # first alert: stopped then, the scheduler holds back every reminder until it resumes.
    ahead = look_ahead()
    rules = Path(alert_env["LEADROUTER_CONFIG"])
    fast_rules(rules, first_contact_sla="60s",   # the manager is alerted too from the 2nd reminder
               retries=[f"{ahead + 1.5:g}s", f"{ahead + 3.5:g}s", f"{ahead + 5.5:g}s"])
    processes.env.update(alert_env)
    processes.celery_worker(queues="events,fast,alerts", concurrency=3)
    beat_a = processes.leadrouter("beat", name="beat-a")
    beat_b = processes.leadrouter("beat", name="beat-b")
    pub = Publisher(alert_env["REDIS_URL"], rules)
    store = Store(alert_env["DATABASE_URL"])
    stopped: list[int] = []
    try:
        wait_until(lambda: pub.workers_ready(1), timeout=30, message="the workers")
        pub.publish([e for lead in LEADS for e in hot_lead(lead)])
        steps = wait_until(lambda: len(s := store.rows(db.AlertStep, db.AlertStep.step.in_([1, 2, 3]))) == 9 and s,
                           timeout=30, message="the cadences")
        # the first alerts go out from the drain, not the scheduler: let them, this is about the reminders
        wait_until(lambda: store.count(db.AlertStep, db.AlertStep.step == 0, db.AlertStep.status == "done") == 3,
                   timeout=10, message="the first alerts")
        for beat in (beat_a, beat_b):
            os.killpg(beat.pid, signal.SIGSTOP)
            stopped.append(beat.pid)
        due = {(s.lead_id, s.step): s.due_at.timestamp() for s in steps}
        assert time.time() < min(due[(lead, 1)] for lead in LEADS) - ahead, "stopped before any reminder was handed over"

        # both schedulers away until the 1st and 2nd reminders are overdue, and back before the 3rd is due
        resume_at = max(due[(lead, 2)] for lead in LEADS) + 0.3
        time.sleep(max(0.0, resume_at - time.time()))
        assert time.time() < min(due[(lead, 3)] for lead in LEADS)
        for pid in stopped:
            os.killpg(pid, signal.SIGCONT)
        stopped.clear()

        def settled(step: int) -> bool:
            rows = store.rows(db.AlertStep, db.AlertStep.step == step)
            return all(s.status in ("done", "skipped", "cancelled") for s in rows) and not store.rows(
                db.Delivery, db.Delivery.status == "pending")

        wait_until(lambda: settled(1) and settled(2), timeout=20, message="the overdue reminders")
        processes.kill(beat_a)   # kill -9; a fresh scheduler joins the one left
        beat_c = processes.leadrouter("beat", name="beat-c")
        wait_until(lambda: settled(3), timeout=20, message="the last reminder")

        statuses = {(s.lead_id, s.step): s.status for s in store.rows(db.AlertStep, db.AlertStep.step.in_([1, 2, 3]))}
        for lead in LEADS:
            assert (statuses[(lead, 1)], statuses[(lead, 2)], statuses[(lead, 3)]) == ("skipped", "done", "done"), \
                statuses
        deliveries = {d.id: d for d in store.rows(db.Delivery)}
        steps_by_id = {s.id: s for s in store.rows(db.AlertStep)}
        per_step = Counter((steps_by_id[d.step_id].lead_id, steps_by_id[d.step_id].step, d.recipient, d.channel)
                           for d in deliveries.values())
        # first alert and the two reminders sent: bob on both channels, maria (the manager) from the 2nd reminder
        wanted = Counter({(lead, 0, "bob", ch): 1 for lead in LEADS for ch in ("sms", "email")})
        wanted.update({(lead, step, who, ch): 1 for lead in LEADS for step in (2, 3) for who in ("bob", "maria")
                       for ch in ("sms", "email")})
        assert per_step == wanted
        assert all(d.status == "sent" for d in deliveries.values())
        requests = Counter(delivery_id_of(r) for r in providers.requests)   # type: ignore[arg-type]
        assert set(requests) == set(deliveries) and set(requests.values()) == {1}, requests
        assert beat_b.poll() is None and beat_c.poll() is None
        assert providers.violations == []
    finally:
        for pid in stopped:
            os.killpg(pid, signal.SIGCONT)
        pub.close()
        store.close()
