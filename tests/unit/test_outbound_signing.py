"""Outbound webhooks and Slack notices: signing, retry classification, backoff, rules, Block Kit."""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import timedelta

import httpx
import pytest

from routing.config import Outbound, RulesError, parse_rules
from routing.messages import LeadView, render_slack
from tests.fakes.receiver import block_kit_problems
from tests.support.stack import CONFIG
from worker.services.outbound import backoff, classify, signature, verify

BODY = b'{"id":"evt_1","event":"lead.assigned"}'


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(b"s3cret", b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert signature("s3cret", 1700000000, BODY) == f"v1={expected}"


def test_verify_accepts_the_real_thing_and_refuses_tampering_and_replays() -> None:
    now = time.time()
    ts = int(now)
    headers = {"X-Leadrouter-Timestamp": str(ts), "X-Leadrouter-Signature": signature("k", ts, BODY)}
    assert verify("k", headers, BODY, now=now)
    assert not verify("other", headers, BODY, now=now)
    assert not verify("k", headers, BODY + b" ", now=now)
    assert not verify("k", {**headers, "X-Leadrouter-Timestamp": str(ts + 1)}, BODY, now=now)
    assert not verify("k", headers, BODY, now=now + 301)                      # too old: a replay
    assert not verify("k", {"X-Leadrouter-Signature": headers["X-Leadrouter-Signature"]}, BODY, now=now)


@pytest.mark.parametrize(("code", "delivered", "retry"), [
    (200, True, False), (204, True, False), (301, False, False), (400, False, False), (401, False, False),
    (404, False, False), (410, False, False), (408, False, True), (429, False, True), (500, False, True),
    (502, False, True), (503, False, True),
])
def test_classify_by_status(code: int, delivered: bool, retry: bool) -> None:
    out = classify(httpx.Response(code, text="nope"), None)
    assert (out.delivered, out.retry, out.status) == (delivered, retry, code)


def test_classify_reads_retry_after_and_retries_transport_errors() -> None:
    assert classify(httpx.Response(429, headers={"Retry-After": "7"}), None).retry_after == 7.0
    assert classify(httpx.Response(503, headers={"Retry-After": "soon"}), None).retry_after is None
    out = classify(None, httpx.ConnectError("refused"))
    assert out.retry and not out.delivered and out.status is None and "refused" in (out.error or "")


def test_backoff_doubles_and_is_capped() -> None:
    policy = Outbound(retry_initial="10s", retry_max="1h")
    waits = [backoff(policy, n).total_seconds() for n in range(1, 12)]
    assert waits[:4] == [10, 20, 40, 80] and waits[-1] == 3600 and waits == sorted(waits)
    # the default policy reaches its 24 h window after a bounded number of attempts
    default = Outbound()
    total, n = timedelta(0), 0
    while total < default.retry_for:
        n += 1
        total += backoff(default, n)
    assert 20 <= n <= 40


def test_outbound_block_is_validated() -> None:
    base = CONFIG.read_text().replace("outbound:\n  webhooks: []", "")
    ok = parse_rules(base + "outbound:\n  webhooks:\n    - url: https://crm.example.com/hook\n"
                               "      events: [lead.assigned, lead.claimed]\n")
    hook = ok.outbound.webhooks[0]
    assert hook.wants("lead.claimed") and not hook.wants("lead.hot")
    bad = {
        "    - url: ftp://crm.example.com/hook\n": "url",
        "    - url: https://crm.example.com/hook\n      events: [lead.sold]\n": "events",
    }
    for block, key in bad.items():
        with pytest.raises(RulesError) as err:
            parse_rules(base + "outbound:\n  webhooks:\n" + block)
        assert [e.path for e in err.value.errors] == [f"outbound.webhooks.0.{key}" if key == "url"
                                                      else "outbound.webhooks.0.events.0"]
    with pytest.raises(RulesError, match="retry_max"):
        parse_rules(base + "outbound:\n  retry_initial: 1h\n  retry_max: 1m\n")


LEAD = LeadView(lead_id="u-42", traits={"name": "Jane Doe", "title": "VP Sales", "company": {"name": "Acme & Sons"},
                                        "phone": "+14155550100", "email": "jane@acme.com"},
                score=92.5, tier="hot",
                breakdown={"events": {"Demo Requested": {"occurrences": 1, "counted": 1, "points": 30},
                                      "Pricing Downloaded": {"occurrences": 2, "counted": 2, "points": 15}}})


@pytest.mark.parametrize("notice", ["lead.hot", "lead.unrouted", "escalation"])
def test_each_slack_notice_is_valid_block_kit(notice: str) -> None:
    payload = render_slack(notice, LEAD, rep="Bob Okafor", manager="Maria Lopez", retry=3, reason="team na is full")
    assert block_kit_problems(payload) == []
    text = str(payload)
    assert "Jane Doe" in text and "Acme &amp; Sons" in text and "Demo Requested +30" in text
    assert "+14155550100" not in text and "jane@acme.com" not in text      # a team channel gets no contact data
    assert {"lead.hot": "Bob Okafor", "lead.unrouted": "team na is full", "escalation": "Maria Lopez"}[notice] in text


def test_slack_limits_hold_for_huge_traits() -> None:
    huge = LeadView(lead_id="u-" + "x" * 300, traits={"name": "N" * 5000, "company": "C" * 5000, "title": "T" * 5000},
                    score=1e12, tier="red_hot", breakdown={"events": {f"E{i}" * 50: {"points": i} for i in range(50)}})
    for notice in ("lead.hot", "lead.unrouted", "escalation"):
        assert block_kit_problems(render_slack(notice, huge, rep="R" * 500, reason="x" * 5000, retry=7)) == []


def test_block_kit_checker_catches_what_slack_refuses() -> None:
    """The checker the Slack tests rely on must itself fail on bad payloads."""
    good = render_slack("lead.hot", LEAD, rep="Bob")
    header_mrkdwn = {**good, "blocks": [{"type": "header", "text": {"type": "mrkdwn", "text": "x"}}]}
    too_long = {**good, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}]}
    no_text = {"blocks": good["blocks"]}
    stray = {**good, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "x"}, "color": "red"}]}
    for bad in (header_mrkdwn, too_long, no_text, stray, {"text": "x", "blocks": []}):
        assert block_kit_problems(bad) != []
