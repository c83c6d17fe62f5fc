"""What the service shows: ``status``, ``report`` and the board's figures, as typed results.

One query layer: ``leadrouter report`` and the board (``/board``) read the same
functions, so their figures are the same. Every result is a frozen dataclass;
``as_json()`` gives the ``--json`` shape (SPEC §6), and :mod:`worker.tables` prints
them for a terminal. Durations are seconds.

Speed to lead is split in two (SPEC §6, issue "See it live"):

- **system delay**: the crossing event received -> the first alert of the episode
  accepted by a provider (a delivery ``sent``, ``maybe_sent`` or ``delivered``);
  an episode queued for a rep's next shift waits by policy and is left out;
- **human delay**: that first alert -> the acknowledgement (the first claim, or the
  first ``Lead Contacted`` when nobody claimed); and **contact delay**: the claim ->
  the first contact, where one was recorded.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from routing.config import Rules
from routing.events import iso
from routing.leads import TRAITS_OVER_CAP
from worker import db, metrics, stream
from worker.operator import AWAY_KEY, FOREVER
from worker.ops import PAUSE_KEY
from worker.outbound import summary as outbound_summary

SENT = ("sent", "maybe_sent", "delivered")
WORKER_PREFIX = "worker:"


# ---------------------------------------------------------------- shared shapes


@dataclass(frozen=True)
class Spread:
    """count, median, p90 and max of some durations (None when there are none)."""

    count: int = 0
    median: float | None = None
    p90: float | None = None
    max: float | None = None

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            return cls()
        s = sorted(values)
        p90 = s[min(len(s) - 1, max(0, int(round(0.9 * len(s) + 0.5)) - 1))]
        return cls(len(s), round(statistics.median(s), 3), round(p90, 3), round(s[-1], 3))


def _median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _json(obj: Any) -> Any:
    return {k: v for k, v in asdict(obj).items() if not k.startswith("_")}


# ---------------------------------------------------------------- speed to lead


@dataclass(frozen=True)
class RepSpeed:
    """Per rep, over the episodes whose first alert went to them."""

    rep: str
    alerted: int
    system_delay_median: float | None
    human_delay_median: float | None
    contact_delay_median: float | None


@dataclass(frozen=True)
class SpeedToLead:
    hot_episodes: int
    queued_after_hours: int
    system_delay: Spread
    human_delay: Spread
    contact_delay: Spread
    by_rep: list[RepSpeed]
    # the durations themselves, for the board's histogram (not part of ``report --json``)
    _system: tuple[float, ...] = field(default=(), repr=False)
    _human: tuple[float, ...] = field(default=(), repr=False)


def first_sent_by_assignment(session: Session, assignment_ids: Sequence[int]) -> dict[int, datetime]:
    """When a provider first accepted an alert of each assignment."""
    out: dict[int, datetime] = {}
    ids = list(assignment_ids)
    for i in range(0, len(ids), 500):   # a parameter list each database takes
        rows = session.execute(
            select(db.AlertStep.assignment_id, func.min(db.Delivery.sent_at))
            .join(db.Delivery, db.Delivery.step_id == db.AlertStep.id)
            .where(db.AlertStep.assignment_id.in_(ids[i:i + 500]), db.Delivery.sent_at.is_not(None),
                   db.Delivery.status.in_(SENT))
            .group_by(db.AlertStep.assignment_id)).all()
        for aid, sent in rows:
            if aid is not None and sent is not None:
                out[aid] = _aware(sent)
    return out


def _aware(value: Any) -> datetime:
    # min() over the column type comes back as the raw stored value on SQLite
    at = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def speed_to_lead(session: Session, start: datetime) -> SpeedToLead:
    """The split over the hot episodes opened at or after ``start``."""
    episodes = list(session.scalars(select(db.HotEpisode).where(db.HotEpisode.opened_at >= start)
                                    .order_by(db.HotEpisode.id)))
    by_episode: dict[int, list[db.Assignment]] = {}
    ep_ids = [e.id for e in episodes]
    for i in range(0, len(ep_ids), 500):
        for a in session.scalars(select(db.Assignment).where(db.Assignment.episode_id.in_(ep_ids[i:i + 500]))
                                 .order_by(db.Assignment.id)):
            by_episode.setdefault(a.episode_id or 0, []).append(a)
    sent = first_sent_by_assignment(session, [a.id for lst in by_episode.values() for a in lst])
    contacted = dict(session.execute(select(db.Lead.id, db.Lead.contacted_at)
                                     .where(db.Lead.id.in_({e.lead_id for e in episodes if e.status == "contacted"})))
                     .all()) if any(e.status == "contacted" for e in episodes) else {}
    system: list[float] = []
    human: list[float] = []
    contact: list[float] = []
    per_rep: dict[str, tuple[list[float], list[float], list[float], list[int]]] = {}
    queued = 0
    for ep in episodes:
        lst = by_episode.get(ep.id, [])
        if not lst:
            continue
        alerts = sorted((sent[a.id], a) for a in lst if a.id in sent)
        first_alert, alerted = (alerts[0][0], alerts[0][1].rep_id) if alerts else (None, None)
        mine = per_rep.setdefault(alerted or "", ([], [], [], [0])) if alerted else None
        if mine is not None:
            mine[3][0] += 1
        if lst[0].route == "queued":
            queued += 1   # waiting for a shift is policy, not system delay
        elif first_alert is not None and ep.event_received_at is not None:
            system.append(max(0.0, (first_alert - ep.event_received_at).total_seconds()))
            if mine is not None:
                mine[0].append(system[-1])
        claims = [a.claimed_at for a in lst if a.claimed_at is not None]
        contact_at = contacted.get(ep.lead_id)
        ack = min(claims) if claims else contact_at
        if ack is not None and first_alert is not None:
            human.append(max(0.0, (ack - first_alert).total_seconds()))
            if mine is not None:
                mine[1].append(human[-1])
        if claims and contact_at is not None and contact_at >= min(claims):
            contact.append((contact_at - min(claims)).total_seconds())
            if mine is not None:
                mine[2].append(contact[-1])
    return SpeedToLead(
        hot_episodes=len(episodes), queued_after_hours=queued, system_delay=Spread.of(system),
        human_delay=Spread.of(human), contact_delay=Spread.of(contact),
        by_rep=[RepSpeed(rep, n[0], _median(s), _median(h), _median(c)) for rep, (s, h, c, n) in sorted(per_rep.items())],
        _system=tuple(system), _human=tuple(human))


# ---------------------------------------------------------------- report


@dataclass(frozen=True)
class RepReport:
    rep: str
    assigned: int = 0
    claimed: int = 0
    claimed_within_sla: int = 0
    median_time_to_claim: float | None = None


@dataclass(frozen=True)
class Totals:
    assigned: int
    claimed: int
    claimed_within_sla: int
    median_time_to_claim: float | None


@dataclass(frozen=True)
class Report:
    since: str
    until: str
    first_contact_sla_seconds: float
    reps: list[RepReport]
    totals: Totals
    speed_to_lead: SpeedToLead

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["speed_to_lead"] = _json(self.speed_to_lead)
        return out


def report(session: Session, rules: Rules, since: timedelta, now: datetime | None = None) -> Report:
    """Per rep: assigned, claimed, claimed within the SLA, median time to claim; and the speed-to-lead
    split (see the module docstring), over the last ``since``."""
    now = now or db.now_utc()
    start = now - since
    sla = rules.alerts.first_contact_sla.total_seconds()
    assignments = list(session.scalars(select(db.Assignment)
                                       .where(db.Assignment.created_at >= start, db.Assignment.rep_id.is_not(None))
                                       .order_by(db.Assignment.id)))
    first_sent = first_sent_by_assignment(session, [a.id for a in assignments])
    counts: dict[str, list[int]] = {}
    waits: dict[str, list[float]] = {}
    for a in assignments:
        rep_id = a.rep_id or ""
        row = counts.setdefault(rep_id, [0, 0, 0])
        row[0] += 1
        if a.claimed_at is None:
            continue
        row[1] += 1
        alerted = first_sent.get(a.id) or a.start_at
        wait = max(0.0, (a.claimed_at - alerted).total_seconds())
        waits.setdefault(rep_id, []).append(wait)
        row[2] += wait <= sla
    order = {r.id: i for i, r in enumerate(rules.reps)}
    reps = [RepReport(rep, n[0], n[1], n[2], _median(waits.get(rep, [])))
            for rep, n in sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))]
    all_waits = [w for lst in waits.values() for w in lst]
    totals = Totals(sum(r.assigned for r in reps), sum(r.claimed for r in reps),
                    sum(r.claimed_within_sla for r in reps), _median(all_waits))
    return Report(iso(start) or "", iso(now) or "", sla, reps, totals, speed_to_lead(session, start))


# ---------------------------------------------------------------- status


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
    outbound: dict[str, Any]           # worker.outbound.summary
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


def open_hot_by_rep(session: Session) -> dict[str, int]:
    """Unclaimed current assignments of open episodes of leads not closed, per rep."""
    rows = session.execute(
        select(db.Assignment.rep_id, func.count())
        .join(db.HotEpisode, db.HotEpisode.id == db.Assignment.episode_id)
        .join(db.Lead, db.Lead.id == db.Assignment.lead_id)
        .where(db.Assignment.current.is_(True), db.Assignment.claimed_at.is_(None),
               db.Assignment.rep_id.is_not(None), db.HotEpisode.status == "open", db.Lead.closed_at.is_(None))
        .group_by(db.Assignment.rep_id)).all()
    return {str(rep): int(n) for rep, n in rows}


def away_of(session: Session, now: datetime) -> dict[str, tuple[datetime, str | None]]:
    """Reps away at ``now``: when the away ends (year 9999: until `rep back`) and why."""
    notes = {row.key: row.value for row in session.scalars(select(db.Setting)
                                                             .where(db.Setting.key.like(AWAY_KEY.format("%"))))}
    out = {}
    for s in session.scalars(select(db.RepState).where(db.RepState.away_until > now)):
        if s.away_until is not None:
            out[s.rep_id] = (s.away_until, (notes.get(AWAY_KEY.format(s.rep_id)) or {}).get("reason"))
    return out


def dead_letters_not_retried(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(db.DeadLetter)
                              .where(db.DeadLetter.retried_at.is_(None))) or 0)


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

