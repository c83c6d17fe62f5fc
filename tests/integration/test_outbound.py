"""Outbound lead events: written with their cause, signed, delivered in order per lead, retried,
stopped by a 4xx, shown in ``status``; Slack notices in Block Kit. A local receiver plays the CRM
and Slack; the sender runs in this process on its own threads, as it does inside ``beat``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML
from sqlalchemy import select

from tests.fakes.receiver import WebhookReceiver
from tests.support.operator import ALWAYS, cli, cli_json, current, feed, hot_lead, sessions, ts
from tests.support.stack import SECRET_KEY
from worker.adapters import db

SECRET = SECRET_KEY                 # LEADROUTER_SECRET_KEY of service_env
LEAD_EVENTS = {"lead.hot", "lead.assigned", "lead.claimed", "lead.reassigned", "lead.contacted", "lead.unrouted"}


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver(SECRET)
    yield r
    r.stop()


def write_rules(path: Path, webhooks: list[dict[str, Any]], **outbound: Any) -> None:
    yaml = YAML()
    doc = yaml.load(path.read_text())
    for rep in doc["reps"]:
        rep["hours"] = ALWAYS
        rep.pop("holidays", None)
    doc["outbound"] = {"webhooks": webhooks, "retry_initial": "100ms", "retry_max": "400ms", "timeout": "1s",
                       **outbound}
    with path.open("w") as fh:
        yaml.dump(doc, fh)


@pytest.fixture
def env(service_env: dict[str, str], receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    write_rules(Path(service_env["LEADROUTER_CONFIG"]),
                [{"url": f"{receiver.url}/crm/all"},
                 {"url": f"{receiver.url}/crm/owners", "events": ["lead.assigned", "lead.claimed"]}])
    slack = f"{receiver.url}/slack/T0001/B0001/secret"
    monkeypatch.setenv("SLACK_WEBHOOK_URL", slack)
    from tests.support.stack import hold_alerts, reset_process_state

    reset_process_state()
    hold_alerts(monkeypatch)   # alerts are not under test here
    return {**service_env, "SLACK_WEBHOOK_URL": slack}


@pytest.fixture
def sender(env: dict[str, str]) -> Iterator[Any]:
    from worker.adapters.runtime import get_runtime
    from worker.services.outbound import Sender

    rt = get_runtime()
    s = Sender(rt.sessions, lambda: get_runtime().rules, secret=SECRET, slack_url=env["SLACK_WEBHOOK_URL"],
               threads=4)
    stop = threading.Event()
    thread = threading.Thread(target=s.run_forever, args=(stop, 0.05), daemon=True)
    thread.start()
    yield s
    stop.set()
    thread.join(5)
    s.close()


def outbox(lead_id: str | None = None) -> list[db.OutboundWebhook]:
    with sessions()() as s:
        q = select(db.OutboundWebhook).order_by(db.OutboundWebhook.id)
        if lead_id:
            q = q.where(db.OutboundWebhook.lead_id == lead_id)
        return list(s.scalars(q))


def settled() -> bool:
    return all(row.status != "pending" for row in outbox())


# ---------------------------------------------------------------- what is queued


def test_each_ownership_change_queues_its_event_in_the_same_transaction(env: dict[str, str],
                                                                        receiver: WebhookReceiver) -> None:
    from worker.adapters.runtime import get_runtime
    from worker.services.claims import claim

    feed(hot_lead("u-crm"))
    first = current("u-crm")
    assert first is not None and first.rep_id == "bob"
    rows = outbox("u-crm")
    crm_all = [(r.event, r.receiver.rsplit("/", 1)[1]) for r in rows if r.receiver.endswith("/crm/all")]
    assert crm_all == [("lead.hot", "all"), ("lead.assigned", "all")]
    assert [r.event for r in rows if r.receiver.endswith("/crm/owners")] == ["lead.assigned"]
    assert [r.event for r in rows if r.receiver == "slack"] == ["lead.hot"]

    cli(env, "lead", "assign", "u-crm", "carol", "--reason", "territory")
    rt = get_runtime()
    with rt.sessions.begin() as s:
        assert claim(s, rt.rules, "u-crm", "carol", db.now_utc(), via="sms").ok
    feed([{"type": "track", "messageId": "u-crm-contact", "userId": "u-crm", "event": "Lead Contacted",
           "timestamp": ts(0)}])

    rows = [r for r in outbox("u-crm") if r.receiver.endswith("/crm/all")]
    assert [r.event for r in rows] == ["lead.hot", "lead.assigned", "lead.assigned", "lead.reassigned",
                                       "lead.claimed", "lead.contacted"]
    import json

    bodies = [json.loads(r.body) for r in rows]
    assert len({b["id"] for b in bodies}) == len(bodies) and all(b["id"] == r.event_id for b, r in zip(bodies, rows, strict=True))
    hot, assigned, manual, reassigned, claimed, contacted = bodies
    assert hot["rep"] is None and hot["lead"]["tier"] in ("hot", "red_hot") and hot["lead"]["score"] >= 80
    assert hot["lead"]["score_breakdown"]["events"]["Demo Requested"]["points"] > 0
    assert assigned["rep"]["id"] == "bob" and assigned["decision"]["route"] == "team"
    assert any(c["rep"] == "bob" for c in assigned["decision"]["candidates"])
    assert manual["rep"]["id"] == "carol" and manual["previous_rep"]["id"] == "bob"
    assert manual["decision"]["route"] == "manual" and manual["decision"]["actor"]
    assert reassigned["rep"]["id"] == "carol" and reassigned["previous_rep"]["id"] == "bob"
    assert claimed["rep"]["id"] == "carol" and claimed["detail"] == {"via": "sms"}
    assert contacted["detail"]["message_id"] == "u-crm-contact"
    owners = [r.event for r in outbox("u-crm") if r.receiver.endswith("/crm/owners")]
    assert owners == ["lead.assigned", "lead.assigned", "lead.claimed"]


def test_an_unroutable_lead_is_announced_to_the_crm_and_slack(env: dict[str, str]) -> None:
    from tests.support.stack import reset_process_state

    path = Path(env["LEADROUTER_CONFIG"])
    yaml = YAML()
    doc = yaml.load(path.read_text())
    for rep in doc["reps"]:
        rep["max_open"] = 1          # the team's two reps take one lead each, then nobody is free
    del doc["routing"]["on_call"]
    with path.open("w") as fh:
        yaml.dump(doc, fh)
    reset_process_state()
    feed(hot_lead("u-full-1"))
    feed(hot_lead("u-full-2"))
    feed(hot_lead("u-nobody"))
    assert current("u-nobody") is None
    events = [(r.event, r.receiver.rsplit("/", 1)[-1]) for r in outbox("u-nobody")]
    assert ("lead.unrouted", "all") in events and ("lead.unrouted", "slack") in events
    assert ("lead.assigned", "owners") not in events


# ---------------------------------------------------------------- delivery


def test_signed_in_order_per_lead_and_retried_through_a_run_of_500s(env: dict[str, str], receiver: WebhookReceiver,
                                                                    sender: Any) -> None:
    receiver.fail_next(("status", 500), ("status", 503), ("status", 500), ("drop",))
    for user in ("u-a", "u-b", "u-c"):
        feed(hot_lead(user))
    receiver.wait_for(lambda r: settled(), timeout=30)

    rows = outbox()
    assert {r.status for r in rows} == {"delivered"}
    crm = receiver.crm(ok_only=False)
    assert crm and all(r.signature_ok for r in crm)
    assert all(r.headers["x-leadrouter-event"] == r.json["event"] for r in crm)
    assert all(r.headers["x-leadrouter-id"] == r.json["id"] for r in crm)
    # every row arrived exactly once with a 200; the failed attempts repeated the same id
    delivered = [r.headers["x-leadrouter-id"] for r in receiver.crm()]
    assert sorted(delivered) == sorted(r.event_id for r in rows if r.receiver != "slack")
    failed_ids = [r.headers["x-leadrouter-id"] for r in crm if r.answered != 200]
    assert len(failed_ids) >= 1 and set(failed_ids) <= set(delivered)
    assert sum(r.attempts for r in rows) == len(rows) + 4
    # per lead and receiver, the receiver saw the events in the order they happened
    for user in ("u-a", "u-b", "u-c"):
        for path in ("/crm/all", "/crm/owners"):
            seen = [r.json["event"] for r in receiver.crm() if r.path == path and r.json["lead"]["id"] == user]
            expected = [row.event for row in outbox(user) if row.receiver.endswith(path)]
            assert seen == expected and seen
    slack = receiver.slack()
    assert len(slack) == 3 and all(r.problems == [] for r in slack)
    assert "signature" not in " ".join(slack[0].headers)            # Slack gets no CRM headers


def test_a_4xx_stops_that_delivery_shows_in_status_and_the_next_one_goes(env: dict[str, str],
                                                                        receiver: WebhookReceiver,
                                                                        sender: Any) -> None:
    receiver.fail_next(("status", 410), path="/crm/all")
    feed(hot_lead("u-gone"))
    receiver.wait_for(lambda r: settled(), timeout=30)
    rows = outbox("u-gone")
    failed = [r for r in rows if r.status == "failed"]
    assert len(failed) == 1 and failed[0].attempts == 1 and failed[0].last_status == 410
    assert all(r.status == "delivered" for r in rows if r is not failed[0])

    status = cli_json(env, "status")
    assert status["failed_webhooks"] == 1 and status["outbound"]["failed"] == 1
    recent = status["outbound"]["recent_failures"][0]
    assert recent["event"] == failed[0].event and recent["lead"] == "u-gone" and "410" in recent["error"]
    assert "secret" not in str(status["outbound"]) and recent["receiver"].startswith("127.0.0.1:")
    text = cli(env, "status").stdout
    assert "webhooks failed" in text and "HTTP 410" in text


def test_408_and_429_with_retry_after_are_retried(env: dict[str, str], receiver: WebhookReceiver,
                                                  sender: Any) -> None:
    receiver.fail_next(("status", 408), ("status", 429, {"Retry-After": "1"}), path="/crm/all")
    feed(hot_lead("u-busy"))
    receiver.wait_for(lambda r: settled(), timeout=30)
    assert {r.status for r in outbox("u-busy")} == {"delivered"}
    attempts = [r for r in receiver.crm(ok_only=False) if r.json["event"] == "lead.hot" and r.path == "/crm/all"]
    assert [r.answered for r in attempts] == [408, 429, 200]
    assert attempts[2].at - attempts[1].at >= 0.9          # Retry-After: 1 was honoured over the 100ms backoff


def test_a_hung_receiver_holds_only_its_own_lead(env: dict[str, str], receiver: WebhookReceiver,
                                                 sender: Any) -> None:
    receiver.fail_next(("hang",), path="/crm/all")
    feed(hot_lead("u-slow"))
    feed(hot_lead("u-fast"))
    # the other lead's events all arrive while the first request hangs
    receiver.wait_for(lambda r: {x.json["event"] for x in r.crm() if x.json["lead"]["id"] == "u-fast"}
                      >= {"lead.hot", "lead.assigned"})
    receiver.release()
    receiver.wait_for(lambda r: settled(), timeout=30)
    slow = outbox("u-slow")
    assert {r.status for r in slow} == {"delivered"}
    assert max(r.attempts for r in slow) >= 2     # the hung attempt timed out and was tried again


def test_gives_up_after_the_retry_window(env: dict[str, str], receiver: WebhookReceiver) -> None:
    from worker.adapters.runtime import get_runtime
    from worker.services.outbound import Sender

    # a window long enough that the first attempt, however loaded the machine, comes well inside it
    write_rules(Path(env["LEADROUTER_CONFIG"]), [{"url": f"{receiver.url}/crm/all", "events": ["lead.hot"]}],
                retry_for="3s")
    from tests.support.stack import reset_process_state

    reset_process_state()
    receiver.fail_next(*[("status", 503)] * 50, path="/crm")
    feed(hot_lead("u-down"))
    rt = get_runtime()
    s = Sender(rt.sessions, lambda: get_runtime().rules, secret=SECRET, slack_url=env["SLACK_WEBHOOK_URL"],
               threads=2)
    try:
        receiver.wait_for(lambda r: (s.run_once(), settled())[1], timeout=10)
    finally:
        s.close()
    row, slack = outbox("u-down")
    assert slack.receiver == "slack" and slack.status == "delivered"
    assert row.status == "failed" and row.attempts >= 2 and row.last_error.startswith("gave up after")
    assert cli_json(env, "status")["outbound"]["failed"] == 1


def test_forget_erases_the_outbox_and_cancels_what_was_not_sent(env: dict[str, str]) -> None:
    email, phone = "erin.forget@acme-corp.com", "+14155550199"
    feed(hot_lead("u-erase", email=email, phone=phone))
    rows = outbox("u-erase")
    assert rows and any(email in r.body for r in rows)
    cli(env, "forget", "u-erase")
    from worker.services.operator import forgotten_id

    rows = outbox(forgotten_id("u-erase"))
    assert rows and all("u-erase" not in r.body for r in rows)
    assert all(email not in r.body and phone not in r.body for r in rows)
    assert {r.status for r in rows} == {"cancelled"}


def test_slack_notices_are_block_kit_and_escape_what_leads_typed(env: dict[str, str], receiver: WebhookReceiver,
                                                                 sender: Any) -> None:
    events = hot_lead("u-inject")
    events[0]["traits"]["name"] = "<!channel> Mallory <https://evil.example|click> & co"
    feed(events)
    receiver.wait_for(lambda r: r.slack())
    msg = receiver.slack()[0]
    assert msg.problems == []
    text = msg.body.decode()
    payload = msg.json
    assert "evil.example" not in text
    mrkdwn = [payload["text"]] + [t["text"] for t in _text_objects(payload["blocks"]) if t["type"] == "mrkdwn"]
    assert mrkdwn and not any("<" in t or ">" in t for t in mrkdwn)      # no mention or link can be formed
    assert any("&lt;!channel&gt; Mallory" in t for t in mrkdwn)
    assert payload["blocks"][0]["type"] == "header" and "Mallory" in payload["blocks"][0]["text"]["text"]
    assert "Bob" in payload["blocks"][1]["text"]["text"]          # to whom it went
    assert "leadrouter explain u-inject" in text


def _text_objects(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for b in blocks:
        if "text" in b:
            out.append(b["text"])
        out += b.get("fields", []) + b.get("elements", [])
    return out
