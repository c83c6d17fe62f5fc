"""Firing cadence steps: claim them, write their deliveries, send them, record what happened.

A step fires exactly once: the claim is a compare-and-set from ``pending`` to
``firing`` that only one caller wins, and only once the step is due. Each
delivery row (one person, one channel) is written and committed *before* its
request leaves, and updated after, so a worker that dies mid-send leaves a row
that says "maybe sent" and nothing is sent twice for that step and channel: the
row's unique key (step, recipient, channel) forbids it.

Steps are fired in batches (:func:`fire_steps`): one transaction claims every
step of the batch and commits all their delivery rows, every request of the
batch then goes out at once from a small thread pool (the provider SDKs block on
I/O), and one more transaction records the answers. A step costs about one
provider round trip and a share of two transactions, however many channels and
people it reaches.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import and_, func, insert, or_, select, union_all, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from routing.cadence import collapse_overdue, escalates, in_cadence, validity_seconds
from routing.config import Rep, Rules
from routing.kinds import (
    CLAIMABLE,
    CLAIMABLE_STEPS,
    EXPIRING,
    OPENING,
    DeliveryStatus,
    MessageKind,
    StepKind,
    StepStatus,
    message_of,
)
from routing.messages import AlertText, LeadView, render_alert
from routing.scoring import condition_holds, describe_condition
from worker import db, metrics
from worker.channels import (
    Channel,
    ConsoleChannel,
    NotSupported,
    OutboundMessage,
    SendGridEmailChannel,
    Sent,
    TransportError,
    TwilioSmsChannel,
    send_with_retry,
)
from worker.channels.twilio_sms import FIND_LIMIT
from worker.claims import reassign
from worker.db import now_utc
from worker.liveness import claimer_id, keep_alive
from worker.outbound import Emitter
from worker.runtime import get_runtime
from worker.settings import Settings
from worker.tokens import ClaimToken, sign

log = logging.getLogger("leadrouter.alerts")

TIMELINE = 20   # engagement events an alert shows


# ---------------------------------------------------------------- channels


_channels: dict[tuple[int, str], Channel] = {}
_channels_lock = threading.Lock()


def channel_for(kind: str, settings: Settings) -> Channel:
    """The process's channel for ``sms`` or ``email``; the console when the provider is not configured."""
    key = (id(settings), kind)
    with _channels_lock:
        ch = _channels.get(key)
        if ch is None:
            ch = _build_channel(kind, settings)
            _channels[key] = ch
        return ch


def _build_channel(kind: str, s: Settings) -> Channel:
    if kind == "voice":
        from worker.voice import voice_channel

        return cast(Channel, voice_channel(s))
    if kind == "sms" and s.twilio_account_sid and s.twilio_auth_token and (
            s.twilio_from_number or s.twilio_messaging_service_sid):
        return TwilioSmsChannel(s.twilio_account_sid, s.twilio_auth_token, from_number=s.twilio_from_number,
                                messaging_service_sid=s.twilio_messaging_service_sid,
                                status_callback_url=f"{s.public_url.rstrip('/')}/webhooks/twilio/status",
                                api_base_url=s.twilio_api_base_url, timeout=10)
    if kind == "email" and s.sendgrid_api_key and s.sendgrid_from_email:
        return SendGridEmailChannel(s.sendgrid_api_key, s.sendgrid_from_email, api_base_url=s.sendgrid_api_base_url,
                                    timeout=10)
    return ConsoleChannel()


def reset_channels() -> None:
    with _channels_lock:
        _channels.clear()


# ---------------------------------------------------------------- what a step sends


@dataclass(frozen=True)
class Planned:
    """One delivery to make: who, how, what."""

    recipient: str          # rep id, or the address itself for unrouted notices
    channel: str            # sms | email
    to: str
    kind: MessageKind
    rep_name: str
    claim_rep: str | None   # whose claim token goes in the message


def lead_view(session: Session, lead: db.Lead, rules: Rules) -> LeadView:
    return _view(lead, _timelines(session, [lead.id]).get(lead.id, []), rules)


Timeline = list[tuple[datetime, str | None, float]]


def _timelines(session: Session, lead_ids: Iterable[str]) -> dict[str, Timeline]:
    """Each lead's latest track events, newest first: one statement, each lead read through its own index range."""
    ids = sorted(set(lead_ids))
    if not ids:
        return {}
    parts = [select(db.Event.lead_id, db.Event.timestamp, db.Event.name, db.Event.points)
             .where(db.Event.lead_id == lead_id, db.Event.type == "track")
             .order_by(db.Event.timestamp.desc()).limit(TIMELINE).subquery() for lead_id in ids]
    stmt = select(parts[0]) if len(parts) == 1 else union_all(*(select(part) for part in parts))
    out: dict[str, Timeline] = {}
    for lead_id, at, name, points in session.execute(stmt):
        out.setdefault(lead_id, []).append((at, name, points))
    for rows in out.values():
        rows.sort(key=lambda row: row[0], reverse=True)
    return out


def _view(lead: db.Lead, timeline: Timeline, rules: Rules) -> LeadView:
    traits = lead.traits or {}
    qualification = [describe_condition(c) for c in rules.scoring.red_hot.all if condition_holds(traits, c)] \
        if lead.tier == "red_hot" else []
    return LeadView(lead_id=lead.id, traits=traits, score=lead.score, tier=lead.tier, breakdown=lead.breakdown or {},
                    timeline=[(t, n or "", p) for t, n, p in reversed(timeline)], qualification=qualification)


def _addresses(rep: Rep) -> list[tuple[str, str]]:
    out = []
    for ch in rep.channels:
        if ch == "sms" and rep.phone:
            out.append(("sms", rep.phone))
        elif ch == "email" and rep.email:
            out.append(("email", rep.email))
        elif ch == "voice" and rep.phone:
            out.append(("voice", rep.phone))
        elif ch == "console":
            out.append(("console", rep.email or rep.phone or rep.id))
    return out


