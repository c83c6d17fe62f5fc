"""The leads' rows as a batch reads and writes them: locking leads in id order, loading their
histories and episodes, reserving and inserting events, persisting scores, merging identities, and
dead letters. The batch's story is :mod:`worker.services.pipeline`; this is its storage."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, Table, bindparam, func, select, text, update
from sqlalchemy.orm import Session, defer

from routing.config import Rules
from routing.events import Event, normalize, parse_time
from routing.leads import Lead as CoreLead
from routing.leads import (
    carried_traits,
)
from routing.scoring import EpisodeState, LeadHistory, Signal, TraitUpdate
from worker.adapters import db
from worker.adapters.stream import Entry

if TYPE_CHECKING:
    from sqlalchemy.dialects import postgresql, sqlite

log = logging.getLogger("leadrouter.pipeline")


def dialect_insert(session: Session) -> Callable[..., postgresql.Insert | sqlite.Insert]:
    """The database's own ``insert()``: the one with ``on_conflict_do_nothing()``."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


def insert_ignore(session: Session, model: type[db.Base], values: dict[str, Any], conflict: list[str]) -> Any:
    """INSERT … ON CONFLICT DO NOTHING on either database; the new primary key or None."""
    insert = dialect_insert(session)
    pk = list(cast(Table, model.__table__).primary_key.columns)[0]
    stmt = insert(model).values(**values).on_conflict_do_nothing(index_elements=conflict).returning(pk)
    return session.execute(stmt).scalar_one_or_none()


def lock_leads(session: Session, lead_ids: Iterable[str], now: datetime) -> dict[str, db.Lead]:
    """Make sure each lead row exists, then lock them all in id order."""
    ids = sorted(set(lead_ids))
    if not ids:
        return {}
    session.execute(dialect_insert(session)(db.Lead).on_conflict_do_nothing(index_elements=["id"]),
                    [{"id": lead_id, "created_at": now, "updated_at": now, "traits": {}, "breakdown": {}}
                     for lead_id in ids])
    # traits and breakdown are written whole after scoring and rarely read here: not decoded unless read
    stmt = (select(db.Lead).where(db.Lead.id.in_(ids)).order_by(db.Lead.id)
            .options(defer(db.Lead.traits), defer(db.Lead.breakdown)))
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return {lead.id: lead for lead in session.scalars(stmt)}


def public_sources() -> frozenset[str]:
    from worker.adapters.settings import get_settings

    return get_settings().public_sources()


def load_history(session: Session, lead_id: str) -> LeadHistory:
    return load_histories(session, [lead_id])[0][lead_id]


def core_lead(row: db.Lead, history: LeadHistory) -> CoreLead:
    return CoreLead(row.id, history, episode_state(row))


def to_event(entry: Entry, rules: Rules) -> Event:
    received = parse_time(entry.received_at, "receivedAt") if entry.received_at else db.now_utc()
    return normalize(entry.payload, source=entry.source, received_at=received, pages=rules.pages)


def resolve_links(conn: Session | Connection, events: list[Event]) -> dict[str, str]:
    """Anonymous lead id → user lead id, for the anonymous ids these events mention."""
    anon = {f"anon:{e.anonymous_id}" for e in events if e.anonymous_id}
    anon |= {link[0] for e in events if (link := e.link)}
    if not anon:
        return {}
    rows = conn.execute(select(db.IdentityLink.anon_lead_id, db.IdentityLink.user_lead_id)
                           .where(db.IdentityLink.anon_lead_id.in_(anon))).all()
    return dict(rows)


