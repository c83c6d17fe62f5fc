"""Forged, tampered, expired and replayed provider webhooks (SPEC §5, §6, §8): refused with a 4xx and no
effect; a genuine request replayed has its effect once. The e2e tests cover one forgery of each kind;
these cover every single-character or single-byte change, cross-endpoint reuse and hostile headers."""

from __future__ import annotations

import base64
import json
import string
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from tests.support.alerting import PUBLIC, TOKEN
from tests.support.fuzz import (
    BOB,
    SMS,
    STATUS,
    Api,
    header,
    post_form,
    sendgrid_post,
    sendgrid_sign,
    twilio_signature,
)
from tests.support.strategies import FUZZ, flip_byte, mutated
from worker.adapters import db

SOME = settings(FUZZ, max_examples=20)
B64 = string.ascii_letters + string.digits + "+/="
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())


class State:
    """What a webhook can change: dedup keys, traces, rep availability, deliveries."""

    def __init__(self) -> None:
        from worker.adapters.runtime import get_runtime

        self.sessions = get_runtime().sessions

    def snapshot(self) -> tuple[Any, ...]:
        with self.sessions() as s:
            return (s.scalar(select(func.count()).select_from(db.InboundMessage)),
                    s.scalar(select(func.count()).select_from(db.Trace)),
                    tuple(s.execute(select(db.RepState.rep_id, db.RepState.away_until, db.RepState.disabled_channels)
                                    .order_by(db.RepState.rep_id)).all()),
                    tuple(s.execute(select(db.Delivery.id, db.Delivery.status, db.Delivery.error)
                                    .order_by(db.Delivery.id)).all()))

    def away_until(self, rep: str) -> datetime | None:
        with self.sessions() as s:
            state = s.get(db.RepState, rep)
            return state.away_until if state else None

    def delivery_status(self, delivery_id: int) -> str:
        with self.sessions() as s:
            return s.get(db.Delivery, delivery_id).status

    def add_delivery(self, provider_id: str, channel: str = "sms") -> int:
        now = datetime.now(UTC)
        with self.sessions.begin() as s:
            d = db.Delivery(lead_id="u-fuzz", recipient="bob", channel=channel,
                            to=BOB if channel == "sms" else "bob@example.com", status="sent", provider_id=provider_id,
                            created_at=now, sent_at=now, updated_at=now)
            s.add(d)
            s.flush()
            return d.id


@pytest.fixture
def state(api: Api) -> State:
    return State()          # after ``api``: the runtime reads the fuzz settings


# ---------------------------------------------------------------- Twilio: forged


sms_bodies = st.one_of(st.sampled_from(["1", "2", "YES", "PASS", "AWAY", "AWAY 2h", "BACK", "HELP"]), st.text(max_size=20))


@st.composite
def forged_sms_signatures(draw: st.DrawFn, params: dict[str, str]) -> str | None:
    genuine = twilio_signature(SMS, params)
    kind = draw(st.sampled_from(["mutated", "other-endpoint", "other-host", "other-body", "other-sender",
                                 "other-token", "random", "missing", "empty"]))
    if kind == "mutated":
        return draw(mutated(genuine, B64 + "-_ .!é\x00"))
    if kind == "other-endpoint":                         # a genuine status callback signature reused
        return twilio_signature(STATUS, params)
    if kind == "other-host":
        return twilio_signature(SMS, params, url=draw(st.sampled_from(
            ["http://leads.example.test", "https://evil.example.test", PUBLIC + ":8443", PUBLIC + "/"])))
    if kind == "other-body":
        return twilio_signature(SMS, {**params, "Body": params["Body"] + "x"})
    if kind == "other-sender":
        return twilio_signature(SMS, {**params, "From": "+14155550101"})
    if kind == "other-token":
        return twilio_signature(SMS, params, token=draw(st.text(min_size=1, max_size=40).filter(lambda t: t != TOKEN)))
    if kind == "random":
        return draw(st.text(st.characters(max_codepoint=255), max_size=40))
    return None if kind == "missing" else ""


