"""Alerts end to end: the rules with a seconds-scale cadence, the environment pointing the real Twilio and
SendGrid SDKs at the local provider server, a hot lead, and reads of what was planned and sent."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from ruamel.yaml import YAML
from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import Session

from tests.fakes.providers import FakeProviderServer
from tests.support.stack import CONFIG, reset_process_state

TOKEN = "twilio-test-token"
PUBLIC = "https://leads.example.test"
REPLY = "Reply 1 to claim, 2 to pass"


def fast_rules(path: Path, **alerts: object) -> None:
    yaml = YAML()
    doc = yaml.load(CONFIG.read_text())
    for rep in doc["reps"]:
        rep["hours"] = "Mon-Sun 00:00-24:00"
        rep["holidays"] = []
    doc["alerts"].update({"retries": ["2s", "4s", "6s"], "first_contact_sla": "2s", "escalate_from_retry": 2,
                          **alerts})
    with path.open("w") as fh:
        yaml.dump(doc, fh)


def alert_environment(service_env: dict[str, str], providers: FakeProviderServer,
                      monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """``service_env`` with fast rules and both providers pointed at ``providers``, here and for the
    processes a test starts."""
    rules = Path(service_env["LEADROUTER_CONFIG"])
    fast_rules(rules)
    extra = {
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_FROM_NUMBER": "+15005550006",
        "TWILIO_API_BASE_URL": providers.url, "SENDGRID_API_KEY": "SG.test-key",
        "SENDGRID_FROM_EMAIL": "alerts@example.com", "SENDGRID_API_BASE_URL": providers.url,
        "LEADROUTER_PUBLIC_URL": PUBLIC, "LEADROUTER_TICK_SECONDS": "0.1",
    }
    for k, v in extra.items():
        monkeypatch.setenv(k, v)
    reset_process_state()   # a new runtime: new channels, pointed at ``providers``
    service_env.update(extra)
    return service_env


def wait_for_inline_sends(timeout: float = 30.0) -> None:
    """Until no fast-lane send of this process is in flight. One that outlived its test writes to the
    next test's database (on PostgreSQL its transaction deadlocked with that test's TRUNCATE)."""
    from worker.entrypoints import tasks

    if not tasks.wait_for_inline_sends(timeout):
        raise AssertionError(f"a fast-lane send still running {timeout}s after its test ended")


def webhooks_client() -> Any:
    """The webhook routes in this process, behind a TestClient."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from worker.entrypoints.webhooks import router

    app = FastAPI()
    app.include_router(router)
    return TestClient(app)


def record_queued(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[int], object]]:
    """Steps the code under test hands to Celery: (step ids, eta) per task, instead of a broker."""
    from worker.app import FIRE_STEPS, app

    calls: list[tuple[list[int], object]] = []
    send_task = app.send_task

    def record(name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        if name != FIRE_STEPS:
            return send_task(name, args, kwargs, **options)
        calls.append((list(args[0]), options.get("eta")))
        return None

    monkeypatch.setattr(app, "send_task", record)
    return calls


def hot_lead(lead: str, country: str = "US") -> list[dict]:
    traits = {"name": "Jane Doe", "email": f"{lead}@acme.com", "title": "VP Engineering", "phone": "+14155550100",
              "role": "decision_maker", "company": {"name": "Acme", "industry": "software", "employee_count": 1200},
              "address": {"country": country}}
    return [
        {"type": "identify", "messageId": f"{lead}-1", "userId": lead, "traits": traits},
        {"type": "track", "messageId": f"{lead}-2", "userId": lead, "event": "Pricing Page Viewed"},
        {"type": "track", "messageId": f"{lead}-3", "userId": lead, "event": "Demo Requested"},
    ]


def send(events: list[dict]) -> None:
    from worker.adapters.runtime import get_runtime
    from worker.services.publish import publish

    rt = get_runtime()
    assert publish(rt.redis, events, rt.rules).accepted == len(events)


def db(env) -> Session:  # type: ignore[no-untyped-def]
    return Session(create_engine(env["DATABASE_URL"]))


def sms_to(server: FakeProviderServer, number: str) -> list[dict]:
    return [m for m in server.sms() if m.get("To") == number]


def signed_sms(client, sender: str, body: str, sid: str):  # type: ignore[no-untyped-def]
    from twilio.request_validator import RequestValidator

    params = {"MessageSid": sid, "From": sender, "To": "+15005550006", "Body": body, "AccountSid": "AC" + "0" * 32}
    signature = RequestValidator(TOKEN).compute_signature(f"{PUBLIC}/webhooks/twilio/sms", params)
    return client.post("/webhooks/twilio/sms", content=urlencode(params),
                       headers={"X-Twilio-Signature": signature,
                                "Content-Type": "application/x-www-form-urlencoded"})


def make_hot(*leads: str) -> None:
    """Publish and process (in this process) the events that make these leads hot."""
    from worker.adapters import stream
    from worker.entrypoints.tasks import drain_once

    for lead in leads:
        send(hot_lead(lead))
    for lane in stream.LANES:
        while drain_once(lane)[0]:
            pass


def steps_of(env, lead: str, step: int | None = None):  # type: ignore[no-untyped-def]
    from worker.adapters import db as models

    with db(env) as s:
        q = select(models.AlertStep).where(models.AlertStep.lead_id == lead)
        if step is not None:
            q = q.where(models.AlertStep.step == step)
        return list(s.scalars(q.order_by(models.AlertStep.step)))


def deliveries(env, step_id: int) -> list:  # type: ignore[no-untyped-def]
    from worker.adapters import db as models

    with db(env) as s:
        return list(s.scalars(select(models.Delivery).where(models.Delivery.step_id == step_id)))


def make_due(env, *step_ids: int, ago: float = 0.0) -> None:  # type: ignore[no-untyped-def]
    """Set these steps due ``ago`` seconds ago (negative: that far in the future)."""
    from worker.adapters import db as models
    from worker.adapters.db import now_utc

    with db(env) as s, s.begin():
        s.execute(update(models.AlertStep).where(models.AlertStep.id.in_(step_ids))
                  .values(due_at=now_utc() - timedelta(seconds=ago)))


def drain_all() -> None:
    from worker.adapters import stream
    from worker.entrypoints.tasks import drain_once

    while drain_once(stream.NORMAL)[0] + drain_once(stream.FAST)[0]:
        pass
