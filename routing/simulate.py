"""Replay an event stream through the live scoring and routing core, with no Redis or database.

During the replay the clock is each event's own timestamp; nobody claims.
Scores in the result are evaluated at ``as_of`` (default: the latest event timestamp).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from routing.config import Rules
from routing.events import EventError, iso, normalize
from routing.leads import Lead, apply_event, merge_leads, trait_cap_error
from routing.ledger import RoutingLedger
from routing.scoring import ROUTE
from routing.selection import Decision, choose_rep, lead_domain

CLI_SOURCE = "default"


@dataclass
class LeadResult:
    lead_id: str
    score: float
    behavior: float
    fit: float
    tier: str
    hot_at: datetime | None
    red_hot_at: datetime | None
    rep: str | None
    route: str | None
    reasons: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "lead_id": self.lead_id,
            "score": self.score,
            "behavior": self.behavior,
            "fit": self.fit,
            "tier": self.tier,
            "hot_at": iso(self.hot_at),
            "red_hot_at": iso(self.red_hot_at),
            "rep": self.rep,
            "route": self.route,
            "reasons": self.reasons,
        }


@dataclass
class Replay:
    leads: list[LeadResult]
    summary: dict[str, Any]
    errors: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"leads": [r.to_json() for r in self.leads], "summary": self.summary, "errors": self.errors}

    def lead(self, lead_id: str) -> LeadResult | None:
        return next((r for r in self.leads if r.lead_id == lead_id), None)


def decision_reasons(decision: Decision) -> list[str]:
    lines = [f"{c.rep_id}: {c.status}, {c.reason}" if c.reason else f"{c.rep_id}: {c.status}"
             for c in decision.candidates]
    return list(decision.notes) + lines


def simulate(raw_events: Iterable[Any], rules: Rules, *, as_of: datetime | None = None) -> Replay:
    leads: dict[str, Lead] = {}
    links: dict[str, str] = {}                 # anonymous lead id -> user lead id
    seen: set[tuple[str, str]] = set()
    routed: dict[str, Decision] = {}           # lead id -> decision at its first routing
    ledger = RoutingLedger()
    errors: list[dict[str, Any]] = []
    latest: datetime | None = None
    seq = 0

    for index, raw in enumerate(raw_events):
        try:
            ts_hint = raw.get("timestamp") if isinstance(raw, Mapping) else None
            received = _received(raw, ts_hint)
            event = normalize(raw, source=CLI_SOURCE, received_at=received, pages=rules.pages)
        except EventError as exc:
            errors.append({"index": index, "field": exc.field, "error": exc.message})
            continue
        key = (event.source, event.message_id)
        if key in seen:
            continue
        seen.add(key)
        latest = event.timestamp if latest is None else max(latest, event.timestamp)
        if event.lead_id is None:
            continue
        seq += 1
        link = event.link
        if link is not None:
            anon_id, user_id = link
            if anon_id in leads and anon_id not in links:
                leads[user_id] = merge_leads(leads.get(user_id, Lead(user_id)), leads.pop(anon_id), rules.scoring)
                if anon_id in routed and user_id not in routed:
                    routed[user_id] = routed.pop(anon_id)
            links[anon_id] = user_id
        lead_id = links.get(event.lead_id, event.lead_id) if event.user_id is None else event.user_id
        if event.type == "other":
            continue
        lead = leads.get(lead_id, Lead(lead_id))
        if (why := trait_cap_error(lead.history, event)) is not None:
            errors.append({"index": index, "field": "traits", "error": why})
            continue
        applied = apply_event(lead, event, rules, now=event.timestamp, seq=seq)
        leads[lead_id] = applied.lead
        if applied.contacted:
            ledger.contacted(lead_id, event.timestamp)
        if applied.outcome.action == ROUTE:
            traits = applied.routing_traits()
            decision = choose_rep(traits, rules, ledger.state(rules, event.timestamp), event.timestamp)
            if decision.rep_id is not None:
                ledger.record(lead_id, decision.rep_id, decision.team_id,
                              lead_domain(traits, rules.free_mail_domains), event.timestamp)
            routed.setdefault(lead_id, decision)

    at = as_of or latest
    results = []
    for lead_id in sorted(leads):
        lead = leads[lead_id]
        b = lead.history.score(rules.scoring, at) if at is not None else None
        chosen = routed.get(lead_id)
        results.append(LeadResult(
            lead_id=lead_id,
            score=float(b.score) if b else 0.0,
            behavior=float(b.behavior) if b else 0.0,
            fit=float(b.fit) if b else 0.0,
            tier=b.tier if b else "cold",
            hot_at=lead.episode.hot_at,
            red_hot_at=lead.episode.red_hot_at,
            rep=chosen.rep_id if chosen else None,
            route=chosen.route if chosen else None,
            reasons=decision_reasons(chosen) if chosen else [],
        ))
    return Replay(results, summarize(results, at), errors)


def _received(raw: Any, ts_hint: Any) -> datetime:
    """In a replay an event is received at its own (skew-free) time: its ``timestamp`` or, failing that,
    its ``originalTimestamp``, as sent (``sentAt``, when it says when)."""
    from routing.events import UTC, parse_time

    if isinstance(raw, Mapping):
        for key in ("receivedAt", "timestamp", "originalTimestamp", "sentAt"):
            value = raw.get(key)
            if isinstance(value, str):
                try:
                    ts = parse_time(value, key)
                except EventError:
                    continue
                if key in ("timestamp", "originalTimestamp") and isinstance(raw.get("sentAt"), str):
                    # no clock skew in a replay: received when sent
                    try:
                        return parse_time(raw["sentAt"], "sentAt")
                    except EventError:
                        pass
                return ts
    return datetime(1970, 1, 1, tzinfo=UTC)


def summarize(results: list[LeadResult], at: datetime | None) -> dict[str, Any]:
    tiers = Counter(r.tier for r in results)
    routes = Counter(r.route for r in results if r.route)
    per_rep = Counter(r.rep for r in results if r.rep)
    routed_total = sum(per_rep.values())
    return {
        "as_of": iso(at),
        "leads": len(results),
        "tiers": {t: tiers.get(t, 0) for t in ("cold", "warm", "hot", "red_hot")},
        "hot_crossings": sum(1 for r in results if r.hot_at is not None),
        "red_hot_crossings": sum(1 for r in results if r.red_hot_at is not None),
        "routed": routed_total,
        "per_rep": {rep: {"leads": n, "share": round(n / routed_total, 4) if routed_total else 0.0}
                    for rep, n in sorted(per_rep.items())},
        "after_hours": routes.get("queued", 0),
        "on_call": routes.get("on_call", 0),
        "unrouted": routes.get("unrouted", 0),
    }


def compare(before: Replay, after: Replay) -> dict[str, Any]:
    """What changes when the same events are replayed under other rules.

    ``changed``: every lead whose rep or tier differs, with both sides (None where a
    lead is absent from one replay). ``per_rep``: each rep's routed leads and share
    on both sides. Counts for the other outcomes sit beside them as ``[before, after]``.
    """
    changed = []
    for lead_id in sorted({r.lead_id for r in before.leads} | {r.lead_id for r in after.leads}):
        sides = (before.lead(lead_id), after.lead(lead_id))
        rep, tier = _pair(sides, "rep"), _pair(sides, "tier")
        if rep[0] != rep[1] or tier[0] != tier[1]:
            changed.append({"lead_id": lead_id, "rep": rep, "tier": tier, "score": _pair(sides, "score"),
                            "route": _pair(sides, "route")})
    a, b = before.summary["per_rep"], after.summary["per_rep"]
    per_rep = {}
    for rep_id in sorted(set(a) | set(b)):
        was, now = a.get(rep_id, {"leads": 0, "share": 0.0}), b.get(rep_id, {"leads": 0, "share": 0.0})
        per_rep[rep_id] = {"before": was["leads"], "after": now["leads"], "change": now["leads"] - was["leads"],
                           "share_before": was["share"], "share_after": now["share"],
                           "share_change": round(now["share"] - was["share"], 4)}
    keys = ("leads", "routed", "hot_crossings", "red_hot_crossings", "after_hours", "on_call", "unrouted")
    return {"changed": changed, "per_rep": per_rep,
            **{k: [before.summary[k], after.summary[k]] for k in keys},
            "tiers": {t: [before.summary["tiers"][t], after.summary["tiers"][t]] for t in before.summary["tiers"]}}


def _pair(sides: tuple[LeadResult | None, LeadResult | None], attr: str) -> list[Any]:
    return [getattr(r, attr) if r is not None else None for r in sides]
