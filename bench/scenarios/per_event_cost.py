"""``per_event_cost``: the cost of a drained event with many leads in the database vs few."""

from __future__ import annotations

import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.harness import (
    LOW_VALUE,
    Bench,
    World,
    log,
)

# ---------------------------------------------------------------- per-event cost


def bulk_load_leads(url: str, start: int, stop: int) -> None:
    """Leads ``start``…``stop-1`` with two events each, by the fastest path the database has."""
    import sqlalchemy as sa

    now = datetime.now(UTC).replace(microsecond=0)
    engine = sa.create_engine(url)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        chunk = 50_000
        for lo in range(start, stop, chunk):
            hi = min(stop, lo + chunk)
            leads, events = [], []
            for i in range(lo, hi):
                lead = f"user-{i:07d}"
                t1, t2 = now - timedelta(days=3, seconds=i % 86400), now - timedelta(days=1, seconds=i % 86400)
                leads.append((lead, now, now, "{}", 3.0, 3.0, 0.0, "cold", "{}", False, 2))
                events.append(("default", f"seed-{i}-a", lead, "track", "Page Viewed", t1, t1, t1, "{}", "{}",
                               1.0, 1.0, "cold", False))
                events.append(("default", f"seed-{i}-b", lead, "track", "Blog Post Viewed", t2, t2, t2, "{}", "{}",
                               2.0, 3.0, "cold", False))
            _insert(cur, engine.dialect.name, leads, events)
            raw.commit()
        # as an import leaves it: on SQLite the WAL copied into the database; on PostgreSQL the planner's
        # statistics brought up to date (autovacuum would, within a minute; a query planned before
        # then on the empty tables' statistics scans a million rows)
        cur.execute("PRAGMA wal_checkpoint(TRUNCATE)" if engine.dialect.name == "sqlite" else "ANALYZE")
        raw.commit()
    finally:
        raw.close()
        engine.dispose()


LEAD_COLS = "id, created_at, updated_at, traits, score, behavior, fit, tier, breakdown, hot_unalerted, event_count"
EVENT_COLS = ("source, message_id, lead_id, type, name, timestamp, received_at, processed_at, properties, traits, "
              "points, score_after, tier_after, stale")


def _insert(cur: Any, dialect: str, leads: list[tuple[Any, ...]], events: list[tuple[Any, ...]]) -> None:
    if dialect == "postgresql":
        for table, cols, rows in (("leads", LEAD_COLS, leads), ("events", EVENT_COLS, events)):
            with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        return

    def sqlite_row(row: tuple[Any, ...]) -> tuple[Any, ...]:  # naive UTC text, as the product stores it
        return tuple(v.replace(tzinfo=None).isoformat(" ", "microseconds") if isinstance(v, datetime)
                     else v for v in row)

    cur.executemany(f"INSERT INTO leads ({LEAD_COLS}) VALUES ({', '.join('?' * 11)})", map(sqlite_row, leads))
    cur.executemany(f"INSERT INTO events ({EVENT_COLS}) VALUES ({', '.join('?' * 14)})", map(sqlite_row, events))


def drain_costs_us(world: World, urls: dict[int, str], batches: int) -> dict[int, float]:
    """Median µs per event of ``drain_once`` (read, forecast, one transaction, ack) on batches of
    events of random existing leads, for each database in ``urls`` (by its number of leads).

    The databases take turns batch by batch, in an order that swaps every round: this machine's
    speed drifts within minutes, and measured one after the other the two would not see the
    same machine."""
    from worker.adapters import runtime, stream
    from worker.adapters.db import now_utc
    from worker.adapters.settings import Settings
    from worker.entrypoints.tasks import drain_once

    batch = Settings().batch_size
    received = now_utc().isoformat()
    rngs = {leads: random.Random(leads) for leads in urls}
    runtimes = {leads: runtime.Runtime(Settings(DATABASE_URL=url)) for leads, url in urls.items()}
    per_event: dict[int, list[float]] = {leads: [] for leads in urls}

    def drain(leads: int, label: str) -> float:
        rng = rngs[leads]
        stream.append(world.redis, stream.NORMAL, [
            ("default", received, {"type": "track", "messageId": f"{leads}-{label}-{j}",
                                   "userId": f"user-{rng.randrange(leads):07d}",
                                   "event": LOW_VALUE[j % len(LOW_VALUE)]}) for j in range(batch)])
        runtime._runtime = runtimes[leads]   # drain_once works on the process's runtime: this database's
        started = time.perf_counter()
        n, _ = drain_once(stream.NORMAL)
        elapsed = time.perf_counter() - started
        assert n == batch, f"drained {n} of {batch}"
        return elapsed / n * 1e6

    try:
        for leads in urls:
            drain(leads, "warm")
        runtime.settle_process()   # as a worker process is, once started
        order = list(urls)
        for i in range(batches):
            for leads in order if i % 2 == 0 else order[::-1]:
                per_event[leads].append(drain(leads, str(i)))
    finally:
        runtime.reset_runtime()
        for rt in runtimes.values():
            rt.engine.dispose()
    for leads, costs in per_event.items():
        log(f"  {leads} leads: {statistics.median(costs):.0f} µs/event (batches: {[round(c) for c in costs]})")
    return {leads: statistics.median(costs) for leads, costs in per_event.items()}


def per_event_cost(bench: Bench) -> float:
    s = bench.sizes
    with bench.scenario("cost") as world:
        small_url = bench.databases.create("cost-small")
        log(f"per_event_cost: bulk-loading {s.cost_small} and {s.cost_large} leads")
        t = time.monotonic()
        bulk_load_leads(small_url, 0, s.cost_small)
        bulk_load_leads(world.url, 0, s.cost_large)
        log(f"  loaded in {time.monotonic() - t:.0f}s")
        costs = drain_costs_us(world, {s.cost_small: small_url, s.cost_large: world.url}, s.cost_batches)
    return round(costs[s.cost_large] / costs[s.cost_small], 2)
