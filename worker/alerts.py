"""Firing one cadence step: claim it, write its deliveries, send them, record what happened.

A step fires exactly once: the claim is a compare-and-set from ``pending`` to
``firing`` that only one caller wins. Each delivery row (one person, one
channel) is written and committed *before* its request leaves, and updated
after, so a worker that dies mid-send leaves a row that says "maybe sent" and
nothing is sent twice for that step and channel: the row's unique key
(step, recipient, channel) forbids it.
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from routing.cadence import escalates, validity_seconds
from routing.config import Rep, Rules
from routing.messages import AlertText, LeadView, render_alert
from routing.scoring import condition_holds, describe_condition
from worker import db, metrics
from worker.channels import (
    Channel,
    ConsoleChannel,
    OutboundMessage,
    SendGridEmailChannel,
    TransportError,
    TwilioSmsChannel,
    send_with_retry,
)
from worker.claims import reassign
from worker.db import now_utc
from worker.runtime import get_runtime
from worker.settings import Settings
from worker.tokens import ClaimToken, sign

log = logging.getLogger("leadrouter.alerts")

CLAIMABLE = {"first", "retry", "escalation", "reassign", "priority"}


# ---------------------------------------------------------------- channels


_channels: dict[tuple[int, str], Channel] = {}
_channels_lock = threading.Lock()


def channel_for(kind: str, settings: Settings) -> Channel:
    """The process's channel for ``sms`` or ``email``; the console when the provider is not configured."""
    key = (id(settings), kind)
    with _channels_lock:
        ch = _channels.get(key)
        if ch is None:
            ch = _build_channel(kind, settings)
            _channels[key] = ch
        return ch


def _build_channel(kind: str, s: Settings) -> Channel:
    if kind == "sms" and s.twilio_account_sid and s.twilio_auth_token and (
            s.twilio_from_number or s.twilio_messaging_service_sid):
        return TwilioSmsChannel(s.twilio_account_sid, s.twilio_auth_token, from_number=s.twilio_from_number,
                                messaging_service_sid=s.twilio_messaging_service_sid,
                                status_callback_url=f"{s.public_url.rstrip('/')}/webhooks/twilio/status",
                                api_base_url=s.twilio_api_base_url, timeout=10)
    if kind == "email" and s.sendgrid_api_key and s.sendgrid_from_email:
        return SendGridEmailChannel(s.sendgrid_api_key, s.sendgrid_from_email, api_base_url=s.sendgrid_api_base_url,
                                    timeout=10)
    return ConsoleChannel()


def reset_channels() -> None:
    with _channels_lock:
        _channels.clear()


# ---------------------------------------------------------------- what a step sends


@dataclass(frozen=True)
class Planned:
    """One delivery to make: who, how, what."""

    recipient: str          # rep id, or the address itself for unrouted notices
    channel: str            # sms | email
    to: str
    kind: str               # message kind for routing.messages
    rep_name: str
    claim_rep: str | None   # whose claim token goes in the message


def lead_view(session: Session, lead: db.Lead, rules: Rules) -> LeadView:
    rows = session.execute(
        select(db.Event.timestamp, db.Event.name, db.Event.points)
        .where(db.Event.lead_id == lead.id, db.Event.type == "track")
        .order_by(db.Event.timestamp.desc()).limit(20)
    ).all()
    traits = lead.traits or {}
    qualification = [describe_condition(c) for c in rules.scoring.red_hot.all if condition_holds(traits, c)] \
        if lead.tier == "red_hot" else []
    return LeadView(lead_id=lead.id, traits=traits, score=lead.score, tier=lead.tier, breakdown=lead.breakdown or {},
                    timeline=[(t, n or "", p) for t, n, p in reversed(rows)], qualification=qualification)


def _addresses(rep: Rep) -> list[tuple[str, str]]:
    out = []
    for ch in rep.channels:
        if ch == "sms" and rep.phone:
            out.append(("sms", rep.phone))
        elif ch == "email" and rep.email:
            out.append(("email", rep.email))
        elif ch == "console":
            out.append(("console", rep.email or rep.phone or rep.id))
    return out


