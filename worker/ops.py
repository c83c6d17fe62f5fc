"""The pause switch: stop (or restart) all alerting at once; events keep being scored.

The rest of an operator's hand lives in :mod:`worker.operator` (rep availability, lead
commands, forget, dead letters) and what the service shows in :mod:`worker.reports`
(``status``, ``report``, the board).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from worker import db

PAUSE_KEY = "paused"


def is_paused(session: Session) -> bool:
    row = session.get(db.Setting, PAUSE_KEY)
    return bool(row is not None and row.value.get("paused"))


def set_paused(session: Session, paused: bool, actor: str | None, reason: str | None = None,
               now: datetime | None = None) -> None:
    """Stop (or restart) all alerting; events keep being scored while paused."""
    now = now or db.now_utc()
    value = {"paused": paused, "actor": actor, "reason": reason, "at": now.isoformat()}
    put_setting(session, PAUSE_KEY, value, now)


def put_setting(session: Session, key: str, value: dict[str, Any], now: datetime) -> None:
    row = session.get(db.Setting, key)
    if row is None:
        session.add(db.Setting(key=key, value=value, updated_at=now))
    else:
        row.value, row.updated_at = value, now
