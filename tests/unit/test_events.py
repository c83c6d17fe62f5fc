"""Segment event validation and normalisation, identity and page rules (SPEC §2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from routing.config import load_rules
from routing.events import EventError, check_envelope, context_traits, event_time, map_page, normalize
from routing.simulate import simulate
from tests.support.stack import CONFIG

UTC = UTC
RULES = load_rules(CONFIG)
NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def norm(raw: dict, received: datetime = NOW):  # type: ignore[no-untyped-def]
    return normalize(raw, source="default", received_at=received, pages=RULES.pages)


@pytest.mark.parametrize(("raw", "field"), [
    ([], ""),
    ({"messageId": "m", "userId": "u"}, "type"),
    ({"type": "track", "userId": "u", "event": "X"}, "messageId"),
    ({"type": "track", "messageId": "m", "event": "X"}, "userId"),
    ({"type": "track", "messageId": "m", "userId": "u"}, "event"),
    ({"type": "track", "messageId": "m", "userId": "u", "event": 5}, "event"),
    ({"type": "track", "messageId": "m", "userId": {"a": 1}, "event": "X"}, "userId"),
    ({"type": "track", "messageId": "m", "userId": "u", "event": "X", "properties": []}, "properties"),
    ({"type": "track", "messageId": "m", "userId": "u", "event": "X", "timestamp": "yesterday"}, "timestamp"),
    ({"type": "identify", "messageId": "m", "userId": "u", "traits": "x"}, "traits"),
    ({"type": "alias", "messageId": "m", "userId": "u"}, "previousId"),
])
def test_bad_events_name_the_field(raw: object, field: str) -> None:
    with pytest.raises(EventError) as info:
        check_envelope(raw)
    assert info.value.field == field


def test_size_and_depth_limits() -> None:
    big = {"type": "track", "messageId": "m", "userId": "u", "event": "X", "properties": {"x": "a" * 33000}}
    with pytest.raises(EventError, match="32 KB"):
        check_envelope(big)
    deep: dict = {}
    node = deep
    for _ in range(40):
        node["a"] = {}
        node = node["a"]
    with pytest.raises(EventError, match="nesting"):
        check_envelope({"type": "track", "messageId": "m", "userId": "u", "event": "X", "properties": deep})


def test_other_types_are_accepted_and_ignored() -> None:
    ev = norm({"type": "screen", "messageId": "m", "userId": "u"})
    assert ev.type == "other"


def test_timestamps_default_utc_and_clock_skew() -> None:
    assert norm({"type": "track", "messageId": "m", "userId": "u", "event": "X",
                 "timestamp": "2026-11-22T09:00:00"}).timestamp == NOW - timedelta(hours=1)
    # the sender's clock runs 10 minutes fast: corrected by receivedAt − sentAt
    ev = norm({"type": "track", "messageId": "m", "userId": "u", "event": "X",
               "timestamp": "2026-11-22T10:05:00Z", "sentAt": "2026-11-22T10:10:00Z"})
    assert ev.timestamp == NOW - timedelta(minutes=5)
    # still in the future: clamped to receivedAt
    assert norm({"type": "track", "messageId": "m", "userId": "u", "event": "X",
                 "timestamp": "2026-11-23T10:00:00Z"}).timestamp == NOW
    # no timestamp: time received
    assert norm({"type": "track", "messageId": "m", "userId": "u", "event": "X"}).timestamp == NOW


@pytest.mark.parametrize(("path", "event"), [
    ("/pricing", "Pricing Page Viewed"),
    ("/pricing/enterprise", "Pricing Page Viewed"),
    ("/pricing-old", "Page Viewed"),
    ("/blog/post-1", "Blog Post Viewed"),
    ("/careers", "Careers Page Viewed"),
    ("/case-studies/acme", "Case Study Viewed"),
    ("/compare/vs-x", "Comparison Viewed"),
    ("/", "Page Viewed"),
])
def test_page_mapping(path: str, event: str) -> None:
    assert map_page({"type": "page", "properties": {"path": path}}, RULES.pages) == event


def _ev(i: int, **kw: object) -> dict:
    return {"messageId": f"m{i}", "timestamp": f"2026-11-02T15:{i:02d}:00Z", **kw}


def test_identity_merge_counts_anonymous_history() -> None:
    events = [
        _ev(1, type="page", anonymousId="a1", properties={"path": "/pricing"}),
        _ev(2, type="page", anonymousId="a1", properties={"path": "/pricing"}),
        _ev(3, type="track", anonymousId="a1", event="ROI Calculator Used"),
        _ev(4, type="identify", userId="u1", anonymousId="a1",
            traits={"role": "decision_maker", "company": {"industry": "software", "employee_count": 300},
                    "address": {"country": "US"}}),
        _ev(5, type="page", anonymousId="a1", properties={"path": "/case-studies/x"}),
    ]
    replay = simulate(events, RULES)
    ids = {r.lead_id for r in replay.leads}
    assert "anon:a1" not in ids
    lead = replay.lead("u1")
    assert lead is not None
    assert lead.behavior == 10 + 10 + 15 + 8 and lead.fit == 45
    assert lead.hot_at is not None and lead.hot_at.minute == 4  # the identify tipped it over


def test_alias_links_previous_id() -> None:
    events = [_ev(1, type="track", anonymousId="a9", event="Demo Requested"),
              _ev(2, type="alias", previousId="a9", userId="u9"),
              _ev(3, type="track", anonymousId="a9", event="Trial Started")]
    lead = simulate(events, RULES).lead("u9")
    assert lead is not None and lead.behavior == 45


def test_duplicates_are_scoped_by_source_in_simulate() -> None:
    e = _ev(1, type="track", userId="u", event="Demo Requested")
    assert simulate([e, e, dict(e)], RULES).lead("u").behavior == 25  # type: ignore[union-attr]


def test_simulate_reports_bad_events_and_keeps_the_rest() -> None:
    replay = simulate([{"type": "track"}, _ev(1, type="track", userId="u", event="Demo Requested")], RULES)
    assert replay.errors and replay.errors[0]["index"] == 0
    assert replay.lead("u").behavior == 25  # type: ignore[union-attr]


def test_original_timestamp_is_the_event_time_when_there_is_no_timestamp() -> None:
    """RudderStack's SDKs put when the event happened in originalTimestamp, not timestamp."""
    base = {"type": "track", "messageId": "m", "userId": "u", "event": "X"}
    # two days old, sent just now by a sender whose clock is right: stale, as it should be
    ev = norm({**base, "originalTimestamp": "2026-11-20T10:00:00Z", "sentAt": "2026-11-22T10:00:00Z"})
    assert ev.timestamp == NOW - timedelta(days=2)
    # the sender's clock runs 10 minutes fast: the same skew correction as timestamp
    ev = norm({**base, "originalTimestamp": "2026-11-22T10:05:00Z", "sentAt": "2026-11-22T10:10:00Z"})
    assert ev.timestamp == NOW - timedelta(minutes=5)
    # no sentAt, in the future: clamped to receivedAt
    assert norm({**base, "originalTimestamp": "2026-11-23T10:00:00Z"}).timestamp == NOW
    # timestamp, when given, wins over originalTimestamp
    ev = norm({**base, "timestamp": "2026-11-22T09:00:00Z", "originalTimestamp": "2026-11-21T09:00:00Z"})
    assert ev.timestamp == NOW - timedelta(hours=1)
    # a malformed originalTimestamp is refused like a malformed timestamp, naming its key
    with pytest.raises(EventError) as caught:
        norm({**base, "originalTimestamp": "last tuesday"})
    assert caught.value.field == "originalTimestamp"
    with pytest.raises(EventError) as caught:
        check_envelope({**base, "originalTimestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-01-01T00:00:00Z"})
    assert caught.value.field == "originalTimestamp"


