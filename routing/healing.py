"""Routing that heals itself: ``routing.auto_away`` and ``routing.fairness.credit_back``.

- **auto_away**: a rep who lets ``after_missed`` first alerts in a row pass the
  first-contact SLA unclaimed is set away for ``auto_away.for``, with a reason. Only
  first alerts sent after the rep's last change of availability count, so a rep
  who comes back (or is set back) starts with a clean run; an alert whose lead was
  taken from the rep before its SLA ran out (closed, released, reassigned by an
  operator) is nobody's miss and is skipped, as is one whose SLA is still running.
- **credit_back**: an assignment that ended because the lead was reassigned away
  from the rep (no claim within the cadence, a pass, a manager taking it, an
  operator's assign or release), or that was closed as junk within
  ``fairness.junk_within`` of being made, does not count toward that rep's 7-day
  round-robin total. The rep who took the lead over has an assignment of their
  own, which counts for them: the weighted split follows the work actually done.

Pure: no I/O; ``now`` is passed in. The worker loads the facts (``worker.services.healing``)
and persists what these functions decide.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from routing.config import AutoAway, Fairness
from routing.durations import format_duration

# how assignments.end_reason starts when the lead was taken away from the rep (worker/services/claims.py,
# worker/services/alerts.py, worker/services/operator.py write them)
REASSIGNED_AWAY = ("sla expired", "passed by", "taken by manager", "assigned by", "released by")
CLOSED_AS_JUNK = "closed as junk"
AUTO_AWAY_ACTOR = "auto-away"


@dataclass(frozen=True)
class FirstAlert:
    """A first alert a rep was sent: when, when (if ever) they claimed it, and when the assignment
    ended (None while it stands)."""

    assignment_id: int
    alerted_at: datetime
    claimed_at: datetime | None = None
    ended_at: datetime | None = None


@dataclass(frozen=True)
class AwayDecision:
    until: datetime
    reason: str
    missed: tuple[int, ...]          # the assignments whose first alerts were missed, newest first


def missed(alert: FirstAlert, sla: timedelta, now: datetime) -> bool | None:
    """True: the SLA passed with no claim (a late claim is still a miss). False: claimed in time.
    None: not decided yet, or the lead was taken from the rep before the SLA ran out."""
    deadline = alert.alerted_at + sla
    if alert.claimed_at is not None and alert.claimed_at <= deadline:
        return False
    if now < deadline:
        return None
    if alert.claimed_at is None and alert.ended_at is not None and alert.ended_at < deadline:
        return None
    return True


def auto_away(alerts: Sequence[FirstAlert], policy: AutoAway | None, sla: timedelta, now: datetime,
              since: datetime | None = None) -> AwayDecision | None:
    """Whether to set the rep away now, from their first alerts (any order)."""
    if policy is None:
        return None
    run: list[int] = []
    for alert in sorted(alerts, key=lambda a: a.alerted_at, reverse=True):
        if since is not None and alert.alerted_at <= since:
            break
        verdict = missed(alert, sla, now)
        if verdict is None:
            continue
        if not verdict:
            break
        run.append(alert.assignment_id)
        if len(run) >= policy.after_missed:
            return AwayDecision(
                until=now + policy.for_,
                reason=(f"auto-away: {len(run)} first alerts in a row unclaimed within the "
                        f"{format_duration(sla)} SLA; back in {format_duration(policy.for_)}"),
                missed=tuple(run))
    return None


def credited_back(end_reason: str | None, created_at: datetime, ended_at: datetime | None,
                  claimed_at: datetime | None, policy: Fairness) -> str | None:
    """Why this ended assignment does not count toward its rep's round robin, or None if it counts."""
    if not policy.credit_back or ended_at is None or not end_reason:
        return None
    if end_reason.startswith(CLOSED_AS_JUNK):
        if ended_at - created_at <= policy.junk_within:
            return f"closed as junk within {format_duration(policy.junk_within)}"
        return None
    if claimed_at is None and end_reason.startswith(REASSIGNED_AWAY):
        return f"reassigned away ({end_reason})"
    return None
