"""Alert steps fired in batches: the real database, Redis and the provider SDKs against the local
provider server, with :func:`worker.services.alerts.fire_steps` called in this process as an alert task would.

Celery is left out: queueing is patched to a list, so no message reaches any broker.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from tests.support.alerting import db, deliveries, fast_rules, make_due, make_hot, sms_to, steps_of
from worker.adapters.runtime import get_runtime


@pytest.fixture
def alert_env(alert_env):  # noqa: F811
    """The tests' rules with the cadence an hour apart: a step fires only when its test makes it due
    (``make_due``), never because the clock reached it while a slow machine ran the test."""
    from worker.adapters.runtime import reset_runtime

    fast_rules(Path(alert_env["LEADROUTER_CONFIG"]), retries=["1h", "2h", "3h"], first_contact_sla="1h")
    reset_runtime()
    return alert_env


def cannot_plan(monkeypatch, step_id: int) -> None:
    """A bug that strikes one step: planning its recipients raises."""
    import worker.services.alerts

    real = worker.services.alerts.plan_recipients

    def plan(session, rules, step, assignment, disabled=None):
        if step.id == step_id:
            raise RuntimeError("a bug in one step")
        return real(session, rules, step, assignment, disabled)

    monkeypatch.setattr(worker.services.alerts, "plan_recipients", plan)


def test_a_batch_sends_each_due_step_once_on_every_channel(alert_env, providers, queued):
    from worker.services.alerts import fire_steps

    make_hot("b-1", "b-2", "b-3")
    firsts = [steps_of(alert_env, lead, 0)[0].id for lead in ("b-1", "b-2", "b-3")]
    fired = fire_steps(get_runtime(), firsts)
    assert fired.follow_up == [] and fired.early == []
    for step_id in firsts:
        rows = deliveries(alert_env, step_id)
        assert sorted(d.channel for d in rows) == ["email", "sms"]
        assert all(d.status == "sent" and d.provider_id and d.sent_at for d in rows)
    assert all(s.status == "done" and s.fired_at is not None for lead in ("b-1", "b-2", "b-3")
               for s in steps_of(alert_env, lead, 0))
    assert len(sms_to(providers, "+14155550102")) == 3 and len(providers.emails()) == 3
    fire_steps(get_runtime(), firsts)   # handed over again: the claim is already taken
    assert len(sms_to(providers, "+14155550102")) == 3 and len(providers.emails()) == 3
    assert providers.violations == []


def test_a_step_handed_over_before_its_time_is_given_back_untouched(alert_env, providers, queued):
    from worker.services.alerts import fire_steps

    make_hot("early-1")
    first = steps_of(alert_env, "early-1", 0)[0]
    fire_steps(get_runtime(), [first.id])
    retry = steps_of(alert_env, "early-1", 1)[0]     # due 2 s after the first alert
    sent = len(providers.requests)
    fired = fire_steps(get_runtime(), [retry.id])
    assert fired.early == [(retry.id, retry.due_at)]
    assert steps_of(alert_env, "early-1", 1)[0].status == "pending"
    assert deliveries(alert_env, retry.id) == [] and len(providers.requests) == sent


def test_racing_batches_send_each_step_once(alert_env, providers, queued):
    from worker.services.alerts import fire_steps

    leads = [f"race-{i}" for i in range(6)]
    make_hot(*leads)
    ids = [steps_of(alert_env, lead, 0)[0].id for lead in leads]
    start = threading.Barrier(3)
    errors: list[BaseException] = []

    def fire() -> None:
        try:
            start.wait(5)
            fire_steps(get_runtime(), ids)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=fire) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    per_channel = Counter((d.step_id, d.channel) for step_id in ids for d in deliveries(alert_env, step_id))
    assert len(per_channel) == 2 * len(ids) and set(per_channel.values()) == {1}
    assert len(sms_to(providers, "+14155550102")) == len(ids)


def test_a_steps_channels_are_in_flight_together(alert_env, queued):
    import worker.services.alerts
    from worker.adapters.channels import SendResult
    from worker.adapters.runtime import Runtime

    class MeetingChannel:
        """Answers only once both channels' requests are out at the same time."""

        name = "meeting"
        both_out = threading.Barrier(2)

        def send(self, msg):
            self.both_out.wait(5)   # sent one after the other, the first would wait alone and fail
            return SendResult(provider_id=f"{msg.channel}-{msg.delivery_id}", status="sent")

        def fetch_status(self, provider_id):
            return None

    make_hot("together-1")
    meeting = MeetingChannel()
    step = steps_of(alert_env, "together-1", 0)[0]
    worker.services.alerts.fire_steps(Runtime(channels={"sms": meeting, "email": meeting}), [step.id])
    assert sorted((d.channel, d.status) for d in deliveries(alert_env, step.id)) == [("email", "sent"),
                                                                                     ("sms", "sent")]


