"""An operator's hand on the running service: pause, rep availability, lead commands,
forgetting a lead, dead letters, and the ``status`` and ``report`` views.

Every function takes the caller's session (the caller owns the transaction) and
``now``; anything to dispatch after the commit (alert step ids) is returned, never
sent from here. Mistakes an operator can make (an unknown lead, rep or dead
letter) raise :class:`OpsError` before anything is changed.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from routing.config import Rules
from routing.events import iso
from routing.kinds import StepKind
from routing.leads import TRAITS_OVER_CAP
from worker import db, metrics, stream
from worker.assign import Router, lock_routing
from worker.outbound import forget as outbound_forget
from worker.outbound import summary as outbound_summary
from worker.pause import PAUSE_KEY

AWAY_KEY = "away:{}"
WORKER_PREFIX = "worker:"
FOREVER = datetime(9999, 1, 1, tzinfo=UTC)   # "away until `rep back`"
ERASED = "[erased]"
FORGOTTEN_PREFIX = "forgotten:"
SENT = ("sent", "maybe_sent", "delivered")
OPEN_EPISODE = ("open", "unrouted")


class OpsError(Exception):
    """An operator's request that cannot be carried out; nothing was changed."""


# ---------------------------------------------------------------- settings


def _put_setting(session: Session, key: str, value: dict[str, Any], now: datetime) -> None:
    row = session.get(db.Setting, key)
    if row is None:
        session.add(db.Setting(key=key, value=value, updated_at=now))
    else:
        row.value, row.updated_at = value, now


# ---------------------------------------------------------------- rep availability


def _check_rep(rules: Rules, rep_id: str) -> None:
    if rules.rep(rep_id) is None:
        raise OpsError(f"unknown rep {rep_id!r} (reps: {', '.join(r.id for r in rules.reps)})")


def set_away(session: Session, rules: Rules, rep_id: str, until: datetime | None, *, actor: str | None,
             reason: str | None = None, now: datetime | None = None) -> datetime:
    """Mark ``rep_id`` away until ``until`` (no end: until ``rep back``); returns the end stored."""
    _check_rep(rules, rep_id)
    now = now or db.now_utc()
    end = until or FOREVER
    if end <= now:
        raise OpsError(f"--until {iso(end)} is in the past")
    state = _rep_state(session, rep_id, now)
    state.away_until = end
    _put_setting(session, AWAY_KEY.format(rep_id),
                 {"actor": actor, "reason": reason, "since": now.isoformat()}, now)
    return end


def set_back(session: Session, rules: Rules, rep_id: str, *, actor: str | None, now: datetime | None = None) -> None:
    _check_rep(rules, rep_id)
    now = now or db.now_utc()
    state = _rep_state(session, rep_id, now)
    state.away_until = None
    row = session.get(db.Setting, AWAY_KEY.format(rep_id))
    if row is not None:
        session.delete(row)


def _rep_state(session: Session, rep_id: str, now: datetime) -> db.RepState:
    state = session.get(db.RepState, rep_id)
    if state is None:
        state = db.RepState(rep_id=rep_id, away_until=None, disabled_channels={}, updated_at=now)
        session.add(state)
    state.updated_at = now
    return state


# ---------------------------------------------------------------- lead commands


@dataclass
class LeadResult:
    message: str
    due_steps: list[int] = field(default_factory=list)


def forgotten_id(lead_id: str) -> str:
    """What a forgotten lead is called instead of its id (often an email): an HMAC of the id keyed
    with LEADROUTER_SECRET_KEY. Whoever has the key and the old id can still find the lead's counts;
    the database alone tells nobody whose they were."""
    import hashlib
    import hmac

    from worker.settings import get_settings

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
    _check_rep(rules, rep_id)
    router = Router(rules)
    lock_routing(session)
    previous = [a.rep_id for a in router.end_current(session, lead.id, now, f"assigned by {actor}")]
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
    previous = [a.rep_id for a in router.end_current(session, lead.id, now, f"released by {actor}")]
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
    Router(rules).end_current(session, lead.id, now, f"closed by {actor}")
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
    from worker.settings import get_settings, secret_problem

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
    from worker.publish import publish

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


