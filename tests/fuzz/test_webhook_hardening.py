"""Signed provider webhooks carrying hostile content: a rep's SMS reply never echoes a producer's
links or non-GSM text, and a genuinely signed but absurdly nested SendGrid body is a 400."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

from routing.messages import SMS_MAX, is_gsm7, sms_length
from tests.support.fuzz import BOB, SMS, Api, open_lead, post_form, sendgrid_post, twilio_signature
from worker.adapters import db

HOSTILE = "Jane <script>alert(1)</script> Click evil.example/login now \u202e\U0001F600 https://x.test/a " + "A" * 32_000


def _alerted(api: Api, lead_id: str) -> None:
    """An open lead of bob's, with the SMS alert that a bare reply acts on."""
    from worker.adapters.runtime import get_runtime

    sessions = get_runtime().sessions
    lead = open_lead(sessions, lead_id)
    now = datetime.now(UTC)
    with sessions.begin() as s:
        s.get(db.Lead, lead_id).traits = {"name": HOSTILE}
        s.add(db.Delivery(lead_id=lead_id, recipient="bob", channel="sms", to=BOB, status="sent",
                          created_at=now, sent_at=now, updated_at=now))
    assert lead.claimed() == (None, None)


def _reply(api: Api, body: str) -> str:
    params = {"MessageSid": "SM" + uuid.uuid4().hex, "From": BOB, "To": "+15005550006", "Body": body}
    r = post_form(api, SMS, params, twilio_signature(SMS, params))
    assert r.status_code == 200, r.text
    messages = [m.text or "" for m in ET.fromstring(r.text).iter("Message")]
    assert len(messages) == 1
    return messages[0]


def test_a_claim_reply_names_the_lead_as_an_alert_would(api: Api) -> None:
    _alerted(api, "u-hostile")
    text = _reply(api, "1")
    assert text.startswith("Claimed: Jane"), text
    assert "evil.example" not in text and "x.test" not in text and "https" not in text
    assert is_gsm7(text) and sms_length(text) <= SMS_MAX and "\u202e" not in text


def test_a_pass_reply_too(api: Api) -> None:
    _alerted(api, "u-hostile-2")
    text = _reply(api, "2")
    assert "evil.example" not in text and is_gsm7(text) and sms_length(text) <= SMS_MAX, text


def test_a_signed_sendgrid_body_nested_too_deep_is_a_400(api: Api) -> None:
    depth = 30_000                         # 60 KB: under the body limit, far past the parser's recursion limit
    r = sendgrid_post(api, b"[" * depth + b"]" * depth)
    assert r.status_code == 400 and "nested" in r.text
    r = sendgrid_post(api, b'[{"a":' * 5000 + b"1" + b"}]" * 5000)
    assert r.status_code == 400
    assert sendgrid_post(api, []).status_code == 204          # the control: a plain body is taken


def test_a_lead_without_a_name_is_named_by_its_short_code_not_its_id(api: Api) -> None:
    from routing.messages import short_code

    lead_id = "jane@evil.example/login"
    _alerted(api, lead_id)
    from worker.adapters.runtime import get_runtime

    with get_runtime().sessions.begin() as s:
        s.get(db.Lead, lead_id).traits = {"name": "https://evil.example/x"}     # nothing left once cleaned
    text = _reply(api, "1")
    assert text.startswith(f"Claimed: lead {short_code(lead_id)} is yours"), text
    assert "evil" not in text and "jane@" not in text
