"""Alerts end to end: real Celery workers and scheduler processes, the real Twilio and SendGrid
SDKs against the local provider server, webhooks and the claim page through the HTTP app."""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.support.alerting import PUBLIC, REPLY, db, fast_rules, hot_lead, send, signed_sms, sms_to
from tests.support.stack import wait_until


@pytest.fixture
def stack(alert_env, processes, request):
    """A worker and ``beat`` on the fast rules; a test may change their ``alerts`` (indirect parameter)."""
    from tests.support.stack import reset_process_state

    if getattr(request, "param", None):
        fast_rules(Path(alert_env["LEADROUTER_CONFIG"]), **request.param)
        reset_process_state()
    processes.env.update(alert_env)
    processes.celery_worker(queues="events,fast,alerts", concurrency=2)
    processes.leadrouter("beat", name="beat")
    return processes


# reminders at 2, 4 and 6 s, and a 30 s SLA after the last: a slow machine never reassigns the lead before bob replies
@pytest.mark.parametrize("stack", [{"first_contact_sla": "30s"}], indirect=True, ids=["no-early-reassignment"])
def test_hot_lead_is_alerted_reminded_escalated_and_claimed_by_sms(stack, providers, client, alert_env):
    from worker.adapters import db as models

    send(hot_lead("u-1"))
    first = providers.wait_for(lambda s: sms_to(s, "+14155550102"), timeout=15)[0]   # bob: na team, skill software
    body = first["Body"]
    assert REPLY in body and "Jane Doe" in body and "+14155550100" in body and f"{PUBLIC}/claim/" in body
    assert len(body) <= 306 and body.isascii()
    assert 1 <= int(first["ValidityPeriod"]) <= 2          # no longer than the gap to the first reminder
    assert first["StatusCallback"].startswith(f"{PUBLIC}/webhooks/twilio/status")
    providers.wait_for(lambda s: any(e["personalizations"][0]["to"][0]["email"] == "bob@example.com"
                                     for e in s.emails()), timeout=10)
    # reminders at 2 s and 4 s; from the 2nd the manager (maria) is alerted too
    providers.wait_for(lambda s: len(sms_to(s, "+14155550102")) >= 3, timeout=15)
    providers.wait_for(lambda s: sms_to(s, "+14155550104"), timeout=5)
    reply = signed_sms(client, "+14155550102", "1", "SM" + "1" * 32)
    assert reply.status_code == 200 and "Claimed" in reply.text and "<Response>" in reply.text
    with db(alert_env) as s:
        a = s.scalar(select(models.Assignment).where(models.Assignment.lead_id == "u-1",
                                                     models.Assignment.current.is_(True)))
        assert a.rep_id == "bob" and a.claimed_by == "bob"
    count = len(sms_to(providers, "+14155550102"))
    time.sleep(6)   # the remaining reminder would be due by now
    assert len(sms_to(providers, "+14155550102")) == count
    # the same reply again (a replayed webhook) changes nothing and is answered with nothing
    again = signed_sms(client, "+14155550102", "1", "SM" + "1" * 32)
    assert again.status_code == 200 and "<Message>" not in again.text
    assert providers.violations == []


def test_unclaimed_lead_is_reassigned_to_the_next_best_rep(stack, providers, alert_env):
    from worker.adapters import db as models

    send(hot_lead("u-2"))
    providers.wait_for(lambda s: sms_to(s, "+14155550101"), timeout=25)    # alice after bob's cadence ran out
    with db(alert_env) as s:
        reps = [a.rep_id for a in s.scalars(select(models.Assignment).where(models.Assignment.lead_id == "u-2")
                                            .order_by(models.Assignment.id))]
        steps = Counter((st.assignment_id, st.step) for st in s.scalars(select(models.AlertStep)))
    assert reps[:2] == ["bob", "alice"]
    assert all(n == 1 for n in steps.values())
    assert providers.violations == []


