"""The text of every alert, pure: an SMS, an email subject, and the email hand-off package.

Trait values come from whoever can send events, so every one of them is
cleaned before it is shown: URLs and control characters removed, whitespace
collapsed, long values shortened. The SMS is GSM-7 only (one UCS-2 character
doubles the cost of a message) and fits two concatenated segments; when it
would not, signals give way first, then company, title and name, never the
reply instruction, the claim link or the lead's code.
"""

from __future__ import annotations

import hashlib
import html
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from routing.kinds import CLAIMABLE, MessageKind
from routing.scoring import get_trait

REPLY = "Reply 1 to claim, 2 to pass"
SMS_MAX = 306                                   # septets in two concatenated segments (2 x 153)
KINDS = frozenset(MessageKind)
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"   # no 0/O, 1/I/L: read aloud and typed on a phone

# ---------------------------------------------------------------- GSM-7

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")    # sent as escape + character: two septets each

# What to_gsm7 keeps as it is. Accented letters fold to the bare letter even where GSM
# has them (é yes, á no; Ç yes, ç no): a name spelled plainly reads better than one
# spelled half-folded. Form feed and carriage return are controls, not text.
_KEEP = (GSM7_BASIC | GSM7_EXTENSION) - frozenset("èéùìòÇØøÅåÆæßÉÄÖÑÜäöñüà\f\r")
_FOLD = {
    "Æ": "AE", "æ": "ae", "Œ": "OE", "œ": "oe", "ß": "ss", "Ø": "O", "ø": "o", "Đ": "D", "đ": "d",
    "Ł": "L", "ł": "l", "Þ": "Th", "þ": "th", "Ð": "D", "ð": "d", "ı": "i", "ĸ": "k",
    "‘": "'", "’": "'", "‚": "'", "‛": "'", "′": "'", "`": "'", "´": "'",
    "“": '"', "”": '"', "„": '"', "‟": '"', "″": '"', "«": '"', "»": '"',
    "‐": "-", "‑": "-", "‒": "-", "–": "-", "—": "-", "―": "-", "−": "-",
    "…": "...", "•": "*", "·": "-", "⁄": "/", "×": "x", "÷": "/", "±": "+/-",
    "≤": "<=", "≥": ">=", "≠": "!=", "→": "->", "←": "<-", "©": "(c)", "®": "(R)", "¢": "c",
    "\t": " ", "\r": "\n",
}


def is_gsm7(text: str) -> bool:
    """Whether every character is in the GSM 03.38 basic set or its extension table."""
    return all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text)


def sms_length(text: str) -> int:
    """Septets the text takes: extension-table characters count two. ``ValueError`` if not GSM-7."""
    n = 0
    for c in text:
        if c in GSM7_EXTENSION:
            n += 2
        elif c in GSM7_BASIC:
            n += 1
        else:
            raise ValueError(f"not a GSM-7 character: {c!r}")
    return n


