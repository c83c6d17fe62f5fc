"""An operator's hand on the running service: rep availability, lead commands (assign,
release, close), forgetting a lead, and dead letters.

Every function takes the caller's session (the caller owns the transaction) and
``now``; anything to dispatch after the commit (alert step ids) is returned, never
sent from here. Mistakes an operator can make (an unknown lead, rep or dead
letter) raise :class:`OpsError` before anything is changed. The pause switch lives
in :mod:`worker.services.pause`; what the service shows (``status``, ``report``, the board) in
:mod:`worker.services.reports`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from routing.config import Rules
from routing.events import iso
from routing.kinds import StepKind
from worker.adapters import db
from worker.services.assign import Router, lock_routing
from worker.services.availability import OpsError, check_rep
from worker.services.outbound import forget as outbound_forget

ERASED = "[erased]"
FORGOTTEN_PREFIX = "forgotten:"
OPEN_EPISODE = ("open", "unrouted")
JUNK = "junk"                     # `lead close --reason junk`: the lead was never worth a rep's time
END_REASON_CHARS = 20             # assignments.end_reason is VARCHAR(20)


# ---------------------------------------------------------------- lead commands


@dataclass
class LeadResult:
    message: str
    due_steps: list[int] = field(default_factory=list)


def forgotten_id(lead_id: str) -> str:
    """What a forgotten lead is called instead of its id (often an email): an HMAC of the id keyed
    with LEADROUTER_SECRET_KEY. Whoever has the key and the old id can still find the lead's counts;
    the database alone tells nobody whose they were."""
    from worker.adapters.settings import get_settings

    key = get_settings().secret_key.encode()
    return FORGOTTEN_PREFIX + hmac.new(key, lead_id.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:32]


def resolve_lead(session: Session, lead_id: str) -> db.Lead | None:
    """The lead itself, or the user lead a merged anonymous id now lives in, or the lead that was
    this one before ``forget``."""
    lead = session.get(db.Lead, lead_id)
    if lead is None and not lead_id.startswith("anon:"):
        lead = session.get(db.Lead, f"anon:{lead_id}")
    if lead is None and not lead_id.startswith(FORGOTTEN_PREFIX):
        lead = session.get(db.Lead, forgotten_id(lead_id)) or session.get(db.Lead, forgotten_id(f"anon:{lead_id}"))
    for _ in range(8):  # merges chain at most a few times; the bound guards against a cycle
        if lead is None or not lead.merged_into:
            break
        lead = session.get(db.Lead, lead.merged_into)
    return lead


def _lead_or_fail(session: Session, lead_id: str) -> db.Lead:
    lead = resolve_lead(session, lead_id)
    if lead is None:
        raise OpsError(f"no lead {lead_id!r}")
    return lead


def _open_episode(session: Session, lead_id: str) -> db.HotEpisode | None:
    return session.scalar(select(db.HotEpisode)
                          .where(db.HotEpisode.lead_id == lead_id, db.HotEpisode.status.in_(OPEN_EPISODE))
                          .order_by(db.HotEpisode.id.desc()).limit(1))


def _episode_for_operator(session: Session, lead: db.Lead, rules: Rules, now: datetime) -> db.HotEpisode:
    episode = _open_episode(session, lead.id)
    if episode is None:
        episode = db.HotEpisode(lead_id=lead.id, opened_at=now, event_id=None, event_received_at=None,
                                red_hot=lead.red_hot_at is not None, status="open", rules_hash=rules.hash)
        session.add(episode)
        session.flush()
    episode.status, episode.closed_at = "open", None
    return episode


def assign_lead(session: Session, rules: Rules, lead_id: str, rep_id: str, *, actor: str,
                reason: str | None = None, now: datetime | None = None) -> LeadResult:
    """Give the lead to ``rep_id``: any cadence stops, the new rep's starts now."""
    now = now or db.now_utc()
    lead = _lead_or_fail(session, lead_id)
    check_rep(rules, rep_id)
    router = Router(rules)
    lock_routing(session)
    previous = [a.rep_id for a in router.end_current(session, lead.id, now, _end_reason("assigned by", actor))]
    episode = _episode_for_operator(session, lead, rules, now)
    lead.closed_at = None
    due = router.assign(session, lead, lead.traits or {}, episode, now, exclude=frozenset(), kind=StepKind.FIRST,
                        actor=actor, forced_rep=rep_id)
    _trace(session, lead.id, now, "operator.assign", actor,
           {"rep": rep_id, "previous": [r for r in previous if r], "reason": reason})
    return LeadResult(f"{lead.id} assigned to {rep_id}", due)


