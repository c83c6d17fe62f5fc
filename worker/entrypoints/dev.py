"""``leadrouter dev [--demo]``: the whole stack on one machine, stopped by one Ctrl-C.

Starts ``redis-server`` from PATH with its data under ``./var/`` (unless
``REDIS_URL`` is set), uses SQLite at ``./var/leadrouter.db`` (unless
``DATABASE_URL`` is set), migrates, then runs a worker, the scheduler and the
API as child processes. Without provider credentials alerts print on this
terminal. ``--demo`` plays a short story: a lead warms up, turns hot, is
alerted, re-alerted, and claimed through its claim link.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from worker.adapters.launcher import LaunchError, Processes, RedisServer, free_port, wait_port

VAR = Path("var")
DEMO_RETRIES = ["8s", "16s", "30s"]


class DevError(RuntimeError):
    pass


def say(text: str) -> None:
    print(f"\033[1mleadrouter dev\033[0m  {text}" if sys.stdout.isatty() else f"leadrouter dev  {text}", flush=True)


def start_redis() -> RedisServer:
    """redis-server with its data (AOF) in ``./var/redis``, on port 6390 when that is free."""
    server = RedisServer(VAR / "redis", port=free_port(6390))
    server.start(timeout=15)
    return server


def demo_rules(source: Path) -> Path:
    """The rules file with a seconds-scale cadence and reps on duty all week, so the story plays now."""
    from ruamel.yaml import YAML

    yaml = YAML()
    doc: Any = yaml.load(source.read_text())
    alerts = doc.setdefault("alerts", {})
    alerts["retries"] = DEMO_RETRIES
    alerts["first_contact_sla"] = "30s"
    for rep in doc.get("reps") or []:
        rep["hours"] = "Mon-Sun 00:00-24:00"
        rep["holidays"] = []
    out = (VAR / "demo-routing.yaml").resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as fh:
        fh.write("# written by `leadrouter dev --demo` from " + str(source) + "\n")
        yaml.dump(doc, fh)
    return out


class _Stack:
    """What ``dev`` started: Redis (unless REDIS_URL was given) and the product's processes."""

    def __init__(self) -> None:
        self.redis: RedisServer | None = None
        self.procs: Processes | None = None

    def check_alive(self) -> None:
        if self.redis is not None:
            self.redis.check_alive()
        if self.procs is not None:
            self.procs.check_alive()

    def stop(self) -> None:
        if self.procs is not None:
            self.procs.stop_all(grace=10)
        if self.redis is not None:
            self.redis.stop()


