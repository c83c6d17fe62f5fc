"""The one retry policy: what is tried again, what is not, how long between tries, and that it gives up."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from worker.adapters import retry
from worker.adapters.channels import TransportError
from worker.adapters.channels.base import ErrorKind
from worker.adapters.retry import Policy
from worker.services.pipeline import BatchTooSlow


def outage() -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))


def dropped() -> DBAPIError:
    return DBAPIError("SELECT 1", {}, Exception("connection reset"), connection_invalidated=True)


def lost_race() -> IntegrityError:
    return IntegrityError("INSERT INTO leads", {}, Exception("duplicate key value violates unique constraint"))


def transport(kind: ErrorKind, retry_after: float | None = None) -> TransportError:
    return TransportError(kind, f"a {kind} error", status=503, retry_after=retry_after)


class Failing:
    """Raises the given errors in turn, then returns ``"done"``; counts its calls."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def run(policy: Policy, fn: Callable[[], str], seed: int = 1) -> tuple[str | BaseException, list[float]]:
    """The outcome of ``policy.call(fn)`` (its value or the error it let through) and the waits it slept."""
    sleeps: list[float] = []
    try:
        return policy.call(fn, sleep=sleeps.append, rng=random.Random(seed)), sleeps
    except BaseException as exc:
        return exc, sleeps


# ---------------------------------------------------------------- what is an outage


@pytest.mark.parametrize(("error", "expected"), [
    (outage(), True),
    (dropped(), True),
    (lost_race(), False),
    (ValueError("a bad entry"), False),
    (transport("transient"), False),
])
def test_an_outage_is_the_database_away_and_nothing_else(error: BaseException, expected: bool) -> None:
    assert retry.is_outage(error) is expected


def test_a_failure_is_any_other_error_but_not_an_interruption() -> None:
    assert retry.is_failure(lost_race()) and retry.is_failure(ValueError("bad"))
    assert not retry.is_failure(outage())
    assert not retry.is_failure(KeyboardInterrupt())
    assert not retry.is_lost_race(BatchTooSlow("past its deadline"))


# ---------------------------------------------------------------- a drain waits out an outage


def test_a_drain_waits_out_an_outage_with_growing_waits_and_carries_on() -> None:
    fn = Failing(*(outage() for _ in range(7)))

    result, sleeps = run(retry.DRAIN_OUTAGE, fn)

    assert result == "done" and fn.calls == 8
    floors = [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]   # doubling from 0.2 s, at most 5 s, plus up to 0.1 s of jitter
    assert all(f <= s <= min(5.0, f + 0.1) for f, s in zip(floors, sleeps, strict=True)), sleeps


def test_a_drain_gives_up_after_ten_minutes_of_waiting_and_lets_the_outage_through() -> None:
    errors = [outage() for _ in range(1000)]
    fn = Failing(*errors)

    result, sleeps = run(retry.DRAIN_OUTAGE, fn)

    assert result is errors[fn.calls - 1], "the last error comes out"
    assert retry.OUTAGE_WAIT_LIMIT <= sum(sleeps) <= retry.OUTAGE_WAIT_LIMIT + 5.0
    assert 100 < fn.calls < 1000


@pytest.mark.parametrize("error", [lost_race(), ValueError("a bad entry"), KeyboardInterrupt()])
def test_an_outage_policy_does_not_retry_anything_else(error: BaseException) -> None:
    fn = Failing(error)

    result, sleeps = run(retry.DRAIN_OUTAGE, fn)

    assert result is error and fn.calls == 1 and sleeps == []


# ---------------------------------------------------------------- a batch, an entry


def test_a_batch_that_lost_a_race_is_applied_once_more_at_once() -> None:
    result, sleeps = run(retry.BATCH_AGAIN, Failing(lost_race()))

    assert result == "done" and sleeps == [0.0]


