"""``leadrouter beat``: the scheduler tick that turns due timers into alert tasks.

Timers are ``alert_steps`` rows, not broker ETAs. Each tick (a quarter second
by default) reads the steps that are due, collapses a cadence's overdue
retries into its latest one (after an outage: one reminder, not a burst), and
hands each due step to the ``alerts`` queue. Ticks may overlap, run on two
machines, or stop for minutes: a step fires exactly once because firing is a
compare-and-set in the database (:func:`worker.alerts.fire`); a short Redis
key only keeps two schedulers from queueing the same step twice in a row.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from collections import defaultdict
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from routing.cadence import collapse_overdue
from worker import db, stream
from worker.alerts import flush_held
from worker.db import now_utc
from worker.runtime import get_runtime

log = logging.getLogger("leadrouter.scheduler")

DISPATCH_KEY = "lr:dispatched:{}"
STUCK_AFTER = timedelta(seconds=60)   # a step left firing this long belongs to a worker that died
HEARTBEAT_EVERY = 15.0


def _due_steps(session: Any, now: Any, limit: int = 1000) -> list[db.AlertStep]:
    return list(session.scalars(select(db.AlertStep).where(db.AlertStep.status == "pending",
                                                          db.AlertStep.due_at <= now)
                                .order_by(db.AlertStep.due_at).limit(limit)))


def collect_due(session: Any, now: Any) -> list[int]:
    """The due step ids to fire now; overdue retries of one cadence collapse into the latest."""
    steps = _due_steps(session, now)
    retries: dict[int, list[db.AlertStep]] = defaultdict(list)
    fire: list[int] = []
    for s in steps:
        if s.kind == "retry" and s.assignment_id is not None:
            retries[s.assignment_id].append(s)
        else:
            fire.append(s.id)
    for group in retries.values():
        by_step = {s.step: s for s in group}
        keep, skip = collapse_overdue([(s.step, s.due_at) for s in group], now)
        if skip:
            session.execute(update(db.AlertStep)
                            .where(db.AlertStep.id.in_([by_step[n].id for n in skip]),
                                   db.AlertStep.status == "pending")
                            .values(status="skipped", fired_at=now, note="overdue; collapsed into a later step"))
            log.info("assignment %s: %d overdue reminders collapsed into step %s", group[0].assignment_id,
                     len(skip), keep)
        fire.extend(by_step[n].id for n in keep)
    return fire


def release_stuck(session: Any, now: Any) -> int:
    """Steps left ``firing`` by a worker that died go back to pending; their deliveries stay as written."""
    return session.execute(update(db.AlertStep)
                           .where(db.AlertStep.status == "firing", db.AlertStep.claimed_at < now - STUCK_AFTER)
                           .values(status="pending", note="released after a worker stopped mid-step")).rowcount


def tick_once() -> int:
    """One scheduler pass; returns how many steps it queued."""
    from worker.ops import is_paused
    from worker.publish import kick_drain
    from worker.tasks import dispatch_steps

    rt = get_runtime()
    rt.rules_holder.refresh()
    r = rt.redis
    now = now_utc()
    with rt.sessions.begin() as session:
        release_stuck(session, now)
        if is_paused(session):
            due: list[int] = []
        else:
            due = collect_due(session, now)
    fresh = [sid for sid in due if r.set(DISPATCH_KEY.format(sid), 1, nx=True, px=5000)]
    dispatch_steps(fresh)
    for lane in stream.LANES:
        b = stream.backlog(r, lane)
        if b.get("waiting", 0) > 0 or b.get("pending", 0) > 0:
            kick_drain(r, lane)
    return len(fresh)


def heartbeat(name: str) -> None:
    """Record which rules this process runs, for ``status``."""
    rt = get_runtime()
    now = now_utc()
    with rt.sessions.begin() as session:
        row = session.get(db.Setting, f"worker:{name}")
        value = {"rules_hash": rt.rules.hash, "seen_at": now.isoformat(), "errors": rt.rules_holder.errors[:5]}
        if row is None:
            session.add(db.Setting(key=f"worker:{name}", value=value, updated_at=now))
        else:
            row.value, row.updated_at = value, now


def run_forever(tick_seconds: float | None = None) -> int:
    rt = get_runtime()
    interval = tick_seconds or rt.settings.tick_seconds
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    name = f"beat@{socket.gethostname()}"
    log.info("scheduler running, tick every %.2fs", interval)
    last_beat = 0.0
    failures = 0
    while not stopping:
        started = time.monotonic()
        try:
            tick_once()
            if started - last_beat > HEARTBEAT_EVERY:
                heartbeat(name)
                flush_held()
                last_beat = started
            failures = 0
        except Exception as exc:  # Redis or the database away: keep ticking, they come back
            failures += 1
            log.warning("tick failed (%s: %s); retrying", type(exc).__name__, exc) if failures < 5 \
                else log.exception("tick failing repeatedly")
            time.sleep(min(5.0, 0.5 * failures))
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
    log.info("scheduler stopped")
    return 0
