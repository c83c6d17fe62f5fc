"""Call-first alerts under test: the voice rules, an in-process app serving the webhooks, the stand-in
playing Twilio's side of a call, and a running stack with its alert path warm."""

from __future__ import annotations

from pathlib import Path

import pytest
from ruamel.yaml import YAML
from sqlalchemy import select

from tests.fakes.providers import FakeProviderServer
from tests.fakes.voice import CallPlayer
from tests.support.alerting import TOKEN, db, hot_lead, send, signed_sms
from tests.support.stack import wait_until

ACCOUNT = "AC" + "0" * 32
CALLERS = ["+15005550006", "+15005550007"]
BOB = "+14155550102"            # the rep the test lead is routed to (na team, skill software)
LEAD_PHONE = "+14155550100"     # the lead's own phone (hot_lead's traits)
MARIA = "+14155550104"          # bob's manager
CAROL = "+4915155550103"        # the default team's rep


@pytest.fixture
def voice_env(alert_env, request):
    """The fast rules with calls first; a test may change their ``alerts`` (indirect parameter)."""
    path = Path(alert_env["LEADROUTER_CONFIG"])
    yaml = YAML()
    doc = yaml.load(path.read_text())
    doc["alerts"].update(getattr(request, "param", {}))
    for rep in doc["reps"]:
        rep["channels"] = ["voice", "sms", "email"]
    doc["alerts"]["channels"] = {"first": ["voice", "sms"], "retry": ["voice", "sms"], "escalation": ["sms"]}
    doc["voice"] = {"caller_ids": CALLERS, "contact_after": "20s", "calls_per_second": 20}
    doc["outbound"] = {"webhooks": [{"url": "http://127.0.0.1:9/crm", "events": ["lead.contacted"]}]}
    with path.open("w") as fh:
        yaml.dump(doc, fh)
    from worker.adapters.runtime import reset_runtime

    reset_runtime()
    return alert_env


@pytest.fixture
def app_client(voice_env):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from worker.entrypoints import voice, webhooks

    app = FastAPI()
    app.include_router(webhooks.router)
    app.include_router(voice.router)
    return TestClient(app)


@pytest.fixture
def player(app_client) -> CallPlayer:
    return CallPlayer(app_client, TOKEN, ACCOUNT)


@pytest.fixture
def voice_stack(voice_env, processes, providers, app_client):
    """The service running, its alert path warm: a fresh worker pays its first alert's imports and SDK set-up
    (a second or more on a busy machine), and the figures here are about a running service. The warm-up
    lead goes to carol, who claims it by SMS, so nothing of it is left to call or text anyone."""
    processes.env.update(voice_env)
    processes.celery_worker(queues="events,fast,alerts", concurrency=2)
    processes.leadrouter("beat", name="beat")
    warm = hot_lead("warm-up", country="DE")
    warm[0]["traits"].update(email="warm-up@globex.example", company={"name": "Globex", "industry": "software",
                                                                       "employee_count": 1200})
    send(warm)   # another company: acme.com's leads would go to the rep who has its account
    providers.wait_for(lambda s: calls_to(s, CAROL) and [m for m in s.sms() if m["To"] == CAROL], timeout=60)
    assert "Claimed" in signed_sms(app_client, CAROL, "1", "SM" + "9" * 32).text
    return processes


def lead_row(env, lead_id: str):
    from worker.adapters import db as models

    with db(env) as s:
        return s.get(models.Lead, lead_id)


def calls_to(server: FakeProviderServer, number: str) -> list[dict]:
    return [c for c in server.calls() if c.get("To") == number]


def ringing(env, call: dict) -> dict:
    """The call once its sender has recorded Twilio's answer: a real phone rings for seconds before
    anything comes back about it, and a callback that overtook the sender's record would be overwritten."""
    from worker.adapters import db as models

    wait_until(lambda: [d.status for d in rows_of(env, models.Delivery, models.Delivery.provider_id == call["Sid"])]
               == ["sent"], timeout=10, message=f"call {call['Sid']} recorded as sent")
    return call


def rows_of(env, model, *where):
    with db(env) as s:
        return list(s.scalars(select(model).where(*where).order_by(model.id)))


def trace_of(env, lead_id: str) -> list[tuple[str, dict]]:
    from worker.adapters import db as models

    return [(t.kind, t.detail) for t in rows_of(env, models.Trace, models.Trace.lead_id == lead_id)]
