"""Call-first alerts end to end: real Celery workers and a real scheduler place calls with the real Twilio SDK
against the local stand-in, which then plays Twilio: it fetches the call's TwiML signed as Twilio signs it,
presses keys, and posts the status callbacks of the rep's leg and of the bridged leg to the lead."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from datetime import UTC
from pathlib import Path

import pytest
from ruamel.yaml import YAML
from sqlalchemy import select

from tests.conftest import wait_until
from tests.e2e.test_alerts_flow import PUBLIC, TOKEN, db, hot_lead, send, signed_sms
from tests.fakes.providers import FakeProviderServer
from tests.fakes.voice import CallPlayer

ACCOUNT = "AC" + "0" * 32
CALLERS = ["+15005550006", "+15005550007"]
BOB = "+14155550102"            # the rep the test lead is routed to (na team, skill software)
LEAD_PHONE = "+14155550100"     # the lead's own phone (hot_lead's traits)
MARIA = "+14155550104"          # bob's manager
CAROL = "+4915155550103"        # the default team's rep


@pytest.fixture
def voice_env(alert_env):
    path = Path(alert_env["LEADROUTER_CONFIG"])
    yaml = YAML()
    doc = yaml.load(path.read_text())
    for rep in doc["reps"]:
        rep["channels"] = ["voice", "sms", "email"]
    doc["alerts"]["channels"] = {"first": ["voice", "sms"], "retry": ["voice", "sms"], "escalation": ["sms"]}
    doc["voice"] = {"caller_ids": CALLERS, "contact_after": "20s", "calls_per_second": 20}
    doc["outbound"] = {"webhooks": [{"url": "http://127.0.0.1:9/crm", "events": ["lead.contacted"]}]}
    with path.open("w") as fh:
        yaml.dump(doc, fh)
    from worker.runtime import reset_runtime

    reset_runtime()
    return alert_env


@pytest.fixture
def app_client(voice_env):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from worker import voice, webhooks

    app = FastAPI()
    app.include_router(webhooks.router)
    app.include_router(voice.router)
    return TestClient(app)


@pytest.fixture
def player(app_client) -> CallPlayer:
    return CallPlayer(app_client, TOKEN, ACCOUNT)


@pytest.fixture
def voice_stack(voice_env, processes, providers, app_client):
    """The service running, its alert path warm: a fresh worker pays its first alert's imports and SDK set-up
    (a second or more on a busy machine), and the figures here are about a running service. The warm-up
    lead goes to carol, who claims it by SMS, so nothing of it is left to call or text anyone."""
    processes.env.update(voice_env)
    processes.celery_worker(queues="events,fast,alerts", concurrency=2)
    processes.leadrouter("beat", name="beat")
    warm = hot_lead("warm-up", country="DE")
    warm[0]["traits"].update(email="warm-up@globex.example", company={"name": "Globex", "industry": "software",
                                                                       "employee_count": 1200})
    send(warm)   # another company: acme.com's leads would go to the rep who has its account
    providers.wait_for(lambda s: calls_to(s, CAROL) and [m for m in s.sms() if m["To"] == CAROL], timeout=60)
    assert "Claimed" in signed_sms(app_client, CAROL, "1", "SM" + "9" * 32).text
    return processes


def _lead(env, lead_id: str):
    from worker import db as models

    with db(env) as s:
        return s.get(models.Lead, lead_id)


def calls_to(server: FakeProviderServer, number: str) -> list[dict]:
    return [c for c in server.calls() if c.get("To") == number]


def ringing(env, call: dict) -> dict:
    """The call once its sender has recorded Twilio's answer: a real phone rings for seconds before
    anything comes back about it, and a callback that overtook the sender's record would be overwritten."""
    from worker import db as models

    wait_until(lambda: [d.status for d in _rows(env, models.Delivery, models.Delivery.provider_id == call["Sid"])]
               == ["sent"], timeout=10, message=f"call {call['Sid']} recorded as sent")
    return call


def _rows(env, model, *where):
    with db(env) as s:
        return list(s.scalars(select(model).where(*where).order_by(model.id)))


def _trace(env, lead_id: str) -> list[tuple[str, dict]]:
    from worker import db as models

    return [(t.kind, t.detail) for t in _rows(env, models.Trace, models.Trace.lead_id == lead_id)]


