"""PostgreSQL's planner statistics are kept current by the scheduler, whether autovacuum runs or not."""

from __future__ import annotations

from sqlalchemy import insert, text

from tests.support.stack import wait_until
from worker.adapters import db, engines
from worker.adapters.runtime import get_runtime
from worker.entrypoints.scheduler import keep_statistics


def _last_analyzed(engine, table: str):  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(text("SELECT greatest(last_analyze, last_autoanalyze) FROM pg_stat_user_tables "
                                 "WHERE relname = :t AND schemaname = current_schema()"), {"t": table}).scalar()


def test_tables_that_changed_are_analyzed_and_then_left_alone(service_env):
    engine = engines.make_engine(service_env["DATABASE_URL"])
    try:
        if engine.dialect.name != "postgresql":
            assert engines.refresh_statistics(engine) == []    # SQLite: nothing to do, nothing done
            return
        now = db.now_utc()
        with engine.begin() as conn:
            conn.execute(insert(db.Lead), [{"id": f"stats-{i}", "created_at": now, "updated_at": now, "traits": {},
                                            "breakdown": {}} for i in range(500)])
        before = _last_analyzed(engine, "leads")
        analyzed: set[str] = set()

        def leads_analyzed() -> bool:   # the server counts the changes in its own time (about a second)
            analyzed.update(engines.refresh_statistics(engine))
            return "leads" in analyzed

        wait_until(leads_analyzed, timeout=15, interval=0.2, message="leads analyzed")
        after = _last_analyzed(engine, "leads")
        assert after is not None and (before is None or after > before)
        assert analyzed <= set(db.Base.metadata.tables)   # ours only
        assert "leads" not in engines.refresh_statistics(engine)   # caught up: not analyzed again
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM pg_stats WHERE tablename = 'leads' "
                                     "AND schemaname = current_schema()")).scalar() > 0
    finally:
        engine.dispose()


def test_the_scheduler_chore_analyzes_the_service_database(service_env):
    engine = engines.make_engine(service_env["DATABASE_URL"])
    try:
        if engine.dialect.name != "postgresql":
            keep_statistics(get_runtime())   # on SQLite the chore does nothing, and never fails
            return
        before = _last_analyzed(engine, "events")
        now = db.now_utc()
        with engine.begin() as conn:
            conn.execute(insert(db.Event), [
                {"source": "stats", "message_id": f"m-{i}", "lead_id": f"stats-{i % 50}", "type": "track",
                 "name": "Page Viewed", "timestamp": now, "received_at": now, "processed_at": now,
                 "properties": {}, "traits": {}, "points": 0, "score_after": 0, "tier_after": "cold", "stale": False}
                for i in range(500)])

        def analyzed() -> bool:
            keep_statistics(get_runtime())
            after = _last_analyzed(engine, "events")
            return after is not None and (before is None or after > before)

        wait_until(analyzed, timeout=15, interval=0.2, message="events analyzed by the scheduler's chore")
    finally:
        engine.dispose()