# ---------------------------------------------------------------- status


def status(session: Session, r: redis.Redis, rules: Rules | None, now: datetime | None = None,
           rules_file: dict[str, Any] | None = None) -> dict[str, Any]:
    """``rules`` None: the file on disk does not load (``rules_file`` says why); the rest still shows."""
    now = now or db.now_utc()
    lanes = {lane: stream.backlog(r, lane) for lane in stream.LANES}
    open_hot = session.execute(
        select(db.Assignment.rep_id, func.count())
        .join(db.HotEpisode, db.HotEpisode.id == db.Assignment.episode_id)
        .join(db.Lead, db.Lead.id == db.Assignment.lead_id)
        .where(db.Assignment.current.is_(True), db.Assignment.claimed_at.is_(None),
               db.Assignment.rep_id.is_not(None), db.HotEpisode.status == "open", db.Lead.closed_at.is_(None))
        .group_by(db.Assignment.rep_id)).all()
    open_by_rep = {rep: int(n) for rep, n in open_hot}
    unrouted = list(session.scalars(select(db.HotEpisode.lead_id)
                                    .where(db.HotEpisode.status == "unrouted", db.HotEpisode.closed_at.is_(None))
                                    .order_by(db.HotEpisode.opened_at)))
    pause = session.get(db.Setting, PAUSE_KEY)
    pause_value = dict(pause.value) if pause is not None else {"paused": False}
    states = {s.rep_id: s for s in session.scalars(select(db.RepState))}
    away_notes = {row.key.removeprefix("away:"): row.value for row in
                  session.scalars(select(db.Setting).where(db.Setting.key.like("away:%")))}
    reps = []
    rep_ids = ([rep.id for rep in rules.reps] if rules is not None
               else sorted({str(k) for k in (*states, *open_by_rep) if k}))
    for rep_id in rep_ids:
        s = states.get(rep_id)
        away = s.away_until if s is not None and s.away_until is not None and s.away_until > now else None
        reps.append({
            "rep": rep_id, "open_hot_leads": open_by_rep.get(rep_id, 0),
            "away": away is not None,
            "away_until": None if away is None or away >= FOREVER else iso(away),
            "away_reason": (away_notes.get(rep_id) or {}).get("reason") if away is not None else None,
            "disabled_channels": dict(s.disabled_channels or {}) if s is not None else {},
        })
    workers = [{"name": row.key.removeprefix(WORKER_PREFIX), "rules_hash": row.value.get("rules_hash"),
                "seen_at": row.value.get("seen_at"),
                "current": rules is not None and row.value.get("rules_hash") == rules.hash,
                "refused_file": list(row.value.get("errors") or [])}
               for row in session.scalars(select(db.Setting).where(db.Setting.key.like(f"{WORKER_PREFIX}%"))
                                          .order_by(db.Setting.key))]
    dead_total = session.scalar(select(func.count()).select_from(db.DeadLetter)) or 0
    outbound = outbound_summary(session, now)
    dead_new = session.scalar(select(func.count()).select_from(db.DeadLetter)
                              .where(db.DeadLetter.retried_at.is_(None))) or 0
    try:
        refusals = metrics.latest_refusals(r, 10)
    except redis.RedisError:
        refusals = []
    return {
        "at": iso(now),
        "paused": bool(pause_value.get("paused")),
        "pause": pause_value,
        "queues": {
            "events_waiting": sum(b["waiting"] + b["pending"] for b in lanes.values()),
            "fast_lane": lanes[stream.FAST]["waiting"] + lanes[stream.FAST]["pending"],
            "lanes": lanes,
            "dead_letters": int(dead_total),
            "dead_letters_not_retried": int(dead_new),
            "trait_updates_refused": int(session.scalar(
                select(func.count()).select_from(db.DeadLetter)
                .where(db.DeadLetter.error.like(f"{TRAITS_OVER_CAP}%"))) or 0),
        },
        "hot_leads_open": sum(open_by_rep.values()),
        "alerts_due": int(session.scalar(select(func.count()).select_from(db.AlertStep)
                                         .where(db.AlertStep.status == "pending", db.AlertStep.due_at <= now)) or 0),
        "alerts_scheduled": int(session.scalar(select(func.count()).select_from(db.AlertStep)
                                               .where(db.AlertStep.status == "pending")) or 0),
        "unrouted": len(unrouted),
        "unrouted_leads": unrouted[:50],
        "reps": reps,
        "reps_away": [r["rep"] for r in reps if r["away"]],
        "disabled_channels": {r["rep"]: r["disabled_channels"] for r in reps if r["disabled_channels"]},
        "rules_hash": rules.hash if rules is not None else None,
        "rules_file": rules_file or {"ok": True, "errors": []},
        "workers": workers,
        "failed_webhooks": outbound["failed"],
        "outbound": outbound,
        "ingest_refusals": refusals,
    }