def _disabled(session: Session, rep_id: str) -> dict[str, Any]:
    state = session.get(db.RepState, rep_id)
    return dict(state.disabled_channels or {}) if state else {}


def plan_recipients(session: Session, rules: Rules, step: db.AlertStep, assignment: db.Assignment | None
                    ) -> list[Planned]:
    """Who hears about this step, on which channels (disabled channels left out)."""
    if step.kind == "unrouted":
        out = []
        for addr in rules.routing.unrouted_notify:
            channel = "sms" if addr.startswith("+") else "email"
            out.append(Planned(addr, channel, addr, "unrouted", "RevOps", None))
        return out
    if assignment is None or assignment.rep_id is None:
        return []
    rep = rules.rep(assignment.rep_id)
    if rep is None:
        log.error("step %s: rep %s is no longer in the rules", step.id, assignment.rep_id)
        return []
    kind = {"first": "first", "priority": "priority", "reassigned": "reassign", "retry": "retry",
            "fyi": "fyi", "manual": "first"}.get(step.kind, step.kind)
    people: list[tuple[Rep, str]] = [] if step.kind == "escalation" else [(rep, kind)]
    if (step.kind == "escalation" or (step.kind == "retry" and escalates(step.step, rules.alerts))) and rep.manager:
        manager = rules.rep(rep.manager)
        if manager is not None:
            people.append((manager, "escalation"))
    out = []
    for person, msg_kind in people:
        off = _disabled(session, person.id)
        for channel, to in _addresses(person):
            if channel in off:
                continue
            out.append(Planned(person.id, channel, to, msg_kind, person.display, person.id))
    return out


def claim_url(settings: Settings, rules: Rules, rep_id: str, assignment: db.Assignment, now: datetime) -> str:
    expires = int((now + rules.alerts.claim_token_ttl).timestamp())
    token = sign(settings.secret_key, ClaimToken(rep_id, assignment.lead_id, assignment.id, expires))
    return f"{settings.public_url.rstrip('/')}/claim/{token}"


# ---------------------------------------------------------------- firing


def _claim_step(session: Session, step_id: int, now: datetime) -> bool:
    me = f"{socket.gethostname()}:{get_runtime().pid}"
    won = session.execute(update(db.AlertStep).where(db.AlertStep.id == step_id, db.AlertStep.status == "pending")
                          .values(status="firing", claimed_by=me, claimed_at=now)).rowcount
    return won == 1


def _finish(session: Session, step: db.AlertStep, status: str, now: datetime, note: str | None = None) -> None:
    step.status = status
    step.fired_at = now
    if note:
        step.note = note


def _hourly_count(session: Session, rep_id: str, now: datetime) -> int:
    return session.scalar(select(func.count(func.distinct(db.Delivery.step_id)))
                          .where(db.Delivery.recipient == rep_id, db.Delivery.status != "held",
                                 db.Delivery.created_at > now - timedelta(hours=1))) or 0


