"""Right under disorder: a shuffled stream through real processes while alerts are in flight.

Leads' events arrive out of timestamp order in three chunks (one of them sent twice), the worker is
``kill -9``-ed twice while first alerts are on their way to a slow provider, and Redis once. When it
is all over, every lead's live score and ``hot_at`` are what ``simulate`` says of the same events,
every hot lead has exactly one first alert and its rep exactly one first SMS at the provider (none
lost to a crash, none twice), nobody got a "hot again" note, and no delivery is left unsettled.
"""

from __future__ import annotations

import os
import random
import re
import signal
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from routing.config import load_rules
from routing.events import iso
from routing.kinds import OPENING, DeliveryStatus, StepKind
from routing.simulate import simulate
from tests.fakes.providers import FakeProviderServer
from tests.support.alerting import PUBLIC, TOKEN, fast_rules
from tests.support.faults import PrivateRedis, Publisher, Store, running
from tests.support.stack import Processes, wait_until
from worker.adapters import db
from worker.adapters.tokens import TokenError, verify

LEADS = int(os.environ.get("LEADROUTER_DISORDER_LEADS", "60"))
SECRET = "disorder-secret-of-the-fault-suite-0123456789"
TRAITS = {"title": "VP Engineering", "role": "decision_maker", "phone": "+14155550100",
          "company": {"name": "Acme", "industry": "software", "employee_count": 1200}, "address": {"country": "US"}}
HOT = ["Pricing Page Viewed", "Webinar Attended", "Email Clicked", "Demo Requested", "Case Study Viewed"]
WARM = ["Email Clicked", "Blog Post Viewed", "Blog Post Viewed"]


def stream_of(n: int, rng: random.Random) -> list[dict[str, Any]]:
    """Two leads in three hot, the rest warm; every event within the last hour, at distinct instants."""
    now = datetime.now(UTC)
    events: list[dict[str, Any]] = []
    offsets = rng.sample(range(60, 3600), k=n * 7)
    for i in range(n):
        lead = f"d-{i:03d}"
        names = HOT if i % 3 else WARM
        kinds: list[str | None] = [None, *names]
        for j, name in enumerate(kinds):
            at = iso(now - timedelta(seconds=offsets.pop()))
            base = {"messageId": f"{lead}-{j}", "userId": lead, "timestamp": at}
            if name is None:
                events.append({**base, "type": "identify",
                               "traits": {**TRAITS, "name": f"Lead {i}", "email": f"{lead}@acme.io"}})
            else:
                events.append({**base, "type": "track", "event": name})
    rng.shuffle(events)
    return events


def lead_of_sms(body: str) -> str | None:
    for token in re.findall(r"/claim/([A-Za-z0-9_.-]+)", body):
        try:
            return verify(SECRET, token, datetime.fromtimestamp(0, UTC)).lead_id
        except TokenError:
            continue
    return None


@pytest.fixture
def providers():
    server = FakeProviderServer(validation="background")
    yield server
    server.stop()


