"""``throughput`` and ``worker_rss``: events/s through broker, Celery workers and database against the raw
Celery rate of a no-op task on the same broker and worker count; the worker tree's memory after many events
(one worker serves both when both run)."""

from __future__ import annotations

import time
from typing import Any

from bench.harness import (
    Bench,
    World,
    log,
    low_value_events,
)
from bench.stack import tree_rss_kb, wait_for


def run_noop(world: World, n: int) -> float:
    from bench import noop

    world.procs.celery_worker(noop.QUEUE, 2, "noop", app="bench.noop")
    world.redis.delete(noop.COUNTER)
    for _ in range(20):   # the pool is up and warm before the clock starts
        noop.bump.apply_async(queue=noop.QUEUE)
    wait_for(lambda: int(world.redis.get(noop.COUNTER) or 0) >= 20, 60, "no-op worker start", processes=world.procs)
    world.redis.set(noop.COUNTER, 0)
    started = time.monotonic()
    for _ in range(n):
        noop.bump.apply_async(queue=noop.QUEUE)
    wait_for(lambda: int(world.redis.get(noop.COUNTER) or 0) >= n, 600, f"{n} no-op tasks", interval=0.02,
               processes=world.procs)
    rate = n / (time.monotonic() - started)
    world.procs.stop_all()
    return rate


def throughput_and_rss(bench: Bench, measure_throughput: bool, measure_rss: bool) -> dict[str, Any]:
    s = bench.sizes
    out: dict[str, Any] = {}
    with bench.scenario("throughput") as world:
        if measure_throughput:
            log(f"throughput: {s.noop_tasks} no-op Celery tasks, -c 2")
            noop_rate = run_noop(world, s.noop_tasks)
            log(f"  no-op: {noop_rate:.0f} tasks/s")
        worker = world.procs.celery_worker("events,fast,alerts", 2, "worker")
        world.procs.beat()   # as deployed; on PostgreSQL it keeps the planner statistics current
        world.publish(low_value_events("warm", 50, 50))
        world.wait_committed(50, 120)
        base = world.events_committed()
        done = 0
        if measure_throughput:
            n = s.throughput_events
            log(f"throughput: {n} events, celery -Q events,fast,alerts -c 2")
            started = time.monotonic()
            world.publish(low_value_events("tp", n, max(1, n // 8), identify_every=10))
            finished = world.wait_committed(base + n, 900)
            rate = n / (finished - started)
            out["throughput"] = {"events_per_s": round(rate, 1), "celery_noop_tasks_per_s": round(noop_rate, 1),
                                 "ratio": round(rate / noop_rate, 2)}
            log(f"  events: {rate:.0f}/s, ratio {rate / noop_rate:.2f}")
            done = n
        if measure_rss:
            rest = s.rss_events - done
            log(f"worker_rss: {rest} more events, to {s.rss_events} in all")
            started = time.monotonic()
            for i in range(done, s.rss_events, 10_000):
                world.publish(low_value_events("tp", min(10_000, s.rss_events - i), max(1, s.rss_events // 8),
                                               start=i, identify_every=10))
            world.wait_committed(base + s.rss_events, 1800)
            log(f"  {rest / (time.monotonic() - started):.0f} events/s")
            time.sleep(1.0)
            out["worker_rss_mb"] = round(tree_rss_kb(worker.pid) / 1024, 1)
            log(f"  worker tree RSS {out['worker_rss_mb']} MB")
    return out