def _disabled(session: Session, rep_id: str) -> dict[str, Any]:
    state = session.get(db.RepState, rep_id)
    return dict(state.disabled_channels or {}) if state else {}


def plan_recipients(session: Session, rules: Rules, step: db.AlertStep, assignment: db.Assignment | None,
                    disabled: Callable[[str], dict[str, Any]] | None = None) -> list[Planned]:
    """Who hears about this step, on which channels (disabled channels left out).

    ``disabled`` looks up a rep's switched-off channels; a batch passes one that
    answers from rows it loaded together."""
    if step.kind == StepKind.UNROUTED:
        out = []
        for addr in rules.routing.unrouted_notify:
            channel = "sms" if addr.startswith("+") else "email"
            out.append(Planned(addr, channel, addr, MessageKind.UNROUTED, "RevOps", None))
        return out
    if assignment is None or assignment.rep_id is None:
        return []
    rep = rules.rep(assignment.rep_id)
    if rep is None:
        log.error("step %s: rep %s is no longer in the rules", step.id, assignment.rep_id)
        return []
    kind = message_of(step.kind)
    if kind is None:
        return []
    people: list[tuple[Rep, MessageKind]] = [] if step.kind == StepKind.ESCALATION else [(rep, kind)]
    if (step.kind == StepKind.ESCALATION or (step.kind == StepKind.RETRY and escalates(step.step, rules.alerts))) \
            and rep.manager:
        manager = rules.rep(rep.manager)
        if manager is not None:
            people.append((manager, MessageKind.ESCALATION))
    out = []
    for person, msg_kind in people:
        off = disabled(person.id) if disabled is not None else _disabled(session, person.id)
        for channel, to in _addresses(person):
            if channel in off or not rules.alerts.channels.allows(msg_kind, channel):
                continue
            out.append(Planned(person.id, channel, to, msg_kind, person.display, person.id))
    return out


def claim_url(settings: Settings, rules: Rules, rep_id: str, assignment: db.Assignment, now: datetime) -> str:
    expires = int((now + rules.alerts.claim_token_ttl).timestamp())
    token = sign(settings.secret_key, ClaimToken(rep_id, assignment.lead_id, assignment.id, expires))
    return f"{settings.public_url.rstrip('/')}/claim/{token}"


# ---------------------------------------------------------------- firing

# Provider requests in flight at once, per worker process. A provider answers in 0.1-0.3 s,
# so this many threads carry about 100 requests a second; a waiting thread costs next to nothing.
SEND_THREADS = 32
MAX_BATCH = 24        # steps one batch may carry when it takes in late steps of other tasks
BEHIND = timedelta(milliseconds=100)   # a step this late is taken by whichever batch runs first
TAKE_IN_WITHIN = timedelta(seconds=60)  # ... unless it is later than this
RECORD_ATTEMPTS = 3    # the providers have answered: a short database outage must not lose what they said


@dataclass
class Fired:
    """What firing a batch leaves for the caller to queue."""

    follow_up: list[int] = field(default_factory=list)   # due now because of it: a reassignment's first alert, …
    early: list[tuple[int, datetime]] = field(default_factory=list)   # (step id, due_at) handed over before due

    def add(self, other: Fired) -> None:
        self.follow_up += other.follow_up
        self.early += other.early


@dataclass
class _Send:
    delivery_id: int
    step_id: int | None
    recipient: str
    channel: str
    message: OutboundMessage
    first_alert_of: int | None  # episode id when this is the episode's first alert (speed-to-lead)
    outcome: DeliveryStatus = DeliveryStatus.PENDING
    provider_id: str | None = None
    error: str | None = None
    error_kind: str | None = None
    answered_at: datetime | None = None   # when the provider answered, or the attempt gave up


@dataclass
class _Firing:
    """A claimed step whose delivery rows are committed and whose messages are about to leave."""

    step: db.AlertStep
    assignment: db.Assignment | None
    sends: list[_Send] = field(default_factory=list)


_sqlite_writer = threading.Lock()


@contextmanager
def _transaction() -> Iterator[Session]:
    """A transaction of the alert path. SQLite has one writer at a time and its waiters poll
    with growing sleeps, first come not first served; so this process's threads queue on a
    lock of their own and at most one of them waits on the database, and the normal lane
    starts no new batch meanwhile (:func:`worker.db.urgent`)."""
    rt = get_runtime()
    serial = rt.engine.dialect.name == "sqlite"
    if serial:
        _sqlite_writer.acquire()
    try:
        with db.urgent(rt.engine), rt.sessions.begin() as session:
            yield session
    finally:
        if serial:
            _sqlite_writer.release()


def _is_outage(exc: BaseException) -> bool:
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


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


def _claim_steps(session: Session, step_ids: Sequence[int], now: datetime, *, take_in: bool = True
                 ) -> tuple[list[int], list[tuple[int, datetime]]]:
    """Compare-and-set ``pending`` → ``firing`` on the steps that are due: (won, pending but not due yet).

    Steps of other tasks that are already late join the batch (up to ``MAX_BATCH``):
    when alerting falls behind, batches grow and the backlog goes out together
    instead of each step waiting for a free worker thread. Their own tasks find
    them claimed and do nothing. A step someone else claimed, or that was
    cancelled or collapsed, is in neither list."""
    rt = get_runtime()
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


def _finish(session: Session, step: db.AlertStep, status: str, now: datetime, note: str | None = None) -> None:
    step.status = status
    step.fired_at = now
    if note:
        step.note = note


def _hourly_count(session: Session, rep_id: str, now: datetime) -> int:
    return _hourly_counts(session, [rep_id], now).get(rep_id, 0)


