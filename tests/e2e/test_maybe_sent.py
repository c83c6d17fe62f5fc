"""A "maybe sent" SMS (its request went out, its answer never came) is settled by the status callback or,
failing that, by asking Twilio, and never sent twice. The real SDKs against the local provider server;
:func:`worker.services.alerts.fire_steps` and :func:`worker.services.alerts.settle_maybe_sent` called as the workers would."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit

from tests.support.alerting import PUBLIC, TOKEN, deliveries, make_due, make_hot, sms_to, steps_of
from worker.adapters.runtime import get_runtime


def _first_alert(env, lead: str):
    from worker.services.alerts import fire_steps

    make_hot(lead)
    step = steps_of(env, lead, 0)[0]
    fire_steps(get_runtime(), [step.id])
    return step, {d.channel: d for d in deliveries(env, step.id)}


def _later(minutes: float = 2):
    from worker.adapters.db import now_utc

    return now_utc() + timedelta(minutes=minutes)


def test_an_sms_the_provider_took_whose_answer_was_lost_is_found_and_settled(alert_env, providers, queued):
    from worker.services.alerts import settle_maybe_sent

    providers.fail_next("twilio", [("accept_then_drop",)])
    step, rows = _first_alert(alert_env, "lost-1")
    assert rows["sms"].status == "maybe_sent" and rows["sms"].provider_id is None
    assert rows["email"].status == "sent"
    taken = [m for m in sms_to(providers, "+14155550102")]
    assert len(taken) == 0                      # the fake records only answered messages there
    assert settle_maybe_sent(get_runtime()) == 0             # too early: the status callback may still come
    assert settle_maybe_sent(get_runtime(), _later()) == 1
    sms = {d.channel: d for d in deliveries(alert_env, step.id)}["sms"]
    created = [r for r in providers.requests if r["method"] == "POST" and r["provider"] == "twilio"]
    assert sms.status == "sent" and sms.provider_id == created[0]["provider_id"]
    assert len(created) == 1                    # asked, never sent again
    lists = [r for r in providers.requests if r["method"] == "GET"]
    assert lists and dict(parse_qsl(lists[-1]["query"]))["To"] == "+14155550102"
    assert providers.violations == []           # the list request is Twilio's documented one


def _posts(providers, provider: str = "twilio") -> list:
    return [r for r in providers.requests if r["method"] == "POST" and r["provider"] == provider]


def test_an_sms_the_provider_never_took_is_sent_again_once_while_its_step_stands(alert_env, providers, queued):
    from worker.services.alerts import settle_maybe_sent

    providers.fail_next("twilio", [("drop",)])
    step, rows = _first_alert(alert_env, "never-1")
    assert rows["sms"].status == "maybe_sent" and len(_posts(providers)) == 1    # the request, dropped
    assert settle_maybe_sent(get_runtime(), _later()) == 1
    sms = {d.channel: d for d in deliveries(alert_env, step.id)}["sms"]
    assert sms.status == "sent" and sms.resent_at is not None and sms.settled_by == "lookup"
    posts = _posts(providers)
    assert len(posts) == 2 and posts[1]["form"]["To"] == "+14155550102"
    assert "/claim/" in posts[1]["form"]["Body"]
    assert [m["Body"] for m in sms_to(providers, "+14155550102")] == [posts[1]["form"]["Body"]]
    assert settle_maybe_sent(get_runtime(), _later(3)) == 0      # settled: nothing more to ask or send
    assert len(_posts(providers)) == 2
    assert providers.violations == []


def test_a_message_sent_again_is_never_sent_a_third_time(alert_env, providers, queued):
    from worker.services.alerts import settle_maybe_sent

    providers.fail_next("twilio", [("drop",)])
    step, rows = _first_alert(alert_env, "twice-1")
    providers.fail_next("twilio", [("ok",), ("drop",)])   # the lookup answers; the message sent again is dropped
    assert settle_maybe_sent(get_runtime(), _later()) == 1
    assert {d.channel: d for d in deliveries(alert_env, step.id)}["sms"].status == "maybe_sent"
    assert settle_maybe_sent(get_runtime(), _later(3)) == 1
    sms = {d.channel: d for d in deliveries(alert_env, step.id)}["sms"]
    assert sms.status == "failed" and "took no message" in sms.error and "sent once again already" in sms.error
    assert len(_posts(providers)) == 2               # the first request and the one sent again, both dropped
    assert sms_to(providers, "+14155550102") == []


def test_an_sms_never_taken_for_a_lead_claimed_meanwhile_is_recorded_as_not_sent(alert_env, providers, queued):
    from tests.support.alerting import db
    from worker.adapters import db as models
    from worker.adapters.db import now_utc
    from worker.services.alerts import settle_maybe_sent

    providers.fail_next("twilio", [("drop",)])
    step, rows = _first_alert(alert_env, "claimed-1")
    with db(alert_env) as s, s.begin():
        s.get(models.Assignment, step.assignment_id).claimed_at = now_utc()
    assert settle_maybe_sent(get_runtime(), _later()) == 1
    sms = {d.channel: d for d in deliveries(alert_env, step.id)}["sms"]
    assert sms.status == "failed" and "not sent again: no longer current" in sms.error
    assert len(_posts(providers)) == 1


def test_a_message_of_someone_else_then_is_not_taken_for_ours(alert_env, providers, queued):
    from worker.services.alerts import fire_steps, settle_maybe_sent

    rt = get_runtime()
    make_hot("other-1")
    make_hot("mine-1")
    other, mine = steps_of(alert_env, "other-1", 0)[0], steps_of(alert_env, "mine-1", 0)[0]
    make_due(alert_env, mine.id, ago=-60)        # not late yet: the other lead's batch must not take it in
    fire_steps(rt, [other.id])                   # another lead's alert to the same rep, answered
    make_due(alert_env, mine.id)
    providers.fail_next("twilio", [("drop",)])   # scripted only now: nothing else can take the drop
    fire_steps(rt, [mine.id])                    # ours: dropped before Twilio took it
    assert {d.channel: d for d in deliveries(alert_env, mine.id)}["sms"].status == "maybe_sent"
    assert len(sms_to(providers, "+14155550102")) == 1
    assert settle_maybe_sent(rt, _later()) == 1      # Twilio took one message for that number then, not ours
    sms = {d.channel: d for d in deliveries(alert_env, mine.id)}["sms"]
    assert sms.status == "sent" and sms.resent_at is not None
    bodies = [m["Body"] for m in sms_to(providers, "+14155550102")]
    assert len(bodies) == 2 and bodies[0] != bodies[1]


def test_a_step_whose_worker_died_mid_send_is_released_and_its_alert_reaches_the_rep_once(alert_env, providers,
                                                                                          queued):
    """The worker claimed the step and wrote its deliveries, then died before any request left."""
    from datetime import timedelta

    from tests.support.alerting import db
    from worker.adapters import db as models
    from worker.adapters.db import now_utc
    from worker.entrypoints.scheduler import release_stuck
    from worker.services.alerts import claim, fire_steps, settle_maybe_sent

    make_hot("died-1")
    step = steps_of(alert_env, "died-1", 0)[0]
    rt = get_runtime()
    with rt.sessions.begin() as session:
        claimed = claim(rt, session, [step.id], now_utc())
    assert claimed.won == [step.id]
    with db(alert_env) as s, s.begin():
        s.get(models.AlertStep, step.id).claimed_by = "gone-host:999999"   # a process with no liveness key
    rows = {d.channel: d for d in deliveries(alert_env, step.id)}
    assert {d.status for d in rows.values()} == {"pending"}
    with rt.sessions.begin() as session:
        assert release_stuck(session, now_utc() + timedelta(seconds=3), rt.redis) == 1
    rows = {d.channel: d for d in deliveries(alert_env, step.id)}
    assert {d.status for d in rows.values()} == {"maybe_sent"}      # never "pending" forever
    fire_steps(rt, [step.id])                    # the released step fires again: nothing is sent blindly
    assert steps_of(alert_env, "died-1", 0)[0].status == "done"
    assert _posts(providers) == [] and _posts(providers, "sendgrid") == []
    assert settle_maybe_sent(rt, _later()) == 1      # Twilio took nothing: the SMS and its email twin go out now
    rows = {d.channel: d for d in deliveries(alert_env, step.id)}
    assert rows["sms"].status == "sent" and rows["email"].status == "sent"
    assert rows["sms"].resent_at is not None and rows["email"].resent_at is not None
    assert len(_posts(providers)) == 1 and len(_posts(providers, "sendgrid")) == 1
    assert settle_maybe_sent(get_runtime(), _later(3)) == 0
    assert len(_posts(providers)) == 1 and len(_posts(providers, "sendgrid")) == 1
    from worker.services.explain import explain, render_explain

    with rt.sessions() as session:
        data = explain(session, "died-1", rt.rules)
    first = next(s for s in data["alerts"] if s["id"] == step.id)
    assert {d["channel"]: d["outcome"] for d in first["deliveries"]} == {
        "sms": "confirmed unsent, sent again: sent", "email": "confirmed unsent, sent again: sent"}
    assert "confirmed unsent, sent again: sent" in render_explain(data)


def test_a_step_of_a_live_worker_is_not_released_until_it_is_given_up(alert_env, providers, queued):
    from datetime import timedelta

    from tests.support.stack import wait_until
    from worker.adapters.db import now_utc
    from worker.entrypoints.scheduler import release_stuck
    from worker.services import liveness
    from worker.services.alerts import claim

    make_hot("slow-1")
    step = steps_of(alert_env, "slow-1", 0)[0]
    rt = get_runtime()
    with rt.sessions.begin() as session:
        assert claim(rt, session, [step.id], now_utc()).won == [step.id]   # this process: alive
    wait_until(lambda: liveness.alive(rt.redis, [liveness.claimer_id()]), timeout=5,
               message="this process's liveness key")    # the test's Redis was flushed since it began
    with rt.sessions.begin() as session:
        assert release_stuck(session, now_utc() + timedelta(minutes=4), rt.redis) == 0
    assert steps_of(alert_env, "slow-1", 0)[0].status == "firing"
    assert {d.status for d in deliveries(alert_env, step.id)} == {"pending"}
    with rt.sessions.begin() as session:   # no send takes this long: the live process gave the step up
        assert release_stuck(session, now_utc() + timedelta(minutes=6), rt.redis) == 1
    assert {d.status for d in deliveries(alert_env, step.id)} == {"maybe_sent"}


def test_an_email_without_an_answer_follows_its_sms_twin_found_taken(alert_env, providers, queued):
    from worker.services.alerts import settle_maybe_sent

    providers.fail_next("twilio", [("accept_then_drop",)])
    providers.fail_next("sendgrid", [("drop",)])
    step, rows = _first_alert(alert_env, "twin-1")
    assert rows["sms"].status == "maybe_sent" and rows["email"].status == "maybe_sent"
    assert settle_maybe_sent(get_runtime(), _later()) == 1
    rows = {d.channel: d for d in deliveries(alert_env, step.id)}
    assert rows["sms"].status == "sent" and rows["sms"].settled_by == "lookup" and rows["sms"].resent_at is None
    assert rows["email"].status == "sent" and rows["email"].settled_by == "twin"
    from worker.services.explain import explain

    rt = get_runtime()
    with rt.sessions() as session:
        first = next(s for s in explain(session, "twin-1", rt.rules)["alerts"] if s["id"] == step.id)
    assert {d["channel"]: d["outcome"] for d in first["deliveries"]} == {
        "sms": "maybe sent, settled by asking the provider: sent",
        "email": "maybe sent, settled by its SMS twin, found taken: sent"}
    assert len(_posts(providers)) == 1 and len(_posts(providers, "sendgrid")) == 1   # nothing sent again


def test_a_maybe_sent_sms_with_a_provider_id_is_looked_up_by_it(alert_env, providers, queued):
    from tests.support.alerting import db
    from worker.adapters import db as models
    from worker.services.alerts import settle_maybe_sent

    step, rows = _first_alert(alert_env, "known-1")
    sid = rows["sms"].provider_id
    with db(alert_env) as s, s.begin():
        s.get(models.Delivery, rows["sms"].id).status = "maybe_sent"   # as after a 500 that named the message
    providers.set_status(sid, "delivered")
    assert settle_maybe_sent(get_runtime(), _later()) == 1
    assert {d.channel: d for d in deliveries(alert_env, step.id)}["sms"].status == "delivered"


def test_the_status_callback_finds_a_maybe_sent_sms_by_the_delivery_id_in_its_url(alert_env, providers, queued,
                                                                                  client):
    from twilio.request_validator import RequestValidator

    from worker.services.alerts import settle_maybe_sent

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
    assert settle_maybe_sent(get_runtime(), _later()) == 0      # nothing left to ask about
    forged = client.post(f"{callback.path}?delivery_id={rows['email'].id}", content=urlencode(params),
                         headers={"X-Twilio-Signature": signature,
                                  "Content-Type": "application/x-www-form-urlencoded"})
    assert forged.status_code == 403             # the delivery id is part of what Twilio signs


def test_email_maybe_sent_waits_for_sendgrids_event_webhook(alert_env, providers, queued):
    from worker.services.alerts import settle_maybe_sent

    providers.fail_next("sendgrid", [("drop",)])
    step, rows = _first_alert(alert_env, "mail-1")
    assert rows["email"].status == "maybe_sent"
    assert settle_maybe_sent(get_runtime(), _later()) == 0
    assert {d.channel: d for d in deliveries(alert_env, step.id)}["email"].status == "maybe_sent"
