"""``speed_to_lead``: a crossing event's publish → the provider's first alert request, under a steady
background load of low-value events; its distribution plotted in ``bench/speed_to_lead.svg``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    BackgroundLoad,
    Bench,
    demo_request,
    first_alerts,
    log,
    one_step_from_hot,
    percentile,
    require_alerts,
    start_alerting,
)
from bench.plot import write_histogram_svg
from bench.stack import ROOT, wait_for

PLOT = Path(__file__).resolve().parents[1] / "speed_to_lead.svg"


def speed_to_lead(bench: Bench) -> dict[str, Any]:
    s = bench.sizes
    require_alerts()
    with bench.scenario("speed") as world:
        start_alerting(world)
        leads = [f"stl-{i}" for i in range(s.crossings)]
        one_step_from_hot(world, leads)
        load = BackgroundLoad(world, s.background_per_s)
        load.start()
        try:
            time.sleep(2.0)  # the background load is steady before the first crossing
            log(f"speed_to_lead: {len(leads)} crossings under {s.background_per_s} background events/s")
            published: dict[str, float] = {}
            for lead in leads:
                published[lead] = time.time()
                world.publish([demo_request(lead)])
                time.sleep(0.15)
            wait_for(lambda: first_alerts(world).keys() >= set(leads), 120, "every crossing's first alert",
                       interval=0.5, processes=world.procs)
        finally:
            load.stop()
        first = first_alerts(world)
        ms = [(first[lead] - published[lead]) * 1000 for lead in leads]
    write_histogram_svg(
        PLOT, ms, title="Speed to lead: crossing event published → first alert request at the provider",
        subtitle=(f"{len(ms)} hot leads under {load.rate:.0f} background events/s, {bench.databases.kind}, "
                  f"{os.cpu_count()} cores · targets: p50 ≤ 50 ms, p99 ≤ 250 ms"),
        x_label="milliseconds", markers=[("p50", percentile(ms, 50)), ("p99", percentile(ms, 99))])
    log(f"  distribution plotted in {PLOT.relative_to(ROOT)}")
    return {"p50": round(percentile(ms, 50), 1), "p99": round(percentile(ms, 99), 1),
            "background_events_per_s": round(load.rate, 1)}
