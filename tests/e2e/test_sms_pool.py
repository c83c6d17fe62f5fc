"""A pool of SMS senders (``TWILIO_FROM_NUMBERS``): a burst of first alerts spreads over the pool at each
sender's rate, a reply to any pool number is the rep's, and a "maybe sent" SMS is looked for under every
pool number. The real Twilio SDK against the local stand-in; the alert path called as the workers would."""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from datetime import timedelta
from urllib.parse import parse_qsl, urlencode

import pytest

from tests.support.alerting import PUBLIC, TOKEN, deliveries, make_hot, steps_of, webhooks_client
from tests.support.stack import reset_process_state
from worker.adapters.runtime import get_runtime

BOB = "+14155550102"


@pytest.fixture
def pool(alert_env, monkeypatch) -> list[str]:
    """Three sender numbers of this test's own (their buckets live in the shared Redis)."""
    base = random.randrange(10_000, 99_000) * 10
    numbers = [f"+1628{base + i:07d}" for i in range(3)]
    monkeypatch.setenv("TWILIO_FROM_NUMBERS", ",".join(numbers))
    alert_env["TWILIO_FROM_NUMBERS"] = ",".join(numbers)
    reset_process_state()   # a new runtime: its SMS channel sends from the pool
    return numbers


def _first_alerts(env, *leads: str) -> list:
    from worker.services.alerts import fire_steps

    make_hot(*leads)
    steps = [steps_of(env, lead, 0)[0] for lead in leads]
    fire_steps(get_runtime(), [s.id for s in steps])
    return steps


def _later(minutes: float = 2):
    from worker.adapters.db import now_utc

    return now_utc() + timedelta(minutes=minutes)


def test_a_burst_of_first_alerts_spreads_over_the_pool_at_each_senders_rate(alert_env, pool, providers, queued,
                                                                           caplog):
    from routing.messages import sms_segments

    with caplog.at_level(logging.WARNING, logger="worker.adapters.channels.twilio_sms"):
        _first_alerts(alert_env, *[f"burst-{i}" for i in range(6)])
    sent = providers.sms()
    assert len(sent) >= 6, sent
    assert all("MessagingServiceSid" not in m for m in sent)
    segments: dict[str, int] = defaultdict(int)
    for m in sent:
        segments[m["From"]] += sms_segments(m["Body"])
    assert set(segments) == set(pool), segments          # every sender used, none outside the pool
    # never serialized behind one number: no sender carries more than its share and one message more
    assert max(segments.values()) - min(segments.values()) <= 2, segments
    received = [r["received_at"] for r in providers.requests if r["method"] == "POST" and r["provider"] == "twilio"]
    assert max(received) - min(received) < 5, received   # all handed to Twilio at once, none held here
    # each sender's bucket (1 segment/s) knows how long Twilio holds what exceeds it, and it is never more
    # than that sender's own segments beyond its first
    held = [r.getMessage() for r in caplog.records if "holds this SMS" in r.getMessage()]
    for number, total in segments.items():
        waits = [float(h.split("about ")[1].split(" s")[0]) for h in held if f"sender {number}'s" in h]
        assert all(0 < w <= total - 1 + 0.1 for w in waits), (number, total, waits)
        assert len(waits) <= len([m for m in sent if m["From"] == number]), (number, waits)
    assert providers.violations == []


def test_a_reply_to_another_pool_number_claims(alert_env, pool, providers, queued):
    from twilio.request_validator import RequestValidator

    from worker.adapters import db as models

    (step,) = _first_alerts(alert_env, "reply-1")
    (alert,) = [m for m in providers.sms() if m["To"] == BOB]
    other = next(n for n in pool if n != alert["From"])
    params = {"MessageSid": "SM" + "7" * 32, "From": BOB, "To": other, "Body": "1", "AccountSid": "AC" + "0" * 32}
    signature = RequestValidator(TOKEN).compute_signature(f"{PUBLIC}/webhooks/twilio/sms", params)
    resp = webhooks_client().post("/webhooks/twilio/sms", content=urlencode(params), headers={
        "X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 200 and "claimed" in resp.text.lower(), resp.text
    with get_runtime().sessions() as session:
        a = session.get(models.Assignment, step.assignment_id)
        assert a is not None and a.claimed_by == "bob" and a.claimed_at is not None


def test_a_maybe_sent_sms_from_the_second_pool_number_is_found_taken(alert_env, pool, providers, queued):
    from worker.adapters.ratelimit import TokenBucket
    from worker.services.alerts import settle_maybe_sent

    TokenBucket(get_runtime().redis, f"sms:{pool[0]}", 1.0).take()   # the first sender is busy: the second goes
    providers.fail_next("twilio", [("accept_then_drop",)])
    (step,) = _first_alerts(alert_env, "lost-pool-1")
    sms = {d.channel: d for d in deliveries(alert_env, step.id)}["sms"]
    assert sms.status == "maybe_sent" and sms.provider_id is None
    created = [r for r in providers.requests if r["method"] == "POST" and r["provider"] == "twilio"]
    assert len(created) == 1 and created[0]["form"]["From"] == pool[1]
    assert settle_maybe_sent(get_runtime(), _later()) == 1
    sms = {d.channel: d for d in deliveries(alert_env, step.id)}["sms"]
    assert sms.status == "sent" and sms.provider_id == created[0]["provider_id"] and sms.resent_at is None
    assert len([r for r in providers.requests if r["method"] == "POST" and r["provider"] == "twilio"]) == 1
    lists = [r for r in providers.requests if r["method"] == "GET"]
    assert lists and dict(parse_qsl(lists[-1]["query"]))["To"] == BOB
    assert providers.violations == []
