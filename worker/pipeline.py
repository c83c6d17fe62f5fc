"""Processing a batch of queued events: one database transaction per batch.

The story of a batch: normalise each entry, drop duplicates, resolve identities
(merging anonymous leads into users), lock the leads touched (in id order, so
two workers never deadlock), apply each event with the pure core, persist the
scores, and route every lead that opened a hot episode. Alert steps due now are
returned so the caller can dispatch them right after the commit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, cast

from sqlalchemy import Connection, Table, bindparam, func, select, text, update
from sqlalchemy.orm import Session, defer
from sqlalchemy.orm.attributes import set_committed_value

from routing.config import Rules
from routing.events import Event, EventError, iso, normalize, parse_time
from routing.leads import (
    CONTACTED,
    PUBLIC_CONTACTED,
    Applied,
    apply_event,
    carried_traits,
    from_public,
    merge_leads,
    trait_cap_error,
)
from routing.leads import Lead as CoreLead
from routing.scoring import FYI, PRIORITY, ROUTE, Breakdown, EpisodeState, LeadHistory, Signal, TraitUpdate
from worker import db
from worker.stream import Entry

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


class HotLeadRouter(Protocol):
    """What :func:`process_batch` calls when a lead turns hot, is contacted, or needs its owner told
    (:class:`worker.assign.Router` in the service). Each call runs in the batch's transaction."""

    def route(self, session: Session, lead: db.Lead, traits: Mapping[str, Any], applied: Applied, ev: Event,
              event_id: int, now: datetime) -> list[int]:
        """Assign the lead's new hot episode to a rep; the ids of the alert steps it made due now."""
        ...

    def notify_owner(self, session: Session, lead: db.Lead, action: str, now: datetime) -> list[int]:
        """Tell the lead's current owner of an ``FYI`` or ``PRIORITY`` crossing; the alert steps due now."""
        ...

    def contacted(self, session: Session, lead: db.Lead, ev: Event, now: datetime) -> None:
        """The lead was contacted (``Lead Contacted``): its alert cadence stops."""
        ...


@dataclass
class BatchResult:
    processed: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    crossings: int = 0
    due_steps: list[int] = field(default_factory=list)

    def add(self, other: BatchResult) -> BatchResult:
        return BatchResult(self.processed + other.processed, self.duplicates + other.duplicates,
                           self.dead_lettered + other.dead_lettered, self.crossings + other.crossings,
                           self.due_steps + other.due_steps)


class BatchTooSlow(RuntimeError):
    """A batch ran past its deadline; its transaction is rolled back and the caller splits it."""


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
    from worker.settings import get_settings

    return get_settings().public_sources()


def load_history(session: Session, lead_id: str) -> LeadHistory:
    return load_histories(session, [lead_id])[0][lead_id]


def core_lead(row: db.Lead, history: LeadHistory) -> CoreLead:
    return CoreLead(row.id, history, _episode(row))


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


@dataclass(frozen=True)
class Plan:
    """One event's effect on its lead, worked out from the lead's state ``before`` and ``episode``."""

    before: LeadHistory
    episode: EpisodeState
    applied: Applied
    current: Breakdown              # the lead's score as of max(now, the event's timestamp)
    breakdown: dict[str, Any]       # ``current`` as stored
    traits: dict[str, Any]          # the lead's traits after the event


@dataclass
class Forecast:
    """A batch parsed, and scored from the leads' stored state, before its write transaction.

    Scoring is most of a batch's work. Done beforehand, on a snapshot, it does not hold the
    write lock (SQLite has one for the whole database), so two workers score at the same
    time. Under the lock :func:`process_batch` takes a plan only where the lead is exactly as
    the plan assumed (same stored events, same episode, the same history within the batch);
    anything else, such as an event another worker committed meanwhile or a merge, is scored
    again there, so a forecast can be stale but never wrong.
    """

    events: list[Event]
    rejected: list[tuple[Entry, str]]
    duplicates: int                                 # repeats of a key within the batch
    histories: dict[str, LeadHistory]               # as read, before any of the batch's events
    versions: dict[str, tuple[int, int]]            # lead → (count, largest id) of the stored events read
    plans: dict[int, Plan] = field(default_factory=dict)   # by position in ``events``