def _hourly_counts(session: Session, rep_ids: Iterable[str], now: datetime) -> dict[str, int]:
    """Steps that alerted each rep in the last hour (held ones do not count)."""
    ids = sorted(set(rep_ids))
    if not ids:
        return {}
    rows = session.execute(select(db.Delivery.recipient, func.count(func.distinct(db.Delivery.step_id)))
                           .where(db.Delivery.recipient.in_(ids), db.Delivery.status != DeliveryStatus.HELD,
                                  db.Delivery.created_at > now - timedelta(hours=1))
                           .group_by(db.Delivery.recipient))
    return {recipient: int(n) for recipient, n in rows}


def fire(step_id: int) -> list[int]:
    """Fire one step; returns the ids of steps that became due because of it (a reassignment's first alert)."""
    return fire_steps([step_id]).follow_up


@dataclass
class Claimed:
    """Steps claimed and their delivery rows written, in a transaction that has yet to commit;
    :func:`send_claimed` takes it from there once it has."""

    now: datetime
    won: list[int] = field(default_factory=list)        # the steps claimed: no one else fires them
    out: Fired = field(default_factory=Fired)
    firing: list[_Firing] = field(default_factory=list)
    drafts: list[_Draft] = field(default_factory=list)
    timelines: dict[str, Timeline] = field(default_factory=dict)
    lateness: list[float] = field(default_factory=list)


def claim(session: Session, rules: Rules, step_ids: Sequence[int], now: datetime, *, take_in: bool = True
          ) -> Claimed:
    """In the caller's transaction: claim the due steps among ``step_ids`` and write their deliveries."""
    from worker.ops import is_paused

    claimed = Claimed(now)
    if is_paused(session):
        return claimed
    claimed.won, claimed.out.early = _claim_steps(session, step_ids, now, take_in=take_in)
    claimed.firing, claimed.drafts, claimed.timelines = _prepare(session, rules, claimed.won, now, claimed.out,
                                                                 claimed.lateness)
    return claimed


def fire_steps(step_ids: Sequence[int], *, take_in: bool = True) -> Fired:
    """Fire the due steps among ``step_ids`` together; steps not due yet are handed back untouched.

    The story: claim every due step (and, with ``take_in``, others already late) and
    commit its delivery rows (one transaction); send every message of the batch at
    once; record the answers and finish the steps (one more transaction). A batch
    that fails is fired again one step at a time and taking in nothing, so a step
    that cannot be fired holds back no other."""
    ids = list(dict.fromkeys(step_ids))
    if not ids:
        return Fired()
    try:
        with _transaction() as session:
            claimed = claim(session, get_runtime().rules, ids, now_utc(), take_in=take_in)
    except Exception as exc:
        if (len(ids) == 1 and not take_in) or _is_outage(exc):
            raise
        # Nothing was committed: fire them one at a time, so one bad step holds back no other.
        log.exception("a batch of %d alert steps failed; firing them one at a time", len(ids))
        return _one_by_one(ids)
    return send_claimed(claimed)


def send_claimed(claimed: Claimed) -> Fired:
    """After the commit that claimed them: send every message at once, record the answers, finish the steps."""
    rt = get_runtime()
    out, firing = claimed.out, claimed.firing
    for seconds in claimed.lateness:
        metrics.observe("scheduler_lateness_seconds", seconds)
    sends = _compose(rt.rules, rt.settings, claimed.drafts, claimed.timelines, claimed.now)
    by_step: dict[int | None, list[_Send]] = {}
    for item in sends:
        by_step.setdefault(item.step_id, []).append(item)
    for f in firing:
        f.sends = by_step.get(f.step.id, [])
    if sends:
        deliver(sends)
        follow_up, speed = _in_transaction(lambda session: _settle(session, rt.rules, firing, sends))
        out.follow_up += follow_up
        _count(sends, speed)
    return out


def _one_by_one(step_ids: Sequence[int]) -> Fired:
    out = Fired()
    for step_id in step_ids:
        try:
            out.add(fire_steps([step_id], take_in=False))
        except Exception as exc:
            if _is_outage(exc):
                raise
            log.exception("alert step %s could not be fired", step_id)
    return out


def _prepare(session: Session, rules: Rules, step_ids: list[int], now: datetime, out: Fired,
             lateness: list[float]) -> tuple[list[_Firing], list[_Draft], dict[str, Timeline]]:
    """Decide each claimed step: cancel it, reassign, or write its deliveries.

    The steps with messages to send come back still ``firing``, with the rows
    written for them and what their text needs; every other step is finished here."""
    if not step_ids:
        return [], [], {}
    steps = list(session.scalars(select(db.AlertStep).where(db.AlertStep.id.in_(step_ids))
                                 .order_by(db.AlertStep.id)))
    steps = _one_per_cadence(session, steps, now)
    _collapse_earlier(session, steps, now)
    assignment_ids = {s.assignment_id for s in steps if s.assignment_id is not None}
    assignments = {a.id: a for a in session.scalars(select(db.Assignment)
                                                    .where(db.Assignment.id.in_(assignment_ids)))}
    _move_reminders_after_late_first(session, steps, assignments, now)
    leads = {lead.id: lead for lead in session.scalars(select(db.Lead)
                                                       .where(db.Lead.id.in_({s.lead_id for s in steps})))}
    todo: list[tuple[db.AlertStep, db.Assignment | None, db.Lead, list[Planned]]] = []
    live: list[tuple[db.AlertStep, db.Assignment | None, db.Lead]] = []
    for step in steps:
        lateness.append(max(0.0, (now - step.due_at).total_seconds()))
        assignment = assignments.get(step.assignment_id) if step.assignment_id is not None else None
        lead = leads.get(step.lead_id)
        why = _called_off(step, assignment, lead)
        if why is not None or lead is None:
            _finish(session, step, StepStatus.CANCELLED, now, why or "lead closed")
        elif step.kind == StepKind.REASSIGN:
            out.follow_up += _reassign(session, rules, lead, assignment, now)
            _finish(session, step, StepStatus.DONE, now, f"reassigned to {lead.owner or 'nobody'}")
        else:
            live.append((step, assignment, lead))
    disabled = _disabled_channels(session, rules, [a for _, a, _ in live])
    for step, assignment, lead in live:
        planned = plan_recipients(session, rules, step, assignment, disabled)
        if planned:
            todo.append((step, assignment, lead, planned))
            if assignment is not None and any(p.kind == MessageKind.ESCALATION for p in planned):
                _announce_escalation(session, rules, step, assignment, lead, planned, now)
        else:
            _finish(session, step, StepStatus.DONE, now, "nobody to alert")
    drafts = _write_all(session, rules, todo, now)
    with_drafts = {d.step.id for d in drafts}
    firing = []
    for step, assignment, _lead, _planned in todo:
        if step.id in with_drafts:
            firing.append(_Firing(step, assignment))
        else:   # held by the hourly cap, or already written by an earlier attempt at this step
            _finish(session, step, StepStatus.DONE, now)
    return firing, drafts, _timelines(session, {d.lead.id for d in drafts})


