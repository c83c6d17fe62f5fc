"""Call-first alerts end to end: real Celery workers and a real scheduler place calls with the real Twilio SDK
against the local stand-in, which then plays Twilio: it fetches the call's TwiML signed as Twilio signs it,
presses keys, and posts the status callbacks of the rep's leg and of the bridged leg to the lead."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from datetime import UTC

import pytest

from tests.support.alerting import PUBLIC, TOKEN, db, hot_lead, send, signed_sms
from tests.support.stack import wait_until
from tests.support.voice import (
    BOB,
    CALLERS,
    LEAD_PHONE,
    MARIA,
    calls_to,
    lead_row,
    ringing,
    rows_of,
    trace_of,
)

# Reminders 30 s on: a slow machine never reminds or reassigns before the test's own keypress or reply.
ONE_ALERT = pytest.mark.parametrize("voice_env", [{"retries": ["30s", "60s"]}], indirect=True, ids=["slow-cadence"])


@ONE_ALERT
def test_a_hot_lead_is_called_claimed_by_keypress_bridged_and_contact_recorded(voice_stack, voice_env, providers,
                                                                               player, app_client):
    from worker.adapters import db as models
    from worker.services.explain import explain, render_explain

    published = time.time()
    send(hot_lead("v-1"))
    call = providers.wait_for(lambda s: calls_to(s, BOB), timeout=15)[0]
    ringing(voice_env, call)
    placed = next(r["received_at"] for r in providers.requests if r["provider_id"] == call["Sid"])
    steps = rows_of(voice_env, models.AlertStep, models.AlertStep.lead_id == "v-1")
    (episode,) = rows_of(voice_env, models.HotEpisode, models.HotEpisode.lead_id == "v-1")
    seen = {"published": published, "received": episode.event_received_at.replace(tzinfo=UTC).timestamp(),
            "opened": episode.opened_at.replace(tzinfo=UTC).timestamp(),
            "due": steps[0].due_at.replace(tzinfo=UTC).timestamp(), "placed": placed,
            "written": min(d.created_at for d in rows_of(voice_env, models.Delivery, models.Delivery.lead_id == "v-1")
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
    (assignment,) = rows_of(voice_env, models.Assignment, models.Assignment.lead_id == "v-1",
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
    lead = lead_row(voice_env, "v-1")
    assert lead.contacted_at is not None
    kinds = [k for k, _ in trace_of(voice_env, "v-1")]
    assert kinds.count("contacted") == 1 and "keypress" in kinds and "bridge" in kinds and "bridged" in kinds
    contacted = next(d for k, d in trace_of(voice_env, "v-1") if k == "contacted")
    assert contacted["via"] == "voice" and contacted["duration"] == 30
    (hook,) = rows_of(voice_env, models.OutboundWebhook, models.OutboundWebhook.event == "lead.contacted")
    assert json.loads(hook.body)["detail"]["duration"] == 30
    steps = rows_of(voice_env, models.AlertStep, models.AlertStep.lead_id == "v-1")
    assert steps[0].status == "done" and all(s.status == "cancelled" for s in steps[1:])
    (voice_delivery,) = rows_of(voice_env, models.Delivery, models.Delivery.channel == "voice",
                              models.Delivery.lead_id == "v-1")
    assert voice_delivery.status == "delivered" and voice_delivery.provider_id == call["Sid"]

    with db(voice_env) as s:
        text = render_explain(explain(s, "v-1"))
    for words in ("voice", "keypress", "bridge", "bridged", "contacted", "duration=30"):
        assert words in text, text
    assert providers.violations == []


def test_voicemail_is_a_failed_attempt_and_the_next_step_calls_on_time(voice_stack, voice_env, providers, player):
    from worker.adapters import db as models

    send(hot_lead("v-2"))
    call = ringing(voice_env, providers.wait_for(lambda s: calls_to(s, BOB), timeout=15)[0])
    _resp, doc = player.answer(call, answered_by="machine_end_beep")
    assert doc.find("Gather") is None and doc.find("Hangup") is not None   # nothing is read to a machine
    assert player.status(call, "completed", AnsweredBy="machine_end_beep", CallDuration="3").status_code == 204
    # (the reminder's call may already be out: the first one is the call that was answered by the machine)
    failed = rows_of(voice_env, models.Delivery, models.Delivery.channel == "voice", models.Delivery.lead_id == "v-2")[0]
    assert failed.provider_id == call["Sid"] and failed.status == "failed" and failed.error == "call voicemail"
    assert rows_of(voice_env, models.Assignment, models.Assignment.lead_id == "v-2",
                 models.Assignment.claimed_at.is_not(None)) == []   # no claim
    second = providers.wait_for(lambda s: calls_to(s, BOB)[1:], timeout=15)[0]   # the first reminder calls again
    ringing(voice_env, second)
    (retry,) = rows_of(voice_env, models.AlertStep, models.AlertStep.lead_id == "v-2", models.AlertStep.step == 1)
    assert retry.status == "done" and (retry.fired_at - retry.due_at).total_seconds() < 1.0
    assert second["Sid"] != call["Sid"]
    # the second reminder reaches the manager too, by SMS only (alerts.channels.escalation), and calls bob again
    providers.wait_for(lambda s: [m for m in s.sms() if m["To"] == MARIA], timeout=15)
    providers.wait_for(lambda s: calls_to(s, BOB)[2:], timeout=10)
    assert calls_to(providers, MARIA) == []
    # no answer at all on the reminder's call: failed as well, and nothing claimed
    assert player.status(second, "no-answer").status_code == 204
    wait_until(lambda: sorted(d.error for d in rows_of(voice_env, models.Delivery, models.Delivery.channel == "voice",
                                                     models.Delivery.lead_id == "v-2") if d.error) == ["call no-answer", "call voicemail"],
               timeout=10, message="both calls failed")
    assert providers.violations == []


@ONE_ALERT
def test_forged_or_tampered_voice_webhooks_are_refused_with_no_effect(voice_stack, voice_env, providers, player,
                                                                      app_client):
    from worker.adapters import db as models

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
    assert rows_of(voice_env, models.Assignment, models.Assignment.lead_id == "v-3",
                 models.Assignment.claimed_at.is_not(None)) == []
    assert [d.status for d in rows_of(voice_env, models.Delivery, models.Delivery.channel == "voice",
                                    models.Delivery.lead_id == "v-3")] == ["sent"]
    assert "keypress" not in [k for k, _ in trace_of(voice_env, "v-3")]


@ONE_ALERT
def test_a_lead_that_is_no_longer_the_reps_is_not_bridged(voice_stack, voice_env, providers, player, app_client):
    from worker.adapters import db as models

    send(hot_lead("v-4"))
    call = ringing(voice_env, providers.wait_for(lambda s: calls_to(s, BOB), timeout=15)[0])
    _resp, doc = player.answer(call)
    providers.wait_for(lambda s: [m for m in s.sms() if m["To"] == BOB], timeout=10)
    assert "Passed" in signed_sms(app_client, BOB, "2", "SM" + "4" * 32).text   # passed on by SMS meanwhile
    _resp, answer = player.press(call, doc, "1")
    assert answer.find("Dial") is None and answer.find("Hangup") is not None
    said = " ".join(s.text or "" for s in answer.findall("Say"))
    assert "no longer assigned to you" in said and "Alice Ng owns it now" in said
    (a,) = rows_of(voice_env, models.Assignment, models.Assignment.lead_id == "v-4", models.Assignment.current.is_(True))
    assert a.rep_id == "alice" and a.claimed_at is None
    assert providers.violations == []