def parse_entries(entries: list[Entry], rules: Rules) -> tuple[list[Event], list[tuple[Entry, str]], int]:
    """Entries → events, the entries that are not events (with why), and how many repeat a key."""
    events: list[Event] = []
    rejected: list[tuple[Entry, str]] = []
    seen: set[tuple[str, str]] = set()
    duplicates = 0
    for entry in entries:
        try:
            ev = to_event(entry, rules)
        except EventError as exc:
            rejected.append((entry, str(exc)))
            continue
        if (ev.source, ev.message_id) in seen:
            duplicates += 1
            continue
        seen.add((ev.source, ev.message_id))
        events.append(ev)
    return events, rejected, duplicates


def forecast(conn: Session | Connection, entries: list[Entry], rules: Rules, now: datetime) -> Forecast:
    """Parse ``entries`` and score them against what ``conn`` reads; writes nothing."""
    events, rejected, duplicates = parse_entries(entries, rules)
    links = resolve_links(conn, events)
    ids = _touched(events, links)
    histories, versions = load_histories(conn, ids)
    stored = existing_keys(conn, [ev for ev in events if ev.lead_id is not None])
    fc = Forecast(events, rejected, duplicates, histories, versions)
    plan_batch(fc, links, load_episodes(conn, ids), stored, rules, now)
    return fc


def plan_batch(fc: Forecast, links: dict[str, str], episodes: dict[str, EpisodeState],
               stored: set[tuple[str, str]], rules: Rules, now: datetime) -> None:
    """Plan each event of ``fc`` from the state read, in order, into ``fc.plans``.

    A lead whose event may merge it with another, or that crosses, is planned no further in the
    batch: merges and routing happen under the write lock, and what follows them is scored there.
    """
    links = dict(links)
    public = public_sources()
    history, episode = dict(fc.histories), dict(episodes)
    done: set[str] = set()
    for pos, ev in enumerate(fc.events):
        if ev.lead_id is None:
            continue
        if (link := ev.link) is not None:
            anon_id, user_id = link
            if anon_id not in links:
                done.update(link)
                links[anon_id] = user_id
        lead_id = ev.user_id or links.get(ev.lead_id, ev.lead_id)
        if lead_id in done or lead_id not in history or (ev.source, ev.message_id) in stored or ev.type == "other":
            continue
        ev, why = admit(history[lead_id], ev, public)
        if why is not None:   # refused under the lock (process_batch)
            continue
        plan = make_plan(lead_id, history[lead_id], episode.get(lead_id, EpisodeState()), ev, pos, rules, now,
                         trusted=ev.source not in public)
        fc.plans[pos] = plan
        history[lead_id], episode[lead_id] = plan.applied.lead.history, plan.applied.lead.episode
        if plan.applied.outcome.action is not None or plan.applied.contacted:
            done.add(lead_id)


def make_plan(lead_id: str, before: LeadHistory, episode: EpisodeState, ev: Event, pos: int, rules: Rules,
              now: datetime, *, trusted: bool = True) -> Plan:
    applied = apply_event(CoreLead(lead_id, before, episode), ev, rules, now=now, seq=SEQ_BASE + pos,
                          trusted=trusted)
    after = applied.lead.history
    current = after.score(rules.scoring, max(now, ev.timestamp))
    return Plan(before, episode, applied, current, current.to_dict(), after.traits())


def admit(history: LeadHistory, ev: Event, public: frozenset[str]) -> tuple[Event, str | None]:
    """``ev`` as its source may apply it to a lead with ``history``, or why it is refused whole: a public
    source's ``Lead Contacted`` (it would stop a cadence), traits past the lead's cap. A public source's
    traits lose what it may not overwrite (:func:`routing.leads.from_public`)."""
    if ev.source in public:
        if ev.type == "track" and (ev.name or "").casefold() == CONTACTED.casefold():
            return ev, PUBLIC_CONTACTED
        ev, dropped = from_public(history, ev)
        if dropped:
            log.info("event %s from public source %s: left out traits it may not overwrite: %s",
                     ev.message_id, ev.source, ", ".join(dropped[:10]))
    return ev, trait_cap_error(history, ev)


def _touched(events: list[Event], links: dict[str, str]) -> set[str]:
    """The leads ``events`` write to, links resolved, and both sides of every link."""
    touched: set[str] = set()
    for ev in events:
        if ev.lead_id:
            touched.add(links.get(ev.lead_id, ev.lead_id) if not ev.user_id else ev.user_id)
        if link := ev.link:
            touched.update(link)
    return touched


