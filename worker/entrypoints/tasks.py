"""Celery tasks: each one reads like a short story of load, decide, persist, perform."""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from celery.signals import worker_init, worker_process_init, worker_ready

from worker.adapters import engines, retry, stream
from worker.adapters.logs import setup_logging
from worker.adapters.runtime import Runtime, get_runtime
from worker.app import DRAIN, FAILOVER, FIRE_STEPS, TICK, app
from worker.services import dispatch
from worker.services.lead_store import dead_letter
from worker.services.pipeline import BatchResult, BatchTooSlow, forecast, process_batch

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from worker.services.alerts import Batch

log = logging.getLogger("leadrouter.tasks")
# A batch that takes longer than this (hostile input making one lead costly) is split in halves and each half
# applied on its own, down to single entries, so the leads that share a batch with it are not held back.
DRAIN_TIME_LIMIT = 20.0
EARLY_REQUEUE = timedelta(seconds=30)   # a step handed over this far before its due time waits in a task


def drain_once(lane: str, rt: Runtime | None = None) -> tuple[int, BatchResult]:
    """Read one batch from ``lane``, apply it in one transaction, acknowledge it, dispatch due alerts."""
    rt = rt or get_runtime()
    r = rt.redis
    r.delete(stream.kick_key(lane))
    rt.rules_holder.refresh()
    entries = stream.read_batch(r, lane, stream.consumer_name(), rt.settings.batch_size,
                                reclaim_idle_ms=int(rt.settings.reclaim_idle_seconds * 1000))
    if not entries:
        return 0, BatchResult()
    pool, slots = _inline_firing()   # made once per process; its threads start on the first send
    inline = lane == stream.FAST and slots.acquire(blocking=False)   # a free thread to send on
    every = max(0.5, rt.settings.reclaim_idle_seconds / 3)
    try:
        with stream.keep_claimed(r, lane, stream.consumer_name(), [e.id for e in entries], every):
            result, claimed = _apply_with_retries(rt, entries, lane, claim=inline)
    except BaseException:
        if inline:
            slots.release()
        raise
    if inline and claimed is not None and claimed.won:
        pool.submit(_send_inline, rt, claimed, slots)   # the thread frees its slot when done
    elif inline:
        slots.release()
    stream.ack(r, lane, [e.id for e in entries])
    won = set(claimed.won) if claimed is not None else set()
    dispatch.dispatch_steps(rt, [step_id for step_id in result.due_steps if step_id not in won])
    return len(entries), result


# The fast lane fires the first alerts of the crossings it routes itself: it claims them and writes
# their deliveries in the batch's own transaction, and sends them on a thread of its own process
# right after the commit. A demo request's alert then waits for no queue, no other process and
# no second transaction, and the drain goes on meanwhile, so a slow provider never holds up
# routing. With this many sends in flight already, the steps go to the alert workers as usual.
INLINE_FIRING = 2
_inline: tuple[int, ThreadPoolExecutor, threading.BoundedSemaphore] | None = None


def _inline_firing() -> tuple[ThreadPoolExecutor, threading.BoundedSemaphore]:
    """This process's threads for inline firing and the semaphore of their free slots."""
    global _inline
    if _inline is None or _inline[0] != os.getpid():   # threads do not survive a fork
        _inline = (os.getpid(), ThreadPoolExecutor(max(1, INLINE_FIRING), thread_name_prefix="fire-inline"),
                   threading.BoundedSemaphore(INLINE_FIRING))
    return _inline[1], _inline[2]


def wait_for_inline_sends(timeout: float) -> bool:
    """Until no fast-lane send of this process is in flight (False: one still was after ``timeout``)."""
    if _inline is None or _inline[0] != os.getpid():
        return True
    slots, taken = _inline[2], 0
    try:
        for _ in range(INLINE_FIRING):
            if not slots.acquire(timeout=timeout):
                return False
            taken += 1
        return True
    finally:
        for _ in range(taken):
            slots.release()