def test_each_step_fires_once_with_two_schedulers(alert_env, processes, providers):
    from worker.adapters import db as models

    processes.env.update(alert_env)
    processes.celery_worker(queues="events,fast,alerts", concurrency=2)
    processes.leadrouter("beat", name="beat-a")
    processes.leadrouter("beat", name="beat-b")
    for i in range(5):
        send(hot_lead(f"two-{i}"))
    wait_until(lambda: len(providers.sms()) >= 5 * 4, timeout=30, message="first alerts and reminders")
    time.sleep(1)
    with db(alert_env) as s:
        per = s.execute(select(models.Delivery.step_id, models.Delivery.recipient, models.Delivery.channel, func.count())
                        .group_by(models.Delivery.step_id, models.Delivery.recipient, models.Delivery.channel)).all()
    assert per and all(n == 1 for *_, n in per)
    sids = Counter((m["To"], m["Body"]) for m in providers.sms())
    assert all(n == 1 for n in sids.values()), "an SMS went out twice"
    for name in ("beat-a", "beat-b"):   # each scheduler logs as the other processes do: JSON lines, masked
        log = next(processes.logdir.glob(f"{name}-*.log")).read_text()
        lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        assert any(line["logger"] == "leadrouter.scheduler" and line["msg"].startswith("scheduler running")
                   for line in lines), log


@pytest.mark.parametrize("stack", [{"retries": ["30s", "60s"]}], indirect=True, ids=["slow-cadence"])
def test_claim_page_shows_on_get_and_claims_on_post(stack, providers, client, alert_env):
    send(hot_lead("u-3"))
    first = providers.wait_for(lambda s: sms_to(s, "+14155550102"), timeout=15)[0]
    url = next(w for w in first["Body"].split() if w.startswith(f"{PUBLIC}/claim/"))
    path = url.removeprefix(PUBLIC)
    page = client.get(path)
    assert page.status_code == 200 and "Claim" in page.text and "Jane Doe" in page.text
    assert page.headers["cache-control"] == "no-store"
    assert client.get(path).status_code == 200           # showing it twice claims nothing
    done = client.post(path, data={"action": "claim"})
    assert done.status_code == 200 and "Claimed" in done.text
    assert client.get(path).status_code == 410           # the link stops working once claimed
    tampered = path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB")
    assert client.post(tampered, data={"action": "claim"}).status_code == 403


