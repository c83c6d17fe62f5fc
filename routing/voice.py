"""Voice alerts, the pure part: what the call says, what a keypress does, whether the lead may be rung.

A voice alert calls the rep, reads the lead (cleaned exactly as an SMS cleans trait values: a
producer's text read aloud is still a producer's text), then offers 1 to claim and be bridged to
the lead, 2 to pass, 3 to hear it again. Nothing here does I/O or reads the clock: the worker
passes ``now`` and the rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from routing.hours import is_working, parse_hours
from routing.messages import LeadView, _company, _name, _pts, _signals, _sms_value, _tier
from routing.scoring import get_trait

MENU = "Press 1 to claim this lead and be connected now. Press 2 to pass. Press 3 to hear it again."
NO_INPUT = "No key was pressed. Goodbye."
TOP_SIGNALS = 3

_HEADLINES = {
    "first": "New hot lead for you.",
    "priority": "Red hot priority lead.",
    "retry": "Reminder {retry}: a hot lead is still unclaimed.",
    "escalation": "Escalation: {owner} has not claimed a hot lead.",
    "reassign": "A hot lead was reassigned to you.",
    "fyi": "For your information: your lead is hot again.",
    "unrouted": "Unrouted hot lead: nobody could take it.",
}


def spoken_summary(kind: str, lead: LeadView, *, retry: int = 0, owner: Any = None) -> str:
    """The lead as the call reads it: headline, name, title, company, score and top signals."""
    t = lead.traits
    name = _sms_value(_name(t), 40) or "a lead with no name"
    title = _sms_value(get_trait(t, "title"), 40)
    company = _sms_value(_company(t), 40)
    who = name + (f", {title}" if title else "") + (f", at {company}" if company else "")
    head = _HEADLINES.get(kind, _HEADLINES["first"]).format(retry=retry, owner=_sms_value(owner, 30) or "the rep")
    parts = [head, f"{who}.", f"Score {_pts(lead.score)}, {_sms_value(_tier(lead), 12)}."]
    signals = [_sms_value(s.name, 30) for s in _signals(lead.breakdown)[:TOP_SIGNALS]]
    signals = [s for s in signals if s]
    if signals:
        parts.append("Top signals: " + ", ".join(signals) + ".")
    return " ".join(parts)


class Keypress(StrEnum):
    CLAIM = "claim"
    PASS = "pass"
    REPEAT = "repeat"
    UNKNOWN = "unknown"


_KEYS = {"1": Keypress.CLAIM, "2": Keypress.PASS, "3": Keypress.REPEAT}


def keypress(digits: str | None) -> Keypress:
    """What the rep's key means; anything but exactly 1, 2 or 3 is no choice at all."""
    return _KEYS.get((digits or "").strip(), Keypress.UNKNOWN)


_FORMATTING = re.compile(r"[\s().\-]")
_E164 = re.compile(r"\+[1-9][0-9]{7,14}")


def e164(phone: Any) -> str | None:
    """The number as E.164 (``+14155550101``), or None: spaces, dots, dashes and brackets are
    dropped; anything else (no country code, letters, an extension) is refused, never guessed."""
    if not isinstance(phone, str) or len(phone) > 40:
        return None
    number = _FORMATTING.sub("", phone.strip())
    return number if _E164.fullmatch(number) else None


def lead_zone(traits: Mapping[str, Any], default: str) -> str:
    """The lead's IANA zone from its ``timezone`` trait (or the browser's ``context.timezone``), else ``default``."""
    for path in ("timezone", "context.timezone"):
        value = get_trait(traits, path)
        if isinstance(value, str) and 0 < len(value) <= 64:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                continue
            return value
    return default


def in_quiet_hours(quiet_hours: str | None, zone: str, now: datetime) -> bool:
    """Whether ``now`` falls in the quiet hours on the lead's own clock (never, when none are set)."""
    if not quiet_hours:
        return False
    return is_working(parse_hours(quiet_hours), zone, (), now)


@dataclass(frozen=True)
class Bridge:
    """What pressing 1 leads to once the claim is won: dial ``number``, or tell the rep ``say``."""

    number: str | None
    say: str


def bridge(traits: Mapping[str, Any], *, quiet_hours: str | None, default_zone: str, now: datetime) -> Bridge:
    phone = e164(get_trait(traits, "phone"))
    if phone is None:
        return Bridge(None, "The lead has no phone number we can dial. The lead is yours; reach them by email.")
    zone = lead_zone(traits, default_zone)
    if in_quiet_hours(quiet_hours, zone, now):
        local = now.astimezone(ZoneInfo(zone)).strftime("%H:%M")
        return Bridge(None, f"It is {local} for the lead, inside quiet hours, so we will not ring them now. "
                            "The lead is yours; call them later.")
    return Bridge(phone, "Connecting you to the lead now.")


# Twilio's AnsweredBy when answering-machine detection is on; "unknown" is given the benefit of the doubt
# (a person who says nothing at first is still a person).
MACHINE = frozenset({"machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax"})
UNANSWERED = frozenset({"no-answer", "busy", "failed", "canceled"})


def unanswered(call_status: str, answered_by: str | None) -> str | None:
    """Why a call to the rep counts as a failed attempt, or None when a person took it (or it is still on)."""
    if answered_by in MACHINE:
        return "voicemail" if answered_by != "fax" else "fax"
    if call_status in UNANSWERED:
        return call_status
    return None


def is_contact(duration_seconds: Any, contact_after: timedelta) -> bool:
    """Whether a bridged leg's duration (Twilio's ``CallDuration``, whole seconds) counts as first contact."""
    try:
        seconds = int(str(duration_seconds))
    except ValueError:
        return False
    return 0 <= seconds < 10**7 and seconds >= contact_after.total_seconds()
