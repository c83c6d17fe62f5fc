"""The process's voice channel, built from the settings and read against the current rules at each call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from routing.config import Rules
from worker.adapters.settings import Settings


def caller_ids(rules: Rules, settings: Settings) -> list[str]:
    """The caller-id pool: ``voice.caller_ids``, else the one SMS sender number."""
    return list(rules.voice.caller_ids) or ([settings.twilio_from_number] if settings.twilio_from_number else [])


def voice_channel(settings: Settings, r: Callable[[], redis.Redis], rules: Callable[[], Rules]) -> Any:
    """The process's voice channel; the console when Twilio is not configured. Caller ids, ring time and
    answering-machine detection are read from the rules at each call, so a changed file counts at once."""
    from worker.adapters.channels import ConsoleChannel
    from worker.adapters.channels.twilio_voice import TwilioVoiceChannel
    from worker.adapters.ratelimit import TokenBucket

    if not (settings.twilio_account_sid and settings.twilio_auth_token):
        return ConsoleChannel()
    account = settings.twilio_account_sid
    buckets: dict[float, TokenBucket] = {}

    def bucket() -> TokenBucket:   # at the rules' current rate: a changed calls_per_second counts at once
        rate = rules().voice.calls_per_second
        if rate not in buckets:
            buckets[rate] = TokenBucket(r(), f"call:{account}", rate)
        return buckets[rate]

    return TwilioVoiceChannel(
        settings.twilio_account_sid, settings.twilio_auth_token, public_url=settings.public_url,
        caller_ids=lambda: caller_ids(rules(), settings),
        ring_timeout=lambda: int(rules().voice.ring_timeout.total_seconds()),
        machine_detection=lambda: rules().voice.machine_detection,
        bucket=bucket, api_base_url=settings.twilio_api_base_url, timeout=10)
