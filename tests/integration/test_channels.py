"""Contract tests: the real Twilio and SendGrid SDKs, through our adapters,
against a local server that checks each request with the providers' own
OpenAPI documents and answers (or fails) the way the providers do."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes.providers import FakeProviderServer, spec_response_problems, start_provider_server
from worker.adapters.channels import (
    Channel,
    ConsoleChannel,
    OutboundMessage,
    SendGridEmailChannel,
    TransportError,
    TwilioSmsChannel,
    mask_email,
    mask_phone,
)
from worker.adapters.channels.base import parse_retry_after
from worker.adapters.retry import send_with_retry

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
SERVICE_SID = "MG" + "fedcba9876543210" * 2
AUTH_TOKEN = "twilio-token"
CALLBACK = "https://leadrouter.example.com/webhooks/twilio/status"

SMS = OutboundMessage(
    delivery_id="101", channel="sms", to="+14155550101", subject=None, text="Hot lead: Jane Doe", validity_seconds=90
)
EMAIL = OutboundMessage(
    delivery_id="102",
    channel="email",
    to="alice@example.com",
    subject="Hot lead: Jane Doe",
    text="Jane Doe is hot.",
    html="<p>Jane Doe is <b>hot</b>.</p>",
)


@pytest.fixture
def server() -> Iterator[FakeProviderServer]:
    with start_provider_server() as fake:
        yield fake


def sms_channel(url: str, **overrides: Any) -> TwilioSmsChannel:
    settings: dict[str, Any] = {
        "account_sid": ACCOUNT_SID,
        "auth_token": AUTH_TOKEN,
        "from_number": "+14155550100",
        "status_callback_url": CALLBACK,
        "api_base_url": url,
        "timeout": 2,
    }
    return TwilioSmsChannel(**(settings | overrides))


def email_channel(url: str, **overrides: Any) -> SendGridEmailChannel:
    settings: dict[str, Any] = {"api_key": "SG.test-key", "from_email": "alerts@example.com", "api_base_url": url}
    return SendGridEmailChannel(**(settings | {"timeout": 2} | overrides))


def channel_for(provider: str, url: str, **overrides: Any) -> tuple[Channel, OutboundMessage]:
    if provider == "twilio":
        return sms_channel(url, **overrides), SMS
    return email_channel(url, **overrides), EMAIL


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens here any more: connections are refused


# ---------------------------------------------------------------- valid sends


def test_sms_passes_the_spec_and_carries_sender_validity_and_callback(server: FakeProviderServer) -> None:
    result = sms_channel(server.url).send(SMS)

    assert server.violations == []
    [sent] = server.sms()
    assert sent["To"] == "+14155550101"
    assert sent["From"] == "+14155550100"
    assert "MessagingServiceSid" not in sent
    assert sent["Body"] == "Hot lead: Jane Doe"
    assert sent["ValidityPeriod"] == "90"
    assert sent["StatusCallback"] == CALLBACK + "?delivery_id=101"
    assert result.provider_id == sent["Sid"]
    assert result.status == "sent"
    [request] = server.requests
    assert request["path"] == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"


def test_sms_through_a_messaging_service_clamps_validity_and_keeps_callback_query(
    server: FakeProviderServer,
) -> None:
    channel = sms_channel(
        server.url, from_number=None, messaging_service_sid=SERVICE_SID, status_callback_url=CALLBACK + "?env=test"
    )

    channel.send(SMS)
    channel.send(OutboundMessage("103", "sms", "+14155550101", None, "late", validity_seconds=100_000))
    channel.send(OutboundMessage("104", "sms", "+14155550101", None, "now", validity_seconds=0))

    assert server.violations == []
    first, too_long, too_short = server.sms()
    assert first["MessagingServiceSid"] == SERVICE_SID
    assert "From" not in first
    assert first["StatusCallback"] == CALLBACK + "?env=test&delivery_id=101"
    assert too_long["ValidityPeriod"] == "36000"
    assert too_short["ValidityPeriod"] == "1"


def test_email_passes_the_spec_with_text_html_and_delivery_id(server: FakeProviderServer) -> None:
    result = email_channel(server.url).send(EMAIL)

    assert server.violations == []
    [mail] = server.emails()
    assert mail["from"] == {"email": "alerts@example.com"}
    assert mail["subject"] == "Hot lead: Jane Doe"
    [personalization] = mail["personalizations"]
    assert personalization["to"] == [{"email": "alice@example.com"}]
    assert personalization["custom_args"] == {"delivery_id": "102"}
    assert mail["content"] == [
        {"type": "text/plain", "value": "Jane Doe is hot."},
        {"type": "text/html", "value": "<p>Jane Doe is <b>hot</b>.</p>"},
    ]
    [request] = server.requests
    assert request["headers"]["Authorization"] == "Bearer SG.test-key"
    assert result.provider_id == request["response_headers"]["X-Message-Id"]


def test_the_fakes_answers_match_the_providers_specs(server: FakeProviderServer) -> None:
    sid = sms_channel(server.url).send(SMS).provider_id
    assert sid is not None
    sms_channel(server.url).fetch_status(sid)
    email_channel(server.url).send(EMAIL)

    assert [r["status"] for r in server.requests] == [201, 200, 202]
    for record in server.requests:
        assert spec_response_problems(record) == []


# ---------------------------------------------------------------- the validator bites


def test_a_request_without_to_is_flagged_and_refused_like_twilio(server: FakeProviderServer) -> None:
    response = httpx.post(
        f"{server.url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
        data={"From": "+14155550100", "Body": "hi"},
        auth=(ACCOUNT_SID, AUTH_TOKEN),
    )

    assert response.status_code == 400
    assert response.json()["code"] == 21604
    violations = server.violations
    assert any("'To' is a required property" in v for v in violations), violations  # openapi-core
    assert any("Twilio 21604" in v for v in violations), violations  # the provider rule
    assert server.sms() == []


def test_the_spec_alone_catches_a_malformed_messaging_service_sid(server: FakeProviderServer) -> None:
    response = httpx.post(
        f"{server.url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
        data={"To": "+14155550101", "MessagingServiceSid": "MG-not-a-sid", "Body": "hi"},
        auth=(ACCOUNT_SID, AUTH_TOKEN),
    )

    assert response.status_code == 400
    assert any("MessagingServiceSid" in v or "MG-not-a-sid" in v for v in server.violations), server.violations


def test_twilio_rules_the_spec_cannot_state_are_checked(server: FakeProviderServer) -> None:
    response = httpx.post(
        f"{server.url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
        data={"To": "+14155550101", "ValidityPeriod": "36001"},
        auth=(ACCOUNT_SID, AUTH_TOKEN),
    )

    assert response.status_code == 400
    codes = {v.split("Twilio ")[1][:5] for v in server.violations if "Twilio " in v}
    assert codes == {"21603", "21602", "21624"}  # no sender, no body, validity out of range


def test_sendgrid_top_level_custom_args_object_breaks_the_spec(server: FakeProviderServer) -> None:
    # Why the adapter puts delivery_id in the personalization: SendGrid's own
    # document types the top-level custom_args as a string.
    mail = {
        "personalizations": [{"to": [{"email": "alice@example.com"}]}],
        "from": {"email": "alerts@example.com"},
        "subject": "s",
        "content": [{"type": "text/plain", "value": "t"}],
        "custom_args": {"delivery_id": "1"},
    }

    response = httpx.post(f"{server.url}/v3/mail/send", json=mail, headers={"Authorization": "Bearer SG.k"})

    assert response.status_code == 400
    assert any("is not of type 'string'" in v for v in server.violations), server.violations


def test_sendgrid_mail_without_from_or_content_is_refused(server: FakeProviderServer) -> None:
    mail = {"personalizations": [{"to": [{"email": "alice@example.com"}]}], "subject": "s"}

    response = httpx.post(f"{server.url}/v3/mail/send", json=mail, headers={"Authorization": "Bearer SG.k"})

    assert response.status_code == 400
    assert response.json()["errors"]
    assert any("'from' is a required property" in v for v in server.violations), server.violations
    assert any("content" in v for v in server.violations), server.violations


def test_background_validation_answers_first_and_still_records_violations() -> None:
    with start_provider_server(validation="background") as fake:
        sms_channel(fake.url).send(SMS)
        httpx.post(
            f"{fake.url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
            data={"To": "+14155550101", "MessagingServiceSid": "MG-not-a-sid", "Body": "hi"},
            auth=(ACCOUNT_SID, AUTH_TOKEN),
        )

        violations = fake.violations  # waits for the background checks

    assert len(violations) == 1 and "MG-not-a-sid" in violations[0], violations


# ---------------------------------------------------------------- retryable: nothing was sent


@pytest.mark.parametrize(("provider", "wait"), [("twilio", "1"), ("sendgrid", "2")])
def test_429_is_retried_after_retry_after(server: FakeProviderServer, provider: str, wait: str) -> None:
    channel, msg = channel_for(provider, server.url)
    server.fail_next(provider, [("status", 429, {"Retry-After": wait})])  # type: ignore[arg-type]
    sleeps: list[float] = []

    result = send_with_retry(channel, msg, sleep=sleeps.append)

    assert sleeps == [float(wait)]
    assert [r["status"] for r in server.requests] == [429, 201 if provider == "twilio" else 202]
    assert result.provider_id == server.requests[1]["provider_id"]
    assert server.violations == []


def test_a_long_retry_after_is_capped(server: FakeProviderServer) -> None:
    server.fail_next("twilio", [("status", 429, {"Retry-After": "600"})])
    sleeps: list[float] = []

    send_with_retry(sms_channel(server.url), SMS, sleep=sleeps.append, max_retry_after=30)

    assert sleeps == [30.0]


@pytest.mark.parametrize("provider", ["twilio", "sendgrid"])
def test_503_is_transient_and_retried_with_backoff(server: FakeProviderServer, provider: str) -> None:
    channel, msg = channel_for(provider, server.url)
    server.fail_next(provider, [("status", 503), ("status", 503)])  # type: ignore[arg-type]
    sleeps: list[float] = []

    send_with_retry(channel, msg, sleep=sleeps.append)

    assert len(server.requests) == 3
    assert 0.1 <= sleeps[0] <= 0.2 and 0.2 <= sleeps[1] <= 0.4, sleeps  # exponential, jittered


@pytest.mark.parametrize("provider", ["twilio", "sendgrid"])
def test_connection_refused_is_transient_and_retried_until_attempts_run_out(provider: str) -> None:
    channel, msg = channel_for(provider, closed_port_url())
    sleeps: list[float] = []

    with pytest.raises(TransportError) as caught:
        send_with_retry(channel, msg, attempts=3, sleep=sleeps.append)

    assert caught.value.kind == "transient"
    assert len(sleeps) == 2


# ---------------------------------------------------------------- maybe sent: never re-sent


@pytest.mark.parametrize("provider", ["twilio", "sendgrid"])
@pytest.mark.parametrize("failure", [("status", 500), ("status", 502), ("drop",)])
def test_5xx_and_dropped_connections_are_maybe_sent_and_not_retried(
    server: FakeProviderServer, provider: str, failure: tuple[Any, ...]
) -> None:
    channel, msg = channel_for(provider, server.url)
    server.fail_next(provider, [failure])  # type: ignore[arg-type]
    sleeps: list[float] = []

    with pytest.raises(TransportError) as caught:
        send_with_retry(channel, msg, sleep=sleeps.append)

    assert caught.value.kind == "maybe_sent"
    assert not caught.value.permanent
    assert len(server.requests) == 1
    assert sleeps == []


@pytest.mark.parametrize("provider", ["twilio", "sendgrid"])
def test_a_timeout_is_maybe_sent_and_not_retried(server: FakeProviderServer, provider: str) -> None:
    channel, msg = channel_for(provider, server.url, timeout=0.5)
    server.fail_next(provider, [("hang", 10)])  # type: ignore[arg-type]
    started = time.monotonic()

    with pytest.raises(TransportError) as caught:
        send_with_retry(channel, msg, sleep=lambda _: None)

    assert caught.value.kind == "maybe_sent"
    assert time.monotonic() - started < 2
    assert len(server.requests) == 1


# ---------------------------------------------------------------- permanent


@pytest.mark.parametrize("code", [21211, 21610, 21614])
def test_twilio_recipient_errors_are_permanent_for_the_recipient(server: FakeProviderServer, code: int) -> None:
    server.fail_next("twilio", [("twilio_error", code)])

    with pytest.raises(TransportError) as caught:
        send_with_retry(sms_channel(server.url), SMS, sleep=lambda _: None)

    assert caught.value.kind == "recipient"
    assert caught.value.permanent
    assert caught.value.code == str(code)
    assert len(server.requests) == 1


@pytest.mark.parametrize("code", [21606, 21212, 21659])
def test_twilio_sender_errors_are_account_errors(server: FakeProviderServer, code: int) -> None:
    server.fail_next("twilio", [("twilio_error", code)])

    with pytest.raises(TransportError) as caught:
        sms_channel(server.url).send(SMS)

    assert caught.value.kind == "account"


def test_wrong_twilio_credentials_are_an_account_error() -> None:
    with start_provider_server(twilio_auth_token="the-right-token") as fake:
        with pytest.raises(TransportError) as caught:
            sms_channel(fake.url, auth_token="a-wrong-token").send(SMS)

        assert caught.value.kind == "account"
        assert (caught.value.status, caught.value.code) == (401, "20003")
        assert any("basic auth" in v for v in fake.violations)


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (("status", 401), "account"),
        (("sendgrid_status", 403, {"errors": [{"field": "from", "message": "not a verified Sender Identity"}]}), "account"),
        (
            ("sendgrid_status", 400, {"errors": [{"field": "personalizations.0.to.0.email", "message": "invalid"}]}),
            "recipient",
        ),
        (("sendgrid_status", 400, {"errors": [{"field": "subject", "message": "too long"}]}), "invalid"),
    ],
)
def test_sendgrid_client_errors_are_sorted(server: FakeProviderServer, failure: tuple[Any, ...], kind: str) -> None:
    server.fail_next("sendgrid", [failure])

    with pytest.raises(TransportError) as caught:
        send_with_retry(email_channel(server.url), EMAIL, sleep=lambda _: None)

    assert caught.value.kind == kind
    assert caught.value.permanent
    assert len(server.requests) == 1


def test_twilio_401_is_an_account_error(server: FakeProviderServer) -> None:
    server.fail_next("twilio", [("status", 401)])

    with pytest.raises(TransportError) as caught:
        sms_channel(server.url).send(SMS)

    assert caught.value.kind == "account"


# ---------------------------------------------------------------- status lookups


def test_fetch_status_returns_what_twilio_holds(server: FakeProviderServer) -> None:
    channel = sms_channel(server.url)
    sid = channel.send(SMS).provider_id
    assert sid is not None

    assert channel.fetch_status(sid) == "queued"
    server.set_status(sid, "delivered")
    assert channel.fetch_status(sid) == "delivered"
    assert channel.fetch_status("SM" + "f" * 32) is None  # unknown to Twilio
    assert server.violations == []


def test_fetch_status_failure_is_classified(server: FakeProviderServer) -> None:
    channel = sms_channel(server.url)
    server.fail_next("twilio", [("status", 503)])

    with pytest.raises(TransportError) as caught:
        channel.fetch_status("SM" + "f" * 32)

    assert caught.value.kind == "transient"


def test_sendgrid_has_no_status_lookup(server: FakeProviderServer) -> None:
    assert email_channel(server.url).fetch_status("some-message-id") is None
    assert server.requests == []


# ---------------------------------------------------------------- the fake's own helpers


def test_wait_for_wakes_on_the_request_instead_of_polling(server: FakeProviderServer) -> None:
    sender = threading.Timer(0.05, lambda: sms_channel(server.url).send(SMS))
    sender.start()

    [sent] = server.wait_for(lambda s: s.sms(), timeout=5)

    assert sent["To"] == SMS.to
    with pytest.raises(TimeoutError):
        server.wait_for(lambda s: len(s.sms()) > 1, timeout=0.05)


# ---------------------------------------------------------------- console and masking


def test_console_prints_a_masked_recipient_and_the_text() -> None:
    out = io.StringIO()
    channel = ConsoleChannel(stream=out)

    result = channel.send(SMS)
    channel.send(EMAIL)

    printed = out.getvalue()
    assert "+1415•••0101" in printed and "+14155550101" not in printed
    assert "a•••@example.com" in printed and "alice@" not in printed
    assert "Hot lead: Jane Doe" in printed
    assert result.provider_id is not None and result.provider_id.startswith("console-")
    assert channel.fetch_status(result.provider_id) == "delivered"


def test_masks() -> None:
    assert mask_phone("+14155550101") == "+1415•••0101"
    assert mask_email("alice@example.com") == "a•••@example.com"
    err = TransportError("recipient", "The 'To' number +14155550101 (alice@example.com) is not valid")
    assert str(err) == "The 'To' number +1415•••0101 (a•••@example.com) is not valid"


def test_retry_after_reads_seconds_dates_and_sendgrids_reset_header() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after({"Retry-After": "3"}, now=now) == 3.0
    assert parse_retry_after({"Retry-After": "Thu, 14 Jan 2027 08:00:05 GMT"}, now=1_799_913_600.0) == 5.0
    assert parse_retry_after({"X-RateLimit-Reset": str(int(now) + 7)}, now=now) == 7.0
    assert parse_retry_after({}, now=now) is None
