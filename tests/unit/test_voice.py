"""Voice alerts, the pure part: the spoken summary, keypresses, E.164, quiet hours in the lead's zone,
what counts as an unanswered call and as first contact; and the rules file's voice settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from routing.config import RulesError, parse_rules
from routing.messages import LeadView
from routing.voice import (
    Keypress,
    bridge,
    e164,
    in_quiet_hours,
    is_contact,
    keypress,
    lead_zone,
    spoken_summary,
    unanswered,
)

T0 = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)   # a Monday, 10:00 in New York


def _lead(traits: dict, score: float = 92, tier: str = "hot", events: dict | None = None) -> LeadView:
    breakdown = {"events": events if events is not None else {
        "Demo Requested": {"points": 40, "occurrences": 1}, "Pricing Viewed": {"points": 15, "occurrences": 3},
        "Docs Read": {"points": 5, "occurrences": 2}, "Blog Read": {"points": 1, "occurrences": 1}}}
    return LeadView(lead_id="u1", traits=traits, score=score, tier=tier, breakdown=breakdown)


def test_summary_reads_name_title_company_score_and_the_top_three_signals() -> None:
    text = spoken_summary("first", _lead({"name": "Jane Doe", "title": "VP Sales", "company": "Acme"}))
    assert text.startswith("New hot lead for you. Jane Doe, VP Sales, at Acme. Score 92, hot.")
    assert text.endswith("Top signals: Demo Requested, Pricing Viewed, Docs Read.")
    assert "Blog Read" not in text


@pytest.mark.parametrize("kind,head", [("retry", "Reminder 2: a hot lead is still unclaimed."),
                                       ("escalation", "Escalation: Alice has not claimed a hot lead."),
                                       ("priority", "Red hot priority lead.")])
def test_summary_headline_follows_the_alert_kind(kind: str, head: str) -> None:
    assert spoken_summary(kind, _lead({"name": "J"}), retry=2, owner="Alice").startswith(head)


def test_summary_cleans_trait_values_as_sms_does() -> None:
    hostile = {"name": "Eve\u202e <visit evil.com/x>\x00", "title": "CEO https://phish.example/login",
               "company": "Acme\u200b.com"}
    text = spoken_summary("first", _lead(hostile, events={"Go to evil.com now": {"points": 9, "occurrences": 1}}))
    for bad in ("evil.com", "phish", "https", "\u202e", "\x00", "\u200b", "Acme.com"):
        assert bad not in text
    assert text.isascii()


def test_summary_without_a_name_or_signals() -> None:
    text = spoken_summary("first", _lead({}, events={}))
    assert "a lead with no name." in text and "Top signals" not in text


@pytest.mark.parametrize("digits,want", [("1", Keypress.CLAIM), ("2", Keypress.PASS), ("3", Keypress.REPEAT),
                                         (" 1 ", Keypress.CLAIM), ("", Keypress.UNKNOWN), (None, Keypress.UNKNOWN),
                                         ("11", Keypress.UNKNOWN), ("#", Keypress.UNKNOWN), ("4", Keypress.UNKNOWN)])
def test_keypress(digits: str | None, want: Keypress) -> None:
    assert keypress(digits) == want


@pytest.mark.parametrize("raw,want", [("+14155550101", "+14155550101"), ("+1 (415) 555-0101", "+14155550101"),
                                      ("+44 20 7946 0958", "+442079460958"), ("4155550101", None),
                                      ("+0123456789", None), ("+1415555010x", None), ("+1234", None),
                                      ("+14155550101 ext 2", None), (14155550101, None), (None, None),
                                      ("+1" + "5" * 15, None)])
def test_e164(raw: object, want: str | None) -> None:
    assert e164(raw) == want


def test_lead_zone_from_traits_or_the_default() -> None:
    assert lead_zone({"timezone": "Europe/Paris"}, "UTC") == "Europe/Paris"
    assert lead_zone({"context": {"timezone": "Asia/Tokyo"}}, "UTC") == "Asia/Tokyo"
    assert lead_zone({"timezone": "Mars/Base"}, "America/Chicago") == "America/Chicago"
    assert lead_zone({}, "UTC") == "UTC"


def test_quiet_hours_are_judged_on_the_leads_clock() -> None:
    quiet = "Mon-Sun 21:00-08:00"
    assert not in_quiet_hours(None, "UTC", T0)
    assert not in_quiet_hours(quiet, "America/New_York", T0)     # 10:00 there
    assert in_quiet_hours(quiet, "Asia/Tokyo", T0)               # 00:00 there
    assert in_quiet_hours(quiet, "Asia/Tokyo", T0 - timedelta(hours=2))       # 22:00 there
    assert not in_quiet_hours(quiet, "Asia/Tokyo", T0 - timedelta(hours=6))   # 18:00 there
    assert not in_quiet_hours(quiet, "Asia/Tokyo", T0 - timedelta(hours=7))   # 08:00 there: quiet is over


def test_bridge_dials_the_leads_e164_number_unless_quiet_or_missing() -> None:
    traits = {"phone": "+1 415 555 0199", "timezone": "America/New_York"}
    assert bridge(traits, quiet_hours=None, default_zone="UTC", now=T0).number == "+14155550199"
    night = bridge({**traits, "timezone": "Asia/Tokyo"}, quiet_hours="Mon-Sun 21:00-08:00", default_zone="UTC",
                   now=T0)
    assert night.number is None and "00:00" in night.say and "quiet hours" in night.say
    missing = bridge({"phone": "call me"}, quiet_hours=None, default_zone="UTC", now=T0)
    assert missing.number is None and "no phone" in missing.say


@pytest.mark.parametrize("status,answered_by,want", [
    ("completed", "machine_end_beep", "voicemail"), ("in-progress", "machine_start", "voicemail"),
    ("completed", "fax", "fax"), ("no-answer", None, "no-answer"), ("busy", None, "busy"),
    ("failed", None, "failed"), ("canceled", None, "canceled"), ("completed", "human", None),
    ("completed", "unknown", None), ("completed", None, None), ("ringing", None, None)])
def test_unanswered(status: str, answered_by: str | None, want: str | None) -> None:
    assert unanswered(status, answered_by) == want


@pytest.mark.parametrize("duration,want", [("30", True), ("20", True), ("19", False), ("0", False), ("", False),
                                           ("-40", False), ("abc", False), (None, False), ("9" * 30, False)])
def test_is_contact(duration: object, want: bool) -> None:
    assert is_contact(duration, timedelta(seconds=20)) is want


# ---------------------------------------------------------------- the rules file

RULES = """
reps:
  - id: alice
    phone: "+14155550101"
    channels: [voice, sms, email]
