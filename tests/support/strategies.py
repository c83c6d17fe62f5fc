"""Hypothesis strategies for hostile input: JSON-like values, Segment-shaped events, timestamps, mutations."""

from __future__ import annotations

import string
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Bounded runs: the whole folder stays well under a minute. Tests that share a function-scoped
# fixture across examples (a database, an app) reset or measure what they check per example.
FUZZ = settings(deadline=None, max_examples=60, derandomize=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.large_base_example])

EVENT_KEYS = ("type", "messageId", "userId", "anonymousId", "previousId", "event", "name", "properties",
              "traits", "context", "timestamp", "originalTimestamp", "sentAt")
ID_KEYS = ("messageId", "userId", "anonymousId", "previousId")

# Text as json.loads can produce it: any code point, lone surrogates included ("\ud800" is valid JSON).
surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
any_text = st.text(st.one_of(st.characters(), surrogates), max_size=30)
plain_text = st.text(max_size=30)
huge_text = st.tuples(st.sampled_from(["x", "é", "€", "𝄞", "\x00", '"', "\\"]),
                      st.integers(0, 40_000)).map(lambda t: t[0] * t[1])

# what every store takes: no NUL, no lone surrogate, numbers a double holds
storable_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53),
                             st.floats(allow_nan=False, allow_infinity=False),
                             st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=False, allow_infinity=False), any_text)


def json_values(max_leaves: int = 25) -> st.SearchStrategy[Any]:
    """Whatever json.loads can return: nested objects and arrays of scalars."""
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(any_text, inner, max_size=4), max_leaves=max_leaves)


def nest(depth: int, leaf: Any = 1, kinds: str = "d") -> Any:
    """``leaf`` wrapped in ``depth`` containers, cycling through ``kinds`` (d: object, l: array)."""
    value = leaf
    for i in range(depth):
        value = {"k": value} if kinds[i % len(kinds)] == "d" else [value]
    return value


def depth_of(value: Any) -> int:
    """Nesting depth as the contract counts it: a scalar is 0, ``{}`` and ``[]`` are 1."""
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


