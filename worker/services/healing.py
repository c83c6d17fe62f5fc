"""The shell around :mod:`routing.healing`: load each rep's first alerts and ended assignments,
ask the core, and persist what it decided (an away with its reason, the manager's escalation).

``check_auto_away`` runs on the scheduler's housekeeping thread every few seconds; the
credit-back counts are read by :func:`worker.services.assign.routing_state` at every routing decision.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from routing.config import Rules
from routing.healing import AUTO_AWAY_ACTOR, REASSIGNED_AWAY, FirstAlert, auto_away, credited_back
from routing.kinds import StepKind
from routing.ledger import ROUND_ROBIN_WINDOW
from worker.adapters import db
from worker.services.availability import set_away

if TYPE_CHECKING:
    from worker.adapters.runtime import Runtime

log = logging.getLogger("leadrouter.healing")

MAX_ESCALATIONS = 5   # the manager hears about at most this many of the rep's open leads at once


def credited_7d(session: Session, rules: Rules, now: datetime) -> dict[str, dict[str, int]]:
    """rep -> team -> assignments in the round-robin window that ``credit_back`` takes off the count.

    Only ended assignments whose end reason is one the core credits back are read: a handful
    beside the week's total."""
    if not rules.routing.fairness.credit_back:
        return {}
    prefixes = (*REASSIGNED_AWAY, "closed as junk")
    rows = session.execute(
        select(db.Assignment.rep_id, db.Assignment.team_id, db.Assignment.end_reason, db.Assignment.created_at,
               db.Assignment.ended_at, db.Assignment.claimed_at)
        .where(db.Assignment.rep_id.is_not(None), db.Assignment.team_id.is_not(None),
               db.Assignment.created_at > now - ROUND_ROBIN_WINDOW, db.Assignment.ended_at.is_not(None),
               db.Assignment.current.is_(False),
               or_(*(db.Assignment.end_reason.like(f"{p}%") for p in prefixes)))).all()
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for rep_id, team_id, end_reason, created_at, ended_at, claimed_at in rows:
        if rep_id and team_id and credited_back(end_reason, created_at, ended_at, claimed_at, rules.routing.fairness):
            out[rep_id][team_id] = out[rep_id].get(team_id, 0) + 1
    return dict(out)


def away_reasons(session: Session, now: datetime) -> dict[str, str]:
    """rep -> the reason of an away that ``auto_away`` set (an operator's own aways keep their plain
    ``away`` in the candidates' reasons)."""
    out = {}
    for row in session.scalars(select(db.Setting).where(db.Setting.key.like("away:%"))):
        if isinstance(row.value, dict) and row.value.get("actor") == AUTO_AWAY_ACTOR and row.value.get("reason"):
            out[row.key.removeprefix("away:")] = str(row.value["reason"])
    return out


def first_alerts(session: Session, rep_id: str, after: datetime, limit: int) -> list[FirstAlert]:
    """The rep's newest first alerts fired after ``after``."""
    rows = session.execute(
        select(db.Assignment.id, db.AlertStep.fired_at, db.Assignment.claimed_at, db.Assignment.ended_at)
        .join(db.AlertStep, db.AlertStep.assignment_id == db.Assignment.id)
        .where(db.Assignment.rep_id == rep_id, db.AlertStep.step == 0, db.AlertStep.fired_at > after,
               db.AlertStep.kind.in_((StepKind.FIRST, StepKind.PRIORITY)))
        .order_by(db.AlertStep.fired_at.desc()).limit(limit)).all()
    return [FirstAlert(aid, fired, claimed, ended) for aid, fired, claimed, ended in rows if fired is not None]


def check_auto_away(session: Session, rules: Rules, now: datetime) -> list[int]:
    """Set away every rep whose run of missed first alerts reached ``routing.auto_away.after_missed``;
    returns the escalation steps written for their managers (to dispatch after the commit)."""
    policy = rules.routing.auto_away
    if policy is None:
        return []
    sla = rules.alerts.first_contact_sla
    states = {s.rep_id: s for s in session.scalars(select(db.RepState))}
    due: list[int] = []
    for rep in rules.reps:
        state = states.get(rep.id)
        if state is not None and state.away_until is not None and state.away_until > now:
            continue
        since = state.updated_at if state is not None else None
        after = max(since, now - ROUND_ROBIN_WINDOW) if since is not None else now - ROUND_ROBIN_WINDOW
        decision = auto_away(first_alerts(session, rep.id, after, policy.after_missed * 4 + 10), policy, sla, now,
                             since)
        if decision is None:
            continue
        set_away(session, rules, rep.id, decision.until, actor=AUTO_AWAY_ACTOR, reason=decision.reason, now=now)
        for assignment_id in decision.missed:
            lead_id = session.scalar(select(db.Assignment.lead_id).where(db.Assignment.id == assignment_id))
            session.add(db.Trace(lead_id=lead_id or "", at=now, kind="rep.auto_away", actor=AUTO_AWAY_ACTOR,
                                 detail={"rep": rep.id, "until": decision.until.isoformat(), "reason": decision.reason}))
        log.warning("rep %s set away until %s: %s", rep.id, decision.until.isoformat(), decision.reason)
        due += _tell_manager(session, rules, rep.id, now, decision.reason)
    return due


def _tell_manager(session: Session, rules: Rules, rep_id: str, now: datetime, reason: str) -> list[int]:
    """An escalation, due now, on each lead the rep still holds unclaimed: the manager is alerted
    (and may claim it), as when every channel of a rep fails."""
    rep = rules.rep(rep_id)
    if rep is None or not rep.manager:
        return []
    held = list(session.scalars(select(db.Assignment).where(db.Assignment.rep_id == rep_id,
                                                           db.Assignment.current.is_(True),
                                                           db.Assignment.claimed_at.is_(None))
                                .order_by(db.Assignment.id.desc()).limit(MAX_ESCALATIONS)))
    out = []
    for a in held:
        n = session.scalar(select(func.count()).select_from(db.AlertStep)
                           .where(db.AlertStep.assignment_id == a.id, db.AlertStep.step >= 100)) or 0
        step = db.AlertStep(assignment_id=a.id, lead_id=a.lead_id, step=100 + n, kind=StepKind.ESCALATION,
                            due_at=now, note=reason)
        session.add(step)
        session.flush()
        out.append(step.id)
    return out


def auto_away_chore(rt: Runtime) -> None:
    """One pass for the scheduler's housekeeping thread."""
    from worker.services.dispatch import dispatch_steps

    if rt.rules.routing.auto_away is None:
        return
    with rt.sessions.begin() as session:
        due = check_auto_away(session, rt.rules, rt.now())
    dispatch_steps(rt, due)