def _announce_escalation(session: Session, rules: Rules, step: db.AlertStep, assignment: db.Assignment,
                         lead: db.Lead, planned: list[Planned], now: datetime) -> None:
    """Tell the team channel once per assignment, when reminders first reach the manager."""
    already = session.scalar(select(db.OutboundWebhook.id)
                             .where(db.OutboundWebhook.lead_id == lead.id, db.OutboundWebhook.event == "escalation",
                                    db.OutboundWebhook.created_at >= assignment.created_at).limit(1))
    if already is None:
        manager = next(p.recipient for p in planned if p.kind == MessageKind.ESCALATION)
        Emitter.for_rules(rules).slack(session, "escalation", lead, now, rep=assignment.rep_id, manager=manager,
                                       retry=max(step.step, 1) if step.kind == StepKind.RETRY else 0)


COLLAPSED = "overdue; collapsed into a later step"
LATE_FIRST = timedelta(seconds=1)   # a first alert this late moves its cadence's reminders along with it


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
            _finish(session, group[n], StepStatus.SKIPPED, now, COLLAPSED)
            skipped.add(group[n].id)
    return [s for s in steps if s.id not in skipped]


def _move_reminders_after_late_first(session: Session, steps: list[db.AlertStep],
                                     assignments: dict[int, db.Assignment], now: datetime) -> None:
    """Reminders are due at their offsets after the first alert: when the first alert goes out late
    (a backlog, a short outage), its cadence starts that much later, so the first reminder never
    lands right on the heels of the alert it reminds of."""
    late = {s.assignment_id: now - s.due_at for s in steps
            if s.kind in OPENING and s.step == 0 and s.assignment_id is not None and now - s.due_at > LATE_FIRST}
    if not late:
        return
    for s in session.scalars(select(db.AlertStep).where(db.AlertStep.assignment_id.in_(late),
                                                        db.AlertStep.status == StepStatus.PENDING,
                                                        db.AlertStep.step > 0, db.AlertStep.step < 100)):
        s.due_at = s.due_at + late[cast(int, s.assignment_id)]   # in_(late): never NULL
    for assignment_id, by in late.items():
        assignment = assignments.get(assignment_id)
        if assignment is not None:
            assignment.start_at = assignment.start_at + by
        log.info("assignment %s: first alert %.1f s late; its reminders move as much", assignment_id,
                 by.total_seconds())


def _collapse_earlier(session: Session, steps: list[db.AlertStep], now: datetime) -> None:
    """A retry that fires takes the place of its cadence's earlier alerts still waiting (its first alert,
    earlier retries): they are overdue, and a reminder must never follow its successor. (The tick
    collapses them too; this holds whoever handed the steps over.)"""
    retries = [(s.assignment_id, s.step) for s in steps if s.kind == StepKind.RETRY and s.assignment_id is not None]
    if retries:
        session.execute(update(db.AlertStep)
                        .where(db.AlertStep.status == StepStatus.PENDING, db.AlertStep.kind.in_(sorted(OPENING | {StepKind.RETRY})),
                               or_(*(and_(db.AlertStep.assignment_id == a, db.AlertStep.step < n)
                                     for a, n in retries)))
                        .values(status=StepStatus.SKIPPED, fired_at=now, note=COLLAPSED)
                        .execution_options(synchronize_session=False))


def _called_off(step: db.AlertStep, assignment: db.Assignment | None, lead: db.Lead | None) -> str | None:
    """Why a claimed step must not alert anyone any more, if it must not."""
    if lead is None or lead.closed_at is not None:
        return "lead closed"
    if step.kind != StepKind.UNROUTED and (assignment is None or not assignment.current
                                    or assignment.claimed_at is not None):
        return "no longer current"
    if step.kind not in (StepKind.FYI, StepKind.PRIORITY, StepKind.UNROUTED) and step.step > 0 and lead.contacted_at is not None \
            and assignment is not None and lead.contacted_at >= assignment.created_at:
        return "lead contacted"
    return None


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


def _write_deliveries(session: Session, rules: Rules, settings: Settings, step: db.AlertStep,
                      assignment: db.Assignment | None, lead: db.Lead, now: datetime,
                      only: list[Planned] | None = None) -> list[_Send]:
    planned = only if only is not None else plan_recipients(session, rules, step, assignment)
    if not planned:
        return []
    drafts = _write_all(session, rules, [(step, assignment, lead, planned)], now)
    return _compose(rules, settings, drafts, _timelines(session, [lead.id]) if drafts else {}, now)


@dataclass
class _Draft:
    """A delivery row written; its message is composed after the commit (rendering needs no lock)."""

    delivery_id: int
    step: db.AlertStep
    assignment: db.Assignment | None
    lead: db.Lead
    planned: Planned


