"""Email through SendGrid's v3 Mail Send API, with the official SDK."""

from __future__ import annotations

import http.client
import json
import logging
import re
import socket
from datetime import datetime
from typing import Any

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import CustomArg, Mail

from worker.adapters.channels.base import (
    ErrorKind,
    NotSupported,
    OutboundMessage,
    Report,
    SendResult,
    Sent,
    TransportError,
    exception_chain,
    parse_retry_after,
)

DEFAULT_API_BASE_URL = "https://api.sendgrid.com"

# A 400 naming one of the recipient addresses is about the rep's address, not
# about our request: field names look like "personalizations.0.to.0.email".
_RECIPIENT_FIELD = re.compile(r"^personalizations\.\d+\.(to|cc|bcc)\.\d+\.email$")
_SENDER_FIELD = re.compile(r"^from(\.|$)")


# Event webhook words: https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event
# A bounce or a drop is about the address (invalid, unsubscribed, bounced before); "blocked" is a
# bounce of the receiving server's policy, not of the address.
ADDRESS_FAILURES = frozenset({"bounce", "dropped"})
FAILED_EVENTS = ADDRESS_FAILURES | {"blocked"}
TAKEN_EVENTS = frozenset({"processed", "deferred", "sent"})


def read_status(event: str, error_code: str | None = None) -> Report:
    """What a SendGrid event means for the delivery."""
    if event in ("delivered", "read"):
        return Report("delivered")
    if event in FAILED_EVENTS:
        return Report("failed", recipient_error=event in ADDRESS_FAILURES)
    if event in TAKEN_EVENTS:
        return Report("sent")
    return Report(None)


class SendGridEmailChannel:
    name = "email"

    def __init__(
        self,
        api_key: str,
        from_email: str,
        api_base_url: str | None = None,
        timeout: float = 10,
    ) -> None:
        self._from_email = from_email
        self._timeout = timeout
        self._client = SendGridAPIClient(api_key, host=(api_base_url or DEFAULT_API_BASE_URL).rstrip("/"))
        # python_http_client logs the Authorization header and the whole payload
        # at DEBUG; logs must never carry the API key or addresses (SPEC §8).
        logging.getLogger("python_http_client.client").setLevel(logging.INFO)

    def send(self, msg: OutboundMessage) -> SendResult:
        mail = Mail(
            from_email=self._from_email,
            to_emails=msg.to,
            subject=msg.subject,
            plain_text_content=msg.text,
            html_content=msg.html,
        )
        # Per personalization, not top-level: SendGrid's own OpenAPI document
        # types the top-level custom_args as a string, the personalization's as
        # an object, and the event webhook echoes either back.
        mail.custom_arg = CustomArg("delivery_id", msg.delivery_id, p=0)
        try:
            response = self._client.client.mail.send.post(request_body=mail.get(), timeout=self._timeout)
        except HTTPError as exc:
            raise _classify_http(exc) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise _classify_network(exc) from exc
        headers = response.headers
        return SendResult(provider_id=headers.get("X-Message-Id") if headers else None, status="sent")

    def fetch_status(self, provider_id: str) -> str | None:
        # SendGrid has no per-message status lookup (the Email Activity API is
        # a paid add-on and eventually consistent); the event webhook settles it.
        return None

    def sent_between(self, to: str, since: datetime, until: datetime) -> list[Sent]:
        raise NotSupported("SendGrid has no message lookup; its event webhook settles an email")


def _classify_http(exc: HTTPError) -> TransportError:
    status = int(exc.status_code)
    errors = _errors(exc.body)
    fields = [str(e.get("field") or "") for e in errors]
    text = "; ".join(str(e.get("message", "")) for e in errors) or str(exc.reason)
    kind: ErrorKind
    if status in (401, 403):
        kind = "account"  # bad key, missing scope, or unverified sender identity
    elif status in (429, 503):
        kind = "transient"
    elif status >= 500:
        kind = "maybe_sent"
    elif status == 400 and any(_RECIPIENT_FIELD.match(f) for f in fields):
        kind = "recipient"
    elif status == 400 and any(_SENDER_FIELD.match(f) for f in fields):
        kind = "account"
    else:
        kind = "invalid"
    return TransportError(
        kind,
        f"SendGrid {status}: {text}",
        code=fields[0] if fields and fields[0] else None,
        status=status,
        retry_after=parse_retry_after(exc.headers) if status == 429 else None,
    )


def _classify_network(exc: OSError | http.client.HTTPException) -> TransportError:
    # urllib wraps errors raised while connecting in URLError; a refusal or a
    # failed name lookup proves nothing was sent. A timeout or a connection
    # closed after the request went out may have reached SendGrid.
    if any(isinstance(e, (ConnectionRefusedError, socket.gaierror)) for e in exception_chain(exc)):
        return TransportError("transient", f"SendGrid unreachable: {exc}")
    return TransportError("maybe_sent", f"SendGrid request failed: {type(exc).__name__}: {exc}")


def _errors(body: bytes | str | None) -> list[dict[str, Any]]:
    try:
        parsed = json.loads(body or b"")
    except ValueError:
        return []
    errors = parsed.get("errors") if isinstance(parsed, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
