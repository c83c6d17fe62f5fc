"""The delivery lifecycle: one message to one person on one channel, from its row to its end.

Like healthchecks' ``Notification``, one record carries a delivery through its states
(:class:`Delivery`, mirrored by its ``deliveries`` row):

1. **written** ``pending`` and committed *before* its request leaves (:func:`write`); the row's
   unique key (step, recipient, channel) means a step never sends twice on a channel. A rep
   over the hourly cap gets a ``held`` row instead, summarized later.
2. **sent**: every request of a batch at once, from a small thread pool (:func:`send`); the
   channel sorts a failure into its kind (``worker.adapters.channels``).
3. **recorded** (:func:`record`): ``sent``, ``maybe_sent`` (no answer: never re-sent blindly) or
   ``failed``; a recipient error switches that channel off for the rep (:func:`disable_channel`).
4. **settled** by the provider's word (:func:`worker.services.settling.settle`: a status callback, an event, a
   lookup), read by the channel's own rules, or, for a ``maybe_sent`` no word has settled, by asking
   the provider (:func:`worker.services.settling.settle_maybe_sent`);
5. **failed over**: a failure after sending carries the step to the rep's other channel, once
   (:func:`failover`, from an alert worker).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, bindparam, func, insert, or_, select, update
from sqlalchemy.orm import Session

from routing import alerting
from routing.alerting import Recipient
from routing.config import Rules
from routing.kinds import DeliveryStatus, StepKind
from worker.adapters import db, engines, metrics
from worker.adapters.channels import OutboundMessage, TransportError
from worker.adapters.db import now_utc
from worker.adapters.retry import RECORD_OUTAGE, send_with_retry
from worker.services import alert_text

if TYPE_CHECKING:
    from worker.adapters.runtime import Runtime

log = logging.getLogger("leadrouter.alerts")

# Provider requests in flight at once, per worker process. A provider answers in 0.1-0.3 s,
# so this many threads carry about 100 requests a second; a waiting thread costs next to nothing.
SEND_THREADS = 32


@dataclass
class Delivery:
    """One delivery through its states; ``id`` is its row's, written before anything is sent."""

    id: int
    recipient: str                      # rep id, or the address itself for an unrouted notice
    channel: str
    address: str
    step: db.AlertStep | None = None    # None for an hourly-cap summary
    assignment: db.Assignment | None = None
    lead: db.Lead | None = None
    plan: Recipient | None = None       # what the step tells this person; None when the message is made directly
    message: OutboundMessage | None = None
    status: DeliveryStatus = DeliveryStatus.PENDING
    provider_id: str | None = None
    error: str | None = None
    error_kind: str | None = None
    answered_at: datetime | None = None   # when the provider answered, or the attempt gave up

    @property
    def step_id(self) -> int | None:
        return self.step.id if self.step is not None else None

    @property
    def first_alert_of(self) -> int | None:
        """The episode whose first alert this is (its speed-to-lead is measured), if it is one."""
        if self.step is None or self.step.step != 0 or self.assignment is None:
            return None
        return self.assignment.episode_id

    def answer(self, status: DeliveryStatus, *, provider_id: str | None = None, error: str | None = None,
               error_kind: str | None = None, at: datetime | None = None) -> None:
        self.status, self.provider_id, self.error, self.error_kind = status, provider_id, error, error_kind
        self.answered_at = at or now_utc()


# ---------------------------------------------------------------- transactions of the alert path


_sqlite_writer = threading.Lock()


@contextmanager
def transaction(rt: Runtime) -> Iterator[Session]:
    """A transaction of the alert path. SQLite has one writer at a time and its waiters poll
    with growing sleeps, first come not first served; so this process's threads queue on a
    lock of their own and at most one of them waits on the database, and the normal lane
    starts no new batch meanwhile (:func:`worker.adapters.engines.urgent`)."""
    serial = rt.engine.dialect.name == "sqlite"
    if serial:
        _sqlite_writer.acquire()
    try:
        with engines.urgent(rt.engine), rt.sessions.begin() as session:
            yield session
    finally:
        if serial:
            _sqlite_writer.release()


def in_transaction(rt: Runtime, work: Callable[[Session], Any]) -> Any:
    """Run ``work`` in a transaction, waiting out a short database outage (:data:`worker.adapters.retry.RECORD_OUTAGE`):
    the providers have answered, and a short outage must not lose what they said."""

    def once() -> Any:
        with transaction(rt) as session:
            return work(session)

    return RECORD_OUTAGE.call(once)


# ---------------------------------------------------------------- rows as the policy sees them (routing.alerting)


def step_facts(step: db.AlertStep) -> alerting.Step:
    return alerting.Step(step.id, StepKind(step.kind), step.step, step.due_at, step.lead_id, step.assignment_id)


def assignment_facts(a: db.Assignment | None) -> alerting.Assignment | None:
    return None if a is None else alerting.Assignment(a.id, a.rep_id, a.current, a.claimed_at, a.created_at)


def lead_facts(lead: db.Lead | None) -> alerting.LeadState | None:
    return None if lead is None else alerting.LeadState(lead.id, lead.closed_at, lead.contacted_at)