def release_lead(session: Session, rules: Rules, lead_id: str, *, actor: str, reason: str | None = None,
                 now: datetime | None = None) -> LeadResult:
    """End the current assignment and route the lead again by the normal rules, to someone else."""
    now = now or db.now_utc()
    lead = _lead_or_fail(session, lead_id)
    router = Router(rules)
    lock_routing(session)
    previous = [a.rep_id for a in router.end_current(session, lead.id, now, _end_reason("released by", actor))]
    _cancel_lead_steps(session, lead.id, f"released by {actor}")
    episode = _episode_for_operator(session, lead, rules, now)
    lead.closed_at = None
    # released means "not this rep": otherwise the rep just released, as the domain's last owner, gets it back
    due = router.assign(session, lead, lead.traits or {}, episode, now, exclude=frozenset(r for r in previous if r),
                        kind=StepKind.FIRST, actor=actor)
    _trace(session, lead.id, now, "operator.release", actor,
           {"previous": [r for r in previous if r], "rep": lead.owner, "reason": reason})
    return LeadResult(f"{lead.id} released; routed to {lead.owner}" if lead.owner
                      else f"{lead.id} released; nobody available, the lead is unrouted", due)


def close_lead(session: Session, rules: Rules, lead_id: str, *, actor: str, reason: str | None = None,
               now: datetime | None = None) -> LeadResult:
    """Stop everything: the assignment ends, every pending step is cancelled, episodes close."""
    now = now or db.now_utc()
    lead = _lead_or_fail(session, lead_id)
    junk = (reason or "").strip().casefold() == JUNK
    Router(rules).end_current(session, lead.id, now, "closed as junk" if junk else _end_reason("closed by", actor))
    cancelled = _cancel_lead_steps(session, lead.id, f"closed by {actor}")
    session.execute(update(db.HotEpisode)
                    .where(db.HotEpisode.lead_id == lead.id, db.HotEpisode.status.in_(OPEN_EPISODE))
                    .values(status="closed", closed_at=now))
    lead.closed_at = now
    lead.updated_at = now
    _trace(session, lead.id, now, "operator.close", actor, {"cancelled_steps": cancelled, "reason": reason})
    return LeadResult(f"{lead.id} closed; {cancelled} pending alert(s) cancelled")


def lead_command(session: Session, rules: Rules, action: str, lead_id: str, rep_id: str | None, *, actor: str,
                 reason: str | None = None, now: datetime | None = None) -> LeadResult:
    if action == "assign":
        if not rep_id:
            raise OpsError("lead assign needs a REP")
        return assign_lead(session, rules, lead_id, rep_id, actor=actor, reason=reason, now=now)
    if action == "release":
        return release_lead(session, rules, lead_id, actor=actor, reason=reason, now=now)
    if action == "close":
        return close_lead(session, rules, lead_id, actor=actor, reason=reason, now=now)
    raise OpsError(f"unknown lead action {action!r}")


def _end_reason(what: str, actor: str) -> str:
    """``assigned by alice``, cut to the column's width (the trace keeps the whole name)."""
    return f"{what} {actor}"[:END_REASON_CHARS]


def _cancel_lead_steps(session: Session, lead_id: str, why: str) -> int:
    # unrouted notices hang off an assignment that was never current: cancel by lead, not by assignment
    return db.changed_rows(session, update(db.AlertStep)
                           .where(db.AlertStep.lead_id == lead_id, db.AlertStep.status == "pending")
                           .values(status="cancelled", note=why))


