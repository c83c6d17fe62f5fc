"""One event applied to one lead, pure. Live processing and ``simulate`` both call this."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from routing.config import Rules
from routing.events import Event
from routing.scoring import (
    EpisodeState,
    LeadHistory,
    Outcome,
    Signal,
    TraitUpdate,
    Transition,
    decide,
    transition,
)

CONTACTED = "Lead Contacted"


@dataclass(frozen=True)
class Lead:
    lead_id: str
    history: LeadHistory = LeadHistory()
    episode: EpisodeState = EpisodeState()


@dataclass(frozen=True)
class Applied:
    lead: Lead
    transition: Transition
    outcome: Outcome
    contacted: bool


def add_to_history(history: LeadHistory, event: Event, seq: int) -> LeadHistory:
    if event.type == "track" and event.name:
        history = history.with_signal(Signal(event.name, event.timestamp, event.message_id))
    if event.traits and event.type in ("identify", "alias", "track"):
        # track calls may carry traits too (Segment's context.traits is not used for scoring)
        if event.type != "track":
            history = history.with_traits(TraitUpdate(event.timestamp, event.traits, seq))
    return history


def apply_event(lead: Lead, event: Event, rules: Rules, *, now: datetime, seq: int) -> Applied:
    """Score ``lead`` at the event's timestamp without and with ``event`` and decide what it opens."""
    after = add_to_history(lead.history, event, seq)
    tr = transition(lead.history, after, rules.scoring, event.timestamp)
    latest = _latest(lead.history)
    if latest is not None and latest > event.timestamp and not (tr.crossed_hot or tr.crossed_red_hot):
        # A late event (say an identify overtaken by a demo request in the fast lane) may not cross at
        # its own instant but still lift the lead over the threshold as of the newest event: that counts.
        late = transition(lead.history, after, rules.scoring, latest)
        if late.crossed_hot or late.crossed_red_hot:
            tr = late
    outcome = decide(
        lead.episode,
        tr,
        event_at=event.timestamp,
        now=now,
        max_event_age=rules.alerts.max_event_age,
        rehot_after=timedelta(days=rules.scoring.rehot_after_days),
    )
    contacted = event.type == "track" and (event.name or "").casefold() == CONTACTED.casefold()
    return Applied(Lead(lead.lead_id, after, outcome.state), tr, outcome, contacted)


def _latest(history: LeadHistory) -> datetime | None:
    stamps = [s.timestamp for s in history.signals] + [u.timestamp for u in history.trait_updates]
    return max(stamps) if stamps else None


def merge_leads(user: Lead, anon: Lead) -> Lead:
    """The anonymous history joins the user's lead; the user's episode survives."""
    ep_u, ep_a = user.episode, anon.episode
    first = [t for t in (ep_u.hot_at, ep_a.hot_at) if t is not None]
    first_red = [t for t in (ep_u.red_hot_at, ep_a.red_hot_at) if t is not None]
    episode = replace(
        ep_u,
        hot_at=min(first) if first else None,
        red_hot_at=min(first_red) if first_red else None,
        last_routed_at=ep_u.last_routed_at or ep_a.last_routed_at,
    )
    return Lead(user.lead_id, user.history.merged(anon.history), episode)

