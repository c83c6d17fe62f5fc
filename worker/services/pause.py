"""Whether alerting is paused: one row, read by everything that sends and written by ``leadrouter pause``.

While paused, events are still scored and routed; no alert step is claimed, and a delivery found
unsent when it is settled is not sent then (SPEC §5, §6).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from worker.adapters import db

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
    """Write one row of the service's settings table (the pause switch, a rep's availability, …)."""
    row = session.get(db.Setting, key)
    if row is None:
        session.add(db.Setting(key=key, value=value, updated_at=now))
    else:
        row.value, row.updated_at = value, now
