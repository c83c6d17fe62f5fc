"""Every scoring rule and boundary of SPEC §3, on the shipped default model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from routing.config import load_rules, parse_rules
from routing.scoring import (
    FYI,
    PRIORITY,
    ROUTE,
    EpisodeState,
    LeadHistory,
    Signal,
    TraitUpdate,
    decide,
    deep_merge,
    score,
    traits_as_of,
    transition,
)
from tests.support.stack import CONFIG

UTC = UTC
T0 = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)
RULES = load_rules(CONFIG)
S = RULES.scoring
FIT_45 = {"role": "decision_maker", "company": {"industry": "software", "employee_count": 1200},
          "address": {"country": "US"}}


def sig(name: str, minutes: float = 0, days: float = 0) -> Signal:
    return Signal(name, T0 + timedelta(minutes=minutes, days=days))


def test_default_model_is_the_published_one() -> None:
    assert S.thresholds.warm == 40 and S.thresholds.hot == 75
    table = {name: (r.points, r.max_count) for name, r in S.events.items()}
    assert table["Demo Requested"] == (25, 1)
    assert table["Pricing Page Viewed"] == (10, 2)
    assert table["Blog Post Viewed"] == (2, 5)
    assert table["Email Unsubscribed"] == (-10, 1)
    assert table["Careers Page Viewed"] == (-5, 1)
    assert len(table) == 18
    assert S.rehot_after_days == 30


def test_max_count_keeps_only_the_most_recent_occurrences() -> None:
    signals = [sig("Blog Post Viewed", m) for m in range(10)]
    b = score(signals, {}, S, T0 + timedelta(minutes=10))
    assert b.behavior == 10  # 5 × 2
    entry = next(e for e in b.events if e.name == "Blog Post Viewed")
    assert (entry.occurrences, entry.counted) == (10, 5)


def test_max_count_prefers_recent_over_decayed() -> None:
    # two old pricing views (half) and two fresh ones: only the two most recent count, in full
    signals = [sig("Pricing Page Viewed", days=-40), sig("Pricing Page Viewed", days=-35),
               sig("Pricing Page Viewed", 0), sig("Pricing Page Viewed", 1)]
    assert score(signals, {}, S, T0 + timedelta(minutes=1)).behavior == 20


@pytest.mark.parametrize(("age", "points"), [
    (timedelta(days=30) - timedelta(microseconds=1), 25),
    (timedelta(days=30), 12.5),
    (timedelta(days=90) - timedelta(microseconds=1), 12.5),
    (timedelta(days=90), 0),
    (timedelta(days=400), 0),
])
def test_decay_steps_at_exact_boundaries(age: timedelta, points: float) -> None:
    assert score([sig("Demo Requested")], {}, S, T0 + age).behavior == points


def test_negative_points_and_unknown_events() -> None:
    b = score([sig("Demo Requested"), sig("Email Unsubscribed", 1), sig("Careers Page Viewed", 2),
               sig("Some Custom Thing", 3)], {}, S, T0 + timedelta(minutes=5))
    assert b.behavior == 25 - 10 - 5
    custom = next(e for e in b.events if e.name == "Some Custom Thing")
    assert custom.points == 0 and custom.occurrences == 1


def test_future_events_do_not_count() -> None:
    assert score([sig("Demo Requested", 10)], {}, S, T0).behavior == 0


def test_fit_rules_on_dotted_paths() -> None:
    b = score([], FIT_45, S, T0)
    assert dict(b.fit_rules) == {"industry match": 10, "company size": 10, "geography": 5, "role": 20}
    assert b.fit == 45


@pytest.mark.parametrize(("traits", "fit"), [
    ({"company": {"employee_count": 50}}, 10),
    ({"company": {"employee_count": 5000}}, 10),
    ({"company": {"employee_count": 49}}, 0),
    ({"company": {"employee_count": 5001}}, 0),
    ({"company": {"employee_count": "lots"}}, 0),
    ({"company": {"industry": "SaaS"}}, 10),
    ({"company": "Acme"}, 0),
    ({"role": "influencer"}, 15),
    ({"role": "other"}, 5),
    ({"role": "janitor"}, 0),
    ({"address": {"country": "BR"}}, 0),
])
def test_fit_boundaries_and_wrong_types(traits: dict, fit: float) -> None:
    assert score([], traits, S, T0).fit == fit


def test_tiers_and_red_hot() -> None:
    hot_signals = [sig("Demo Requested"), sig("Pricing Downloaded", 1)]
    assert score([], {}, S, T0).tier == "cold"
    assert score([sig("Demo Requested")], {"role": "influencer"}, S, T0).tier == "warm"  # 40
    assert score(hot_signals, FIT_45, S, T0 + timedelta(minutes=1)).tier == "hot"
    red = {**FIT_45, "budget_confirmed": True, "timeline_days": 30}
    b = score(hot_signals, red, S, T0 + timedelta(minutes=1))
    assert b.tier == "red_hot" and b.red_hot
    assert score(hot_signals, {**red, "timeline_days": 31}, S, T0 + timedelta(minutes=1)).tier == "hot"
    # qualified but not hot is not red-hot
    assert score([], red, S, T0).tier == "warm"


def test_traits_merge_nested_and_latest_timestamp_wins() -> None:
    updates = [
        TraitUpdate(T0 + timedelta(minutes=5), {"company": {"name": "Acme Inc"}, "title": "CTO"}, 2),
        TraitUpdate(T0, {"company": {"name": "Acme", "industry": "software"}, "title": "Engineer"}, 1),
    ]
    assert traits_as_of(updates) == {"company": {"name": "Acme Inc", "industry": "software"}, "title": "CTO"}
    assert traits_as_of(updates, T0) == {"company": {"name": "Acme", "industry": "software"}, "title": "Engineer"}
    assert deep_merge({"a": {"b": 1}}, {"a": 2}) == {"a": 2}


def test_crossing_is_judged_at_the_events_own_timestamp() -> None:
    # a late Demo Requested timestamped before a pricing download still counts at its own time
    h = LeadHistory((sig("Pricing Downloaded", 10),), (TraitUpdate(T0 - timedelta(minutes=1), FIT_45),))
    late = h.with_signal(sig("Demo Requested", 5))
    tr = transition(h, late, S, T0 + timedelta(minutes=5))
    assert tr.before.score == 45 and tr.after.score == 70 and not tr.crossed_hot
    # the pricing download at 10 with the demo counted crosses
    tr2 = transition(LeadHistory((sig("Demo Requested", 5),), h.trait_updates), late, S, T0 + timedelta(minutes=10))
    assert tr2.crossed_hot


def _tr(before: list[Signal], new: Signal, traits: dict | None = None):  # type: ignore[no-untyped-def]
    updates = (TraitUpdate(T0 - timedelta(days=1), traits or FIT_45),)
    h = LeadHistory(tuple(before), updates)
    return transition(h, h.with_signal(new), S, new.timestamp)


def test_decide_routes_a_fresh_crossing() -> None:
    tr = _tr([sig("Demo Requested")], sig("Pricing Downloaded", 1))
    out = decide(EpisodeState(), tr, event_at=tr.after.at, now=tr.after.at, max_event_age=timedelta(hours=24),
                 rehot_after=timedelta(days=30))
    assert out.action == ROUTE and out.state.hot_at == tr.after.at and out.state.last_routed_at == tr.after.at


def test_stale_crossing_sets_hot_at_and_next_fresh_event_opens_the_episode() -> None:
    tr = _tr([sig("Demo Requested")], sig("Pricing Downloaded", 1))
    processed = tr.after.at + timedelta(hours=25)
    out = decide(EpisodeState(), tr, event_at=tr.after.at, now=processed, max_event_age=timedelta(hours=24),
                 rehot_after=timedelta(days=30))
    assert out.action is None and out.stale and out.state.hot_at == tr.after.at and out.state.hot_unalerted
    fresh = _tr([sig("Demo Requested"), sig("Pricing Downloaded", 1)], sig("Page Viewed", 60 * 25))
    out2 = decide(out.state, fresh, event_at=fresh.after.at, now=fresh.after.at, max_event_age=timedelta(hours=24),
                  rehot_after=timedelta(days=30))
    assert out2.action == ROUTE and not out2.state.hot_unalerted


def test_rehot_within_window_is_an_fyi() -> None:
    tr = _tr([sig("Demo Requested")], sig("Pricing Downloaded", 1))
    state = EpisodeState(hot_at=T0 - timedelta(days=3), last_routed_at=T0 - timedelta(days=3))
    kw = {"max_event_age": timedelta(hours=24), "rehot_after": timedelta(days=30)}
    assert decide(state, tr, event_at=tr.after.at, now=tr.after.at, **kw).action == FYI
    old = EpisodeState(hot_at=T0 - timedelta(days=31), last_routed_at=T0 - timedelta(days=31))
    assert decide(old, tr, event_at=tr.after.at, now=tr.after.at, **kw).action == ROUTE


def test_hot_to_red_hot_is_a_priority_alert_and_cold_to_red_hot_is_one_alert() -> None:
    kw = {"max_event_age": timedelta(hours=24), "rehot_after": timedelta(days=30)}
    hot = [sig("Demo Requested"), sig("Pricing Downloaded", 1)]
    h = LeadHistory(tuple(hot), (TraitUpdate(T0 - timedelta(days=1), FIT_45, 1),))
    qualify = TraitUpdate(T0 + timedelta(minutes=2), {"budget_confirmed": True, "timeline_days": 14}, 2)
    tr = transition(h, h.with_traits(qualify), S, qualify.timestamp)
    out = decide(EpisodeState(hot_at=T0, last_routed_at=T0), tr, event_at=qualify.timestamp, now=qualify.timestamp,
                 **kw)
    assert out.action == PRIORITY and out.state.red_hot_at == qualify.timestamp
    red = {**FIT_45, "budget_confirmed": True, "timeline_days": 14}
    tr2 = _tr([sig("Demo Requested")], sig("Pricing Downloaded", 1), red)
    out2 = decide(EpisodeState(), tr2, event_at=tr2.after.at, now=tr2.after.at, **kw)
    assert out2.action == ROUTE and out2.red_hot and out2.state.hot_at == out2.state.red_hot_at


def test_decay_alone_never_crosses() -> None:
    # the score falls below hot by decay; a zero-point event does not "re-cross"
    h = LeadHistory((sig("Demo Requested"), sig("Pricing Downloaded")), (TraitUpdate(T0, FIT_45),))
    later = sig("Lead Contacted", days=40)
    tr = transition(h, h.with_signal(later), S, later.timestamp)
    assert not tr.before.hot and not tr.after.hot and not tr.crossed_hot


def test_rules_text_errors_point_at_lines() -> None:
    from routing.config import RulesError

    text = "scoring:\n  events:\n    Demo Requested: {points: 25, max_count: 0}\n  decay:\n    - {from: 1x, factor: 1}\n"
    with pytest.raises(RulesError) as info:
        parse_rules(text)
    lines = {e.path: e.line for e in info.value.errors}
    assert lines["scoring.events.Demo Requested.max_count"] == 3
    assert lines["scoring.decay.0.from"] == 5
