"""The log masker: phone numbers, emails, secrets and claim links masked; durations, addresses and
times left readable (an operator needs them, and they identify nobody)."""

from __future__ import annotations

import logging

import pytest

from worker.adapters.logs import AccessLogFilter, MaskingFilter, mask


@pytest.mark.parametrize("text", [
    "batch of 500 in 0.004572s", "took 12.345678 ms", "connected to 127.0.0.1:6379", "peer 10.20.30.40",
    "at 2026-12-05 07:47:42", "at 2026-12-05T07:47:42.123456Z", "tick 07:47:42.123456",
])
def test_durations_addresses_and_times_are_left_alone(text):
    assert mask(text) == text


@pytest.mark.parametrize("text,hidden", [
    ("sms to +1 415 555 0100 failed", "415 555"), ("sms to +14155550100", "4155550"),
    ("call 415.555.0100", "555.0"), ("to jane.doe@acme.com", "jane.doe"),
    ("GET /claim/eyJib2IiXQ.c2lnbmF0dXJlLXgteQ HTTP/1.1", "eyJib2IiXQ"),
    ("https://leads.example.com/claim/eyJib2IiXQ.c2lnbmF0dXJl?x=1", "c2lnbmF0dXJl"),
    ("redis://:hunter2@redis:6379/0", "hunter2"), ("postgresql://lr:pw-9a8b@db/lr", "pw-9a8b"),
    ("auth_token=abcdef123456", "abcdef123456"),
])
def test_personal_data_and_credentials_are_masked(text, hidden):
    assert hidden not in mask(text)


def _record(msg: str, args: tuple) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, msg, args, None)


def test_the_access_log_keeps_its_five_fields_with_the_path_masked():
    from uvicorn.logging import AccessFormatter

    record = _record('%s - "%s %s HTTP/%s" %d', ("127.0.0.1:5000", "GET", "/claim/eyJib2IiXQ.c2ln", "1.1", 200))
    assert AccessLogFilter().filter(record)
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False).format(record)
    assert line == '127.0.0.1:5000 - "GET /claim/[redacted] HTTP/1.1" 200 OK'


def test_other_records_are_masked_whole():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "sent to %s via %s", ("+14155550100", "/claim/abc.def"),
                               None)
    assert MaskingFilter().filter(record)
    assert record.getMessage() == "sent to +14***00 via /claim/[redacted]"
