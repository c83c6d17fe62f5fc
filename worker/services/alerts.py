"""Firing cadence steps, the short story: claim the due steps, prepare them, fire them.

A step fires exactly once: the claim is a compare-and-set from ``pending`` to ``firing`` that only
one caller wins, and only once the step is due. Preparing decides each claimed step with the
policy of :mod:`routing.alerting` (called off, reassigned, or who hears about it) and writes its
deliveries; firing sends them and finishes the steps. Each delivery, from its row written before
anything leaves to its provider's last word, is the business of :mod:`worker.services.deliveries`.

Steps are fired in batches (:func:`fire_steps`): one transaction claims every step of the batch and
commits all their delivery rows, every request of the batch then goes out at once, and one more
transaction records the answers. A step costs about one provider round trip and a share of two
transactions, however many channels and people it reaches.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from routing import alerting
from routing.cadence import collapse_overdue, in_cadence
from routing.config import Rules
from routing.kinds import CADENCE, OPENING, DeliveryStatus, MessageKind, StepKind, StepStatus
from routing.messages import render_summary
from worker.adapters import db, metrics
from worker.adapters.channels import OutboundMessage
from worker.adapters.retry import is_outage
from worker.services import alert_text, deliveries
from worker.services.alert_text import claim_url, lead_view
from worker.services.claims import reassign
from worker.services.deliveries import (
    Delivery,
    assignment_facts,
    disable_channel,
    lead_facts,
    plan_recipients,
    step_facts,
)
from worker.services.liveness import claimer_id, keep_alive
from worker.services.outbound import Emitter
from worker.services.pause import is_paused
from worker.services.settling import settle_maybe_sent

if TYPE_CHECKING:
    from worker.adapters.runtime import Runtime

# Names other modules and tests import from here.
__all__ = ["BEHIND", "COLLAPSED", "MAX_BATCH", "TAKE_IN_WITHIN", "Batch", "claim", "claim_url",
           "disable_channel", "fire", "fire_steps", "flush_held", "lead_view", "plan_recipients",
           "send_claimed", "settle_maybe_sent"]

log = logging.getLogger("leadrouter.alerts")

MAX_BATCH = 24        # steps one batch may carry when it takes in late steps of other tasks
BEHIND = timedelta(milliseconds=100)   # a step this late is taken by whichever batch runs first
TAKE_IN_WITHIN = timedelta(seconds=60)  # ... unless it is later than this
COLLAPSED = "overdue; collapsed into a later step"


@dataclass
class Batch:
    """Steps through firing: claimed, with their deliveries written in a transaction yet to commit
    (:func:`claim`); then sent (:func:`send_claimed`); and what that leaves for the caller to queue."""

    now: datetime
    won: list[int] = field(default_factory=list)        # the steps claimed: no one else fires them
    deliveries: list[Delivery] = field(default_factory=list)
    timelines: dict[str, alert_text.Timeline] = field(default_factory=dict)
    lateness: list[float] = field(default_factory=list)
    follow_up: list[int] = field(default_factory=list)   # due now because of it: a reassignment's first alert, …
    early: list[tuple[int, datetime]] = field(default_factory=list)   # (step id, due_at) handed over before due

    def add(self, other: Batch) -> None:
        self.follow_up += other.follow_up
        self.early += other.early


# ---------------------------------------------------------------- the story


def fire(rt: Runtime, step_id: int) -> list[int]:
    """Fire one step; returns the ids of steps that became due because of it (a reassignment's first alert)."""
    return fire_steps(rt, [step_id]).follow_up


def fire_steps(rt: Runtime, step_ids: Sequence[int], *, take_in: bool = True) -> Batch:
    """Fire the due steps among ``step_ids`` together; steps not due yet are handed back untouched.

    The story: claim every due step (and, with ``take_in``, others already late) and
    commit its delivery rows (one transaction); send every message of the batch at
    once; record the answers and finish the steps (one more transaction). A batch
    that fails is fired again one step at a time and taking in nothing, so a step
    that cannot be fired holds back no other."""
    ids = list(dict.fromkeys(step_ids))
    if not ids:
        return Batch(rt.now())
    try:
        with deliveries.transaction(rt) as session:
            batch = claim(rt, session, ids, rt.now(), take_in=take_in)
    except Exception as exc:
        if (len(ids) == 1 and not take_in) or is_outage(exc):
            raise
        # Nothing was committed: fire them one at a time, so one bad step holds back no other.
        log.exception("a batch of %d alert steps failed; firing them one at a time", len(ids))
        return _one_by_one(rt, ids)
    return send_claimed(rt, batch)


def claim(rt: Runtime, session: Session, step_ids: Sequence[int], now: datetime, *, take_in: bool = True
          ) -> Batch:
    """In the caller's transaction: claim the due steps among ``step_ids``, prepare them, write their deliveries."""
    batch = Batch(now)
    if is_paused(session):
        return batch
    batch.won, batch.early = _claim_steps(rt, session, step_ids, now, take_in=take_in)
    _prepare(session, rt.rules, batch)
    return batch


def send_claimed(rt: Runtime, batch: Batch) -> Batch:
    """After the commit that claimed them: send every message at once, record the answers, finish the steps."""
    for seconds in batch.lateness:
        metrics.observe("scheduler_lateness_seconds", seconds)
    sends = batch.deliveries
    alert_text.compose(rt.rules, rt.settings, sends, batch.timelines, batch.now)
    if sends:
        deliveries.send(rt, sends)
        follow_up, speed = deliveries.in_transaction(
            rt, lambda session: _finish_fired(session, rt.rules, sends, rt.now()))
        batch.follow_up += follow_up
        deliveries.count(sends, speed)
    return batch


def _one_by_one(rt: Runtime, step_ids: Sequence[int]) -> Batch:
    out = Batch(rt.now())
    for step_id in step_ids:
        try:
            out.add(fire_steps(rt, [step_id], take_in=False))
        except Exception as exc:
            if is_outage(exc):
                raise
            log.exception("alert step %s could not be fired", step_id)
    return out


# ---------------------------------------------------------------- claim


def _overdue(session: Session, now: datetime, leave_out: Sequence[int], limit: int) -> list[int]:
    """Steps already ``BEHIND`` their due time, oldest first: their own tasks are stuck behind others.

    Not those late by more than ``TAKE_IN_WITHIN``: the tick hands those over itself, and a step
    that keeps failing (a bug, bad data) must not be carried into every batch."""
    if limit <= 0:
        return []
    return list(session.scalars(select(db.AlertStep.id)
                                .where(db.AlertStep.status == StepStatus.PENDING, db.AlertStep.due_at <= now - BEHIND,
                                       db.AlertStep.due_at > now - TAKE_IN_WITHIN,
                                       db.AlertStep.id.not_in(leave_out))
                                .order_by(db.AlertStep.due_at).limit(limit)))


def _claim_steps(rt: Runtime, session: Session, step_ids: Sequence[int], now: datetime, *, take_in: bool = True
                 ) -> tuple[list[int], list[tuple[int, datetime]]]:
    """Compare-and-set ``pending`` → ``firing`` on the steps that are due: (won, pending but not due yet).

    Steps of other tasks that are already late join the batch (up to ``MAX_BATCH``):
    when alerting falls behind, batches grow and the backlog goes out together
    instead of each step waiting for a free worker thread. Their own tasks find
    them claimed and do nothing. A step someone else claimed, or that was
    cancelled or collapsed, is in neither list."""
    me = claimer_id()
    keep_alive(rt.redis)
    wanted = list(step_ids) + (_overdue(session, now, step_ids, MAX_BATCH - len(step_ids)) if take_in else [])
    won = set(session.scalars(
        update(db.AlertStep)
        .where(db.AlertStep.id.in_(wanted), db.AlertStep.status == StepStatus.PENDING, db.AlertStep.due_at <= now)
        .values(status=StepStatus.FIRING, claimed_by=me, claimed_at=now)
        .returning(db.AlertStep.id)
        .execution_options(synchronize_session=False)))
    lost = [i for i in step_ids if i not in won]
    early: list[tuple[int, datetime]] = []
    if lost:
        early = [(i, at) for i, at in session.execute(
            select(db.AlertStep.id, db.AlertStep.due_at)
            .where(db.AlertStep.id.in_(lost), db.AlertStep.status == StepStatus.PENDING, db.AlertStep.due_at > now))]
    return [i for i in wanted if i in won], early


# ---------------------------------------------------------------- prepare


def _prepare(session: Session, rules: Rules, batch: Batch) -> None:
    """Decide each claimed step: cancel it, reassign, or write its deliveries.

    The steps with messages to send stay ``firing``, with the deliveries written for
    them; every other step is finished here."""
    now = batch.now
    if not batch.won:
        return
    steps = list(session.scalars(select(db.AlertStep).where(db.AlertStep.id.in_(batch.won))
                                 .order_by(db.AlertStep.id)))
    steps = _one_per_cadence(session, steps, now)
    _collapse_earlier(session, steps, now)
    assignment_ids = {s.assignment_id for s in steps if s.assignment_id is not None}
    assignments = {a.id: a for a in session.scalars(select(db.Assignment)
                                                    .where(db.Assignment.id.in_(assignment_ids)))}
    _move_reminders_after_late_first(session, steps, assignments, now)
    leads = {lead.id: lead for lead in session.scalars(select(db.Lead)
                                                       .where(db.Lead.id.in_({s.lead_id for s in steps})))}
    waits = _reassign_waits(session, rules, steps, now)
    live: list[tuple[db.AlertStep, db.Assignment | None, db.Lead]] = []
    for step in steps:
        assignment = assignments.get(step.assignment_id) if step.assignment_id is not None else None
        lead = leads.get(step.lead_id)
        why = alerting.called_off(step_facts(step), assignment_facts(assignment), lead_facts(lead))
        if why is None and lead is not None and step.id in waits:
            _put_back(step, waits[step.id])
            batch.early.append((step.id, waits[step.id]))
            continue
        batch.lateness.append(max(0.0, (now - step.due_at).total_seconds()))
        if why is not None or lead is None:
            _finish(step, StepStatus.CANCELLED, now, why or "lead closed")
        elif step.kind == StepKind.REASSIGN:
            batch.follow_up += _reassign(session, rules, lead, assignment, now)
            _finish(step, StepStatus.DONE, now, f"reassigned to {lead.owner or 'nobody'}")
        else:
            live.append((step, assignment, lead))
    disabled = _disabled_channels(session, rules, [a for _, a, _ in live])
    todo: list[deliveries.Todo] = []
    for step, assignment, lead in live:
        planned = plan_recipients(session, rules, step, assignment, disabled)
        if planned:
            todo.append((step, assignment, lead, planned))
            if assignment is not None and any(p.kind == MessageKind.ESCALATION for p in planned):
                _announce_escalation(session, rules, step, assignment, lead, planned, now)
        else:
            _finish(step, StepStatus.DONE, now, "nobody to alert")
    batch.deliveries = deliveries.write(session, rules, todo, now)
    sending = {d.step_id for d in batch.deliveries}
    for step, *_ in todo:
        if step.id not in sending:   # held by the hourly cap, or already written by an earlier attempt at this step
            _finish(step, StepStatus.DONE, now)
    batch.timelines = alert_text.timelines(session, {d.lead.id for d in batch.deliveries if d.lead is not None})


def _finish(step: db.AlertStep, status: str, now: datetime, note: str | None = None) -> None:
    step.status = status
    step.fired_at = now
    if note:
        step.note = note


def _announce_escalation(session: Session, rules: Rules, step: db.AlertStep, assignment: db.Assignment,
                         lead: db.Lead, planned: list[alerting.Recipient], now: datetime) -> None:
    """Tell the team channel once per assignment, when reminders first reach the manager."""
    already = session.scalar(select(db.OutboundWebhook.id)
                             .where(db.OutboundWebhook.lead_id == lead.id, db.OutboundWebhook.event == "escalation",
                                    db.OutboundWebhook.created_at >= assignment.created_at).limit(1))
    if already is None:
        manager = next(p.recipient for p in planned if p.kind == MessageKind.ESCALATION)
        Emitter.for_rules(rules).slack(session, "escalation", lead, now, rep=assignment.rep_id, manager=manager,
                                       retry=max(step.step, 1) if step.kind == StepKind.RETRY else 0)


def _one_per_cadence(session: Session, steps: list[db.AlertStep], now: datetime) -> list[db.AlertStep]:
    """Of one cadence's alerts claimed together (all overdue), only the latest goes out; the others are
    skipped, as the tick collapses them (:func:`routing.cadence.collapse_overdue`)."""
    by_cadence: dict[int, dict[int, db.AlertStep]] = defaultdict(dict)
    for s in steps:
        if s.assignment_id is not None and in_cadence(s.kind, s.step):
            by_cadence[s.assignment_id][s.step] = s
    skipped: set[int] = set()
    for group in by_cadence.values():
        _keep, skip = collapse_overdue([(n, s.due_at) for n, s in group.items()], now)
        for n in skip:
            _finish(group[n], StepStatus.SKIPPED, now, COLLAPSED)
            skipped.add(group[n].id)
    return [s for s in steps if s.id not in skipped]


def _move_reminders_after_late_first(session: Session, steps: list[db.AlertStep],
                                     assignments: dict[int, db.Assignment], now: datetime) -> None:
    """A first alert that goes out late moves its cadence's reminders as much (:func:`routing.alerting.late_firsts`)."""
    late = alerting.late_firsts([step_facts(s) for s in steps], now)
    if not late:
        return
    for s in session.scalars(select(db.AlertStep).where(db.AlertStep.assignment_id.in_(late),
                                                        db.AlertStep.status == StepStatus.PENDING,
                                                        db.AlertStep.step > 0,
                                                        db.AlertStep.step < alerting.EXTRA_STEPS)):
        s.due_at = s.due_at + late[s.assignment_id or 0]   # in_(late): never NULL
    for assignment_id, by in late.items():
        assignment = assignments.get(assignment_id)
        if assignment is not None:
            assignment.start_at = assignment.start_at + by
        log.info("assignment %s: first alert %.1f s late; its reminders move as much", assignment_id,
                 by.total_seconds())


def _reassign_waits(session: Session, rules: Rules, steps: list[db.AlertStep], now: datetime
                    ) -> dict[int, datetime]:
    """The reassignment steps among ``steps`` that came too soon, and when they may fire
    (:func:`routing.alerting.reassign_after`): the last alert of their cadence went out (or is
    going out in this batch) less than ``first_contact_sla`` ago."""
    reassigns = {s.assignment_id: s for s in steps if s.kind == StepKind.REASSIGN and s.assignment_id is not None}
    if not reassigns:
        return {}
    last: dict[int, datetime] = {}
    for assignment_id, status, claimed_at, fired_at in session.execute(
            select(db.AlertStep.assignment_id, db.AlertStep.status, db.AlertStep.claimed_at, db.AlertStep.fired_at)
            .where(db.AlertStep.assignment_id.in_(reassigns), db.AlertStep.kind.in_(sorted(CADENCE)),
                   db.AlertStep.step < alerting.EXTRA_STEPS,
                   db.AlertStep.status.in_([StepStatus.DONE, StepStatus.FIRING]))):
        # firing: claimed (in this batch, or by a worker still sending it) and going out about now
        at = fired_at if status == StepStatus.DONE else claimed_at
        if at is not None and assignment_id is not None:   # in_(reassigns): never NULL
            last[assignment_id] = max(at, last.get(assignment_id, at))
    sla = rules.alerts.first_contact_sla
    out: dict[int, datetime] = {}
    for assignment_id, step in reassigns.items():
        at = alerting.reassign_after(last.get(assignment_id), sla, now)
        if at is not None:
            out[step.id] = at
    return out


def _put_back(step: db.AlertStep, due_at: datetime) -> None:
    """Unclaim a step and make it due later; the tick (or the caller, if that is soon) hands it over then."""
    log.info("lead %s: reassignment waits until %s, first_contact_sla after the cadence's last alert",
             step.lead_id, due_at.isoformat())
    step.status = StepStatus.PENDING
    step.claimed_by = None
    step.claimed_at = None
    step.due_at = due_at


def _collapse_earlier(session: Session, steps: list[db.AlertStep], now: datetime) -> None:
    """A retry that fires takes the place of its cadence's earlier alerts still waiting (its first alert,
    earlier retries): they are overdue, and a reminder must never follow its successor. (The tick
    collapses them too; this holds whoever handed the steps over.)"""
    retries = [(s.assignment_id, s.step) for s in steps if s.kind == StepKind.RETRY and s.assignment_id is not None]
    if retries:
        session.execute(update(db.AlertStep)
                        .where(db.AlertStep.status == StepStatus.PENDING,
                               db.AlertStep.kind.in_(sorted(OPENING | {StepKind.RETRY})),
                               or_(*(and_(db.AlertStep.assignment_id == a, db.AlertStep.step < n)
                                     for a, n in retries)))
                        .values(status=StepStatus.SKIPPED, fired_at=now, note=COLLAPSED)
                        .execution_options(synchronize_session=False))


def _disabled_channels(session: Session, rules: Rules, assignments: Iterable[db.Assignment | None]
                       ) -> Callable[[str], dict[str, Any]]:
    """One query for the switched-off channels of every rep these assignments may alert (and their managers)."""
    reps: set[str] = set()
    for a in assignments:
        rep = rules.rep(a.rep_id) if a is not None and a.rep_id else None
        if rep is not None:
            reps.add(rep.id)
            if rep.manager:
                reps.add(rep.manager)
    off: dict[str, dict[str, Any]] = {}
    if reps:
        for rep_id, channels in session.execute(select(db.RepState.rep_id, db.RepState.disabled_channels)
                                                .where(db.RepState.rep_id.in_(reps))):
            off[rep_id] = dict(channels or {})
    return lambda rep_id: off.get(rep_id, {})


# ---------------------------------------------------------------- fire: finish the steps


def _finish_fired(session: Session, rules: Rules, sends: list[Delivery], now: datetime
                  ) -> tuple[list[int], list[float]]:
    """Record the answers and finish the steps: each fired when its last message was answered; a step
    whose every channel to the rep failed escalates now."""
    speed = deliveries.record(session, sends)
    by_step: dict[int, list[Delivery]] = defaultdict(list)
    for d in sends:
        if d.step is not None:
            by_step[d.step.id].append(d)
    follow_up: list[int] = []
    done = []
    for ds in by_step.values():
        step, assignment = ds[0].step, ds[0].assignment
        assert step is not None
        done.append({"id": step.id, "status": StepStatus.DONE,
                     "fired_at": max((d.answered_at for d in ds if d.answered_at), default=now)})
        if assignment is not None and step.kind not in (StepKind.UNROUTED, StepKind.FYI) \
                and alerting.all_failed([(d.recipient, d.status) for d in ds], assignment.rep_id):
            follow_up += _escalate_now(session, rules, step, assignment, now)
    if done:
        session.execute(update(db.AlertStep), done)
    return follow_up, speed


def _escalate_now(session: Session, rules: Rules, step: db.AlertStep, assignment: db.Assignment, now: datetime
                  ) -> list[int]:
    """Every channel of the rep failed: the next step (escalating, if any) is due now instead of later."""
    rep = rules.rep(assignment.rep_id or "")
    if rep is None or not rep.manager:
        return []
    n = session.scalar(select(func.count()).select_from(db.AlertStep)
                       .where(db.AlertStep.assignment_id == assignment.id,
                              db.AlertStep.step >= alerting.EXTRA_STEPS)) or 0
    extra = db.AlertStep(assignment_id=assignment.id, lead_id=assignment.lead_id, step=alerting.EXTRA_STEPS + n,
                         kind=StepKind.ESCALATION, due_at=now, note="every channel of the rep failed")
    session.add(extra)
    session.flush()
    log.warning("lead %s: every channel of rep %s failed, escalating to %s now", assignment.lead_id, rep.id,
                rep.manager)
    return [extra.id]


def _reassign(session: Session, rules: Rules, lead: db.Lead, assignment: db.Assignment | None,
              now: datetime) -> list[int]:
    from worker.services.assign import Router

    if assignment is None or assignment.episode_id is None:
        return []
    episode = session.get(db.HotEpisode, assignment.episode_id)
    if episode is None or episode.status != "open":
        return []
    previous = frozenset(r for r in session.scalars(select(db.Assignment.rep_id)
                                                    .where(db.Assignment.episode_id == episode.id)) if r)
    Router(rules).end_current(session, lead.id, now, "sla expired")
    episode.reassignments += 1
    session.add(db.Trace(lead_id=lead.id, at=now, kind="reassigned", actor=None,
                         detail={"from": assignment.rep_id, "reason": "no claim within the cadence"}))
    return reassign(session, rules, lead, episode, previous, now)


# ---------------------------------------------------------------- the hourly cap's summary


def flush_held(rt: Runtime, now: datetime | None = None) -> int:
    """Alerts held back by a rep's hourly cap, summarized in one message once the window reopens.

    The held rows are moved to ``summarized`` by a compare-and-set, so of two
    schedulers only one sends the summary."""
    rules = rt.rules
    now = now or rt.now()
    sends: list[Delivery] = []
    with rt.sessions.begin() as session:
        held = list(session.scalars(select(db.Delivery).where(db.Delivery.status == DeliveryStatus.HELD)
                                    .order_by(db.Delivery.id).limit(500)))
        by_rep: dict[str, list[db.Delivery]] = {}
        for d in held:
            by_rep.setdefault(d.recipient, []).append(d)
        for rep_id, rows in by_rep.items():
            rep = rules.rep(rep_id)
            if rep is None or deliveries.hourly_counts(session, [rep_id], now).get(rep_id, 0) >= rules.alerts.hourly_cap:
                continue
            won = db.changed_rows(session, update(db.Delivery)
                                  .where(db.Delivery.id.in_([d.id for d in rows]),
                                         db.Delivery.status == DeliveryStatus.HELD)
                                  .values(status=DeliveryStatus.SUMMARIZED, updated_at=now))
            if won != len(rows):
                continue
            lead_ids = list(dict.fromkeys(d.lead_id for d in rows))
            leads = [session.get(db.Lead, lid) for lid in lead_ids]
            views = [lead_view(session, lead, rules) for lead in leads if lead is not None]
            text = render_summary(rep.display, views, "the last hour")
            off = deliveries.disabled_of(session, rep_id)
            for channel, to in alerting.addresses(rep):
                if channel in off or channel == "voice":   # a summary is read, not called
                    continue
                row = db.Delivery(step_id=None, lead_id=lead_ids[0], recipient=rep_id, channel=channel, to=to,
                                  status=DeliveryStatus.PENDING, created_at=now, updated_at=now)
                session.add(row)
                session.flush()
                msg = OutboundMessage(delivery_id=str(row.id), channel=channel, to=to,
                                      subject=text.subject if channel != "sms" else None,
                                      text=text.sms if channel == "sms" else text.text,
                                      html=text.html if channel == "email" else None)
                sends.append(Delivery(row.id, rep_id, channel, to, message=msg))
    deliveries.send_and_record(rt, sends)
    return len(sends)