alerts:
  channels:
    first: [voice, sms]
    retry: [sms]
    escalation: [voice]
voice:
  caller_ids: ["+14155550100", "+14155550109"]
  contact_after: 30s
routing:
  quiet_hours: Mon-Sun 21:00-08:00
  quiet_hours_timezone: America/New_York
"""


def test_voice_rules_parse() -> None:
    rules = parse_rules(RULES)
    assert rules.reps[0].channels == ["voice", "sms", "email"]
    assert rules.alerts.channels.allows("first", "voice") and not rules.alerts.channels.allows("retry", "voice")
    assert rules.alerts.channels.allows("fyi", "voice")   # a kind left out: the rep's channels as they are
    assert rules.voice.caller_ids == ["+14155550100", "+14155550109"]
    assert rules.voice.contact_after == timedelta(seconds=30)
    assert parse_rules("").voice.contact_after == timedelta(seconds=20)
    assert rules.routing.quiet_hours == "Mon-Sun 21:00-08:00"


@pytest.mark.parametrize("bad,where,words", [
    ("reps:\n  - id: a\n    channels: [voice]\n", "reps.0", "voice channel needs the rep's phone"),
    ("alerts:\n  channels:\n    first: [voice, pigeon]\n", "alerts.channels.first.1", "'voice'"),
    ("alerts:\n  channels:\n    later: [sms]\n", "alerts.channels.later", "Extra inputs"),
    ("voice:\n  caller_ids: ['4155550100']\n", "voice.caller_ids", "E.164"),
    ("voice:\n  caller_ids: ['+14155550100', '+14155550100']\n", "voice.caller_ids", "twice"),
    ("voice:\n  contact_after: soon\n", "voice.contact_after", "not a duration"),
    ("voice:\n  ring_timeout: 2s\n", "voice.ring_timeout", "between 5s and 600s"),
    ("routing:\n  quiet_hours: Mon 25:00-26:00\n", "routing.quiet_hours", "impossible time"),
    ("routing:\n  quiet_hours_timezone: Mars/Base\n", "routing.quiet_hours_timezone", "unknown time zone"),
])
def test_bad_voice_rules_name_the_key_and_line(bad: str, where: str, words: str) -> None:
    with pytest.raises(RulesError) as err:
        parse_rules(bad)
    found = [e for e in err.value.errors if e.path == where]
    assert found and words in found[0].message and found[0].line is not None, err.value.errors
