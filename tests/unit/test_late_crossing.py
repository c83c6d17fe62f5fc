"""SPEC §3 under disorder: crossings and ``hot_at`` on the lead's timeline, episodes decided on arrival."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from routing.config import load_rules
from routing.events import Event, normalize
from routing.leads import Applied, Lead, apply_event
from routing.scoring import FYI, PRIORITY, ROUTE, first_crossings
from tests.support.stack import CONFIG

RULES = load_rules(CONFIG)
T0 = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)
TRAITS = {"role": "decision_maker", "company": {"industry": "software", "employee_count": 1200},
          "address": {"country": "US"}}                                  # fit 45
QUALIFIED = {"budget_confirmed": True, "timeline_days": 14}


def ev(kind: str | dict, minutes: float, mid: str | None = None) -> Event:
    """A track of event name ``kind``, or an identify carrying the traits ``kind``, at T0 + ``minutes``."""
    stamp = T0 + timedelta(minutes=minutes)
    raw = ({"type": "identify", "traits": kind} if isinstance(kind, dict)
           else {"type": "track", "event": kind})
    raw |= {"messageId": mid or f"{kind}@{minutes}", "userId": "u", "timestamp": stamp.isoformat()}
    return normalize(raw, source="default", received_at=stamp, pages=RULES.pages)


def arrive(events: list[Event], now: datetime = NOW, lead: Lead | None = None) -> tuple[Lead, list[Applied]]:
    lead = lead or Lead("u")
    applied = []
    for e in events:
        a = apply_event(lead, e, RULES, now=now, seq=len(lead.history.signals) + len(lead.history.trait_updates))
        applied.append(a)
        lead = a.lead
    return lead, applied


def actions(applied: list[Applied]) -> list[str | None]:
    return [a.outcome.action for a in applied]


def test_identify_overtaken_by_the_demo_request_routes_the_lead_when_it_arrives():
    # the fast lane got the pricing view and the demo request in before the identify
    lead, applied = arrive([ev("Pricing Page Viewed", 1), ev("Demo Requested", 2), ev(TRAITS, 0)])
    assert actions(applied) == [None, None, ROUTE]
    assert applied[-1].arrival.after.score == 80
    # on the timeline the lead stands at 80 from the demo request on, not from the identify (45 then)
    assert lead.episode.hot_at == T0 + timedelta(minutes=2)


def test_a_late_event_that_changes_nothing_opens_nothing():
    lead, applied = arrive([ev(TRAITS, 0), ev("Demo Requested", 2), ev("Blog Post Viewed", 1)])
    assert actions(applied) == [None, None, None]


def test_a_late_event_on_a_lead_hot_throughout_sends_nothing_and_moves_hot_at_earlier():
    # hot at 15:40 by the pricing download; the webinar at 15:10 arrives last and makes it hot at 15:20 already
    lead, applied = arrive([ev(TRAITS, 0), ev("Demo Requested", 20), ev("Pricing Downloaded", 40),
                            ev("Webinar Attended", 10)])
    assert actions(applied) == [None, None, ROUTE, None]
    assert lead.episode.hot_at == T0 + timedelta(minutes=20)
    assert lead.episode.last_routed_at == NOW


def test_a_late_event_can_move_hot_at_later():
    lead, applied = arrive([ev(TRAITS, 0), ev("Demo Requested", 10), ev("Pricing Page Viewed", 20),
                            ev("Webinar Attended", 30)])
    assert actions(applied) == [None, None, ROUTE, None] and lead.episode.hot_at == T0 + timedelta(minutes=20)
    # an unsubscribe at 15:15 arrives late: 15:20 now stands at 70, 15:30 at 80; still hot as of now
    lead, applied = arrive([ev("Email Unsubscribed", 15)], lead=lead)
    assert actions(applied) == [None]
    assert lead.episode.hot_at == T0 + timedelta(minutes=30)


def test_a_late_negative_event_can_take_hot_at_back_to_null_and_a_fresh_event_re_crosses_as_an_fyi():
    lead, applied = arrive([ev(TRAITS, 0), ev("Demo Requested", 10), ev("Pricing Page Viewed", 20)])
    assert actions(applied) == [None, None, ROUTE] and lead.episode.hot_at == T0 + timedelta(minutes=20)
    # an unsubscribe from before the demo request arrives late: the lead never stood at 75 after all
    lead, applied = arrive([ev("Email Unsubscribed", 5)], lead=lead)
    assert actions(applied) == [None]
    assert lead.episode.hot_at is None
    assert applied[0].arrival.before.hot and not applied[0].arrival.after.hot
    # it had cooled below the threshold, so crossing again within rehot_after_days is an FYI, not an episode
    lead, applied = arrive([ev("Pricing Downloaded", 30)], lead=lead)
    assert actions(applied) == [FYI]
    assert lead.episode.hot_at == T0 + timedelta(minutes=30)


def test_a_late_event_that_turns_the_lead_hot_as_of_now_opens_the_episode_once():
    lead, applied = arrive([ev(TRAITS, 0), ev("Webinar Attended", 30), ev("Pricing Page Viewed", 20),
                            ev("Demo Requested", 10)])
    assert actions(applied) == [None, None, None, ROUTE]
    assert lead.episode.hot_at == T0 + timedelta(minutes=20)       # 45, 70 at 15:10, 80 at 15:20
    # more late events on the now-hot lead: nothing, however they cross at their own instants
    lead, applied = arrive([ev("Case Study Viewed", 15), ev("Email Clicked", 12)], lead=lead)
    assert actions(applied) == [None, None]
    assert lead.episode.hot_at == T0 + timedelta(minutes=12)       # 70 + 5 at 15:12


def test_stale_back_fill_sets_hot_at_and_the_next_fresh_event_opens_the_episode():
    later = NOW + timedelta(hours=48)
    lead, applied = arrive([ev(TRAITS, 0), ev("Demo Requested", 10), ev("Pricing Page Viewed", 20)], now=later)
    assert actions(applied) == [None, None, None] and applied[-1].outcome.stale
    assert lead.episode.hot_at == T0 + timedelta(minutes=20) and lead.episode.hot_unalerted
    fresh = ev("Blog Post Viewed", (later - T0).total_seconds() / 60 - 1)
    lead, applied = arrive([fresh], now=later, lead=lead)
    assert actions(applied) == [ROUTE] and not lead.episode.hot_unalerted


def test_hot_to_red_hot_late_is_a_priority_alert_and_cold_to_red_hot_is_one_alert():
    lead, applied = arrive([ev(TRAITS, 0), ev("Demo Requested", 10), ev("Pricing Page Viewed", 20),
                            ev(QUALIFIED, 5)])
    assert actions(applied) == [None, None, ROUTE, PRIORITY]
    assert lead.episode.red_hot_at == T0 + timedelta(minutes=20)
    lead, applied = arrive([ev({**TRAITS, **QUALIFIED}, 0), ev("Demo Requested", 10), ev("Pricing Page Viewed", 20)])
    assert actions(applied) == [None, None, ROUTE] and applied[-1].outcome.red_hot
    assert lead.episode.hot_at == lead.episode.red_hot_at == T0 + timedelta(minutes=20)


def test_events_sharing_a_timestamp_cross_together():
    # +25 and −10 at the same instant: whichever arrives first, the moment stands at 70
    for order in (("Demo Requested", "Email Unsubscribed"), ("Email Unsubscribed", "Demo Requested")):
        lead, _ = arrive([ev(TRAITS, 0), ev(order[0], 10), ev(order[1], 10)])
        assert lead.episode.hot_at is None


# ------------------------------------------------------------------ property: arrival order does not matter

NAMES = ["Demo Requested", "Pricing Downloaded", "Pricing Page Viewed", "Webinar Attended", "Case Study Viewed",
         "Email Clicked", "Blog Post Viewed", "Email Unsubscribed", "Careers Page Viewed", "Made Up Event"]
IDENTIFIES = [TRAITS, QUALIFIED, {"role": "end_user"}, {"company": {"employee_count": 20}},
              {"address": {"country": "BR"}}, {"budget_confirmed": False}]

event_sets = st.lists(
    st.tuples(st.one_of(st.sampled_from(NAMES), st.sampled_from(range(len(IDENTIFIES)))),
              st.integers(min_value=0, max_value=60 * 24 * 100)),     # minutes: decay steps at 30 and 90 days
    min_size=1, max_size=14, unique_by=lambda item: item[1])          # identifies tied in time would race


def _events(spec: list[tuple[str | int, int]]) -> list[Event]:
    return [ev(IDENTIFIES[k] if isinstance(k, int) else k, m, f"m{i}") for i, (k, m) in enumerate(spec)]


def _score_at(events: list[Event], at: datetime) -> float:
    lead, _ = arrive(sorted((e for e in events if e.timestamp <= at), key=lambda e: e.timestamp))
    return lead.history.score(RULES.scoring, at).score


@settings(max_examples=150, deadline=None)
@given(spec=event_sets, data=st.data())
def test_final_hot_at_score_and_tier_do_not_depend_on_arrival_order(spec, data):
    events = _events(spec)
    shuffled = data.draw(st.permutations(events))
    in_order, _ = arrive(sorted(events, key=lambda e: e.timestamp))
    disordered, _ = arrive(list(shuffled))
    at = max(e.timestamp for e in events)
    a, b = in_order.history.score(RULES.scoring, at), disordered.history.score(RULES.scoring, at)
    assert (a.score, a.tier) == (b.score, b.tier)
    assert (in_order.episode.hot_at, in_order.episode.red_hot_at) == \
        (disordered.episode.hot_at, disordered.episode.red_hot_at)
    assert (disordered.episode.hot_at, disordered.episode.red_hot_at) == first_crossings(disordered.history,
                                                                                         RULES.scoring)
    hot_at = disordered.episode.hot_at
    if hot_at is not None:
        # hot_at never names a moment whose score is below the threshold, and the moment before it was below
        assert _score_at(events, hot_at) >= RULES.scoring.thresholds.hot
        earlier = [e for e in events if e.timestamp < hot_at]
        if earlier:
            assert _score_at(earlier, max(e.timestamp for e in earlier)) < RULES.scoring.thresholds.hot


@settings(max_examples=150, deadline=None)
@given(spec=event_sets, data=st.data())
def test_an_alert_only_when_the_arrival_turns_the_lead_hot_and_one_episode_when_it_never_cools(spec, data):
    events = list(data.draw(st.permutations(_events(spec))))
    lead, applied = arrive(events)
    for a in applied:
        if a.outcome.action in (ROUTE, FYI):
            # the arrival turned the lead hot as it stood at its newest event: it was not hot without it
            assert not a.arrival.before.hot and a.arrival.after.hot
    stamps = [e.timestamp for e in events]
    negative = {"Email Unsubscribed", "Careers Page Viewed"}
    if max(stamps) - min(stamps) < timedelta(days=30) and not any(e.name in negative for e in events) \
            and all(e.type == "track" or e.traits in (TRAITS, QUALIFIED) for e in events):
        # nothing can cool this lead (no decay, no negative points, fit only grows): at most one episode, no FYI
        assert actions(applied).count(ROUTE) <= 1
        assert FYI not in actions(applied)
        assert actions(applied).count(ROUTE) == (lead.episode.hot_at is not None)


def test_a_late_event_that_turns_the_lead_hot_is_routed_with_the_traits_of_a_newer_identify():
    """Arrival: the identify (stamped at +2 min) and a pricing view (at 0), then a demo request stamped
    at +1 min. Only the identify's fit makes the lead hot, so the route reads its traits: team na
    (US, 1,200 employees), bob for software; the traits as of +1 min alone would fall to the
    default team."""
    from routing.simulate import simulate

    stamp = {m: (T0 + timedelta(minutes=m)).isoformat() for m in (0, 1, 2)}
    events = [{"type": "identify", "messageId": "i", "userId": "u", "timestamp": stamp[2], "traits": TRAITS},
              {"type": "track", "messageId": "p", "userId": "u", "event": "Pricing Page Viewed", "timestamp": stamp[0]},
              {"type": "track", "messageId": "d", "userId": "u", "event": "Demo Requested", "timestamp": stamp[1]}]
    [lead] = simulate(events, RULES).leads
    assert (lead.tier, lead.route, lead.rep) == ("hot", "team", "bob"), lead.reasons
    lead_now, applied = arrive([ev(TRAITS, 2, "i"), ev("Pricing Page Viewed", 0, "p"), ev("Demo Requested", 1, "d")])
    assert applied[-1].outcome.action == ROUTE
    assert applied[-1].routing_traits() == lead_now.history.traits()
    assert lead_now.history.traits(T0 + timedelta(minutes=1)) == {}     # what the old route read