def _write_all(session: Session, rules: Rules,
               todo: list[tuple[db.AlertStep, db.Assignment | None, db.Lead, list[Planned]]], now: datetime
               ) -> list[_Draft]:
    """Write the delivery rows of these steps, in one statement; the rows whose message must go out.

    A (step, person, channel) already written by an earlier attempt at the step is
    sent or maybe sent: never again. A rep over the hourly cap gets a ``held`` row
    and no message; steps of the same batch count toward the cap one after another."""
    if not todo:
        return []
    existing = set(session.execute(select(db.Delivery.step_id, db.Delivery.recipient, db.Delivery.channel)
                                   .where(db.Delivery.step_id.in_([step.id for step, *_ in todo]))).tuples())
    hourly = _hourly_counts(session, {p.recipient for *_, planned in todo for p in planned
                                      if p.claim_rep is not None}, now)
    rows: list[dict[str, Any]] = []
    drafts: list[tuple[db.AlertStep, db.Assignment | None, db.Lead, Planned]] = []
    for step, assignment, lead, planned in todo:
        fresh = [p for p in planned if (step.id, p.recipient, p.channel) not in existing]
        held: dict[str, bool] = {}
        for p in fresh:
            if p.claim_rep is not None and p.recipient not in held:
                held[p.recipient] = hourly.get(p.recipient, 0) >= rules.alerts.hourly_cap
        for recipient, is_held in held.items():
            if not is_held:
                hourly[recipient] = hourly.get(recipient, 0) + 1
        for p in fresh:
            is_held = held.get(p.recipient, False)
            rows.append({"step_id": step.id, "lead_id": lead.id, "recipient": p.recipient, "channel": p.channel,
                         "to": p.to, "status": DeliveryStatus.HELD if is_held else DeliveryStatus.PENDING, "created_at": now,
                         "updated_at": now})
            if not is_held:
                drafts.append((step, assignment, lead, p))
    if not rows:
        return []
    # One multi-row INSERT; RETURNING comes back in no promised order, so each new id is
    # matched to its row by the row's unique key (step, recipient, channel).
    returned = session.execute(insert(db.Delivery).returning(db.Delivery.id, db.Delivery.step_id,
                                                             db.Delivery.recipient, db.Delivery.channel), rows)
    ids = {(step_id, recipient, channel): delivery_id for delivery_id, step_id, recipient, channel in returned}
    return [_Draft(ids[(step.id, p.recipient, p.channel)], step, assignment, lead, p)
            for step, assignment, lead, p in drafts]


def _compose(rules: Rules, settings: Settings, drafts: list[_Draft], timelines: dict[str, Timeline],
             now: datetime) -> list[_Send]:
    """Each draft's message; a text is rendered once per step, message kind and claiming rep."""
    views: dict[str, LeadView] = {}
    texts: dict[tuple[int, str, str | None], AlertText | Exception] = {}
    out = []
    for d in drafts:
        step, assignment, lead, p = d.step, d.assignment, d.lead, d.planned
        key = (step.id, p.kind, p.claim_rep)
        if key not in texts:
            try:
                if lead.id not in views:
                    views[lead.id] = _view(lead, timelines.get(lead.id, []), rules)
                owner = rules.rep(assignment.rep_id) if assignment and assignment.rep_id else None
                reasons = list((assignment.reasons or {}).get("notes", [])) if assignment else []
                url = claim_url(settings, rules, p.claim_rep, assignment, now) \
                    if p.claim_rep and assignment is not None and p.kind in CLAIMABLE else None
                texts[key] = render_alert(p.kind, views[lead.id], rep_name=p.rep_name, claim_url=url,
                                          retry=step.step, owner_name=owner.display if owner else None,
                                          reasons=reasons)
            except Exception as exc:  # the rows are committed: fail these deliveries, not the whole batch
                log.exception("step %s: the %s message could not be composed", step.id, p.kind)
                texts[key] = exc
        text = texts[key]
        if isinstance(text, Exception):
            unsent = OutboundMessage(delivery_id=str(d.delivery_id), channel=p.channel, to=p.to, subject=None, text="")
            out.append(_Send(d.delivery_id, step.id, p.recipient, p.channel, unsent, None, outcome=DeliveryStatus.FAILED,
                             error=f"message not composed: {type(text).__name__}: {text}"[:500],
                             error_kind="invalid", answered_at=now_utc()))
            continue
        validity = None
        if p.channel == "sms" and assignment is not None and step.kind in EXPIRING:
            validity = validity_seconds(step.step, assignment.start_at, rules.alerts, now)
        msg = OutboundMessage(delivery_id=str(d.delivery_id), channel=p.channel, to=p.to,
                              subject=text.subject if p.channel != "sms" else None,
                              text=text.sms if p.channel == "sms" else text.text,
                              html=text.html if p.channel == "email" else None, validity_seconds=validity)
        first_of = assignment.episode_id if (step.step == 0 and assignment is not None) else None
        out.append(_Send(d.delivery_id, step.id, p.recipient, p.channel, msg, first_of))
    return out


# ---------------------------------------------------------------- sending


_pool: tuple[int, ThreadPoolExecutor] | None = None


def _sender_pool() -> ThreadPoolExecutor:
    """The process's sending threads, started after the fork (threads do not survive one)."""
    global _pool
    with _channels_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(SEND_THREADS, thread_name_prefix="alert-send"))
        return _pool[1]


def deliver(items: Sequence[_Send]) -> None:
    """Hand every message to its provider at once; each item learns its outcome.

    The SDKs block on I/O, so threads overlap the round trips: a step's SMS and
    email, and every step of a batch, are in flight together."""
    settings = get_runtime().settings
    items = [item for item in items if item.outcome == DeliveryStatus.PENDING]
    if len(items) <= 1:
        for item in items:
            _attempt(item, settings)
        return
    list(_sender_pool().map(lambda item: _attempt(item, settings), items))


