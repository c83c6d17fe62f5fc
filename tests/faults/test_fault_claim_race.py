"""A claim racing a reminder that is due: after the claim commits, nothing is sent but the one step
already in flight at that instant (SPEC §8).

Several hot leads, each claimed at a different moment around its first reminder's due time (some
well before, some just before, some at it, some just after), by the signed SMS reply webhook or directly through
``worker.services.claims.claim``, while the scheduler and a worker fire the reminders.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from routing.messages import short_code
from tests.fakes.providers import FakeProviderServer
from tests.support.alerting import fast_rules, hot_lead, signed_sms
from tests.support.faults import Publisher, Store, delivery_id_of
from tests.support.stack import Processes, wait_until
from worker.adapters import db

# Seconds from the first reminder's due time. The claims 1-2 s early commit before it even on a loaded machine,
# where a claim can take most of a second: the race is then seen from both sides in every run.
OFFSETS = [-2.0, -1.0, -0.3, -0.1, 0.0, 0.03, 0.06, 0.1, 0.2, 1.0]
BOB = "+14155550102"


def claim_directly(lead: str) -> bool:
    from worker.adapters.db import now_utc
    from worker.adapters.runtime import get_runtime
    from worker.services.claims import claim

    rt = get_runtime()
    with rt.sessions.begin() as session:
        return claim(session, rt.rules, lead, "bob", now_utc(), via="page").ok


def warm_up(client: TestClient) -> None:
    """Load this process's rules and open its database connections before the race."""
    from sqlalchemy import text

    from worker.adapters.runtime import get_runtime

    rt = get_runtime()
    assert rt.rules.rep("bob") is not None
    with rt.sessions.begin() as session:
        session.execute(text("SELECT 1"))
    assert signed_sms(client, BOB, "HELP", "SM" + uuid.uuid4().hex).status_code == 200


def test_a_claim_racing_a_due_reminder_lets_out_at_most_the_step_in_flight(
        alert_env: dict[str, str], processes: Processes, providers: FakeProviderServer) -> None:
    from worker.entrypoints.webhooks import router

    rules = Path(alert_env["LEADROUTER_CONFIG"])
    fast_rules(rules, first_contact_sla="60s", retries=["3s", "5s", "7s"])
    processes.env.update(alert_env)
    processes.celery_worker(queues="events,fast,alerts", concurrency=3)
    processes.leadrouter("beat", name="beat")
    pub = Publisher(alert_env["REDIS_URL"], rules)
    store = Store(alert_env["DATABASE_URL"])
    web = FastAPI()
    web.include_router(router)
    client = TestClient(web)
    client_lock = threading.Lock()
    leads = [f"g-{i}" for i in range(len(OFFSETS))]
    try:
        wait_until(lambda: pub.workers_ready(1), timeout=30, message="the workers")
        pub.publish([e for lead in leads for e in hot_lead(lead)])

        def reminders_due() -> dict[str, float] | None:
            # read once every first alert is out: a first alert that went out late moves its reminders
            if len(store.rows(db.AlertStep, db.AlertStep.step == 0, db.AlertStep.status == "done")) < len(leads):
                return None
            steps = store.rows(db.AlertStep, db.AlertStep.step == 1)
            return {s.lead_id: s.due_at.timestamp() for s in steps} if len(steps) == len(leads) else None

        due = wait_until(reminders_due, timeout=30, message="every lead's cadence")
        warm_up(client)   # the claims below must take milliseconds, not this process's first-use costs
        claimed: dict[str, tuple[float, float, bool]] = {}

        def claim_at(i: int, lead: str) -> None:
            # a rep answers the first alert, so not before it arrived
            providers.wait_for(lambda s: any(short_code(lead) in m["Body"] for m in s.sms()), timeout=20)
            time.sleep(max(0.0, due[lead] + OFFSETS[i] - time.time()))
            started = time.time()
            if i % 2:
                with client_lock:
                    reply = signed_sms(client, BOB, f"1 {short_code(lead)}", "SM" + uuid.uuid4().hex)
                ok = reply.status_code == 200 and "Claimed" in reply.text
            else:
                ok = claim_directly(lead)
            claimed[lead] = (started, time.time(), ok)

        threads = [threading.Thread(target=claim_at, args=(i, lead)) for i, lead in enumerate(leads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert all(ok for _, _, ok in claimed.values()) and len(claimed) == len(leads), claimed

        # Past the last reminder's due time, with every step settled: a step sent after its claim would show.
        quiet_after = max(due.values()) + 4.0 + 1.0   # the 3rd reminder is due 4 s after the 1st
        wait_until(lambda: time.time() > quiet_after and not store.rows(
            db.AlertStep, db.AlertStep.status.in_(["pending", "firing"]), db.AlertStep.step < 100) and not store.rows(
            db.Delivery, db.Delivery.status == "pending"), timeout=30, message="the cadences to settle")

        deliveries = {d.id: d for d in store.rows(db.Delivery)}
        late: dict[str, set[int]] = defaultdict(set)   # lead -> steps with a request after its claim returned
        for r in providers.requests:
            d = deliveries[delivery_id_of(r)]
            if r["received_at"] > claimed[d.lead_id][1]:
                late[d.lead_id].add(d.step_id)   # type: ignore[arg-type]
        step1: dict[str, str] = {}
        for lead in leads:
            _, returned, _ = claimed[lead]
            steps = store.rows(db.AlertStep, db.AlertStep.lead_id == lead)
            step1[lead] = next(s.status for s in steps if s.step == 1)
            assert len(late[lead]) <= 1, (lead, late[lead])   # at most the one in flight ...
            for d in deliveries.values():   # ... which had started before the claim committed
                if d.lead_id == lead:
                    assert d.created_at.timestamp() <= returned, (lead, d.step_id, d.created_at, returned)
            for s in steps:
                if s.due_at.timestamp() > returned and s.step < 100:
                    assert s.status == "cancelled", (lead, s.step, s.status)
        # the claims straddled the reminders: some came first, some after the reminder went out
        assert "cancelled" in step1.values() and "done" in step1.values(), step1
        sent: dict[tuple[Any, ...], int] = defaultdict(int)
        for r in providers.requests:
            d = deliveries[delivery_id_of(r)]
            sent[(d.step_id, d.recipient, d.channel)] += 1
        assert all(n == 1 for n in sent.values()), sent   # each step once per person and channel
        assert providers.violations == []
    finally:
        client.close()
        pub.close()
        store.close()