def test_a_hot_lead_is_called_claimed_by_keypress_bridged_and_contact_recorded(voice_stack, voice_env, providers,
                                                                               player, app_client):
    from worker import db as models
    from worker.explain import explain, render_explain

    published = time.time()
    send(hot_lead("v-1"))
    call = providers.wait_for(lambda s: calls_to(s, BOB), timeout=15)[0]
    ringing(voice_env, call)
    placed = next(r["received_at"] for r in providers.requests if r["provider_id"] == call["Sid"])
    steps = _rows(voice_env, models.AlertStep, models.AlertStep.lead_id == "v-1")
    (episode,) = _rows(voice_env, models.HotEpisode, models.HotEpisode.lead_id == "v-1")
    seen = {"published": published, "received": episode.event_received_at.replace(tzinfo=UTC).timestamp(),
            "opened": episode.opened_at.replace(tzinfo=UTC).timestamp(),
            "due": steps[0].due_at.replace(tzinfo=UTC).timestamp(), "placed": placed,
            "written": min(d.created_at for d in _rows(voice_env, models.Delivery, models.Delivery.lead_id == "v-1")
                           ).replace(tzinfo=UTC).timestamp()}
    assert placed - published < 1.0, " ".join(f"{k}={v - published:.3f}" for k, v in seen.items())
    assert call["From"] in CALLERS and call["MachineDetection"] == "Enable"
    assert call["Url"].startswith(f"{PUBLIC}/webhooks/twilio/voice?delivery_id=")
    providers.wait_for(lambda s: [m for m in s.sms() if m["To"] == BOB], timeout=10)   # the SMS goes with it

    # the rep answers: Twilio fetches the TwiML (signed); the lead is read inside a one-key <Gather>
    assert player.status(call, "ringing").status_code == 204
    _resp, doc = player.answer(call)
    gather = doc.find("Gather")
    assert gather is not None and gather.get("numDigits") == "1" and gather.get("method") == "POST"
    assert gather.get("action", "").startswith(f"{PUBLIC}/webhooks/twilio/voice/gather?delivery_id=")
    spoken = " ".join(s.text or "" for s in gather.findall("Say"))
    assert "Jane Doe, VP Engineering, at Acme" in spoken and "Press 1 to claim" in spoken and "http" not in spoken

    # 3 reads it again; 1 claims and bridges to the lead's number from a caller id of the pool
    _resp, again = player.press(call, doc, "3")
    assert again.find("Gather") is not None
    _resp, dialled = player.press(call, doc, "1")
    dial = dialled.find("Dial")
    assert dial is not None and dial.get("callerId") in CALLERS
    number = dial.find("Number")
    assert number is not None and number.text == LEAD_PHONE
    assert number.get("statusCallback", "").startswith(f"{PUBLIC}/webhooks/twilio/voice/bridge?delivery_id=")
    assert set((number.get("statusCallbackEvent") or "").split()) == {"answered", "completed"}
    (assignment,) = _rows(voice_env, models.Assignment, models.Assignment.lead_id == "v-1",
                          models.Assignment.current.is_(True))
    assert assignment.claimed_by == "bob" and assignment.claimed_at is not None
    # a replay of the keypress claims nothing and dials nobody
    _resp, replay = player.press(call, doc, "1")
    assert replay.find("Dial") is None

    # the lead picks up; 30 s later the bridged leg completes: first contact, the cadence stopped
    child, _ = player.bridged(call, dialled, "in-progress")
    _, resp = player.bridged(call, dialled, "completed", duration=30, child_sid=child)
    assert resp.status_code == 204
    player.bridged(call, dialled, "completed", duration=30, child_sid=child)   # replayed: no second effect
    assert player.status(call, "completed", CallDuration="75", AnsweredBy="human").status_code == 204
    lead = _lead(voice_env, "v-1")
    assert lead.contacted_at is not None
    kinds = [k for k, _ in _trace(voice_env, "v-1")]
    assert kinds.count("contacted") == 1 and "keypress" in kinds and "bridge" in kinds and "bridged" in kinds
    contacted = next(d for k, d in _trace(voice_env, "v-1") if k == "contacted")
    assert contacted["via"] == "voice" and contacted["duration"] == 30
    (hook,) = _rows(voice_env, models.OutboundWebhook, models.OutboundWebhook.event == "lead.contacted")
    assert json.loads(hook.body)["detail"]["duration"] == 30
    steps = _rows(voice_env, models.AlertStep, models.AlertStep.lead_id == "v-1")
    assert steps[0].status == "done" and all(s.status == "cancelled" for s in steps[1:])
    (voice_delivery,) = _rows(voice_env, models.Delivery, models.Delivery.channel == "voice",
                              models.Delivery.lead_id == "v-1")
    assert voice_delivery.status == "delivered" and voice_delivery.provider_id == call["Sid"]
    count = len(calls_to(providers, BOB))
    time.sleep(3)   # the first reminder would be due by now: nothing more is called or sent
    assert len(calls_to(providers, BOB)) == count

    with db(voice_env) as s:
        text = render_explain(explain(s, "v-1"))
    for words in ("voice", "keypress", "bridge", "bridged", "contacted", "duration=30"):
        assert words in text, text
    assert providers.violations == []


