"""The event parser under arbitrary input (SPEC §2, §8): every value either becomes a valid Event or is
refused with an EventError naming the field; nothing else escapes, and accepted events keep the contract."""

from __future__ import annotations

import copy
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routing.config import load_rules
from routing.events import (
    MAX_DEPTH,
    MAX_EVENT_BYTES,
    Event,
    EventError,
    check_envelope,
    iso,
    map_page,
    normalize,
    parse_time,
)
from routing.simulate import simulate
from tests.support.stack import CONFIG
from tests.support.strategies import (
    EVENT_KEYS,
    FUZZ,
    deep_values,
    depth_of,
    event_dicts,
    json_values,
    nest,
    odd_events,
    realistic_datetimes,
    scalars,
    storable_scalars,
    strings_in,
    timestamps,
    valid_event,
)

RULES = load_rules(CONFIG)
PAGE_EVENTS = {rule.event for rule in RULES.pages} | {"Page Viewed"}
FIELDS = set(EVENT_KEYS) | {""}
KINDS = ("track", "identify", "page", "alias")

# NaN and Infinity: json.loads accepts them (the CLI reads files with it), JSON and PostgreSQL do not;
# integers past a double's range: json.loads makes them, scoring cannot compare them
odd_numbers = st.sampled_from([float("nan"), float("inf"), float("-inf"), 10**400, -(10**309), 2**1024])
anything = st.one_of(json_values(), event_dicts(), deep_values, scalars,
                     st.builds(lambda e, v: {**e, "traits": {"n": v}}, event_dicts(), odd_numbers))


def parse(raw: Any, received: datetime) -> Event | EventError:
    """The parser's answer: an Event, or the EventError it raised. Any other exception fails the test."""
    try:
        return normalize(raw, source="web", received_at=received, pages=RULES.pages)
    except EventError as exc:
        return exc


