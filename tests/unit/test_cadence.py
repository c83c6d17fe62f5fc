"""Cadence planning, with time passed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from routing.cadence import (
    MAX_VALIDITY,
    MIN_VALIDITY,
    collapse_overdue,
    escalates,
    plan_cadence,
    validity_seconds,
)
from routing.config import Alerts

T0 = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


def test_default_cadence_matches_the_published_one():
    plan = plan_cadence(T0, Alerts())
    offsets = [(p.due_at - T0).total_seconds() for p in plan]
    assert offsets == [0, 90, 180, 300, 600, 1200, 2400, 3600, 3690]
    assert [p.kind for p in plan] == ["first"] + ["retry"] * 7 + ["reassign"]
    assert [p.escalate for p in plan] == [False, False, False, True, True, True, True, True, False]


def test_seconds_scale_cadence_has_the_same_shape():
    alerts = Alerts(retries=["2s", "4s", "6s"], first_contact_sla="2s", escalate_from_retry=2)
    plan = plan_cadence(T0, alerts)
    assert [(p.step, p.kind, (p.due_at - T0).total_seconds(), p.escalate) for p in plan] == [
        (0, "first", 0, False), (1, "retry", 2, False), (2, "retry", 4, True), (3, "retry", 6, True),
        (4, "reassign", 8, False)]


def test_escalation_starts_at_the_configured_retry():
    alerts = Alerts(escalate_from_retry=5)
    assert [s for s in range(0, 10) if escalates(s, alerts)] == [5, 6, 7]


def test_validity_is_the_gap_to_the_next_step_within_twilio_bounds():
    alerts = Alerts()
    assert validity_seconds(0, T0, alerts, T0) == 90
    assert validity_seconds(3, T0, alerts, T0 + timedelta(seconds=300)) == 300
    # sent late: only what is left of the gap
    assert validity_seconds(0, T0, alerts, T0 + timedelta(seconds=80)) == 10
    # never under Twilio's advised floor, never over its ceiling
    assert validity_seconds(0, T0, alerts, T0 + timedelta(seconds=89)) == MIN_VALIDITY
    assert validity_seconds(7, T0, Alerts(first_contact_sla="20h"), T0 + timedelta(hours=1)) == MAX_VALIDITY


def test_overdue_reminders_collapse_into_the_latest():
    due = [(1, T0 + timedelta(seconds=90)), (2, T0 + timedelta(seconds=180)), (3, T0 + timedelta(seconds=300))]
    fire, skip = collapse_overdue(due, T0 + timedelta(minutes=10))
    assert fire == [3] and skip == [1, 2]
    assert collapse_overdue(due[:1], T0 + timedelta(minutes=10)) == ([1], [])
    assert collapse_overdue(due, T0) == ([], [])


@given(st.lists(st.integers(min_value=1, max_value=100_000), min_size=1, max_size=12, unique=True),
       st.integers(min_value=1, max_value=12), st.integers(min_value=1, max_value=86_400))
def test_plan_is_ordered_and_ends_after_the_sla(offsets, escalate_from, sla):
    alerts = Alerts(retries=[f"{s}s" for s in sorted(offsets)], escalate_from_retry=escalate_from,
                    first_contact_sla=f"{sla}s")
    plan = plan_cadence(T0, alerts)
    dues = [p.due_at for p in plan]
    assert dues == sorted(dues) and len(set(dues)) == len(dues)
    assert plan[-1].due_at - plan[-2].due_at == timedelta(seconds=sla)
    assert [p.step for p in plan] == list(range(len(offsets) + 2))