def process_batch(session: Session, entries: list[Entry], rules: Rules, now: datetime, router: HotLeadRouter,
                  fc: Forecast | None = None, deadline: float | None = None) -> BatchResult:
    """Apply ``entries`` inside the caller's transaction. ``router`` turns hot episodes into assignments.

    ``fc``: the batch as forecast before the transaction (:func:`forecast`); without one it is planned
    here, under the lead locks (the fast lane's few events: a second transaction would cost more).
    A constant number of statements per batch in the common case: one query for the identity links, one
    bulk insert and one locking select for the leads, one query for the versions of their histories (and
    one for any history that changed since the forecast), one for the keys already stored, one to reserve
    event ids, one bulk insert of the scored events and one executemany of the leads' scored columns
    (:func:`write_scored`). Events are scored
    before they are written, so no row is updated after its insert. Pending events are written before
    anything that may read them (a merge, the router). Past ``deadline`` (``time.monotonic()``) it raises
    :class:`BatchTooSlow` between two events.
    """
    result = BatchResult()
    public = public_sources()
    if fc is None:
        events, rejected, duplicates = parse_entries(entries, rules)
    else:
        events, rejected, duplicates = fc.events, fc.rejected, fc.duplicates
    for entry, error in rejected:
        dead_letter(session, entry, error, now)
    result.dead_lettered, result.duplicates = len(rejected), duplicates

    links = resolve_links(session, events)
    rows = lock_leads(session, _touched(events, links), now)
    live = [(pos, ev) for pos, ev in enumerate(events) if ev.lead_id is not None]
    # under the lead locks: every history before any insert, and the keys stored already
    stored = existing_keys(session, [ev for _, ev in live])
    if fc is None:   # planned here, under the locks, from what nothing can change meanwhile
        fc = Forecast(events, rejected, duplicates, *load_histories(session, rows))
        plan_batch(fc, links, {lead_id: _episode(row) for lead_id, row in rows.items()}, stored, rules, now)
        histories = dict(fc.histories)
    else:            # the forecast's histories, where no event was stored for the lead since
        versions = event_versions(session, rows)
        histories = {lead_id: fc.histories[lead_id] for lead_id in rows
                     if lead_id in fc.histories and versions.get(lead_id) == fc.versions.get(lead_id)}
        histories.update(load_histories(session, [lead_id for lead_id in rows if lead_id not in histories])[0])
    ids = iter(reserve_event_ids(session, sum((ev.source, ev.message_id) not in stored for _, ev in live)))
    pending: list[dict[str, Any]] = []
    scored: dict[str, db.Lead] = {}

    def flush_events() -> None:
        if pending:
            insert_events(session, pending)
            pending.clear()

    def history(lead_id: str) -> LeadHistory:
        if lead_id not in histories:
            flush_events()
            histories[lead_id] = load_history(session, lead_id)
        return histories[lead_id]

    for pos, ev in live:
        if deadline is not None and time.monotonic() > deadline:
            raise BatchTooSlow(f"past its deadline at event {pos + 1} of {len(events)}")
        if (link := ev.link) is not None:
            anon_id, user_id = link
            if anon_id not in links:
                anon_row, user_row = rows[anon_id], rows[user_id]
                if anon_row.merged_into is None and anon_row.event_count > 0:
                    merged = merge_leads(core_lead(user_row, history(user_id)), core_lead(anon_row, history(anon_id)),
                                         rules.scoring)
                    flush_events()
                    merge_into(session, anon_row, user_row, now)
                    histories[user_id] = merged.history
                    histories[anon_id] = LeadHistory()
                    _store_episode(user_row, merged.episode)
                insert_ignore(session, db.IdentityLink,
                              {"anon_lead_id": anon_id, "user_lead_id": user_id, "linked_at": now}, ["anon_lead_id"])
                links[anon_id] = user_id
        event_lead = cast(str, ev.lead_id)   # a live event always has one
        lead_id = ev.user_id or links.get(event_lead, event_lead)
        row = rows.get(lead_id) or lock_leads(session, [lead_id], now)[lead_id]
        rows[lead_id] = row
        before = history(lead_id)   # read before the insert: the event must not count in its own "before"
        if (ev.source, ev.message_id) in stored:
            result.duplicates += 1
            continue
        ev, why = admit(before, ev, public)
        if why is not None:   # refused whole: listed, replayable, counted
            dead_letter(session, Entry("", ev.source, iso(ev.received_at) or "", dict(ev.raw)), why, now)
            result.dead_lettered += 1
            continue
        new_id = next(ids)
        values = _event_values(ev, lead_id, now)
        values["id"] = new_id
        pending.append(values)
        if ev.type == "other":
            values.update(points=0.0, score_after=0.0, tier_after="cold", effect=None, stale=False)
            result.processed += 1
            continue
        episode = _episode(row)
        plan = fc.plans.get(pos)
        if plan is None or plan.before is not before or plan.episode != episode:
            plan = make_plan(lead_id, before, episode, ev, pos, rules, now, trusted=ev.source not in public)
        applied = plan.applied
        histories[lead_id] = applied.lead.history
        values.update(_persist(row, plan, ev, rules, now))
        scored[lead_id] = row
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
    write_scored(session, scored.values())
    return result


