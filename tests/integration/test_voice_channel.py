"""Contract tests of the voice channel: the real Twilio SDK places calls, through our adapter, against the
local stand-in, which checks every Calls request (and its own answers) with Twilio's OpenAPI document."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis

from tests.fakes.providers import FakeProviderServer, spec_problems, spec_response_problems, start_provider_server
from tests.support.stack import RedisServer
from worker.adapters.channels import OutboundMessage, TransportError
from worker.adapters.channels.twilio_voice import TwilioVoiceChannel, voice_url
from worker.adapters.ratelimit import TokenBucket

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-token"
PUBLIC = "https://leads.example.test"
CALLERS = ["+14155550100", "+14155550109"]


def call(delivery_id: str = "7", to: str = "+14155550101") -> OutboundMessage:
    return OutboundMessage(delivery_id=delivery_id, channel="voice", to=to, subject=None, text="")


@pytest.fixture
def server() -> Iterator[FakeProviderServer]:
    with start_provider_server(twilio_auth_token=AUTH_TOKEN) as fake:
        yield fake


def channel(server: FakeProviderServer, **kw: Any) -> TwilioVoiceChannel:
    return TwilioVoiceChannel(ACCOUNT_SID, kw.pop("token", AUTH_TOKEN), public_url=PUBLIC,
                              caller_ids=kw.pop("caller_ids", lambda: CALLERS), api_base_url=server.url, timeout=2,
                              **kw)


def test_a_call_request_is_what_twilios_spec_and_rules_accept(server: FakeProviderServer) -> None:
    result = channel(server, ring_timeout=lambda: 25).send(call("41"))
    assert result.provider_id and result.provider_id.startswith("CA")
    (record,) = server.requests
    assert record["path"] == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json" and record["status"] == 201
    assert spec_problems(record) == [] and spec_response_problems(record) == [] and server.violations == []
    form = parse_qs(record["body"].decode())
    assert form["To"] == ["+14155550101"] and form["From"] == [CALLERS[0]]
    assert form["Url"] == [f"{PUBLIC}/webhooks/twilio/voice?delivery_id=41"] and form["Method"] == ["POST"]
    assert form["StatusCallback"] == [f"{PUBLIC}/webhooks/twilio/voice/status?delivery_id=41"]
    assert form["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]   # one key each
    assert form["MachineDetection"] == ["Enable"] and form["Timeout"] == ["25"]
    assert server.calls()[0]["Sid"] == result.provider_id
    assert server.sms() == []   # a call is no message


def test_caller_ids_take_turns_and_amd_can_be_off(server: FakeProviderServer) -> None:
    ch = channel(server, machine_detection=lambda: False)
    for i in range(3):
        ch.send(call(str(i)))
    assert [c["From"] for c in server.calls()] == [CALLERS[0], CALLERS[1], CALLERS[0]]
    assert all("MachineDetection" not in c for c in server.calls()) and server.violations == []


def test_voice_url_keeps_the_delivery_id_in_the_signed_query() -> None:
    url = voice_url("https://x.test/", "gather", "12")
    assert urlsplit(url).path == "/webhooks/twilio/voice/gather" and parse_qs(urlsplit(url).query) == {"delivery_id": ["12"]}


@pytest.mark.parametrize("to", ["4155550101", "+1 415 555 0101 x2", "alice@example.com", ""])
def test_a_number_that_is_not_e164_is_never_dialled(server: FakeProviderServer, to: str) -> None:
    with pytest.raises(TransportError) as err:
        channel(server).send(call(to=to))
    assert err.value.kind == "recipient" and server.requests == []


@pytest.mark.parametrize("script,kind", [
    (("twilio_error", 21217), "recipient"), (("twilio_error", 13224), "recipient"),
    (("twilio_error", 21210), "account"), (("twilio_error", 21215), "account"), (("status", 401), "account"),
    (("status", 429, {"Retry-After": "2"}), "transient"), (("status", 503), "transient"),
    (("status", 500), "maybe_sent"), (("drop",), "maybe_sent"), (("twilio_error", 20001), "invalid"),
])
def test_errors_are_sorted_into_what_the_caller_may_do(server: FakeProviderServer, script: tuple, kind: str) -> None:
    server.fail_next("twilio", [script])
    with pytest.raises(TransportError) as err:
        channel(server).send(call())
    assert err.value.kind == kind
    if script[0] == "status" and script[1] == 429:
        assert err.value.retry_after == 2


def test_wrong_credentials_are_an_account_error(server: FakeProviderServer) -> None:
    with pytest.raises(TransportError) as err:
        channel(server, token="wrong").send(call())
    assert err.value.kind == "account"


def test_no_caller_id_is_an_account_error(server: FakeProviderServer) -> None:
    with pytest.raises(TransportError) as err:
        channel(server, caller_ids=lambda: []).send(call())
    assert err.value.kind == "account" and server.requests == []


def test_status_is_fetched_and_a_lost_answer_is_found_in_the_calls_list(server: FakeProviderServer) -> None:
    from datetime import UTC, datetime, timedelta

    ch = channel(server)
    sid = ch.send(call()).provider_id
    assert sid is not None and ch.fetch_status(sid) == "queued"
    fetched = server.requests[-1]
    assert spec_problems(fetched) == [] and spec_response_problems(fetched) == []
    assert ch.fetch_status("CA" + "f" * 32) is None
    ch.send(call("8", to="+14155550199"))                     # another rep's: not in the list for ours
    now = datetime.now(UTC)
    found = ch.sent_between("+14155550101", now - timedelta(minutes=1), now + timedelta(minutes=1))
    assert [(s.provider_id, s.status) for s in found] == [(sid, "queued")]
    listed = server.requests[-1]
    assert listed["method"] == "GET" and "To=%2B14155550101" in listed["query"]
    assert spec_problems(listed) == [] and spec_response_problems(listed) == []
    assert ch.sent_between("+14155550101", now + timedelta(minutes=2), now + timedelta(minutes=3)) == []
    other = channel(server, caller_ids=lambda: ["+14155550177"])   # a call from a number not ours is not ours
    assert other.sent_between("+14155550101", now - timedelta(minutes=1), now + timedelta(minutes=1)) == []


def test_calls_beyond_the_accounts_rate_go_out_at_once_and_their_queue_is_known(
        server: FakeProviderServer, redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    bucket = TokenBucket(client, f"call:{uuid.uuid4()}", rate=1, burst=1)
    ch = channel(server, bucket=bucket)
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="worker.adapters.channels.twilio_voice"):
        for i in range(3):
            ch.send(call(str(i)))
    took = time.monotonic() - started
    assert took < 1.0 and len(server.calls()) == 3   # never held back here, never refused
    # each call's wait counts from when it is placed: 1 s and 2 s after the first, less the time sending took
    held = [r.getMessage() for r in caplog.records if "holds this call" in r.getMessage()]
    waits = [float(m.split("about ")[1].split(" s")[0]) for m in held]
    assert len(waits) == 2 and 1.0 - took - 0.05 <= waits[0] <= 1.05 and 2.0 - took - 0.05 <= waits[1] <= 2.05, \
        (held, took)
    # the stand-in queues them as Twilio does, at the account's 1 call a second: the same figures
    queued = [int(c["queue_time"]) for c in server.voice_calls.values()]
    late = took * 1000 + 50
    assert queued[0] < 100 and 1000 - late <= queued[1] <= 1100 and 2000 - late <= queued[2] <= 2100, (queued, took)
    for record in server.requests:
        assert spec_response_problems(record) == []
