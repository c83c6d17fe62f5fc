"""The SMS sender pool's settings and the segments Twilio counts a message as."""

from __future__ import annotations

import pytest
import redis
from pydantic import ValidationError

from routing.messages import sms_segments
from worker.adapters.settings import Settings
from worker.adapters.sms_pool import sms_pool


@pytest.mark.parametrize(("text", "segments"), [
    ("", 1), ("a" * 160, 1), ("a" * 161, 2), ("a" * 306, 2), ("a" * 307, 3),
    ("{" * 80, 1), ("{" * 81, 2),                      # extension characters take two septets
    ("ж" * 70, 1), ("ж" * 71, 2), ("ж" * 134, 2), ("ж" * 135, 3), ("é" * 160, 1),   # one non-GSM-7 character: UCS-2
    ("a" * 69 + "😀", 2),                               # outside the BMP: two UTF-16 units
])
def test_segments_are_counted_as_twilio_counts_them(text: str, segments: int) -> None:
    assert sms_segments(text) == segments


def _settings(**env: str) -> Settings:
    return Settings(_env_file=None, **{"LEADROUTER_SECRET_KEY": "x" * 40, **env})   # type: ignore[call-arg]


def test_the_pool_is_e164_numbers_and_falls_back_to_the_one_sender() -> None:
    s = _settings(TWILIO_FROM_NUMBERS=" +14155550100, +14155550101,+14155550100 ")
    assert s.sms_senders() == ["+14155550100", "+14155550101"]
    assert _settings(TWILIO_FROM_NUMBER="+14155550199").sms_senders() == ["+14155550199"]
    assert _settings().sms_senders() == []


@pytest.mark.parametrize("bad", ["4155550100", "+1415555010a", "+0123456789", "+14155550100;+1", "+1 415 555 0100"])
def test_a_pool_number_that_is_not_e164_is_refused_and_named(bad: str) -> None:
    with pytest.raises(ValidationError, match="TWILIO_FROM_NUMBERS"):
        _settings(TWILIO_FROM_NUMBERS=f"+14155550100,{bad}")


def test_no_pool_with_a_messaging_service_or_a_single_number() -> None:
    r = redis.Redis()   # connects on its first command: there is none
    assert sms_pool(_settings(TWILIO_FROM_NUMBERS="+14155550100,+14155550101",
                              TWILIO_MESSAGING_SERVICE_SID="MG" + "0" * 32), r) is None
    assert sms_pool(_settings(TWILIO_FROM_NUMBERS="+14155550100"), r) is None


def test_the_rate_must_be_positive() -> None:
    with pytest.raises(ValidationError):
        _settings(TWILIO_SMS_SEGMENTS_PER_SECOND="0")
