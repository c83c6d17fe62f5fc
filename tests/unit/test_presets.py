"""The industry presets in config/presets (SPEC §3): valid, complete, and their signals score."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from routing.config import Rules, load_rules
from routing.simulate import simulate
from tests.support.stack import CONFIG, ROOT

PRESETS = ROOT / "config" / "presets"
DEFAULT = load_rules(CONFIG)

# each preset's own events (SPEC §3), and the one that must be worth the most
INDUSTRY_EVENTS = {
    "b2b-saas": ["Trial Activated", "Integration Docs Viewed", "Security Questionnaire Requested",
                 "User Accounts Created", "Billing Page Viewed"],
    "professional-services": ["RFP Downloaded", "Scope Discussion Booked"],
    "ecommerce-b2b": ["Volume Quote Requested", "Payment Terms Viewed"],
}
SIGNATURE = {
    "b2b-saas": "Security Questionnaire Requested",
    "professional-services": "Scope Discussion Booked",
    "ecommerce-b2b": "Volume Quote Requested",
}
# a page each preset maps to one of its own events
PAGE = {
    "b2b-saas": ("/docs/integrations/salesforce", "Integration Docs Viewed"),
    "professional-services": ("/services/audit", "Services Page Viewed"),
    "ecommerce-b2b": ("/payment-terms", "Payment Terms Viewed"),
}
# a buyer of the preset's industry: company fit and role from the preset's own fit rules
BUYER = {
    "b2b-saas": {"company": {"industry": "saas", "employee_count": 80}},
    "professional-services": {"company": {"industry": "healthcare", "employee_count": 400}},
    "ecommerce-b2b": {"company": {"industry": "wholesale", "employee_count": 60}},
}

T0 = "2026-11-18T15:00:00Z"  # a Wednesday: 10:00 in New York, 09:00 in Chicago


def preset(name: str) -> Rules:
    return load_rules(PRESETS / f"{name}.yaml")


def identify(user: str, traits: dict[str, Any], ts: str = T0) -> dict[str, Any]:
    base = {"role": "decision_maker", "address": {"country": "US"}}
    return {"type": "identify", "messageId": f"i-{user}", "userId": user, "timestamp": ts, "traits": base | traits}


def track(user: str, event: str, n: int, ts: str = T0) -> dict[str, Any]:
    return {"type": "track", "messageId": f"t-{user}-{n}", "userId": user, "event": event, "timestamp": ts}


def test_the_three_presets_ship() -> None:
    assert sorted(p.stem for p in PRESETS.glob("*.yaml")) == sorted(INDUSTRY_EVENTS)


@pytest.mark.parametrize("name", sorted(INDUSTRY_EVENTS))
def test_preset_passes_check_config(name: str) -> None:
    done = subprocess.run([sys.executable, "-m", "worker.entrypoints.cli", "check-config", str(PRESETS / f"{name}.yaml")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert ": ok (rules " in done.stdout


@pytest.mark.parametrize("name", sorted(INDUSTRY_EVENTS))
def test_preset_keeps_the_default_model_and_adds_its_events(name: str) -> None:
    rules = preset(name)
    assert (rules.scoring.thresholds.warm, rules.scoring.thresholds.hot) == (40, 75)
    assert rules.scoring.decay == DEFAULT.scoring.decay
    for event, rule in DEFAULT.scoring.events.items():
        assert rules.scoring.events[event] == rule, event
    for event in INDUSTRY_EVENTS[name]:
        assert event in rules.scoring.events, event
        assert event not in DEFAULT.scoring.events


@pytest.mark.parametrize("name", sorted(INDUSTRY_EVENTS))
def test_preset_points_follow_the_published_ranges(name: str) -> None:
    rules = preset(name)
    extra = {e: r for e, r in rules.scoring.events.items() if e not in DEFAULT.scoring.events}
    # new signals are positive and no larger than a high-value action
    assert all(1 <= r.points <= 25 for r in extra.values()), extra
    assert rules.scoring.events[SIGNATURE[name]].points >= 15  # the signature is a high-value action
    role = [f for f in rules.scoring.fit if f.trait == "role"]
    company = [f for f in rules.scoring.fit if f.trait != "role"]
    assert max(role[0].map.values()) <= 20  # type: ignore[union-attr]
    assert sum(f.points or 0 for f in company) <= 25


@pytest.mark.parametrize("name", sorted(INDUSTRY_EVENTS))
def test_signature_event_scores_under_its_preset_only(name: str) -> None:
    events = [track("u", SIGNATURE[name], 1)]
    points = preset(name).scoring.events[SIGNATURE[name]].points
    assert simulate(events, preset(name)).lead("u").behavior == points  # type: ignore[union-attr]
    assert simulate(events, DEFAULT).lead("u").behavior == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("name", sorted(INDUSTRY_EVENTS))
def test_preset_maps_its_pages(name: str) -> None:
    path, event = PAGE[name]
    page = {"type": "page", "messageId": "p1", "userId": "u", "timestamp": T0, "properties": {"path": path}}
    lead = simulate([page], preset(name)).lead("u")
    assert lead is not None and lead.behavior == preset(name).scoring.events[event].points


@pytest.mark.parametrize("name", sorted(INDUSTRY_EVENTS))
def test_an_industry_buyer_goes_hot_and_is_routed(name: str) -> None:
    # the buyer's industry signals alone, under the default model, stay below hot
    events = [identify("u", BUYER[name])] + [track("u", e, n) for n, e in enumerate(INDUSTRY_EVENTS[name])]
    hot = simulate(events, preset(name)).lead("u")
    assert hot is not None and hot.tier in ("hot", "red_hot") and hot.rep is not None
    assert hot.rep in {r.id for r in preset(name).reps}
    cold = simulate(events, DEFAULT).lead("u")
    assert cold is not None and cold.hot_at is None and cold.rep is None