def test_a_retry_that_fires_collapses_the_earlier_retries_still_waiting(alert_env, providers, queued):
    from worker.services.alerts import fire_steps

    make_hot("late-1")
    fire_steps(get_runtime(), [steps_of(alert_env, "late-1", 0)[0].id])
    retries = {s.step: s.id for s in steps_of(alert_env, "late-1") if s.kind == "retry"}
    make_due(alert_env, retries[1], retries[2], retries[3], ago=0.1)
    fire_steps(get_runtime(), [retries[3]])      # handed over on its own, the earlier ones still queued
    fire_steps(get_runtime(), [retries[1], retries[2]])
    by_step = {s.step: s for s in steps_of(alert_env, "late-1")}
    assert [by_step[n].status for n in (1, 2, 3)] == ["skipped", "skipped", "done"]
    assert "collapsed" in (by_step[1].note or "")
    assert deliveries(alert_env, retries[1]) == [] and deliveries(alert_env, retries[2]) == []
    assert len(sms_to(providers, "+14155550102")) == 2     # the first alert and one reminder


def test_a_reassignment_overdue_with_the_whole_cadence_waits_the_sla_after_the_one_reminder(
        alert_env, providers, queued):
    """After a pause or an outage the whole cadence is overdue: the rep gets one reminder and the SLA to
    answer it before the lead leaves them, never a reminder of a lead that is taken away in the same breath."""
    from worker.adapters import db as models
    from worker.adapters.db import now_utc
    from worker.services.alerts import fire_steps

    def owner() -> str | None:
        with db(alert_env) as s:
            return s.scalar(select(models.Assignment.rep_id).where(models.Assignment.lead_id == "resumed-1",
                                                                   models.Assignment.current.is_(True)))

    def status(step_id: int) -> str:
        with db(alert_env) as s:
            return s.get(models.AlertStep, step_id).status

    make_hot("resumed-1")
    cadence = steps_of(alert_env, "resumed-1")
    assert [s.kind for s in cadence] == ["first", "retry", "retry", "retry", "reassign"]
    make_due(alert_env, *(s.id for s in cadence), ago=5)
    before = now_utc()
    fired = fire_steps(get_runtime(), [s.id for s in cadence])
    after = now_utc()
    bobs = cadence[0].assignment_id
    by_step = {s.step: s for s in steps_of(alert_env, "resumed-1") if s.assignment_id == bobs}
    assert [by_step[n].status for n in range(4)] == ["skipped", "skipped", "skipped", "done"]
    assert len(sms_to(providers, "+14155550102")) == 1
    assert owner() == "bob"
    reassign = by_step[4]
    assert reassign.status == "pending" and reassign.claimed_by is None and deliveries(alert_env, reassign.id) == []
    # the SLA (1 h here) counts from when that reminder was taken to be sent
    assert by_step[3].claimed_at + timedelta(hours=1) == reassign.due_at
    assert before + timedelta(hours=1) <= reassign.due_at <= after + timedelta(hours=1)
    assert [step_id for step_id, _ in fired.early] == [reassign.id] and fired.follow_up == []

    # handed over again before then, it waits again
    make_due(alert_env, reassign.id)
    fire_steps(get_runtime(), [reassign.id])
    assert status(reassign.id) == "pending" and owner() == "bob"

    # once the SLA has passed since that reminder, the lead goes to the next best rep
    with db(alert_env) as s, s.begin():
        s.execute(update(models.AlertStep).where(models.AlertStep.id == by_step[3].id)
                  .values(fired_at=now_utc() - timedelta(hours=1, seconds=1)))
    make_due(alert_env, reassign.id)
    fired = fire_steps(get_runtime(), [reassign.id])
    assert status(reassign.id) == "done" and owner() == "alice"
    assert len(fired.follow_up) == 1     # alice's first alert
    assert len(sms_to(providers, "+14155550102")) == 1


