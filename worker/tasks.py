"""Celery tasks: each one reads like a short story of load, decide, persist, perform."""

from __future__ import annotations

import logging
import time

from celery.signals import worker_ready
from sqlalchemy.exc import DBAPIError, OperationalError

from worker import stream
from worker.app import app
from worker.db import now_utc
from worker.pipeline import BatchResult, dead_letter, process_batch
from worker.runtime import get_runtime

log = logging.getLogger("leadrouter.tasks")
OUTAGE_WAIT_LIMIT = 600.0   # seconds a drain waits for the database before leaving its batch pending


def _is_outage(exc: BaseException) -> bool:
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


def drain_once(lane: str) -> tuple[int, BatchResult]:
    """Read one batch from ``lane``, apply it in one transaction, acknowledge it, dispatch due alerts."""
    rt = get_runtime()
    r = rt.redis
    r.delete(stream.kick_key(lane))
    rt.rules_holder.refresh()
    entries = stream.read_batch(r, lane, stream.consumer_name(), rt.settings.batch_size,
                                reclaim_idle_ms=int(rt.settings.reclaim_idle_seconds * 1000))
    if not entries:
        return 0, BatchResult()
    result = _apply_with_retries(entries, lane)
    stream.ack(r, lane, [e.id for e in entries])
    dispatch_steps(result.due_steps)
    return len(entries), result


def _apply_with_retries(entries: list[stream.Entry], lane: str) -> BatchResult:
    from worker.assign import Router

    rt = get_runtime()
    waited, delay = 0.0, 0.2
    attempts = 0
    while True:
        rules = rt.rules
        try:
            with rt.sessions.begin() as session:
                return process_batch(session, entries, rules, now_utc(), Router(rules))
        except Exception as exc:  # sorted below: outage waits, anything else isolates the bad entry
            if _is_outage(exc):
                if waited >= OUTAGE_WAIT_LIMIT:
                    raise
                log.warning("database unavailable, batch of %d waits (%s)", len(entries), type(exc).__name__)
                time.sleep(delay)
                waited += delay
                delay = min(delay * 2, 5.0)
                continue
            attempts += 1
            if attempts < 2:
                continue  # a deadlock victim or a lost race: once more as a whole
            log.exception("batch failed; applying its %d entries one by one", len(entries))
            return _apply_one_by_one(entries)


def _apply_one_by_one(entries: list[stream.Entry]) -> BatchResult:
    from worker.assign import Router

    rt = get_runtime()
    total = BatchResult()
    for entry in entries:
        error: Exception | None = None
        for _ in range(3):
            try:
                with rt.sessions.begin() as session:
                    res = process_batch(session, [entry], rt.rules, now_utc(), Router(rt.rules))
                total.processed += res.processed
                total.duplicates += res.duplicates
                total.crossings += res.crossings
                total.dead_lettered += res.dead_lettered
                total.due_steps += res.due_steps
                error = None
                break
            except Exception as exc:
                if _is_outage(exc):
                    raise
                error = exc
        if error is not None:
            with rt.sessions.begin() as session:
                dead_letter(session, entry, f"{type(error).__name__}: {error}", now_utc())
            total.dead_lettered += 1
    return total


def dispatch_steps(step_ids: list[int]) -> None:
    for step_id in step_ids:
        fire_step.apply_async(args=(step_id,), queue="alerts")


@app.task(name="leadrouter.drain", ignore_result=True)
def drain(lane: str = stream.NORMAL) -> int:
    """Drain a few batches; re-kick when there is more, so other lanes' tasks interleave."""
    from worker.publish import kick_drain

    total = 0
    try:
        for _ in range(4):
            n, _result = drain_once(lane)
            total += n
            if n < get_runtime().settings.batch_size:
                sweep_later(lane)
                return total
    except BaseException:
        sweep_later(lane)
        raise
    kick_drain(get_runtime().redis, lane)
    return total


def sweep_later(lane: str) -> None:
    """Come back for entries other consumers still hold, once a dead one's are old enough to claim.

    No new event may ever arrive to kick a drain, so entries held by a worker that
    died would otherwise wait forever. At most one such follow-up per lane is on
    its way at a time.
    """
    from worker.publish import queue_for

    rt = get_runtime()
    r = rt.redis
    try:
        if stream.pending_count(r, lane) == 0:
            return
        delay = rt.settings.reclaim_idle_seconds
        if r.set(stream.sweep_key(lane), "1", nx=True, px=max(1, int(delay * 1000))):
            drain.apply_async(args=(lane,), queue=queue_for(lane), countdown=delay)
    except Exception:  # Redis down: the next kick or a restarted worker's startup drain covers it
        log.warning("could not schedule a follow-up drain of %s", lane, exc_info=True)


@worker_ready.connect
def _drain_at_start(**_: object) -> None:
    """A worker (re)starting drains what it finds: entries left by a dead worker may have no kick coming."""
    from worker.publish import queue_for

    for lane in stream.LANES:
        drain.apply_async(args=(lane,), queue=queue_for(lane))


@app.task(name="leadrouter.fire_step", ignore_result=True)
def fire_step(step_id: int) -> None:
    from worker.alerts import fire

    dispatch_steps(fire(step_id))


@app.task(name="leadrouter.tick", ignore_result=True)
def tick() -> None:
    from worker.scheduler import tick_once

    tick_once()
