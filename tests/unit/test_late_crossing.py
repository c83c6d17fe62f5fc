"""An event that arrives late (overtaken by a later one in the fast lane) can still open the episode."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from routing.config import load_rules
from routing.events import normalize
from routing.leads import Lead, apply_event
from routing.scoring import ROUTE
from tests.conftest import CONFIG

RULES = load_rules(CONFIG)
T0 = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)
TRAITS = {"role": "decision_maker", "company": {"industry": "software", "employee_count": 1200},
          "address": {"country": "US"}}


def ev(raw: dict, minutes: float) -> object:
    stamp = T0 + timedelta(minutes=minutes)
    return normalize({**raw, "timestamp": stamp.isoformat()}, source="default", received_at=T0 + timedelta(hours=1),
                     pages=RULES.pages)


def test_identify_overtaken_by_the_demo_request_still_routes_the_lead():
    now = T0 + timedelta(hours=1)
    identify = ev({"type": "identify", "messageId": "i", "userId": "u", "traits": TRAITS}, 0)
    pricing = ev({"type": "track", "messageId": "p", "userId": "u", "event": "Pricing Page Viewed"}, 1)
    demo = ev({"type": "track", "messageId": "d", "userId": "u", "event": "Demo Requested"}, 2)
    lead = Lead("u")
    for seq, e in enumerate((pricing, demo)):          # the fast lane got there first
        applied = apply_event(lead, e, RULES, now=now, seq=seq)
        assert applied.outcome.action is None
        lead = applied.lead
    applied = apply_event(lead, identify, RULES, now=now, seq=3)
    assert applied.outcome.action == ROUTE
    assert applied.lead.episode.hot_at == identify.timestamp
    assert applied.transition.after.score == 80


def test_a_late_event_that_changes_nothing_opens_nothing():
    now = T0 + timedelta(hours=1)
    lead = Lead("u")
    for seq, e in enumerate((ev({"type": "identify", "messageId": "i", "userId": "u", "traits": TRAITS}, 0),
                             ev({"type": "track", "messageId": "d", "userId": "u", "event": "Demo Requested"}, 2))):
        lead = apply_event(lead, e, RULES, now=now, seq=seq).lead
    late = apply_event(lead, ev({"type": "track", "messageId": "b", "userId": "u", "event": "Blog Post Viewed"}, 1),
                       RULES, now=now, seq=5)
    assert late.outcome.action is None