def render_status(data: dict[str, Any]) -> str:
    q = data["queues"]
    lines = []
    if data["paused"]:
        p = data["pause"]
        lines.append(f"ALERTING PAUSED since {p.get('at')} by {p.get('actor') or '?'}"
                     + (f": {p['reason']}" if p.get("reason") else "") + " (events are still scored)")
        lines.append("")
    summary = [
        ("events waiting", q["events_waiting"]),
        ("  fast lane", q["fast_lane"]),
        ("dead letters", f"{q['dead_letters']} ({q['dead_letters_not_retried']} not retried, "
                         f"{q['trait_updates_refused']} trait updates over a lead's cap)"),
        ("hot leads open", data["hot_leads_open"]),
        ("alerts due now", data["alerts_due"]),
        ("alerts scheduled", data["alerts_scheduled"]),
        ("unrouted leads", data["unrouted"]),
        ("alerting", "paused" if data["paused"] else "on"),
    ]
    ob = data["outbound"]
    summary.append(("webhooks pending", ob["pending"] if ob["oldest_pending_seconds"] is None
                    else f"{ob['pending']} (oldest {ob['oldest_pending_seconds']:.0f}s)"))
    summary.append(("webhooks failed", ob["failed"]))
    lines.append(table(summary, ["", "now"]))
    if ob["recent_failures"]:
        lines.append("")
        lines.append(table([(f["at"], f["event"], f["lead"], f["receiver"], f["attempts"], f["error"] or "")
                            for f in ob["recent_failures"]],
                           ["failed webhook", "event", "lead", "receiver", "attempts", "last error"]))
    if data.get("ingest_refusals"):
        lines.append("")
        lines.append(table([(f["at"], f"{f['status']} {f['reason']}", f["path"], f["source"], f["message"][:80])
                            for f in data["ingest_refusals"]],
                           ["refused request", "answer", "route", "source", "why"]))
    if data["unrouted_leads"]:
        lines.append("")
        lines.append("unrouted: " + ", ".join(data["unrouted_leads"]))
    lines.append("")
    lines.append(table([(r["rep"], r["open_hot_leads"],
                         ("away until " + (r["away_until"] or "rep back") if r["away"] else "available")
                         + (f" ({r['away_reason']})" if r["away_reason"] else ""),
                         ", ".join(f"{ch}: {why}" for ch, why in r["disabled_channels"].items()) or "-")
                        for r in data["reps"]], ["rep", "open", "availability", "disabled channels"]))
    lines.append("")
    rf = data["rules_file"]
    if not rf["ok"]:
        lines.append(f"RULES FILE REFUSED: {rf.get('path')} does not load; running processes keep their last "
                     "good rules and a restart would fail:")
        lines += [f"  {e}" for e in rf["errors"]]
    else:
        lines.append(f"rules {data['rules_hash']}")
    if data["workers"]:
        lines.append(table([(w["name"], w["rules_hash"], "yes" if w["current"] else "NO", w["seen_at"],
                             "refused: " + "; ".join(w["refused_file"]) if w["refused_file"] else "-")
                            for w in data["workers"]], ["worker", "rules", "current", "seen", "file on disk"]))
    else:
        lines.append("no worker has reported its rules yet")
    return "\n".join(lines)


