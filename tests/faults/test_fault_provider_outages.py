"""Twilio and SendGrid failing in every way a provider fails, through the whole stack: a worker, the
scheduler and the local provider server, with the real SDKs.

SPEC §5, Delivery: a 429 (honouring ``Retry-After``) and a 503 are retried with backoff and the alert
goes out once; a timeout (a hung connection) and a connection dropped after the request went out are
"maybe sent" and never sent again inside the same step. Every request is traced back to its delivery
row by the delivery id it carries (Twilio's status callback URL, SendGrid's custom_args), so the rules
are checked for each delivery whatever order the failures land in.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tests.fakes.providers import FakeProviderServer
from tests.support.alerting import fast_rules, hot_lead
from tests.support.faults import Publisher, Store, delivery_id_of
from tests.support.stack import Processes, wait_until
from worker.adapters import db

# In the order requests arrive: one hangs until the client gives up (after 10 s), one is rate limited,
# one finds the service unavailable, one is cut off once the request was read. The hang comes first, so
# the rest of the cadence goes on meanwhile.
SCRIPT: list[tuple[Any, ...]] = [("hang", 12), ("status", 429, {"Retry-After": "1"}), ("ok",), ("status", 503),
                                 ("ok",), ("drop",)]
ACCEPTED = {"twilio": 201, "sendgrid": 202}
TRANSIENT = {429, 503}


def test_provider_outages_are_retried_or_left_maybe_sent_and_never_doubled(
        alert_env: dict[str, str], processes: Processes, providers: FakeProviderServer) -> None:
    rules = Path(alert_env["LEADROUTER_CONFIG"])
    fast_rules(rules, first_contact_sla="60s")   # reminders at 2, 4, 6 s; the manager too from the 2nd
    processes.env.update(alert_env)
    processes.celery_worker(queues="events,fast,alerts", concurrency=4)
    processes.leadrouter("beat", name="beat")
    for provider in ("twilio", "sendgrid"):
        providers.fail_next(provider, SCRIPT)   # type: ignore[arg-type]
    pub = Publisher(alert_env["REDIS_URL"], rules)
    store = Store(alert_env["DATABASE_URL"])
    try:
        wait_until(lambda: pub.workers_ready(1), timeout=30, message="the workers")
        pub.publish(hot_lead("p-1"))

        def settled() -> list[db.Delivery] | None:
            # the first alert and three reminders (a reminder overdue behind a hung one may be collapsed):
            # bob on both channels, maria (the manager) too from the second reminder
            steps = store.rows(db.AlertStep, db.AlertStep.lead_id == "p-1", db.AlertStep.step <= 3)
            rows = store.rows(db.Delivery, db.Delivery.lead_id == "p-1")
            done = len(steps) == 4 and all(s.status in ("done", "skipped") for s in steps)
            if done and rows and all(d.status != "pending" for d in rows) and \
                    providers.scripted_left("twilio") == providers.scripted_left("sendgrid") == 0:
                return rows
            return None

        rows = wait_until(settled, timeout=60, interval=0.2,
                          message="every step fired and every delivery settled")

        requests: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for r in providers.requests:
            if r["method"] == "POST":
                delivery = delivery_id_of(r)
                assert delivery is not None, r["path"]
                requests[delivery].append(r)   # type: ignore[arg-type]
        assert set(requests) == {d.id for d in rows}

        for d in rows:
            seen = sorted(requests[d.id], key=lambda r: r["received_at"])
            provider = seen[0]["provider"]
            statuses = [r["status"] for r in seen]
            *retried, last = statuses
            assert all(s in TRANSIENT for s in retried), (d.channel, d.to, statuses)   # only those are retried
            for before, after in zip(seen, seen[1:], strict=False):
                wait = after["received_at"] - before["received_at"]
                assert wait >= (0.9 if before["status"] == 429 else 0.05), (statuses, wait)   # Retry-After, backoff
            if last == ACCEPTED[provider]:
                assert d.status == "sent" and d.provider_id, (d.status, statuses)   # one message, accepted once
            else:
                # hung up on, or no answer in time: maybe sent, and never asked again for this step
                assert last is None and d.status == "maybe_sent" and d.error_kind == "maybe_sent", \
                    (d.status, statuses)

        for provider, channel in (("twilio", "sms"), ("sendgrid", "email")):
            answers = [r["status"] for r in providers.requests if r["provider"] == provider]
            # each scripted failure was met once; a 429 or a 503 is never a delivery's last answer (above)
            assert answers.count(429) == 1 and answers.count(503) == 1 and answers.count(None) == 2, answers
            assert answers.count(ACCEPTED[provider]) == sum(d.status == "sent" for d in rows if d.channel == channel)
            assert sum(d.status == "maybe_sent" for d in rows if d.channel == channel) == 2   # the hang, the drop

        with store.sessions() as s:   # a maybe sent is no failure: nothing escalates early
            extra = list(s.scalars(select(db.AlertStep).where(db.AlertStep.lead_id == "p-1",
                                                              db.AlertStep.step >= 100)))
        assert extra == []
        assert providers.violations == []
    finally:
        pub.close()
        store.close()
