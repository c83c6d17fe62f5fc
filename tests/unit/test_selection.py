"""Rep selection, SPEC §4: every step, every fallback, and the reasons a decision carries."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from routing.config import Rules, RulesError, load_rules, parse_rules
from routing.selection import (
    AWAY_INDEFINITELY,
    CandidateReason,
    Decision,
    RepState,
    RoutingState,
    choose_rep,
    lead_domain,
    team_for,
)

ROOT = Path(__file__).resolve().parents[2]
NY, CHICAGO, BERLIN = "America/New_York", "America/Chicago", "Europe/Berlin"
OFFICE = "Mon-Fri 08:00-18:00"

MONDAY = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)  # 10:00 New York, 09:00 Chicago, 16:00 Berlin
NIGHT = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # Monday 22:00 New York: only maria works
TUESDAY_8_NY = datetime(2026, 11, 24, 13, 0, tzinfo=UTC)
TUESDAY_8_CHICAGO = datetime(2026, 11, 24, 14, 0, tzinfo=UTC)

REPS: list[dict[str, Any]] = [
    {"id": "alice", "timezone": NY, "hours": OFFICE, "max_open": 2, "skills": ["fintech"]},
    {"id": "bob", "timezone": CHICAGO, "hours": OFFICE, "max_open": 2, "skills": ["Software", "saas"]},
    {"id": "dan", "timezone": NY, "hours": OFFICE},
    {"id": "carol", "timezone": BERLIN, "hours": "Mon-Fri 09:00-17:30"},
    {"id": "maria", "timezone": NY, "hours": "Mon-Sun 00:00-24:00"},
]
TEAMS: list[dict[str, Any]] = [
    {"id": "na", "match": {"address.country": ["US", "CA"], "company.employee_count": {"min": 200}},
     "reps": ["alice", "bob", "dan"]},
    {"id": "default", "reps": ["carol"]},
]


def make_rules(
    reps: list[dict[str, Any]] | None = None,
    teams: list[dict[str, Any]] | None = None,
    accounts: dict[str, str] | None = None,
    routing: dict[str, Any] | None = None,
) -> Rules:
    # JSON is YAML: the test rules go through the same loader as a rules file.
    data = {
        "reps": REPS if reps is None else reps,
        "teams": TEAMS if teams is None else teams,
        "accounts": accounts or {},
        "routing": {"after_hours": "queue", "on_call": "maria"} if routing is None else routing,
    }
    return parse_rules(json.dumps(data))


def lead(country: Any = "US", employees: Any = 1200, industry: Any = "retail", email: str = "jane@gmail.com",
         **extra: Any) -> dict[str, Any]:
    return {"email": email, "company": {"industry": industry, "employee_count": employees},
            "address": {"country": country}, **extra}


def state(**reps: RepState) -> RoutingState:
    return RoutingState(reps=reps)


def loads(team: str = "na", **counts: int) -> RoutingState:
    return RoutingState(reps={rid: RepState(assigned_7d={team: n}) for rid, n in counts.items()})


def reasons(decision: Decision) -> dict[str, tuple[str, str]]:
    return {c.rep_id: (c.status, c.reason) for c in decision.candidates}


RULES = make_rules()


# ---------------------------------------------------------------- lead domain


@pytest.mark.parametrize(
    ("traits", "domain"),
    [
        ({"email": "jane@acme.io", "company": {"domain": "Acme.COM"}}, "acme.com"),
        ({"email": "jane@Acme.IO"}, "acme.io"),
        ({"email": "jane@gmail.com"}, None),
        ({"email": "jane@gmail.com", "company": {"domain": "https://www.acme.com/about"}}, "acme.com"),
        ({"email": "jane@acme.io", "company": {"domain": "gmail.com"}}, "acme.io"),
        ({"email": "jane@hotmail.com", "company": {"domain": "yahoo.com"}}, None),
        ({"email": 42, "company": {"domain": ["acme.com"]}}, None),
        ({"company": "Acme"}, None),
        ({}, None),
    ],
)
def test_lead_domain(traits: dict[str, Any], domain: str | None) -> None:
    assert lead_domain(traits, RULES.free_mail_domains) == domain


# ---------------------------------------------------------------- step 2: the team


def test_first_matching_team_in_config_order() -> None:
    rules = make_rules(teams=[
        {"id": "big", "match": {"company.employee_count": {"min": 1000}}, "reps": ["dan"]},
        *TEAMS,
    ])
    team, notes = team_for(lead(), rules)
    assert team is not None and team.id == "big" and notes == ()


def test_match_lists_compare_text_case_insensitively() -> None:
    team, _ = team_for(lead(country="us"), RULES)
    assert team is not None and team.id == "na"


@pytest.mark.parametrize(("employees", "team_id"), [(199, "default"), (200, "na"), (5000, "na")])
def test_match_ranges_are_inclusive(employees: int, team_id: str) -> None:
    rules = make_rules(teams=[
        {"id": "na", "match": {"company.employee_count": {"min": 200, "max": 5000}}, "reps": ["alice"]},
        {"id": "default", "reps": ["carol"]},
    ])
    team, _ = team_for(lead(employees=employees), rules)
    assert team is not None and team.id == team_id
    assert team_for(lead(employees=5001), rules)[0].id == "default"  # type: ignore[union-attr]


def test_every_match_key_must_hold() -> None:
    team, _ = team_for(lead(country="DE"), RULES)
    assert team is not None and team.id == "default"


def test_a_missing_trait_does_not_match_and_is_not_a_problem() -> None:
    team, notes = team_for({"address": {"country": "US"}}, RULES)
    assert team is not None and team.id == "default" and notes == ()


def test_a_scalar_match_value_means_equals() -> None:
    rules = make_rules(teams=[{"id": "vip", "match": {"role": "Decision_Maker"}, "reps": ["dan"]}, *TEAMS])
    assert team_for({"role": "decision_maker"}, rules)[0].id == "vip"  # type: ignore[union-attr]


def test_default_team_is_the_fallback_wherever_it_is_listed() -> None:
    rules = make_rules(teams=[TEAMS[1], TEAMS[0]])
    assert team_for(lead(), rules)[0].id == "na"  # type: ignore[union-attr]


def test_a_team_without_match_accepts_every_lead() -> None:
    rules = make_rules(teams=[{"id": "all", "reps": ["dan"]}, *TEAMS])
    assert team_for({}, rules)[0].id == "all"  # type: ignore[union-attr]


def test_no_team_and_no_default() -> None:
    team, _ = team_for(lead(country="DE"), make_rules(teams=[TEAMS[0]]))
    assert team is None


@pytest.mark.parametrize(
    ("traits", "note"),
    [
        (lead(employees="lots"), "trait company.employee_count has wrong type str; treated as missing"),
        (lead(employees=True), "trait company.employee_count has wrong type bool; treated as missing"),
        (lead(country={"code": "US"}), "trait address.country has wrong type dict; treated as missing"),
        (lead(country=["US"]), "trait address.country has wrong type list; treated as missing"),
        ({"address": "US", "company": {"employee_count": 1200}}, "trait address has wrong type str; treated as missing"),
    ],
)
def test_wrong_typed_traits_count_as_missing_with_a_note(traits: dict[str, Any], note: str) -> None:
    team, notes = team_for(traits, RULES)
    assert team is not None and team.id == "default"
    assert note in notes
    decision = choose_rep(traits, RULES, RoutingState(), MONDAY)
    assert decision.team_id == "default" and note in decision.notes


def test_a_range_match_needs_numbers_in_the_rules() -> None:
    with pytest.raises(RulesError, match="min and max are numbers"):
        make_rules(teams=[{"id": "x", "match": {"company.employee_count": {"min": "lots"}}, "reps": ["dan"]}])


# ---------------------------------------------------------------- steps 3-5 inside the team


def test_routes_inside_the_team_and_lists_every_team_rep() -> None:
    d = choose_rep(lead(), RULES, RoutingState(), MONDAY)
    assert (d.rep_id, d.team_id, d.route, d.start_at) == ("alice", "na", "team", MONDAY)
    assert reasons(d) == {
        "alice": ("chosen", "load 0/1=0.00"),
        "bob": ("eligible", "load 0/1=0.00"),
        "dan": ("eligible", "load 0/1=0.00"),
    }


def test_weighted_round_robin_takes_the_lowest_count_per_weight() -> None:
    assert choose_rep(lead(), RULES, loads(alice=1), MONDAY).rep_id == "bob"
    assert choose_rep(lead(), RULES, loads(alice=1, bob=1), MONDAY).rep_id == "dan"
    heavy = make_rules(reps=[{**r, "weight": 2} if r["id"] == "dan" else r for r in REPS])
    d = choose_rep(lead(), heavy, loads(alice=1, bob=1, dan=1), MONDAY)
    assert d.rep_id == "dan"
    assert reasons(d)["dan"] == ("chosen", "load 1/2=0.50")


def test_round_robin_counts_only_this_team() -> None:
    assert choose_rep(lead(), RULES, loads(team="emea", alice=9), MONDAY).rep_id == "alice"


def test_ties_go_to_the_team_config_order() -> None:
    rules = make_rules(teams=[{**TEAMS[0], "reps": ["dan", "bob", "alice"]}, TEAMS[1]])
    assert choose_rep(lead(), rules, RoutingState(), MONDAY).rep_id == "dan"
    assert choose_rep(lead(), rules, loads(dan=3, bob=3, alice=3), MONDAY).rep_id == "dan"


def test_skilled_reps_go_first_whatever_their_load() -> None:
    d = choose_rep(lead(industry="SOFTWARE"), RULES, loads(bob=5), MONDAY)
    assert d.rep_id == "bob"
    assert reasons(d)["bob"] == ("chosen", "skill match software, load 5/1=5.00")
    assert reasons(d)["alice"] == ("eligible", "load 0/1=0.00")


def test_round_robin_among_several_skilled_reps() -> None:
    rules = make_rules(reps=[{**r, "skills": ["software"]} if r["id"] == "dan" else r for r in REPS])
    assert choose_rep(lead(industry="software"), rules, loads(bob=2, dan=1), MONDAY).rep_id == "dan"


def test_an_unavailable_skilled_rep_leaves_the_others_by_round_robin() -> None:
    st = RoutingState(reps={"bob": RepState(away_until=AWAY_INDEFINITELY), "alice": RepState(assigned_7d={"na": 1})})
    assert choose_rep(lead(industry="software"), RULES, st, MONDAY).rep_id == "dan"


def test_a_wrong_typed_industry_is_noted_and_matches_no_skill() -> None:
    d = choose_rep(lead(industry=42), RULES, RoutingState(), MONDAY)
    assert d.rep_id == "alice"
    assert "trait company.industry has wrong type int; treated as missing" in d.notes


@pytest.mark.parametrize(
    ("rep_state", "reason"),
    [
        (RepState(away_until=AWAY_INDEFINITELY), "away"),
        (RepState(away_until=datetime(2026, 11, 23, 18, 0, tzinfo=UTC)), "away until 2026-11-23 18:00 UTC"),
        (RepState(open_leads=2), "at capacity 2/2"),
        (RepState(open_leads=5), "at capacity 5/2"),
    ],
)
def test_unavailable_reps_are_skipped_with_their_reason(rep_state: RepState, reason: str) -> None:
    d = choose_rep(lead(), RULES, state(alice=rep_state), MONDAY)
    assert d.rep_id == "bob"
    assert reasons(d)["alice"] == ("skipped", reason)


def test_an_away_that_has_ended_does_not_count() -> None:
    d = choose_rep(lead(), RULES, state(alice=RepState(away_until=MONDAY)), MONDAY)
    assert d.rep_id == "alice"


def test_a_rep_under_max_open_is_available() -> None:
    assert choose_rep(lead(), RULES, state(alice=RepState(open_leads=1)), MONDAY).rep_id == "alice"


def test_holiday_and_hours_reasons() -> None:
    rules = make_rules(reps=[
        {**REPS[0], "holidays": ["2026-11-23"]},
        {**REPS[1], "hours": "Mon-Fri 12:00-18:00"},
        *REPS[2:],
    ])
    d = choose_rep(lead(), rules, RoutingState(), MONDAY)
    assert d.rep_id == "dan"
    assert reasons(d)["alice"] == ("skipped", "holiday 2026-11-23")
    assert reasons(d)["bob"] == ("skipped", "outside hours 18:00-12:00 America/Chicago")


def test_excluded_reps_are_shown_and_never_chosen() -> None:
    d = choose_rep(lead(), RULES, RoutingState(), MONDAY, exclude=frozenset({"alice"}))
    assert d.rep_id == "bob"
    assert reasons(d)["alice"] == ("skipped", "excluded (previously assigned)")


# ---------------------------------------------------------------- step 1: the account owner


def test_the_accounts_map_owner_wins_over_round_robin() -> None:
    rules = make_rules(accounts={"Acme.com": "dan"})
    d = choose_rep(lead(email="jane@acme.com"), rules, RoutingState(), MONDAY)
    assert (d.rep_id, d.team_id, d.route) == ("dan", None, "account_owner")
    assert d.candidates == (CandidateReason("dan", "chosen", "account owner of acme.com (accounts)"),)


def test_the_owner_may_be_outside_the_matched_team() -> None:
    rules = make_rules(accounts={"acme.com": "carol"})
    d = choose_rep(lead(email="jane@acme.com"), rules, RoutingState(), MONDAY)
    assert (d.rep_id, d.route) == ("carol", "account_owner")


def test_the_last_routed_rep_owns_a_domain_without_an_accounts_entry() -> None:
    st = RoutingState(domain_owners={"acme.com": "bob"})
    d = choose_rep(lead(email="jane@acme.com"), RULES, st, MONDAY)
    assert (d.rep_id, d.route) == ("bob", "account_owner")
    assert reasons(d)["bob"] == ("chosen", "account owner of acme.com (last routed)")


def test_the_accounts_map_beats_the_last_routed_rep() -> None:
    st = RoutingState(domain_owners={"acme.com": "bob"})
    assert choose_rep(lead(email="jane@acme.com"), make_rules(accounts={"acme.com": "dan"}), st, MONDAY).rep_id == "dan"


def test_company_domain_beats_the_email_domain() -> None:
    rules = make_rules(accounts={"acme.com": "dan", "acme.io": "bob"})
    traits = lead(email="jane@acme.io", company={"domain": "acme.com"})
    assert choose_rep(traits, rules, RoutingState(), MONDAY).rep_id == "dan"


def test_free_mail_never_finds_an_owner() -> None:
    st = RoutingState(domain_owners={"gmail.com": "dan"})
    d = choose_rep(lead(email="jane@gmail.com"), make_rules(accounts={"gmail.com": "dan"}), st, MONDAY)
    assert (d.rep_id, d.route) == ("alice", "team")


@pytest.mark.parametrize(
    ("owner_state", "now", "exclude", "why"),
    [
        (RepState(), NIGHT, frozenset(), "outside hours 18:00-08:00 America/New_York"),
        (RepState(away_until=AWAY_INDEFINITELY), MONDAY, frozenset(), "away"),
        (RepState(open_leads=2), MONDAY, frozenset(), "at capacity 2/2"),
        (RepState(), MONDAY, frozenset({"alice"}), "excluded (previously assigned)"),
    ],
)
def test_an_unavailable_owner_falls_back_to_the_team(
    owner_state: RepState, now: datetime, exclude: frozenset[str], why: str
) -> None:
    rules = make_rules(accounts={"acme.com": "alice"})
    d = choose_rep(lead(email="jane@acme.com"), rules, state(alice=owner_state), now, exclude=exclude)
    assert d.route in ("team", "queued") and d.team_id == "na"
    assert f"account owner alice of acme.com not available: {why}" in d.notes
    assert reasons(d)["alice"][0] == "skipped" or d.route == "queued"


def test_an_owner_no_longer_in_the_rules_is_noted() -> None:
    d = choose_rep(lead(email="jane@acme.com"), RULES, RoutingState(domain_owners={"acme.com": "zed"}), MONDAY)
    assert d.route == "team"
    assert "account owner zed of acme.com is no longer in the rules" in d.notes


# ---------------------------------------------------------------- step 6: nobody available


def test_after_hours_queue_assigns_now_to_the_earliest_next_shift() -> None:
    d = choose_rep(lead(), RULES, RoutingState(), NIGHT)
    assert (d.rep_id, d.team_id, d.route, d.start_at) == ("alice", "na", "queued", TUESDAY_8_NY)
    assert reasons(d) == {
        "alice": ("chosen", "queued for next shift 2026-11-24 08:00 America/New_York; load 0/1=0.00"),
        "bob": ("skipped", "outside hours 18:00-08:00 America/Chicago"),  # starts an hour later
        "dan": ("eligible", "load 0/1=0.00"),
    }


def test_queue_uses_skills_and_round_robin_among_the_earliest() -> None:
    assert choose_rep(lead(), RULES, loads(alice=1), NIGHT).rep_id == "dan"
    rules = make_rules(reps=[{**r, "skills": ["retail"]} if r["id"] == "dan" else r for r in REPS])
    assert choose_rep(lead(), rules, loads(dan=4), NIGHT).rep_id == "dan"
    # bob has the skill but starts later: earliest shift first, then skills.
    assert choose_rep(lead(industry="software"), RULES, RoutingState(), NIGHT).rep_id == "alice"


def test_queue_waits_for_an_away_to_end_and_skips_holidays() -> None:
    st = state(alice=RepState(away_until=datetime(2026, 11, 24, 15, 0, tzinfo=UTC)),
               dan=RepState(away_until=AWAY_INDEFINITELY))
    d = choose_rep(lead(), RULES, st, NIGHT)
    assert (d.rep_id, d.start_at) == ("bob", TUESDAY_8_CHICAGO)
    rules = make_rules(reps=[{**r, "holidays": ["2026-11-24"]} if r["id"] in ("alice", "dan") else r for r in REPS])
    assert choose_rep(lead(), rules, RoutingState(), NIGHT).rep_id == "bob"


def test_queue_leaves_out_reps_already_at_capacity() -> None:
    d = choose_rep(lead(), RULES, state(alice=RepState(open_leads=2)), NIGHT)
    assert (d.rep_id, d.route) == ("dan", "queued")


def test_queue_with_nobody_ever_coming_back_goes_on_call() -> None:
    away = RepState(away_until=AWAY_INDEFINITELY)
    d = choose_rep(lead(), RULES, state(alice=away, bob=away, dan=away), NIGHT)
    assert (d.rep_id, d.route) == ("maria", "on_call")


def test_after_hours_on_call_routes_to_on_call_at_once() -> None:
    rules = make_rules(routing={"after_hours": "on_call", "on_call": "maria"})
    d = choose_rep(lead(), rules, RoutingState(), NIGHT)
    assert (d.rep_id, d.team_id, d.route, d.start_at) == ("maria", "na", "on_call", NIGHT)
    assert reasons(d)["maria"] == ("chosen", "on call: nobody in team na is in hours")
    assert {rid for rid, (status, _) in reasons(d).items() if status == "skipped"} == {"alice", "bob", "dan"}


def test_everyone_in_hours_at_capacity_goes_to_on_call() -> None:
    full = RepState(open_leads=2)
    rules = make_rules(reps=[{**r, "max_open": 1} if r["id"] == "dan" else r for r in REPS])
    d = choose_rep(lead(), rules, state(alice=full, bob=full, dan=RepState(open_leads=1)), MONDAY)
    assert (d.rep_id, d.route, d.start_at) == ("maria", "on_call", MONDAY)
    assert reasons(d)["maria"] == ("chosen", "on call: every rep in hours in team na is at capacity")
    assert reasons(d)["alice"] == ("skipped", "at capacity 2/2")


def test_capacity_rule_applies_when_the_others_are_off() -> None:
    # alice full in hours, bob and dan away: some rep is in hours, so this is the capacity path, not the queue.
    away = RepState(away_until=AWAY_INDEFINITELY)
    d = choose_rep(lead(), RULES, state(alice=RepState(open_leads=2), bob=away, dan=away), MONDAY)
    assert (d.rep_id, d.route) == ("maria", "on_call")


def test_everyone_at_capacity_without_on_call_is_unrouted() -> None:
    rules = make_rules(reps=[{**r, "max_open": 1} for r in REPS], routing={"after_hours": "queue"})
    full = RepState(open_leads=1)
    d = choose_rep(lead(), rules, state(alice=full, bob=full, dan=full), MONDAY)
    assert (d.rep_id, d.team_id, d.route) == (None, "na", "unrouted")
    assert d.notes == ("every rep in hours in team na is at capacity; no on_call rep is set",)
    assert set(reasons(d)) == {"alice", "bob", "dan"}


def test_routing_never_falls_through_to_another_team() -> None:
    # carol (default team) is in hours, but the lead belongs to na.
    rules = make_rules(routing={"after_hours": "queue"})
    away = RepState(away_until=AWAY_INDEFINITELY)
    d = choose_rep(lead(), rules, state(alice=away, bob=away, dan=away), MONDAY)
    assert (d.rep_id, d.route) == (None, "unrouted")


def test_an_excluded_on_call_rep_leaves_the_lead_unrouted() -> None:
    rules = make_rules(routing={"after_hours": "on_call", "on_call": "maria"})
    d = choose_rep(lead(), rules, RoutingState(), NIGHT, exclude=frozenset({"maria"}))
    assert (d.rep_id, d.route) == (None, "unrouted")
    assert "on_call maria is excluded or unknown" in d.notes[-1]


def test_a_missing_on_call_rep_leaves_the_lead_unrouted() -> None:
    rules = make_rules(routing={"after_hours": "on_call", "on_call": "maria"})
    # Validation refuses an unknown on_call; a hand-built Rules must still not crash routing.
    ghost = rules.model_copy(update={"routing": rules.routing.model_copy(update={"on_call": "ghost"})})
    d = choose_rep(lead(), ghost, RoutingState(), NIGHT)
    assert (d.rep_id, d.route) == (None, "unrouted")


def test_when_every_team_rep_is_excluded_the_on_call_rep_takes_it() -> None:
    d = choose_rep(lead(), RULES, RoutingState(), MONDAY, exclude=frozenset({"alice", "bob", "dan"}))
    assert (d.rep_id, d.route) == ("maria", "on_call")
    assert reasons(d)["maria"] == ("chosen", "on call: every rep in team na is excluded")


def test_an_on_call_rep_inside_the_team_keeps_their_place_in_the_candidates() -> None:
    rules = make_rules(teams=[{**TEAMS[0], "reps": ["alice", "maria"]}, TEAMS[1]],
                       reps=[{**r, "max_open": 1} if r["id"] == "maria" else r for r in REPS])
    d = choose_rep(lead(), rules, state(alice=RepState(open_leads=2), maria=RepState(open_leads=1)), MONDAY)
    assert [c.rep_id for c in d.candidates] == ["alice", "maria"]
    assert reasons(d)["maria"] == ("chosen", "on call: every rep in hours in team na is at capacity (at capacity 1/1)")


def test_no_team_and_no_default_is_unrouted_with_a_note() -> None:
    d = choose_rep(lead(country="DE"), make_rules(teams=[TEAMS[0]]), RoutingState(), MONDAY)
    assert (d.rep_id, d.team_id, d.route, d.candidates) == (None, None, "unrouted", ())
    assert d.notes == ("no team matched and there is no default team",)


def test_now_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        choose_rep(lead(), RULES, RoutingState(), datetime(2026, 11, 23, 15))


def test_a_decision_serialises_to_plain_data() -> None:
    d = choose_rep(lead(employees="lots"), RULES, RoutingState(), NIGHT)
    data = json.loads(json.dumps(d.as_dict()))
    assert data["route"] == "queued" and data["rep_id"] == "carol" and data["start_at"] == "2026-11-24T08:00:00Z"
    assert d.reasons[0].startswith("carol: chosen: queued for next shift 2026-11-24 09:00 Europe/Berlin")
    assert d.reasons[-1] == "trait company.employee_count has wrong type str; treated as missing"


# ---------------------------------------------------------------- the rules file


def test_the_shipped_rules_parse_and_route() -> None:
    rules = load_rules(ROOT / "config" / "routing.yaml")
    assert [t.id for t in rules.teams] == ["na", "default"]
    traits = {"email": "jane@acme.io", "company": {"industry": "software", "employee_count": 1200},
              "address": {"country": "US"}}
    d = choose_rep(traits, rules, RoutingState(), datetime(2026, 11, 2, 15, 9, tzinfo=UTC))
    assert (d.rep_id, d.team_id, d.route) == ("bob", "na", "team")
    sunday = choose_rep(traits, rules, RoutingState(), datetime(2026, 11, 22, 10, 0, tzinfo=UTC))
    assert (sunday.rep_id, sunday.route) == ("alice", "queued")
    assert ("bob", "skipped", "outside hours 18:00-08:00 America/Chicago") in [
        (c.rep_id, c.status, c.reason) for c in sunday.candidates
    ]


RULES_TEXT = """\
reps:
  - id: alice
    timezone: America/New_York
    hours: Mon-Fri 08:00-18:00
  - id: bob
    timezone: {tz}
    hours: {hours}
    weight: {weight}
