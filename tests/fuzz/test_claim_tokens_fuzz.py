"""Claim links under attack (SPEC §5 claim page, §8): a token changed in any way, re-pointed at another
rep, lead or assignment, or past its expiry gets a 4xx page, and no claim is recorded."""

from __future__ import annotations

import base64
import json
import string
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.fuzz import Api, Open, claim_path, open_lead
from tests.support.stack import SECRET_KEY
from tests.support.strategies import FUZZ, mutated
from worker.adapters import db
from worker.adapters.tokens import ClaimToken, TokenError, sign, verify

SOME = settings(FUZZ, max_examples=20)
SECRET = SECRET_KEY                 # LEADROUTER_SECRET_KEY of service_env
TOKEN_CHARS = string.ascii_letters + string.digits + "-_.=+/ %~!*é"


@pytest.fixture
def lead(api: Api) -> Open:
    from worker.adapters.runtime import get_runtime

    sessions = get_runtime().sessions
    open_lead(sessions, "u-other")              # a second open lead, for tokens re-pointed at it
    return open_lead(sessions, "u-claim")


def assert_refused(api: Api, lead: Open, token: str) -> None:
    for method in ("GET", "POST"):
        r = api.client.request(method, claim_path(token), data={"action": "claim"} if method == "POST" else None)
        assert 400 <= r.status_code < 500, (method, token, r.status_code)
        assert r.headers.get("cache-control", "no-store") == "no-store"
        assert "Claimed" not in r.text
    assert lead.claimed() == (None, None), f"token {token!r} claimed the lead"


@SOME
@given(data=st.data())
def test_any_single_character_change_to_a_token_is_refused(api: Api, lead: Open, data: st.DataObject) -> None:
    token = lead.token()
    assert_refused(api, lead, data.draw(mutated(token, TOKEN_CHARS)))


@SOME
@given(index=st.integers(0, 10**4), mask=st.integers(1, 255), part=st.sampled_from(["body", "mac"]))
def test_any_byte_change_inside_a_token_is_refused(api: Api, lead: Open, index: int, mask: int, part: str) -> None:
    body, mac = lead.token().split(".")
    raw = bytearray(base64.urlsafe_b64decode((body if part == "body" else mac) + "=="))
    raw[index % len(raw)] ^= mask
    text = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert_refused(api, lead, f"{text}.{mac}" if part == "body" else f"{body}.{text}")


@SOME
@given(change=st.sampled_from(["swap", "rep", "lead", "assignment", "expires", "bool", "extra"]))
def test_a_rewritten_token_body_with_its_old_signature_is_refused(api: Api, lead: Open, change: str) -> None:
    body, mac = lead.token().split(".")
    rep, lead_id, assignment, expires = json.loads(base64.urlsafe_b64decode(body + "=="))
    fields: list[Any] = {"swap": [lead_id, rep, assignment, expires], "rep": ["alice", lead_id, assignment, expires],
                         "lead": [rep, "u-other", assignment, expires], "assignment": [rep, lead_id, assignment + 1,
                                                                                        expires],
                         "expires": [rep, lead_id, assignment, expires + 10**6], "bool": [rep, lead_id, True, expires],
                         "extra": [rep, lead_id, assignment, expires, 1]}[change]
    forged = base64.urlsafe_b64encode(json.dumps(fields, separators=(",", ":")).encode()).rstrip(b"=").decode()
    assert_refused(api, lead, f"{forged}.{mac}")


def test_a_genuine_token_for_another_rep_claims_nothing(api: Api, lead: Open) -> None:
    """Such a token exists when a manager was alerted; without an escalation to them it claims nothing."""
    for who in ("alice", "maria", "nobody"):
        token = lead.token(rep=who)
        assert api.client.get(claim_path(token)).status_code in (200, 403, 410)    # showing the page changes nothing
        for action in ("claim", "pass"):
            r = api.client.post(claim_path(token), data={"action": action})
            assert r.status_code == 409 and "Claimed" not in r.text and "Passed" not in r.text, (who, action)
    assert lead.claimed() == (None, None)
    with lead.sessions() as s:
        a = s.get(db.Assignment, lead.assignment_id)
        assert a.current and a.rep_id == "bob"


def test_a_genuine_token_pointing_elsewhere_claims_nothing(api: Api, lead: Open) -> None:
    other = open_lead(lead.sessions, "u-third", rep="alice")
    for token in (lead.token(lead="u-other"), lead.token(assignment=other.assignment_id),
                  lead.token(lead="u-unknown"), lead.token(secret="another-secret")):
        assert_refused(api, lead, token)
    assert other.claimed() == (None, None)


@SOME
@given(seconds=st.integers(1, 10**9))
def test_an_expired_token_is_410_and_claims_nothing(api: Api, lead: Open, seconds: int) -> None:
    token = lead.token(expires=datetime.now(UTC) - timedelta(seconds=seconds))
    for method in ("GET", "POST"):
        r = api.client.request(method, claim_path(token))
        assert r.status_code == 410 and "expired" in r.text
    assert lead.claimed() == (None, None)


def test_a_link_stops_working_when_its_day_is_over(api: Api, lead: Open) -> None:
    token = lead.token(expires=datetime.now(UTC) + timedelta(hours=24))
    with time_machine.travel(datetime.now(UTC) + timedelta(hours=24, seconds=2), tick=False):
        assert api.client.post(claim_path(token), data={"action": "claim"}).status_code == 410
    assert lead.claimed() == (None, None)
    done = api.client.post(claim_path(token), data={"action": "claim"})          # the control: in time it works
    assert done.status_code == 200 and "Claimed" in done.text
    claimed_at, by = lead.claimed()
    assert by == "bob" and claimed_at is not None
    again = api.client.post(claim_path(token), data={"action": "claim"})          # a replayed POST changes nothing
    assert again.status_code in (200, 409) and lead.claimed() == (claimed_at, "bob")


@settings(FUZZ, max_examples=100)
@given(text=st.one_of(st.text(TOKEN_CHARS, max_size=120), st.text(max_size=700),
                      st.binary(max_size=80).map(lambda b: base64.urlsafe_b64encode(b).decode() + "." + "A" * 24)))
def test_the_verifier_refuses_garbage_with_its_own_error(text: str) -> None:
    now = datetime.now(UTC)
    genuine = sign(SECRET, ClaimToken("bob", "u-1", 1, int(now.timestamp()) + 60))
    if text == genuine:
        return
    with pytest.raises(TokenError) as info:
        verify(SECRET, text, now)
    assert info.value.reason == "tampered"