def test_a_claim_that_commits_first_leaves_the_step_nothing_to_send(alert_env, providers, queued):
    from worker.adapters import db as models
    from worker.adapters.db import now_utc
    from worker.services.alerts import fire_steps
    from worker.services.claims import claim

    make_hot("claimed-1")
    fire_steps(get_runtime(), [steps_of(alert_env, "claimed-1", 0)[0].id])
    retry = steps_of(alert_env, "claimed-1", 1)[0]
    make_due(alert_env, retry.id)
    rt = get_runtime()
    with rt.sessions.begin() as session:
        assert claim(session, rt.rules, "claimed-1", "bob", now_utc(), via="test").ok
    sent = len(providers.requests)
    fire_steps(get_runtime(), [retry.id])
    assert steps_of(alert_env, "claimed-1", 1)[0].status == "cancelled"
    assert len(providers.requests) == sent
    with db(alert_env) as s:
        assert s.scalar(select(models.Delivery).where(models.Delivery.step_id == retry.id)) is None


def test_one_step_that_fails_holds_back_no_other_in_its_batch(alert_env, providers, queued, monkeypatch):
    import worker.services.alerts

    make_hot("ok-1", "bad-1", "ok-2")
    ids = {lead: steps_of(alert_env, lead, 0)[0].id for lead in ("ok-1", "bad-1", "ok-2")}
    cannot_plan(monkeypatch, ids["bad-1"])
    worker.services.alerts.fire_steps(get_runtime(), list(ids.values()))
    assert [len(deliveries(alert_env, ids[lead])) for lead in ("ok-1", "bad-1", "ok-2")] == [2, 0, 2]
    assert steps_of(alert_env, "bad-1", 0)[0].status == "pending"   # left for a later tick, not lost


def test_a_message_that_cannot_be_composed_fails_its_deliveries_and_no_other(alert_env, providers, queued,
                                                                              monkeypatch):
    import worker.services.alert_text
    import worker.services.alerts

    make_hot("text-ok", "text-bad")
    ids = {lead: steps_of(alert_env, lead, 0)[0].id for lead in ("text-ok", "text-bad")}
    real = worker.services.alert_text.render_alert

    def render(kind, view, **kw):
        if view.lead_id == "text-bad":
            raise ValueError("a template bug")
        return real(kind, view, **kw)

    monkeypatch.setattr(worker.services.alert_text, "render_alert", render)
    worker.services.alerts.fire_steps(get_runtime(), list(ids.values()))
    assert {d.status for d in deliveries(alert_env, ids["text-ok"])} == {"sent"}
    bad = deliveries(alert_env, ids["text-bad"])
    assert len(bad) == 2 and all(d.status == "failed" and "not composed" in d.error for d in bad)
    assert steps_of(alert_env, "text-bad", 0)[0].status == "done"
    assert len(sms_to(providers, "+14155550102")) == 1