def _send_inline(rt: Runtime, claimed: Batch, slots: threading.BoundedSemaphore) -> None:
    from worker.services.alerts import send_claimed

    try:
        _after_firing(rt, send_claimed(rt, claimed))
    except Exception:  # the steps stay firing: the scheduler takes them back (worker.entrypoints.scheduler.release_stuck)
        log.exception("sending alert steps %s from the fast lane failed", claimed.won)
    finally:
        slots.release()


def _claim_due(rt: Runtime, session: Session, step_ids: list[int]) -> Batch | None:
    """Claim the batch's due steps in its transaction, behind a savepoint: if that fails, the routing
    still commits and the steps, still pending, go to the alert workers."""
    from worker.services.alerts import claim

    try:
        with session.begin_nested():
            return claim(rt, session, step_ids, rt.now(), take_in=False)
    except Exception as exc:
        if retry.is_outage(exc):
            raise
        log.exception("claiming alert steps %s in the fast lane failed; the alert workers will", step_ids)
        return None


def _apply_with_retries(rt: Runtime, entries: list[stream.Entry], lane: str, claim: bool = False
                        ) -> tuple[BatchResult, Batch | None]:
    """Apply the batch in one transaction, waiting out a database outage (:data:`worker.adapters.retry.DRAIN_OUTAGE`);
    with ``claim``, the due alert steps it makes are claimed in the same transaction."""
    deadline = time.monotonic() + DRAIN_TIME_LIMIT if len(entries) > 1 else None
    try:
        return retry.DRAIN_OUTAGE.call(
            lambda: retry.BATCH_AGAIN.call(lambda: _apply(rt, entries, lane, claim, deadline)),
            about=f"{len(entries)} entries")
    except BatchTooSlow:
        half = len(entries) // 2
        log.warning("a batch of %d entries ran past %.0f s; applying it in halves", len(entries), DRAIN_TIME_LIMIT)
        first, _ = _apply_with_retries(rt, entries[:half], lane)
        second, _ = _apply_with_retries(rt, entries[half:], lane)
        return first.add(second), None
    except Exception as exc:  # an outage past its wait leaves the batch pending; anything else isolates the bad entry
        if retry.is_outage(exc):
            raise
        log.exception("batch failed; applying its %d entries one by one", len(entries))
        return _apply_one_by_one(rt, entries), None


def _apply(rt: Runtime, entries: list[stream.Entry], lane: str, claim: bool, deadline: float | None
           ) -> tuple[BatchResult, Batch | None]:
    """One try at applying the batch, in one transaction."""
    from worker.services.assign import Router

    rules = rt.rules
    now = rt.now()
    fc = None
    if lane != stream.FAST:
        # scored before the write lock, so workers score at the same time (worker.services.pipeline.Forecast)
        with engines.reading(rt.engine) as conn:
            fc = forecast(conn, entries, rules, now)
        engines.yield_to_urgent(rt.engine)
    # the fast lane goes first on SQLite; the normal lane let it, just above (worker.adapters.engines.urgent)
    with engines.urgent(rt.engine) if lane == stream.FAST else nullcontext(), rt.sessions.begin() as session:
        result = process_batch(session, entries, rules, now, Router(rules), fc, deadline=deadline)
        # one batch's worth: a burst of crossings leaves the rest to the alert workers, in parallel
        claimed = _claim_due(rt, session, result.due_steps[:dispatch.FIRE_BATCH]) \
            if claim and result.due_steps else None
    return result, claimed


def _apply_one_by_one(rt: Runtime, entries: list[stream.Entry]) -> BatchResult:
    """Each entry on its own (:data:`worker.adapters.retry.ENTRY_AGAIN`); one that keeps failing is dead-lettered."""
    from worker.services.assign import Router

    def apply(entry: stream.Entry) -> BatchResult:
        with rt.sessions.begin() as session:
            return process_batch(session, [entry], rt.rules, rt.now(), Router(rt.rules))

    total = BatchResult()
    for entry in entries:
        try:
            total = total.add(retry.ENTRY_AGAIN.call(partial(apply, entry)))
        except Exception as exc:
            if retry.is_outage(exc):
                raise
            with rt.sessions.begin() as session:
                dead_letter(session, entry, f"{type(exc).__name__}: {exc}", rt.now())
            total.dead_lettered += 1
    return total


