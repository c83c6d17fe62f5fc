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
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, cast

from sqlalchemy import Connection
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from routing.config import Rules
from routing.events import Event, EventError, iso
from routing.leads import (
    CONTACTED,
    PUBLIC_CONTACTED,
    Applied,
    apply_event,
    from_public,
    merge_leads,
    trait_cap_error,
)
from routing.leads import Lead as CoreLead
from routing.scoring import FYI, PRIORITY, ROUTE, Breakdown, EpisodeState, LeadHistory
from worker.adapters import db
from worker.adapters.retry import BatchTooSlow
from worker.adapters.stream import Entry
from worker.services.lead_store import (
    SEQ_BASE,
    core_lead,
    dead_letter,
    episode_state,
    event_values,
    event_versions,
    existing_keys,
    insert_events,
    insert_ignore,
    load_episodes,
    load_histories,
    load_history,
    lock_leads,
    merge_into,
    public_sources,
    reserve_event_ids,
    resolve_links,
    store_episode,
    to_event,
    write_scored,
)

if TYPE_CHECKING:
    pass

log = logging.getLogger("leadrouter.pipeline")


class HotLeadRouter(Protocol):
    """What :func:`process_batch` calls when a lead turns hot, is contacted, or needs its owner told
    (:class:`worker.services.assign.Router` in the service). Each call runs in the batch's transaction."""

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
        plan_batch(fc, links, {lead_id: episode_state(row) for lead_id, row in rows.items()}, stored, rules, now)
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
                    store_episode(user_row, merged.episode)
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
        values = event_values(ev, lead_id, now)
        values["id"] = new_id
        pending.append(values)
        if ev.type == "other":
            values.update(points=0.0, score_after=0.0, tier_after="cold", effect=None, stale=False)
            result.processed += 1
            continue
        episode = episode_state(row)
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
        traits = applied.routing_traits()
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