@SOME
@given(data=st.data(), body=sms_bodies)
def test_a_forged_sms_signature_is_403_and_changes_nothing(api: Api, state: State, data: st.DataObject,
                                                          body: str) -> None:
    params = {"MessageSid": "SM" + uuid.uuid4().hex, "From": BOB, "To": "+15005550006", "Body": body,
              "AccountSid": "AC" + "0" * 32}
    signature = data.draw(forged_sms_signatures(params))
    before = state.snapshot()
    r = post_form(api, SMS, params, signature)
    assert r.status_code == 403, (signature, r.status_code, r.text)
    assert state.snapshot() == before
    # the control: the genuine signature for the same request is accepted
    assert post_form(api, SMS, params, twilio_signature(SMS, params)).status_code == 200


@SOME
@given(sid=st.text(min_size=1, max_size=150), other=st.text(min_size=1, max_size=40))
def test_a_replayed_reply_acts_once_whatever_its_message_sid(api: Api, state: State, sid: str, other: str) -> None:
    away = {"MessageSid": f"SM{uuid.uuid4().hex}{sid}", "From": BOB, "Body": "AWAY"}
    back = {"MessageSid": f"SM{uuid.uuid4().hex}{other}", "From": BOB, "Body": "BACK"}
    first = post_form(api, SMS, away, twilio_signature(SMS, away))
    assert first.status_code == 200 and "away" in first.text
    assert state.away_until("bob") is not None
    assert post_form(api, SMS, back, twilio_signature(SMS, back)).status_code == 200
    assert state.away_until("bob") is None
    before = state.snapshot()
    replay = post_form(api, SMS, away, twilio_signature(SMS, away))
    assert replay.status_code == 200 and "<Message>" not in replay.text
    assert state.away_until("bob") is None, "a replayed AWAY took effect again"
    assert state.snapshot() == before


@SOME
@given(amount=st.from_regex(r"\A[0-9]{1,40}(\.[0-9]{1,8})?\Z"), unit=st.sampled_from(["ms", "s", "m", "h", "d", "w"]))
def test_any_away_duration_a_rep_texts_gets_an_answer(api: Api, state: State, amount: str, unit: str) -> None:
    params = {"MessageSid": "SM" + uuid.uuid4().hex, "From": BOB, "Body": f"AWAY {amount}{unit}"}
    r = post_form(api, SMS, params, twilio_signature(SMS, params))
    assert r.status_code == 200 and "<Message>" in r.text, r.text
    if "Say AWAY" not in r.text:                  # refused as no duration it can keep, or away until then
        assert "You are away until" in r.text and state.away_until("bob") is not None


# ---------------------------------------------------------------- Twilio: status callbacks