# ---------------------------------------------------------------- report


def report(session: Session, rules: Rules, since: timedelta, now: datetime | None = None) -> dict[str, Any]:
    """Per rep: assigned, claimed, claimed within the SLA, median time to claim; and speed-to-lead
    split into system delay (crossing event received → first alert sent) and human delay
    (first alert sent → claim). Durations are seconds."""
    now = now or db.now_utc()
    start = now - since
    sla = rules.alerts.first_contact_sla.total_seconds()
    assignments = list(session.scalars(select(db.Assignment)
                                       .where(db.Assignment.created_at >= start, db.Assignment.rep_id.is_not(None))
                                       .order_by(db.Assignment.id)))
    first_sent = _first_sent_by_assignment(session, [a.id for a in assignments])

    per_rep: dict[str, dict[str, Any]] = {}
    waits: dict[str, list[float]] = {}
    for a in assignments:
        rep_id = a.rep_id or ""
        row = per_rep.setdefault(rep_id, {"rep": rep_id, "assigned": 0, "claimed": 0, "claimed_within_sla": 0,
                                          "median_time_to_claim": None})
        row["assigned"] += 1
        if a.claimed_at is None:
            continue
        row["claimed"] += 1
        alerted = first_sent.get(a.id) or a.start_at
        wait = max(0.0, (a.claimed_at - alerted).total_seconds())
        waits.setdefault(rep_id, []).append(wait)
        if wait <= sla:
            row["claimed_within_sla"] += 1
    for rep_id, w in waits.items():
        per_rep[rep_id]["median_time_to_claim"] = round(statistics.median(w), 3)
    order = {r.id: i for i, r in enumerate(rules.reps)}
    reps = sorted(per_rep.values(), key=lambda r: (order.get(r["rep"], len(order)), r["rep"]))

    system, human = [], []
    queued = 0
    episodes = list(session.scalars(select(db.HotEpisode).where(db.HotEpisode.opened_at >= start)
                                    .order_by(db.HotEpisode.id)))
    ep_assignments: dict[int, list[db.Assignment]] = {}
    for a in session.scalars(select(db.Assignment).where(db.Assignment.episode_id.in_([e.id for e in episodes]))
                             .order_by(db.Assignment.id)):
        ep_assignments.setdefault(a.episode_id or 0, []).append(a)
    ep_sent = _first_sent_by_assignment(session, [a.id for lst in ep_assignments.values() for a in lst])
    for ep in episodes:
        lst = ep_assignments.get(ep.id, [])
        if not lst:
            continue
        sent = [ep_sent[a.id] for a in lst if a.id in ep_sent]
        first_alert = min(sent) if sent else None
        if lst[0].route == "queued":
            queued += 1   # waiting for a shift is policy, not system delay
        elif first_alert is not None and ep.event_received_at is not None:
            system.append(max(0.0, (first_alert - ep.event_received_at).total_seconds()))
        claims = [a.claimed_at for a in lst if a.claimed_at is not None]
        if claims and first_alert is not None:
            human.append(max(0.0, (min(claims) - first_alert).total_seconds()))

    total_claimed = sum(r["claimed"] for r in reps)
    all_waits = [w for lst in waits.values() for w in lst]
    return {
        "since": iso(start),
        "until": iso(now),
        "first_contact_sla_seconds": sla,
        "reps": reps,
        "totals": {
            "assigned": sum(r["assigned"] for r in reps),
            "claimed": total_claimed,
            "claimed_within_sla": sum(r["claimed_within_sla"] for r in reps),
            "median_time_to_claim": round(statistics.median(all_waits), 3) if all_waits else None,
        },
        "speed_to_lead": {
            "hot_episodes": len(episodes),
            "queued_after_hours": queued,
            "system_delay": _summary(system),
            "human_delay": _summary(human),
        },
    }


