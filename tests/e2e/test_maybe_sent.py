"""A "maybe sent" SMS (its request went out, its answer never came) is settled by the status callback or,
failing that, by asking Twilio, and never sent twice. The real SDKs against the local provider server;
:func:`worker.alerts.fire_steps` and :func:`worker.alerts.settle_maybe_sent` called as the workers would."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit

from tests.e2e.test_alert_batches import deliveries, make_hot, steps_of
from tests.e2e.test_alerts_flow import PUBLIC, TOKEN, sms_to


def _first_alert(env, lead: str):
    from worker.alerts import fire_steps

    make_hot(lead)
    step = steps_of(env, lead, 0)[0]
    fire_steps([step.id])
    return step, {d.channel: d for d in deliveries(env, step.id)}


def _later(minutes: float = 2):
    from worker.db import now_utc

    return now_utc() + timedelta(minutes=minutes)


def test_an_sms_the_provider_took_whose_answer_was_lost_is_found_and_settled(alert_env, providers, queued):
    from worker.alerts import settle_maybe_sent

    providers.fail_next("twilio", [("accept_then_drop",)])
    step, rows = _first_alert(alert_env, "lost-1")
    assert rows["sms"].status == "maybe_sent" and rows["sms"].provider_id is None
    assert rows["email"].status == "sent"
    taken = [m for m in sms_to(providers, "+14155550102")]
    assert len(taken) == 0                      # the fake records only answered messages there
    assert settle_maybe_sent() == 0             # too early: the status callback may still come
    assert settle_maybe_sent(_later()) == 1
    sms = {d.channel: d for d in deliveries(alert_env, step.id)}["sms"]
    created = [r for r in providers.requests if r["method"] == "POST" and r["provider"] == "twilio"]
    assert sms.status == "sent" and sms.provider_id == created[0]["provider_id"]
    assert len(created) == 1                    # asked, never sent again
    lists = [r for r in providers.requests if r["method"] == "GET"]
    assert lists and dict(parse_qsl(lists[-1]["query"]))["To"] == "+14155550102"
    assert providers.violations == []           # the list request is Twilio's documented one


def test_an_sms_the_provider_never_took_is_recorded_as_not_sent_and_not_resent(alert_env, providers, queued):
    from worker.alerts import settle_maybe_sent

    providers.fail_next("twilio", [("drop",)])
    step, rows = _first_alert(alert_env, "never-1")
    assert rows["sms"].status == "maybe_sent"
    assert settle_maybe_sent(_later()) == 1
    sms = {d.channel: d for d in deliveries(alert_env, step.id)}["sms"]
    assert sms.status == "failed" and "took no message" in sms.error
    assert len([r for r in providers.requests if r["method"] == "POST" and r["provider"] == "twilio"]) == 1


def test_a_message_of_someone_else_then_is_not_taken_for_ours(alert_env, providers, queued):
    from worker.alerts import settle_maybe_sent

    make_hot("other-1")
    providers.fail_next("twilio", [("ok",), ("drop",)])
    from worker.alerts import fire_steps

    make_hot("mine-1")
    other, mine = steps_of(alert_env, "other-1", 0)[0], steps_of(alert_env, "mine-1", 0)[0]
    fire_steps([other.id])                       # another lead's alert to the same rep, answered
    fire_steps([mine.id])                        # ours: dropped before Twilio took it
    assert {d.channel: d for d in deliveries(alert_env, mine.id)}["sms"].status == "maybe_sent"
    assert settle_maybe_sent(_later()) == 0      # a message to that number then, but not ours: cannot tell
    assert {d.channel: d for d in deliveries(alert_env, mine.id)}["sms"].status == "maybe_sent"
    asked = len([r for r in providers.requests if r["method"] == "GET"])
    assert settle_maybe_sent(_later(3)) == 0 and len([r for r in providers.requests if r["method"] == "GET"]) == asked
    settle_maybe_sent(_later(13))                # ten minutes on, it asks again
    assert len([r for r in providers.requests if r["method"] == "GET"]) == asked + 1


def test_a_maybe_sent_sms_with_a_provider_id_is_looked_up_by_it(alert_env, providers, queued):
    from tests.e2e.test_alerts_flow import db
    from worker import db as models
    from worker.alerts import settle_maybe_sent

    step, rows = _first_alert(alert_env, "known-1")
    sid = rows["sms"].provider_id
    with db(alert_env) as s, s.begin():
        s.get(models.Delivery, rows["sms"].id).status = "maybe_sent"   # as after a 500 that named the message
    providers.set_status(sid, "delivered")
    assert settle_maybe_sent(_later()) == 1
    assert {d.channel: d for d in deliveries(alert_env, step.id)}["sms"].status == "delivered"


def test_the_status_callback_finds_a_maybe_sent_sms_by_the_delivery_id_in_its_url(alert_env, providers, queued,
                                                                                  client):
    from twilio.request_validator import RequestValidator

    from worker.alerts import settle_maybe_sent

    providers.fail_next("twilio", [("accept_then_drop",)])
    step, rows = _first_alert(alert_env, "cb-1")
    created = [r for r in providers.requests if r["method"] == "POST" and r["provider"] == "twilio"][-1]
    callback = urlsplit(created["form"]["StatusCallback"])
    params = {"MessageSid": created["provider_id"], "MessageStatus": "delivered", "AccountSid": "AC" + "0" * 32}
    url = f"{PUBLIC}{callback.path}?{callback.query}"
    signature = RequestValidator(TOKEN).compute_signature(url, params)
    answer = client.post(f"{callback.path}?{callback.query}", content=urlencode(params),
                         headers={"X-Twilio-Signature": signature,
                                  "Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 204
    sms = {d.channel: d for d in deliveries(alert_env, step.id)}["sms"]
    assert sms.status == "delivered" and sms.provider_id == created["provider_id"]
    assert settle_maybe_sent(_later()) == 0      # nothing left to ask about
    forged = client.post(f"{callback.path}?delivery_id={rows['email'].id}", content=urlencode(params),
                         headers={"X-Twilio-Signature": signature,
                                  "Content-Type": "application/x-www-form-urlencoded"})
    assert forged.status_code == 403             # the delivery id is part of what Twilio signs


def test_email_maybe_sent_waits_for_sendgrids_event_webhook(alert_env, providers, queued):
    from worker.alerts import settle_maybe_sent

    providers.fail_next("sendgrid", [("drop",)])
    step, rows = _first_alert(alert_env, "mail-1")
    assert rows["email"].status == "maybe_sent"
    assert settle_maybe_sent(_later()) == 0
    assert {d.channel: d for d in deliveries(alert_env, step.id)}["email"].status == "maybe_sent"