def _attempt(item: _Send, settings: Settings) -> None:
    try:
        result = send_with_retry(channel_for(item.channel, settings), item.message, attempts=3, max_retry_after=10)
        item.outcome, item.provider_id = DeliveryStatus.SENT, result.provider_id
    except TransportError as err:
        item.error_kind, item.error = err.kind, f"{err.code or err.status or ''} {err.message}".strip()
        item.outcome = DeliveryStatus.MAYBE_SENT if err.kind == "maybe_sent" else DeliveryStatus.FAILED
        if err.kind == "account":
            log.error("provider account problem on %s, operators must act: %s", item.channel, err.message)
        else:
            log.warning("delivery %s on %s: %s", item.delivery_id, item.channel, err.message)
    except Exception as exc:  # an SDK bug must not leave the row pending forever
        item.outcome, item.error_kind, item.error = DeliveryStatus.MAYBE_SENT, "maybe_sent", f"{type(exc).__name__}: {exc}"
        log.exception("delivery %s on %s failed unexpectedly", item.delivery_id, item.channel)
    item.answered_at = now_utc()


def _in_transaction(work: Callable[[Session], Any]) -> Any:
    """Run ``work`` in a transaction, waiting out a short database outage."""
    delay = 0.5
    for attempt in range(1, RECORD_ATTEMPTS + 1):
        try:
            with _transaction() as session:
                return work(session)
        except Exception as exc:
            if not _is_outage(exc) or attempt == RECORD_ATTEMPTS:
                raise
            log.warning("database unavailable while recording deliveries (%s); retrying", type(exc).__name__)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def _record(session: Session, items: Sequence[_Send]) -> list[float]:
    """Write the providers' answers to the delivery rows (one statement), switch off channels a recipient
    error condemns; returns the speed-to-lead of each episode whose first alert this was."""
    if not items:
        return []
    now = now_utc()
    rows = []
    for it in items:
        row = {"id": it.delivery_id, "status": it.outcome, "provider_id": it.provider_id, "error": it.error,
               "error_kind": it.error_kind, "updated_at": it.answered_at or now}
        if it.outcome == DeliveryStatus.SENT:
            row["sent_at"] = it.answered_at or now
        rows.append(row)
    session.execute(update(db.Delivery), rows)
    for it in items:
        if it.error_kind == "recipient" and it.recipient != it.message.to:
            disable_channel(session, it.recipient, it.channel, it.error or "recipient error", now)
    firsts: dict[int, tuple[int, datetime]] = {}   # step id -> (episode id, its first answer)
    for it in items:
        if it.first_alert_of is not None and it.step_id is not None and it.outcome == DeliveryStatus.SENT:
            at = it.answered_at or now
            if it.step_id not in firsts or at < firsts[it.step_id][1]:
                firsts[it.step_id] = (it.first_alert_of, at)
    if not firsts:
        return []
    earlier = set(session.scalars(select(db.Delivery.step_id).where(
        db.Delivery.step_id.in_(firsts), db.Delivery.id.not_in([it.delivery_id for it in items]),
        db.Delivery.sent_at.is_not(None))))
    received = {ep: at for ep, at in session.execute(
        select(db.HotEpisode.id, db.HotEpisode.event_received_at)
        .where(db.HotEpisode.id.in_({ep for ep, _ in firsts.values()}))) if at is not None}
    return [(at - received[ep]).total_seconds() for step_id, (ep, at) in firsts.items()
            if step_id not in earlier and ep in received]


def _settle(session: Session, rules: Rules, firing: list[_Firing], sends: list[_Send]
            ) -> tuple[list[int], list[float]]:
    """Record the answers and finish the steps: each fired when its last message was answered."""
    speed = _record(session, sends)
    follow_up: list[int] = []
    done = []
    for f in firing:
        done.append({"id": f.step.id, "status": StepStatus.DONE,
                     "fired_at": max((s.answered_at for s in f.sends if s.answered_at), default=now_utc())})
        if f.assignment is not None and f.step.kind not in (StepKind.UNROUTED, StepKind.FYI) and _all_failed(f.sends, f.assignment):
            follow_up += _escalate_now(session, rules, f.step, f.assignment)
    session.execute(update(db.AlertStep), done)
    return follow_up, speed


def _count(items: Sequence[_Send], speed: Sequence[float]) -> None:
    for seconds in speed:
        metrics.observe("speed_to_lead_seconds", seconds)
    outcomes = Counter((it.channel, it.outcome) for it in items)
    for (channel, outcome), n in outcomes.items():   # one round trip per kind, not per message
        metrics.inc("deliveries_total", n, channel=channel, outcome=outcome)


def disable_channel(session: Session, rep_id: str, channel: str, reason: str, now: datetime) -> None:
    state = session.get(db.RepState, rep_id)
    if state is None:
        state = db.RepState(rep_id=rep_id, away_until=None, disabled_channels={}, updated_at=now)
        session.add(state)
    off = dict(state.disabled_channels or {})
    off[channel] = {"reason": reason[:200], "at": now.isoformat()}
    state.disabled_channels = off
    state.updated_at = now
    log.warning("channel %s disabled for rep %s: %s", channel, rep_id, reason[:200])


def _all_failed(results: list[_Send], assignment: db.Assignment | None) -> bool:
    if assignment is None or assignment.rep_id is None:
        return False
    mine = [r for r in results if r.recipient == assignment.rep_id]
    return bool(mine) and all(r.outcome == DeliveryStatus.FAILED for r in mine)


def _escalate_now(session: Session, rules: Rules, step: db.AlertStep, assignment: db.Assignment) -> list[int]:
    """Every channel of the rep failed: the next step (escalating, if any) is due now instead of later."""
    rep = rules.rep(assignment.rep_id or "")
    if rep is None or not rep.manager:
        return []
    n = session.scalar(select(func.count()).select_from(db.AlertStep)
                       .where(db.AlertStep.assignment_id == assignment.id, db.AlertStep.step >= 100)) or 0
    extra = db.AlertStep(assignment_id=assignment.id, lead_id=assignment.lead_id, step=100 + n, kind=StepKind.ESCALATION,
                         due_at=now_utc(), note="every channel of the rep failed")
    session.add(extra)
    session.flush()
    log.warning("lead %s: every channel of rep %s failed, escalating to %s now", assignment.lead_id, rep.id,
                rep.manager)
    return [extra.id]