def merge_into(session: Session, anon: db.Lead, user: db.Lead, now: datetime) -> None:
    """Move the anonymous lead's history, and its cadence unless the user's has one, to the user."""
    session.execute(update(db.Event).where(db.Event.lead_id == anon.id).values(lead_id=user.id))
    user_active = session.scalar(select(db.HotEpisode.id).where(db.HotEpisode.lead_id == user.id,
                                                                db.HotEpisode.status == "open").limit(1))
    if user_active is not None:
        session.execute(update(db.AlertStep).where(db.AlertStep.lead_id == anon.id, db.AlertStep.status == "pending")
                        .values(status="cancelled", note="merged into " + user.id))
        session.execute(update(db.HotEpisode).where(db.HotEpisode.lead_id == anon.id, db.HotEpisode.status == "open")
                        .values(status="merged", closed_at=now))
        session.execute(update(db.Assignment).where(db.Assignment.lead_id == anon.id, db.Assignment.current.is_(True))
                        .values(current=False, ended_at=now, end_reason="merged"))
    for model in (db.HotEpisode, db.Assignment, db.AlertStep, db.Delivery, db.Trace):
        session.execute(update(model).where(model.lead_id == anon.id).values(lead_id=user.id))
    if user.owner is None and anon.owner is not None and user_active is None:
        user.owner = anon.owner
    anon.merged_into = user.id
    anon.updated_at = now
    session.add(db.Trace(lead_id=user.id, at=now, kind="merged", detail={"from": anon.id}))


# In-batch trait updates are ordered by their place in the batch, after every stored one, as their
# event ids will be: the ids are only reserved under the write lock, after the batch is scored.
SEQ_BASE = 1 << 62


def load_histories(conn: Session | Connection, lead_ids: Iterable[str]
                   ) -> tuple[dict[str, LeadHistory], dict[str, tuple[int, int]]]:
    """The histories of the leads ``lead_ids``, by one query, and the (count, largest id) of the events
    each was read from: what :func:`event_versions` compares."""
    ids = list(lead_ids)
    if not ids:
        return {}, {}
    found: dict[str, tuple[list[Signal], list[TraitUpdate]]] = {lead_id: ([], []) for lead_id in ids}
    versions: dict[str, tuple[int, int]] = {}
    result = conn.execute(
        select(db.Event.lead_id, db.Event.id, db.Event.type, db.Event.name, db.Event.timestamp, db.Event.traits,
               db.Event.message_id, db.Event.source)
        .where(db.Event.lead_id.in_(ids)).order_by(db.Event.id)
    )
    public = public_sources()
    for lead_id, rid, etype, name, ts, traits, mid, source in result:
        signals, updates = found[lead_id]
        count, _ = versions.get(lead_id, (0, 0))
        versions[lead_id] = (count + 1, rid)
        if etype == "track" and name:
            signals.append(Signal(name, ts, mid, rid))
        if traits:   # what the event said of the lead's traits (routing.leads.carried_traits), as stored
            updates.append(TraitUpdate(ts, traits, rid, source not in public))
    return {lead_id: LeadHistory(tuple(s), tuple(u)) for lead_id, (s, u) in found.items()}, versions


def event_versions(conn: Session | Connection, lead_ids: Iterable[str]) -> dict[str, tuple[int, int]]:
    """Lead → (count, largest id) of its stored events, for the leads that have any: one index-only query."""
    ids = list(lead_ids)
    if not ids:
        return {}
    stmt = (select(db.Event.lead_id, func.count(), func.max(db.Event.id))
            .where(db.Event.lead_id.in_(ids)).group_by(db.Event.lead_id))
    return {lead_id: (count, top) for lead_id, count, top in conn.execute(stmt)}


def load_episodes(conn: Session | Connection, lead_ids: Iterable[str]) -> dict[str, EpisodeState]:
    """The stored episode state of the leads ``lead_ids`` that exist."""
    ids = list(lead_ids)
    if not ids:
        return {}
    L = db.Lead
    stmt = select(L.id, L.hot_at, L.red_hot_at, L.last_routed_at, L.hot_unalerted).where(L.id.in_(ids))
    return {lead_id: EpisodeState(hot_at, red_hot_at, routed_at, bool(unalerted))
            for lead_id, hot_at, red_hot_at, routed_at, unalerted in conn.execute(stmt)}


