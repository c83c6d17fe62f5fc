"""``priority``: a ``Demo Requested`` behind a backlog of page views."""

from __future__ import annotations

import time
from typing import Any

from bench.harness import (
    Bench,
    World,
    aware_utc,
    demo_request,
    log,
    low_value_events,
    one_step_from_hot,
    require_alerts,
    start_alerting,
)


def priority(bench: Bench) -> dict[str, Any]:
    s = bench.sizes
    require_alerts()
    with bench.scenario("priority") as world:
        start_alerting(world)
        lead = "prio-lead"
        one_step_from_hot(world, [lead])
        before = world.events_committed()
        log(f"priority: {s.backlog} page views queued, then one Demo Requested")
        world.publish(low_value_events("backlog", s.backlog, max(1, s.backlog // 10)), chunk=5000)
        from worker.adapters import stream

        world.wait_committed(before + 500, 120)   # the event workers are busy with the backlog
        waiting = stream.backlog(world.redis, stream.NORMAL)
        started = time.time()
        world.publish([demo_request(lead)])
        bench.provider.wait_for(lambda p: any(r["received_at"] >= started for r in p.requests), timeout=120)
        at = min(r["received_at"] for r in bench.provider.requests if r["received_at"] >= started)
        committed = world.events_committed()
        log(f"  normal lane when the Demo Requested was published: {waiting}; "
            f"backlog events committed when it alerted: {committed - before}/{s.backlog}")
        log("  " + alert_breakdown(world, lead, started, at))
    return {"backlog": s.backlog, "ms": round((at - started) * 1000, 1)}


def alert_breakdown(world: World, lead: str, published: float, received: float) -> str:
    """Where one alert's time went, from the rows it left (each stage's clock starts before its transaction)."""
    drained = world.scalar("SELECT processed_at FROM events WHERE message_id = :m", m=f"{lead}-demo")
    fired = world.scalar("SELECT min(claimed_at) FROM alert_steps WHERE lead_id = :l", l=lead)
    stamps = [("drain began", aware_utc(drained)), ("step fire began", aware_utc(fired))]
    parts, last = [], published
    for name, at in stamps:
        if at is not None:
            parts.append(f"{name} +{(at.timestamp() - last) * 1000:.0f} ms")
            last = at.timestamp()
    parts.append(f"provider received +{(received - last) * 1000:.0f} ms")
    return "publish → " + " → ".join(parts)