teams:
  - id: na
    reps: [alice, {member}]
routing:
  after_hours: {after_hours}
"""


def rules_text(**changes: str) -> str:
    values = {"tz": "America/Chicago", "hours": "Mon-Fri 08:00-18:00", "weight": "1", "member": "bob",
              "after_hours": "queue"} | changes
    return RULES_TEXT.format(**values)


def test_the_sample_rules_text_is_valid() -> None:
    assert [r.id for r in parse_rules(rules_text()).reps] == ["alice", "bob"]


@pytest.mark.parametrize(
    ("changes", "path", "line", "message"),
    [
        ({"hours": "Mon-Fri 08:00-25:00"}, "reps.1.hours", 7, "impossible time '25:00'"),
        ({"hours": "Mon-Fry 08:00-18:00"}, "reps.1.hours", 7, "unknown day 'Fry'"),
        ({"hours": "Mon-Fri 09:00-09:00"}, "reps.1.hours", 7, "empty time range"),
        ({"tz": "Mars/Olympus_Mons"}, "reps.1.timezone", 6, "unknown time zone 'Mars/Olympus_Mons'"),
        ({"weight": "0"}, "reps.1.weight", 8, "greater than 0"),
        ({"member": "zed"}, "teams.0.reps.1", 11, "unknown rep 'zed'"),
        ({"member": "alice"}, "teams.0.reps", 11, "listed twice"),
        ({"after_hours": "on_call"}, "routing", 12, "needs routing.on_call"),
    ],
)
def test_bad_rules_are_refused_with_the_line(changes: dict[str, str], path: str, line: int, message: str) -> None:
    with pytest.raises(RulesError) as caught:
        parse_rules(rules_text(**changes))
    [error] = caught.value.errors
    assert (error.path, error.line) == (path, line)
    assert message in error.message