def test_a_shuffled_stream_through_kills_alerts_every_hot_lead_once(
        service_env: dict[str, str], processes: Processes, own_redis: PrivateRedis,
        providers: FakeProviderServer) -> None:
    rules_path = Path(service_env["LEADROUTER_CONFIG"])
    # no reminder within the test: every SMS a lead's rep gets here is its first alert
    fast_rules(rules_path, retries=["30m"], first_contact_sla="30m")
    yaml = YAML()
    doc = yaml.load(rules_path.read_text())
    doc["alerts"]["hourly_cap"] = 100_000
    with rules_path.open("w") as fh:
        yaml.dump(doc, fh)
    processes.env.update({
        "REDIS_URL": own_redis.url, "LEADROUTER_SECRET_KEY": SECRET, "LEADROUTER_BATCH_SIZE": "20",
        "LEADROUTER_RECLAIM_IDLE_SECONDS": "3",
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_FROM_NUMBER": "+15005550006",
        "TWILIO_API_BASE_URL": providers.url, "SENDGRID_API_KEY": "SG.test-key",
        "SENDGRID_FROM_EMAIL": "alerts@example.com", "SENDGRID_API_BASE_URL": providers.url,
        "LEADROUTER_PUBLIC_URL": PUBLIC})
    providers.latency = 0.4           # requests in flight long enough for a kill to land mid-send
    rng = random.Random(os.environ.get("LEADROUTER_DISORDER_SEED", "7"))
    events = stream_of(LEADS, rng)
    third = len(events) // 3
    chunks = [events[:third], events[third:2 * third], events[2 * third:]]

    pub = Publisher(own_redis.url, rules_path)
    store = Store(service_env["DATABASE_URL"])
    beat = processes.leadrouter("beat", name="beat")
    worker = processes.celery_worker(queues="events,fast,alerts", concurrency=2)

    def sms_count() -> int:
        return len(providers.sms())

    def kill_worker_mid_send() -> Any:
        # and a few requests lost on the way, before Twilio took them: only asking tells
        providers.fail_next("twilio", [("drop",), ("ok",), ("drop",), ("ok",), ("ok",), ("drop",)])
        start = sms_count()
        wait_until(lambda: running(processes, beat) and sms_count() > start, timeout=60, interval=0.02,
                   message="first alerts to be on their way")
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        return processes.celery_worker(queues="events,fast,alerts", concurrency=2)

    try:
        pub.publish(chunks[0], chunk=50)
        worker = kill_worker_mid_send()
        pub.publish(chunks[1], chunk=50)
        pub.publish(chunks[1], chunk=50)          # the same chunk again: duplicates change nothing
        own_redis.wait_written()
        wait_until(lambda: running(processes, beat) and store.count(db.Event) > third, timeout=60, interval=0.02,
                   message="the second chunk to be under way")
        own_redis.kill()
        own_redis.start()                         # same port and AOF: workers and beat reconnect by themselves
        pub.publish(chunks[2], chunk=50)
        worker = kill_worker_mid_send()

        def settled() -> bool:
            running(processes, worker, beat)
            if not pub.drained() or store.count(db.Event) < len(events):
                return False
            return store.count(db.Delivery, db.Delivery.status.in_([DeliveryStatus.PENDING,
                                                                     DeliveryStatus.MAYBE_SENT])) == 0
        wait_until(settled, timeout=180, interval=0.25, message="every event processed and every delivery settled")
        # steps claimed by the killed workers were released and fired: none is left firing
        wait_until(lambda: store.count(db.AlertStep, db.AlertStep.status == "firing") == 0, timeout=30,
                   message="no alert step left firing")

        store.exactly_once(events)
        expected = {r.lead_id: r for r in simulate(events, load_rules(rules_path)).leads}
        leads = {lead.id: lead for lead in store.rows(db.Lead)}
        hot = {lead_id for lead_id, r in expected.items() if r.hot_at is not None}
        assert len(hot) == sum(1 for i in range(LEADS) if i % 3)
        for lead_id, r in expected.items():
            live = leads[lead_id]
            assert (live.score, live.tier) == (r.score, r.tier), lead_id
            assert live.hot_at == r.hot_at, lead_id
        firsts = Counter(s.lead_id for s in store.rows(db.AlertStep, db.AlertStep.kind.in_(sorted(OPENING)),
                                                       db.AlertStep.step == 0))
        assert firsts == Counter({lead_id: 1 for lead_id in hot})
        assert store.count(db.AlertStep, db.AlertStep.kind == StepKind.FYI) == 0
        texts = Counter(lead_of_sms(m["Body"]) for m in providers.sms())
        missing = sorted(lead for lead in hot if texts[lead] == 0)
        doubled = sorted(lead for lead in hot if texts[lead] > 1)
        assert not missing and not doubled, f"no first SMS: {missing}; more than one: {doubled}"
        assert set(texts) == hot
        unanswered = store.rows(db.Delivery, db.Delivery.settled_by.is_not(None))
        print(f"{len(events)} events, {len(hot)} hot leads, {len(providers.sms())} SMS; deliveries settled "
              f"after a crash or a lost answer: {Counter(d.settled_by for d in unanswered)}, sent again: "
              f"{sum(1 for d in unanswered if d.resent_at is not None)}; a crashed first SMS reached the rep "
              f"after {sorted(round((d.sent_at - d.created_at).total_seconds(), 1) for d in unanswered if d.resent_at and d.sent_at and d.channel == 'sms')} s")
        assert providers.violations == []
    finally:
        pub.close()
        store.close()