def test_voicemail_is_a_failed_attempt_and_the_next_step_calls_on_time(voice_stack, voice_env, providers, player):
    from worker import db as models

    send(hot_lead("v-2"))
    call = ringing(voice_env, providers.wait_for(lambda s: calls_to(s, BOB), timeout=15)[0])
    _resp, doc = player.answer(call, answered_by="machine_end_beep")
    assert doc.find("Gather") is None and doc.find("Hangup") is not None   # nothing is read to a machine
    assert player.status(call, "completed", AnsweredBy="machine_end_beep", CallDuration="3").status_code == 204
    # (the reminder's call may already be out: the first one is the call that was answered by the machine)
    failed = _rows(voice_env, models.Delivery, models.Delivery.channel == "voice", models.Delivery.lead_id == "v-2")[0]
    assert failed.provider_id == call["Sid"] and failed.status == "failed" and failed.error == "call voicemail"
    assert _rows(voice_env, models.Assignment, models.Assignment.lead_id == "v-2",
                 models.Assignment.claimed_at.is_not(None)) == []   # no claim
    second = providers.wait_for(lambda s: calls_to(s, BOB)[1:], timeout=15)[0]   # the first reminder calls again
    ringing(voice_env, second)
    (retry,) = _rows(voice_env, models.AlertStep, models.AlertStep.lead_id == "v-2", models.AlertStep.step == 1)
    assert retry.status == "done" and (retry.fired_at - retry.due_at).total_seconds() < 1.0
    assert second["Sid"] != call["Sid"]
    # the second reminder reaches the manager too, by SMS only (alerts.channels.escalation), and calls bob again
    providers.wait_for(lambda s: [m for m in s.sms() if m["To"] == MARIA], timeout=15)
    providers.wait_for(lambda s: calls_to(s, BOB)[2:], timeout=10)
    assert calls_to(providers, MARIA) == []
    # no answer at all on the reminder's call: failed as well, and nothing claimed
    assert player.status(second, "no-answer").status_code == 204
    wait_until(lambda: sorted(d.error for d in _rows(voice_env, models.Delivery, models.Delivery.channel == "voice",
                                                     models.Delivery.lead_id == "v-2") if d.error) == ["call no-answer", "call voicemail"],
               timeout=10, message="both calls failed")
    assert providers.violations == []


def test_forged_or_tampered_voice_webhooks_are_refused_with_no_effect(voice_stack, voice_env, providers, player,
                                                                      app_client):
    from worker import db as models

    send(hot_lead("v-3"))
    call = ringing(voice_env, providers.wait_for(lambda s: calls_to(s, BOB), timeout=15)[0])
    _resp, doc = player.answer(call)
    gather = f"{PUBLIC}/webhooks/twilio/voice/gather?delivery_id="
    action = doc.find("Gather").get("action")
    params = {"CallSid": call["Sid"], "From": call["From"], "To": call["To"], "Digits": "1", "CallStatus": "in-progress"}
    assert player.post(action, params, signature="forged").status_code == 403
    # signed for another delivery, replayed against this one
    other = player.post(gather + "999999", params)   # a correct signature of a URL naming no delivery
    assert other.status_code == 200 and ET.fromstring(other.content).find("Dial") is None
    from twilio.request_validator import RequestValidator

    sig = RequestValidator(TOKEN).compute_signature(gather + "999999", params)
    assert player.post(action, params, signature=sig).status_code == 403
    assert player.post(f"{PUBLIC}/webhooks/twilio/voice/status?delivery_id=1",
                       {"CallSid": call["Sid"], "CallStatus": "no-answer"}, signature="x").status_code == 403
    assert _rows(voice_env, models.Assignment, models.Assignment.lead_id == "v-3",
                 models.Assignment.claimed_at.is_not(None)) == []
    assert [d.status for d in _rows(voice_env, models.Delivery, models.Delivery.channel == "voice",
                                    models.Delivery.lead_id == "v-3")] == ["sent"]
    assert "keypress" not in [k for k, _ in _trace(voice_env, "v-3")]


def test_a_lead_that_is_no_longer_the_reps_is_not_bridged(voice_stack, voice_env, providers, player, app_client):
    from worker import db as models

    send(hot_lead("v-4"))
    call = ringing(voice_env, providers.wait_for(lambda s: calls_to(s, BOB), timeout=15)[0])
    _resp, doc = player.answer(call)
    providers.wait_for(lambda s: [m for m in s.sms() if m["To"] == BOB], timeout=10)
    assert "Passed" in signed_sms(app_client, BOB, "2", "SM" + "4" * 32).text   # passed on by SMS meanwhile
    _resp, answer = player.press(call, doc, "1")
    assert answer.find("Dial") is None and answer.find("Hangup") is not None
    said = " ".join(s.text or "" for s in answer.findall("Say"))
    assert "no longer assigned to you" in said and "Alice Ng owns it now" in said
    (a,) = _rows(voice_env, models.Assignment, models.Assignment.lead_id == "v-4", models.Assignment.current.is_(True))
    assert a.rep_id == "alice" and a.claimed_at is None
    assert providers.violations == []