@SOME
@given(data=st.data(), status=st.sampled_from(["delivered", "failed", "undelivered", "read"]))
def test_a_forged_status_callback_changes_no_delivery(api: Api, state: State, data: st.DataObject,
                                                      status: str) -> None:
    sid = "SM" + uuid.uuid4().hex
    delivery = state.add_delivery(sid)
    params = {"MessageSid": sid, "MessageStatus": status, "ErrorCode": "30003"}
    query = f"?delivery_id={delivery}"
    genuine = twilio_signature(STATUS + query, params)
    forged = data.draw(st.one_of(
        mutated(genuine, B64 + "-_"),
        st.just(twilio_signature(STATUS, params)),                     # signed without the query it is sent with
        st.just(twilio_signature(SMS + query, params)),                # an inbound-SMS signature reused
        st.just(twilio_signature(STATUS + query, {**params, "MessageStatus": "sent"}))))
    before = state.snapshot()
    r = api.client.post(STATUS + query, content=urlencode(params),
                        headers={"X-Twilio-Signature": header(forged),
                                 "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 403
    assert state.snapshot() == before
    r = api.client.post(STATUS + query, content=urlencode(params),
                        headers={"X-Twilio-Signature": genuine, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 204
    assert state.delivery_status(delivery) == ("delivered" if status in ("delivered", "read") else "failed")


@SOME
@given(sid=st.text(max_size=120), status=st.one_of(st.sampled_from(["delivered", "failed", "sent", ""]), st.text()),
       code=st.one_of(st.none(), st.text(max_size=10)))
def test_any_ids_in_a_genuine_status_callback_get_an_answer(api: Api, state: State, sid: str, status: str,
                                                            code: str | None) -> None:
    """Twilio signs what it sends; whatever that is, the answer is a 204 or a 400, never a server error."""
    params = {"MessageSid": sid, "MessageStatus": status, **({"ErrorCode": code} if code is not None else {})}
    before = state.snapshot()
    r = api.client.post(STATUS, content=urlencode(params), headers={
        "X-Twilio-Signature": twilio_signature(STATUS, params), "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == (204 if sid and status else 400), r.text
    assert state.snapshot() == before            # no delivery has such an id


# ---------------------------------------------------------------- SendGrid


@st.composite
def forged_sendgrid(draw: st.DrawFn, body: bytes) -> tuple[str, str]:
    """(timestamp, signature) pairs that must not verify for ``body``."""
    stamp = str(int(time.time()))
    raw = base64.b64decode(sendgrid_sign(body, stamp))
    kind = draw(st.sampled_from(["byte", "other-key", "other-body", "other-stamp", "random", "text"]))
    if kind == "byte":
        flipped = flip_byte(raw, draw(st.integers(0, 200)), draw(st.integers(1, 255)))
        return stamp, base64.b64encode(flipped).decode()
    if kind == "other-key":
        return stamp, sendgrid_sign(body, stamp, OTHER_KEY)
    if kind == "other-body":
        return stamp, sendgrid_sign(body + b" ", stamp)
    if kind == "other-stamp":   # a genuine signature made a second earlier, sent with the current time
        return stamp, sendgrid_sign(body, str(int(stamp) - 1))
    if kind == "random":
        return stamp, base64.b64encode(draw(st.binary(min_size=0, max_size=80))).decode()
    return stamp, draw(st.text(st.characters(max_codepoint=255), max_size=60))


@SOME
@given(data=st.data(), event=st.sampled_from(["delivered", "bounce", "dropped", "open"]))
def test_a_forged_sendgrid_event_is_403_and_changes_nothing(api: Api, state: State, data: st.DataObject,
                                                            event: str) -> None:
    delivery = state.add_delivery(f"sg-{uuid.uuid4().hex}", channel="email")
    events = [{"event": event, "sg_event_id": uuid.uuid4().hex, "delivery_id": str(delivery),
               "email": "bob@example.com"}]
    body = json.dumps(events).encode()
    stamp, signature = data.draw(forged_sendgrid(body))
    before = state.snapshot()
    r = sendgrid_post(api, body, stamp=stamp, signature=signature)
    assert r.status_code == 403, (signature, r.status_code)
    assert state.snapshot() == before


@SOME
@given(age=st.one_of(st.integers(610, 10**9), st.integers(-(10**9), -610)))
def test_a_genuinely_signed_but_stale_or_future_timestamp_is_refused(api: Api, state: State, age: int) -> None:
    delivery = state.add_delivery(f"sg-{uuid.uuid4().hex}", channel="email")
    events = [{"event": "delivered", "sg_event_id": uuid.uuid4().hex, "delivery_id": str(delivery)}]
    before = state.snapshot()
    r = sendgrid_post(api, events, stamp=str(int(time.time()) - age))
    assert r.status_code == 403
    assert state.snapshot() == before


@SOME
@given(stamp=st.one_of(st.sampled_from(["\u00b2", "\u00b9\u00b2\u00b3", "9" * 5000, "9" * 400, "-5", "+5", " 5", "5 ",
                                        "0x10", "1e9", "", "\u0661\u0662\u0663"]),
                       st.text(st.characters(max_codepoint=255), max_size=30), st.integers(0, 10**30).map(str),
                       # around the 600 s window, never within seconds of its edge (the clock moves on)
                       st.integers(-700, 700).filter(lambda d: abs(abs(d) - 600) > 10)
                       .map(lambda d: str(int(time.time()) + d))))
def test_any_timestamp_header_is_refused_without_a_server_error(api: Api, state: State, stamp: str) -> None:
    delivery = state.add_delivery(f"sg-{uuid.uuid4().hex}", channel="email")
    events = [{"event": "delivered", "sg_event_id": uuid.uuid4().hex, "delivery_id": str(delivery)}]
    body = json.dumps(events).encode()
    before = state.snapshot()
    r = sendgrid_post(api, body, stamp=stamp, signature=sendgrid_sign(body, stamp.encode("latin-1", "replace")
                                                                      .decode("latin-1")))
    fresh = stamp.isascii() and stamp.isdigit() and len(stamp) <= 12 and abs(time.time() - int(stamp)) <= 600
    assert r.status_code == (204 if fresh else 403), (stamp[:20], r.status_code)
    if not fresh:
        assert state.snapshot() == before


def test_a_replayed_sg_event_id_has_no_second_effect_even_in_a_new_signed_request(api: Api, state: State) -> None:
    first, second = (state.add_delivery(f"sg-{uuid.uuid4().hex}", channel="email") for _ in range(2))
    assert sendgrid_post(api, [{"event": "delivered", "sg_event_id": "evt-1", "delivery_id": str(first)}]).status_code == 204
    assert state.delivery_status(first) == "delivered"
    before = state.snapshot()
    replay = [{"event": "delivered", "sg_event_id": "evt-1", "delivery_id": str(second)}]
    assert sendgrid_post(api, replay, stamp=str(int(time.time()) + 1)).status_code == 204
    assert state.snapshot() == before and state.delivery_status(second) == "sent"
    fresh = [{"event": "delivered", "sg_event_id": "evt-2", "delivery_id": str(second)}]
    assert sendgrid_post(api, fresh).status_code == 204
    assert state.delivery_status(second) == "delivered"


@SOME
@given(events=st.lists(st.fixed_dictionaries({"sg_event_id": st.text(min_size=1, max_size=40)}, optional={
    "event": st.one_of(st.sampled_from(["delivered", "bounce", "dropped"]), st.text(max_size=10)),
    "sg_message_id": st.text(max_size=40),
    "delivery_id": st.one_of(st.sampled_from(["\u00b2", "9" * 30, "\u0661\u0662", "-1", "0"]), st.text(max_size=8),
                             st.integers())}),
    max_size=5))
def test_any_ids_in_a_genuine_sendgrid_event_get_an_answer(api: Api, state: State,
                                                           events: list[dict[str, Any]]) -> None:
    before = state.snapshot()
    r = sendgrid_post(api, [{**e, "sg_event_id": uuid.uuid4().hex + e["sg_event_id"]} for e in events])
    assert r.status_code == 204, r.text
    assert state.snapshot()[1:] == before[1:]    # remembered, but no delivery has such an id


@settings(FUZZ, max_examples=20)
@given(sg_event_id=st.text(min_size=1, max_size=300))
def test_any_sg_event_id_is_remembered_exactly(api: Api, state: State, sg_event_id: str) -> None:
    """Long or odd ids dedupe like short ones: the stored key (120 characters) never merges two of them."""
    prefix = uuid.uuid4().hex
    one, two = (state.add_delivery(f"sg-{uuid.uuid4().hex}", channel="email") for _ in range(2))
    ids = [prefix + sg_event_id, prefix + sg_event_id + "2"]
    r = sendgrid_post(api, [{"event": "delivered", "sg_event_id": ids[0], "delivery_id": str(one)},
                            {"event": "delivered", "sg_event_id": ids[1], "delivery_id": str(two)},
                            {"event": "bounce", "sg_event_id": ids[0], "delivery_id": str(two)}])
    assert r.status_code == 204
    assert (state.delivery_status(one), state.delivery_status(two)) == ("delivered", "delivered")
