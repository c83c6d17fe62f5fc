"""Acknowledgements: claim and pass, from an SMS reply, the claim page or an operator.

A claim is a compare-and-set on the assignment (``claimed_at IS NULL`` and
still current): exactly one of any number of racing claims wins, and every
pending step of the cadence is cancelled in the same transaction, so no step
starts after the claim commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from routing.config import Rules
from routing.kinds import StepKind
from worker.adapters import db, metrics
from worker.services.assign import Router


@dataclass(frozen=True)
class AckResult:
    ok: bool
    message: str            # what the person is told
    due_steps: tuple[int, ...] = ()
    owner: str | None = None


def current_assignment(session: Session, lead_id: str) -> db.Assignment | None:
    return session.scalar(select(db.Assignment).where(db.Assignment.lead_id == lead_id,
                                                      db.Assignment.current.is_(True))
                          .order_by(db.Assignment.id.desc()).limit(1))


def _cancel_pending(session: Session, assignment_id: int, why: str) -> None:
    session.execute(update(db.AlertStep).where(db.AlertStep.assignment_id == assignment_id,
                                               db.AlertStep.status == "pending")
                    .values(status="cancelled", note=why))


def escalated_to(session: Session, assignment: db.Assignment, rules: Rules, who: str) -> bool:
    """Whether ``who`` is the manager of the assigned rep and an escalation reached them."""
    rep = rules.rep(assignment.rep_id or "")
    if rep is None or rep.manager != who:
        return False
    return session.scalar(select(db.Delivery.id).join(db.AlertStep, db.AlertStep.id == db.Delivery.step_id)
                          .where(db.AlertStep.assignment_id == assignment.id, db.Delivery.recipient == who)
                          .limit(1)) is not None


def claim(session: Session, rules: Rules, lead_id: str, who: str, now: datetime, *, via: str,
          assignment_id: int | None = None) -> AckResult:
    lead = session.get(db.Lead, lead_id)
    if lead is None:
        return AckResult(False, "That lead is unknown.")
    a = current_assignment(session, lead_id)
    if a is None or (assignment_id is not None and a.id != assignment_id):
        return AckResult(False, f"That lead is no longer assigned to you{_owned_by(lead, rules, via)}.", owner=lead.owner)
    if a.claimed_at is not None:
        if a.claimed_by == who:
            return AckResult(True, "You already claimed this lead.", owner=who)
        return AckResult(False, f"Already claimed{_owned_by(lead, rules, via)}.", owner=lead.owner)
    if a.rep_id != who:
        if not escalated_to(session, a, rules, who):
            return AckResult(False, f"That lead is not yours{_owned_by(lead, rules, via)}.", owner=lead.owner)
        # a manager who claims after an escalation takes the lead
        previous_rep = a.rep_id
        router = Router(rules)
        router.end_current(session, lead_id, now, f"taken by manager {who}")
        a = db.Assignment(episode_id=a.episode_id, lead_id=lead_id, rep_id=who, team_id=a.team_id, domain=a.domain,
                          route="manager", reasons={"route": "manager", "notes": [f"claimed by manager via {via}"]},
                          rules_hash=rules.hash, created_at=now, start_at=now, current=True, actor=who)
        session.add(a)
        session.flush()
        lead.owner = who
        router.outbound.lead_event(session, "lead.assigned", lead, now, assignment=a, previous_rep=previous_rep)
        router.outbound.lead_event(session, "lead.reassigned", lead, now, assignment=a, previous_rep=previous_rep)
    won = db.changed_rows(session, update(db.Assignment)
                          .where(db.Assignment.id == a.id, db.Assignment.current.is_(True),
                                 db.Assignment.claimed_at.is_(None))
                          .values(claimed_at=now, claimed_by=who))
    if won != 1:
        return AckResult(False, f"Already claimed{_owned_by(lead, rules, via)}.", owner=lead.owner)
    _cancel_pending(session, a.id, f"claimed by {who}")
    if a.episode_id is not None:
        session.execute(update(db.HotEpisode).where(db.HotEpisode.id == a.episode_id,
                                                    db.HotEpisode.status == "open")
                        .values(status="claimed", closed_at=now))
    session.add(db.Trace(lead_id=lead_id, at=now, kind="claimed", actor=who, detail={"via": via}))
    Router(rules).outbound.lead_event(session, "lead.claimed", lead, now, assignment=a, rep=who,
                                      detail={"via": via})
    # A reply can overtake the sender recording the provider's answer: a delivery not yet settled
    # counts from when it was written, just before it left.
    first_sent = session.scalar(select(func.min(func.coalesce(db.Delivery.sent_at, db.Delivery.created_at)))
                                .join(db.AlertStep, db.AlertStep.id == db.Delivery.step_id)
                                .join(db.Assignment, db.Assignment.id == db.AlertStep.assignment_id)
                                .where(db.Assignment.episode_id == a.episode_id,
                                       db.Delivery.status.not_in(("held", "failed"))))
    if first_sent is not None:
        metrics.observe("time_to_claim_seconds", max(0.0, (now - first_sent).total_seconds()))
    name = rep.display if (rep := rules.rep(who)) else who
    return AckResult(True, f"Claimed: {_lead_name(lead)} is yours, {name}.", owner=who)


def pass_lead(session: Session, rules: Rules, lead_id: str, who: str, now: datetime, *, via: str,
              assignment_id: int | None = None) -> AckResult:
    """Hand the lead to the next best rep at once; counts as a reassignment."""
    lead = session.get(db.Lead, lead_id)
    if lead is None:
        return AckResult(False, "That lead is unknown.")
    a = current_assignment(session, lead_id)
    if a is None or a.rep_id != who or (assignment_id is not None and a.id != assignment_id):
        return AckResult(False, f"That lead is not yours{_owned_by(lead, rules, via)}.", owner=lead.owner)
    if a.claimed_at is not None:
        return AckResult(False, "You already claimed this lead; ask an operator to reassign it.", owner=who)
    episode = session.get(db.HotEpisode, a.episode_id) if a.episode_id else None
    if episode is None:
        return AckResult(False, "This lead has no open hot episode.")
    previous = frozenset(r for r in session.scalars(select(db.Assignment.rep_id)
                                                    .where(db.Assignment.episode_id == episode.id)) if r)
    Router(rules).end_current(session, lead_id, now, f"passed by {who}")
    episode.reassignments += 1
    session.add(db.Trace(lead_id=lead_id, at=now, kind="passed", actor=who, detail={"via": via}))
    due = reassign(session, rules, lead, episode, previous, now)
    return AckResult(True, f"Passed: {_lead_name(lead)} goes to {lead.owner or 'the unrouted queue'}.",
                     tuple(due), owner=lead.owner)


def reassign(session: Session, rules: Rules, lead: db.Lead, episode: db.HotEpisode, previous: frozenset[str],
             now: datetime) -> list[int]:
    """Next best rep (previous ones excluded); past ``max_reassignments``, on-call, else unrouted."""
    router = Router(rules)
    traits = lead.traits or {}
    if episode.reassignments > rules.alerts.max_reassignments:
        on_call = rules.routing.on_call
        if on_call and on_call not in previous:
            return router.assign(session, lead, traits, episode, now, exclude=previous, kind=StepKind.REASSIGNED,
                                 forced_rep=on_call, actor="on-call")
        return router.assign(session, lead, traits, episode, now, exclude=frozenset(r.id for r in rules.reps),
                             kind=StepKind.REASSIGNED)
    return router.assign(session, lead, traits, episode, now, exclude=previous, kind=StepKind.REASSIGNED)


def _lead_name(lead: db.Lead) -> str:
    """The lead as a reply names it: its name, cleaned as alerts clean trait values (the reply goes
    to a rep's phone; the name is whatever a producer sent)."""
    from routing.messages import short_code, sms_value

    traits = lead.traits or {}
    # without a name, the short code the alerts carry: the id is a producer's text too (often an email)
    return sms_value(traits.get("name"), 40) or f"lead {short_code(lead.id)}"


def _owned_by(lead: db.Lead, rules: Rules, via: str) -> str:
    """Who owns the lead now, for a reply to a rep's own phone. A claim link is a bearer token
    that may have been forwarded or forged: a refusal there names nobody."""
    if not lead.owner or via == "link":
        return ""
    rep = rules.rep(lead.owner)
    return f"; {rep.display if rep else lead.owner} owns it now"
