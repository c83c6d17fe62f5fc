"""The one contract every delivery channel implements, and what callers share.

A channel sends one :class:`OutboundMessage` and either returns a
:class:`SendResult` or raises a :class:`TransportError` whose ``kind`` says what
the caller may do next. Neither Twilio nor SendGrid takes an idempotency key, so
the kinds are about *whether the message may already be out*:

- ``transient``: provably not sent (connection refused, 429, 503): retry.
- ``maybe_sent``: a timeout, a dropped connection or another 5xx; the provider
  may have accepted it. Never re-send in the same step; settle it by the status
  callback or :meth:`Channel.fetch_status`.
- ``recipient``: permanent for this rep on this channel (invalid number, opted
  out): disable the channel for the rep.
- ``account``: our credentials or sender are wrong: alert operators, disable
  nothing (every rep would look broken otherwise).
- ``invalid``: any other 4xx; a bug on our side, do not retry.
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

log = logging.getLogger(__name__)

ErrorKind = Literal["transient", "maybe_sent", "recipient", "account", "invalid"]
PERMANENT_KINDS: frozenset[str] = frozenset({"recipient", "account", "invalid"})


@dataclass(frozen=True)
class OutboundMessage:
    delivery_id: str  # our delivery row id; travels to the provider and back in callbacks
    channel: str  # "sms" | "email" | "console"
    to: str  # E.164 phone number or email address
    subject: str | None  # email only
    text: str  # the SMS body, or the email's plain-text part
    html: str | None = None  # email only
    validity_seconds: int | None = None  # SMS only: drop it if still queued after this


@dataclass(frozen=True)
class SendResult:
    provider_id: str | None  # Twilio MessageSid, SendGrid X-Message-Id, console-<uuid>
    status: str  # "sent": the provider accepted it, nothing more is known yet


class TransportError(Exception):
    """A send that did not go through, sorted so the caller knows what to do."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        # Provider messages quote the recipient ("The 'To' number +1415... is not
        # valid"); these errors end up in logs and rows, so mask them once here.
        self.message = mask_text(message)
        super().__init__(self.message)
        self.kind: ErrorKind = kind
        self.code = code
        self.status = status
        self.retry_after = retry_after

    @property
    def permanent(self) -> bool:
        return self.kind in PERMANENT_KINDS

    def __repr__(self) -> str:
        return (
            f"TransportError(kind={self.kind!r}, code={self.code!r}, status={self.status!r}, "
            f"retry_after={self.retry_after!r}, message={self.message!r})"
        )


class Channel(Protocol):
    name: str

    def send(self, msg: OutboundMessage) -> SendResult:
        """Hand the message to the provider once; raise :class:`TransportError`."""
        ...

    def fetch_status(self, provider_id: str) -> str | None:
        """The provider's current status of a sent message, None if unknown or unsupported."""
        ...

    def sent_between(self, to: str, since: datetime, until: datetime) -> list[Sent]:
        """The messages to ``to`` the provider took between ``since`` and ``until``: how a "maybe sent"
        request whose answer was lost is settled. Raise :class:`NotSupported` where the provider
        cannot be asked."""
        ...


class NotSupported(Exception):
    """The provider offers no way to ask this."""


@dataclass(frozen=True)
class Report:
    """What a provider's word on a message (a status callback, an event, a lookup) means for its delivery.

    Each channel module reads its own provider's words (``twilio_sms.read_status``,
    ``sendgrid_email.read_status``); the delivery lifecycle acts on the report."""

    outcome: Literal["delivered", "failed", "sent"] | None   # None: a word that changes nothing
    recipient_error: bool = False   # the failure condemns the rep's address: the channel is switched off


@dataclass(frozen=True)
class Sent:
    """A message as the provider has it."""

    provider_id: str
    status: str
    text: str


def parse_retry_after(headers: Mapping[str, str] | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date).

    SendGrid documents ``X-RateLimit-Reset`` (epoch seconds) instead, so that is
    the fallback. ``headers`` must look up names case-insensitively, as both
    ``requests`` and ``http.client`` headers do.
    """
    if headers is None:
        return None
    current = time.time() if now is None else now
    value = headers.get("Retry-After")
    if value:
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - current)
    reset = headers.get("X-RateLimit-Reset")
    if reset and reset.strip().isdigit():
        return max(0.0, float(reset) - current)
    return None


# ---------------------------------------------------------------- masking

_MASK = "•••"
_PHONE_IN_TEXT = re.compile(r"\+\d{7,15}")
_EMAIL_IN_TEXT = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def mask_phone(phone: str) -> str:
    """``+14155550101`` -> ``+1415•••0101``: enough to tell reps apart in a log."""
    if len(phone) >= 11:
        return phone[:5] + _MASK + phone[-4:]
    if len(phone) >= 6:
        return phone[:2] + _MASK + phone[-2:]
    return _MASK


def mask_email(address: str) -> str:
    """``alice@example.com`` -> ``a•••@example.com``; the domain says which company."""
    local, at, domain = address.rpartition("@")
    if not at:
        return mask_phone(address) if address.startswith("+") else _MASK
    return (local[:1] + _MASK if local else _MASK) + "@" + domain


def mask_recipient(to: str) -> str:
    return mask_email(to) if "@" in to else mask_phone(to)


def mask_text(text: str) -> str:
    """Mask every phone number and email address inside free text."""
    text = _EMAIL_IN_TEXT.sub(lambda m: mask_email(m.group()), text)
    return _PHONE_IN_TEXT.sub(lambda m: mask_phone(m.group()), text)


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps, to find the socket error inside.

    urllib3 and urllib keep it in ``reason`` or ``args``, Python in
    ``__cause__``/``__context__``.
    """
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        stack.extend(e for e in linked if isinstance(e, BaseException))
