"""``python -m bench.scenarios.board [--quick]``: how long one refresh of the operator's board takes
(``worker.services.reports.board``, what ``/board/live`` and ``/board/data.json`` compute) with
1,000,000 leads in the database, 10,000 of them hot, open and unclaimed, and a day's worth
of claimed episodes behind them. Target: under 100 ms on PostgreSQL (``DATABASE_URL``
names the server; without it, SQLite).

The rows are written as the product writes them (a lead, its hot episode, its assignment,
its first alert step and delivery), in bulk. The figures are the median and p95 of 30
refreshes after 3 warm-up ones, into ``bench/results-board.json``: the 2-second refresh (open hot
leads and reps, ``/board/live``) and, apart, the 10-second one of the day's figures
(``/board/today``, which reads every episode of the last 24 hours).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.stack import ROOT, Databases

RESULTS = Path(__file__).resolve().parents[1] / "results-board.json"
REPS = ("alice", "bob", "carol", "maria")


def _rows(leads: int, open_hot: int, claimed: int, now: datetime) -> dict[str, list[tuple[Any, ...]]]:
    rng = random.Random(7)
    out: dict[str, list[tuple[Any, ...]]] = {"leads": [], "hot_episodes": [], "assignments": [], "alert_steps": [],
                                             "deliveries": []}
    breakdown = json.dumps({"events": {"Demo Requested": {"points": 30}, "Pricing Viewed": {"points": 15}}})
    hot = open_hot + claimed
    for i in range(leads):
        is_hot = i < hot
        out["leads"].append((f"user-{i:07d}", now - timedelta(days=30), now, json.dumps({"name": f"Lead {i}"}),
                             90.0 if is_hot else 5.0, 45.0 if is_hot else 5.0, 45.0 if is_hot else 0.0,
                             "hot" if is_hot else "cold", breakdown if is_hot else "{}",
                             REPS[i % 4] if is_hot else None, 3, False))
        if not is_hot:
            continue
        n = i + 1
        opened = now - timedelta(seconds=rng.uniform(60, 23 * 3600))
        claimed_at = opened + timedelta(seconds=rng.uniform(20, 300)) if i >= open_hot else None
        out["hot_episodes"].append((n, f"user-{i:07d}", opened, opened, "open" if claimed_at is None else "claimed",
                                    "bench", False, 0))
        out["assignments"].append((n, n, f"user-{i:07d}", REPS[i % 4], "default", "team", "{}", "bench", opened,
                                   opened, True, claimed_at))
        sent = opened + timedelta(seconds=rng.uniform(0.05, 0.5))
        out["alert_steps"].append((2 * n, n, f"user-{i:07d}", 0, "first", opened, "done", sent))
        out["alert_steps"].append((2 * n + 1, n, f"user-{i:07d}", 1, "retry", opened + timedelta(seconds=90),
                                   "pending" if claimed_at is None else "cancelled", None))
        out["deliveries"].append((n, 2 * n, f"user-{i:07d}", REPS[i % 4], "sms", "+15550000000", "delivered",
                                  sent, sent, sent))
    return out


COLUMNS = {
    "leads": "id, created_at, updated_at, traits, score, behavior, fit, tier, breakdown, owner, event_count, "
             "hot_unalerted",
    "hot_episodes": "id, lead_id, opened_at, event_received_at, status, rules_hash, red_hot, reassignments",
    "assignments": "id, episode_id, lead_id, rep_id, team_id, route, reasons, rules_hash, created_at, start_at, "
                   "current, claimed_at",
    "alert_steps": "id, assignment_id, lead_id, step, kind, due_at, status, fired_at",
    "deliveries": "id, step_id, lead_id, recipient, channel, \"to\", status, created_at, sent_at, updated_at",
}


def fill(url: str, leads: int, open_hot: int, claimed: int, now: datetime) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        rows = _rows(leads, open_hot, claimed, now)
        for table, cols in COLUMNS.items():
            if engine.dialect.name == "postgresql":
                with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
                    for row in rows[table]:
                        copy.write_row(row)
            else:
                marks = ", ".join("?" * len(cols.split(",")))
                cur.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})",
                                [tuple(v.replace(tzinfo=None).isoformat(" ", "microseconds")
                                       if isinstance(v, datetime) else v for v in row) for row in rows[table]])
            raw.commit()
        if engine.dialect.name == "postgresql":
            for table in ("hot_episodes", "assignments", "alert_steps", "deliveries"):   # leads: text ids
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        cur.execute("ANALYZE" if engine.dialect.name == "postgresql" else "PRAGMA wal_checkpoint(TRUNCATE)")
        raw.commit()
    finally:
        raw.close()
        engine.dispose()


def refresh_ms(url: str, rounds: int) -> tuple[list[float], list[float]]:
    """Milliseconds of the board's 2-second refresh (open hot leads and reps: ``/board/live``) and of
    its 10-second one (the day's figures: ``/board/today``), each after 3 warm-up rounds."""
    from routing.config import load_rules
    from worker.adapters.db import now_utc
    from worker.adapters.engines import make_engine, make_sessionmaker
    from worker.services import reports

    rules = load_rules(ROOT / "config" / "routing.yaml")
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    live, today = [], []
    try:
        for i in range(rounds + 3):
            started = time.perf_counter()
            with sessions() as session:
                b = reports.board(session, rules, today=False)
            middle = time.perf_counter()
            with sessions() as session:
                d = reports.day(session, now_utc())
            if i >= 3:
                live.append((middle - started) * 1000)
                today.append((time.perf_counter() - middle) * 1000)
        assert b.open_hot_leads > 0 and len(b.leads) == reports.BOARD_ROWS, "the board found no open hot lead"
        assert d.speed_to_lead.hot_episodes > 0
    finally:
        engine.dispose()
    return live, today


def _spread(times: list[float]) -> dict[str, float]:
    s = sorted(times)
    return {"median": round(statistics.median(s), 1), "p95": round(s[int(0.95 * (len(s) - 1))], 1),
            "max": round(s[-1], 1)}


def measure(databases: Databases, quick: bool) -> dict[str, Any]:
    """Fill a database of ``databases`` and time the board on it; ``bench.run`` calls this too."""
    leads, open_hot, claimed = (10_000, 1_000, 1_000) if quick else (1_000_000, 10_000, 10_000)
    url = databases.create("board")
    now = datetime.now(UTC)
    started = time.monotonic()
    fill(url, leads, open_hot, claimed, now)
    print(f"filled {leads} leads ({open_hot} open hot, {claimed} claimed today) in "
          f"{time.monotonic() - started:.0f}s on {databases.kind}", flush=True)
    live, today = refresh_ms(url, 30)
    return {"board_refresh_ms": _spread(live), "board_today_ms": _spread(today),
            "sizes": {"leads": leads, "open_hot_leads": open_hot, "claimed_today": claimed}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scenarios.board", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 leads, 1,000 open: checks the harness")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    databases = Databases(Path(tempfile.mkdtemp(prefix="leadrouter-bench-board-")), os.environ.get("DATABASE_URL"))
    try:
        figures = measure(databases, args.quick)
    finally:
        databases.drop_all()
    result = {"board_refresh_ms": figures["board_refresh_ms"], "board_today_ms": figures["board_today_ms"],
              "meta": {"date": datetime.now(UTC).isoformat(timespec="seconds"), "database": databases.kind,
                       **figures["sizes"], "mode": "quick" if args.quick else "full"}}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"board refresh (every 2 s): median {result['board_refresh_ms']['median']} ms, "
          f"p95 {result['board_refresh_ms']['p95']} ms (target < 100 ms on PostgreSQL); the day's figures (every 10 s): "
          f"median {result['board_today_ms']['median']} ms; written to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
