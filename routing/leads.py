"""One event applied to one lead, pure. Live processing and ``simulate`` both call this."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from routing.config import Rules, Scoring
from routing.events import Event
from routing.scoring import (
    EpisodeState,
    LeadHistory,
    Outcome,
    Signal,
    TraitUpdate,
    Transition,
    decide,
    deep_merge,
    first_crossings,
    transition,
)

CONTACTED = "Lead Contacted"
# What one lead's traits may grow to: past either, an update that would add to them is refused whole.
MAX_TRAIT_KEYS = 200            # keys at every level of nesting
MAX_TRAIT_BYTES = 64 * 1024     # as compact JSON
TRAITS_OVER_CAP = "traits over the lead's cap"
# Contact traits: once a lead has one, a public source (a browser key anyone can read) cannot change it.
CONTACT_TRAITS = ("email", "phone")
PUBLIC_CONTACTED = "a public source may not send Lead Contacted"


@dataclass(frozen=True)
class Lead:
    lead_id: str
    history: LeadHistory = LeadHistory()
    episode: EpisodeState = EpisodeState()


@dataclass(frozen=True)
class Applied:
    lead: Lead
    transition: Transition      # the score at the event's own instant without and with it: what the event scored
    arrival: Transition         # the score as of the lead's newest event without and with it: what it opened
    outcome: Outcome
    contacted: bool

    def routing_traits(self) -> dict[str, Any]:
        """The traits a route reads: the lead's as of its newest event, where the episode was decided
        (SPEC §3). Not as of the event that opened it: a late event can turn the lead hot only because
        an identify stamped after it is counted, and routing without that identify's traits would
        pick a team the lead does not belong to."""
        return self.lead.history.traits()


def from_public(history: LeadHistory, event: Event) -> tuple[Event, list[str]]:
    """``event`` as a public source may apply it: without the traits it may not overwrite (a contact
    trait the lead has, any trait a trusted source set); and the paths it left out. A public source
    holds a key that every visitor of the site can read: it may add to a lead, not rewrite what a CRM
    or the lead's own form said."""
    if not event.traits and not event.attribution:
        return event, []
    protected: set[str] = set()
    for u in history.trait_updates:
        if u.trusted:
            protected.update(_paths(u.traits))
    current = history.traits()
    protected.update(c for c in CONTACT_TRAITS if current.get(c) not in (None, ""))
    kept, dropped = _without(event.traits, protected, "")
    attribution, more = _without(event.attribution, protected, "")
    dropped += more
    return (replace(event, traits=kept, attribution=attribution) if dropped else event), dropped


def _paths(traits: Mapping[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in traits.items():
        path = prefix + key
        if isinstance(value, Mapping) and value:
            out |= _paths(value, path + ".")
        else:
            out.add(path)
    return out


def _without(traits: Mapping[str, Any], protected: set[str], prefix: str) -> tuple[dict[str, Any], list[str]]:
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in traits.items():
        path = prefix + key
        if path in protected:
            dropped.append(path)
        elif isinstance(value, Mapping) and value:
            inner, gone = _without(value, protected, path + ".")
            dropped += gone
            if inner:
                kept[key] = inner
        else:
            kept[key] = value
    return kept, dropped


def carried_traits(event: Event) -> dict[str, Any]:
    """What ``event`` says about the lead's traits: an identify's (or alias's) traits, and any event's
    attribution (``context.campaign``, referrer, page), which rules read as ``context.*``."""
    carried = dict(event.traits) if event.type in ("identify", "alias") else {}
    if event.attribution:
        carried = deep_merge(carried, event.attribution)
    return carried


def add_to_history(history: LeadHistory, event: Event, seq: int, trusted: bool = True) -> LeadHistory:
    if event.type == "track" and event.name:
        history = history.with_signal(Signal(event.name, event.timestamp, event.message_id, seq))
    carried = carried_traits(event)
    if carried:
        history = history.with_traits(TraitUpdate(event.timestamp, carried, seq, trusted))
    return history


def trait_cap_error(history: LeadHistory, event: Event) -> str | None:
    """Why ``event``'s traits may not join ``history``, if they may not: the lead's traits with them would
    pass ``MAX_TRAIT_KEYS`` or ``MAX_TRAIT_BYTES``. Counted on the traits with the update merged in
    last, whatever its place on the timeline: the keys are the same either way."""
    carried = carried_traits(event)
    if not carried:
        return None
    merged = deep_merge(history.traits(), carried)
    keys = _count_keys(merged)
    if keys > MAX_TRAIT_KEYS:
        return f"{TRAITS_OVER_CAP}: {keys} keys with this update (at most {MAX_TRAIT_KEYS})"
    size = len(json.dumps(merged, separators=(",", ":"), ensure_ascii=False, default=str).encode())
    if size > MAX_TRAIT_BYTES:
        return f"{TRAITS_OVER_CAP}: {size} bytes with this update (at most {MAX_TRAIT_BYTES})"
    return None


def _count_keys(traits: Mapping[str, Any]) -> int:
    return sum(1 + (_count_keys(v) if isinstance(v, Mapping) else 0) for v in traits.values())


def apply_event(lead: Lead, event: Event, rules: Rules, *, now: datetime, seq: int, trusted: bool = True) -> Applied:
    """Score ``lead`` as of its newest event without and with ``event``, and decide what the arrival opens.

    ``seq`` is the event's place in arrival order (it breaks timestamp ties on the timeline). The
    transition is judged as of the lead's newest event, this one included, so an event that arrives
    late counts where the lead stands now. ``hot_at`` and ``red_hot_at`` follow the timeline: an
    event newer than every other can only add a first crossing at its own instant; any other
    arrival re-reads the timeline, where a crossing may move earlier, later or away.
    """
    after = add_to_history(lead.history, event, seq, trusted)
    latest = _latest(lead.history)
    in_order = latest is None or event.timestamp > latest
    own = transition(lead.history, after, rules.scoring, event.timestamp)
    tr = own if in_order or latest is None else transition(lead.history, after, rules.scoring, latest)
    # in order, ``decide`` adds a first crossing at the event's own instant; otherwise the timeline is re-read
    crossings = None if in_order else first_crossings(after, rules.scoring)
    outcome = decide(
        lead.episode,
        tr,
        event_at=event.timestamp,
        now=now,
        max_event_age=rules.alerts.max_event_age,
        rehot_after=timedelta(days=rules.scoring.rehot_after_days),
        crossings=crossings,
    )
    contacted = event.type == "track" and (event.name or "").casefold() == CONTACTED.casefold()
    return Applied(Lead(lead.lead_id, after, outcome.state), own, tr, outcome, contacted)


def _latest(history: LeadHistory) -> datetime | None:
    stamps = [s.timestamp for s in history.signals] + [u.timestamp for u in history.trait_updates]
    return max(stamps) if stamps else None


def merge_leads(user: Lead, anon: Lead, scoring: Scoring) -> Lead:
    """The anonymous history joins the user's lead and its timeline is read again; the user's episode survives."""
    history = user.history.merged(anon.history)
    hot_at, red_hot_at = first_crossings(history, scoring)
    episode = replace(
        user.episode,
        hot_at=hot_at,
        red_hot_at=red_hot_at,
        last_routed_at=user.episode.last_routed_at or anon.episode.last_routed_at,
    )
    return Lead(user.lead_id, history, episode)