def test_a_batch_that_fails_twice_is_given_up_for_its_entries_one_by_one() -> None:
    second = ValueError("a bad entry")
    fn = Failing(lost_race(), second)

    result, _ = run(retry.BATCH_AGAIN, fn)

    assert result is second and fn.calls == 2


@pytest.mark.parametrize("error", [outage(), BatchTooSlow("past its deadline at event 3 of 8")])
def test_a_batch_is_not_tried_again_as_a_whole_on_an_outage_or_when_it_ran_late(error: BaseException) -> None:
    fn = Failing(error)

    result, _ = run(retry.BATCH_AGAIN, fn)

    assert result is error and fn.calls == 1


def test_the_drain_as_a_whole_waits_out_an_outage_between_lost_races() -> None:
    """How worker.entrypoints.tasks nests them: the outage wait around the batch's second try."""
    fn = Failing(lost_race(), outage(), outage(), lost_race())
    sleeps: list[float] = []

    result = retry.DRAIN_OUTAGE.call(lambda: retry.BATCH_AGAIN.call(fn, sleep=sleeps.append), sleep=sleeps.append)

    assert result == "done" and fn.calls == 5
    assert len([s for s in sleeps if s > 0]) == 2, sleeps


def test_an_entry_is_tried_three_times_then_let_through_for_the_dead_letters() -> None:
    errors = [ValueError(f"bad {n}") for n in range(5)]
    fn = Failing(*errors)

    result, _ = run(retry.ENTRY_AGAIN, fn)

    assert result is errors[2] and fn.calls == 3


def test_an_entry_does_not_wait_out_an_outage_itself() -> None:
    error = outage()
    fn = Failing(error)

    result, _ = run(retry.ENTRY_AGAIN, fn)

    assert result is error and fn.calls == 1


# ---------------------------------------------------------------- recording the providers' answers


def test_recording_waits_out_a_short_outage() -> None:
    result, sleeps = run(retry.RECORD_OUTAGE, Failing(outage(), dropped()))

    assert result == "done" and sleeps == [0.5, 1.0]


def test_recording_gives_up_after_three_tries() -> None:
    errors = [outage(), outage(), outage(), outage()]
    fn = Failing(*errors)

    result, sleeps = run(retry.RECORD_OUTAGE, fn)

    assert result is errors[2] and fn.calls == 3 and sleeps == [0.5, 1.0]


# ---------------------------------------------------------------- sends


@pytest.mark.parametrize("kind", ["maybe_sent", "recipient", "account", "invalid"])
def test_a_send_that_may_be_out_or_cannot_succeed_is_never_tried_again(kind: ErrorKind) -> None:
    error = transport(kind)
    fn = Failing(error)

    result, sleeps = run(retry.SEND, fn)

    assert result is error and fn.calls == 1 and sleeps == []


def test_a_refused_send_is_retried_with_growing_jittered_waits_then_given_up() -> None:
    errors = [transport("transient") for _ in range(5)]
    fn = Failing(*errors)

    result, sleeps = run(retry.SEND, fn)

    assert result is errors[3] and fn.calls == 4
    assert [round(s, 1) for s in sleeps] != [0.1, 0.2, 0.4], "the waits carry jitter"
    assert all(f <= s <= f + 0.1 for f, s in zip([0.1, 0.2, 0.4], sleeps, strict=True)), sleeps


def test_a_refused_send_waits_as_the_provider_says_up_to_a_cap() -> None:
    result, sleeps = run(retry.SEND, Failing(transport("transient", retry_after=7), transport("transient", 600)))

    assert result == "done" and sleeps == [7.0, 30.0]


# ---------------------------------------------------------------- the policy itself


def test_a_policy_that_would_never_give_up_is_refused() -> None:
    with pytest.raises(ValueError, match="never give up"):
        Policy("forever", on=retry.is_outage)


def test_a_policy_returns_the_first_success_and_calls_nothing_more() -> None:
    fn = Failing()

    result, sleeps = run(retry.DRAIN_OUTAGE, fn)

    assert result == "done" and fn.calls == 1 and sleeps == []