def run_dev(demo: bool = False, port: int = 8000) -> int:
    stack = _Stack()
    stopping = {"flag": False}

    def stop(_signum: int, _frame: object) -> None:
        stopping["flag"] = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        env = _prepare(stack, demo, port)
        _start_services(stack, env, port)
        say(f"API on http://127.0.0.1:{port}  (Ctrl-C stops everything)")
        if demo:
            _play_demo(env, port, stopping)
        while not stopping["flag"]:
            stack.check_alive()
            time.sleep(0.2)
        return 0
    except (DevError, LaunchError) as exc:
        print(f"leadrouter dev: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
        say("stopped")


def _prepare(stack: _Stack, demo: bool, port: int) -> dict[str, str]:
    from worker.adapters.migrate import upgrade
    from worker.adapters.settings import Settings, get_settings, reset_settings
    from worker.entrypoints.startup import rules_problems, secret_problem

    VAR.mkdir(exist_ok=True)
    env = dict(os.environ)
    if not env.get("REDIS_URL"):
        stack.redis = start_redis()
        env["REDIS_URL"] = stack.redis.url
        say(f"redis-server started ({env['REDIS_URL']}, data in {VAR / 'redis'})")
    env.setdefault("DATABASE_URL", f"sqlite:///{(VAR / 'leadrouter.db').resolve()}")
    env.setdefault("LEADROUTER_PUBLIC_URL", f"http://127.0.0.1:{port}")
    if secret_problem(env.get("LEADROUTER_SECRET_KEY") or Settings().secret_key) is not None:   # .env too
        # claim links of this run only: the worker, scheduler and API below refuse a weak key
        env["LEADROUTER_SECRET_KEY"] = secrets.token_urlsafe(48)
        say("LEADROUTER_SECRET_KEY unset or weak: a random one for this run (claim links die with it)")
    config = Path(env.get("LEADROUTER_CONFIG", "config/routing.yaml"))
    errors = rules_problems(config)
    if errors:
        raise DevError(f"the rules file {config} does not load:\n" + "\n".join(f"  {e}" for e in errors))
    if demo:
        env["LEADROUTER_CONFIG"] = str(demo_rules(config))
        say(f"demo rules: {env['LEADROUTER_CONFIG']} (re-alerts after {', '.join(DEMO_RETRIES)})")
    os.environ.update(env)
    reset_settings()
    settings = get_settings()
    upgrade(settings.database_url)
    say(f"database ready ({settings.database_url})")
    if not (settings.twilio_account_sid or settings.sendgrid_api_key):
        say("no provider credentials: alerts print here")
    return env


def _start_services(stack: _Stack, env: dict[str, str], port: int) -> None:
    # output on this terminal (console alerts print there), working directory as given
    procs = stack.procs = Processes(env, logdir=None, cwd=None)
    procs.celery_worker(concurrency=2, hostname="dev@%h", heartbeat=True)
    procs.beat()
    procs.api(port)
    wait_port(port, timeout=30, what="the API", processes=procs)


# ---------------------------------------------------------------- the demo story


def _story(now_iso: str) -> list[dict[str, Any]]:
    user, anon = "demo-jane", "demo-anon-1"
    base = {"timestamp": now_iso}
    return [
        {**base, "type": "page", "messageId": "demo-1", "anonymousId": anon, "properties": {"path": "/pricing"}},
        {**base, "type": "page", "messageId": "demo-2", "anonymousId": anon, "properties": {"path": "/case-studies"}},
        {**base, "type": "identify", "messageId": "demo-3", "userId": user, "anonymousId": anon,
         "traits": {"name": "Jane Doe", "email": "jane@acme-demo.com", "title": "VP Engineering",
                    "phone": "+14155550100", "role": "decision_maker",
                    "company": {"name": "Acme", "industry": "software", "employee_count": 1200},
                    "address": {"country": "US"}}},
        {**base, "type": "track", "messageId": "demo-4", "userId": user, "event": "Webinar Attended"},
        {**base, "type": "track", "messageId": "demo-5", "userId": user, "event": "Demo Requested",
         "properties": {"page": "/demo"}},
    ]


def _play_demo(env: dict[str, str], port: int, stopping: dict[str, bool]) -> None:
    import httpx
    from sqlalchemy import select

    from routing.events import iso
    from worker.adapters import db
    from worker.adapters.db import now_utc
    from worker.adapters.runtime import get_runtime
    from worker.services.alerts import claim_url
    from worker.services.publish import publish

    rt = get_runtime()
    story = _story(cast(str, iso(now_utc())))   # iso() of a datetime is a str
    say("demo: Jane from Acme reads the pricing page and a case study, anonymously")
    publish(rt.redis, story[:2], rt.rules)
    time.sleep(1.0)
    say("demo: she fills in a form (identify), her page views merge into her lead")
    publish(rt.redis, story[2:3], rt.rules)
    time.sleep(1.0)
    say("demo: she attends a webinar, then requests a demo: her score crosses 75")
    publish(rt.redis, story[3:], rt.rules)

    def first(query: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not stopping["flag"]:
            with rt.sessions() as s:
                row = s.execute(query).first()
            if row is not None:
                return row
            time.sleep(0.2)
        return None

    lead_id = "demo-jane"
    sent = first(select(db.Delivery.id).where(db.Delivery.lead_id == lead_id, db.Delivery.status == "sent"), 30)
    if sent is None:
        say("demo: no alert was sent within 30 s; see the worker output above")
        return
    say("demo: the first alert went out (above); nobody claims it yet...")
    retry = first(select(db.AlertStep.id).where(db.AlertStep.lead_id == lead_id, db.AlertStep.step == 1,
                                                db.AlertStep.status == "done"), 30)
    if retry is None:
        return
    say("demo: the first reminder went out (above); now the rep opens the claim link and presses Claim")
    with rt.sessions() as s:
        a = s.scalar(select(db.Assignment).where(db.Assignment.lead_id == lead_id, db.Assignment.current.is_(True)))
        if a is None or a.rep_id is None:
            return
        url = claim_url(rt.settings, rt.rules, a.rep_id, a, now_utc() - timedelta(seconds=0))
    local = url.replace(rt.settings.public_url.rstrip("/"), f"http://127.0.0.1:{port}")
    resp = httpx.post(local, data={"action": "claim"}, timeout=10)
    say(f"demo: claim answered {resp.status_code}; the cadence stops. `leadrouter explain {lead_id}` tells the "
        "whole story. Ctrl-C to stop.")