def _trace(session: Session, lead_id: str, now: datetime, kind: str, actor: str | None,
           detail: dict[str, Any]) -> None:
    session.add(db.Trace(lead_id=lead_id, at=now, kind=kind, actor=actor,
                         detail={k: v for k, v in detail.items() if v is not None}))


# ---------------------------------------------------------------- forget


def forget(session: Session, lead_id: str, *, actor: str | None, now: datetime | None = None) -> str:
    """Erase the lead's personal data everywhere it was copied; scores and counts stay."""
    from worker.adapters.settings import get_settings, secret_problem

    if (problem := secret_problem(get_settings().secret_key)) is not None:
        raise OpsError(f"{problem}: forget names the lead by an HMAC keyed with the services' "
                       "LEADROUTER_SECRET_KEY; run it with the same settings as they are")
    now = now or db.now_utc()
    lead = _lead_or_fail(session, lead_id)
    ids = {lead.id}
    ids |= set(session.scalars(select(db.Lead.id).where(db.Lead.merged_into == lead.id)))
    ids |= set(session.scalars(select(db.IdentityLink.anon_lead_id).where(db.IdentityLink.user_lead_id == lead.id)))
    leads = list(session.scalars(select(db.Lead).where(db.Lead.id.in_(ids))))
    events = list(session.scalars(select(db.Event).where(db.Event.lead_id.in_(ids))))
    personal = _personal_values([row.traits for row in leads]
                                + [e.traits for e in events] + [e.properties for e in events])
    # the ids too (often an email): copied into outbox bodies, notes and reasons
    personal |= {i for old in ids for i in (old, old.removeprefix("anon:")) if len(i) >= 4}

    for row in leads:
        row.traits = {}
        row.forgotten_at = now
        row.updated_at = now
    for e in events:
        e.properties, e.traits = {}, {}
    deliveries = list(session.scalars(select(db.Delivery).where(db.Delivery.lead_id.in_(ids))))
    for d in deliveries:
        d.to = ERASED
        d.error = _scrub(d.error, personal)
    for trace in session.scalars(select(db.Trace).where(db.Trace.lead_id.in_(ids))):
        trace.detail = _scrub(trace.detail, personal)
    for a in session.scalars(select(db.Assignment).where(db.Assignment.lead_id.in_(ids))):
        a.reasons = _scrub(a.reasons, personal)
    for s in session.scalars(select(db.AlertStep).where(db.AlertStep.lead_id.in_(ids))):
        s.note = _scrub(s.note, personal)
    outbound_forget(session, ids, lambda x: _scrub(x, personal))
    dead = 0
    for dl in session.scalars(select(db.DeadLetter)):
        if _dead_letter_lead(dl) & ids or _mentions(dl.payload, personal):
            dl.payload = {"erased": True}
            dl.error = _scrub(dl.error, personal) or ""
            dead += 1
    new_id = _rename_forgotten(session, ids)[lead.id]
    _trace(session, new_id, now, "forgotten", actor,
           {"events": len(events), "deliveries": len(deliveries), "dead_letters": dead})
    return (f"{lead_id}: personal data erased ({len(events)} event(s), {len(deliveries)} delivery(ies), "
            f"{dead} dead letter(s)); score and counts kept under {new_id}")