def test_the_hourly_cap_counts_the_steps_of_one_batch_one_after_another(alert_env, providers, queued):
    from worker.adapters.runtime import reset_runtime
    from worker.services.alerts import fire_steps

    fast_rules(Path(alert_env["LEADROUTER_CONFIG"]), hourly_cap=1)
    reset_runtime()
    make_hot("cap-1", "cap-2")
    ids = [steps_of(alert_env, lead, 0)[0].id for lead in ("cap-1", "cap-2")]
    fire_steps(get_runtime(), ids)
    statuses = sorted(tuple(sorted(d.status for d in deliveries(alert_env, i))) for i in ids)
    assert statuses == [("held", "held"), ("sent", "sent")]
    assert len(sms_to(providers, "+14155550102")) == 1


def test_steps_are_queued_in_even_batches_once_each(alert_env, queued):
    from worker.adapters.db import now_utc
    from worker.services.dispatch import FIRE_BATCH, dispatch_steps

    ids = list(range(1000, 1000 + 2 * FIRE_BATCH + 3))
    assert dispatch_steps(get_runtime(), ids) == len(ids)
    sizes = [len(batch) for batch, _ in queued]
    assert sum(sizes) == len(ids) and max(sizes) <= FIRE_BATCH and max(sizes) - min(sizes) <= 1
    assert sorted(i for batch, _ in queued for i in batch) == ids
    queued.clear()
    assert dispatch_steps(get_runtime(), ids[:5] + [5000]) == 1 and queued == [([5000], None)]   # a second scheduler's tick
    eta = now_utc() + timedelta(milliseconds=600)
    assert dispatch_steps(get_runtime(), [6000, 6001], eta=eta) == 2 and queued[-1] == ([6000, 6001], eta)


def test_the_tick_hands_over_steps_due_soon_with_their_due_time_and_collapses_overdue_ones(
        alert_env, queued, monkeypatch):
    import worker.services.dispatch
    import worker.services.publish
    from worker.adapters.db import now_utc
    from worker.entrypoints.scheduler import ETA_GRID, LOOK_AHEAD, tick_once
    from worker.services.alerts import fire_steps

    monkeypatch.setattr(worker.services.publish, "kick_drain", lambda r, lane: None)
    # a step handed over is not handed over again while its hold lasts (5 s past its due time); a minute
    # here, so that a machine slow enough to pause for seconds between the two ticks tests the same thing
    monkeypatch.setattr(worker.services.dispatch, "DISPATCH_HOLD_MS", 60_000)
    make_hot("tick-1", "tick-2")
    for lead in ("tick-1", "tick-2"):
        fire_steps(get_runtime(), [steps_of(alert_env, lead, 0)[0].id])
    soon = steps_of(alert_env, "tick-1", 1)[0]
    make_due(alert_env, soon.id, ago=-3)                    # due in 3 s: within the look-ahead, not yet due
    late = {s.step: s.id for s in steps_of(alert_env, "tick-2") if s.kind == "retry"}
    make_due(alert_env, late[1], late[2], ago=3)            # a tick that stopped for a while
    queued.clear()
    tick_once(get_runtime())
    first_tick = list(queued)
    queued.clear()
    tick_once(get_runtime())                                             # the next tick queues nothing twice
    assert queued == []
    queued[:] = first_tick
    now_batches = [ids for ids, eta in queued if eta is None]
    ahead = {step_id: eta for ids, eta in queued if eta is not None for step_id in ids}
    assert now_batches == [[late[2]]]
    assert ahead[soon.id] == steps_of(alert_env, "tick-1", 1)[0].due_at
    pending = {s.id: s for lead in ("tick-1", "tick-2") for s in steps_of(alert_env, lead) if s.status == "pending"}
    for step_id, eta in ahead.items():    # whatever falls due within the look-ahead, queued to wait for its time
        assert pending[step_id].due_at <= eta < pending[step_id].due_at + ETA_GRID
        assert pending[step_id].due_at <= now_utc() + LOOK_AHEAD
    assert steps_of(alert_env, "tick-2", 1)[0].status == "skipped"


