"""What a delivery says: the lead as an alert shows it, its claim link, and each delivery's message.

Messages are composed after the commit that wrote their delivery rows (rendering needs no lock), one
text per step, message kind and claiming rep however many channels carry it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select, union_all
from sqlalchemy.orm import Session

from routing.cadence import validity_seconds
from routing.config import Rules
from routing.kinds import CLAIMABLE, EXPIRING, DeliveryStatus
from routing.messages import AlertText, LeadView, render_alert
from routing.scoring import condition_holds, describe_condition
from worker.adapters import db
from worker.adapters.channels import OutboundMessage
from worker.adapters.db import now_utc
from worker.adapters.settings import Settings
from worker.adapters.tokens import ClaimToken, sign

if TYPE_CHECKING:
    from worker.services.deliveries import Delivery

log = logging.getLogger("leadrouter.alerts")

TIMELINE = 20   # engagement events an alert shows

Timeline = list[tuple[datetime, str | None, float]]


def timelines(session: Session, lead_ids: Iterable[str]) -> dict[str, Timeline]:
    """Each lead's latest track events, newest first: one statement, each lead read through its own index range."""
    ids = sorted(set(lead_ids))
    if not ids:
        return {}
    parts = [select(db.Event.lead_id, db.Event.timestamp, db.Event.name, db.Event.points)
             .where(db.Event.lead_id == lead_id, db.Event.type == "track")
             .order_by(db.Event.timestamp.desc()).limit(TIMELINE).subquery() for lead_id in ids]
    stmt = select(parts[0]) if len(parts) == 1 else union_all(*(select(part) for part in parts))
    out: dict[str, Timeline] = {}
    for lead_id, at, name, points in session.execute(stmt):
        out.setdefault(lead_id, []).append((at, name, points))
    for rows in out.values():
        rows.sort(key=lambda row: row[0], reverse=True)
    return out


def view(lead: db.Lead, timeline: Timeline, rules: Rules) -> LeadView:
    traits = lead.traits or {}
    qualification = [describe_condition(c) for c in rules.scoring.red_hot.all if condition_holds(traits, c)] \
        if lead.tier == "red_hot" else []
    return LeadView(lead_id=lead.id, traits=traits, score=lead.score, tier=lead.tier, breakdown=lead.breakdown or {},
                    timeline=[(t, n or "", p) for t, n, p in reversed(timeline)], qualification=qualification)


def lead_view(session: Session, lead: db.Lead, rules: Rules) -> LeadView:
    return view(lead, timelines(session, [lead.id]).get(lead.id, []), rules)


def claim_url(settings: Settings, rules: Rules, rep_id: str, assignment: db.Assignment, now: datetime) -> str:
    expires = int((now + rules.alerts.claim_token_ttl).timestamp())
    token = sign(settings.secret_key, ClaimToken(rep_id, assignment.lead_id, assignment.id, expires))
    return f"{settings.public_url.rstrip('/')}/claim/{token}"


def compose(rules: Rules, settings: Settings, deliveries: Sequence[Delivery], leads_timelines: dict[str, Timeline],
            now: datetime) -> None:
    """Give each written delivery its message. One whose text cannot be rendered fails (its row is
    committed: that delivery fails, not the whole batch)."""
    views: dict[str, LeadView] = {}
    texts: dict[tuple[int, str, str | None], AlertText | Exception] = {}
    for d in deliveries:
        step, assignment, lead, p = d.step, d.assignment, d.lead, d.plan
        if step is None or lead is None or p is None or d.message is not None:
            continue   # a summary's message is made with its row
        key = (step.id, p.kind, p.claim_rep)
        if key not in texts:
            try:
                if lead.id not in views:
                    views[lead.id] = view(lead, leads_timelines.get(lead.id, []), rules)
                owner = rules.rep(assignment.rep_id) if assignment and assignment.rep_id else None
                reasons = list((assignment.reasons or {}).get("notes", [])) if assignment else []
                url = claim_url(settings, rules, p.claim_rep, assignment, now) \
                    if p.claim_rep and assignment is not None and p.kind in CLAIMABLE else None
                texts[key] = render_alert(p.kind, views[lead.id], rep_name=p.rep_name, claim_url=url,
                                          retry=step.step, owner_name=owner.display if owner else None,
                                          reasons=reasons)
            except Exception as exc:  # the rows are committed: fail these deliveries, not the whole batch
                log.exception("step %s: the %s message could not be composed", step.id, p.kind)
                texts[key] = exc
        text = texts[key]
        if isinstance(text, Exception):
            d.answer(DeliveryStatus.FAILED, error=f"message not composed: {type(text).__name__}: {text}"[:500],
                     error_kind="invalid", at=now_utc())
            continue
        validity = None
        if d.channel == "sms" and assignment is not None and step.kind in EXPIRING:
            validity = validity_seconds(step.step, assignment.start_at, rules.alerts, now)
        d.message = OutboundMessage(delivery_id=str(d.id), channel=d.channel, to=d.address,
                                    subject=text.subject if d.channel != "sms" else None,
                                    text=text.sms if d.channel == "sms" else text.text,
                                    html=text.html if d.channel == "email" else None, validity_seconds=validity)