def fire(step_id: int) -> list[int]:
    """Fire one step; returns the ids of steps that became due because of it (a reassignment's first alert)."""
    from worker.ops import is_paused

    rt = get_runtime()
    rules, settings = rt.rules, rt.settings
    now = now_utc()
    follow_up: list[int] = []
    with rt.sessions.begin() as session:
        if is_paused(session):
            return []
        if not _claim_step(session, step_id, now):
            return []
        step = session.get(db.AlertStep, step_id)
        assert step is not None
        metrics.observe("scheduler_lateness_seconds", max(0.0, (now - step.due_at).total_seconds()))
        assignment = session.get(db.Assignment, step.assignment_id) if step.assignment_id else None
        lead = session.get(db.Lead, step.lead_id)
        if lead is None or lead.closed_at is not None:
            _finish(session, step, "cancelled", now, "lead closed")
            return []
        if step.kind != "unrouted" and (assignment is None or not assignment.current
                                        or assignment.claimed_at is not None):
            _finish(session, step, "cancelled", now, "no longer current")
            return []
        if step.kind not in ("fyi", "priority", "unrouted") and step.step > 0 and lead.contacted_at is not None \
                and assignment is not None and lead.contacted_at >= assignment.created_at:
            _finish(session, step, "cancelled", now, "lead contacted")
            return []
        if step.kind == "reassign":
            follow_up = _reassign(session, rules, lead, assignment, now)
            _finish(session, step, "done", now, f"reassigned to {lead.owner or 'nobody'}")
            return follow_up
        sends = _write_deliveries(session, rules, settings, step, assignment, lead, now)
    results = [_send(rt, d) for d in sends]
    with rt.sessions.begin() as session:
        step = session.get(db.AlertStep, step_id)
        assert step is not None
        rep_failed = _all_failed(results, assignment)
        _finish(session, step, "done", now_utc())
        if rep_failed and assignment is not None and step.kind not in ("unrouted", "fyi"):
            follow_up = _escalate_now(session, rules, step, assignment)
    return follow_up


@dataclass
class _Send:
    delivery_id: int
    recipient: str
    channel: str
    message: OutboundMessage
    first_alert_of: int | None  # episode id when this is the episode's first alert (speed-to-lead)
    outcome: str = "pending"


def _write_deliveries(session: Session, rules: Rules, settings: Settings, step: db.AlertStep,
                      assignment: db.Assignment | None, lead: db.Lead, now: datetime,
                      only: list[Planned] | None = None) -> list[_Send]:
    planned = only if only is not None else plan_recipients(session, rules, step, assignment)
    if not planned:
        _finish(session, step, "done", now, "nobody to alert")
        return []
    existing = {(d.recipient, d.channel) for d in session.scalars(select(db.Delivery)
                                                                  .where(db.Delivery.step_id == step.id))}
    view = lead_view(session, lead, rules)
    owner = rules.rep(assignment.rep_id) if assignment and assignment.rep_id else None
    reasons = list((assignment.reasons or {}).get("notes", [])) if assignment else []
    texts: dict[tuple[str, str | None], AlertText] = {}
    out: list[_Send] = []
    capped: dict[str, bool] = {}
    for p in planned:
        if (p.recipient, p.channel) in existing:
            continue   # written by an earlier attempt at this step: sent or maybe sent, never again
        held = False
        if p.claim_rep is not None:
            if p.recipient not in capped:
                capped[p.recipient] = _hourly_count(session, p.recipient, now) >= rules.alerts.hourly_cap
            held = capped[p.recipient]
        key = (p.kind, p.claim_rep)
        if key not in texts:
            url = claim_url(settings, rules, p.claim_rep, assignment, now) \
                if p.claim_rep and assignment is not None and p.kind in CLAIMABLE else None
            texts[key] = render_alert(p.kind, view, rep_name=p.rep_name, claim_url=url, retry=step.step,
                                      owner_name=owner.display if owner else None, reasons=reasons)
        text = texts[key]
        d = db.Delivery(step_id=step.id, lead_id=lead.id, recipient=p.recipient, channel=p.channel, to=p.to,
                        status="held" if held else "pending", created_at=now, updated_at=now)
        session.add(d)
        session.flush()
        if held:
            continue
        validity = None
        if p.channel == "sms" and assignment is not None and step.kind in ("first", "retry", "priority",
                                                                           "reassigned", "manual"):
            validity = validity_seconds(step.step, assignment.start_at, rules.alerts, now)
        msg = OutboundMessage(delivery_id=str(d.id), channel=p.channel, to=p.to,
                              subject=text.subject if p.channel != "sms" else None,
                              text=text.sms if p.channel == "sms" else text.text,
                              html=text.html if p.channel == "email" else None, validity_seconds=validity)
        first_of = assignment.episode_id if (step.step == 0 and assignment is not None) else None
        out.append(_Send(d.id, p.recipient, p.channel, msg, first_of))
    return out


