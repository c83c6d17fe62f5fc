"""The process's SMS sender pool: one Redis token bucket per sender number, shared by every process."""

from __future__ import annotations

import redis

from worker.adapters.ratelimit import SenderPool
from worker.adapters.settings import Settings


def sms_pool(settings: Settings, r: redis.Redis) -> SenderPool | None:
    """The pool of ``TWILIO_FROM_NUMBERS`` at ``TWILIO_SMS_SEGMENTS_PER_SECOND`` each; None with a Messaging
    Service (Twilio picks the sender and paces it) or with no more than one number (nothing to pick)."""
    senders = settings.sms_senders()
    if settings.twilio_messaging_service_sid or len(senders) < 2:
        return None
    rate = settings.sms_segments_per_second
    return SenderPool(r, "sms", lambda: senders, lambda: rate)
