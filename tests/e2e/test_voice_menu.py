"""The voice menu, key by key, on one process: the crossing is drained here, its first alert places the call
from here, and the stand-in plays Twilio against the voice webhooks. TwiML is parsed, never matched as text."""

from __future__ import annotations

import pytest
from ruamel.yaml import YAML

from tests.support.alerting import drain_all, hot_lead, send
from tests.support.stack import wait_until
from tests.support.voice import BOB, calls_to, lead_row, ringing, rows_of, trace_of


def _said(doc) -> str:
    return " ".join(s.text or "" for s in doc.iter("Say"))


def _call(voice_env, providers, lead: str, **traits) -> dict:
    events = hot_lead(lead)
    events[0]["traits"].update(traits)
    send(events)
    drain_all()
    return ringing(voice_env, providers.wait_for(lambda s: calls_to(s, BOB), timeout=15)[-1])


def _set(voice_env, **routing) -> None:
    from pathlib import Path

    from worker.adapters.runtime import reset_runtime

    path = Path(voice_env["LEADROUTER_CONFIG"])
    yaml = YAML()
    doc = yaml.load(path.read_text())
    doc["routing"].update(routing)
    with path.open("w") as fh:
        yaml.dump(doc, fh)
    reset_runtime()


def test_quiet_hours_in_the_leads_zone_claim_but_do_not_ring_the_lead(voice_env, providers, player):
    _set(voice_env, quiet_hours="Mon-Sun 00:00-24:00", quiet_hours_timezone="UTC")   # always quiet
    call = _call(voice_env, providers, "q-1", timezone="Asia/Tokyo")
    _resp, doc = player.answer(call)
    _resp, answer = player.press(call, doc, "1")
    assert answer.find("Dial") is None and answer.find("Hangup") is not None
    assert "quiet hours" in _said(answer) and "Claimed" in _said(answer)
    assert ("bridge refused" in [k for k, _ in trace_of(voice_env, "q-1")])
    from worker.adapters import db as models

    (a,) = rows_of(voice_env, models.Assignment, models.Assignment.lead_id == "q-1", models.Assignment.current.is_(True))
    assert a.claimed_by == "bob"


@pytest.mark.parametrize("phone", ["4155550100", "call me maybe", "+1 415 555 0100 ext. 12"])
def test_a_lead_without_an_e164_phone_is_claimed_and_the_rep_told(voice_env, providers, player, phone):
    call = _call(voice_env, providers, "p-1", phone=phone)
    _resp, doc = player.answer(call)
    _resp, answer = player.press(call, doc, "1")
    assert answer.find("Dial") is None and "no phone number we can dial" in _said(answer)


def test_an_unknown_key_reads_the_menu_again_and_2_passes(voice_env, providers, player):
    call = _call(voice_env, providers, "k-1")
    _resp, doc = player.answer(call)
    _resp, again = player.press(call, doc, "9")
    assert "does nothing here" in _said(again) and again.find("Gather") is not None
    assert again.find("Gather").get("numDigits") == "1"
    _resp, passed = player.press(call, again, "2")
    assert "Passed" in _said(passed) and passed.find("Dial") is None
    from worker.adapters import db as models

    (a,) = rows_of(voice_env, models.Assignment, models.Assignment.lead_id == "k-1", models.Assignment.current.is_(True))
    assert a.rep_id == "alice"
    assert any(k == "passed" and d.get("via") == "voice" for k, d in trace_of(voice_env, "k-1"))


def test_a_short_bridge_is_no_contact_and_a_missed_one_is_told(voice_env, providers, player, app_client):
    call = _call(voice_env, providers, "s-1")
    _resp, doc = player.answer(call)
    _resp, dialled = player.press(call, doc, "1")
    child, _ = player.bridged(call, dialled, "completed", duration=19)   # under voice.contact_after (20 s)
    assert lead_row(voice_env, "s-1").contacted_at is None
    assert "contacted" not in [k for k, _ in trace_of(voice_env, "s-1")]
    dial_action = dialled.find("Dial").get("action")
    resp = player.post(dial_action, {"CallSid": call["Sid"], "DialCallStatus": "no-answer", "From": call["From"],
                                     "To": call["To"]})
    from tests.fakes.voice import twiml

    ended = twiml(resp)
    assert "did not answer" in _said(ended) and ended.find("Hangup") is not None


def test_a_call_answered_after_the_lead_was_claimed_says_so(voice_env, providers, player, app_client):
    from tests.support.alerting import signed_sms

    call = _call(voice_env, providers, "c-1")
    wait_until(lambda: [m for m in providers.sms() if m["To"] == BOB], timeout=10, message="the SMS")
    assert "Claimed" in signed_sms(app_client, BOB, "1", "SM" + "7" * 32).text
    _resp, doc = player.answer(call)
    assert doc.find("Gather") is None and "You already claimed this lead." in _said(doc)
