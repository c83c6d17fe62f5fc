"""Processing a batch of queued events: one database transaction per batch.

The story of a batch: normalise each entry, drop duplicates, resolve identities
(merging anonymous leads into users), lock the leads touched (in id order, so
two workers never deadlock), apply each event with the pure core, persist the
scores, and route every lead that opened a hot episode. Alert steps due now are
returned so the caller can dispatch them right after the commit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from routing.config import Rules
from routing.events import Event, EventError, normalize, parse_time
from routing.leads import Applied, apply_event, merge_leads
from routing.leads import Lead as CoreLead
from routing.scoring import FYI, PRIORITY, ROUTE, EpisodeState, LeadHistory, Signal, TraitUpdate
from worker import db
from worker.stream import Entry

log = logging.getLogger("leadrouter.pipeline")


@dataclass
class BatchResult:
    processed: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    crossings: int = 0
    due_steps: list[int] = field(default_factory=list)


def insert_ignore(session: Session, model: type, values: dict[str, Any], conflict: list[str]) -> Any:
    """INSERT … ON CONFLICT DO NOTHING on either database; the new primary key or None."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    pk = list(model.__table__.primary_key.columns)[0]
    stmt = insert(model).values(**values).on_conflict_do_nothing(index_elements=conflict).returning(pk)
    return session.execute(stmt).scalar_one_or_none()


def lock_leads(session: Session, lead_ids: Iterable[str], now: datetime) -> dict[str, db.Lead]:
    """Make sure each lead row exists, then lock them all in id order."""
    ids = sorted(set(lead_ids))
    if not ids:
        return {}
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    session.execute(insert(db.Lead).on_conflict_do_nothing(index_elements=["id"]),
                    [{"id": lead_id, "created_at": now, "updated_at": now, "traits": {}, "breakdown": {}}
                     for lead_id in ids])
    stmt = select(db.Lead).where(db.Lead.id.in_(ids)).order_by(db.Lead.id)
    if dialect == "postgresql":
        stmt = stmt.with_for_update()
    return {lead.id: lead for lead in session.scalars(stmt)}


def load_history(session: Session, lead_id: str) -> LeadHistory:
    rows = session.execute(
        select(db.Event.id, db.Event.type, db.Event.name, db.Event.timestamp, db.Event.traits, db.Event.message_id)
        .where(db.Event.lead_id == lead_id).order_by(db.Event.id)
    ).all()
    signals, updates = [], []
    for rid, etype, name, ts, traits, mid in rows:
        if etype == "track" and name:
            signals.append(Signal(name, ts, mid))
        elif etype in ("identify", "alias") and traits:
            updates.append(TraitUpdate(ts, traits, rid))
    return LeadHistory(tuple(signals), tuple(updates))


def core_lead(row: db.Lead, history: LeadHistory) -> CoreLead:
    return CoreLead(row.id, history, EpisodeState(row.hot_at, row.red_hot_at, row.last_routed_at, row.hot_unalerted))


def to_event(entry: Entry, rules: Rules) -> Event:
    received = parse_time(entry.received_at, "receivedAt") if entry.received_at else db.now_utc()
    return normalize(entry.payload, source=entry.source, received_at=received, pages=rules.pages)


