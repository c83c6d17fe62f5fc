"""Delivery channels: one adapter per provider behind one small contract.

``send`` raises :class:`TransportError` with a ``kind`` the caller acts on;
:func:`worker.retry.send_with_retry` retries only what provably was not sent.
"""

from worker.channels.base import (
    Channel,
    ErrorKind,
    NotSupported,
    OutboundMessage,
    SendResult,
    Sent,
    TransportError,
    mask_email,
    mask_phone,
    mask_recipient,
    mask_text,
)
from worker.channels.console import ConsoleChannel
from worker.channels.sendgrid_email import SendGridEmailChannel
from worker.channels.twilio_sms import TwilioSmsChannel

__all__ = [
    "Channel",
    "ConsoleChannel",
    "ErrorKind",
    "NotSupported",
    "OutboundMessage",
    "SendGridEmailChannel",
    "SendResult",
    "Sent",
    "TransportError",
    "TwilioSmsChannel",
    "mask_email",
    "mask_phone",
    "mask_recipient",
    "mask_text",
]
