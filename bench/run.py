"""``python -m bench.run [--quick] [--only NAME]``: the figures of SPEC §9, into ``bench/results.json``.

Scenarios (``--only`` takes these names):

- ``throughput``: events/s through broker, Celery workers and database, against the raw
  Celery rate of a no-op task on the same broker with the same worker count.
- ``speed_to_lead``: a crossing event's publish → the provider's first alert request,
  under a steady background load of low-value events.
- ``priority``: a ``Demo Requested`` behind a backlog of page views.
- ``cadence``: how late the scheduler fires seconds-scale re-alerts.
- ``per_event_cost``: the cost of a drained event with many leads in the database vs few.
- ``worker_rss``: the worker tree's memory after many events (shares the throughput
  worker when both run).

Every process, the private Redis and any PostgreSQL database the run creates are
removed at the end, on Ctrl-C and on errors too. Each scenario is a module of ``bench/scenarios/``;
``bench/harness.py`` is the world they run in, started through ``worker.adapters.launcher``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import FULL, QUICK, Bench, log
from bench.scenarios.board import measure as board_refresh
from bench.scenarios.cadence import cadence
from bench.scenarios.per_event_cost import per_event_cost
from bench.scenarios.priority import priority
from bench.scenarios.speed_to_lead import speed_to_lead
from bench.scenarios.throughput import throughput_and_rss
from bench.scenarios.voice import crossing_to_ring
from bench.stack import ROOT

RESULTS = Path(__file__).resolve().parent / "results.json"
SCENARIOS = ("throughput", "speed_to_lead", "priority", "cadence", "per_event_cost", "worker_rss", "voice", "board")


# ---------------------------------------------------------------- report


TARGETS = [
    ("throughput", "ratio", ">=", 3),
    ("speed_to_lead_ms", "p50", "<=", 50),
    ("speed_to_lead_ms", "p99", "<=", 250),
    ("priority_alert_ms_with_backlog", "ms", "<=", 1000),
    ("cadence_lateness_ms", "p99", "<=", 1000),
    ("per_event_cost_ratio_1m_vs_10k", None, "<=", 1.25),
]


def print_table(results: dict[str, Any]) -> None:
    rows = []
    for key, value in results.items():
        if key == "meta":
            continue
        if isinstance(value, dict):
            rows += [(f"{key}.{k}", v) for k, v in value.items()]
        else:
            rows.append((key, value))
    targets = {(k if sub is None else f"{k}.{sub}"): (op, t) for k, sub, op, t in TARGETS}
    print(f"\n{'figure':44} {'value':>12}  target")
    for name, value in rows:
        target = ""
        if name in targets:
            op, t = targets[name]
            ok = value is not None and (value >= t if op == ">=" else value <= t)
            target = f"{op} {t}  {'ok' if ok else 'MISSED' if value is not None else '-'}"
        shown = "-" if value is None else f"{value:,}" if isinstance(value, int | float) else str(value)
        print(f"{name:44} {shown:>12}  {target}")
    meta = results["meta"]
    print(f"\n{meta['date']}  {meta['machine']['cores']} cores  {meta['database']}  {meta['mode']}")


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the harness")
    parser.add_argument("--only", choices=SCENARIOS, action="append", help="run only this scenario (repeatable)")
    args = parser.parse_args(argv)
    chosen = set(args.only or SCENARIOS)
    sizes = QUICK if args.quick else FULL

    def terminate(_signum: int, _frame: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
    sys.path.insert(0, str(ROOT))
    bench = Bench(sizes, args.quick)
    results: dict[str, Any] = {
        "throughput": None, "speed_to_lead_ms": None, "priority_alert_ms_with_backlog": None,
        "cadence_lateness_ms": None, "per_event_cost_ratio_1m_vs_10k": None, "worker_rss_mb": None,
        "meta": {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                 "machine": {"cores": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version()},
                 "database": bench.databases.kind, "mode": "quick" if args.quick else "full",
                 "scenarios": sorted(chosen),
                 "sizes": {"throughput_events": sizes.throughput_events, "noop_tasks": sizes.noop_tasks,
                           "crossings": sizes.crossings, "cadence_steps": sizes.cadence_steps,
                           "cadence_crossings_per_s": sizes.cadence_crossings_per_s,
                           "cost_leads": [sizes.cost_small, sizes.cost_large],
                           "cost_batches": sizes.cost_batches, "rss_events": sizes.rss_events}},
    }
    started = time.monotonic()
    failed: list[str] = []

    def attempt(name: str, fn: Any) -> Any:
        """A scenario that fails is reported and left out; the others still run."""
        try:
            return fn()
        except Exception as exc:
            failed.append(name)
            log(f"{name} FAILED: {type(exc).__name__}: {exc}")
            traceback.print_exc(limit=-3)
            return None

    try:
        bench.start()
        if chosen & {"throughput", "worker_rss"}:
            tr = attempt("throughput", lambda: throughput_and_rss(bench, "throughput" in chosen,
                                                                  "worker_rss" in chosen)) or {}
            results["throughput"] = tr.get("throughput")
            results["worker_rss_mb"] = tr.get("worker_rss_mb")
        if "speed_to_lead" in chosen:
            results["speed_to_lead_ms"] = attempt("speed_to_lead", lambda: speed_to_lead(bench))
        if "priority" in chosen:
            results["priority_alert_ms_with_backlog"] = attempt("priority", lambda: priority(bench))
        if "cadence" in chosen:
            results["cadence_lateness_ms"] = attempt("cadence", lambda: cadence(bench))
        if "per_event_cost" in chosen:
            results["per_event_cost_ratio_1m_vs_10k"] = attempt("per_event_cost", lambda: per_event_cost(bench))
        if "voice" in chosen:   # call-first alerts: crossing → ring
            results["voice_ring_ms"] = attempt("voice", lambda: crossing_to_ring(bench))
        if "board" in chosen:   # the operator board's refresh with a million leads
            results["board"] = attempt("board", lambda: board_refresh(bench.databases, args.quick))
    finally:
        bench.close()
    results["meta"]["failed"] = failed
    results["meta"]["seconds"] = round(time.monotonic() - started)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"written to {RESULTS.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
