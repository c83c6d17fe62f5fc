"""Cadence planning: when each alert of an assignment is due, pure and clock-free.

An assignment's cadence is a fixed list of steps computed once, when the
assignment is made: step 0 (the first alert) at ``first_at``; one retry per
offset in ``alerts.retries``; and a final ``reassign`` step once
``first_contact_sla`` has passed after the last retry. The worker stores the
steps as rows and a scheduler tick fires whichever are due.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from routing.config import Alerts
from routing.kinds import CADENCE, OPENING, StepKind

__all__ = ["CADENCE", "OPENING", "FIRST", "RETRY", "REASSIGN"]

FIRST, RETRY, REASSIGN = StepKind.FIRST, StepKind.RETRY, StepKind.REASSIGN
MIN_VALIDITY, MAX_VALIDITY = 1, 36000  # Twilio's ValidityPeriod bounds (seconds)


@dataclass(frozen=True, slots=True)
class PlannedStep:
    step: int           # 0 = first alert, 1..n = retries, n+1 = reassignment
    kind: StepKind      # first, retry or reassign
    due_at: datetime
    escalate: bool      # the rep's manager is alerted too


def plan_cadence(first_at: datetime, alerts: Alerts) -> list[PlannedStep]:
    steps = [PlannedStep(0, FIRST, first_at, False)]
    for i, offset in enumerate(alerts.retries, start=1):
        steps.append(PlannedStep(i, RETRY, first_at + offset, i >= alerts.escalate_from_retry))
    last = alerts.retries[-1] if alerts.retries else timedelta(0)
    steps.append(PlannedStep(len(alerts.retries) + 1, REASSIGN, first_at + last + alerts.first_contact_sla, False))
    return steps


def escalates(step: int, alerts: Alerts) -> bool:
    """Whether cadence step ``step`` also alerts the manager (retries from ``escalate_from_retry`` on)."""
    return 1 <= step <= len(alerts.retries) and step >= alerts.escalate_from_retry


def validity_seconds(step: int, first_at: datetime, alerts: Alerts, now: datetime) -> int:
    """How long an SMS sent for ``step`` may wait in the provider's queue: no longer than the gap to
    the next step, so a stale reminder is never delivered after its successor."""
    plan = plan_cadence(first_at, alerts)
    later = [p.due_at for p in plan if p.step > step and p.kind != REASSIGN] or [p.due_at for p in plan if p.step > step]
    if not later:
        return MAX_VALIDITY
    gap = int((later[0] - now).total_seconds())
    return max(MIN_VALIDITY, min(MAX_VALIDITY, gap))


def in_cadence(kind: str, step: int) -> bool:
    """Whether a step of this kind and number is one of an assignment's cadence alerts (not a note)."""
    return kind in CADENCE and 0 <= step < 100


def collapse_overdue(due: list[tuple[int, datetime]], now: datetime) -> tuple[list[int], list[int]]:
    """Given one assignment's due cadence steps ``(step, due_at)`` (its first alert, its retries), return
    (fire, skip).

    After an outage a cadence's overdue steps collapse into its latest one: one reminder, not a
    burst. The steps skipped are recorded as such, never sent."""
    overdue = sorted(s for s, at in due if at <= now)
    if len(overdue) <= 1:
        return overdue, []
    return [overdue[-1]], overdue[:-1]