def _reassign(session: Session, rules: Rules, lead: db.Lead, assignment: db.Assignment | None,
              now: datetime) -> list[int]:
    from worker.assign import Router

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


def failover(session: Session, delivery: db.Delivery, now: datetime) -> list[_Send]:
    """A delivery failed after it was sent: carry the same step on the rep's other channel, once."""
    rt = get_runtime()
    rules = rt.rules
    step = session.get(db.AlertStep, delivery.step_id) if delivery.step_id else None
    if step is None:
        return []
    assignment = session.get(db.Assignment, step.assignment_id) if step.assignment_id else None
    lead = session.get(db.Lead, step.lead_id)
    if lead is None or (assignment is not None and (not assignment.current or assignment.claimed_at is not None)):
        return []
    others = [p for p in plan_recipients(session, rules, step, assignment)
              if p.recipient == delivery.recipient and p.channel != delivery.channel]
    if not others:
        return []
    return _write_deliveries(session, rules, rt.settings, step, assignment, lead, now, only=others)


def send_all(items: list[_Send]) -> None:
    """Send deliveries already written (all at once) and record the answers."""
    if not items:
        return
    deliver(items)
    speed = _in_transaction(lambda session: _record(session, items))
    _count(items, speed)


# ---------------------------------------------------------------- "maybe sent", settled by asking


# A status callback normally comes within seconds; a request given up on may still be taken by the provider
# a few seconds later. Past this, the provider is asked, and what it has is what happened.
SETTLE_AFTER = timedelta(seconds=8)
SETTLE_WITHIN = timedelta(hours=24)      # older than that, the provider's own records are what is left
SETTLE_AGAIN = timedelta(minutes=10)     # a lookup that could not tell is repeated this much later
SETTLE_BATCH = 50
_LINK = re.compile(r"/claim/([A-Za-z0-9_.-]+)")
NOT_TAKEN = "not sent: the provider took no message for this number then"


def settle_maybe_sent(now: datetime | None = None) -> int:
    """Deliveries left "maybe sent" (a timeout, a dropped connection, a 5xx, a worker that died mid-send)
    that no status callback has settled: ask the provider. Returns how many were settled.

    A message with a provider id is looked up by it. One without (its answer never
    came) is found among the messages the provider took for that number around
    the time it was sent, by the claim link it carries: that link names the rep,
    the lead, the assignment and, through its expiry, the moment it was written.
    Found, it is settled as the provider has it. Not found, the provider confirms it
    never took it: if the step still stands it is sent then, once
    (:func:`_send_unsent`); a crash never silently swallows an alert."""
    from worker.webhooks import settle

    rt = get_runtime()
    now = now or now_utc()
    with rt.sessions.begin() as session:
        rows = session.execute(
            select(db.Delivery.id, db.Delivery.channel, db.Delivery.to, db.Delivery.recipient, db.Delivery.lead_id,
                   db.Delivery.provider_id, db.Delivery.created_at, db.Delivery.updated_at, db.Delivery.resent_at,
                   db.AlertStep.assignment_id)
            .outerjoin(db.AlertStep, db.AlertStep.id == db.Delivery.step_id)
            .where(db.Delivery.status == DeliveryStatus.MAYBE_SENT, db.Delivery.channel == "sms",
                   db.Delivery.updated_at <= now - SETTLE_AFTER, db.Delivery.created_at >= now - SETTLE_WITHIN,
                   # without a provider id, only a message with a claim link can be recognized
                   or_(db.Delivery.provider_id.is_not(None),
                       and_(db.AlertStep.kind.in_(sorted(CLAIMABLE_STEPS)), db.AlertStep.assignment_id.is_not(None))))
            .order_by(db.Delivery.id).limit(SETTLE_BATCH)).all()
    settled = 0
    for delivery_id, kind, to, recipient, lead_id, provider_id, created_at, updated_at, resent_at, assignment_id \
            in rows:
        channel = channel_for(kind, rt.settings)
        written = resent_at or created_at     # the claim link's expiry counts from when the message was composed
        try:
            if provider_id:
                status = channel.fetch_status(provider_id)
                found = Sent(provider_id, status, "") if status else None
                unclear = False
            else:
                taken = channel.sent_between(to, written - timedelta(seconds=60), updated_at + timedelta(minutes=2))
                expected = int((written + rt.rules.alerts.claim_token_ttl).timestamp())
                found = next((m for m in taken if _carries_link(m.text, rt.settings.secret_key, recipient, lead_id,
                                                                assignment_id, expected)), None)
                # a full page of others may hide ours behind it: then the list does not tell
                unclear = found is None and len(taken) >= FIND_LIMIT
        except NotSupported:
            continue
        except TransportError as err:
            log.warning("delivery %s: could not ask %s about it: %s", delivery_id, kind, err.message)
            continue
        if found is not None:
            settle(found.provider_id, found.status, None, kind_hint=kind, delivery_id=str(delivery_id), by="lookup")
            settled += 1
        elif not unclear:
            settled += _send_unsent(delivery_id, now)
        else:
            with rt.sessions.begin() as session:
                session.execute(update(db.Delivery).where(db.Delivery.id == delivery_id,
                                                          db.Delivery.status == DeliveryStatus.MAYBE_SENT)
                                .values(updated_at=now + SETTLE_AGAIN - SETTLE_AFTER))
    return settled


def _carries_link(text: str, secret: str, rep_id: str, lead_id: str, assignment_id: int | None,
                  expires: int) -> bool:
    """Whether an SMS body carries the claim link this delivery wrote (its expiry within a second or two)."""
    from worker.tokens import TokenError, verify

    for token in _LINK.findall(text):
        try:
            t = verify(secret, token, datetime.fromtimestamp(0, UTC))
        except TokenError:
            continue
        if (t.rep_id, t.lead_id, t.assignment_id) == (rep_id, lead_id, assignment_id) and abs(t.expires - expires) <= 2:
            return True
    return False