def numbers_in(value: Any) -> list[int | float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers_in(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers_in(v)]
    return []


def utf8_size(raw: Any) -> int:
    return len(json.dumps(raw, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass"))


def assert_clear_error(exc: EventError, raw: Any = None) -> None:
    """The message says what is wrong; the field is a known key, a key of the event, or "" for the whole."""
    assert exc.field in FIELDS or (isinstance(raw, dict) and exc.field in raw), exc.field
    assert isinstance(exc.message, str) and exc.message.strip()
    assert str(exc) == (f"{exc.field}: {exc.message}" if exc.field else exc.message)


def assert_contract(raw: dict[str, Any], ev: Event, received: datetime) -> None:
    """What SPEC §2 and the Event docstrings promise about an accepted event."""
    assert depth_of(raw) <= MAX_DEPTH
    assert utf8_size(raw) <= MAX_EVENT_BYTES
    json.dumps(raw, ensure_ascii=False).encode("utf-8")          # storable text: no lone surrogates,
    assert not any("\x00" in text for text in strings_in(raw))   # and no NUL (PostgreSQL refuses both)
    json.dumps(raw, allow_nan=False)                              # numbers: no NaN or Infinity,
    assert all(abs(n) <= sys.float_info.max for n in numbers_in(raw))   # and each fits a double
    assert ev.source == "web" and ev.received_at == received and ev.raw is raw
    assert ev.timestamp.tzinfo is not None and ev.timestamp.utcoffset() == timedelta(0)
    assert ev.timestamp <= received                               # a future timestamp is clamped
    assert isinstance(ev.message_id, str) and 0 < len(ev.message_id) <= 200
    for value in (ev.user_id, ev.anonymous_id, ev.previous_id):
        assert value is None or (isinstance(value, str) and 0 < len(value) <= 200)
    assert isinstance(ev.properties, dict) and isinstance(ev.traits, dict)
    kind = raw["type"]
    assert ev.type == {"track": "track", "page": "track", "identify": "identify", "alias": "alias"}.get(kind, "other")
    if kind in ("track", "identify", "page"):
        assert ev.lead_id is not None
    if kind == "alias":
        assert ev.user_id and ev.previous_id and ev.link is not None
    if ev.user_id:
        assert ev.lead_id == ev.user_id
    elif ev.anonymous_id:
        assert ev.lead_id == f"anon:{ev.anonymous_id}"
    if kind == "track":
        assert ev.name == raw["event"].strip() and ev.name
    if kind == "page":
        assert ev.name in PAGE_EVENTS
    # the event time: timestamp, else originalTimestamp, else the time received; sentAt corrects the
    # sender's clock skew; never in the future
    key = "timestamp" if raw.get("timestamp") is not None else "originalTimestamp"
    ts = parse_time(raw[key], key) if raw.get(key) is not None else received
    if raw.get("sentAt") is not None and raw.get(key) is not None:
        offset = ts - parse_time(raw["sentAt"], "sentAt")      # how long before sending it happened
        assert ev.timestamp == (received if offset >= timedelta(0) else received + offset)
    else:
        assert ev.timestamp == min(ts, received)


@FUZZ
@given(raw=anything, received=realistic_datetimes)
def test_any_value_is_an_event_or_a_clear_event_error(raw: Any, received: datetime) -> None:
    before = copy.deepcopy(raw)
    outcome = parse(raw, received)
    assert raw == before, "the parser must not change its input"
    if isinstance(outcome, EventError):
        assert_clear_error(outcome, raw)
    else:
        assert_contract(raw, outcome, received)


@FUZZ
@given(raw=event_dicts(), received=realistic_datetimes)
def test_parsing_is_deterministic_and_ingest_checks_agree_with_the_worker(raw: dict[str, Any],
                                                                          received: datetime) -> None:
    first, second = parse(raw, received), parse(raw, received)
    if isinstance(first, EventError):
        assert isinstance(second, EventError) and (second.field, second.message) == (first.field, first.message)
    else:
        assert second == first
    # ingestion runs check_envelope; the worker runs normalize later. An event accepted at the door
    # must never turn into a dead letter for a reason the door could have seen.
    try:
        check_envelope(raw)
    except EventError as exc:
        assert isinstance(first, EventError) and (exc.field, exc.message) == (first.field, first.message)
    else:
        assert isinstance(first, Event), first


@FUZZ
@given(kind=st.sampled_from(KINDS), depth=st.integers(0, 60), kinds=st.sampled_from(["d", "l", "dl"]),
       leaf=st.one_of(storable_scalars, st.just({}), st.just([])),
       where=st.sampled_from(["properties", "traits", "context"]))
def test_nesting_deeper_than_32_is_refused_and_32_is_accepted(kind: str, depth: int, kinds: str, leaf: Any,
                                                              where: str) -> None:
    raw = valid_event("m-deep", kind)
    raw[where] = {"nested": nest(depth, leaf, kinds)}
    total = depth_of(raw)
    outcome = parse(raw, datetime(2026, 11, 22, 10, 0, 5, tzinfo=UTC))
    if total > MAX_DEPTH:
        assert isinstance(outcome, EventError) and "nesting deeper than 32" in outcome.message
    else:
        assert isinstance(outcome, Event), outcome


@FUZZ
@given(kind=st.sampled_from(KINDS), char=st.sampled_from(["x", "é", "€", "𝄞", '"', "\n"]),
       slack=st.integers(-40, 40))
def test_the_32_kb_limit_counts_utf8_bytes_of_the_event(kind: str, char: str, slack: int) -> None:
    raw = valid_event("m-size", kind)
    raw["context"] = {"pad": ""}
    overhead = utf8_size(raw)
    per_char = utf8_size(char) - 2                                  # without the quotes
    raw["context"]["pad"] = char * max(0, (MAX_EVENT_BYTES - overhead) // per_char + slack)
    outcome = parse(raw, datetime(2026, 11, 22, 10, 0, 5, tzinfo=UTC))
    if utf8_size(raw) > MAX_EVENT_BYTES:
        assert isinstance(outcome, EventError) and "32 KB" in outcome.message
    else:
        assert isinstance(outcome, Event), outcome


finite_floats = st.floats(allow_nan=False, allow_infinity=False)
WRONG = {
    "type": st.one_of(st.none(), st.just(""), st.integers(), st.booleans(), st.lists(st.integers(), max_size=2),
                      st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)),
    "messageId": st.one_of(st.none(), st.just(""), st.booleans(), finite_floats, st.lists(st.integers(), max_size=2),
                           st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                           st.text(min_size=201, max_size=260)),
    "event": st.one_of(st.none(), st.text(" \t\n", max_size=3), st.integers(), st.booleans(),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.text(min_size=201)),
    "timestamp": st.one_of(st.integers(), st.booleans(), st.lists(st.text(max_size=3), max_size=2),
                           st.sampled_from(["", "yesterday", "2026-13-01T00:00:00Z", "0001-01-01T00:00:00+01:00",
                                            "9999-12-31T23:59:59-01:00"])),
}
for _key in ("userId", "anonymousId", "previousId"):
    WRONG[_key] = st.one_of(st.booleans(), finite_floats, st.lists(st.integers(), max_size=2),
                            st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                            st.text(min_size=201, max_size=260))
WRONG["sentAt"] = WRONG["timestamp"]
for _key in ("properties", "traits", "context"):
    WRONG[_key] = st.one_of(st.text(max_size=5), st.integers(), st.booleans(), st.lists(st.integers(), max_size=2))
WRONG["name"] = st.one_of(st.integers(), st.booleans(), st.lists(st.integers(), max_size=2))

# which fields each type checks (Segment: properties for track/page, traits for identify, name for page)
CHECKED = {
    "track": {"type", "messageId", "userId", "anonymousId", "previousId", "event", "timestamp", "sentAt",
              "properties", "traits", "context"},
    "identify": {"type", "messageId", "userId", "anonymousId", "previousId", "timestamp", "sentAt",
                 "properties", "traits", "context"},
    "page": {"type", "messageId", "userId", "anonymousId", "previousId", "timestamp", "sentAt", "properties",
             "traits", "context", "name"},
    "alias": {"type", "messageId", "userId", "anonymousId", "previousId", "timestamp", "sentAt",
              "properties", "traits", "context"},
}


@FUZZ
@given(data=st.data(), kind=st.sampled_from(KINDS))
def test_a_wrong_type_in_any_known_field_names_that_field(data: st.DataObject, kind: str) -> None:
    field = data.draw(st.sampled_from(sorted(CHECKED[kind])))
    raw = valid_event("m-wrong", kind)
    raw[field] = data.draw(WRONG[field])
    outcome = parse(raw, datetime(2026, 11, 22, 10, 0, 5, tzinfo=UTC))
    assert isinstance(outcome, EventError), (field, raw[field])
    assert outcome.field == field, (outcome.field, outcome.message)
    assert_clear_error(outcome)


@FUZZ
@given(value=timestamps, received=realistic_datetimes)
def test_timestamps_parse_to_aware_utc_or_a_timestamp_error(value: str, received: datetime) -> None:
    try:
        ts = parse_time(value, "timestamp")
    except EventError as exc:
        assert exc.field == "timestamp" and exc.message
        return
    assert ts.tzinfo is not None and ts.utcoffset() == timedelta(0)
    text = iso(ts)
    assert text is not None and text.endswith("Z")
    assert parse_time(text, "timestamp") == ts.replace(microsecond=ts.microsecond // 1000 * 1000)


@FUZZ
@given(raw=event_dicts())
def test_a_page_always_maps_to_a_configured_event_or_page_viewed(raw: dict[str, Any]) -> None:
    assert map_page(raw, RULES.pages) in PAGE_EVENTS


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb", "\udbff\udc00"])
def test_lone_surrogates_are_refused_as_invalid_text(text: str) -> None:
    """json.loads turns "\\ud800" into a lone surrogate, which no database can store."""
    for field in ("messageId", "userId", "event"):
        raw = {**valid_event("m-sur"), field: text}
        outcome = parse(raw, datetime(2026, 11, 22, 10, 0, 5, tzinfo=UTC))
        assert isinstance(outcome, EventError) and "Unicode" in outcome.message
    raw = {**valid_event("m-sur"), "properties": {text: 1}}
    assert isinstance(parse(raw, datetime(2026, 11, 22, 10, 0, 5, tzinfo=UTC)), EventError)


@FUZZ
@given(ts=st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(3000, 1, 1), timezones=st.just(UTC)),
       sent=st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)),
       received=realistic_datetimes)
def test_skew_correction_never_overflows(ts: datetime, sent: datetime, received: datetime) -> None:
    raw = {**valid_event("m-skew"), "timestamp": ts.isoformat(), "sentAt": sent.isoformat()}
    outcome = parse(raw, received)
    if isinstance(outcome, EventError):
        assert outcome.field == "timestamp" and "before sentAt" in outcome.message
    else:
        assert outcome.timestamp <= received


def test_a_timestamp_out_of_utc_range_is_an_event_error() -> None:
    for value in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        with pytest.raises(EventError) as info:
            check_envelope({**valid_event("m-range"), "sentAt": value})
        assert info.value.field == "sentAt"


@FUZZ
@given(events=st.lists(st.one_of(odd_events(), event_dicts(), anything), max_size=8),
       as_of=st.one_of(st.none(), realistic_datetimes))
def test_simulate_replays_anything_reporting_bad_events_by_index(events: list[Any], as_of: datetime | None) -> None:
    """``leadrouter simulate`` runs this same core: hostile files get per-event errors, never a crash."""
    replay = simulate(events, RULES, as_of=as_of)
    refused = {e["index"] for e in replay.errors}
    assert refused <= set(range(len(events)))
    for index, raw in enumerate(events):
        try:
            check_envelope(raw)
        except EventError:
            assert index in refused
    json.dumps(replay.to_json(), allow_nan=False)              # what --json prints is JSON
    for lead in replay.leads:
        assert lead.tier in ("cold", "warm", "hot", "red_hot")
