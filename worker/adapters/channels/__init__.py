"""Delivery channels: one adapter per provider behind one small contract.

``send`` raises :class:`TransportError` with a ``kind`` the caller acts on;
:func:`worker.adapters.retry.send_with_retry` retries only what provably was not sent.
"""

from worker.adapters.channels import sendgrid_email, twilio_sms
from worker.adapters.channels.base import (
    Channel,
    ErrorKind,
    NotSupported,
    OutboundMessage,
    Report,
    SendResult,
    Sent,
    TransportError,
    mask_email,
    mask_phone,
    mask_recipient,
    mask_text,
)
from worker.adapters.channels.console import ConsoleChannel
from worker.adapters.channels.sendgrid_email import SendGridEmailChannel
from worker.adapters.channels.twilio_sms import TwilioSmsChannel


def read_status(channel: str, status: str, error_code: str | None = None) -> Report:
    """A provider's word on a message of ``channel``, read by that channel's own rules."""
    if channel == "sms":
        return twilio_sms.read_status(status, error_code)
    if channel == "email":
        return sendgrid_email.read_status(status, error_code)
    if channel == "voice":
        from worker.adapters.channels.twilio_voice import read_call_status

        return read_call_status(status)
    return Report("delivered" if status == "delivered" else None)   # the console: printing is delivering

__all__ = [
    "Channel",
    "ConsoleChannel",
    "ErrorKind",
    "NotSupported",
    "OutboundMessage",
    "Report",
    "SendGridEmailChannel",
    "SendResult",
    "Sent",
    "TransportError",
    "TwilioSmsChannel",
    "mask_email",
    "mask_phone",
    "mask_recipient",
    "mask_text",
    "read_status",
]
