"""``leadrouter beat``: the scheduler tick that turns due timers into alert tasks.

Timers are ``alert_steps`` rows, not broker ETAs. Each tick (a quarter second
by default) reads the steps that are due, or will be within ``LOOK_AHEAD``,
collapses a cadence's overdue alerts into its latest one (after an outage: one
reminder, not a burst), and hands the steps to the ``alerts`` queue in batches:
due ones at once, the others with a Celery ``eta`` at their due time, so the
task is already waiting in a worker when the step falls due and neither the
gap between ticks nor a slow tick makes it late. The ``eta`` is only that head
start: the row stays the timer, and a step whose task is lost is handed over
again by a later tick.

Ticks may overlap, run on two machines, or stop for minutes: a step fires
exactly once, and never before its due time, because firing is a
compare-and-set in the database (:func:`worker.services.alerts.fire_steps`); a short
Redis key only keeps two schedulers from queueing the same step twice in a row.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import redis
from sqlalchemy import select, update

from routing.cadence import collapse_overdue, in_cadence
from routing.kinds import DeliveryStatus, StepStatus
from worker.adapters import db, engines, stream
from worker.services import liveness
from worker.services.alerts import COLLAPSED, flush_held, settle_maybe_sent
from worker.services.healing import auto_away_chore
from worker.services.pause import is_paused

if TYPE_CHECKING:
    from worker.adapters.runtime import Runtime

log = logging.getLogger("leadrouter.scheduler")

RELEASE_AFTER = timedelta(seconds=2)  # a step firing this long is looked at: is its process still alive?
STUCK_AFTER = timedelta(seconds=60)   # ... and when Redis cannot tell, one firing this long is taken for abandoned
# A live process that gave a step up (its recording transaction failed for good) holds it no longer than
# this: far past any send, whose attempts and waits are bounded to well under a minute.
ABANDONED_AFTER = timedelta(minutes=5)
HEARTBEAT_EVERY = 15.0
# how often the planner statistics are checked: a table that grows fast from empty needs them early
# (the 20,000-event throughput bench on PostgreSQL: 2,392 events/s checked every 15 s, 4,454 every 2 s)
STATISTICS_EVERY = 2.0
# how often "maybe sent" deliveries are looked at: one settles within SETTLE_AFTER plus this
SETTLE_EVERY = 2.0
LOOK_AHEAD = timedelta(seconds=5)     # steps due this soon are queued now, to wait in a worker for their time
ETA_GRID = timedelta(milliseconds=100)   # steps due within one such slot share a task (the slot's last due time)


@dataclass
class Due:
    """What one tick hands over: steps due now, and steps due within ``LOOK_AHEAD`` with their due time."""

    now: list[int] = field(default_factory=list)
    soon: list[tuple[int, datetime]] = field(default_factory=list)


def _due_steps(session: Any, until: datetime, limit: int = 1000) -> list[db.AlertStep]:
    return list(session.scalars(select(db.AlertStep).where(db.AlertStep.status == StepStatus.PENDING,
                                                          db.AlertStep.due_at <= until)
                                .order_by(db.AlertStep.due_at).limit(limit)))


def collect_due(session: Any, now: datetime, ahead: timedelta = LOOK_AHEAD) -> Due:
    """The steps to hand over; a cadence's overdue alerts (its first, its retries) collapse into its latest
    overdue one."""
    due = Due()
    retries: dict[int, list[db.AlertStep]] = defaultdict(list)
    for s in _due_steps(session, now + ahead):
        if s.due_at > now:
            due.soon.append((s.id, s.due_at))
        elif in_cadence(s.kind, s.step) and s.assignment_id is not None:
            retries[s.assignment_id].append(s)
        else:
            due.now.append(s.id)
    for group in retries.values():
        by_step = {s.step: s for s in group}
        keep, skip = collapse_overdue([(s.step, s.due_at) for s in group], now)
        if skip:
            session.execute(update(db.AlertStep)
                            .where(db.AlertStep.id.in_([by_step[n].id for n in skip]),
                                   db.AlertStep.status == StepStatus.PENDING)
                            .values(status=StepStatus.SKIPPED, fired_at=now, note=COLLAPSED))
            log.info("assignment %s: %d overdue alerts collapsed into step %s", group[0].assignment_id,
                     len(skip), keep)
        due.now.extend(by_step[n].id for n in keep)
    return due


def eta_slots(soon: list[tuple[int, datetime]]) -> list[tuple[datetime, list[int]]]:
    """Steps due soon, grouped by ``ETA_GRID`` slot; each slot waits for its last due time, so none fires early."""
    slots: dict[int, list[tuple[int, datetime]]] = defaultdict(list)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for step_id, due_at in soon:
        slots[(due_at - epoch) // ETA_GRID].append((step_id, due_at))   # whole microseconds: no float edge
    return [(max(at for _, at in group), [step_id for step_id, _ in group]) for _, group in sorted(slots.items())]


def release_stuck(session: Any, now: datetime, r: redis.Redis) -> int:
    """Steps left ``firing`` by a process that died go back to pending, and their deliveries still
    waiting for an answer become "maybe sent": whether their requests left is for the provider to
    say (:func:`worker.services.alerts.settle_maybe_sent`), never a reason to send again blindly.

    A step's process is dead when its liveness key has lapsed (:mod:`worker.services.liveness`); while
    Redis cannot tell, only steps held for ``STUCK_AFTER`` are taken for abandoned, and a step a live
    process has held for ``ABANDONED_AFTER`` was given up."""
    held = session.execute(select(db.AlertStep.id, db.AlertStep.claimed_by, db.AlertStep.claimed_at)
                           .where(db.AlertStep.status == StepStatus.FIRING,
                                  db.AlertStep.claimed_at < now - RELEASE_AFTER)).all()
    if not held:
        return 0
    try:
        living = liveness.alive(r, sorted({by for _, by, _ in held if by}))
        dead = [step_id for step_id, by, at in held if by not in living or at < now - ABANDONED_AFTER]
    except redis.RedisError:
        dead = [step_id for step_id, _, at in held if at < now - STUCK_AFTER]
    if not dead:
        return 0
    released = db.changed_rows(session, update(db.AlertStep)
                               .where(db.AlertStep.id.in_(dead), db.AlertStep.status == StepStatus.FIRING)
                               .values(status=StepStatus.PENDING, note="released after a worker stopped mid-step"))
    session.execute(update(db.Delivery)
                    .where(db.Delivery.step_id.in_(dead), db.Delivery.status == DeliveryStatus.PENDING)
                    .values(status=DeliveryStatus.MAYBE_SENT, error_kind="maybe_sent", updated_at=now,
                            error="no answer: its worker stopped mid-send"))
    log.warning("released %d alert steps of workers that stopped mid-step", released)
    return released


def tick_once(rt: Runtime) -> int:
    """One scheduler pass; returns how many steps it queued."""
    from worker.services.dispatch import dispatch_steps
    from worker.services.publish import kick_drain

    rt.rules_holder.refresh()
    r = rt.redis
    now = rt.now()
    with rt.sessions.begin() as session:
        release_stuck(session, now, r)
        due = Due() if is_paused(session) else collect_due(session, now)
    queued = dispatch_steps(rt, due.now)
    for eta, step_ids in eta_slots(due.soon):
        queued += dispatch_steps(rt, step_ids, eta=eta)
    for lane in stream.LANES:
        b = stream.backlog(r, lane)
        if b.get("waiting", 0) > 0 or b.get("pending", 0) > 0:
            kick_drain(r, lane)
    return queued


def heartbeat(rt: Runtime, name: str) -> None:
    """Record which rules this process runs, for ``status``."""
    now = rt.now()
    with rt.sessions.begin() as session:
        row = session.get(db.Setting, f"worker:{name}")
        value = {"rules_hash": rt.rules.hash, "seen_at": now.isoformat(), "errors": rt.rules_holder.errors[:5]}
        if row is None:
            session.add(db.Setting(key=f"worker:{name}", value=value, updated_at=now))
        else:
            row.value, row.updated_at = value, now


def keep_statistics(rt: Runtime) -> None:
    """PostgreSQL's planner statistics for our tables, where autovacuum has not kept them current."""
    analyzed = engines.refresh_statistics(rt.engine)
    if analyzed:
        log.info("analyzed %s: their planner statistics were behind", ", ".join(analyzed))


