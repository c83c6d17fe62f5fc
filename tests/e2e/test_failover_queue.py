"""A delivery the provider reports failed moves to the rep's other channel from an alert worker,
never from the webhook request that brought the news: the request only records the failure and
queues the fail-over on the ``alerts`` queue."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from urllib.parse import urlencode

import redis
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from tests.support.alerting import PUBLIC, TOKEN
from worker.adapters import db

STATUS = "/webhooks/twilio/status"


def _sms_only_step(sessions, lead_id: str) -> int:
    """An open lead of bob's whose first alert went out by SMS only (his email was switched off then)."""
    now = datetime.now(UTC)
    with sessions.begin() as s:
        s.add(db.Lead(id=lead_id, created_at=now, updated_at=now, score=90, tier="hot", hot_at=now, owner="bob",
                      traits={"name": "Jane Doe", "email": "jane@acme.com"}))
        episode = db.HotEpisode(lead_id=lead_id, opened_at=now, rules_hash="h")
        s.add(episode)
        s.flush()
        a = db.Assignment(episode_id=episode.id, lead_id=lead_id, rep_id="bob", team_id="na", route="team",
                          rules_hash="h", created_at=now, start_at=now, current=True)
        s.add(a)
        s.flush()
        step = db.AlertStep(lead_id=lead_id, assignment_id=a.id, step=0, kind="first", due_at=now, status="done")
        s.add(step)
        s.flush()
        d = db.Delivery(step_id=step.id, lead_id=lead_id, recipient="bob", channel="sms", to="+14155550102",
                        status="sent", provider_id="SM" + "f" * 32, created_at=now, sent_at=now, updated_at=now)
        s.add(d)
        s.flush()
        return d.id


def test_a_failed_sms_fails_over_to_email_from_the_alerts_queue_not_the_request(alert_env, providers, client):
    from worker.adapters.runtime import get_runtime
    from worker.entrypoints.tasks import failover_deliveries

    rt = get_runtime()
    delivery_id = _sms_only_step(rt.sessions, "u-failover")
    r = redis.Redis.from_url(alert_env["REDIS_URL"])
    r.delete("alerts")
    params = {"MessageSid": "SM" + "f" * 32, "MessageStatus": "undelivered", "ErrorCode": "30008",
              "AccountSid": "AC" + "0" * 32}
    signature = RequestValidator(TOKEN).compute_signature(f"{PUBLIC}{STATUS}", params)
    answer = client.post(STATUS, content=urlencode(params), headers={
        "X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 204
    assert providers.emails() == []                          # nothing was sent from the request
    queued = [json.loads(m) for m in r.lrange("alerts", 0, -1)]
    assert [(m["headers"]["task"], json.loads(base64.b64decode(m["body"]))[0]) for m in queued] == [
        ("leadrouter.failover", [[delivery_id]])]

    failover_deliveries([delivery_id])                       # what the alert worker runs
    emails = providers.emails()
    assert len(emails) == 1 and emails[0]["personalizations"][0]["to"][0]["email"] == "bob@example.com"
    failover_deliveries([delivery_id])                       # run twice (a redelivered task): no second email
    assert len(providers.emails()) == 1
    with rt.sessions() as s:
        rows = s.execute(select(db.Delivery.channel, db.Delivery.status)
                         .where(db.Delivery.lead_id == "u-failover").order_by(db.Delivery.id)).all()
    assert [tuple(row) for row in rows] == [("sms", "failed"), ("email", "sent")]