def test_forged_twilio_signature_is_refused(client, alert_env):
    resp = client.post("/webhooks/twilio/sms", content="MessageSid=SMx&From=%2B14155550102&Body=1",
                       headers={"X-Twilio-Signature": "forged", "Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 403


def test_invalid_number_disables_sms_and_email_carries_on(stack, providers, alert_env):
    from worker.adapters import db as models

    providers.fail_next("twilio", [("twilio_error", 21211)])
    send(hot_lead("u-4"))
    providers.wait_for(lambda s: any(e["personalizations"][0]["to"][0]["email"] == "bob@example.com"
                                     for e in s.emails()), timeout=15)
    with db(alert_env) as s:
        wait_until(lambda: (s.expire_all(), s.get(models.RepState, "bob"))[1] is not None, timeout=10,
                   message="bob's state")
        state = s.get(models.RepState, "bob")
        assert "sms" in state.disabled_channels
    # later reminders go by email only
    providers.wait_for(lambda s: len([e for e in s.emails()
                                      if e["personalizations"][0]["to"][0]["email"] == "bob@example.com"]) >= 2,
                       timeout=10)
    assert sms_to(providers, "+14155550102") == []


def test_sendgrid_events_are_verified_and_stale_or_forged_ones_refused(client, alert_env, monkeypatch):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    monkeypatch.setenv("SENDGRID_WEBHOOK_PUBLIC_KEY", base64.b64encode(public).decode())
    from worker.adapters.runtime import reset_runtime
    from worker.adapters.settings import reset_settings

    reset_settings()
    reset_runtime()
    body = json.dumps([{"event": "delivered", "sg_event_id": "e1", "sg_message_id": "nope.1"}]).encode()
    stamp = str(int(time.time()))
    sig = base64.b64encode(key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
    headers = {"X-Twilio-Email-Event-Webhook-Signature": sig, "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
               "Content-Type": "application/json"}
    assert client.post("/webhooks/sendgrid/events", content=body, headers=headers).status_code == 204
    assert client.post("/webhooks/sendgrid/events", content=body + b" ", headers=headers).status_code == 403
    old = str(int(time.time()) - 3600)
    old_sig = base64.b64encode(key.sign(old.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
    assert client.post("/webhooks/sendgrid/events", content=body,
                       headers={**headers, "X-Twilio-Email-Event-Webhook-Signature": old_sig,
                                "X-Twilio-Email-Event-Webhook-Timestamp": old}).status_code == 403


def test_pass_by_sms_hands_the_lead_to_the_next_rep_at_once(stack, providers, client, alert_env):
    from worker.adapters import db as models

    fast_rules(Path(alert_env["LEADROUTER_CONFIG"]), retries=["30s", "60s"])   # no reminder gets in the way
    send(hot_lead("u-5"))
    providers.wait_for(lambda s: sms_to(s, "+14155550102"), timeout=15)
    reply = signed_sms(client, "+14155550102", "PASS", "SM" + "5" * 32)
    assert reply.status_code == 200 and "Passed" in reply.text
    providers.wait_for(lambda s: sms_to(s, "+14155550101"), timeout=10)       # alice, long before any SLA
    with db(alert_env) as s:
        rows = list(s.scalars(select(models.Assignment).where(models.Assignment.lead_id == "u-5")
                              .order_by(models.Assignment.id)))
        episode = s.get(models.HotEpisode, rows[0].episode_id)
    assert [a.rep_id for a in rows] == ["bob", "alice"] and [a.current for a in rows] == [False, True]
    assert episode.reassignments == 1
    # bob's reply about the lead alice now owns changes nothing
    late = signed_sms(client, "+14155550102", "1", "SM" + "6" * 32)
    assert "Claimed" not in late.text


def test_help_and_unknown_replies_and_away_back(client, alert_env):
    from worker.adapters import db as models

    assert "AWAY" in signed_sms(client, "+14155550102", "HELP", "SM" + "a" * 32).text
    assert "Unknown reply" in signed_sms(client, "+14155550102", "hello there", "SM" + "b" * 32).text
    assert "away" in signed_sms(client, "+14155550102", "AWAY 2h", "SM" + "c" * 32).text
    with db(alert_env) as s:
        assert s.get(models.RepState, "bob").away_until is not None
    assert "Welcome back" in signed_sms(client, "+14155550102", "BACK", "SM" + "d" * 32).text
    with db(alert_env) as s:
        assert s.get(models.RepState, "bob").away_until is None
    stranger = signed_sms(client, "+19999999999", "1", "SM" + "e" * 32)
    assert stranger.status_code == 200 and "<Message>" not in stranger.text


def test_a_signed_bounce_fails_the_email_and_disables_it_for_the_rep(stack, providers, client, alert_env,
                                                                     monkeypatch):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from worker.adapters import db as models
    from worker.adapters.runtime import reset_runtime
    from worker.adapters.settings import reset_settings

    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    monkeypatch.setenv("SENDGRID_WEBHOOK_PUBLIC_KEY", base64.b64encode(public).decode())
    reset_settings()
    reset_runtime()
    fast_rules(Path(alert_env["LEADROUTER_CONFIG"]), retries=["30s", "60s"])
    send(hot_lead("u-6"))
    providers.wait_for(lambda s: s.emails(), timeout=15)
    with db(alert_env) as s:
        email = wait_until(lambda: s.scalar(select(models.Delivery).where(models.Delivery.channel == "email",
                                                                          models.Delivery.status == "sent")),
                           timeout=10, message="the email delivery")
        delivery_id = email.id
    body = json.dumps([{"event": "bounce", "sg_event_id": "bounce-1", "delivery_id": str(delivery_id),
                        "email": "bob@example.com", "reason": "550 no such user"}]).encode()
    stamp = str(int(time.time()))
    sig = base64.b64encode(key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
    headers = {"X-Twilio-Email-Event-Webhook-Signature": sig, "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
               "Content-Type": "application/json"}
    assert client.post("/webhooks/sendgrid/events", content=body, headers=headers).status_code == 204
    with db(alert_env) as s:
        assert s.get(models.Delivery, delivery_id).status == "failed"
        assert "email" in s.get(models.RepState, "bob").disabled_channels
        # the SMS of that step had already gone out: the fail-over sends nothing twice
        sms_rows = s.scalars(select(models.Delivery).where(models.Delivery.channel == "sms")).all()
    assert len(sms_rows) == 1 and len(sms_to(providers, "+14155550102")) == 1
    # a replay of the same event is ignored
    assert client.post("/webhooks/sendgrid/events", content=body, headers=headers).status_code == 204