def test_a_batch_takes_in_steps_already_late_and_no_step_early(alert_env, providers, queued):
    from worker.services.alerts import BEHIND, MAX_BATCH, fire_steps

    make_hot("own-1", "late-a", "late-b", "fresh-1")
    own = steps_of(alert_env, "own-1", 0)[0].id
    late = [steps_of(alert_env, lead, 0)[0].id for lead in ("late-a", "late-b")]
    fresh = steps_of(alert_env, "fresh-1", 0)[0].id
    make_due(alert_env, *late, ago=BEHIND.total_seconds() + 2)   # their own tasks are stuck somewhere
    make_due(alert_env, fresh, ago=-60)                           # not due for a minute
    fire_steps(get_runtime(), [own])
    for step_id in (own, *late):
        assert sorted(d.channel for d in deliveries(alert_env, step_id)) == ["email", "sms"]
    assert deliveries(alert_env, fresh) == [] and steps_of(alert_env, "fresh-1", 0)[0].status == "pending"
    sent = len(providers.requests)
    fire_steps(get_runtime(), late)   # their own tasks come: nothing left to do
    assert len(providers.requests) == sent
    assert MAX_BATCH >= 16


def test_a_cadences_overdue_alerts_claimed_together_send_only_the_latest(alert_env, providers, queued):
    from worker.services.alerts import BEHIND, fire_steps

    make_hot("both-1")
    first = steps_of(alert_env, "both-1", 0)[0]
    retry = steps_of(alert_env, "both-1", 1)[0]
    make_due(alert_env, first.id, retry.id, ago=BEHIND.total_seconds() + 30)   # after an outage
    fire_steps(get_runtime(), [first.id, retry.id])
    by_step = {s.step: s for s in steps_of(alert_env, "both-1")}
    assert by_step[0].status == "skipped" and "collapsed" in by_step[0].note
    assert by_step[1].status == "done"
    assert deliveries(alert_env, first.id) == []
    assert len(sms_to(providers, "+14155550102")) == 1               # one message, not a burst


def test_a_late_first_alert_moves_its_reminders_by_as_much(alert_env, providers, queued):
    from worker.adapters import db as models
    from worker.services.alerts import fire_steps

    make_hot("slow-1")
    before = {s.step: s.due_at for s in steps_of(alert_env, "slow-1")}
    with db(alert_env) as s:
        start = s.scalar(select(models.Assignment.start_at).where(models.Assignment.lead_id == "slow-1"))
    began = time.monotonic()
    make_due(alert_env, steps_of(alert_env, "slow-1", 0)[0].id, ago=5)   # a backlog held it 5 s
    fire_steps(get_runtime(), [steps_of(alert_env, "slow-1", 0)[0].id])
    took = time.monotonic() - began           # how much later than 5 s the first alert can have gone out
    after = {s.step: s for s in steps_of(alert_env, "slow-1")}
    assert after[0].status == "done"
    moved = {(after[n].due_at - before[n]).total_seconds() for n in sorted(before) if n > 0}
    assert len(moved) == 1, moved                   # every reminder and the reassignment, by the same amount
    assert 5.0 <= min(moved) < 5.0 + took + 0.01, (moved, took)
    with db(alert_env) as s:
        new_start = s.scalar(select(models.Assignment.start_at).where(models.Assignment.lead_id == "slow-1"))
    assert (new_start - start).total_seconds() == min(moved)


def test_a_first_alert_on_time_moves_nothing(alert_env, providers, queued):
    from worker.adapters.runtime import Runtime
    from worker.services.alerts import fire_steps

    make_hot("prompt-1")
    first = steps_of(alert_env, "prompt-1", 0)[0]
    before = {s.step: s.due_at for s in steps_of(alert_env, "prompt-1")}
    # fired the moment it is due, however slow the machine: a runtime whose clock stands at the due time
    fire_steps(Runtime(clock=lambda: first.due_at), [first.id])
    assert steps_of(alert_env, "prompt-1", 0)[0].status == "done"
    assert {s.step: s.due_at for s in steps_of(alert_env, "prompt-1")} == before


