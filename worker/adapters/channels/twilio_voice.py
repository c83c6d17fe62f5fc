"""Voice alerts through Twilio's Calls API, with the official SDK.

A call goes to the rep's phone from a caller id of the pool; when it is answered Twilio fetches
our TwiML URL (``/webhooks/twilio/voice``, signed), which reads the lead and gathers a keypress.
Answering-machine detection is on, so a voicemail is told apart from the rep; the call's status
callbacks (signed too) settle the delivery. Every URL carries the delivery id, and Twilio signs
the whole URL, so what comes back names its delivery and cannot be forged.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.rest import Client

from routing.voice import e164
from worker.adapters.channels.base import (
    OutboundMessage,
    Report,
    SendResult,
    Sent,
    TransportError,
)
from worker.adapters.channels.twilio_http import FIND_LIMIT, ErrorCodes, RoutedHttpClient, classify
from worker.adapters.ratelimit import TokenBucket

log = logging.getLogger(__name__)

STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]
VOICE_PATH = "/webhooks/twilio/voice"

# Twilio's answers that condemn the number dialled, not the request: invalid or unreachable.
RECIPIENT_CODES = frozenset({13223, 13224, 21211, 21217, 21214})
# Our side: credentials, a caller id that is not ours, no permission to call that country.
ACCOUNT_CODES = frozenset({20003, 21210, 21212, 21215, 21216, 13214})
ERROR_CODES = ErrorCodes(RECIPIENT_CODES, ACCOUNT_CODES)


def read_call_status(status: str) -> Report:
    """What a call's status, as a lookup finds it, means for its delivery (no AnsweredBy there: a call
    answered by a machine reads as delivered; its status callback, when it comes, says otherwise)."""
    if status in ("in-progress", "completed"):
        return Report("delivered")
    if status in ("busy", "no-answer", "failed", "canceled"):
        return Report("failed")
    if status in ("queued", "initiated", "ringing"):
        return Report("sent")
    return Report(None)


def voice_url(public_url: str, step: str, delivery_id: str) -> str:
    """One of our voice webhooks for one delivery (``step``: "" for the TwiML, "status", "gather", …)."""
    path = VOICE_PATH + (f"/{step}" if step else "")
    return f"{public_url.rstrip('/')}{path}?{urlencode({'delivery_id': delivery_id})}"


class TwilioVoiceChannel:
    name = "voice"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        public_url: str,
        caller_ids: Callable[[], Sequence[str]],
        ring_timeout: Callable[[], int] = lambda: 25,
        machine_detection: Callable[[], bool] = lambda: True,
        bucket: TokenBucket | Callable[[], TokenBucket] | None = None,
        api_base_url: str | None = None,
        timeout: float = 10,
    ) -> None:
        self._public_url = public_url
        self._caller_ids, self._ring_timeout, self._amd = caller_ids, ring_timeout, machine_detection
        self._bucket = bucket
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._http = RoutedHttpClient(api_base_url, timeout)
        self._client = Client(account_sid, auth_token, http_client=self._http)
        self._client.calls  # noqa: B018  (the SDK imports its resources on first use: pay it here)

    def caller_id(self) -> str:
        """The next caller id of the pool, in turn: a burst of calls shows the reps several numbers."""
        ids = list(self._caller_ids())
        if not ids:
            raise TransportError("account", "no caller id configured (voice.caller_ids or TWILIO_FROM_NUMBER)")
        with self._lock:
            return ids[next(self._turn) % len(ids)]

    def send(self, msg: OutboundMessage) -> SendResult:
        to = e164(msg.to)
        if to is None:
            raise TransportError("recipient", "the rep's phone is not an E.164 number")
        if self._bucket is not None:
            # Twilio queues calls placed faster than the account's calls-per-second and dials them in turn:
            # the shared bucket mirrors that queue, so how late this call will ring is known and logged.
            bucket = self._bucket if isinstance(self._bucket, TokenBucket) else self._bucket()
            queued = bucket.reserve()
            if queued > 0:
                log.warning("delivery %s: the account's call rate holds this call about %.1f s at Twilio",
                            msg.delivery_id, queued)
        params: dict[str, Any] = {
            "to": to, "from_": self.caller_id(), "method": "POST",
            "url": voice_url(self._public_url, "", msg.delivery_id),
            "status_callback": voice_url(self._public_url, "status", msg.delivery_id),
            "status_callback_event": STATUS_EVENTS, "status_callback_method": "POST",
            "timeout": self._ring_timeout(),
        }
        if self._amd():
            params["machine_detection"] = "Enable"
        try:
            call = self._client.calls.create(**params)
        except (TwilioException, requests.RequestException) as exc:
            raise self._classify(exc) from exc
        return SendResult(provider_id=call.sid, status="sent")

    def fetch_status(self, provider_id: str) -> str | None:
        try:
            call = self._client.calls(provider_id).fetch()
        except (TwilioRestException, TwilioServiceException) as exc:
            if exc.status == 404:
                return None
            raise self._classify(exc) from exc
        except (TwilioException, requests.RequestException) as exc:
            raise self._classify(exc) from exc
        return str(call.status) if call.status is not None else None

    def sent_between(self, to: str, since: datetime, until: datetime) -> list[Sent]:
        """The calls Twilio took to ``to`` from our caller ids, created in the window, newest first (Calls
        list by ``To``; a call carries no text, so the caller tells them apart by time and by the sids it
        already knows)."""
        number = e164(to)
        if number is None:
            return []
        ours = set(self._caller_ids())
        try:
            calls = self._client.calls.list(to=number, limit=FIND_LIMIT, page_size=FIND_LIMIT)
        except (TwilioException, requests.RequestException) as exc:
            raise self._classify(exc) from exc
        return [Sent(provider_id=str(c.sid), status=str(c.status or "queued"), text="") for c in calls
                if c.sid and c.date_created is not None and since <= c.date_created <= until
                and c._from in ours and c.direction in (None, "outbound-api")]

    def _classify(self, exc: TwilioException | requests.RequestException) -> TransportError:
        return classify(exc, self._http, ERROR_CODES)