def _send(rt: Any, item: _Send) -> _Send:
    channel = channel_for(item.channel, rt.settings)
    provider_id, status, error, kind = None, "sent", None, None
    try:
        result = send_with_retry(channel, item.message, attempts=3, max_retry_after=10)
        provider_id = result.provider_id
    except TransportError as err:
        kind, error = err.kind, f"{err.code or err.status or ''} {err.message}".strip()
        status = "maybe_sent" if err.kind == "maybe_sent" else "failed"
        if err.kind == "account":
            log.error("provider account problem on %s, operators must act: %s", item.channel, err.message)
        else:
            log.warning("delivery %s on %s: %s", item.delivery_id, item.channel, err.message)
    except Exception as exc:  # an SDK bug must not leave the row pending forever
        status, kind, error = "maybe_sent", "maybe_sent", f"{type(exc).__name__}: {exc}"
        log.exception("delivery %s on %s failed unexpectedly", item.delivery_id, item.channel)
    now = now_utc()
    with rt.sessions.begin() as session:
        d = session.get(db.Delivery, item.delivery_id)
        if d is not None:
            d.status, d.provider_id, d.error, d.error_kind, d.updated_at = status, provider_id, error, kind, now
            if status == "sent":
                d.sent_at = now
            if kind == "recipient" and d.recipient != d.to:
                disable_channel(session, d.recipient, d.channel, error or "recipient error", now)
        earlier = session.scalar(select(func.count()).select_from(db.Delivery)
                                 .where(db.Delivery.step_id == (d.step_id if d else None),
                                        db.Delivery.id != item.delivery_id, db.Delivery.sent_at.is_not(None)))
        if item.first_alert_of is not None and status == "sent" and not earlier:
            ep = session.get(db.HotEpisode, item.first_alert_of)
            if ep is not None and ep.event_received_at is not None:
                metrics.observe("speed_to_lead_seconds", (now - ep.event_received_at).total_seconds())
    metrics.inc("deliveries_total", channel=item.channel, outcome=status)
    item.outcome = status
    return item


def disable_channel(session: Session, rep_id: str, channel: str, reason: str, now: datetime) -> None:
    state = session.get(db.RepState, rep_id)
    if state is None:
        state = db.RepState(rep_id=rep_id, away_until=None, disabled_channels={}, updated_at=now)
        session.add(state)
    off = dict(state.disabled_channels or {})
    off[channel] = {"reason": reason[:200], "at": now.isoformat()}
    state.disabled_channels = off
    state.updated_at = now
    log.warning("channel %s disabled for rep %s: %s", channel, rep_id, reason[:200])


def _all_failed(results: list[_Send], assignment: db.Assignment | None) -> bool:
    if assignment is None or assignment.rep_id is None:
        return False
    mine = [r for r in results if r.recipient == assignment.rep_id]
    return bool(mine) and all(r.outcome == "failed" for r in mine)


def _escalate_now(session: Session, rules: Rules, step: db.AlertStep, assignment: db.Assignment) -> list[int]:
    """Every channel of the rep failed: the next step (escalating, if any) is due now instead of later."""
    rep = rules.rep(assignment.rep_id or "")
    if rep is None or not rep.manager:
        return []
    n = session.scalar(select(func.count()).select_from(db.AlertStep)
                       .where(db.AlertStep.assignment_id == assignment.id, db.AlertStep.step >= 100)) or 0
    extra = db.AlertStep(assignment_id=assignment.id, lead_id=assignment.lead_id, step=100 + n, kind="escalation",
                         due_at=now_utc(), note="every channel of the rep failed")
    session.add(extra)
    session.flush()
    log.warning("lead %s: every channel of rep %s failed, escalating to %s now", assignment.lead_id, rep.id,
                rep.manager)
    return [extra.id]