def still_stands(session: Session, step: db.AlertStep | None, assignment: db.Assignment | None,
                 lead: db.Lead | None) -> str | None:
    """Why a step's message must not go out now after all, if it must not: called off (claimed, closed,
    contacted, no longer current), alerting paused, or superseded by a later step of its cadence."""
    from worker.ops import is_paused

    if step is None:
        return "no step"
    why = _called_off(step, assignment, lead)
    if why is not None:
        return why
    if is_paused(session):
        return "alerting paused"
    if step.assignment_id is not None and in_cadence(step.kind, step.step):
        later = session.scalar(select(db.AlertStep.id).where(
            db.AlertStep.assignment_id == step.assignment_id, db.AlertStep.step > step.step,
            db.AlertStep.step < 100, db.AlertStep.status.in_([StepStatus.FIRING, StepStatus.DONE])).limit(1))
        if later is not None:
            return "superseded by a later step"
    return None


def _send_unsent(delivery_id: int, now: datetime) -> int:
    """The provider confirms it never took this SMS. If its step still stands, send it now, once, with its
    twins of the same step and person still without an answer (the email of a worker that died mid-send);
    otherwise record them as not sent, and why. The compare-and-set on ``resent_at`` makes one scheduler of
    two the sender, and a message sent again is never sent a third time."""
    rt = get_runtime()
    rules = rt.rules
    drafts: list[_Draft] = []
    with _transaction() as session:
        d = session.get(db.Delivery, delivery_id)
        if d is None or d.status != DeliveryStatus.MAYBE_SENT:
            return 0
        step = session.get(db.AlertStep, d.step_id) if d.step_id is not None else None
        assignment = session.get(db.Assignment, step.assignment_id) if step and step.assignment_id else None
        lead = session.get(db.Lead, d.lead_id)
        twins = list(session.scalars(select(db.Delivery).where(
            db.Delivery.step_id == d.step_id, db.Delivery.recipient == d.recipient, db.Delivery.id != d.id,
            db.Delivery.status == DeliveryStatus.MAYBE_SENT, db.Delivery.resent_at.is_(None)))) if step else []
        why = "sent once again already" if d.resent_at is not None else still_stands(session, step, assignment, lead)
        planned = {p.channel: p for p in plan_recipients(session, rules, step, assignment)
                   if p.recipient == d.recipient} if step is not None and why is None else {}
        for row in [d, *twins]:
            if why is None and row.channel in planned:
                won = db.changed_rows(session, update(db.Delivery)
                                      .where(db.Delivery.id == row.id, db.Delivery.status == DeliveryStatus.MAYBE_SENT,
                                             db.Delivery.resent_at.is_(None))
                                      .values(resent_at=now, updated_at=now, settled_by="lookup",
                                              error=None, error_kind=None))
                if won:
                    drafts.append(_Draft(row.id, cast(db.AlertStep, step), assignment, cast(db.Lead, lead),
                                         planned[row.channel]))
            elif row is d:
                db.changed_rows(session, update(db.Delivery)
                                .where(db.Delivery.id == row.id, db.Delivery.status == DeliveryStatus.MAYBE_SENT)
                                .values(status=DeliveryStatus.FAILED, error_kind="transient", updated_at=now,
                                        settled_by="lookup",
                                        error=f"{NOT_TAKEN}; not sent again: {why or 'channel switched off'}"))
        timelines = _timelines(session, [d.lead_id]) if drafts else {}
    if drafts:
        log.warning("lead %s: %d alert message(s) the provider never took sent again", d.lead_id, len(drafts))
        send_all(_compose(rules, rt.settings, drafts, timelines, now))
    return 1


# ---------------------------------------------------------------- the hourly cap's summary


def flush_held(now: datetime | None = None) -> int:
    """Alerts held back by a rep's hourly cap, summarized in one message once the window reopens.

    The held rows are moved to ``summarized`` by a compare-and-set, so of two
    schedulers only one sends the summary."""
    from routing.messages import render_summary

    rt = get_runtime()
    rules = rt.rules
    now = now or now_utc()
    sends: list[_Send] = []
    with rt.sessions.begin() as session:
        held = list(session.scalars(select(db.Delivery).where(db.Delivery.status == DeliveryStatus.HELD)
                                    .order_by(db.Delivery.id).limit(500)))
        by_rep: dict[str, list[db.Delivery]] = {}
        for d in held:
            by_rep.setdefault(d.recipient, []).append(d)
        for rep_id, rows in by_rep.items():
            rep = rules.rep(rep_id)
            if rep is None or _hourly_count(session, rep_id, now) >= rules.alerts.hourly_cap:
                continue
            won = db.changed_rows(session, update(db.Delivery)
                                  .where(db.Delivery.id.in_([d.id for d in rows]), db.Delivery.status == DeliveryStatus.HELD)
                                  .values(status=DeliveryStatus.SUMMARIZED, updated_at=now))
            if won != len(rows):
                continue
            lead_ids = list(dict.fromkeys(d.lead_id for d in rows))
            leads = [session.get(db.Lead, lid) for lid in lead_ids]
            views = [lead_view(session, lead, rules) for lead in leads if lead is not None]
            text = render_summary(rep.display, views, "the last hour")
            off = _disabled(session, rep_id)
            for channel, to in _addresses(rep):
                if channel in off or channel == "voice":   # a summary is read, not called
                    continue
                d = db.Delivery(step_id=None, lead_id=lead_ids[0], recipient=rep_id, channel=channel, to=to,
                                status=DeliveryStatus.PENDING, created_at=now, updated_at=now)
                session.add(d)
                session.flush()
                msg = OutboundMessage(delivery_id=str(d.id), channel=channel, to=to,
                                      subject=text.subject if channel != "sms" else None,
                                      text=text.sms if channel == "sms" else text.text,
                                      html=text.html if channel == "email" else None)
                sends.append(_Send(d.id, None, rep_id, channel, msg, None))
    send_all(sends)
    return len(sends)
