"""Routing that heals itself, on a running stack (a Celery worker, the scheduler, the local Twilio
and SendGrid): ``routing.auto_away`` sets a rep away after missed first alerts and tells their
manager; ``routing.fairness.credit_back`` gives a lead closed as junk back to the round robin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from tests.support.alerting import hot_lead, send, sms_to
from tests.support.stack import ROOT, wait_until
from worker.adapters import db

BOB = "+14155550102"
MARIA = "+14155550104"


def _routing(path: Path, skills: bool = True, alerts: dict[str, Any] | None = None, **extra: Any) -> None:
    yaml = YAML()
    doc = yaml.load(path.read_text())
    doc["routing"].update(extra)
    doc["alerts"].update(alerts or {})
    if not skills:
        for rep in doc["reps"]:
            rep["skills"] = []
    with path.open("w") as fh:
        yaml.dump(doc, fh)


def _cli(env: dict[str, str], *args: str) -> Any:
    out = subprocess.run([sys.executable, "-m", "worker.entrypoints.cli", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, f"{args}: {out.stdout}\n{out.stderr}"
    return json.loads(out.stdout) if "--json" in args else out.stdout


def _decision(env: dict[str, str], lead_id: str) -> dict[str, Any] | None:
    """The lead's routing decision once it has one (the lead may not exist yet)."""
    out = subprocess.run([sys.executable, "-m", "worker.entrypoints.cli", "explain", lead_id, "--json"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout).get("decision") if out.returncode == 0 else None


def _start(alert_env: dict[str, str], processes: Any) -> None:
    processes.env.update(alert_env)
    processes.celery_worker(queues="events,fast,alerts", concurrency=2)
    processes.leadrouter("beat", name="beat")


def test_auto_away_after_two_missed_first_alerts_tells_the_manager(alert_env, processes, providers):
    # the 2 s SLA decides the misses; no cadence runs out, so alice misses nothing before heal-3 comes
    _routing(Path(alert_env["LEADROUTER_CONFIG"]), auto_away={"after_missed": 2, "for": "30m"},
             alerts={"retries": ["1h"]})
    _start(alert_env, processes)
    send(hot_lead("heal-1"))            # software: bob's skill, and acme.com is his account from then on
    providers.wait_for(lambda s: sms_to(s, BOB), timeout=20)
    send(hot_lead("heal-2"))
    providers.wait_for(lambda s: len([m for m in sms_to(s, BOB) if "Reply 1" in m["Body"]]) >= 2, timeout=20)

    def bob() -> dict[str, Any]:
        return next(r for r in _cli(processes.env, "status", "--json")["reps"] if r["rep"] == "bob")

    wait_until(lambda: bob()["away"], timeout=30, message="bob set away by auto_away")
    shown = bob()
    assert "auto-away: 2 first alerts in a row" in shown["away_reason"] and shown["away_until"]
    engine = create_engine(alert_env["DATABASE_URL"])
    try:
        def told() -> list[db.Delivery]:
            with Session(engine) as s:
                steps = [st.id for st in s.scalars(select(db.AlertStep).where(db.AlertStep.kind == "escalation"))
                         if (st.note or "").startswith("auto-away")]
                return list(s.scalars(select(db.Delivery).where(db.Delivery.step_id.in_(steps),
                                                                db.Delivery.recipient == "maria",
                                                                db.Delivery.status.in_(("sent", "delivered")))))
        wait_until(lambda: told(), timeout=30, message="the manager's escalation sent")
        assert {d.channel for d in told()} <= {"sms", "email"}
    finally:
        engine.dispose()
    assert any(m for m in sms_to(providers, MARIA))
    # a third lead, of bob's skill and another company, skips him, and explain says why
    third = hot_lead("heal-3")
    third[0]["traits"]["email"] = "jane@heal-3-corp.com"
    send(third)
    decision = wait_until(lambda: _decision(processes.env, "heal-3"), timeout=20, message="heal-3 routed")
    candidates = {c["rep"]: c for c in decision["candidates"]}
    assert decision["rep"] == "alice" and candidates["bob"]["status"] == "skipped", decision
    assert "auto-away: 2 first alerts in a row" in candidates["bob"]["reason"]


def test_credit_back_gives_a_junk_lead_back_to_the_round_robin(alert_env, processes, providers):
    # round robin alone; a cadence an hour long, so no lead is reassigned by it on a slow machine before it is closed
    _routing(Path(alert_env["LEADROUTER_CONFIG"]), skills=False, fairness={"credit_back": True},
             alerts={"retries": ["1h"]})
    _start(alert_env, processes)

    def lead(name: str) -> list[dict[str, Any]]:
        events = hot_lead(name)
        events[0]["traits"]["email"] = f"jane@{name}-corp.com"        # a company nobody owns yet: team routing
        return events

    def routed(name: str) -> dict[str, Any]:
        return wait_until(lambda: _decision(processes.env, name), timeout=20, message=f"{name} routed")

    send(lead("credit-1"))
    first = routed("credit-1")
    assert first["rep"] == "alice" and first["team"] == "na"        # a tie goes to config order
    _cli(processes.env, "lead", "close", "credit-1", "--reason", "junk")
    send(lead("credit-2"))
    second = routed("credit-2")
    reasons = {c["rep"]: c["reason"] for c in second["candidates"]}
    assert second["rep"] == "alice", reasons                          # without credit back: bob (1/1 vs 0/1)
    assert "load 0/1=0.00 (1 credited back)" in reasons["alice"]
