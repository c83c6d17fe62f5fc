"""``cadence``: how late the scheduler fires seconds-scale re-alerts."""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from bench.harness import (
    Bench,
    at_utc,
    demo_request,
    log,
    one_step_from_hot,
    percentile,
    require_alerts,
    start_alerting,
)
from bench.stack import wait_for


def cadence(bench: Bench) -> dict[str, Any]:
    """Re-alerts on a seconds-scale cadence, each measured from its due time to the provider receiving
    the last of its requests (every channel of it has gone out), as speed-to-lead is."""
    s = bench.sizes
    retries = ["2s", "4s", "6s"]
    n_leads = math.ceil(s.cadence_steps / len(retries) * 1.1)
    require_alerts()
    with bench.scenario("cadence", retries=retries) as world:
        start_alerting(world, beat=True)
        leads = [f"cad-{i}" for i in range(n_leads)]
        one_step_from_hot(world, leads)
        log(f"cadence: {n_leads} hot leads crossing at {s.cadence_crossings_per_s}/s, retries {retries}, "
            f"the scheduler ticking")
        chunk = max(1, round(s.cadence_crossings_per_s / 10))
        started = time.monotonic()
        for n, i in enumerate(range(0, n_leads, chunk)):   # a steady stream of crossings, ten times a second
            time.sleep(max(0.0, started + n * chunk / s.cadence_crossings_per_s - time.monotonic()))
            world.publish([demo_request(lead) for lead in leads[i:i + chunk]])
        expected = n_leads * len(retries)

        def settled() -> bool:
            counts = dict(world.rows("SELECT status, count(*) FROM alert_steps WHERE kind = 'retry' "
                                     "AND lead_id LIKE 'cad-%' GROUP BY status"))
            return sum(counts.values()) >= expected and not counts.get("pending") and not counts.get("firing")

        with contextlib.suppress(TimeoutError):
            wait_for(settled, 120, "every retry step fired", interval=0.5, processes=world.procs)
        now = datetime.now(UTC)
        received = {r["provider_id"]: r["received_at"] for r in world.bench.provider.requests if r["provider_id"]}
        sent: dict[int, datetime] = {}   # step id -> the provider received the last of its requests
        for step_id, provider_id in world.rows("SELECT step_id, provider_id FROM deliveries "
                                               "WHERE step_id IS NOT NULL AND provider_id IS NOT NULL"):
            at = received.get(provider_id)
            if at is not None:
                at_dt = datetime.fromtimestamp(at, UTC)
                sent[step_id] = max(sent.get(step_id, at_dt), at_dt)
        rows = world.rows("SELECT id, assignment_id, step, status, due_at, claimed_at, fired_at FROM alert_steps "
                          "WHERE kind = 'retry' AND lead_id LIKE 'cad-%' ORDER BY assignment_id, step")
        lateness, answered, claimed, skipped = [], [], [], 0
        for step_id, assignment_id, step, status, due_at, claimed_at, fired_at in rows:
            due = at_utc(due_at)
            if due > now:
                continue
            at = sent.get(step_id)
            if status == "skipped":
                # The rep heard this reminder only when the later step it collapsed into went out.
                skipped += 1
                at = next((sent.get(i) for i, a, n, st, *_ in rows if a == assignment_id and n > step
                           and st == "done" and sent.get(i)), None)
            lateness.append(((at or now) - due).total_seconds() * 1000)
            if claimed_at is not None and fired_at is not None:
                claimed.append((at_utc(claimed_at) - due).total_seconds() * 1000)
                answered.append((at_utc(fired_at) - due).total_seconds() * 1000)
        log(f"  {len(lateness)} retry steps, {skipped} collapsed as overdue (each counted late until the step it "
            f"collapsed into went out)")
        if claimed:
            log(f"  after the due time: claimed {statistics.median(claimed):.0f} ms median, "
                f"{percentile(claimed, 99):.0f} ms p99; at the provider {statistics.median(lateness):.0f} / "
                f"{percentile(lateness, 99):.0f} ms; the providers' last answer {statistics.median(answered):.0f} / "
                f"{percentile(answered, 99):.0f} ms")
    return {"p99": round(percentile(lateness, 99), 1) if lateness else None}
