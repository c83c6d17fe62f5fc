"""``python -m bench.scenarios.voice [--quick]``: call-first alerts, from the crossing event's publish to the rep's phone ringing.

Two runs on the whole stack (the service's worker groups and scheduler, the real Twilio SDK
against the local stand-in): single hot leads one after another, and 60 leads going hot within one
minute at random moments (a lumpy burst, as real traffic is). The stand-in queues calls as Twilio
does, at the account's calls-per-second (1 by default), so "ringing" is when Twilio would dial:
the call request's arrival plus its place in that queue. Also run by ``python -m bench.run --only voice``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    FULL,
    QUICK,
    Bench,
    World,
    demo_request,
    log,
    one_step_from_hot,
    percentile,
    require_alerts,
    start_alerting,
)
from bench.stack import ROOT
from bench.stack import wait_for as wait_until

CALLERS = ["+15005550006", "+15005550007", "+15005550008", "+15005550009"]
RESULTS = Path(__file__).resolve().parents[1] / "voice_results.json"


def voice_rules(world: World, calls_per_second: float = 1) -> None:
    """Every rep called first (and texted); reminders by SMS; four caller ids; the account's call rate."""
    from ruamel.yaml import YAML

    from routing.config import load_rules

    path = Path(world.procs.env["LEADROUTER_CONFIG"])
    yaml = YAML()
    doc = yaml.load(path.read_text())
    for rep in doc["reps"]:
        rep["channels"] = ["voice", "sms", "email"]
    doc["alerts"]["channels"] = {"first": ["voice", "sms"], "priority": ["voice", "sms"], "retry": ["sms"]}
    doc["voice"] = {"caller_ids": CALLERS, "calls_per_second": calls_per_second}
    with path.open("w") as fh:
        yaml.dump(doc, fh)
    world.rules = load_rules(path)


def rings(world: World) -> dict[str, float]:
    """lead id → when its first call rings (time.time()): the stand-in's slot for it in Twilio's queue."""
    provider = world.bench.provider
    with provider._lock:
        slots = {sid: float(form["RingsAt"]) for sid, form in provider.call_forms.items() if "RingsAt" in form}
    out: dict[str, float] = {}
    for lead_id, sid in world.rows("SELECT lead_id, provider_id FROM deliveries "
                                   "WHERE channel = 'voice' AND provider_id IS NOT NULL"):
        if sid in slots and (lead_id not in out or slots[sid] < out[lead_id]):
            out[lead_id] = slots[sid]
    return out


def _crossings(world: World, leads: list[str], at: list[float]) -> list[float]:
    """Publish each lead's crossing at its offset (seconds from now); crossing → ring in ms."""
    one_step_from_hot(world, leads)
    start, published = time.time(), {}
    for lead, offset in sorted(zip(leads, at, strict=True), key=lambda p: p[1]):
        time.sleep(max(0.0, start + offset - time.time()))
        published[lead] = time.time()
        world.publish([demo_request(lead)])
    wait_until(lambda: rings(world).keys() >= set(leads), 180, "every crossing's call", interval=0.5,
               processes=world.procs)
    ring = rings(world)
    return [(ring[lead] - published[lead]) * 1000 for lead in leads]


def _summary(ms: list[float]) -> dict[str, Any]:
    return {"p50": round(percentile(ms, 50), 1), "p99": round(percentile(ms, 99), 1), "max": round(max(ms), 1),
            "calls": len(ms)}


def crossing_to_ring(bench: Bench) -> dict[str, Any]:
    require_alerts()
    singles, burst, minute = (5, 10, 10.0) if bench.quick else (20, 60, 60.0)
    with bench.scenario("voice") as world:
        voice_rules(world)
        start_alerting(world)
        bench.provider.reset()   # the warm-up's calls leave Twilio's queue empty again
        log(f"voice: {singles} single hot leads, one every 1.5 s")
        single = _crossings(world, [f"one-{i}" for i in range(singles)], [1.5 * i for i in range(singles)])
        time.sleep(2.0)   # the queue is empty again before the burst
        log(f"voice: {burst} leads going hot within {minute:.0f} s")
        rng = random.Random(18)
        moments = [rng.uniform(0, minute) for _ in range(burst)]
        lumpy = _crossings(world, [f"burst-{i}" for i in range(burst)], moments)
        # the same burst on an account whose CPS Twilio raised to 5
        time.sleep(max(2.0, max(lumpy) / 1000))   # Twilio's queue is empty again
        voice_rules(world, calls_per_second=5)
        bench.provider.calls_per_second = 5.0
        log(f"voice: the same {burst} leads at 5 calls a second")
        faster = _crossings(world, [f"cps5-{i}" for i in range(burst)], moments)
        bench.provider.calls_per_second = 1.0
    return {"single_ms": _summary(single), "burst_60_per_minute_ms": _summary(lumpy),
            "burst_60_per_minute_at_5_cps_ms": _summary(faster), "caller_ids": len(CALLERS)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scenarios.voice", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the harness")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    bench = Bench(QUICK if args.quick else FULL, args.quick)
    try:
        bench.start()
        result = crossing_to_ring(bench)
    finally:
        bench.close()
    result["database"] = bench.databases.kind
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
