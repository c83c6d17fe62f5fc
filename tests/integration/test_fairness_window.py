"""Round robin's 7-day window and the 24 h open window mean the same live (SQL) and in ``simulate``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from routing.config import load_rules
from routing.ledger import ROUND_ROBIN_WINDOW, RoutingLedger
from tests.support.stack import CONFIG
from worker.adapters import db
from worker.services.assign import routing_state

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def test_the_windows_end_at_the_same_instant_live_and_in_the_ledger(service_env) -> None:
    rules = load_rules(CONFIG)
    rep = rules.reps[0].id
    team = rules.teams[0].id
    at = [NOW - ROUND_ROBIN_WINDOW, NOW - ROUND_ROBIN_WINDOW + timedelta(seconds=1),   # just out, just in
          NOW - rules.routing.open_window, NOW - rules.routing.open_window + timedelta(seconds=1), NOW]
    ledger = RoutingLedger()
    engine = sa.create_engine(service_env["DATABASE_URL"])
    try:
        with Session(engine) as s, s.begin():
            for i, when in enumerate(at):
                lead = f"w-{i}"
                s.add(db.Lead(id=lead, created_at=when, updated_at=when, traits={}, breakdown={}))
                s.add(db.Assignment(lead_id=lead, rep_id=rep, team_id=team, domain=None, route="team", reasons={},
                                    rules_hash="x", created_at=when, start_at=when, current=True))
                ledger.record(lead, rep, team, None, when)
        with Session(engine) as s:
            live = routing_state(s, rules, None, NOW).reps[rep]
    finally:
        engine.dispose()
    simulated = ledger.state(rules, NOW).reps[rep]
    assert live.assigned_7d == simulated.assigned_7d == {team: 4}
    assert live.open_leads == simulated.open_leads == 2
