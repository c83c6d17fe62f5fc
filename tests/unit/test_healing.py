"""routing.auto_away and routing.fairness.credit_back in the pure core (routing/healing.py), and
how they show in the candidates' reasons."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from routing.config import AutoAway, Fairness, RulesError, parse_rules
from routing.healing import FirstAlert, auto_away, credited_back, missed
from routing.selection import RepState, RoutingState, choose_rep

NOW = datetime(2026, 12, 2, 15, 0, tzinfo=UTC)   # a Wednesday
SLA = timedelta(seconds=90)
POLICY = AutoAway(after_missed=3, **{"for": timedelta(hours=2)})


def alert(i: int, minutes_ago: float, claimed_after: float | None = None, ended_after: float | None = None
          ) -> FirstAlert:
    at = NOW - timedelta(minutes=minutes_ago)
    return FirstAlert(i, at, None if claimed_after is None else at + timedelta(seconds=claimed_after),
                      None if ended_after is None else at + timedelta(seconds=ended_after))


def test_a_first_alert_is_missed_only_once_its_sla_has_passed_unclaimed() -> None:
    assert missed(alert(1, 10), SLA, NOW) is True
    assert missed(alert(1, 10, claimed_after=30), SLA, NOW) is False
    assert missed(alert(1, 10, claimed_after=200), SLA, NOW) is True          # a late claim is still a miss
    assert missed(alert(1, 1), SLA, NOW) is None                              # its SLA is still running
    assert missed(alert(1, 10, ended_after=30), SLA, NOW) is None             # taken from the rep in time
    assert missed(alert(1, 10, ended_after=120), SLA, NOW) is True            # reassigned after the miss


def test_auto_away_after_n_misses_in_a_row() -> None:
    two = [alert(1, 30), alert(2, 20)]
    assert auto_away(two, POLICY, SLA, NOW) is None
    decision = auto_away([*two, alert(3, 10)], POLICY, SLA, NOW)
    assert decision is not None
    assert decision.until == NOW + timedelta(hours=2)
    assert decision.missed == (3, 2, 1)
    assert "3 first alerts in a row" in decision.reason and "90s SLA" in decision.reason


def test_a_claim_in_time_breaks_the_run_and_undecided_alerts_are_skipped() -> None:
    broken = [alert(1, 40), alert(2, 30), alert(3, 20, claimed_after=10), alert(4, 10), alert(5, 5)]
    assert auto_away(broken, POLICY, SLA, NOW) is None
    # the newest alert's SLA is still running: the run behind it decides
    running = [alert(1, 40), alert(2, 30), alert(3, 20), alert(4, 0.5)]
    decision = auto_away(running, POLICY, SLA, NOW)
    assert decision is not None and decision.missed == (3, 2, 1)


def test_only_alerts_after_the_reps_last_availability_change_count() -> None:
    alerts = [alert(1, 40), alert(2, 30), alert(3, 20)]
    assert auto_away(alerts, POLICY, SLA, NOW, since=NOW - timedelta(minutes=25)) is None
    assert auto_away(alerts, POLICY, SLA, NOW, since=NOW - timedelta(minutes=45)) is not None


def test_auto_away_is_off_without_its_block() -> None:
    assert auto_away([alert(i, 10 * i) for i in range(1, 10)], None, SLA, NOW) is None
    assert parse_rules("reps: []\n").routing.auto_away is None
    assert parse_rules("reps: []\n").routing.fairness.credit_back is False


def test_rules_file_blocks_and_their_errors() -> None:
    rules = parse_rules("routing:\n  auto_away: {after_missed: 2, for: 30m}\n  fairness: {credit_back: true}\n")
    assert rules.routing.auto_away == AutoAway(after_missed=2, **{"for": timedelta(minutes=30)})
    assert rules.routing.fairness == Fairness(credit_back=True, junk_within=timedelta(hours=1))
    with pytest.raises(RulesError) as err:
        parse_rules("routing:\n  auto_away:\n    after_missed: 0\n    for: soon\n")
    text = str(err.value)
    assert "routing.auto_away.after_missed" in text and "routing.auto_away.for" in text and "line 3" in text


CREDIT = Fairness(credit_back=True)
T0 = NOW - timedelta(hours=3)


@pytest.mark.parametrize(("end_reason", "ended_after", "claimed", "expected"), [
    ("sla expired", timedelta(minutes=20), False, "reassigned away (sla expired)"),
    ("passed by alice", timedelta(minutes=2), False, "reassigned away (passed by alice)"),
    ("taken by manager mar", timedelta(minutes=5), False, "reassigned away (taken by manager mar)"),
    ("released by ops", timedelta(minutes=5), False, "reassigned away (released by ops)"),
    ("assigned by ops", timedelta(minutes=5), False, "reassigned away (assigned by ops)"),
    ("released by ops", timedelta(minutes=5), True, None),             # claimed: the rep worked it
    ("closed as junk", timedelta(minutes=59), True, "closed as junk within 1h"),
    ("closed as junk", timedelta(minutes=61), False, None),            # junk found late: the work was done
    ("closed by ops", timedelta(minutes=5), False, None),               # an ordinary close
    ("new episode", timedelta(days=1), False, None),
])
def test_credit_back(end_reason: str, ended_after: timedelta, claimed: bool, expected: str | None) -> None:
    claimed_at = T0 + timedelta(seconds=30) if claimed else None
    assert credited_back(end_reason, T0, T0 + ended_after, claimed_at, CREDIT) == expected
    assert credited_back(end_reason, T0, T0 + ended_after, claimed_at, Fairness()) is None   # off by default


RULES = parse_rules("""
reps:
  - {id: alice, phone: "+14155550101", timezone: UTC, hours: "Mon-Sun 00:00-24:00"}
  - {id: bob, phone: "+14155550102", timezone: UTC, hours: "Mon-Sun 00:00-24:00"}
teams:
  - {id: default, reps: [alice, bob]}
routing:
  auto_away: {after_missed: 3, for: 2h}
  fairness: {credit_back: true}
""")


def test_explain_reasons_show_an_auto_away_and_the_credit_back() -> None:
    state = RoutingState(reps={
        "alice": RepState(away_until=NOW + timedelta(hours=1), away_reason="auto-away: 3 first alerts in a row"),
        "bob": RepState(assigned_7d={"default": 2}, credited_7d={"default": 1}),
    })
    decision = choose_rep({}, RULES, state, NOW)
    assert decision.rep_id == "bob"
    reasons = dict((c.rep_id, c.reason) for c in decision.candidates)
    assert reasons["alice"] == "away until 2026-12-02 16:00 UTC (auto-away: 3 first alerts in a row)"
    assert reasons["bob"] == "load 2/1=2.00 (1 credited back)"


def test_a_credited_back_lead_moves_the_round_robin() -> None:
    # alice took 3 leads of which 2 were reassigned away: she counts 1 against bob's 2, and gets the next
    counted = RoutingState(reps={"alice": RepState(assigned_7d={"default": 1}, credited_7d={"default": 2}),
                                 "bob": RepState(assigned_7d={"default": 2})})
    assert choose_rep({}, RULES, counted, NOW).rep_id == "alice"
    uncredited = RoutingState(reps={"alice": RepState(assigned_7d={"default": 3}),
                                    "bob": RepState(assigned_7d={"default": 2})})
    assert choose_rep({}, RULES, uncredited, NOW).rep_id == "bob"
