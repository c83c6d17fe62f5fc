"""Alerting policy (routing.alerting) with plain values: who hears about a step, why a step is called
off, which message each step sends, what the hourly cap holds back, how far a late first alert moves
its reminders. The worker's wiring of these is covered end to end in tests/e2e/test_alert_batches.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routing.alerting import (
    LATE_FIRST,
    Assignment,
    LeadState,
    Recipient,
    Step,
    addresses,
    all_failed,
    called_off,
    held_by_cap,
    late_firsts,
    reassign_after,
    recipients,
)
from routing.config import Rules, load_rules
from routing.kinds import MESSAGE_OF, DeliveryStatus, MessageKind, StepKind

CONFIG = Path(__file__).resolve().parents[2] / "config" / "routing.yaml"
T0 = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def rules() -> Rules:
    # the shipped rules: bob (sms, email) reports to maria; reminders reach her from the 3rd retry on
    return load_rules(CONFIG)


def nothing_off(rep_id: str) -> set[str]:
    return set()


def step(kind: StepKind = StepKind.FIRST, n: int = 0, *, due: datetime = T0, assignment_id: int | None = 7) -> Step:
    return Step(id=1, kind=kind, step=n, due_at=due, lead_id="u-1", assignment_id=assignment_id)


def assignment(*, current: bool = True, claimed_at: datetime | None = None, created_at: datetime = T0) -> Assignment:
    return Assignment(id=7, rep_id="bob", current=current, claimed_at=claimed_at, created_at=created_at)


def lead(*, closed_at: datetime | None = None, contacted_at: datetime | None = None) -> LeadState:
    return LeadState(id="u-1", closed_at=closed_at, contacted_at=contacted_at)


def who(planned: list[Recipient]) -> list[tuple[str, str, MessageKind]]:
    return [(p.recipient, p.channel, p.kind) for p in planned]


# ---------------------------------------------------------------- recipients


def test_a_first_alert_reaches_the_rep_on_each_channel_with_a_claim_link_of_their_own(rules):
    planned = recipients(rules, StepKind.FIRST, 0, "bob", nothing_off)
    assert who(planned) == [("bob", "sms", MessageKind.FIRST), ("bob", "email", MessageKind.FIRST)]
    assert [p.to for p in planned] == ["+14155550102", "bob@example.com"]
    assert {p.claim_rep for p in planned} == {"bob"} and {p.rep_name for p in planned} == {"Bob Okafor"}


def test_reminders_reach_the_manager_too_from_the_configured_retry_on(rules):
    assert rules.alerts.escalate_from_retry == 3
    before = recipients(rules, StepKind.RETRY, 2, "bob", nothing_off)
    assert who(before) == [("bob", "sms", MessageKind.RETRY), ("bob", "email", MessageKind.RETRY)]
    from_third = recipients(rules, StepKind.RETRY, 3, "bob", nothing_off)
    assert who(from_third) == [("bob", "sms", MessageKind.RETRY), ("bob", "email", MessageKind.RETRY),
                               ("maria", "sms", MessageKind.ESCALATION), ("maria", "email", MessageKind.ESCALATION)]
    assert {p.claim_rep for p in from_third if p.recipient == "maria"} == {"maria"}   # the manager may claim


def test_the_reassignment_step_of_the_cadence_never_escalates(rules):
    last = len(rules.alerts.retries) + 1
    assert recipients(rules, StepKind.REASSIGN, last, "bob", nothing_off) == []


def test_an_escalation_after_every_channel_failed_reaches_the_manager_only(rules):
    planned = recipients(rules, StepKind.ESCALATION, 100, "bob", nothing_off)
    assert who(planned) == [("maria", "sms", MessageKind.ESCALATION), ("maria", "email", MessageKind.ESCALATION)]


def test_a_rep_without_a_manager_is_escalated_to_nobody(rules):
    assert recipients(rules, StepKind.ESCALATION, 100, "maria", nothing_off) == []
    assert who(recipients(rules, StepKind.RETRY, 5, "maria", nothing_off)) == [
        ("maria", "sms", MessageKind.RETRY), ("maria", "email", MessageKind.RETRY)]


def test_switched_off_channels_are_left_out_person_by_person(rules):
    off = {"bob": {"sms"}, "maria": {"email"}}
    planned = recipients(rules, StepKind.RETRY, 3, "bob", lambda rep: off.get(rep, set()))
    assert who(planned) == [("bob", "email", MessageKind.RETRY), ("maria", "sms", MessageKind.ESCALATION)]
    assert recipients(rules, StepKind.FIRST, 0, "bob", lambda rep: {"sms", "email"}) == []


def test_an_unrouted_notice_goes_to_the_configured_addresses_with_no_claim_link(rules):
    notify = rules.routing.model_copy(update={"unrouted_notify": ["revops@example.com", "+14155550199"]})
    planned = recipients(rules.model_copy(update={"routing": notify}), StepKind.UNROUTED, 0, None, nothing_off)
    assert [(p.recipient, p.channel, p.to, p.kind, p.claim_rep) for p in planned] == [
        ("revops@example.com", "email", "revops@example.com", MessageKind.UNROUTED, None),
        ("+14155550199", "sms", "+14155550199", MessageKind.UNROUTED, None)]


def test_a_rep_gone_from_the_rules_or_no_rep_at_all_is_alerted_nowhere(rules):
    assert recipients(rules, StepKind.FIRST, 0, "ghost", nothing_off) == []
    assert recipients(rules, StepKind.FIRST, 0, None, nothing_off) == []


@pytest.mark.parametrize("kind", [k for k in StepKind if k not in (StepKind.UNROUTED, StepKind.ESCALATION)])
def test_each_step_sends_the_message_of_the_one_mapping(rules, kind):
    planned = recipients(rules, kind, 0, "bob", nothing_off)
    expected = MESSAGE_OF[kind]
    assert {p.kind for p in planned} == (set() if expected is None else {expected})


def test_the_step_to_message_mapping_names_every_step_and_what_it_says():
    assert set(MESSAGE_OF) == set(StepKind)
    assert MESSAGE_OF[StepKind.MANUAL] == MessageKind.FIRST              # an operator's assignment reads as new
    assert MESSAGE_OF[StepKind.REASSIGNED] == MessageKind.REASSIGN
    assert MESSAGE_OF[StepKind.REASSIGN] is None                         # a reassignment sends nothing itself


def test_a_reps_addresses_follow_their_channels_and_skip_missing_ones(rules):
    bob = rules.rep("bob")
    assert bob is not None
    assert addresses(bob) == [("sms", "+14155550102"), ("email", "bob@example.com")]
    assert addresses(bob.model_copy(update={"phone": None})) == [("email", "bob@example.com")]
    assert addresses(bob.model_copy(update={"channels": ["console"]})) == [("console", "bob@example.com")]


# ---------------------------------------------------------------- called off


def test_a_step_of_a_current_unclaimed_assignment_stands():
    assert called_off(step(), assignment(), lead()) is None
    assert called_off(step(StepKind.RETRY, 2), assignment(), lead()) is None


def test_a_closed_or_missing_lead_calls_every_step_off():
    assert called_off(step(), assignment(), lead(closed_at=T0)) == "lead closed"
    assert called_off(step(StepKind.UNROUTED, assignment_id=None), None, None) == "lead closed"


@pytest.mark.parametrize("a", [None, assignment(current=False), assignment(claimed_at=T0)],
                         ids=["no assignment", "not current", "claimed"])
def test_a_step_whose_assignment_is_gone_or_claimed_is_called_off(a):
    assert called_off(step(StepKind.RETRY, 1), a, lead()) == "no longer current"
    assert called_off(step(), a, lead()) == "no longer current"


def test_an_unrouted_notice_needs_no_assignment():
    assert called_off(step(StepKind.UNROUTED, assignment_id=None), None, lead()) is None


def test_a_lead_contacted_since_it_was_assigned_gets_no_more_reminders():
    contacted = lead(contacted_at=T0 + timedelta(minutes=1))
    assert called_off(step(StepKind.RETRY, 2), assignment(), contacted) == "lead contacted"
    assert called_off(step(StepKind.ESCALATION, 100), assignment(), contacted) == "lead contacted"


def test_a_contact_before_the_assignment_calls_nothing_off():
    earlier = lead(contacted_at=T0 - timedelta(minutes=1))
    assert called_off(step(StepKind.RETRY, 2), assignment(), earlier) is None


@pytest.mark.parametrize("kind,n", [(StepKind.FIRST, 0), (StepKind.FYI, 1), (StepKind.PRIORITY, 1)])
def test_a_contact_leaves_first_alerts_and_notes_to_the_owner_standing(kind, n):
    assert called_off(step(kind, n), assignment(), lead(contacted_at=T0 + timedelta(minutes=1))) is None


# ---------------------------------------------------------------- the hourly cap


def to_rep(rep: str, *channels: str) -> list[Recipient]:
    return [Recipient(rep, ch, f"{rep}@{ch}", MessageKind.FIRST, rep, rep) for ch in channels]


def notice(address: str) -> Recipient:
    return Recipient(address, "email", address, MessageKind.UNROUTED, "RevOps", None)


def test_a_step_counts_once_per_rep_however_many_channels_carry_it():
    held = held_by_cap([to_rep("bob", "sms", "email"), to_rep("bob", "sms", "email")], {"bob": 28}, cap=30)
    assert held == [set(), set()]
    assert held_by_cap([to_rep("bob", "sms", "email")] * 3, {"bob": 28}, cap=30) == [set(), set(), {"bob"}]


def test_the_steps_of_one_batch_count_one_after_another():
    assert held_by_cap([to_rep("bob", "sms"), to_rep("bob", "sms")], {}, cap=1) == [set(), {"bob"}]


def test_a_rep_at_the_cap_is_held_and_others_are_not():
    steps = [to_rep("bob", "sms") + to_rep("maria", "sms"), to_rep("alice", "email")]
    assert held_by_cap(steps, {"bob": 30, "maria": 29}, cap=30) == [{"bob"}, set()]


def test_notices_without_a_claiming_rep_are_never_held():
    assert held_by_cap([[notice("revops@example.com")]], {"revops@example.com": 99}, cap=1) == [set()]


def test_the_counts_given_are_left_as_they_were():
    counts = {"bob": 0}
    held_by_cap([to_rep("bob", "sms")], counts, cap=5)
    assert counts == {"bob": 0}


@given(st.lists(st.lists(st.sampled_from(["alice", "bob", "carol"]), max_size=3), max_size=12),
       st.dictionaries(st.sampled_from(["alice", "bob", "carol"]), st.integers(0, 6)), st.integers(0, 5))
def test_no_rep_is_alerted_past_the_cap_and_none_is_held_under_it(batch, before, cap):
    steps = [[r for rep in reps for r in to_rep(rep, "sms")] for reps in batch]
    held = held_by_cap(steps, before, cap)
    counts = dict(before)
    for reps, step_held in zip(batch, held, strict=True):
        for rep in dict.fromkeys(reps):
            assert (rep in step_held) == (counts.get(rep, 0) >= cap)
            if rep not in step_held:
                counts[rep] = counts.get(rep, 0) + 1
        assert step_held <= set(reps)
    assert all(n <= max(cap, before.get(rep, 0)) for rep, n in counts.items())


# ---------------------------------------------------------------- a late first alert


def test_a_late_first_alert_moves_its_cadence_by_how_late_it_is():
    assert late_firsts([step(due=T0)], T0 + timedelta(seconds=5)) == {7: timedelta(seconds=5)}


def test_a_first_alert_on_time_or_barely_late_moves_nothing():
    assert late_firsts([step(due=T0)], T0) == {}
    assert late_firsts([step(due=T0)], T0 + LATE_FIRST) == {}


@pytest.mark.parametrize("kind", [StepKind.PRIORITY, StepKind.REASSIGNED, StepKind.MANUAL])
def test_every_opening_alert_counts_as_the_first(kind):
    assert late_firsts([step(kind, 0, due=T0)], T0 + timedelta(seconds=3)) == {7: timedelta(seconds=3)}


def test_late_reminders_notes_and_notices_move_nothing():
    now = T0 + timedelta(minutes=5)
    assert late_firsts([step(StepKind.RETRY, 1), step(StepKind.FYI, 0), step(StepKind.ESCALATION, 100),
                        step(StepKind.UNROUTED, 0, assignment_id=None)], now) == {}


# ---------------------------------------------------------------- a reassignment after a late reminder

SLA = timedelta(seconds=90)


def test_a_reassignment_right_after_the_last_reminder_waits_the_sla_after_it():
    # a pause or an outage: the collapsed reminder goes out now, in the reassignment's own batch
    assert reassign_after(T0, SLA, T0) == T0 + SLA
    assert reassign_after(T0, SLA, T0 + timedelta(seconds=30)) == T0 + SLA


def test_a_reassignment_the_sla_after_the_last_reminder_goes_ahead():
    assert reassign_after(T0, SLA, T0 + SLA) is None
    assert reassign_after(T0, SLA, T0 + timedelta(hours=2)) is None


def test_a_reassignment_less_than_a_second_early_goes_ahead():
    # an on-time last reminder went out a few milliseconds after its due time: not worth a hand-back
    assert reassign_after(T0 + timedelta(milliseconds=50), SLA, T0 + SLA) is None
    assert reassign_after(T0 + LATE_FIRST + timedelta(milliseconds=1), SLA, T0 + SLA) is not None


def test_a_cadence_that_sent_nothing_holds_its_reassignment_back_for_nothing():
    assert reassign_after(None, SLA, T0) is None


# ---------------------------------------------------------------- every channel failed


def test_a_step_escalates_at_once_only_when_every_channel_to_the_rep_failed():
    failed, sent = DeliveryStatus.FAILED, DeliveryStatus.SENT
    assert all_failed([("bob", failed), ("bob", failed), ("maria", sent)], "bob")
    assert not all_failed([("bob", failed), ("bob", sent)], "bob")
    assert not all_failed([("maria", failed)], "bob")      # nothing went to the rep: nothing failed
    assert not all_failed([("bob", failed)], None)


# ---------------------------------------------------------------- each channel reads its provider's words


@pytest.mark.parametrize("channel,word,code,expected", [
    ("sms", "delivered", None, ("delivered", False)),
    ("sms", "queued", None, ("sent", False)),
    ("sms", "undelivered", "30003", ("failed", True)),     # unreachable handset: the number is the problem
    ("sms", "failed", "30007", ("failed", False)),         # carrier filtering: not the rep's number
    ("sms", "failed", "21610", ("failed", True)),          # opted out with STOP
    ("sms", "failed", "not-a-code", ("failed", False)),
    ("sms", "receiving", None, (None, False)),
    ("email", "delivered", None, ("delivered", False)),
    ("email", "processed", None, ("sent", False)),
    ("email", "bounce", None, ("failed", True)),
    ("email", "dropped", None, ("failed", True)),
    ("email", "blocked", None, ("failed", False)),         # the receiving server's policy, not the address
    ("email", "open", None, (None, False)),
    ("email", "undelivered", None, (None, False)),         # a Twilio word means nothing to SendGrid
])
def test_each_channel_reads_its_own_providers_status_words(channel, word, code, expected):
    from worker.adapters.channels import read_status

    report = read_status(channel, word, code)
    assert (report.outcome, report.recipient_error) == expected