# written by write_scored, not by the session's flush
_SCORED_COLUMNS = ("hot_at", "red_hot_at", "last_routed_at", "hot_unalerted", "score", "behavior", "fit", "tier",
                   "breakdown", "traits", "event_count", "updated_at", "rules_hash")


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


def _event_values(ev: Event, lead_id: str, now: datetime) -> dict[str, Any]:
    return {
        "source": ev.source, "message_id": ev.message_id, "lead_id": lead_id, "type": ev.type,
        "name": ev.name, "timestamp": ev.timestamp, "received_at": ev.received_at, "processed_at": now,
        "properties": dict(ev.properties), "traits": carried_traits(ev),
    }


def _store_episode(row: db.Lead, ep: EpisodeState) -> None:
    row.hot_at, row.red_hot_at = ep.hot_at, ep.red_hot_at
    row.last_routed_at, row.hot_unalerted = ep.last_routed_at, ep.hot_unalerted


def _episode(row: db.Lead) -> EpisodeState:
    return EpisodeState(row.hot_at, row.red_hot_at, row.last_routed_at, bool(row.hot_unalerted))


def _persist(row: db.Lead, plan: Plan, ev: Event, rules: Rules, now: datetime) -> dict[str, Any]:
    """Set the lead row's scored columns, as stored values (:func:`write_scored` stores them at the end
    of the batch, for every lead at once); the event's scored columns."""
    applied = plan.applied
    tr = applied.transition
    ep, current = applied.lead.episode, plan.current
    scored = {"hot_at": ep.hot_at, "red_hot_at": ep.red_hot_at, "last_routed_at": ep.last_routed_at,
              "hot_unalerted": ep.hot_unalerted, "score": current.score, "behavior": current.behavior,
              "fit": current.fit, "tier": current.tier, "breakdown": plan.breakdown, "traits": plan.traits,
              "event_count": (row.event_count or 0) + 1, "updated_at": now, "rules_hash": rules.hash}
    for key, value in scored.items():
        set_committed_value(row, key, value)
    if applied.contacted and row.contacted_at is None:
        row.contacted_at = ev.timestamp
    stale_hot = applied.outcome.stale and applied.arrival.crossed_hot
    effect = applied.outcome.action or ("stale hot" if stale_hot else None)
    return {"points": tr.after.behavior - tr.before.behavior, "score_after": tr.after.score,
            "tier_after": tr.after.tier, "effect": effect, "stale": applied.outcome.stale}


def write_scored(session: Session, rows: Iterable[db.Lead]) -> None:
    """Store the scored columns of ``rows`` as they stand now: one executemany UPDATE."""
    params = [{"lead_id": row.id, **{key: getattr(row, key) for key in _SCORED_COLUMNS}} for row in rows]
    if params:
        leads = cast(Table, db.Lead.__table__)
        stmt = (update(leads).where(leads.c.id == bindparam("lead_id"))
                .values({key: bindparam(key) for key in _SCORED_COLUMNS}))
        session.execute(stmt, params)


def dead_letter(session: Session, entry: Entry, error: str, now: datetime) -> None:
    mid = entry.payload.get("messageId") if isinstance(entry.payload, dict) else None
    session.add(db.DeadLetter(source=entry.source, message_id=mid if isinstance(mid, str) else None,
                              payload={"event": entry.payload, "received_at": entry.received_at},
                              error=error, created_at=now))