@app.task(name=DRAIN, ignore_result=True)
def drain(lane: str = stream.NORMAL) -> int:
    """Drain a few batches; re-kick when there is more, so other lanes' tasks interleave."""
    from worker.services.publish import kick_drain

    rt = get_runtime()
    total = 0
    try:
        for _ in range(4):
            n, _result = drain_once(lane, rt)
            total += n
            if n < rt.settings.batch_size:
                sweep_later(lane)
                return total
    except BaseException:
        sweep_later(lane)
        raise
    kick_drain(rt.redis, lane)
    return total


def sweep_later(lane: str) -> None:
    """Come back for entries other consumers still hold, once a dead one's are old enough to claim.

    No new event may ever arrive to kick a drain, so entries held by a worker that
    died would otherwise wait forever. At most one such follow-up per lane is on
    its way at a time.
    """
    from worker.services.publish import queue_for

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
    from worker.services.publish import queue_for

    for lane in stream.LANES:
        drain.apply_async(args=(lane,), queue=queue_for(lane))


@app.task(name=FIRE_STEPS, ignore_result=True)
def fire_steps(step_ids: list[int]) -> None:
    """Fire a batch of due steps; queue what that made due, and give back steps that came early."""
    from worker.services.alerts import fire_steps as fire

    rt = get_runtime()
    _after_firing(rt, fire(rt, step_ids))


def _after_firing(rt: Runtime, fired: Batch) -> None:
    """Queue what firing made due, and give back the steps that came early."""
    dispatch.dispatch_steps(rt, fired.follow_up)
    now = rt.now()
    early: dict[datetime, list[int]] = {}
    for step_id, due_at in fired.early:
        if due_at - now <= EARLY_REQUEUE:   # later than that, the scheduler's tick hands it over again
            early.setdefault(due_at, []).append(step_id)
    for due_at, ids in early.items():
        dispatch.queue_steps(ids, eta=due_at)


@app.task(name="leadrouter.fire_step", ignore_result=True)
def fire_step(step_id: int) -> None:
    """One step: what a worker of the previous release queued."""
    fire_steps([step_id])


@app.task(name=FAILOVER, ignore_result=True)
def failover_deliveries(delivery_ids: list[int]) -> None:
    """A delivery the provider reported failed: its step on the rep's other channel, once. Running this
    twice sends nothing twice: a (step, rep, channel) already written is never written again."""
    from worker.services.deliveries import failover

    failover(get_runtime(), delivery_ids)


@app.task(name=TICK, ignore_result=True)
def tick() -> None:
    from worker.entrypoints.scheduler import tick_once

    tick_once(get_runtime())


# ---------------------------------------------------------------- a worker process starting


@worker_process_init.connect
def _init_process(**_: object) -> None:
    from worker.adapters.runtime import get_runtime, settle_process

    setup_logging()
    get_runtime().after_fork()
    _warm_up()
    settle_process()


@worker_init.connect
def _refuse_bad_start(**_: object) -> None:
    """``celery -A worker.app worker`` refuses a weak secret or broken rules as ``leadrouter worker`` does."""
    from worker.entrypoints.startup import check_or_exit

    check_or_exit("worker")


@worker_init.connect
def _init_threads_worker(sender: Any = None, **_: object) -> None:
    """A threads pool runs tasks in this very process and sends no ``worker_process_init``: prepare it here."""
    from celery.concurrency import get_implementation
    from celery.concurrency.thread import TaskPool as ThreadsPool

    pool = get_implementation(getattr(sender, "pool_cls", None) or app.conf.worker_pool)
    if isinstance(pool, type) and issubclass(pool, ThreadsPool):
        _init_process()


def _warm_up() -> None:
    """Import the alert path and build the provider clients now, not on the first hot lead."""
    try:
        import worker.services.alerts  # noqa: F401

        rt = get_runtime()
        for kind in ("sms", "email", "voice"):
            rt.channel(kind)
        rt.engine  # noqa: B018 - made once here, not raced for by a pool's first threads
    except Exception:  # a bad setting shows up, with its error, on the first alert instead
        log.exception("alert channels could not be prepared")
