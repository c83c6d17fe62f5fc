"""Event data is a producer's text: what the operator's CLI prints of it never reaches the terminal
as control characters (escape sequences, carriage returns, bidirectional overrides)."""

from __future__ import annotations

from tests.support.operator import cli, feed, ts

RAW = ("\x1b", "\r", "\x07", "\u202e", "\x9b", "\x08")


def _hostile_lead() -> None:
    feed([{"type": "identify", "messageId": "esc-1", "userId": "u-esc", "timestamp": ts(10),
           "traits": {"name": "Jane\x1b]0;owned\x07\x1b[2J", "title": "CTO\r\x08\x08\x08CEO",
                      "company": {"name": "\u202eemca", "industry": "software"}}},
          {"type": "track", "messageId": "esc-2", "userId": "u-esc", "timestamp": ts(5),
           "event": "Pricing\x1b[31m Viewed\x9b", "properties": {"page": "/pricing\r\n\x1b[1A"}}])


def test_explain_prints_control_characters_from_events_as_escapes(env):
    _hostile_lead()
    out = cli(env, "explain", "u-esc").stdout
    assert "Pricing\\x1b[31m Viewed\\x9b" in out
    assert not any(c in out for c in RAW), repr(out)
    assert "\\x1b" in out
    as_json = cli(env, "explain", "u-esc", "--json").stdout            # JSON escapes them by itself
    assert not any(c in as_json for c in RAW) and "\\u001b" in as_json


def test_other_views_and_errors_too(env):
    _hostile_lead()
    for args in (("status",), ("report", "--since", "1d")):
        out = cli(env, *args).stdout
        assert not any(c in out for c in RAW), (args, repr(out))
    missing = cli(env, "explain", "u-\x1b[2J\rgone", ok=False)
    assert missing.returncode == 1 and "\\x1b[2J\\rgone" in missing.stderr
    assert not any(c in missing.stderr for c in RAW)