@dataclass(frozen=True)
class Chores:
    """Slow work the scheduler does every ``every`` seconds on a thread of its own."""

    name: str
    every: float
    work: tuple[Callable[[], object], ...]


@dataclass(frozen=True)
class Beat:
    """What the scheduler's loop runs: the tick, its heartbeat (for ``status``) and the slow chores.
    :meth:`of` wires them to a runtime; a test hands in its own."""

    tick: Callable[[], int]
    heartbeat: Callable[[str], None]
    chores: list[Chores]

    @classmethod
    def of(cls, rt: Runtime) -> Beat:
        """The hourly cap's summaries, every ``HEARTBEAT_EVERY``; asking providers about "maybe sent"
        deliveries and the auto-away check, every ``SETTLE_EVERY``; the planner statistics, every
        ``STATISTICS_EVERY``."""
        return cls(partial(tick_once, rt), partial(heartbeat, rt), [
            Chores("beat-housekeeping", HEARTBEAT_EVERY, (partial(flush_held, rt),)),
            Chores("beat-settling", SETTLE_EVERY, (partial(settle_maybe_sent, rt), partial(auto_away_chore, rt))),
            Chores("beat-statistics", STATISTICS_EVERY, (partial(keep_statistics, rt),)),
        ])


def run_forever(beat: Beat, interval: float) -> int:
    """Tick every ``interval`` seconds until SIGTERM or SIGINT; the chores run beside it meanwhile."""
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    name = f"beat@{socket.gethostname()}"
    log.info("scheduler running, tick every %.2fs", interval)
    done = threading.Event()
    chores = start_housekeeping(beat.chores, done)
    last_beat = 0.0
    failures = 0
    while not stopping:
        started = time.monotonic()
        try:
            beat.tick()
            if started - last_beat > HEARTBEAT_EVERY:   # says the tick itself is alive, for status
                beat.heartbeat(name)
                last_beat = started
            failures = 0
        except Exception as exc:  # Redis or the database away: keep ticking, they come back
            failures += 1
            log.warning("tick failed (%s: %s); retrying", type(exc).__name__, exc) if failures < 5 \
                else log.exception("tick failing repeatedly")
            time.sleep(min(5.0, 0.5 * failures))
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
    done.set()
    for thread in chores:
        thread.join(timeout=1)   # a chore stuck on a provider does not hold up the exit for long
    log.info("scheduler stopped")
    return 0


def start_housekeeping(groups: list[Chores], done: threading.Event) -> list[threading.Thread]:
    """Each group of chores on a thread of its own: they wait on providers or scan tables, and the tick,
    which every alert's timing hangs on, must never wait behind them."""

    def loop(group: Chores) -> None:
        while not done.is_set():
            for chore in group.work:
                try:
                    chore()
                except Exception:  # Redis, the database or a provider away: next round
                    log.warning("scheduler chore failed; next round in %.0fs", group.every, exc_info=True)
            done.wait(group.every)

    threads = [threading.Thread(target=loop, args=(group,), name=group.name, daemon=True) for group in groups]
    for thread in threads:
        thread.start()
    return threads
