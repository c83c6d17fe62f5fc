"""Handing due alert steps to the alert workers: the ``alerts`` queue, by task name.

Called after a commit by whatever made steps due: a drain, a scheduler tick, a webhook, a CLI
command. It queues by name (``app.send_task``), so none of them imports :mod:`worker.entrypoints.tasks`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from worker.app import FIRE_STEPS, app

if TYPE_CHECKING:
    from worker.adapters.runtime import Runtime

DISPATCH_KEY = "lr:dispatched:{}"
DISPATCH_HOLD_MS = 5000     # a step queued this recently is not queued again
FIRE_BATCH = 16             # steps per fire task: they share two transactions and send together


def dispatch_steps(rt: Runtime, step_ids: Iterable[int], eta: datetime | None = None) -> int:
    """Queue alert steps for firing, in batches; returns how many were queued.

    A step queued in the last few seconds (by a second scheduler, or by the drain
    that made it before a tick saw it) is left out. That only saves work: the
    compare-and-set in :func:`worker.services.alerts.fire_steps` is what makes a step fire
    once. ``eta``: the steps are due then, and the task waits for it.
    """
    ids = list(dict.fromkeys(step_ids))
    if not ids:
        return 0
    hold = DISPATCH_HOLD_MS
    if eta is not None:
        hold += max(0, int((eta - rt.now()).total_seconds() * 1000))
    pipe = rt.redis.pipeline(transaction=False)
    for step_id in ids:
        pipe.set(DISPATCH_KEY.format(step_id), 1, nx=True, px=hold)
    fresh = [step_id for step_id, queued in zip(ids, pipe.execute(), strict=True) if queued]
    queue_steps(fresh, eta)
    return len(fresh)


def queue_steps(step_ids: list[int], eta: datetime | None = None) -> None:
    """Split the steps into even batches of at most ``FIRE_BATCH``, one task each."""
    if not step_ids:
        return
    size, larger = divmod(len(step_ids), math.ceil(len(step_ids) / FIRE_BATCH))
    start = 0
    for n in range(math.ceil(len(step_ids) / FIRE_BATCH)):
        end = start + size + (1 if n < larger else 0)
        app.send_task(FIRE_STEPS, args=(step_ids[start:end],), queue="alerts", eta=eta)
        start = end
