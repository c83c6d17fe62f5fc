"""Turning a hot episode into an assignment: load routing state, ask the core, persist the decision.

Fairness under concurrency comes from the database: on PostgreSQL a
transaction-scoped advisory lock serialises routing decisions (counts read and
the assignment written under the same lock); on SQLite every write
transaction already holds the database's single write lock from BEGIN.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from routing.cadence import plan_cadence
from routing.config import Rules
from routing.events import Event
from routing.kinds import StepKind
from routing.leads import Applied
from routing.ledger import ROUND_ROBIN_WINDOW
from routing.scoring import PRIORITY
from routing.selection import Decision, RepState, RoutingState, choose_rep, lead_domain
from worker.adapters import db
from worker.services.healing import away_reasons, credited_7d
from worker.services.outbound import Emitter

ROUTING_LOCK = 0x1EAD5  # advisory lock key for routing decisions


def lock_routing(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ROUTING_LOCK})


def routing_state(session: Session, rules: Rules, domain: str | None, now: datetime) -> RoutingState:
    """The live equivalent of :class:`routing.ledger.RoutingLedger.state`, by SQL: the same windows,
    ``(now - window, now]``, and only assignments under a team count toward round robin."""
    window = now - rules.routing.open_window
    open_rows = session.execute(
        select(db.Assignment.rep_id, func.count())
        .join(db.Lead, db.Lead.id == db.Assignment.lead_id)
        .where(db.Assignment.current.is_(True), db.Assignment.ended_at.is_(None),
               db.Assignment.rep_id.is_not(None), db.Assignment.created_at > window,
               db.Lead.contacted_at.is_(None) | (db.Lead.contacted_at < db.Assignment.created_at))
        .group_by(db.Assignment.rep_id)
    ).all()
    open_counts = dict(open_rows)
    week = session.execute(
        select(db.Assignment.rep_id, db.Assignment.team_id, func.count())
        .where(db.Assignment.rep_id.is_not(None), db.Assignment.created_at > now - ROUND_ROBIN_WINDOW,
               db.Assignment.team_id.is_not(None))
        .group_by(db.Assignment.rep_id, db.Assignment.team_id)
    ).all()
    per_rep: dict[str, dict[str, int]] = {}
    credited = credited_7d(session, rules, now)   # routing.fairness.credit_back; empty when off
    for rep_id, team_id, n in week:
        rep, team = cast(str, rep_id), cast(str, team_id)   # both IS NOT NULL above
        per_rep.setdefault(rep, {})[team] = n - credited.get(rep, {}).get(team, 0)
    away_why = away_reasons(session, now) if rules.routing.auto_away is not None else {}
    away = dict(session.execute(select(db.RepState.rep_id, db.RepState.away_until)).all())
    reps = {
        r.id: RepState(
            away_until=until if (until := away.get(r.id)) and until > now else None,
            open_leads=open_counts.get(r.id, 0),
            assigned_7d=per_rep.get(r.id, {}),
            away_reason=away_why.get(r.id),
            credited_7d=credited.get(r.id, {}),
        )
        for r in rules.reps
    }
    owners: dict[str, str] = {}
    if domain:
        last = session.scalar(select(db.Assignment.rep_id)
                              .where(db.Assignment.domain == domain, db.Assignment.rep_id.is_not(None))
                              .order_by(db.Assignment.created_at.desc(), db.Assignment.id.desc()).limit(1))
        if last:
            owners[domain] = last
    return RoutingState(reps=reps, domain_owners=owners)


def decision_record(decision: Decision) -> dict[str, Any]:
    return {
        "route": decision.route,
        "rep": decision.rep_id,
        "team": decision.team_id,
        "start_at": decision.start_at.isoformat(),
        "candidates": [{"rep": c.rep_id, "status": c.status, "reason": c.reason} for c in decision.candidates],
        "notes": list(decision.notes),
    }


class Router:
    """What the pipeline calls when a lead turns hot, is contacted, or needs its owner told."""

    def __init__(self, rules: Rules):
        self.rules = rules
        self.outbound = Emitter.for_rules(rules)

    # -- routing
    def route(self, session: Session, lead: db.Lead, traits: Mapping[str, Any], applied: Applied, ev: Event,
              event_id: int, now: datetime) -> list[int]:
        rules = self.rules
        lock_routing(session)
        episode = db.HotEpisode(lead_id=lead.id, opened_at=now, event_id=event_id, event_received_at=ev.received_at,
                                red_hot=applied.outcome.red_hot, status="open", rules_hash=rules.hash)
        session.add(episode)
        session.flush()
        # the previous episode's assignment ends here: its cadence stops, its slot frees
        self.end_current(session, lead.id, now, "new episode")
        self.outbound.lead_event(session, "lead.hot", lead, now,
                                 detail={"episode": episode.id, "red_hot": episode.red_hot, "message_id": ev.message_id})
        due = self.assign(session, lead, traits, episode, now, exclude=frozenset(),
                          kind=StepKind.PRIORITY if applied.outcome.red_hot else StepKind.FIRST)
        if lead.owner is not None:
            self.outbound.slack(session, "lead.hot", lead, now, rep=lead.owner)
        return due

    def assign(self, session: Session, lead: db.Lead, traits: Mapping[str, Any], episode: db.HotEpisode,
               now: datetime, *, exclude: frozenset[str], kind: StepKind, actor: str | None = None,
               forced_rep: str | None = None) -> list[int]:
        rules = self.rules
        domain = lead_domain(traits, rules.free_mail_domains)
        if forced_rep is not None:
            decision = Decision(rep_id=forced_rep, team_id=None, route="manual", start_at=now,
                                candidates=(), notes=(f"assigned by {actor or 'operator'}",))
        else:
            decision = choose_rep(traits, rules, routing_state(session, rules, domain, now), now, exclude=exclude)
        assignment = db.Assignment(
            episode_id=episode.id, lead_id=lead.id, rep_id=decision.rep_id, team_id=decision.team_id,
            domain=domain, route=decision.route, reasons=decision_record(decision), rules_hash=rules.hash,
            created_at=now, start_at=decision.start_at, current=decision.rep_id is not None, actor=actor,
        )
        session.add(assignment)
        session.flush()
        lead.owner = decision.rep_id
        lead.last_routed_at = now
        self._announce(session, lead, assignment, decision, now)
        if decision.rep_id is None:
            episode.status = "unrouted"
            step = db.AlertStep(assignment_id=assignment.id, lead_id=lead.id, step=0, kind=StepKind.UNROUTED, due_at=now)
            session.add(step)
            session.flush()
            return [step.id]
        due = []
        for planned in plan_cadence(decision.start_at, rules.alerts):
            step_kind = kind if planned.step == 0 else planned.kind
            s = db.AlertStep(assignment_id=assignment.id, lead_id=lead.id, step=planned.step, kind=step_kind,
                             due_at=planned.due_at)
            session.add(s)
            if planned.due_at <= now:
                session.flush()
                due.append(s.id)
        session.flush()
        return due

    def _announce(self, session: Session, lead: db.Lead, assignment: db.Assignment, decision: Decision,
                  now: datetime) -> None:
        """The outbound events of a new assignment: assigned (and reassigned), or unrouted."""
        if decision.rep_id is None:
            why = "; ".join(decision.notes) or "no rep is available"
            self.outbound.lead_event(session, "lead.unrouted", lead, now, assignment=assignment, detail={"reason": why})
            self.outbound.slack(session, "lead.unrouted", lead, now, reason=why)
            return
        if not self.outbound.wants("lead.assigned") and not self.outbound.wants("lead.reassigned"):
            return
        previous = session.scalar(select(db.Assignment.rep_id)
                                  .where(db.Assignment.episode_id == assignment.episode_id,
                                         db.Assignment.id != assignment.id, db.Assignment.rep_id.is_not(None))
                                  .order_by(db.Assignment.id.desc()).limit(1))
        self.outbound.lead_event(session, "lead.assigned", lead, now, assignment=assignment, previous_rep=previous)
        if previous is not None and previous != decision.rep_id:
            self.outbound.lead_event(session, "lead.reassigned", lead, now, assignment=assignment,
                                     previous_rep=previous)

    def end_current(self, session: Session, lead_id: str, now: datetime, reason: str) -> list[db.Assignment]:
        current = list(session.scalars(select(db.Assignment).where(db.Assignment.lead_id == lead_id,
                                                                   db.Assignment.current.is_(True))))
        for a in current:
            a.current = False
            a.ended_at = now
            a.end_reason = reason
            session.execute(update(db.AlertStep).where(db.AlertStep.assignment_id == a.id,
                                                       db.AlertStep.status == "pending")
                            .values(status="cancelled", note=reason))
        return current

    # -- other effects of events
    def notify_owner(self, session: Session, lead: db.Lead, action: str, now: datetime) -> list[int]:
        current = session.scalar(select(db.Assignment).where(db.Assignment.lead_id == lead.id,
                                                             db.Assignment.current.is_(True))
                                 .order_by(db.Assignment.id.desc()).limit(1))
        if current is None or current.rep_id is None:
            return []
        n = session.scalar(select(func.count()).select_from(db.AlertStep)
                           .where(db.AlertStep.assignment_id == current.id, db.AlertStep.step >= 100)) or 0
        step = db.AlertStep(assignment_id=current.id, lead_id=lead.id, step=100 + n,
                            kind=StepKind.PRIORITY if action == PRIORITY else StepKind.FYI, due_at=now)
        session.add(step)
        session.flush()
        return [step.id]

    def contacted(self, session: Session, lead: db.Lead, ev: Event, now: datetime) -> None:
        """``Lead Contacted`` stops the cadence; the assignment stays (the rep is working it)."""
        cancelled = db.changed_rows(session, update(db.AlertStep)
                                    .where(db.AlertStep.lead_id == lead.id, db.AlertStep.status == "pending")
                                    .values(status="cancelled", note="lead contacted"))
        session.execute(update(db.HotEpisode).where(db.HotEpisode.lead_id == lead.id, db.HotEpisode.status == "open")
                        .values(status="contacted", closed_at=now))
        session.add(db.Trace(lead_id=lead.id, at=now, kind="contacted",
                             detail={"event": ev.message_id, "cancelled_steps": cancelled}))
        if not self.outbound.wants("lead.contacted"):
            return
        current = session.scalar(select(db.Assignment).where(db.Assignment.lead_id == lead.id,
                                                             db.Assignment.current.is_(True))
                                 .order_by(db.Assignment.id.desc()).limit(1))
        self.outbound.lead_event(session, "lead.contacted", lead, now, assignment=current,
                                 detail={"message_id": ev.message_id})
