"""Steps due soon are handed over ahead of time, grouped so that none can fire before it is due."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from worker.entrypoints.scheduler import ETA_GRID, eta_slots

T0 = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


def ms(n: float) -> datetime:
    return T0 + timedelta(milliseconds=n)


def test_steps_due_in_one_slot_share_a_task_that_waits_for_the_last_of_them():
    soon = [(4, ms(450)), (1, ms(10)), (3, ms(120)), (2, ms(90))]
    assert eta_slots(soon) == [(ms(90), [1, 2]), (ms(120), [3]), (ms(450), [4])]
    assert eta_slots([]) == []


@given(st.lists(st.integers(min_value=0, max_value=2_000_000), min_size=1, max_size=50))
def test_no_step_waits_for_less_than_its_due_time_nor_a_slot_longer(offsets_us):
    soon = [(i, T0 + timedelta(microseconds=us)) for i, us in enumerate(offsets_us)]
    due = dict(soon)
    slots = eta_slots(soon)
    assert sorted(i for _, ids in slots for i in ids) == list(range(len(soon)))
    for eta, ids in slots:
        assert all(due[i] <= eta < due[i] + ETA_GRID for i in ids)
    assert [eta for eta, _ in slots] == sorted(eta for eta, _ in slots)


def test_the_tick_never_waits_behind_a_chore_stuck_on_a_provider():
    import os
    import signal
    import threading

    from worker.entrypoints.scheduler import Beat, Chores, run_forever

    stuck = threading.Event()
    release = threading.Event()

    def hung_provider() -> int:
        stuck.set()
        release.wait(30)
        return 0

    ticks: list[float] = []

    def tick() -> int:
        ticks.append(time.monotonic())
        if len(ticks) == 8:
            os.kill(os.getpid(), signal.SIGTERM)   # run_forever's own handler: stop after this tick
        return 0

    beat = Beat(tick=tick, heartbeat=lambda name: None, chores=[Chores("settling", 2.0, (hung_provider,))])
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        assert run_forever(beat, 0.05) == 0
    finally:
        release.set()
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    assert stuck.is_set()              # the chore was stuck the whole time
    assert len(ticks) == 8 and ticks[-1] - ticks[0] < 2   # ticking every 0.05 s, not every 30