# ---------------------------------------------------------------- 1. written before sending


def disabled_of(session: Session, rep_id: str) -> dict[str, Any]:
    state = session.get(db.RepState, rep_id)
    return dict(state.disabled_channels or {}) if state else {}


def plan_recipients(session: Session, rules: Rules, step: db.AlertStep, assignment: db.Assignment | None,
                    disabled: Callable[[str], Collection[str]] | None = None) -> list[Recipient]:
    """Who hears about this step, on which channels (:func:`routing.alerting.recipients`).

    ``disabled`` looks up a rep's switched-off channels; a batch passes one that
    answers from rows it loaded together."""
    rep_id = assignment.rep_id if assignment is not None else None
    if step.kind != StepKind.UNROUTED and rep_id is not None and rules.rep(rep_id) is None:
        log.error("step %s: rep %s is no longer in the rules", step.id, rep_id)
    return alerting.recipients(rules, StepKind(step.kind), step.step, rep_id,
                               disabled or (lambda rep: disabled_of(session, rep)))


def hourly_counts(session: Session, rep_ids: Iterable[str], now: datetime) -> dict[str, int]:
    """Steps that alerted each rep in the last hour (held ones do not count)."""
    ids = sorted(set(rep_ids))
    if not ids:
        return {}
    rows = session.execute(select(db.Delivery.recipient, func.count(func.distinct(db.Delivery.step_id)))
                           .where(db.Delivery.recipient.in_(ids), db.Delivery.status != DeliveryStatus.HELD,
                                  db.Delivery.created_at > now - timedelta(hours=1))
                           .group_by(db.Delivery.recipient))
    return {recipient: int(n) for recipient, n in rows}


Todo = tuple[db.AlertStep, db.Assignment | None, db.Lead, list[Recipient]]


def write(session: Session, rules: Rules, todo: Sequence[Todo], now: datetime) -> list[Delivery]:
    """Write the delivery rows of these steps, in one statement; the deliveries whose message must go out.

    A (step, person, channel) already written by an earlier attempt at the step is
    sent or maybe sent: never again. A rep over the hourly cap gets a ``held`` row
    and no message (:func:`routing.alerting.held_by_cap`)."""
    if not todo:
        return []
    existing = set(session.execute(select(db.Delivery.step_id, db.Delivery.recipient, db.Delivery.channel)
                                   .where(db.Delivery.step_id.in_([step.id for step, *_ in todo]))).tuples())
    fresh = [[p for p in planned if (step.id, p.recipient, p.channel) not in existing]
             for step, _a, _l, planned in todo]
    sent = hourly_counts(session, {p.recipient for ps in fresh for p in ps if p.claim_rep is not None}, now)
    held = alerting.held_by_cap(fresh, sent, rules.alerts.hourly_cap)
    rows: list[dict[str, Any]] = []
    out: list[Delivery] = []
    for (step, assignment, lead, _planned), ps, step_held in zip(todo, fresh, held, strict=True):
        for p in ps:
            is_held = p.recipient in step_held
            rows.append({"step_id": step.id, "lead_id": lead.id, "recipient": p.recipient, "channel": p.channel,
                         "to": p.to, "status": DeliveryStatus.HELD if is_held else DeliveryStatus.PENDING,
                         "created_at": now, "updated_at": now})
            if not is_held:
                out.append(Delivery(0, p.recipient, p.channel, p.to, step, assignment, lead, p))
    if not rows:
        return []
    # One multi-row INSERT; RETURNING comes back in no promised order, so each new id is
    # matched to its row by the row's unique key (step, recipient, channel).
    returned = session.execute(insert(db.Delivery).returning(db.Delivery.id, db.Delivery.step_id,
                                                             db.Delivery.recipient, db.Delivery.channel), rows)
    ids = {(step_id, recipient, channel): delivery_id for delivery_id, step_id, recipient, channel in returned}
    for d in out:
        d.id = ids[(d.step_id, d.recipient, d.channel)]
    return out


# ---------------------------------------------------------------- 2. sent


