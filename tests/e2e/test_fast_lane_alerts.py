"""The fast lane fires the first alerts of the crossings it routes itself: claimed in the batch's
transaction, sent on a thread of its own right after the commit."""

from __future__ import annotations

from sqlalchemy import select

from tests.support.alerting import db, drain_all, hot_lead, send
from tests.support.stack import wait_until


def steps(env) -> list[tuple[int, str]]:
    from worker.adapters import db as models

    with db(env) as s:
        return [tuple(r) for r in s.execute(select(models.AlertStep.step, models.AlertStep.status)
                                            .order_by(models.AlertStep.id))]


def test_a_crossing_first_alert_goes_out_from_the_fast_lane_with_no_alert_worker(alert_env, processes, providers):
    from worker.adapters import db as models

    processes.env.update(alert_env)
    processes.celery_worker(queues="events,fast", concurrency=1)   # nobody consumes the alerts queue
    send(hot_lead("inline"))

    wait_until(lambda: len(providers.sms()) >= 1 and len(providers.emails()) >= 1, timeout=30,
               message="the first alert, by SMS and email")
    wait_until(lambda: steps(alert_env)[0] == (0, "done"), timeout=10, message="the first step finished")
    assert all(status == "pending" for _, status in steps(alert_env)[1:])   # reminders wait for the scheduler
    with db(alert_env) as s:
        deliveries = s.execute(select(models.Delivery.channel, models.Delivery.status)).all()
    assert sorted(deliveries) == [("email", "sent"), ("sms", "sent")]
    assert len(providers.sms()) == 1


def test_the_first_alert_is_claimed_in_the_routing_transaction_and_not_queued(alert_env, providers, queued):
    send(hot_lead("claimed"))
    drain_all()

    assert queued == []                             # nothing handed to the alert workers
    wait_until(lambda: len(providers.sms()) == 1, timeout=10, message="the first alert sent from this process")
    wait_until(lambda: steps(alert_env)[0] == (0, "done"), timeout=10, message="the first step finished")


def test_with_its_threads_busy_the_fast_lane_hands_the_first_alert_to_the_alert_workers(
        alert_env, providers, queued, monkeypatch):
    import worker.entrypoints.tasks as tasks

    monkeypatch.setattr(tasks, "INLINE_FIRING", 1)
    monkeypatch.setattr(tasks, "_inline", None)
    _pool, slots = tasks._inline_firing()
    assert slots.acquire(blocking=False)            # its one thread is busy sending
    try:
        send(hot_lead("busy"))
        drain_all()
    finally:
        slots.release()

    assert steps(alert_env)[0] == (0, "pending")    # not claimed here ...
    assert [ids for ids, _eta in queued] == [[1]]    # ... but queued for the alert workers
    assert providers.sms() == []


def test_if_claiming_fails_the_lead_is_still_routed_and_the_step_queued(alert_env, providers, queued, monkeypatch):
    import worker.services.alerts as alerts
    from worker.adapters import db as models

    def broken(*_args, **_kwargs):
        raise RuntimeError("cannot claim")

    monkeypatch.setattr(alerts, "claim", broken)
    send(hot_lead("broken"))
    drain_all()

    with db(alert_env) as s:
        assert s.scalar(select(models.Assignment.rep_id)) is not None
    assert steps(alert_env)[0] == (0, "pending")
    assert [ids for ids, _eta in queued] == [[1]]


def test_a_reply_that_overtakes_the_senders_record_still_times_the_claim(alert_env, providers, client, monkeypatch):
    import threading

    import worker.services.claims as claims
    import worker.services.deliveries as deliveries
    from tests.support.alerting import signed_sms
    from worker.adapters import db as models

    held = threading.Event()
    real_deliver = deliveries.send

    def deliver_then_wait(rt, items):      # the provider has it; its answer is not recorded yet
        real_deliver(rt, items)
        held.wait(10)

    observed: list[tuple[str, float]] = []
    monkeypatch.setattr(deliveries, "send", deliver_then_wait)
    monkeypatch.setattr(claims.metrics, "observe", lambda name, seconds, **_: observed.append((name, seconds)))
    try:
        send(hot_lead("quick"))
        drain_all()
        wait_until(lambda: len(providers.sms()) == 1, timeout=10, message="the first alert at the provider")
        with db(alert_env) as s:
            assert s.scalar(select(models.Delivery.sent_at).where(models.Delivery.channel == "sms")) is None
        rep_phone = providers.sms()[0]["To"]
        assert "Claimed" in signed_sms(client, rep_phone, "1", "SM" + "5" * 32).text
    finally:
        held.set()

    waits = [seconds for name, seconds in observed if name == "time_to_claim_seconds"]
    assert len(waits) == 1 and 0 <= waits[0] < 10
