"""An operator's hand on a running service: every lead command through the CLI while a real worker
and scheduler run, with the real SDKs against the local provider server, and the CRM webhook and
Slack notices reaching a local receiver from the ``beat`` process."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from tests.fakes.receiver import WebhookReceiver
from tests.support.alerting import hot_lead, send, sms_to
from tests.support.stack import ROOT, SECRET_KEY, wait_until

BOB, ALICE, CAROL = "+14155550102", "+14155550101", "+4915155550103"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver(SECRET_KEY)
    yield r
    r.stop()


@pytest.fixture
def running(alert_env: dict[str, str], processes: Any, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch,
            request: pytest.FixtureRequest) -> dict[str, str]:
    """A worker and ``beat`` on the fast rules; a test may change their ``alerts`` block (indirect parameter)."""
    path = Path(alert_env["LEADROUTER_CONFIG"])
    yaml = YAML()
    doc = yaml.load(path.read_text())
    doc["alerts"].update(getattr(request, "param", {}))
    doc["outbound"] = {"webhooks": [{"url": f"{receiver.url}/crm"}], "retry_initial": "200ms", "retry_max": "1s",
                       "timeout": "2s"}
    with path.open("w") as fh:
        yaml.dump(doc, fh)
    env = {**alert_env, "SLACK_WEBHOOK_URL": f"{receiver.url}/slack/T1/B1/x"}
    monkeypatch.setenv("SLACK_WEBHOOK_URL", env["SLACK_WEBHOOK_URL"])
    from tests.support.stack import reset_process_state

    reset_process_state()
    processes.env.update(env)
    processes.celery_worker(queues="events,fast,alerts", concurrency=2)
    processes.leadrouter("beat", name="beat")
    return env


def in_flight(env: dict[str, str], lead: str) -> list[str]:
    """The lead's alert steps being fired and deliveries still waiting for their provider's answer."""
    from worker.adapters import db

    with session(env) as s:
        steps = s.scalars(select(db.AlertStep.id).where(db.AlertStep.lead_id == lead, db.AlertStep.status == "firing"))
        waiting = s.scalars(select(db.Delivery.id).where(db.Delivery.lead_id == lead, db.Delivery.status == "pending"))
        return [f"step {i} firing" for i in steps] + [f"delivery {i} pending" for i in waiting]


def cli(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "worker.entrypoints.cli", *args], env={**os.environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def session(env: dict[str, str]) -> Session:
    return Session(create_engine(env["DATABASE_URL"]))


def owner(env: dict[str, str], lead: str) -> str | None:
    from worker.adapters import db

    with session(env) as s:
        a = s.scalar(select(db.Assignment).where(db.Assignment.lead_id == lead, db.Assignment.current.is_(True)))
        return a.rep_id if a else None


def crm_events(receiver: WebhookReceiver, lead: str) -> list[tuple[str, str | None]]:
    return [(r.json["event"], (r.json["rep"] or {}).get("id")) for r in receiver.crm() if r.json["lead"]["id"] == lead]


# the reminders it checks at 2, 4 and 6 s, and no reassignment (with a second escalation notice) for a minute
@pytest.mark.parametrize("running", [{"first_contact_sla": "60s"}], indirect=True, ids=["no-early-reassignment"])
def test_a_hung_crm_never_delays_the_alert(running: dict[str, str], providers: Any,
                                          receiver: WebhookReceiver) -> None:
    receiver.fail_next(("hang",), path="/crm")
    send(hot_lead("u-hang"))
    # the SMS arrives while the CRM still holds the first webhook open
    providers.wait_for(lambda s: sms_to(s, BOB), timeout=15)
    # the CRM is holding the first webhook open; the alert went out regardless
    receiver.wait_for(lambda r: len(r.crm(ok_only=False)) == 1, timeout=10)
    assert receiver.crm() == []
    receiver.release()
    receiver.wait_for(lambda r: ("lead.assigned", "bob") in crm_events(r, "u-hang"), timeout=20)
    assert all(r.signature_ok for r in receiver.crm())
    # the hung attempt timed out and was sent again with the same id: the CRM can tell it is a retry
    ids = [r.headers["x-leadrouter-id"] for r in receiver.crm(ok_only=False) if r.json["event"] == "lead.hot"]
    assert len(ids) == 2 and len(set(ids)) == 1
    slack = receiver.wait_for(lambda r: r.slack())
    assert slack[0].problems == [] and "Bob Okafor" in slack[0].body.decode()

    def escalations(r: WebhookReceiver) -> list[Any]:
        return [x for x in r.slack() if x.json["text"].startswith("Escalated")]

    # unclaimed: from the 2nd reminder the manager is alerted, and the team channel hears of it once
    receiver.wait_for(escalations, timeout=20)
    providers.wait_for(lambda s: len(sms_to(s, BOB)) >= 4, timeout=20)     # the 3rd reminder escalated too
    notice = escalations(receiver)
    assert len(notice) == 1 and notice[0].problems == [] and "Maria Lopez" in notice[0].body.decode()


# One reminder 2 s after each first alert, the next an hour on: a slow machine can never run a cadence out
# (and reassign the lead on its own) between two of the operator's commands.
@pytest.mark.parametrize("running", [{"retries": ["2s", "1h", "2h"]}], indirect=True, ids=["one-quick-reminder"])
def test_every_lead_command_through_the_cli_against_a_running_worker(running: dict[str, str], providers: Any,
                                                                     receiver: WebhookReceiver) -> None:
    from worker.adapters import db

    env, me = running, getpass.getuser()
    # pause: the lead is scored and routed, nobody is alerted
    assert "paused" in cli(env, "pause", "--reason", "carrier maintenance")
    send(hot_lead("u-op"))
    wait_until(lambda: owner(env, "u-op") == "bob", timeout=15, message="routing while paused")
    status = json.loads(cli(env, "status", "--json"))
    assert status["paused"] and status["pause"]["actor"] == me and status["hot_leads_open"] == 1
    time.sleep(1.5)
    assert sms_to(providers, BOB) == []
    cli(env, "resume")
    providers.wait_for(lambda s: sms_to(s, BOB), timeout=15)

    # assign by hand: bob's cadence stops, carol's starts
    assert "carol" in cli(env, "lead", "assign", "u-op", "carol", "--reason", "speaks German")
    providers.wait_for(lambda s: sms_to(s, CAROL), timeout=15)
    receiver.wait_for(lambda r: ("lead.reassigned", "carol") in crm_events(r, "u-op"), timeout=15)
    bob_count = len(sms_to(providers, BOB))

    # release: back to routing, which picks a rep again and alerts them
    out = cli(env, "lead", "release", "u-op", "--reason", "carol is out")
    rerouted = owner(env, "u-op")
    assert rerouted in ("alice", "bob") and rerouted in out
    number = {"alice": ALICE, "bob": BOB}[rerouted]
    providers.wait_for(lambda s: len(sms_to(s, number)) > (bob_count if rerouted == "bob" else 0), timeout=15)

    # close: everything stops; not even the reminder due 2 s after the first alert follows
    cli(env, "lead", "close", "u-op", "--reason", "duplicate of u-1")
    assert owner(env, "u-op") is None
    # a step a worker claimed just before the close may still be sending: its requests count as before
    wait_until(lambda: not in_flight(env, "u-op"), timeout=30,
               message="the closed lead's alert steps and deliveries done with")
    sent = len(providers.sms())
    time.sleep(4.5)
    assert len(providers.sms()) == sent

    # rep away / back: a new lead skips the away rep
    cli(env, "rep", "away", "bob", "--for", "2h")
    other = hot_lead("u-op2")
    other[0]["traits"]["phone"] = "+14155550111"
    send(other)
    wait_until(lambda: owner(env, "u-op2") == "alice", timeout=15, message="routing around the away rep")
    cli(env, "rep", "back", "bob")
    assert not json.loads(cli(env, "status", "--json"))["reps_away"]

    # every action is in the lead's trace with who did it and why
    trace = json.loads(cli(env, "explain", "u-op", "--json"))
    text = json.dumps(trace)
    for kind, reason in (("operator.assign", "speaks German"), ("operator.release", "carol is out"),
                         ("operator.close", "duplicate of u-1")):
        assert kind in text and reason in text
    with session(env) as s:
        rows = list(s.scalars(select(db.Trace).where(db.Trace.lead_id == "u-op", db.Trace.kind.like("operator.%"))))
        assert [t.kind for t in rows] == ["operator.assign", "operator.release", "operator.close"]
        assert {t.actor for t in rows} == {me}

    # forget: no trace of the person anywhere, the counts stay
    cli(env, "forget", "u-op")
    with session(env) as s:
        for table in db.Base.metadata.sorted_tables:
            for row in s.execute(table.select()).mappings():
                blob = json.dumps(dict(row), default=str)
                assert "u-op@acme.com" not in blob and "+14155550100" not in blob, table.name
        from worker.services.operator import forgotten_id

        assert s.get(db.Lead, "u-op") is None                 # the id itself was the person's too
        lead = s.get(db.Lead, forgotten_id("u-op"))
        assert lead is not None and lead.traits == {} and lead.event_count == 3
    assert providers.violations == []