_pool: tuple[int, ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


def _sender_pool() -> ThreadPoolExecutor:
    """The process's sending threads, started after the fork (threads do not survive one)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(SEND_THREADS, thread_name_prefix="alert-send"))
        return _pool[1]


def send(rt: Runtime, items: Sequence[Delivery]) -> None:
    """Hand every message to its provider at once; each delivery learns its answer.

    The SDKs block on I/O, so threads overlap the round trips: a step's SMS and
    email, and every step of a batch, are in flight together."""
    items = [d for d in items if d.status == DeliveryStatus.PENDING and d.message is not None]
    if len(items) <= 1:
        for d in items:
            _attempt(rt, d)
        return
    list(_sender_pool().map(lambda d: _attempt(rt, d), items))


def _attempt(rt: Runtime, d: Delivery) -> None:
    assert d.message is not None
    try:
        result = send_with_retry(rt.channel(d.channel), d.message, attempts=3, max_retry_after=10)
        d.answer(DeliveryStatus.SENT, provider_id=result.provider_id)
    except TransportError as err:
        d.answer(DeliveryStatus.MAYBE_SENT if err.kind == "maybe_sent" else DeliveryStatus.FAILED,
                 error=f"{err.code or err.status or ''} {err.message}".strip(), error_kind=err.kind)
        if err.kind == "account":
            log.error("provider account problem on %s, operators must act: %s", d.channel, err.message)
        else:
            log.warning("delivery %s on %s: %s", d.id, d.channel, err.message)
    except Exception as exc:  # an SDK bug must not leave the row pending forever
        d.answer(DeliveryStatus.MAYBE_SENT, error=f"{type(exc).__name__}: {exc}", error_kind="maybe_sent")
        log.exception("delivery %s on %s failed unexpectedly", d.id, d.channel)


# ---------------------------------------------------------------- 3. recorded


def record(session: Session, items: Sequence[Delivery]) -> list[float]:
    """Write the providers' answers to the delivery rows (one statement), switch off channels a recipient
    error condemns; returns the speed-to-lead of each episode whose first alert this was."""
    if not items:
        return []
    now = now_utc()
    rows = [{"_id": d.id, "status": d.status, "provider_id": d.provider_id, "error": d.error,
             "error_kind": d.error_kind, "updated_at": d.answered_at or now,
             "sent_at": (d.answered_at or now) if d.status == DeliveryStatus.SENT else None} for d in items]
    # A status callback can overtake the sender's own record (a call's "no answer" while its request's
    # answer is still on its way): the provider's later word stands, so only rows still waiting are written.
    table = cast(Table, db.Delivery.__table__)
    session.connection().execute(
        update(table).where(table.c.id == bindparam("_id"), or_(table.c.status == DeliveryStatus.PENDING,
                                                                table.c.status == DeliveryStatus.MAYBE_SENT)),
        rows)
    for d in items:
        if d.error_kind == "recipient" and d.recipient != d.address:
            disable_channel(session, d.recipient, d.channel, d.error or "recipient error", now)
    firsts: dict[int, tuple[int, datetime]] = {}   # step id -> (episode id, its first answer)
    for d in items:
        episode, step_id = d.first_alert_of, d.step_id
        if episode is not None and step_id is not None and d.status == DeliveryStatus.SENT:
            at = d.answered_at or now
            if step_id not in firsts or at < firsts[step_id][1]:
                firsts[step_id] = (episode, at)
    if not firsts:
        return []
    earlier = set(session.scalars(select(db.Delivery.step_id).where(
        db.Delivery.step_id.in_(firsts), db.Delivery.id.not_in([d.id for d in items]),
        db.Delivery.sent_at.is_not(None))))
    received = {ep: at for ep, at in session.execute(
        select(db.HotEpisode.id, db.HotEpisode.event_received_at)
        .where(db.HotEpisode.id.in_({ep for ep, _ in firsts.values()}))) if at is not None}
    return [(at - received[ep]).total_seconds() for step_id, (ep, at) in firsts.items()
            if step_id not in earlier and ep in received]


def count(items: Sequence[Delivery], speed: Sequence[float]) -> None:
    for seconds in speed:
        metrics.observe("speed_to_lead_seconds", seconds)
    outcomes = Counter((d.channel, d.status) for d in items)
    for (channel, outcome), n in outcomes.items():   # one round trip per kind, not per message
        metrics.inc("deliveries_total", n, channel=channel, outcome=outcome)


def send_and_record(rt: Runtime, items: Sequence[Delivery]) -> None:
    """Send deliveries already written and composed (all at once) and record the answers."""
    if not items:
        return
    send(rt, items)
    speed = in_transaction(rt, lambda session: record(session, items))
    count(items, speed)


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


# ---------------------------------------------------------------- 4. failed over


def failover(rt: Runtime, delivery_ids: Sequence[int]) -> int:
    """Deliveries the provider reported failed after sending: each one's step on the rep's other
    channel, once, while the step's assignment is current and unclaimed. Returns how many went out.
    Running this twice sends nothing twice: a (step, rep, channel) already written is never written again."""
    rules = rt.rules
    now = rt.now()
    out: list[Delivery] = []
    with rt.sessions.begin() as session:
        for delivery_id in delivery_ids:
            d = session.get(db.Delivery, delivery_id)
            step = session.get(db.AlertStep, d.step_id) if d is not None and d.step_id else None
            if d is None or d.status != DeliveryStatus.FAILED or step is None:
                continue
            assignment = session.get(db.Assignment, step.assignment_id) if step.assignment_id else None
            lead = session.get(db.Lead, step.lead_id)
            if lead is None or (assignment is not None and (not assignment.current
                                                            or assignment.claimed_at is not None)):
                continue
            others = [p for p in plan_recipients(session, rules, step, assignment)
                      if p.recipient == d.recipient and p.channel != d.channel]
            written = write(session, rules, [(step, assignment, lead, others)], now) if others else []
            if written:
                alert_text.compose(rules, rt.settings, written, alert_text.timelines(session, [lead.id]), now)
            out += written
    send_and_record(rt, out)
    return len(out)
