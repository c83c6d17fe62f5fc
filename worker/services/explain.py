"""``leadrouter explain``: a lead's whole story from the database.

The JSON carries the fields of a ``simulate`` lead (live values) so the two can be
compared side by side, plus ``events``, ``decision``, ``alerts`` and the rest.
``rep`` and ``reasons`` are those of the first routing decision, as in ``simulate``;
``decision`` is the latest one (the one in force).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from routing.config import Rules
from routing.events import iso
from routing.kinds import describe_delivery
from worker.adapters import db
from worker.adapters.channels.base import mask_recipient
from worker.services.operator import ERASED, resolve_lead
from worker.services.outbound import receiver_name
from worker.services.tables import table


def explain(session: Session, lead_id: str, rules: Rules | None = None, now: datetime | None = None
            ) -> dict[str, Any] | None:
    lead = resolve_lead(session, lead_id)
    if lead is None:
        return None
    now = now or db.now_utc()
    score, behavior, fit, tier = lead.score, lead.behavior, lead.fit, lead.tier
    if rules is not None and lead.forgotten_at is None and lead.event_count:
        # as of now, with decay: what the same core would say at this instant
        from worker.services.lead_store import load_history

        b = load_history(session, lead.id).score(rules.scoring, now)
        score, behavior, fit, tier = float(b.score), float(b.behavior), float(b.fit), b.tier

    events = list(session.scalars(select(db.Event).where(db.Event.lead_id == lead.id)
                                  .order_by(db.Event.timestamp, db.Event.id)))
    episodes = list(session.scalars(select(db.HotEpisode).where(db.HotEpisode.lead_id == lead.id)
                                    .order_by(db.HotEpisode.id)))
    assignments = list(session.scalars(select(db.Assignment).where(db.Assignment.lead_id == lead.id)
                                       .order_by(db.Assignment.id)))
    steps = list(session.scalars(select(db.AlertStep).where(db.AlertStep.lead_id == lead.id)
                                 .order_by(db.AlertStep.assignment_id, db.AlertStep.step, db.AlertStep.id)))
    deliveries: dict[int | None, list[db.Delivery]] = {}
    for d in session.scalars(select(db.Delivery).where(db.Delivery.lead_id == lead.id).order_by(db.Delivery.id)):
        deliveries.setdefault(d.step_id, []).append(d)
    traces = list(session.scalars(select(db.Trace).where(db.Trace.lead_id == lead.id)
                                  .order_by(db.Trace.at, db.Trace.id)))
    outbound = list(session.scalars(select(db.OutboundWebhook).where(db.OutboundWebhook.lead_id == lead.id)
                                    .order_by(db.OutboundWebhook.id)))
    rep_of = {a.id: a.rep_id for a in assignments}
    first = next((a for a in assignments if a.route != "manual"), assignments[0] if assignments else None)
    current = next((a for a in reversed(assignments) if a.current), assignments[-1] if assignments else None)

    return {
        "lead_id": lead.id,
        "requested_id": lead_id if lead_id != lead.id else None,
        "score": score,
        "behavior": behavior,
        "fit": fit,
        "tier": tier,
        "hot_at": iso(lead.hot_at),
        "red_hot_at": iso(lead.red_hot_at),
        "rep": first.rep_id if first else None,
        "route": first.route if first else None,
        "reasons": _reasons(first.reasons) if first else [],
        "owner": lead.owner,
        "traits": lead.traits or {},
        "breakdown": lead.breakdown or {},
        "event_count": lead.event_count,
        "contacted_at": iso(lead.contacted_at),
        "closed_at": iso(lead.closed_at),
        "forgotten_at": iso(lead.forgotten_at),
        "merged": sorted(session.scalars(select(db.Lead.id).where(db.Lead.merged_into == lead.id))),
        "events": [{
            "id": e.id, "timestamp": iso(e.timestamp), "received_at": iso(e.received_at), "source": e.source,
            "message_id": e.message_id, "type": e.type, "name": e.name, "points": e.points,
            "score_after": e.score_after, "tier_after": e.tier_after, "effect": e.effect, "stale": e.stale,
        } for e in events],
        "episodes": [{
            "id": ep.id, "opened_at": iso(ep.opened_at), "event_id": ep.event_id,
            "event_received_at": iso(ep.event_received_at), "red_hot": ep.red_hot, "status": ep.status,
            "closed_at": iso(ep.closed_at), "reassignments": ep.reassignments, "rules_hash": ep.rules_hash,
        } for ep in episodes],
        "decision": _assignment(current) if current else None,
        "assignments": [_assignment(a) for a in assignments],
        "alerts": [{
            "id": s.id, "assignment_id": s.assignment_id, "rep": rep_of.get(s.assignment_id or 0), "step": s.step,
            "kind": s.kind, "due_at": iso(s.due_at), "status": s.status, "fired_at": iso(s.fired_at), "note": s.note,
            "deliveries": [{
                "id": d.id, "recipient": d.recipient, "channel": d.channel, "to": d.to if d.to == ERASED else mask_recipient(d.to),
                "status": d.status, "sent_at": iso(d.sent_at), "error": d.error, "error_kind": d.error_kind,
                "settled_by": d.settled_by, "resent_at": iso(d.resent_at),
                "outcome": describe_delivery(d.status, d.settled_by, d.resent_at is not None, d.error),
            } for d in deliveries.get(s.id, [])],
        } for s in steps],
        "claims": [{"assignment_id": a.id, "rep": a.rep_id, "claimed_by": a.claimed_by, "claimed_at": iso(a.claimed_at)}
                   for a in assignments if a.claimed_at is not None],
        "trace": [{"at": iso(t.at), "kind": t.kind, "actor": t.actor, "detail": t.detail} for t in traces],
        "outbound": [{"id": o.event_id, "event": o.event, "receiver": receiver_name(o.receiver), "status": o.status,
                      "attempts": o.attempts, "created_at": iso(o.created_at), "delivered_at": iso(o.delivered_at),
                      "error": o.last_error} for o in outbound],
    }


def _assignment(a: db.Assignment) -> dict[str, Any]:
    r = a.reasons or {}
    return {
        "assignment_id": a.id, "episode_id": a.episode_id, "rep": a.rep_id, "team": a.team_id, "route": a.route,
        "created_at": iso(a.created_at), "start_at": iso(a.start_at), "actor": a.actor, "current": a.current,
        "ended_at": iso(a.ended_at), "end_reason": a.end_reason, "claimed_at": iso(a.claimed_at),
        "claimed_by": a.claimed_by, "rules_hash": a.rules_hash,
        "candidates": list(r.get("candidates") or []), "notes": list(r.get("notes") or []),
    }


def _reasons(record: dict[str, Any]) -> list[str]:
    """The decision record in the words ``simulate`` uses."""
    lines = [str(n) for n in record.get("notes") or []]
    for c in record.get("candidates") or []:
        lines.append(f"{c.get('rep')}: {c.get('status')}, {c['reason']}" if c.get("reason")
                     else f"{c.get('rep')}: {c.get('status')}")
    return lines


def _n(x: Any) -> str:
    return f"{x:g}" if isinstance(x, (int, float)) else ("-" if x is None else str(x))


def render_explain(data: dict[str, Any]) -> str:
    out = [f"lead {data['lead_id']}" + (f" (asked for {data['requested_id']}, merged into it)"
                                         if data["requested_id"] else "")]
    facts = [("score", f"{_n(data['score'])} (behavior {_n(data['behavior'])}, fit {_n(data['fit'])})"),
             ("tier", data["tier"]), ("hot at", data["hot_at"] or "-"), ("red-hot at", data["red_hot_at"] or "-"),
             ("owner", data["owner"] or "-"), ("events", data["event_count"])]
    for key, label in (("contacted_at", "contacted"), ("closed_at", "closed"), ("forgotten_at", "forgotten")):
        if data[key]:
            facts.append((label, data[key]))
    if data["merged"]:
        facts.append(("merged from", ", ".join(data["merged"])))
    width = max(len(k) for k, _ in facts)
    out += [f"  {k.ljust(width)}  {v}" for k, v in facts]

    out += ["", "events"]
    if data["events"]:
        out.append(table([(e["timestamp"], e["type"], e["name"] or "-", _signed(e["points"]), _n(e["score_after"]),
                           e["tier_after"], (e["effect"] or "") + (" (stale)" if e["stale"] else ""))
                          for e in data["events"]], ["at", "type", "event", "points", "score", "tier", "effect"]))
    else:
        out.append("  none")

    if data["episodes"]:
        out += ["", "hot episodes (crossings)"]
        out.append(table([(ep["id"], ep["opened_at"], ep["event_id"] or "-", ep["event_received_at"] or "-",
                           "yes" if ep["red_hot"] else "", ep["status"], ep["reassignments"])
                          for ep in data["episodes"]],
                         ["#", "opened", "event", "event received", "red-hot", "status", "reassigned"]))

    for a in data["assignments"]:
        out += ["", f"routing decision #{a['assignment_id']}: {a['route']} -> {a['rep'] or 'nobody'}"
                + (f" (team {a['team']})" if a["team"] else "") + f" at {a['created_at']}"
                + (f", alerts from {a['start_at']}" if a["start_at"] != a["created_at"] else "")
                + (f", by {a['actor']}" if a["actor"] else "")]
        if a["candidates"]:
            out.append(table([(c.get("rep"), c.get("status"), c.get("reason") or "") for c in a["candidates"]],
                             ["candidate", "status", "why"]))
        out += [f"  note: {n}" for n in a["notes"]]
        if a["claimed_at"]:
            out.append(f"  claimed by {a['claimed_by']} at {a['claimed_at']}")
        if a["ended_at"]:
            out.append(f"  ended {a['ended_at']}: {a['end_reason'] or ''}")

    out += ["", "alerts"]
    if data["alerts"]:
        rows = []
        for s in data["alerts"]:
            rows.append((s["id"], s["rep"] or "-", s["step"], s["kind"], s["due_at"], s["status"], s["fired_at"] or "-",
                         s["note"] or ""))
            for d in s["deliveries"]:
                rows.append(("", f"  {d['recipient']}", d["channel"], d["to"], d["sent_at"] or "-", d["status"],
                             "", d["outcome"]))
        out.append(table(rows, ["step", "rep", "#", "kind", "due", "status", "fired", "note"]))
    else:
        out.append("  none")

    if data["outbound"]:
        out += ["", "outbound"]
        out.append(table([(o["created_at"], o["event"], o["receiver"], o["status"], o["attempts"], o["error"] or "")
                          for o in data["outbound"]], ["at", "event", "receiver", "status", "attempts", "error"]))

    if data["trace"]:
        out += ["", "history"]
        out.append(table([(t["at"], t["kind"], t["actor"] or "-",
                           ", ".join(f"{k}={v}" for k, v in (t["detail"] or {}).items()))
                          for t in data["trace"]], ["at", "what", "who", "detail"]))
    return "\n".join(out)


def _signed(x: Any) -> str:
    return f"{x:+g}" if isinstance(x, (int, float)) else "-"