def _reassign(session: Session, rules: Rules, lead: db.Lead, assignment: db.Assignment | None,
              now: datetime) -> list[int]:
    from worker.assign import Router

    if assignment is None or assignment.episode_id is None:
        return []
    episode = session.get(db.HotEpisode, assignment.episode_id)
    if episode is None or episode.status != "open":
        return []
    previous = frozenset(r for r in session.scalars(select(db.Assignment.rep_id)
                                                    .where(db.Assignment.episode_id == episode.id)) if r)
    Router(rules).end_current(session, lead.id, now, "sla expired")
    episode.reassignments += 1
    session.add(db.Trace(lead_id=lead.id, at=now, kind="reassigned", actor=None,
                         detail={"from": assignment.rep_id, "reason": "no claim within the cadence"}))
    return reassign(session, rules, lead, episode, previous, now)


def failover(session: Session, delivery: db.Delivery, now: datetime) -> list[_Send]:
    """A delivery failed after it was sent: carry the same step on the rep's other channel, once."""
    rt = get_runtime()
    rules = rt.rules
    step = session.get(db.AlertStep, delivery.step_id) if delivery.step_id else None
    if step is None:
        return []
    assignment = session.get(db.Assignment, step.assignment_id) if step.assignment_id else None
    lead = session.get(db.Lead, step.lead_id)
    if lead is None or (assignment is not None and (not assignment.current or assignment.claimed_at is not None)):
        return []
    others = [p for p in plan_recipients(session, rules, step, assignment)
              if p.recipient == delivery.recipient and p.channel != delivery.channel]
    if not others:
        return []
    return _write_deliveries(session, rules, rt.settings, step, assignment, lead, now, only=others)


def send_all(items: list[_Send]) -> None:
    rt = get_runtime()
    for item in items:
        _send(rt, item)


# ---------------------------------------------------------------- the hourly cap's summary


def flush_held(now: datetime | None = None) -> int:
    """Alerts held back by a rep's hourly cap, summarized in one message once the window reopens.

    The held rows are moved to ``summarized`` by a compare-and-set, so of two
    schedulers only one sends the summary."""
    from routing.messages import render_summary

    rt = get_runtime()
    rules = rt.rules
    now = now or now_utc()
    sends: list[_Send] = []
    with rt.sessions.begin() as session:
        held = list(session.scalars(select(db.Delivery).where(db.Delivery.status == "held")
                                    .order_by(db.Delivery.id).limit(500)))
        by_rep: dict[str, list[db.Delivery]] = {}
        for d in held:
            by_rep.setdefault(d.recipient, []).append(d)
        for rep_id, rows in by_rep.items():
            rep = rules.rep(rep_id)
            if rep is None or _hourly_count(session, rep_id, now) >= rules.alerts.hourly_cap:
                continue
            won = session.execute(update(db.Delivery).where(db.Delivery.id.in_([d.id for d in rows]),
                                                            db.Delivery.status == "held")
                                  .values(status="summarized", updated_at=now)).rowcount
            if won != len(rows):
                continue
            lead_ids = list(dict.fromkeys(d.lead_id for d in rows))
            leads = [session.get(db.Lead, lid) for lid in lead_ids]
            views = [lead_view(session, lead, rules) for lead in leads if lead is not None]
            text = render_summary(rep.display, views, "the last hour")
            off = _disabled(session, rep_id)
            for channel, to in _addresses(rep):
                if channel in off:
                    continue
                d = db.Delivery(step_id=None, lead_id=lead_ids[0], recipient=rep_id, channel=channel, to=to,
                                status="pending", created_at=now, updated_at=now)
                session.add(d)
                session.flush()
                msg = OutboundMessage(delivery_id=str(d.id), channel=channel, to=to,
                                      subject=text.subject if channel != "sms" else None,
                                      text=text.sms if channel == "sms" else text.text,
                                      html=text.html if channel == "email" else None)
                sends.append(_Send(d.id, rep_id, channel, msg, None))
    send_all(sends)
    return len(sends)
