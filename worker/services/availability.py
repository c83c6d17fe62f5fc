"""A rep's availability: away (until when, and why) and back, as ``rep away``, an SMS ``AWAY`` and the
automatic away of a rep who lets first alerts pass all write it."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.orm import Session

from routing.config import Rules
from routing.events import iso
from worker.adapters import db
from worker.services.pause import put_setting

AWAY_KEY = "away:{}"
FOREVER = datetime(9999, 1, 1, tzinfo=UTC)   # "away until `rep back`"


class OpsError(Exception):
    """An operator's request that cannot be carried out; nothing was changed."""


def check_rep(rules: Rules, rep_id: str) -> None:
    if rules.rep(rep_id) is None:
        raise OpsError(f"unknown rep {rep_id!r} (reps: {', '.join(r.id for r in rules.reps)})")


def set_away(session: Session, rules: Rules, rep_id: str, until: datetime | None, *, actor: str | None,
             reason: str | None = None, now: datetime | None = None) -> datetime:
    """Mark ``rep_id`` away until ``until`` (no end: until ``rep back``); returns the end stored."""
    check_rep(rules, rep_id)
    now = now or db.now_utc()
    end = until or FOREVER
    if end <= now:
        raise OpsError(f"--until {iso(end)} is in the past")
    state = rep_state(session, rep_id, now)
    state.away_until = end
    put_setting(session, AWAY_KEY.format(rep_id),
                 {"actor": actor, "reason": reason, "since": now.isoformat()}, now)
    return end


def set_back(session: Session, rules: Rules, rep_id: str, *, actor: str | None, now: datetime | None = None) -> None:
    check_rep(rules, rep_id)
    now = now or db.now_utc()
    state = rep_state(session, rep_id, now)
    state.away_until = None
    row = session.get(db.Setting, AWAY_KEY.format(rep_id))
    if row is not None:
        session.delete(row)


def rep_state(session: Session, rep_id: str, now: datetime) -> db.RepState:
    state = session.get(db.RepState, rep_id)
    if state is None:
        state = db.RepState(rep_id=rep_id, away_until=None, disabled_channels={}, updated_at=now)
        session.add(state)
    state.updated_at = now
    return state