def resolve_links(session: Session, events: list[Event]) -> dict[str, str]:
    """Anonymous lead id → user lead id, for the anonymous ids these events mention."""
    anon = {f"anon:{e.anonymous_id}" for e in events if e.anonymous_id}
    anon |= {link[0] for e in events if (link := e.link)}
    if not anon:
        return {}
    rows = session.execute(select(db.IdentityLink.anon_lead_id, db.IdentityLink.user_lead_id)
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


def process_batch(session: Session, entries: list[Entry], rules: Rules, now: datetime, router: Any) -> BatchResult:
    """Apply ``entries`` inside the caller's transaction. ``router`` turns hot episodes into assignments.

    A constant number of statements per batch in the common case: one query for the identity links, one
    bulk insert and one locking select for the leads, one query for their histories, one for the keys
    already stored, one to reserve event ids, one bulk insert of the scored events and one flush of the
    lead rows. Events are scored in Python before they are written, so no row is updated after its
    insert. Pending events are written before anything that may read them (a merge, the router).
    """
    result = BatchResult()
    events: list[Event] = []
    seen: set[tuple[str, str]] = set()
    for entry in entries:
        try:
            ev = to_event(entry, rules)
        except EventError as exc:
            dead_letter(session, entry, str(exc), now)
            result.dead_lettered += 1
            continue
        if (ev.source, ev.message_id) in seen:
            result.duplicates += 1
            continue
        seen.add((ev.source, ev.message_id))
        events.append(ev)

    links = resolve_links(session, events)
    touched: set[str] = set()
    for ev in events:
        if ev.lead_id:
            touched.add(links.get(ev.lead_id, ev.lead_id) if not ev.user_id else ev.user_id)
        if link := ev.link:
            touched.update(link)
    rows = lock_leads(session, touched, now)
    # under the lead locks: every history before any insert, and the keys stored already
    histories: dict[str, LeadHistory] = load_histories(session, rows)
    live = [ev for ev in events if ev.lead_id is not None]
    stored = existing_keys(session, live)
    ids = iter(reserve_event_ids(session, sum((ev.source, ev.message_id) not in stored for ev in live)))
    pending: list[dict[str, Any]] = []

    def flush_events() -> None:
        if pending:
            insert_events(session, pending)
            pending.clear()

    def history(lead_id: str) -> LeadHistory:
        if lead_id not in histories:
            flush_events()
            histories[lead_id] = load_history(session, lead_id)
        return histories[lead_id]

    for ev in live:
        if (link := ev.link) is not None:
            anon_id, user_id = link
            if anon_id not in links:
                anon_row, user_row = rows[anon_id], rows[user_id]
                if anon_row.merged_into is None and anon_row.event_count > 0:
                    merged = merge_leads(core_lead(user_row, history(user_id)), core_lead(anon_row, history(anon_id)))
                    flush_events()
                    merge_into(session, anon_row, user_row, now)
                    histories[user_id] = merged.history
                    histories[anon_id] = LeadHistory()
                    _store_episode(user_row, merged.episode)
                insert_ignore(session, db.IdentityLink,
                              {"anon_lead_id": anon_id, "user_lead_id": user_id, "linked_at": now}, ["anon_lead_id"])
                links[anon_id] = user_id
        lead_id = ev.user_id or links.get(ev.lead_id, ev.lead_id)
        row = rows.get(lead_id) or lock_leads(session, [lead_id], now)[lead_id]
        rows[lead_id] = row
        before = history(lead_id)   # read before the insert: the event must not count in its own "before"
        if (ev.source, ev.message_id) in stored:
            result.duplicates += 1
            continue
        new_id = next(ids)
        values = _event_values(ev, lead_id, now)
        values["id"] = new_id
        pending.append(values)
        if ev.type == "other":
            values.update(points=0.0, score_after=0.0, tier_after="cold", effect=None, stale=False)
            result.processed += 1
            continue
        applied = apply_event(core_lead(row, before), ev, rules, now=now, seq=new_id)
        histories[lead_id] = applied.lead.history
        values.update(_persist(row, applied, ev, rules, now))
        result.processed += 1
        if applied.contacted:
            flush_events()
            router.contacted(session, row, ev, now)
        action = applied.outcome.action
        if action is None:
            continue
        result.crossings += 1
        traits = applied.lead.history.traits(ev.timestamp)
        flush_events()
        if action == ROUTE:
            result.due_steps += router.route(session, row, traits, applied, ev, new_id, now)
        elif action in (FYI, PRIORITY):
            result.due_steps += router.notify_owner(session, row, action, now)
    flush_events()
    session.flush()
    return result


_SCORED_COLUMNS = ("hot_at", "red_hot_at", "last_routed_at", "hot_unalerted", "score", "behavior", "fit", "tier",
                   "breakdown", "traits", "event_count", "updated_at", "rules_hash")


def load_histories(session: Session, rows: dict[str, db.Lead]) -> dict[str, LeadHistory]:
    """The histories of all ``rows``' leads, by one query."""
    if not rows:
        return {}
    found: dict[str, tuple[list[Signal], list[TraitUpdate]]] = {lead_id: ([], []) for lead_id in rows}
    result = session.execute(
        select(db.Event.lead_id, db.Event.id, db.Event.type, db.Event.name, db.Event.timestamp, db.Event.traits,
               db.Event.message_id)
        .where(db.Event.lead_id.in_(list(rows))).order_by(db.Event.id)
    )
    for lead_id, rid, etype, name, ts, traits, mid in result:
        signals, updates = found[lead_id]
        if etype == "track" and name:
            signals.append(Signal(name, ts, mid))
        elif etype in ("identify", "alias") and traits:
            updates.append(TraitUpdate(ts, traits, rid))
    return {lead_id: LeadHistory(tuple(s), tuple(u)) for lead_id, (s, u) in found.items()}


def existing_keys(session: Session, events: list[Event]) -> set[tuple[str, str]]:
    """The (source, message_id) keys of ``events`` the database holds already."""
    by_source: dict[str, list[str]] = {}
    for ev in events:
        by_source.setdefault(ev.source, []).append(ev.message_id)
    keys: set[tuple[str, str]] = set()
    for source, mids in by_source.items():
        stmt = select(db.Event.message_id).where(db.Event.source == source, db.Event.message_id.in_(mids))
        keys.update((source, mid) for mid in session.scalars(stmt))
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
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(db.Event).on_conflict_do_nothing(index_elements=["source", "message_id"]).returning(db.Event.id)
    # render_nulls: one statement for all rows, not one per pattern of None values
    inserted = len(session.execute(stmt, values, execution_options={"render_nulls": True}).all())
    if inserted != len(values):
        raise DuplicateRace(f"{len(values) - inserted} of {len(values)} events were stored by another transaction")


class DuplicateRace(RuntimeError):
    """An event key was stored concurrently between the duplicate check and the insert."""


def _event_values(ev: Event, lead_id: str, now: datetime) -> dict[str, Any]:
    return {
        "source": ev.source, "message_id": ev.message_id, "lead_id": lead_id, "type": ev.type,
        "name": ev.name, "timestamp": ev.timestamp, "received_at": ev.received_at, "processed_at": now,
        "properties": dict(ev.properties), "traits": dict(ev.traits),
    }


def _store_episode(row: db.Lead, ep: EpisodeState) -> None:
    row.hot_at, row.red_hot_at = ep.hot_at, ep.red_hot_at
    row.last_routed_at, row.hot_unalerted = ep.last_routed_at, ep.hot_unalerted


def _persist(row: db.Lead, applied: Applied, ev: Event, rules: Rules, now: datetime) -> dict[str, Any]:
    """Update the lead row; the event's scored columns."""
    tr = applied.transition
    _store_episode(row, applied.lead.episode)
    at = max(now, ev.timestamp)
    current = applied.lead.history.score(rules.scoring, at)
    row.score, row.behavior, row.fit, row.tier = current.score, current.behavior, current.fit, current.tier
    row.breakdown = current.to_dict()
    row.traits = applied.lead.history.traits()
    row.event_count = (row.event_count or 0) + 1
    row.updated_at = now
    row.rules_hash = rules.hash
    if applied.contacted and row.contacted_at is None:
        row.contacted_at = ev.timestamp
    for key in _SCORED_COLUMNS:   # the same columns for every scored lead: a flush is one executemany
        flag_modified(row, key)
    effect = applied.outcome.action or ("stale hot" if applied.outcome.stale and tr.crossed_hot else None)
    return {"points": tr.after.behavior - tr.before.behavior, "score_after": tr.after.score,
            "tier_after": tr.after.tier, "effect": effect, "stale": applied.outcome.stale}


def dead_letter(session: Session, entry: Entry, error: str, now: datetime) -> None:
    mid = entry.payload.get("messageId") if isinstance(entry.payload, dict) else None
    session.add(db.DeadLetter(source=entry.source, message_id=mid if isinstance(mid, str) else None,
                              payload={"event": entry.payload, "received_at": entry.received_at},
                              error=error, created_at=now))
