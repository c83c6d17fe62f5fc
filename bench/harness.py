"""One scenario's world: the private Redis, a fresh database, the local providers, the product's
processes; and the events, rules and helpers the scenarios share."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.stack import CONFIG, ROOT, Databases, Processes, RedisServer, wait_for

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
        from worker.adapters.runtime import reset_runtime
        from worker.adapters.settings import reset_settings

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
        from worker.services.publish import publish

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
        wait_for(lambda: self.events_committed() >= n, timeout, f"{n} events committed", interval=0.1,
                   processes=self.procs)
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

        from worker.services.publish import publish

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


def service_workers(world: World) -> None:
    """The worker groups exactly as ``leadrouter worker`` runs them."""
    from worker.entrypoints.service import worker_commands

    for name, command in worker_commands(loglevel="WARNING"):
        world.procs.start(*command, name=name)


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

    check = subprocess.run([sys.executable, "-c", "import worker.services.alerts, worker.entrypoints.scheduler"], cwd=ROOT,
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
    wait_for(lambda: len(first_alerts(world)) >= n, 120, "the warm-up alerts", interval=0.2, processes=world.procs)


def start_alerting(world: World, *, beat: bool = False) -> None:
    """The worker groups as ``leadrouter worker`` runs them (and, with ``beat``, the scheduler), the alert
    path warmed up."""
    service_workers(world)
    if beat:
        world.procs.beat()
    warm_alert_path(world)


def one_step_from_hot(world: World, leads: list[str]) -> None:
    """``leads`` committed, each one ``Demo Requested`` away from hot (:func:`warm_up`)."""
    world.publish([e for lead in leads for e in warm_up(lead)])
    world.wait_committed(world.published, 120)


def at_utc(value: Any) -> datetime:
    """A timestamp column that is never null here."""
    at = aware_utc(value)
    if at is None:
        raise ValueError("missing timestamp")
    return at


def aware_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