def existing_keys(conn: Session | Connection, events: list[Event]) -> set[tuple[str, str]]:
    """The (source, message_id) keys of ``events`` the database holds already."""
    by_source: dict[str, list[str]] = {}
    for ev in events:
        by_source.setdefault(ev.source, []).append(ev.message_id)
    keys: set[tuple[str, str]] = set()
    for source, mids in by_source.items():
        stmt = select(db.Event.message_id).where(db.Event.source == source, db.Event.message_id.in_(mids))
        keys.update((source, mid) for mid in conn.execute(stmt).scalars())
    return keys


def reserve_event_ids(session: Session, n: int) -> list[int]:
    """``n`` new event ids, ascending: from the id sequence on PostgreSQL; on SQLite, past the largest id
    (the write lock taken at BEGIN IMMEDIATE keeps them ours, and they are the rowids SQLite would pick)."""
    if n <= 0:
        return []
    if session.get_bind().dialect.name == "postgresql":
        stmt = text("SELECT nextval(pg_get_serial_sequence('events', 'id')) FROM generate_series(1, :n)")
        return sorted(session.scalars(stmt, {"n": n}))
    top = session.scalar(select(func.max(db.Event.id))) or 0
    return list(range(top + 1, top + 1 + n))


def insert_events(session: Session, values: list[dict[str, Any]]) -> None:
    """Insert scored events; a key that another transaction stored meanwhile fails the batch (it is retried)."""
    stmt = dialect_insert(session)(db.Event).on_conflict_do_nothing(index_elements=["source", "message_id"]).returning(db.Event.id)
    # render_nulls: one statement for all rows, not one per pattern of None values
    inserted = len(session.execute(stmt, values, execution_options={"render_nulls": True}).all())
    if inserted != len(values):
        raise DuplicateRace(f"{len(values) - inserted} of {len(values)} events were stored by another transaction")


class DuplicateRace(RuntimeError):
    """An event key was stored concurrently between the duplicate check and the insert."""


def event_values(ev: Event, lead_id: str, now: datetime) -> dict[str, Any]:
    return {
        "source": ev.source, "message_id": ev.message_id, "lead_id": lead_id, "type": ev.type,
        "name": ev.name, "timestamp": ev.timestamp, "received_at": ev.received_at, "processed_at": now,
        "properties": dict(ev.properties), "traits": carried_traits(ev),
    }


def store_episode(row: db.Lead, ep: EpisodeState) -> None:
    row.hot_at, row.red_hot_at = ep.hot_at, ep.red_hot_at
    row.last_routed_at, row.hot_unalerted = ep.last_routed_at, ep.hot_unalerted


def episode_state(row: db.Lead) -> EpisodeState:
    return EpisodeState(row.hot_at, row.red_hot_at, row.last_routed_at, bool(row.hot_unalerted))


SCORED_COLUMNS = ("hot_at", "red_hot_at", "last_routed_at", "hot_unalerted", "score", "behavior", "fit", "tier",
                   "breakdown", "traits", "event_count", "updated_at", "rules_hash")


def write_scored(session: Session, rows: Iterable[db.Lead]) -> None:
    """Store the scored columns of ``rows`` as they stand now: one executemany UPDATE."""
    params = [{"lead_id": row.id, **{key: getattr(row, key) for key in SCORED_COLUMNS}} for row in rows]
    if params:
        leads = cast(Table, db.Lead.__table__)
        stmt = (update(leads).where(leads.c.id == bindparam("lead_id"))
                .values({key: bindparam(key) for key in SCORED_COLUMNS}))
        session.execute(stmt, params)


def dead_letter(session: Session, entry: Entry, error: str, now: datetime) -> None:
    mid = entry.payload.get("messageId") if isinstance(entry.payload, dict) else None
    session.add(db.DeadLetter(source=entry.source, message_id=mid if isinstance(mid, str) else None,
                              payload={"event": entry.payload, "received_at": entry.received_at},
                              error=error, created_at=now))
