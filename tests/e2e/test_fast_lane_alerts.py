"""The fast lane fires the first alerts of the crossings it routes itself, on threads of its own."""

from __future__ import annotations

import threading

from sqlalchemy import select

from tests.conftest import wait_until
from tests.e2e.test_alerts_flow import db, hot_lead, send


def test_a_crossing_first_alert_goes_out_from_the_fast_lane_with_no_alert_worker(alert_env, processes, providers):
    from worker import db as models

    processes.env.update(alert_env)
    processes.celery_worker(queues="events,fast", concurrency=1)   # nobody consumes the alerts queue
    send(hot_lead("inline"))

    wait_until(lambda: len(providers.sms()) >= 1 and len(providers.emails()) >= 1, timeout=30,
               message="the first alert, by SMS and email")
    with db(alert_env) as s:
        steps = s.execute(select(models.AlertStep.step, models.AlertStep.status)
                          .order_by(models.AlertStep.step)).all()
        deliveries = s.execute(select(models.Delivery.channel, models.Delivery.status)).all()
    assert steps[0] == (0, "done")
    assert all(status == "pending" for _, status in steps[1:])      # reminders wait for the scheduler
    assert sorted(channel for channel, _ in deliveries) == ["email", "sms"]
    assert len(providers.sms()) == 1


def test_with_its_threads_busy_the_fast_lane_hands_steps_to_the_alert_workers(queued, monkeypatch):
    import worker.tasks as tasks

    release = threading.Event()
    fired: list[list[int]] = []

    def slow_fire(step_ids: list[int], take_in: bool = True) -> None:
        assert not take_in
        fired.append(step_ids)
        release.wait(10)

    monkeypatch.setattr(tasks, "fire_steps", type("Task", (), {"__call__": staticmethod(slow_fire),
                                                                "apply_async": staticmethod(tasks.fire_steps.apply_async)})())
    monkeypatch.setattr(tasks, "INLINE_FIRING", 1)
    monkeypatch.setattr(tasks, "_inline", None)

    assert tasks.dispatch_steps([101], inline=True) == 1
    wait_until(lambda: fired == [[101]], timeout=5, message="the first step fired on the thread")
    assert tasks.dispatch_steps([102], inline=True) == 1      # the one thread is busy: queued instead
    assert queued == [([102], None)]
    release.set()
    wait_until(lambda: tasks.fire_inline([103]), timeout=5, message="the thread free again")
    wait_until(lambda: fired == [[101], [103]], timeout=5, message="the next step fired on the thread")
    assert queued == [([102], None)]