def strings_in(value: Any) -> list[str]:
    """Every string in ``value``, object keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*strings_in(k), *strings_in(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []


deep_values = st.builds(nest, st.integers(0, 80), scalars, st.sampled_from(["d", "l", "dl", "ld", "ddl"]))

# ---------------------------------------------------------------- timestamps

_offsets = st.one_of(st.just(UTC), st.builds(lambda m: timezone(timedelta(minutes=m)), st.integers(-1439, 1439)))
aware_datetimes = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_offsets)
realistic_datetimes = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                                   timezones=st.just(UTC))


def _spell(ts: datetime, style: int) -> str:
    text = ts.isoformat()
    if style == 1 and ts.utcoffset() == timedelta(0):
        return text.replace("+00:00", "Z")
    if style == 2:
        return ts.replace(tzinfo=None).isoformat()          # no offset: UTC by the contract
    if style == 3:
        return " " + text + " "
    return text


timestamps = st.one_of(
    st.builds(_spell, aware_datetimes, st.integers(0, 3)),
    st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00Z",
                     "9999-12-31T23:59:59.999999Z", "2026-02-30T10:00:00Z", "2026-11-22T24:00:00Z",
                     "2026-11-22T10:00:00+24:00", "yesterday", "", " ", "Z", "2026", "2026-11-22",
                     "2026-11-22T10:00:00\x00", "\ud800"]),
    any_text,
)

# ---------------------------------------------------------------- events

ids = st.one_of(st.text(string.ascii_letters + string.digits + "-_:", min_size=1, max_size=12),
                st.integers(-(10**6), 10**6), st.text(min_size=1, max_size=210), any_text)
wrong_types = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False),
                        st.lists(scalars, max_size=2),
                        st.dictionaries(plain_text, scalars, max_size=2), st.integers(), any_text)
event_names = st.one_of(st.sampled_from(["Demo Requested", "Pricing Page Viewed", "Email Clicked", "Unknown Thing",
                                         "  ", ""]), plain_text, st.text(min_size=195, max_size=205))
objects = st.dictionaries(any_text, json_values(10), max_size=4)
page_props = st.fixed_dictionaries({}, optional={"path": st.one_of(
    st.sampled_from(["/pricing", "/pricing/", "/pricing/enterprise?x=1", "/pricingx", "/careers#top", "/", ""]),
    plain_text, wrong_types)})


def event_dicts() -> st.SearchStrategy[dict[str, Any]]:
    """Segment-shaped objects: every known key sometimes present, sometimes the right type, sometimes not."""
    known = st.fixed_dictionaries(
        {"type": st.one_of(st.sampled_from(["track", "identify", "page", "alias", "screen", "group"]), wrong_types),
         "messageId": st.one_of(ids, wrong_types)},
        optional={
            "userId": st.one_of(ids, wrong_types),
            "anonymousId": st.one_of(ids, wrong_types),
            "previousId": st.one_of(ids, wrong_types),
            "event": st.one_of(event_names, wrong_types),
            "name": st.one_of(st.sampled_from(["Pricing", "pricing ", "Careers"]), plain_text, wrong_types),
            "properties": st.one_of(objects, page_props, wrong_types, deep_values),
            "traits": st.one_of(objects, wrong_types, deep_values),
            "context": st.one_of(objects, wrong_types),
            "timestamp": st.one_of(timestamps, wrong_types),
            "originalTimestamp": st.one_of(timestamps, wrong_types),
            "sentAt": st.one_of(timestamps, wrong_types),
            "pad": huge_text,
        },
    )
    extra = st.dictionaries(plain_text.filter(lambda k: k not in EVENT_KEYS), json_values(8), max_size=3)
    return st.builds(lambda k, e: {**e, **k}, known, extra)


def valid_event(mid: str, kind: str = "track") -> dict[str, Any]:
    """An event the contract accepts, to be broken one field at a time."""
    base: dict[str, Any] = {"type": kind, "messageId": mid, "userId": "u-1", "anonymousId": "a-1",
                            "timestamp": "2026-11-22T10:00:00Z", "sentAt": "2026-11-22T10:00:01Z",
                            "context": {"ip": "10.0.0.1"}}
    if kind == "track":
        base.update(event="Email Clicked", properties={"page": "/demo"})
    elif kind == "identify":
        base.update(traits={"email": "jane@acme.com", "company": {"name": "Acme"}})
    elif kind == "page":
        base.update(name="Pricing", properties={"path": "/pricing"})
    elif kind == "alias":
        base.update(previousId="a-1")
    return base


# Values at the edge of what ingestion accepts, to stress storage and scoring: extreme times, huge
# numbers, odd text.
odd_values = st.one_of(
    st.sampled_from(["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00", 10**4000,
                     -(10**300), 1e308, -1e-308, "é" * 200, "𝄞" * 200, "\u202e", "\ufeff", " ", True, [], {}]),
    json_values(6))
odd_fields = st.sampled_from(["timestamp", "sentAt", "userId", "anonymousId", "messageId", "event", "name",
                          "traits.company.employee_count", "traits.company.industry", "traits.role",
                          "traits.address.country", "traits.budget_confirmed", "traits.timeline_days",
                          "properties.path", "context.traits.email"])


def put(event: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``event`` with ``value`` at the dotted ``path``, objects made on the way (unchanged if one is in the way)."""
    node = event
    *parents, last = path.split(".")
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            return event
        node = child
    node[last] = value
    return event


@st.composite
def odd_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with one to three fields set to values that stress storage and scoring."""
    event = valid_event(uuid.uuid4().hex, draw(st.sampled_from(["track", "identify", "page", "alias"])))
    for _ in range(draw(st.integers(1, 3))):
        put(event, draw(odd_fields), draw(odd_values))
    return event


# ---------------------------------------------------------------- mutations of signed strings


@st.composite
def mutated(draw: st.DrawFn, original: str, alphabet: str | None = None) -> str:
    """``original`` with one character replaced, inserted or deleted (never equal to it)."""
    chars = st.sampled_from(alphabet) if alphabet else st.characters(codec="utf-8")
    op = draw(st.sampled_from(["replace", "insert", "delete"]))
    if op == "delete" and len(original) > 1:
        i = draw(st.integers(0, len(original) - 1))
        out = original[:i] + original[i + 1:]
    elif op == "insert":
        i = draw(st.integers(0, len(original)))
        out = original[:i] + draw(chars) + original[i:]
    else:
        i = draw(st.integers(0, len(original) - 1))
        out = original[:i] + draw(chars.filter(lambda c: c != original[i])) + original[i + 1:]
    assert out != original
    return out


def flip_byte(data: bytes, index: int, mask: int) -> bytes:
    """``data`` with the byte at ``index`` (modulo its length) XORed with a non-zero ``mask``."""
    i = index % len(data)
    return data[:i] + bytes([data[i] ^ (mask or 1)]) + data[i + 1:]