def _first_sent_by_assignment(session: Session, assignment_ids: Sequence[int]) -> dict[int, datetime]:
    if not assignment_ids:
        return {}
    rows = session.execute(
        select(db.AlertStep.assignment_id, func.min(db.Delivery.sent_at))
        .join(db.Delivery, db.Delivery.step_id == db.AlertStep.id)
        .where(db.AlertStep.assignment_id.in_(assignment_ids), db.Delivery.sent_at.is_not(None),
               db.Delivery.status.in_(SENT))
        .group_by(db.AlertStep.assignment_id)).all()
    out: dict[int, datetime] = {}
    for aid, sent in rows:
        if aid is not None and sent is not None:
            # min() over the column type comes back as the raw stored value on SQLite
            out[aid] = sent if isinstance(sent, datetime) else datetime.fromisoformat(str(sent))
            if out[aid].tzinfo is None:
                out[aid] = out[aid].replace(tzinfo=UTC)
    return out


def _summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "median": None, "p90": None, "max": None}
    s = sorted(values)
    p90 = s[min(len(s) - 1, max(0, int(round(0.9 * len(s) + 0.5)) - 1))]
    return {"count": len(s), "median": round(statistics.median(s), 3), "p90": round(p90, 3), "max": round(s[-1], 3)}


def _secs(x: float | None) -> str:
    if x is None:
        return "-"
    if x < 120:
        return f"{round(x, 1):g}s"
    if x < 3600:
        return f"{x / 60:.1f}m"
    return f"{x / 3600:.1f}h"


def render_report(data: dict[str, Any]) -> str:
    t = data["totals"]
    rows = [(r["rep"], r["assigned"], r["claimed"], r["claimed_within_sla"],
             _pct(r["claimed_within_sla"], r["claimed"]), _secs(r["median_time_to_claim"])) for r in data["reps"]]
    rows.append(("all", t["assigned"], t["claimed"], t["claimed_within_sla"],
                 _pct(t["claimed_within_sla"], t["claimed"]), _secs(t["median_time_to_claim"])))
    sla = _secs(data["first_contact_sla_seconds"])
    lines = [f"from {data['since']} to {data['until']} (first-contact SLA {sla})", "",
             table(rows, ["rep", "assigned", "claimed", f"within {sla}", "share", "median to claim"]), ""]
    s = data["speed_to_lead"]
    lines.append(f"speed to lead over {s['hot_episodes']} hot episode(s)"
                 + (f", {s['queued_after_hours']} queued after hours (not counted as system delay)"
                    if s["queued_after_hours"] else ""))
    lines.append(table([(name, d["count"], _secs(d["median"]), _secs(d["p90"]), _secs(d["max"]))
                        for name, d in (("system delay (event received -> first alert)", s["system_delay"]),
                                        ("human delay (first alert -> claim)", s["human_delay"]))],
                       ["", "count", "median", "p90", "max"]))
    return "\n".join(lines)


def _pct(n: int, d: int) -> str:
    return f"{n / d:.0%}" if d else "-"


# ---------------------------------------------------------------- text tables


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Plain aligned columns with a rule under the headers."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for i, r in enumerate(cells):
        out.append("  ".join(c.ljust(widths[j]) for j, c in enumerate(r)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