def _rename_forgotten(session: Session, ids: set[str]) -> dict[str, str]:
    """Every row keyed by these lead ids takes the one-way id instead; the domains routed by (which
    came from the lead's email) are dropped. Done last, in SQL: the ORM's copies are let go."""
    session.flush()
    renamed = {old: old if old.startswith(FORGOTTEN_PREFIX) else forgotten_id(old) for old in ids}
    columns: list[Any] = [db.Lead.id, db.Lead.merged_into, db.Event.lead_id, db.IdentityLink.anon_lead_id,
                          db.IdentityLink.user_lead_id, db.HotEpisode.lead_id, db.Assignment.lead_id,
                          db.AlertStep.lead_id, db.Delivery.lead_id, db.Trace.lead_id, db.OutboundWebhook.lead_id]
    session.execute(update(db.Assignment).where(db.Assignment.lead_id.in_(ids)).values(domain=None)
                    .execution_options(synchronize_session=False))
    for col in columns:
        column = col.expression
        for old, new in renamed.items():
            if old != new:
                session.execute(update(column.table).where(column == old).values({column.name: new})
                                .execution_options(synchronize_session=False))
    session.expunge_all()
    return renamed


def _personal_values(docs: Iterable[Any]) -> set[str]:
    """Every string leaf of the traits and properties: what to look for wherever they were copied."""
    out: set[str] = set()

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, str) and len(x.strip()) >= 4:   # shorter values ("US", "yes") identify nobody
            out.add(x.strip())

    for d in docs:
        walk(d)
    return out


def _mentions(x: Any, personal: set[str]) -> bool:
    if isinstance(x, dict):
        return any(_mentions(v, personal) for v in x.values())
    if isinstance(x, list):
        return any(_mentions(v, personal) for v in x)
    return isinstance(x, str) and any(p in x for p in personal)


def _scrub(x: Any, personal: set[str]) -> Any:
    if isinstance(x, dict):
        return {k: _scrub(v, personal) for k, v in x.items()}
    if isinstance(x, list):
        return [_scrub(v, personal) for v in x]
    if isinstance(x, str):
        for p in personal:
            x = x.replace(p, ERASED)
    return x


def _dead_letter_lead(dl: db.DeadLetter) -> set[str]:
    ev = dl.payload.get("event") if isinstance(dl.payload, dict) else None
    if not isinstance(ev, dict):
        return set()
    out = set()
    for key in ("userId", "previousId"):
        if isinstance(ev.get(key), str):
            out.add(ev[key])
    if isinstance(ev.get("anonymousId"), str):
        out.add(f"anon:{ev['anonymousId']}")
    return out



# ---------------------------------------------------------------- dead letters


def list_dead_letters(session: Session, limit: int = 200) -> list[dict[str, Any]]:
    rows = session.scalars(select(db.DeadLetter).order_by(db.DeadLetter.id.desc()).limit(limit))
    return [{"id": d.id, "created_at": iso(d.created_at), "source": d.source, "message_id": d.message_id,
             "error": d.error, "attempts": d.attempts, "retried_at": iso(d.retried_at),
             "payload": d.payload.get("event") if isinstance(d.payload, dict) else None} for d in rows]


def retry_dead_letter(session: Session, r: redis.Redis, rules: Rules, dead_letter_id: int,
                      now: datetime | None = None) -> str:
    """Queue the failed event again with its source; duplicates are dropped by ``messageId`` as ever."""
    from routing.events import EventError, parse_time
    from worker.services.publish import publish

    now = now or db.now_utc()
    dl = session.get(db.DeadLetter, dead_letter_id)
    if dl is None:
        raise OpsError(f"no dead letter {dead_letter_id} (see `leadrouter dead-letters list`)")
    payload = dl.payload.get("event") if isinstance(dl.payload, dict) else None
    if payload is None:
        raise OpsError(f"dead letter {dead_letter_id} holds no event to retry")
    received: datetime | None = None
    raw_received = dl.payload.get("received_at")
    if isinstance(raw_received, str) and raw_received:
        try:
            received = parse_time(raw_received, "received_at")
        except EventError:
            received = None
    result = publish(r, [payload], rules, source=dl.source, received_at=received)
    if result.errors:
        e = result.errors[0]
        raise OpsError(f"dead letter {dead_letter_id} is still invalid: {e['field'] or 'event'}: {e['error']}")
    dl.retried_at = now
    dl.attempts = (dl.attempts or 1) + 1
    return f"requeued dead letter {dead_letter_id}" + (" (fast lane)" if result.fast else "")
