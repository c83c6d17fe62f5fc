"""``python -m bench.run [--quick] [--only NAME]``: the figures of SPEC §9, into ``bench/results.json``.

Scenarios (``--only`` takes these names):

- ``throughput``: events/s through broker, Celery workers and database, against the raw
  Celery rate of a no-op task on the same broker with the same worker count.
- ``speed_to_lead``: a crossing event's publish → the provider's first alert request,
  under a steady background load of low-value events.
- ``priority``: a ``Demo Requested`` behind a backlog of page views.
- ``cadence``: how late the scheduler fires seconds-scale re-alerts.
- ``per_event_cost``: the cost of a drained event with many leads in the database vs few.
- ``worker_rss``: the worker tree's memory after many events (shares the throughput
  worker when both run).
- ``board``: one refresh of the operator's board with 1,000,000 leads and 10,000 open hot
  leads (``bench/board.py``; also runs alone as ``python -m bench.board``).

Every process, the private Redis and any PostgreSQL database the run creates are
removed at the end, on Ctrl-C and on errors too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.stack import CONFIG, ROOT, Databases, Processes, RedisServer, tree_rss_kb, wait_until

RESULTS = Path(__file__).resolve().parent / "results.json"
PLOT = Path(__file__).resolve().parent / "speed_to_lead.svg"
SCENARIOS = ("throughput", "speed_to_lead", "priority", "cadence", "per_event_cost", "worker_rss", "board")
LOW_VALUE = ("Page Viewed", "Blog Post Viewed", "Email Clicked")   # never enough together to make a lead hot

PROVIDER_ENV = {
    "TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": "bench-twilio-token",
    "TWILIO_FROM_NUMBER": "+15005550006", "SENDGRID_API_KEY": "SG.bench-key",
    "SENDGRID_FROM_EMAIL": "alerts@example.com", "LEADROUTER_SECRET_KEY": "bench-only-claim-and-webhook-signing-key-0123456789",
}


@dataclass(frozen=True)
class Sizes:
    throughput_events: int
    noop_tasks: int
    crossings: int
    background_per_s: int
    backlog: int
    cadence_steps: int
    cadence_crossings_per_s: float
    cost_small: int
    cost_large: int
    cost_batches: int   # batches drained on each database
    rss_events: int


FULL = Sizes(throughput_events=20_000, noop_tasks=10_000, crossings=150, background_per_s=200, backlog=50_000,
             cadence_steps=500, cadence_crossings_per_s=20, cost_small=10_000, cost_large=1_000_000, cost_batches=20, rss_events=200_000)
QUICK = Sizes(throughput_events=5_000, noop_tasks=2_000, crossings=30, background_per_s=100, backlog=5_000,
              cadence_steps=50, cadence_crossings_per_s=20, cost_small=10_000, cost_large=100_000, cost_batches=6, rss_events=20_000)


# ---------------------------------------------------------------- events


def low_value_events(prefix: str, n: int, leads: int, start: int = 0, identify_every: int = 0) -> list[dict[str, Any]]:
    """``n`` events spread over ``leads`` leads; none of them, alone or together, makes a lead hot."""
    out: list[dict[str, Any]] = []
    for i in range(start, start + n):
        lead = f"{prefix}-{i % leads}"
        if identify_every and i % identify_every == 0:
            out.append({"type": "identify", "messageId": f"{prefix}-m{i}", "userId": lead,
                        "traits": {"name": "Sam Lee", "email": f"{lead}@example.org"}})
        else:
            out.append({"type": "track", "messageId": f"{prefix}-m{i}", "userId": lead,
                        "event": LOW_VALUE[i % len(LOW_VALUE)], "properties": {"path": "/docs"}})
    return out


def warm_up(lead: str) -> list[dict[str, Any]]:
    """A lead that will be hot with one more ``Demo Requested``: strong fit and a pricing view (55 points)."""
    traits = {"name": "Jane Doe", "email": f"{lead}@acme.com", "title": "VP Engineering", "phone": "+14155550100",
              "role": "decision_maker", "company": {"name": "Acme", "industry": "software", "employee_count": 1200},
              "address": {"country": "US"}}
    return [{"type": "identify", "messageId": f"{lead}-id", "userId": lead, "traits": traits},
            {"type": "track", "messageId": f"{lead}-pricing", "userId": lead, "event": "Pricing Page Viewed"}]


def demo_request(lead: str) -> dict[str, Any]:
    return {"type": "track", "messageId": f"{lead}-demo", "userId": lead, "event": "Demo Requested"}


def bench_rules(path: Path, **alerts: Any) -> None:
    """The shipped rules with every rep on duty all week, no holidays and no capacity limit,
    so every crossing alerts at once; the hourly cap is lifted because it would hold
    back the very alerts being timed."""
    from ruamel.yaml import YAML

    yaml = YAML()
    doc = yaml.load(CONFIG.read_text())
    for rep in doc["reps"]:
        rep["hours"] = "Mon-Sun 00:00-24:00"
        rep["holidays"] = []
        rep.pop("max_open", None)
    doc["alerts"].update({"hourly_cap": 1_000_000, **alerts})
    with path.open("w") as fh:
        yaml.dump(doc, fh)


# ---------------------------------------------------------------- one scenario's world


class Bench:
    def __init__(self, sizes: Sizes, quick: bool):
        self.sizes, self.quick = sizes, quick
        self.dir = Path(tempfile.mkdtemp(prefix="leadrouter-bench-"))
        self.redis_server = RedisServer(self.dir)
        self.databases = Databases(self.dir, os.environ.get("DATABASE_URL") or None)
        self.provider: Any = None
        self.procs: Processes | None = None

    def start(self) -> None:
        self.redis_server.start()
        os.environ["REDIS_URL"] = self.redis_server.url   # read by worker.app and bench.noop at import
        from tests.fakes.providers import start_provider_server  # its listen queue takes a burst

        self.provider = start_provider_server(validation="off")

    def close(self) -> None:
        if self.procs is not None:
            self.procs.stop_all()
        if self.provider is not None:
            self.provider.stop()
        self.redis_server.stop()
        self.databases.drop_all()
        shutil.rmtree(self.dir, ignore_errors=True)

    @contextlib.contextmanager
    def scenario(self, label: str, **alerts: Any) -> Iterator[World]:
        import redis
        import sqlalchemy as sa

        from routing.config import load_rules
        from worker.runtime import reset_runtime
        from worker.settings import reset_settings

        r = redis.Redis.from_url(self.redis_server.url)
        r.flushall()
        self.provider.reset()
        url = self.databases.create(label)
        rules_path = self.dir / f"{label}.yaml"
        bench_rules(rules_path, **alerts)
        env = {"REDIS_URL": self.redis_server.url, "DATABASE_URL": url, "LEADROUTER_CONFIG": str(rules_path),
               "TWILIO_API_BASE_URL": self.provider.url, "SENDGRID_API_BASE_URL": self.provider.url, **PROVIDER_ENV}
        os.environ.update(env)
        reset_settings()
        reset_runtime()
        logdir = self.dir / f"logs-{label}"
        logdir.mkdir()
        self.procs = Processes(env, logdir)
        world = World(self, r, url, sa.create_engine(url), load_rules(rules_path), self.procs)
        try:
            yield world
        finally:
            self.procs.stop_all()
            self.procs = None
            world.engine.dispose()
            reset_runtime()


@dataclass
class World:
    bench: Bench
    redis: Any
    url: str
    engine: Any
    rules: Any
    procs: Processes
    published: int = 0

    def publish(self, events: list[dict[str, Any]], chunk: int = 1000) -> None:
        from worker.publish import publish

        for i in range(0, len(events), chunk):
            part = events[i:i + chunk]
            result = publish(self.redis, part, self.rules)
            if result.accepted != len(part):
                raise RuntimeError(f"publish refused events: {result.errors[:3]}")
        self.published += len(events)

    def scalar(self, sql: str, **params: Any) -> Any:
        import sqlalchemy as sa

        with self.engine.connect() as c:
            return c.execute(sa.text(sql), params).scalar()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        import sqlalchemy as sa

        with self.engine.connect() as c:
            return list(c.execute(sa.text(sql), params))

    def events_committed(self) -> int:
        return int(self.scalar("SELECT count(*) FROM events") or 0)

    def wait_committed(self, n: int, timeout: float) -> float:
        """Wait until ``n`` events rows exist; the time.monotonic() at which that was seen."""
        wait_until(lambda: self.events_committed() >= n, timeout, f"{n} events committed", interval=0.1,
                   procs=self.procs)
        return time.monotonic()


class BackgroundLoad(threading.Thread):
    """Low-value events at a steady rate, published in small batches every 50 ms."""

    def __init__(self, world: World, per_s: int):
        super().__init__(name="background-load", daemon=True)
        self.world, self.per_s = world, per_s
        self.stopping = threading.Event()
        self.sent = 0
        self.elapsed = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        import redis

        from worker.publish import publish

        r = redis.Redis.from_url(self.world.bench.redis_server.url)
        started = time.monotonic()
        tick = 0.05
        try:
            while not self.stopping.is_set():
                due = int((time.monotonic() - started + tick) * self.per_s) - self.sent
                if due > 0:
                    publish(r, low_value_events("bg", due, 2_000, start=self.sent), self.world.rules)
                    self.sent += due
                self.stopping.wait(tick)
        except BaseException as exc:  # reported by the scenario, not lost in a thread
            self.error = exc
        self.elapsed = time.monotonic() - started

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed else 0.0

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)
        if self.error is not None:
            raise RuntimeError("background load failed") from self.error


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- scenarios


def run_noop(world: World, n: int) -> float:
    from bench import noop

    world.procs.celery("bench.noop", noop.QUEUE, 2, "noop")
    world.redis.delete(noop.COUNTER)
    for _ in range(20):   # the pool is up and warm before the clock starts
        noop.bump.apply_async(queue=noop.QUEUE)
    wait_until(lambda: int(world.redis.get(noop.COUNTER) or 0) >= 20, 60, "no-op worker start", procs=world.procs)
    world.redis.set(noop.COUNTER, 0)
    started = time.monotonic()
    for _ in range(n):
        noop.bump.apply_async(queue=noop.QUEUE)
    wait_until(lambda: int(world.redis.get(noop.COUNTER) or 0) >= n, 600, f"{n} no-op tasks", interval=0.02,
               procs=world.procs)
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
        worker = world.procs.celery("worker.app", "events,fast,alerts", 2, "worker")
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


def service_workers(world: World) -> None:
    """The worker groups exactly as ``leadrouter worker`` runs them."""
    from worker.service import worker_commands

    for name, command in worker_commands(loglevel="WARNING"):
        world.procs.start(command, name)


def first_alerts(world: World) -> dict[str, float]:
    """lead id → when the provider received its first alert request (time.time())."""
    received = {r["provider_id"]: r["received_at"] for r in world.bench.provider.requests if r["provider_id"]}
    first: dict[str, float] = {}
    for lead_id, provider_id in world.rows("SELECT lead_id, provider_id FROM deliveries WHERE provider_id IS NOT NULL"):
        at = received.get(provider_id)
        if at is not None and (lead_id not in first or at < first[lead_id]):
            first[lead_id] = at
    return first


def require_alerts() -> None:
    """Alert scenarios need the alert path importable; say so at once instead of timing out."""
    import subprocess

    check = subprocess.run([sys.executable, "-c", "import worker.alerts, worker.scheduler"], cwd=ROOT,
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError("the alert path does not import: " + check.stderr.strip().splitlines()[-1])


def warm_alert_path(world: World, n: int = 4) -> None:
    """A few alerts before the clock starts: a fresh worker process pays its first alert's imports and SDK
    set-up (seconds on a busy machine); the figures are about a running service."""
    leads = [f"warm-{i}" for i in range(n)]
    world.publish([e for lead in leads for e in warm_up(lead)])
    world.wait_committed(2 * n, 120)
    world.publish([demo_request(lead) for lead in leads])
    wait_until(lambda: len(first_alerts(world)) >= n, 120, "the warm-up alerts", interval=0.2, procs=world.procs)


def speed_to_lead(bench: Bench) -> dict[str, Any]:
    s = bench.sizes
    require_alerts()
    with bench.scenario("speed") as world:
        service_workers(world)
        warm_alert_path(world)
        leads = [f"stl-{i}" for i in range(s.crossings)]
        world.publish([e for lead in leads for e in warm_up(lead)])
        world.wait_committed(world.published, 120)
        load = BackgroundLoad(world, s.background_per_s)
        load.start()
        try:
            time.sleep(2.0)  # the background load is steady before the first crossing
            log(f"speed_to_lead: {len(leads)} crossings under {s.background_per_s} background events/s")
            published: dict[str, float] = {}
            for lead in leads:
                published[lead] = time.time()
                world.publish([demo_request(lead)])
                time.sleep(0.15)
            wait_until(lambda: first_alerts(world).keys() >= set(leads), 120, "every crossing's first alert",
                       interval=0.5, procs=world.procs)
        finally:
            load.stop()
        first = first_alerts(world)
        ms = [(first[lead] - published[lead]) * 1000 for lead in leads]
    write_histogram_svg(
        PLOT, ms, title="Speed to lead: crossing event published → first alert request at the provider",
        subtitle=(f"{len(ms)} hot leads under {load.rate:.0f} background events/s, {bench.databases.kind}, "
                  f"{os.cpu_count()} cores · targets: p50 ≤ 50 ms, p99 ≤ 250 ms"),
        x_label="milliseconds", markers=[("p50", percentile(ms, 50)), ("p99", percentile(ms, 99))])
    log(f"  distribution plotted in {PLOT.relative_to(ROOT)}")
    return {"p50": round(percentile(ms, 50), 1), "p99": round(percentile(ms, 99), 1),
            "background_events_per_s": round(load.rate, 1)}


def priority(bench: Bench) -> dict[str, Any]:
    s = bench.sizes
    require_alerts()
    with bench.scenario("priority") as world:
        service_workers(world)
        warm_alert_path(world)
        lead = "prio-lead"
        world.publish(warm_up(lead))
        world.wait_committed(world.published, 120)
        before = world.events_committed()
        log(f"priority: {s.backlog} page views queued, then one Demo Requested")
        world.publish(low_value_events("backlog", s.backlog, max(1, s.backlog // 10)), chunk=5000)
        from worker import stream

        world.wait_committed(before + 500, 120)   # the event workers are busy with the backlog
        waiting = stream.backlog(world.redis, stream.NORMAL)
        started = time.time()
        world.publish([demo_request(lead)])
        bench.provider.wait_for(lambda p: any(r["received_at"] >= started for r in p.requests), timeout=120)
        at = min(r["received_at"] for r in bench.provider.requests if r["received_at"] >= started)
        committed = world.events_committed()
        log(f"  normal lane when the Demo Requested was published: {waiting}; "
            f"backlog events committed when it alerted: {committed - before}/{s.backlog}")
        log("  " + alert_breakdown(world, lead, started, at))
    return {"backlog": s.backlog, "ms": round((at - started) * 1000, 1)}


def alert_breakdown(world: World, lead: str, published: float, received: float) -> str:
    """Where one alert's time went, from the rows it left (each stage's clock starts before its transaction)."""
    drained = world.scalar("SELECT processed_at FROM events WHERE message_id = :m", m=f"{lead}-demo")
    fired = world.scalar("SELECT min(claimed_at) FROM alert_steps WHERE lead_id = :l", l=lead)
    stamps = [("drain began", _aware(drained)), ("step fire began", _aware(fired))]
    parts, last = [], published
    for name, at in stamps:
        if at is not None:
            parts.append(f"{name} +{(at.timestamp() - last) * 1000:.0f} ms")
            last = at.timestamp()
    parts.append(f"provider received +{(received - last) * 1000:.0f} ms")
    return "publish → " + " → ".join(parts)


def cadence(bench: Bench) -> dict[str, Any]:
    """Re-alerts on a seconds-scale cadence, each measured from its due time to the provider receiving
    the last of its requests (every channel of it has gone out), as speed-to-lead is."""
    s = bench.sizes
    retries = ["2s", "4s", "6s"]
    n_leads = math.ceil(s.cadence_steps / len(retries) * 1.1)
    require_alerts()
    with bench.scenario("cadence", retries=retries) as world:
        service_workers(world)
        world.procs.beat()
        warm_alert_path(world)
        leads = [f"cad-{i}" for i in range(n_leads)]
        world.publish([e for lead in leads for e in warm_up(lead)])
        world.wait_committed(world.published, 120)
        log(f"cadence: {n_leads} hot leads crossing at {s.cadence_crossings_per_s}/s, retries {retries}, "
            f"the scheduler ticking")
        chunk = max(1, round(s.cadence_crossings_per_s / 10))
        started = time.monotonic()
        for n, i in enumerate(range(0, n_leads, chunk)):   # a steady stream of crossings, ten times a second
            time.sleep(max(0.0, started + n * chunk / s.cadence_crossings_per_s - time.monotonic()))
            world.publish([demo_request(lead) for lead in leads[i:i + chunk]])
        expected = n_leads * len(retries)

        def settled() -> bool:
            counts = dict(world.rows("SELECT status, count(*) FROM alert_steps WHERE kind = 'retry' "
                                     "AND lead_id LIKE 'cad-%' GROUP BY status"))
            return sum(counts.values()) >= expected and not counts.get("pending") and not counts.get("firing")

        with contextlib.suppress(TimeoutError):
            wait_until(settled, 120, "every retry step fired", interval=0.5, procs=world.procs)
        now = datetime.now(UTC)
        received = {r["provider_id"]: r["received_at"] for r in world.bench.provider.requests if r["provider_id"]}
        sent: dict[int, datetime] = {}   # step id -> the provider received the last of its requests
        for step_id, provider_id in world.rows("SELECT step_id, provider_id FROM deliveries "
                                               "WHERE step_id IS NOT NULL AND provider_id IS NOT NULL"):
            at = received.get(provider_id)
            if at is not None:
                at_dt = datetime.fromtimestamp(at, UTC)
                sent[step_id] = max(sent.get(step_id, at_dt), at_dt)
        rows = world.rows("SELECT id, assignment_id, step, status, due_at, claimed_at, fired_at FROM alert_steps "
                          "WHERE kind = 'retry' AND lead_id LIKE 'cad-%' ORDER BY assignment_id, step")
        lateness, answered, claimed, skipped = [], [], [], 0
        for step_id, assignment_id, step, status, due_at, claimed_at, fired_at in rows:
            due = _at(due_at)
            if due > now:
                continue
            at = sent.get(step_id)
            if status == "skipped":
                # The rep heard this reminder only when the later step it collapsed into went out.
                skipped += 1
                at = next((sent.get(i) for i, a, n, st, *_ in rows if a == assignment_id and n > step
                           and st == "done" and sent.get(i)), None)
            lateness.append(((at or now) - due).total_seconds() * 1000)
            if claimed_at is not None and fired_at is not None:
                claimed.append((_at(claimed_at) - due).total_seconds() * 1000)
                answered.append((_at(fired_at) - due).total_seconds() * 1000)
        log(f"  {len(lateness)} retry steps, {skipped} collapsed as overdue (each counted late until the step it "
            f"collapsed into went out)")
        if claimed:
            log(f"  after the due time: claimed {statistics.median(claimed):.0f} ms median, "
                f"{percentile(claimed, 99):.0f} ms p99; at the provider {statistics.median(lateness):.0f} / "
                f"{percentile(lateness, 99):.0f} ms; the providers' last answer {statistics.median(answered):.0f} / "
                f"{percentile(answered, 99):.0f} ms")
    return {"p99": round(percentile(lateness, 99), 1) if lateness else None}


def _at(value: Any) -> datetime:
    """A timestamp column that is never null here."""
    at = _aware(value)
    if at is None:
        raise ValueError("missing timestamp")
    return at


def _aware(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


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
    from worker import runtime, stream
    from worker.db import now_utc
    from worker.settings import Settings
    from worker.tasks import drain_once

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


# ---------------------------------------------------------------- plot


def _nice_step(span: float, ticks: int) -> float:
    """A round step (1, 2, 2.5 or 5 × 10ⁿ) that cuts ``span`` into about ``ticks`` parts."""
    raw = max(span, 1e-9) / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if raw <= m * magnitude)


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 or value == int(value) else f"{value:,.1f}"


def write_histogram_svg(path: Path, samples: list[float], *, title: str, subtitle: str, x_label: str,
                        markers: list[tuple[str, float]]) -> None:
    """A histogram of ``samples`` with labelled vertical markers, as a self-contained SVG file.

    The axis runs to the largest sample, or to three times the last marker when a
    few outliers lie far beyond it; those are counted in a note, never dropped silently."""
    from html import escape

    width, height = 760, 420
    left, right, top, bottom = 64, 24, 64, 56
    plot_w, plot_h = width - left - right, height - top - bottom
    largest = max(samples, default=1.0)
    limit = min(largest, 3 * max((v for _, v in markers), default=largest)) or 1.0
    tick = _nice_step(limit, 8)
    x_max = math.ceil(limit / tick) * tick
    bin_w = _nice_step(x_max, 40)
    bins = [0] * math.ceil(x_max / bin_w)
    beyond = 0
    for v in samples:
        if v > x_max:
            beyond += 1
        else:
            bins[min(len(bins) - 1, int(max(v, 0.0) // bin_w))] += 1
    y_tick = _nice_step(max(bins, default=1), 5)
    y_max = max(y_tick, math.ceil(max(bins, default=1) / y_tick) * y_tick)

    def x(v: float) -> float:
        return left + plot_w * v / x_max

    def y(n: float) -> float:
        return top + plot_h * (1 - n / y_max)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="{left}" y="24" font-size="15" font-weight="bold" fill="#222">{escape(title)}</text>',
           f'<text x="{left}" y="44" fill="#555">{escape(subtitle)}</text>']
    for i in range(int(y_max / y_tick) + 1):
        n = i * y_tick
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(n):.1f}" y2="{y(n):.1f}" stroke="#e6e6e6"/>')
        out.append(f'<text x="{left - 8}" y="{y(n) + 4:.1f}" text-anchor="end" fill="#444">{_fmt(n)}</text>')
    for i in range(int(round(x_max / tick)) + 1):
        v = i * tick
        out.append(f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{top + plot_h}" y2="{top + plot_h + 5}" '
                   f'stroke="#444"/>')
        out.append(f'<text x="{x(v):.1f}" y="{top + plot_h + 19}" text-anchor="middle" fill="#444">{_fmt(v)}</text>')
    for i, n in enumerate(bins):
        if n:
            out.append(f'<rect x="{x(i * bin_w) + 0.5:.1f}" y="{y(n):.1f}" width="{max(1.0, x(bin_w) - left - 1):.1f}" '
                       f'height="{top + plot_h - y(n):.1f}" fill="#4c78a8"/>')
    out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#444"/>')
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="#444"/>')
    colours = ["#e45756", "#b279a2", "#f58518"]
    for i, (name, v) in enumerate(markers):
        colour, at = colours[i % len(colours)], x(min(v, x_max))
        anchor, dx = ("end", -4) if at > left + plot_w * 0.8 else ("start", 4)
        out.append(f'<line x1="{at:.1f}" x2="{at:.1f}" y1="{top}" y2="{top + plot_h}" stroke="{colour}" '
                   f'stroke-width="2" stroke-dasharray="6 3"/>')
        out.append(f'<text x="{at + dx:.1f}" y="{top + 14 + 16 * i}" text-anchor="{anchor}" fill="{colour}" '
                   f'font-weight="bold">{escape(name)} {_fmt(v)} ms</text>')
    if beyond:
        out.append(f'<text x="{left + plot_w}" y="{top - 6}" text-anchor="end" fill="#555">'
                   f'{beyond} beyond {_fmt(x_max)} ms (largest {_fmt(largest)} ms), not drawn</text>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 14}" text-anchor="middle" fill="#222">'
               f'{escape(x_label)} (bins of {_fmt(bin_w)} ms)</text>')
    out.append(f'<text transform="translate(16 {top + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle" '
               f'fill="#222">hot leads</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


# ---------------------------------------------------------------- report


TARGETS = [
    ("throughput", "ratio", ">=", 3),
    ("speed_to_lead_ms", "p50", "<=", 50),
    ("speed_to_lead_ms", "p99", "<=", 250),
    ("priority_alert_ms_with_backlog", "ms", "<=", 1000),
    ("cadence_lateness_ms", "p99", "<=", 1000),
    ("per_event_cost_ratio_1m_vs_10k", None, "<=", 1.25),
]


def print_table(results: dict[str, Any]) -> None:
    rows = []
    for key, value in results.items():
        if key == "meta":
            continue
        if isinstance(value, dict):
            rows += [(f"{key}.{k}", v) for k, v in value.items()]
        else:
            rows.append((key, value))
    targets = {(k if sub is None else f"{k}.{sub}"): (op, t) for k, sub, op, t in TARGETS}
    print(f"\n{'figure':44} {'value':>12}  target")
    for name, value in rows:
        target = ""
        if name in targets:
            op, t = targets[name]
            ok = value is not None and (value >= t if op == ">=" else value <= t)
            target = f"{op} {t}  {'ok' if ok else 'MISSED' if value is not None else '-'}"
        shown = "-" if value is None else f"{value:,}" if isinstance(value, int | float) else str(value)
        print(f"{name:44} {shown:>12}  {target}")
    meta = results["meta"]
    print(f"\n{meta['date']}  {meta['machine']['cores']} cores  {meta['database']}  {meta['mode']}")


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the harness")
    parser.add_argument("--only", choices=SCENARIOS, action="append", help="run only this scenario (repeatable)")
    args = parser.parse_args(argv)
    chosen = set(args.only or SCENARIOS)
    sizes = QUICK if args.quick else FULL

    def terminate(_signum: int, _frame: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
    sys.path.insert(0, str(ROOT))
    bench = Bench(sizes, args.quick)
    results: dict[str, Any] = {
        "throughput": None, "speed_to_lead_ms": None, "priority_alert_ms_with_backlog": None,
        "cadence_lateness_ms": None, "per_event_cost_ratio_1m_vs_10k": None, "worker_rss_mb": None,
        "meta": {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                 "machine": {"cores": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version()},
                 "database": bench.databases.kind, "mode": "quick" if args.quick else "full",
                 "scenarios": sorted(chosen),
                 "sizes": {"throughput_events": sizes.throughput_events, "noop_tasks": sizes.noop_tasks,
                           "crossings": sizes.crossings, "cadence_steps": sizes.cadence_steps,
                           "cadence_crossings_per_s": sizes.cadence_crossings_per_s,
                           "cost_leads": [sizes.cost_small, sizes.cost_large],
                           "cost_batches": sizes.cost_batches, "rss_events": sizes.rss_events}},
    }
    started = time.monotonic()
    failed: list[str] = []

    def attempt(name: str, fn: Any) -> Any:
        """A scenario that fails is reported and left out; the others still run."""
        try:
            return fn()
        except Exception as exc:
            failed.append(name)
            log(f"{name} FAILED: {type(exc).__name__}: {exc}")
            traceback.print_exc(limit=-3)
            return None

    try:
        bench.start()
        if chosen & {"throughput", "worker_rss"}:
            tr = attempt("throughput", lambda: throughput_and_rss(bench, "throughput" in chosen,
                                                                  "worker_rss" in chosen)) or {}
            results["throughput"] = tr.get("throughput")
            results["worker_rss_mb"] = tr.get("worker_rss_mb")
        if "speed_to_lead" in chosen:
            results["speed_to_lead_ms"] = attempt("speed_to_lead", lambda: speed_to_lead(bench))
        if "priority" in chosen:
            results["priority_alert_ms_with_backlog"] = attempt("priority", lambda: priority(bench))
        if "cadence" in chosen:
            results["cadence_lateness_ms"] = attempt("cadence", lambda: cadence(bench))
        if "per_event_cost" in chosen:
            results["per_event_cost_ratio_1m_vs_10k"] = attempt("per_event_cost", lambda: per_event_cost(bench))
        if "board" in chosen:   # bench/board.py: the operator board's refresh with a million leads
            from bench.board import measure

            results["board"] = attempt("board", lambda: measure(bench.databases, args.quick))
    finally:
        bench.close()
    results["meta"]["failed"] = failed
    results["meta"]["seconds"] = round(time.monotonic() - started)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"written to {RESULTS.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