def test_the_tick_collapses_an_overdue_first_alert_into_the_overdue_reminder(alert_env, queued, monkeypatch):
    import worker.services.publish
    from worker.entrypoints.scheduler import tick_once

    monkeypatch.setattr(worker.services.publish, "kick_drain", lambda r, lane: None)
    make_hot("down-1")
    first, retry = steps_of(alert_env, "down-1", 0)[0], steps_of(alert_env, "down-1", 1)[0]
    make_due(alert_env, first.id, retry.id, ago=120)      # the whole service was down for minutes
    queued.clear()
    tick_once(get_runtime())
    assert [ids for ids, eta in queued if eta is None] == [[retry.id]]
    assert steps_of(alert_env, "down-1", 0)[0].status == "skipped"


def test_a_step_that_cannot_be_fired_is_not_carried_into_other_batches(alert_env, providers, queued,
                                                                       monkeypatch):
    import worker.services.alerts
    from worker.services.alerts import BEHIND, TAKE_IN_WITHIN

    make_hot("poison-1", "fine-1", "fine-2")
    ids = {lead: steps_of(alert_env, lead, 0)[0].id for lead in ("poison-1", "fine-1", "fine-2")}
    make_due(alert_env, ids["poison-1"], ago=BEHIND.total_seconds() + 1)    # late: other batches take it in
    cannot_plan(monkeypatch, ids["poison-1"])
    worker.services.alerts.fire_steps(get_runtime(), [ids["fine-1"]])   # takes the bad step in, fails, fires its own alone
    assert len(deliveries(alert_env, ids["fine-1"])) == 2
    assert steps_of(alert_env, "poison-1", 0)[0].status == "pending"
    make_due(alert_env, ids["poison-1"], ago=TAKE_IN_WITHIN.total_seconds() + 1)   # long stuck: left to its own task
    sent = len(providers.requests)
    worker.services.alerts.fire_steps(get_runtime(), [ids["fine-2"]])
    assert len(deliveries(alert_env, ids["fine-2"])) == 2 and len(providers.requests) == sent + 2


def test_alerts_held_by_the_hourly_cap_go_out_in_one_summary_once_the_hour_is_over(alert_env, providers, queued):
    from worker.adapters import db as models
    from worker.adapters.db import now_utc
    from worker.adapters.runtime import reset_runtime
    from worker.services.alerts import fire_steps, flush_held

    fast_rules(Path(alert_env["LEADROUTER_CONFIG"]), hourly_cap=1)
    reset_runtime()
    make_hot("sum-1", "sum-2", "sum-3")
    fire_steps(get_runtime(), [steps_of(alert_env, lead, 0)[0].id for lead in ("sum-1", "sum-2", "sum-3")])
    assert len(sms_to(providers, "+14155550102")) == 1
    assert flush_held(get_runtime()) == 0                         # still within the hour: the cap still holds
    assert flush_held(get_runtime(), now_utc() + timedelta(minutes=61)) == 2   # one summary, on the rep's sms and email
    with db(alert_env) as s:
        rows = list(s.scalars(select(models.Delivery).order_by(models.Delivery.id)))
    assert sorted(d.status for d in rows if d.step_id is not None) == ["sent", "sent", "summarized", "summarized",
                                                                       "summarized", "summarized"]
    summaries = [d for d in rows if d.step_id is None]
    assert sorted((d.channel, d.status) for d in summaries) == [("email", "sent"), ("sms", "sent")]
    assert all(d.recipient == "bob" and d.provider_id for d in summaries)
    assert len(sms_to(providers, "+14155550102")) == 2
    assert flush_held(get_runtime(), now_utc() + timedelta(minutes=61)) == 0   # summarized once: a second scheduler sends nothing
    assert len(sms_to(providers, "+14155550102")) == 2
