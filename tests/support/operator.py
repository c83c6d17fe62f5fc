"""The operator's side: the real ``leadrouter`` CLI, and a database filled the way production fills it
(events published to the stream and drained in this process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.support.stack import ROOT, hold_alerts
from worker.adapters import db

EMAIL = "jane.doe@acme-corp.com"
PHONE = "+14155559876"
ALWAYS = "Mon-Sun 00:00-24:00"


def cli(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "worker.entrypoints.cli", *args], env={**os.environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    if ok:
        assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def cli_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(cli(env, *args, "--json").stdout)


def send(events: list[dict[str, Any]]) -> None:
    from worker.adapters.runtime import get_runtime
    from worker.services.publish import publish

    rt = get_runtime()
    result = publish(rt.redis, events, rt.rules, kick=lambda r, lane: None)
    assert not result.errors, result.errors


def feed(events: list[dict[str, Any]]) -> None:
    """One event at a time, in order: the fast lane would otherwise overtake the identify that precedes it."""
    for event in events:
        send([event])
        drain()


def drain() -> None:
    from worker.entrypoints.tasks import drain_once

    for _ in range(10):
        if drain_once("fast")[0] + drain_once("normal")[0] == 0:
            return


def ts(minutes_ago: float) -> str:
    return (db.now_utc() - timedelta(minutes=minutes_ago)).isoformat().replace("+00:00", "Z")


def hot_lead(user: str, industry: str = "software", email: str | None = None, phone: str | None = None,
             anon: str | None = None) -> list[dict[str, Any]]:
    """Identify (fit 45) plus two strong signals (45): a lead crossing hot (score 90)."""
    traits = {"name": f"{user} person", "email": email or f"{user}@example.org", "role": "decision_maker",
              "company": {"name": "Acme Corp", "domain": f"{user}-corp.com", "industry": industry,
                          "employee_count": 500},
              "address": {"country": "US"}}
    if phone:
        traits["phone"] = phone
    ident: dict[str, Any] = {"type": "identify", "messageId": f"{user}-1", "userId": user, "traits": traits,
                             "timestamp": ts(10)}
    if anon:
        ident["anonymousId"] = anon
    return [
        ident,
        {"type": "track", "messageId": f"{user}-2", "userId": user, "event": "Pricing Downloaded",
         "properties": {"contact": email or "", "phone": phone or ""}, "timestamp": ts(8)},
        {"type": "track", "messageId": f"{user}-3", "userId": user, "event": "Demo Requested",
         "properties": {"form_email": email or ""}, "timestamp": ts(5)},
    ]


def sessions() -> Any:
    from worker.adapters.runtime import get_runtime

    return get_runtime().sessions


def current(lead_id: str) -> db.Assignment | None:
    with sessions()() as s:
        return s.scalar(select(db.Assignment).where(db.Assignment.lead_id == lead_id, db.Assignment.current.is_(True)))


def around_the_clock(service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Every rep in hours around the clock, so routing does not depend on when the test runs; due alerts
    stay pending rows (which is what the operator's views read) instead of going out."""
    path = Path(service_env["LEADROUTER_CONFIG"])
    text = path.read_text().replace("Mon-Fri 08:00-18:00", ALWAYS).replace("Mon-Fri 09:00-17:30", ALWAYS)
    path.write_text(text.replace('    holidays: ["2026-12-25"]\n', ""))
    hold_alerts(monkeypatch)
    return service_env


def all_text(session: Any) -> list[tuple[str, str, str]]:
    """(table, column, value) for every text or JSON value in every table."""
    out = []
    for t in db.Base.metadata.sorted_tables:
        for row in session.execute(t.select()).mappings():
            for col, value in row.items():
                if isinstance(value, (dict, list)):
                    out.append((t.name, col, json.dumps(value)))
                elif isinstance(value, str):
                    out.append((t.name, col, value))
    return out