def test_event_time_rule_order() -> None:
    received = NOW
    assert event_time({}, received) == received
    assert event_time({"sentAt": "2026-11-22T09:00:00Z"}, received) == received
    assert event_time({"originalTimestamp": "2026-11-22T09:00:00Z"}, received) == NOW - timedelta(hours=1)
    assert event_time({"originalTimestamp": "2026-11-22T09:00:00+01:00"}, received) == NOW - timedelta(hours=2)


def test_context_attribution_is_readable_by_dotted_path_and_personal_fields_are_not() -> None:
    from routing.scoring import get_trait

    raw = {"type": "page", "messageId": "m", "anonymousId": "a", "context": {
        "campaign": {"source": "google", "medium": "cpc", "name": "spring"},
        "referrer": {"type": "google", "url": "https://google.com"},
        "page": {"url": "https://www.example.com/pricing?utm_source=google", "path": "/pricing"},
        "ip": "203.0.113.9", "userAgent": "Mozilla/5.0", "library": {"name": "analytics.js"}}}
    traits = context_traits(raw)
    assert get_trait(traits, "context.campaign.source") == "google"
    assert get_trait(traits, "context.referrer.type") == "google"
    assert get_trait(traits, "context.page.path") == "/pricing"
    assert get_trait(traits, "context.ip") is None and get_trait(traits, "context.userAgent") is None
    assert get_trait(traits, "context.library") is None
    assert context_traits({"context": {"ip": "1.2.3.4"}}) == {}
    assert context_traits({"context": "nope"}) == {}
    # the event keeps its whole context as sent (page URL, campaign, IP, user agent)
    ev = norm(raw)
    assert ev.raw["context"]["ip"] == "203.0.113.9" and ev.raw["context"]["userAgent"] == "Mozilla/5.0"
    assert ev.attribution == traits
