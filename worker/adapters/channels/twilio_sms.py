"""SMS through Twilio's Messages API, with the official SDK."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.rest import Client

from routing.messages import sms_segments
from worker.adapters.channels.base import (
    OutboundMessage,
    Report,
    SendResult,
    Sent,
    TransportError,
)
from worker.adapters.channels.twilio_http import FIND_LIMIT, ErrorCodes, RoutedHttpClient, classify
from worker.adapters.ratelimit import SenderPool

log = logging.getLogger(__name__)

# Twilio's documented limits for ValidityPeriod, in seconds.
MIN_VALIDITY = 1
MAX_VALIDITY = 36_000

# Errors that condemn the recipient's number, not the request or the account: the channel is switched off
# for that rep. Answered to a send: invalid number, opted out (STOP), not a mobile. Reported later by a
# status callback: unreachable, unknown destination, landline.
RECIPIENT_CODES = frozenset({21211, 21610, 21614})
DELIVERY_RECIPIENT_CODES = frozenset({30003, 30005, 30006})


def is_recipient_error(code: int | str | None) -> bool:
    """Whether a Twilio error code, from an answer or a status callback, is the recipient's."""
    try:
        n = int(code) if code is not None else None
    except ValueError:
        return False
    return n in RECIPIENT_CODES or n in DELIVERY_RECIPIENT_CODES
# Message statuses (status callbacks, lookups): https://www.twilio.com/docs/messaging/api/message-resource
DELIVERED_STATUSES = frozenset({"delivered", "read"})
FAILED_STATUSES = frozenset({"failed", "undelivered"})
TAKEN_STATUSES = frozenset({"sent", "queued", "sending", "accepted"})


def read_status(status: str, error_code: str | None = None) -> Report:
    """What a Twilio message status (and its ErrorCode) means for the delivery."""
    if status in DELIVERED_STATUSES:
        return Report("delivered")
    if status in FAILED_STATUSES:
        return Report("failed", recipient_error=is_recipient_error(error_code))
    if status in TAKEN_STATUSES:
        return Report("sent")
    return Report(None)


# Our sender is wrong: every rep would fail the same way, so alert operators.
ACCOUNT_CODES = frozenset({20003, 21212, 21606, 21659})  # auth, invalid From, From not SMS-capable / not ours
ERROR_CODES = ErrorCodes(RECIPIENT_CODES, ACCOUNT_CODES)


class TwilioSmsChannel:
    name = "sms"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
        status_callback_url: str | None = None,
        api_base_url: str | None = None,
        timeout: float = 10,
        *,
        from_numbers: Sequence[str] = (),
        pool: SenderPool | None = None,
    ) -> None:
        # The senders: the pool (from_numbers) if there is one, else the one from_number.
        senders = list(dict.fromkeys([*from_numbers] or ([from_number] if from_number else [])))
        if not senders and not messaging_service_sid:
            raise ValueError("TwilioSmsChannel needs from_number, from_numbers or messaging_service_sid")
        self._senders = senders
        self._from_number = senders[0] if senders else None
        self._pool = pool if len(senders) > 1 or pool is not None else None
        self._messaging_service_sid = messaging_service_sid
        self._status_callback_url = status_callback_url
        self._http = RoutedHttpClient(api_base_url, timeout)
        self._client = Client(account_sid, auth_token, http_client=self._http)
        # The SDK imports its resources on first use; pay that here, not on the first alert.
        self._client.messages  # noqa: B018

    def send(self, msg: OutboundMessage) -> SendResult:
        params: dict[str, Any] = {"to": msg.to, "body": msg.text}
        # With a Messaging Service Twilio picks the sender from its pool; a
        # From as well would pin one sender, which is not what we configure.
        if self._messaging_service_sid:
            params["messaging_service_sid"] = self._messaging_service_sid
        else:
            params["from_"] = self._sender(msg)
        if self._status_callback_url:
            params["status_callback"] = _with_query(self._status_callback_url, delivery_id=msg.delivery_id)
        if msg.validity_seconds is not None:
            params["validity_period"] = max(MIN_VALIDITY, min(MAX_VALIDITY, msg.validity_seconds))
        try:
            message = self._client.messages.create(**params)
        except (TwilioException, requests.RequestException) as exc:
            raise self._classify(exc) from exc
        return SendResult(provider_id=message.sid, status="sent")

    def _sender(self, msg: OutboundMessage) -> str | None:
        """The pool's sender whose bucket gives the earliest slot for the message's segments (Twilio queues
        what a long code cannot send yet, so it is never held here: how long it will wait is logged)."""
        if self._pool is None:
            return self._from_number
        sender, queued = self._pool.pick(sms_segments(msg.text))
        if queued > 0:
            log.warning("delivery %s: sender %s's rate holds this SMS about %.1f s at Twilio", msg.delivery_id,
                        sender, queued)
        return sender

    def fetch_status(self, provider_id: str) -> str | None:
        try:
            message = self._client.messages(provider_id).fetch()
        except (TwilioRestException, TwilioServiceException) as exc:
            if exc.status == 404:
                return None  # not a message of ours, or long gone
            raise self._classify(exc) from exc
        except (TwilioException, requests.RequestException) as exc:
            raise self._classify(exc) from exc
        return str(message.status) if message.status is not None else None

    def sent_between(self, to: str, since: datetime, until: datetime) -> list[Sent]:
        """Twilio's newest messages to ``to`` (from any of our senders) created in the window. With a pool
        every sender is searched at once (the list by ``to`` alone, kept to the pool's numbers): a message is
        found whichever number it went out from."""
        kwargs: dict[str, Any] = {"to": to, "limit": FIND_LIMIT, "page_size": FIND_LIMIT}
        ours = None if self._messaging_service_sid else set(self._senders)
        if ours is not None and len(self._senders) == 1:
            kwargs["from_"] = self._senders[0]
        try:
            messages = self._client.messages.list(**kwargs)
        except (TwilioException, requests.RequestException) as exc:
            raise self._classify(exc) from exc
        return [Sent(provider_id=str(m.sid), status=str(m.status or "sent"), text=m.body or "")
                for m in messages if m.sid and m.date_created is not None and since <= m.date_created <= until
                and m.direction in (None, "outbound-api") and (ours is None or m.from_ in ours)]

    def _classify(self, exc: TwilioException | requests.RequestException) -> TransportError:
        return classify(exc, self._http, ERROR_CODES)


def _with_query(url: str, **extra: str) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *extra.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))
