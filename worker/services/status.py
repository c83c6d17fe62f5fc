"""``leadrouter status``: queues, hot leads open, alerts due, unrouted leads, reps, workers'
rules and outbound webhooks, as one typed result (``as_json()`` is the ``--json`` shape)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from routing.config import Rules
from routing.events import iso
from routing.leads import TRAITS_OVER_CAP
from worker.adapters import db, metrics, stream
from worker.services.availability import FOREVER
from worker.services.outbound import summary as outbound_summary
from worker.services.pause import PAUSE_KEY
from worker.services.reports import away_of, dead_letters_not_retried, open_hot_by_rep

WORKER_PREFIX = "worker:"


@dataclass(frozen=True)
class Queues:
    events_waiting: int
    fast_lane: int
    lanes: dict[str, dict[str, int]]
    dead_letters: int
    dead_letters_not_retried: int
    trait_updates_refused: int


@dataclass(frozen=True)
class RepStatus:
    rep: str
    open_hot_leads: int
    away: bool
    away_until: str | None          # None while away: until `rep back`
    away_reason: str | None
    disabled_channels: dict[str, Any]


@dataclass(frozen=True)
class WorkerStatus:
    name: str
    rules_hash: str | None
    seen_at: str | None
    current: bool
    refused_file: list[str]


@dataclass(frozen=True)
class Status:
    at: str
    paused: bool
    pause: dict[str, Any]              # the pause setting as stored: actor, reason, at
    queues: Queues
    hot_leads_open: int
    alerts_due: int
    alerts_scheduled: int
    unrouted: int
    unrouted_leads: list[str]
    reps: list[RepStatus]
    rules_hash: str | None
    rules_file: dict[str, Any]
    workers: list[WorkerStatus]
    outbound: dict[str, Any]           # worker.services.outbound.summary
    ingest_refusals: list[dict[str, Any]]

    @property
    def reps_away(self) -> list[str]:
        return [r.rep for r in self.reps if r.away]

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["reps_away"] = self.reps_away
        out["disabled_channels"] = {r.rep: r.disabled_channels for r in self.reps if r.disabled_channels}
        out["failed_webhooks"] = self.outbound["failed"]
        return out


def status(session: Session, r: redis.Redis, rules: Rules | None, now: datetime | None = None,
           rules_file: dict[str, Any] | None = None) -> Status:
    """``rules`` None: the file on disk does not load (``rules_file`` says why); the rest still shows."""
    now = now or db.now_utc()
    lanes = {lane: stream.backlog(r, lane) for lane in stream.LANES}
    open_by_rep = open_hot_by_rep(session)
    unrouted = list(session.scalars(select(db.HotEpisode.lead_id)
                                    .where(db.HotEpisode.status == "unrouted", db.HotEpisode.closed_at.is_(None))
                                    .order_by(db.HotEpisode.opened_at)))
    pause = session.get(db.Setting, PAUSE_KEY)
    pause_value = dict(pause.value) if pause is not None else {"paused": False}
    states = {s.rep_id: s for s in session.scalars(select(db.RepState))}
    away = away_of(session, now)
    rep_ids = ([rep.id for rep in rules.reps] if rules is not None
               else sorted({str(k) for k in (*states, *open_by_rep) if k}))
    reps = []
    for rep_id in rep_ids:
        s = states.get(rep_id)
        until, why = away.get(rep_id, (None, None))
        reps.append(RepStatus(rep_id, open_by_rep.get(rep_id, 0), until is not None,
                              None if until is None or until >= FOREVER else iso(until), why,
                              dict(s.disabled_channels or {}) if s is not None else {}))
    workers = [WorkerStatus(row.key.removeprefix(WORKER_PREFIX), row.value.get("rules_hash"), row.value.get("seen_at"),
                            rules is not None and row.value.get("rules_hash") == rules.hash,
                            list(row.value.get("errors") or []))
               for row in session.scalars(select(db.Setting).where(db.Setting.key.like(f"{WORKER_PREFIX}%"))
                                          .order_by(db.Setting.key))]
    try:
        refusals = metrics.latest_refusals(r, 10)
    except redis.RedisError:
        refusals = []
    queues = Queues(
        events_waiting=sum(b["waiting"] + b["pending"] for b in lanes.values()),
        fast_lane=lanes[stream.FAST]["waiting"] + lanes[stream.FAST]["pending"],
        lanes=lanes,
        dead_letters=int(session.scalar(select(func.count()).select_from(db.DeadLetter)) or 0),
        dead_letters_not_retried=dead_letters_not_retried(session),
        trait_updates_refused=int(session.scalar(select(func.count()).select_from(db.DeadLetter)
                                                 .where(db.DeadLetter.error.like(f"{TRAITS_OVER_CAP}%"))) or 0))
    pending = select(func.count()).select_from(db.AlertStep).where(db.AlertStep.status == "pending")
    return Status(
        at=iso(now) or "", paused=bool(pause_value.get("paused")), pause=pause_value, queues=queues,
        hot_leads_open=sum(open_by_rep.values()),
        alerts_due=int(session.scalar(pending.where(db.AlertStep.due_at <= now)) or 0),
        alerts_scheduled=int(session.scalar(pending) or 0),
        unrouted=len(unrouted), unrouted_leads=unrouted[:50], reps=reps,
        rules_hash=rules.hash if rules is not None else None, rules_file=rules_file or {"ok": True, "errors": []},
        workers=workers, outbound=outbound_summary(session, now), ingest_refusals=refusals)