def sms_segments(text: str) -> int:
    """The segments Twilio bills and paces the text as: GSM-7 fits 160 septets in one, 153 a segment when
    concatenated; any other character makes it UCS-2, 70 UTF-16 units in one, 67 when concatenated."""
    try:
        n, single, part = sms_length(text), 160, 153
    except ValueError:
        n, single, part = len(text.encode("utf-16-le")) // 2, 70, 67
    return 1 if n <= single else -(-n // part)


def to_gsm7(text: str) -> str:
    """Transliterate to GSM-7: accents dropped (é -> e), typographic marks made plain, the rest dropped."""
    out: list[str] = []
    for c in text.replace("\r\n", "\n"):
        if c in _KEEP:
            out.append(c)
        elif c in _FOLD:
            out.append(_FOLD[c])
        elif c.isspace():
            out.append(" ")
        else:
            # compatibility decomposition: é -> e + accent, Ａ -> A, ² -> 2; whatever is left is dropped
            for d in unicodedata.normalize("NFKD", c):
                if d in _KEEP:
                    out.append(d)
                elif d in _FOLD:
                    out.append(_FOLD[d])
    return "".join(out)


def short_code(lead_id: str) -> str:
    """Three characters naming the lead in replies (``1 K7Q``); the same for the same lead, always."""
    n = int.from_bytes(hashlib.sha256(lead_id.encode("utf-8")).digest()[:8], "big")
    base = len(CODE_ALPHABET)
    return "".join(CODE_ALPHABET[(n // base**i) % base] for i in range(3))


# ---------------------------------------------------------------- cleaning trait values

_URL = re.compile(
    r"[\w+.-]*:?//\S*"                                   # any scheme://, and protocol-relative //host
    r"|(?:javascript|data|vbscript|mailto|tel|sms|file):\S*"
    r"|www\.\S*"
    r"|\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?(?:[/?#]\S*)?"     # bare IPv4
    # bare domains (evil.com, evil.com/x, sub.evil.co.uk:8080?q): loose on purpose, a false
    # positive costs a word, a miss puts an attacker's link in front of a rep
    r"|[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}(?::\d+)?(?:[/?#]\S*)?",
    re.IGNORECASE,
)
_DOTS = str.maketrans({"\u3002": ".", "\uff61": ".", "\ufe52": "."})   # ideographic full stops


def _strip_controls(text: str) -> str:
    out = []
    for c in text:
        cat = unicodedata.category(c)
        if cat == "Cc" or cat in ("Zl", "Zp"):
            out.append(" ")
        elif cat[0] != "C":
            out.append(c)
        # format (zero-width, bidi overrides), surrogate, private-use and unassigned: removed
        # outright, so "evil<ZWSP>.com" is caught below as the domain it renders as
    return "".join(out)


def _shorten(text: str, limit: int) -> str:
    if limit <= 0:
        return ""
    if len(text) <= limit:
        return text
    if limit <= 3:
        return text[:limit].rstrip()
    return text[: limit - 3].rstrip() + "..."


def clean_trait(value: Any, limit: int = 60) -> str:
    """``str(value)`` made safe to show: URLs and control characters removed, whitespace
    collapsed, and at most ``limit`` characters (shortened with "...").

    Only the first ``4 * limit`` characters are looked at (a value is up to 32 KB of whatever a
    producer sent): cut first, cleaned after, so the cost follows what is shown. A link cut in
    two is still caught (what is left of it is a domain or a scheme), or is no link any more."""
    if value is None:
        return ""
    text = str(value)[: max(4 * limit, 200)]
    text = unicodedata.normalize("NFKC", text).translate(_DOTS)
    text = _strip_controls(text)
    kept = " ".join(_strip_urls(t) for t in text.split())
    return _shorten(" ".join(kept.split()), limit)


_LONG_TOKEN = 200   # no name or title has a word this long; a long one with link characters is dropped


def _strip_urls(token: str) -> str:
    """One whitespace-free token without links. No link spans whitespace, so tokens are cleaned apart,
    which keeps the regex's cost bounded: a huge token that could hold a link is dropped whole."""
    if len(token) > _LONG_TOKEN:
        return "" if any(c in token for c in ".:/") else token
    while True:   # a removal can join two harmless pieces into a new link: repeat until nothing changes
        stripped = _URL.sub(" ", token)
        if stripped == token:
            return " ".join(token.split())
        token = stripped


def _sms_value(value: Any, limit: int) -> str:
    # cleaned again after transliteration: dropping an emoji from "evil😀.com" makes a link
    return clean_trait(to_gsm7(clean_trait(value, 1000)), limit)


def sms_value(value: Any, limit: int = 40) -> str:
    """A trait value as an SMS may carry it: GSM-7 only, no links or control characters, at most
    ``limit`` characters. For replies to a rep, as for alerts."""
    return _sms_value(value, limit)


def sms_reply(text: str) -> str:
    """A whole reply made safe to send: GSM-7 only and at most two segments."""
    text = to_gsm7(text)
    if sms_length(text) <= SMS_MAX:
        return text
    text = text[:SMS_MAX]
    while sms_length(text) > SMS_MAX - 3:   # extension characters count two
        text = text[:-1]
    return text.rstrip() + "..."


# ---------------------------------------------------------------- what the messages say


TRAIT_TEXT_MAX = 1000   # characters of one trait value any message may look at


def _bounded(value: Any, depth: int = 0) -> Any:
    """A copy of trait data with every text cut to ``TRAIT_TEXT_MAX`` and lists to 100 items."""
    if isinstance(value, str):
        return value[:TRAIT_TEXT_MAX]
    if depth > 40:
        return None
    if isinstance(value, Mapping):
        return {str(k)[:TRAIT_TEXT_MAX]: _bounded(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_bounded(v, depth + 1) for v in value[:100]]
    return value


@dataclass(frozen=True)
class LeadView:
    """A lead as the messages show it; the worker builds it from the stored lead. Its traits are cut
    to size once, here, so that rendering (which tries several SMS layouts) never walks 32 KB values."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "traits", _bounded(self.traits))

    lead_id: str
    traits: Mapping[str, Any]
    score: float
    tier: str                                        # cold | warm | hot | red_hot
    breakdown: Mapping[str, Any]                     # Breakdown.to_dict() as stored with the lead
    timeline: Sequence[tuple[datetime, str, float]] = ()   # (event time, event name, points), oldest first
    qualification: Sequence[str] = ()                # red-hot criteria met, already phrased


@dataclass(frozen=True)
class AlertText:
    sms: str
    subject: str
    text: str       # plain-text email
    html: str       # HTML email


@dataclass(frozen=True)
class _Signal:
    name: str
    occurrences: int
    points: float


_TIERS = {"cold": "cold", "warm": "warm", "hot": "hot", "red_hot": "red-hot"}
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}")
_PHONE_CHARS = re.compile(r"[^0-9+()\- ]")


def _number(x: Any) -> float:
    if isinstance(x, bool):
        return 0.0
    try:
        return float(x)
    except (TypeError, ValueError):
        return 0.0


def _pts(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    if abs(x) >= 1e6:
        return f"{x:.3g}"
    r = round(x, 1)
    return str(int(r)) if r == int(r) else f"{r:.1f}"


def _signed(x: float) -> str:
    s = _pts(x)
    return s if s.startswith("-") else "+" + s


def _tier(lead: LeadView) -> str:
    return _TIERS.get(lead.tier, clean_trait(lead.tier, 12))


def _name(traits: Mapping[str, Any]) -> Any:
    name = get_trait(traits, "name")
    if isinstance(name, str) and name.strip():
        return name
    parts = [get_trait(traits, "first_name"), get_trait(traits, "last_name")]
    joined = " ".join(str(p) for p in parts if p is not None and str(p).strip())
    return joined or None


def _company(traits: Mapping[str, Any]) -> Any:
    company = get_trait(traits, "company")
    return company if isinstance(company, str) else get_trait(traits, "company.name")


def _phone(traits: Mapping[str, Any]) -> str | None:
    """The lead's phone as digits and + ( ) -, or None when it does not look like one."""
    raw = clean_trait(get_trait(traits, "phone"), 200)
    kept = " ".join(_PHONE_CHARS.sub(" ", raw).split())
    digits = sum(c.isdigit() for c in kept)
    return kept[:24] if 7 <= digits <= 15 else None


def _email(traits: Mapping[str, Any]) -> str | None:
    """The address itself when it is one, never a URL dressed as one."""
    raw = get_trait(traits, "email")
    if not isinstance(raw, str):
        return None
    raw = raw.strip()
    return raw if len(raw) <= 254 and _EMAIL.fullmatch(raw) else None


def _signals(breakdown: Mapping[str, Any]) -> list[_Signal]:
    """Scoring events with positive points, highest first."""
    events = breakdown.get("events")
    out = []
    for name, entry in (events.items() if isinstance(events, Mapping) else ()):
        if not isinstance(entry, Mapping):
            continue
        pts = _number(entry.get("points"))
        if pts > 0:
            out.append(_Signal(str(name), int(_number(entry.get("occurrences"))), pts))
    out.sort(key=lambda s: (-s.points, s.name))
    return out


def _qualification(lead: LeadView) -> list[str]:
    if lead.qualification:
        return [str(q) for q in lead.qualification]
    stored = lead.breakdown.get("qualification")
    if not isinstance(stored, Mapping) or lead.tier != "red_hot":
        return []
    return [str(text) for text, met in stored.items() if met is True]


# signal keyword -> the action it suggests, in the order a rep should act
_ACTIONS = (
    ("demo", "Call now and book the demo"),
    ("consultation", "Call now to confirm the consultation and prepare discovery questions"),
    ("pricing", "Lead with pricing/ROI"),
    ("roi", "Lead with pricing/ROI"),
    ("trial", "Offer help getting the trial set up"),
    ("comparison", "Be ready to position against the alternatives they compared"),
    ("case study", "Share a customer story from their industry"),
    ("webinar", "Follow up on the webinar they attended"),
    ("security", "Offer the security documentation"),
    ("integration", "Ask which integrations they need"),
    ("rfp", "Ask about the RFP scope and deadline"),
)


def recommended_actions(lead: LeadView, kind: str) -> list[str]:
    """Next steps for the rep, derived from the strongest signals, with generic fallbacks."""
    out: list[str] = []
    if lead.tier == "red_hot" or kind == "priority":
        out.append("Budget and timeline are confirmed: move to a proposal")
    for signal in _signals(lead.breakdown):
        lowered = signal.name.casefold()
        for keyword, action in _ACTIONS:
            if keyword in lowered and action not in out:
                out.append(action)
    if kind == "fyi":
        out.append("Follow up while interest is high")
    else:
        out.append("Call within 5 minutes: the odds of reaching a lead drop fast after that")
    out.append("Open with what they just did, not a generic pitch")
    return out[:5]


def preferred_contact(traits: Mapping[str, Any]) -> str:
    """The ``preferred_contact`` trait if set, else phone if known, else email."""
    phone, email = _phone(traits), _email(traits)
    wanted = clean_trait(get_trait(traits, "preferred_contact"), 40)
    if wanted:
        lowered = wanted.casefold()
        if phone and any(w in lowered for w in ("phone", "call", "sms", "text", "mobile")):
            return f"{wanted} ({phone})"
        if email and "mail" in lowered:
            return f"{wanted} ({email})"
        return wanted
    if phone:
        return f"phone ({phone})"
    if email:
        return f"email ({email})"
    return "unknown: no phone or email on file"


# ---------------------------------------------------------------- SMS


@dataclass(frozen=True)
class _Limits:
    signals: int
    signal_len: int
    long_head: bool     # the headline's full wording, or its short one
    extra: int          # qualification or reasons
    company: int
    title: int
    name: int
    owner: int


# each step shortens more: signals first, then the headline's wording, then company, title and name
_LADDER = (
    _Limits(3, 28, True, 90, 40, 40, 40, 30),
    _Limits(2, 28, True, 90, 40, 40, 40, 30),
    _Limits(1, 28, True, 70, 40, 40, 40, 30),
    _Limits(1, 16, True, 50, 40, 40, 40, 24),
    _Limits(0, 0, True, 50, 40, 40, 40, 20),
    _Limits(0, 0, False, 40, 40, 40, 40, 20),
    _Limits(0, 0, False, 32, 30, 30, 30, 16),
    _Limits(0, 0, False, 24, 24, 24, 26, 12),
    _Limits(0, 0, False, 20, 20, 18, 24, 12),
    _Limits(0, 0, False, 16, 16, 14, 20, 10),
    _Limits(0, 0, False, 12, 12, 10, 18, 8),
    _Limits(0, 0, False, 10, 10, 0, 16, 0),
    _Limits(0, 0, False, 0, 0, 0, 14, 0),
    _Limits(0, 0, False, 0, 0, 0, 8, 0),
)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _sms_headline(kind: str, retry: int, owner: str, long: bool) -> str:
    if kind == "first":
        return "New hot lead for you:" if long else "New hot lead:"
    if kind == "retry":
        return f"Reminder {retry}, hot lead still unclaimed:" if long else f"Reminder {retry}, unclaimed:"
    if kind == "escalation":
        after = f" after {_count(retry, 'reminder')}" if retry > 0 else ""
        if long:
            return f"Escalation: {owner or 'the rep'} has not claimed{after}:"
        return f"Escalation: unclaimed{after}:"
    if kind == "reassign":
        return "Reassigned to you, the previous rep did not claim:" if long else "Reassigned to you:"
    if kind == "fyi":
        return "FYI, your lead is hot again (no claim needed):" if long else "FYI, your lead is hot again:"
    if kind == "priority":
        return "RED-HOT priority lead:" if long else "RED-HOT:"
    return "UNROUTED hot lead, nobody could take it:" if long else "UNROUTED hot lead:"


def _compose_sms(kind: str, lead: LeadView, lim: _Limits, *, retry: int, owner: Any, reasons: Sequence[str],
                 link: str | None, tail: str) -> str:
    t = lead.traits
    name = _sms_value(_name(t), lim.name) or "(no name)"
    title = _sms_value(get_trait(t, "title"), lim.title)
    company = _sms_value(_company(t), lim.company)
    who = name + (f", {title}" if title else "") + (f" at {company}" if company else "")
    lines = [f"{_sms_headline(kind, retry, _sms_value(owner, lim.owner), lim.long_head)} {who}"]
    score = f"Score {_pts(lead.score)} ({_sms_value(_tier(lead), 12)})"
    signals = [f"{_sms_value(s.name, lim.signal_len)} {_signed(s.points)}"
               for s in _signals(lead.breakdown)[: lim.signals]]
    lines.append(score + (f". Top: {', '.join(signals)}" if signals else ""))
    if kind == "priority" and (met := _sms_value(", ".join(_qualification(lead)), lim.extra)):
        lines.append(f"Qualified: {met}")
    if kind == "unrouted" and (why := _sms_value("; ".join(str(r) for r in reasons), lim.extra)):
        lines.append(f"Why: {why}")
    phone = _phone(t)
    lines.append(f"Call {to_gsm7(phone)}" if phone else "No phone on file")
    if link:
        lines.append(link)
    lines.append(tail)
    return "\n".join(lines)


def _sms(kind: str, lead: LeadView, *, claim_url: str | None, retry: int, owner: Any,
         reasons: Sequence[str]) -> str:
    code = short_code(lead.lead_id)
    claimable = kind in CLAIMABLE
    tail = f"{REPLY} (code {code})" if claimable else f"Lead code {code}"
    link = f"Claim: {claim_url}" if claimable and claim_url else None
    if link is not None and not is_gsm7(link):
        raise ValueError("claim_url must be GSM-7 text (a percent-encoded URL is)")
    for lim in _LADDER:
        body = _compose_sms(kind, lead, lim, retry=retry, owner=owner, reasons=reasons, link=link, tail=tail)
        if sms_length(body) <= SMS_MAX:
            return body
    # the link alone does not fit beside the essentials; the reply still claims, the email has the link
    body = _compose_sms(kind, lead, _LADDER[-1], retry=retry, owner=owner, reasons=reasons,
                        link="Claim link: see email" if link else None, tail=tail)
    if sms_length(body) > SMS_MAX:   # every part is bounded by now: this would be a bug here
        raise AssertionError(f"SMS still {sms_length(body)} septets at its shortest")
    return body


# ---------------------------------------------------------------- email


def _email_headline(kind: str, retry: int, owner: str) -> str:
    if kind == "first":
        return "A new hot lead is assigned to you. Claim it and call now."
    if kind == "retry":
        return f"Reminder {retry}: this hot lead assigned to you is still unclaimed."
    if kind == "escalation":
        who = owner or "The assigned rep"
        after = f" after {_count(retry, 'reminder')}" if retry > 0 else ""
        return f"Escalation: {who} has not claimed this hot lead{after}. You can claim it yourself."
    if kind == "reassign":
        return "This hot lead is reassigned to you: the previous rep did not claim it in time."
    if kind == "fyi":
        return "FYI: a lead you own is hot again. No claim needed; follow up while interest is high."
    if kind == "priority":
        return "RED-HOT: this lead is qualified to buy. Call now."
    return "Unrouted: nobody could take this hot lead. Assign it by hand."


def _subject(kind: str, lead: LeadView, retry: int, owner: str) -> str:
    t = lead.traits
    name = clean_trait(_name(t), 40) or "A lead"
    company = clean_trait(_company(t), 40)
    who = f"{name} at {company}" if company else name
    score = _pts(lead.score)
    if kind == "first":
        return f"New hot lead: {who} (score {score})"
    if kind == "retry":
        return f"Reminder {retry}: {who} is still unclaimed"
    if kind == "escalation":
        after = f" after {_count(retry, 'reminder')}" if retry > 0 else ""
        return f"Escalation: {who} not claimed by {owner or 'the assigned rep'}{after}"
    if kind == "reassign":
        return f"Reassigned to you: {who} (score {score})"
    if kind == "fyi":
        return f"FYI: your lead {who} is hot again"
    if kind == "priority":
        met = clean_trait(", ".join(_qualification(lead)), 80)
        return f"RED-HOT: {who}" + (f", {met}" if met else ", qualified to buy")
    return f"Unrouted hot lead: {who}, nobody could take it"


def _when(at: datetime) -> str:
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.strftime("%Y-%m-%d %H:%M UTC")


def _details(lead: LeadView) -> list[tuple[str, str]]:
    """Label and cleaned value of every known fact about the lead, in reading order."""
    t = lead.traits
    rows = [
        ("Name", clean_trait(_name(t))),
        ("Title", clean_trait(get_trait(t, "title"))),
        ("Company", clean_trait(_company(t))),
        ("Industry", clean_trait(get_trait(t, "company.industry"), 40)),
        ("Employees", clean_trait(get_trait(t, "company.employee_count"), 20)),
        ("Role", clean_trait(get_trait(t, "role"), 40)),
        ("Phone", _phone(t) or ""),
        ("Email", _email(t) or ""),
        ("Budget confirmed", clean_trait(get_trait(t, "budget_confirmed"), 20)),
        ("Timeline (days)", clean_trait(get_trait(t, "timeline_days"), 20)),
        ("Score", f"{_pts(lead.score)} ({_tier(lead)})"),
        ("Code", short_code(lead.lead_id)),
    ]
    return [(label, value) for label, value in rows if value]


def contact_details(traits: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Name, title, company, phone and email, cleaned as the email cleans them (links removed):
    what the claim page shows about a lead."""
    rows = [("Name", clean_trait(_name(traits))), ("Title", clean_trait(get_trait(traits, "title"))),
            ("Company", clean_trait(_company(traits))), ("Phone", _phone(traits) or ""),
            ("Email", _email(traits) or "")]
    return [(label, value) for label, value in rows if value]


@dataclass(frozen=True)
class _Package:
    """Everything the hand-off email says, as cleaned plain strings."""

    headline: str
    details: list[tuple[str, str]]
    claim_url: str | None
    code: str
    actions: list[str]
    contact: str
    qualification: list[str]
    behavior: str
    fit: str
    events: list[tuple[str, str]]          # label, points
    fit_rules: list[tuple[str, str]]
    timeline: list[tuple[str, str, str]]   # when, event, points
    reasons: list[str]


def _package(kind: str, lead: LeadView, *, claim_url: str | None, retry: int, owner: str,
             reasons: Sequence[str]) -> _Package:
    b = lead.breakdown
    events = b.get("events")
    event_rows = []
    for name, entry in (events.items() if isinstance(events, Mapping) else ()):
        entry = entry if isinstance(entry, Mapping) else {}
        occurrences, counted = int(_number(entry.get("occurrences"))), int(_number(entry.get("counted")))
        label = clean_trait(name, 60) + (f" (x{occurrences}, {counted} counted)" if occurrences > 1 else "")
        event_rows.append((label, _signed(_number(entry.get("points")))))
    fit = b.get("fit_rules")
    fit_rows = [(clean_trait(name, 60), _signed(_number(p))) for name, p in (fit.items() if isinstance(fit, Mapping)
                                                                            else ())]
    return _Package(
        headline=_email_headline(kind, retry, owner),
        details=_details(lead),
        claim_url=claim_url if kind in CLAIMABLE else None,
        code=short_code(lead.lead_id),
        actions=recommended_actions(lead, kind),
        contact=preferred_contact(lead.traits),
        qualification=[clean_trait(q, 100) for q in _qualification(lead)],
        behavior=_pts(_number(b.get("behavior"))),
        fit=_pts(_number(b.get("fit"))),
        events=event_rows,
        fit_rules=fit_rows,
        timeline=[(_when(at), clean_trait(name, 60), _signed(_number(p))) for at, name, p in lead.timeline],
        reasons=[clean_trait(r, 200) for r in reasons] if kind == "unrouted" else [],
    )


def _text(p: _Package, kind: str, rep_name: str) -> str:
    out = [f"Hi {rep_name},", "", p.headline, ""]
    if p.reasons:
        out += ["Why it could not be routed:"] + [f"- {r}" for r in p.reasons] + [""]
    out += [f"{label}: {value}" for label, value in p.details] + [""]
    if kind in CLAIMABLE:
        if p.claim_url:
            out.append(f"Claim this lead: {p.claim_url}")
        out += [f"Or by SMS: {REPLY} (code {p.code})", ""]
    out += ["Recommended next actions:"] + [f"- {a}" for a in p.actions] + [""]
    out += [f"Preferred contact: {p.contact}", ""]
    out += ["Qualification criteria met:"] + ([f"- {q}" for q in p.qualification] or ["- none yet"]) + [""]
    out += ["Score breakdown:", f"  Behavior: {p.behavior}"] + [f"    {n}: {v}" for n, v in p.events]
    out += [f"  Fit: {p.fit}"] + [f"    {n}: {v}" for n, v in p.fit_rules] + [""]
    out += ["Engagement timeline:"] + ([f"- {w}  {n}  {v}" for w, n, v in p.timeline] or ["- no events"])
    return "\n".join(out) + "\n"


_BUTTON = ("display:inline-block;padding:12px 28px;background:#1a73e8;color:#ffffff;font-weight:bold;"
           "text-decoration:none;border-radius:6px;font-size:16px")
_CELL = "padding:4px 12px 4px 0;vertical-align:top"


def _rows(rows: Sequence[Sequence[str]], bold_first: bool = False) -> str:
    out = []
    for row in rows:
        cells = "".join(
            f'<td style="{_CELL}{";font-weight:bold" if bold_first and i == 0 else ""}">{html.escape(c)}</td>'
            for i, c in enumerate(row))
        out.append(f"<tr>{cells}</tr>")
    return '<table style="border-collapse:collapse">' + "".join(out) + "</table>"


def _items(items: Sequence[str], empty: str) -> str:
    if not items:
        return f"<p>{html.escape(empty)}</p>"
    return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


def _html(p: _Package, kind: str, rep_name: str, subject: str) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        f'<html><head><meta charset="utf-8"><title>{e(subject)}</title></head>',
        '<body style="font-family:Arial,Helvetica,sans-serif;color:#202124;line-height:1.4">',
        f"<p>Hi {e(rep_name)},</p>",
        f"<p><strong>{e(p.headline)}</strong></p>",
    ]
    if p.reasons:
        parts += ["<h3>Why it could not be routed</h3>", _items(p.reasons, "")]
    parts.append(_rows(p.details, bold_first=True))
    if kind in CLAIMABLE:
        if p.claim_url:
            parts.append(f'<p style="margin:20px 0"><a href="{e(p.claim_url)}" style="{_BUTTON}">Claim this lead</a></p>')
        parts.append(f"<p>Or by SMS: {e(REPLY)} (code {e(p.code)})</p>")
    parts += [
        "<h3>Recommended next actions</h3>", _items(p.actions, ""),
        "<h3>Preferred contact</h3>", f"<p>{e(p.contact)}</p>",
        "<h3>Qualification criteria met</h3>", _items(p.qualification, "None yet."),
        "<h3>Score breakdown</h3>",
        f"<p><strong>Behavior: {e(p.behavior)}</strong></p>", _rows(p.events),
        f"<p><strong>Fit: {e(p.fit)}</strong></p>", _rows(p.fit_rules),
        "<h3>Engagement timeline</h3>",
        _rows(p.timeline) if p.timeline else "<p>No events.</p>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- entry points


def render_alert(kind: str, lead: LeadView, *, rep_name: str, claim_url: str | None, retry: int = 0,
                 owner_name: str | None = None, reasons: Sequence[str] = ()) -> AlertText:
    """Every text of one alert. ``kind``: first, retry, escalation, reassign, fyi, priority, unrouted.

    ``retry`` is the reminder number (retry, escalation); ``owner_name`` the rep who has
    not claimed (escalation); ``reasons`` why nobody could take the lead (unrouted).
    The claim link and reply line appear for claimable kinds only; ``claim_url`` is
    ignored for fyi and unrouted.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown alert kind {kind!r} (one of {', '.join(sorted(KINDS))})")
    retry = int(retry)
    sms = _sms(kind, lead, claim_url=claim_url, retry=retry, owner=owner_name, reasons=reasons)
    owner = clean_trait(owner_name, 40)
    subject = _subject(kind, lead, retry, owner)
    package = _package(kind, lead, claim_url=claim_url, retry=retry, owner=owner, reasons=reasons)
    rep = clean_trait(rep_name, 40) or "there"
    return AlertText(sms=sms, subject=subject, text=_text(package, kind, rep),
                     html=_html(package, kind, rep, subject))


def _summary_line(lead: LeadView, name_len: int, company_len: int) -> str:
    name = _sms_value(_name(lead.traits), name_len) or "(no name)"
    company = _sms_value(_company(lead.traits), company_len)
    return f"{short_code(lead.lead_id)} {name}" + (f", {company}" if company else "") + \
        f" {_pts(lead.score)} {_sms_value(_tier(lead), 12)}"


def render_summary(rep_name: str, leads: Sequence[LeadView], window: str) -> AlertText:
    """One message for the alerts an hourly cap held back: each lead with its code."""
    n = len(leads)
    when = clean_trait(window, 40) or "the last hour"
    head = f"{_count(n, 'hot lead alert')} held back by your hourly cap ({when}):"
    tail = "Reply 1 <code> to claim, 2 <code> to pass" if leads else "Nothing to claim."
    sms_head = _sms_value(head, 120)
    lines = [_summary_line(lead, 24, 16) for lead in leads[:30]]   # more than 30 never fit in 306 septets
    for shown in range(len(lines), -1, -1):   # as many leads as fit, the rest counted
        more = [f"+{n - shown} more in email"] if shown < n else []
        sms = "\n".join([sms_head, *lines[:shown], *more, tail])
        if sms_length(sms) <= SMS_MAX:
            break

    rep = clean_trait(rep_name, 40) or "there"
    subject = clean_trait(head.rstrip(":"), 150)
    blocks = []
    for lead in leads:
        details = _details(lead)
        signals = ", ".join(f"{clean_trait(s.name, 40)} {_signed(s.points)}" for s in _signals(lead.breakdown)[:3])
        blocks.append((details, signals, preferred_contact(lead.traits)))
    text = [f"Hi {rep},", "", head, ""]
    for details, signals, contact in blocks:
        text += [f"{label}: {value}" for label, value in details]
        text += [f"Top signals: {signals or 'none'}", f"Preferred contact: {contact}", ""]
    if leads:
        text.append(f"To claim one by SMS: reply 1 and its code (for example 1 {short_code(leads[0].lead_id)}).")
    e = html.escape
    parts = ["<!DOCTYPE html>", f'<html><head><meta charset="utf-8"><title>{e(subject)}</title></head>',
             '<body style="font-family:Arial,Helvetica,sans-serif;color:#202124;line-height:1.4">',
             f"<p>Hi {e(rep)},</p>", f"<p><strong>{e(head)}</strong></p>"]
    for details, signals, contact in blocks:
        parts += [_rows(details + [("Top signals", signals or "none"), ("Preferred contact", contact)],
                        bold_first=True), "<hr>"]
    if leads:
        parts.append(f"<p>To claim one by SMS: reply 1 and its code (for example 1 "
                     f"{e(short_code(leads[0].lead_id))}).</p>")
    parts.append("</body></html>")
    return AlertText(sms=sms, subject=subject, text="\n".join(text) + "\n", html="\n".join(parts) + "\n")


# ---------------------------------------------------------------- Slack


def _slack_escape(text: str) -> str:
    """Slack's mrkdwn control characters; everything else is shown as written."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_slack(notice: str, lead: LeadView, *, rep: str | None = None, manager: str | None = None,
                 retry: int = 0, reason: str = "") -> dict[str, Any]:
    """A Slack incoming-webhook payload in Block Kit for a team-wide notice.

    ``notice`` is ``lead.hot`` (gone hot and to whom), ``lead.unrouted`` (nobody could take it) or
    ``escalation`` (the rep has not claimed it; ``manager`` was alerted). Every trait value is
    cleaned (no links, no control characters) and escaped for mrkdwn; the header is plain text.
    """
    who = clean_trait(_name(lead.traits), 60) or lead.lead_id[:60]
    company = clean_trait(_company(lead.traits), 60)
    subject = f"{who} ({company})" if company else who
    tier = _tier(lead)
    rep_s = clean_trait(rep, 60) if rep else ""
    if notice == "lead.hot":
        header = f"Hot lead: {subject}"
        summary = f"*{_slack_escape(subject)}* went {tier} with a score of {_pts(lead.score)}; " \
                  f"routed to *{_slack_escape(rep_s or 'nobody')}*."
    elif notice == "lead.unrouted":
        header = f"Unrouted hot lead: {subject}"
        why = clean_trait(reason, 200) or "no rep is available"
        summary = f"*{_slack_escape(subject)}* is {tier} (score {_pts(lead.score)}) and has no owner: " \
                  f"{_slack_escape(why)}. Assign it with `leadrouter lead assign`."
    elif notice == "escalation":
        header = f"Escalated: {subject}"
        mgr = clean_trait(manager, 60) if manager else ""
        summary = f"*{_slack_escape(rep_s or 'The rep')}* has not claimed *{_slack_escape(subject)}* " \
                  f"after {_count(retry, 'reminder')}" + (f"; *{_slack_escape(mgr)}* was alerted." if mgr else ".")
    else:
        raise ValueError(f"unknown Slack notice {notice!r}")

    fields = [f"*{label}*\n{_slack_escape(value)}" for label, value in _details(lead)
              if label not in ("Phone", "Email", "Budget confirmed", "Timeline (days)")]
    signals = ", ".join(f"{clean_trait(s.name, 40)} {_signed(s.points)}" for s in _signals(lead.breakdown)[:3])
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _shorten(header, 150), "emoji": False}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _shorten(summary, 3000)}},
    ]
    if fields:
        blocks.append({"type": "section",
                       "fields": [{"type": "mrkdwn", "text": _shorten(f, 2000)} for f in fields[:10]]})
    context = [f"Top signals: {_slack_escape(signals)}" if signals else "No scored signals",
               f"`leadrouter explain {_slack_escape(clean_trait(lead.lead_id, 80))}`"]
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _shorten(c, 2000)} for c in context]})
    # the top-level text is the notification's fallback, which Slack reads as mrkdwn: escaped too
    return {"text": _slack_escape(_shorten(header, 300)), "blocks": blocks}
