"""What the service reports: ``leadrouter report`` and the board's figures, as typed results.

One query layer: ``leadrouter report`` and the board (``/board``) read the same
functions, so their figures are the same. Every result is a frozen dataclass;
``as_json()`` gives the ``--json`` shape (SPEC §6), :mod:`worker.services.tables` prints
them for a terminal, :mod:`worker.entrypoints.board` draws them. ``status`` (:mod:`worker.services.status`)
reads its per-rep figures from here too. Durations are seconds.

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

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from routing.config import Rules
from routing.events import iso
from routing.hours import is_working, parse_hours
from worker.adapters import db
from worker.services.assign import routing_state
from worker.services.availability import AWAY_KEY, FOREVER
from worker.services.pause import is_paused

SENT = ("sent", "maybe_sent", "delivered")


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
    """The split over the hot episodes opened at or after ``start``; per rep, over the episodes
    first routed to them and alerted.

    The database folds each episode's assignments, alert steps and deliveries into one row (its
    first assignment, first claim, first alert accepted): the board reads a day of episodes every
    10 s, and a row per episode is what it can afford."""
    in_window = db.HotEpisode.opened_at >= start
    E, A, S, D = db.HotEpisode, db.Assignment, db.AlertStep, db.Delivery
    total = int(session.scalar(select(func.count()).select_from(E).where(in_window)) or 0)
    rows = session.execute(
        select(E.lead_id, E.event_received_at, E.status, func.min(A.id), func.min(A.claimed_at), func.min(D.sent_at))
        .join(A, A.episode_id == E.id)
        .outerjoin(S, S.assignment_id == A.id)
        .outerjoin(D, (D.step_id == S.id) & D.status.in_(SENT) & D.sent_at.is_not(None))
        .where(in_window).group_by(E.id, E.lead_id, E.event_received_at, E.status)).all()
    firsts = {aid: (rep, route) for aid, rep, route in session.execute(
        select(A.id, A.rep_id, A.route).where(A.id.in_(select(func.min(A.id)).join(E, E.id == A.episode_id)
                                                       .where(in_window).group_by(A.episode_id))))}
    contacted_ids = {lead_id for lead_id, _, status, *_ in rows if status == "contacted"}
    contacted = dict(session.execute(select(db.Lead.id, db.Lead.contacted_at)
                                     .where(db.Lead.id.in_(contacted_ids))).all()) if contacted_ids else {}
    system: list[float] = []
    human: list[float] = []
    contact: list[float] = []
    per_rep: dict[str, tuple[list[float], list[float], list[float], list[int]]] = {}
    queued = 0
    for lead_id, received, _status, first_id, claim_raw, sent_raw in rows:
        rep, route = firsts.get(first_id, (None, None))
        first_alert = _aware(sent_raw) if sent_raw is not None else None
        claim = _aware(claim_raw) if claim_raw is not None else None
        mine = per_rep.setdefault(rep, ([], [], [], [0])) if rep and first_alert is not None else None
        if mine is not None:
            mine[3][0] += 1
        if route == "queued":
            queued += 1   # waiting for a shift is policy, not system delay
        elif first_alert is not None and received is not None:
            system.append(max(0.0, (first_alert - received).total_seconds()))
            if mine is not None:
                mine[0].append(system[-1])
        contact_at = contacted.get(lead_id)
        ack = claim or contact_at
        if ack is not None and first_alert is not None:
            human.append(max(0.0, (ack - first_alert).total_seconds()))
            if mine is not None:
                mine[1].append(human[-1])
        if claim is not None and contact_at is not None and contact_at >= claim:
            contact.append((contact_at - claim).total_seconds())
            if mine is not None:
                mine[2].append(contact[-1])
    return SpeedToLead(
        hot_episodes=total, queued_after_hours=queued, system_delay=Spread.of(system),
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


# ---------------------------------------------------------------- shared with status


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


# ---------------------------------------------------------------- the board


@dataclass(frozen=True)
class DeliveryState:
    step: int
    kind: str
    recipient: str
    channel: str
    status: str


@dataclass(frozen=True)
class OpenLead:
    lead_id: str
    name: str | None
    company: str | None
    score: float
    tier: str
    signals: list[str]
    rep: str | None
    route: str
    assigned_at: str
    next_step: str | None            # the kind of the next pending step (retry, reassign, ...)
    next_due_at: str | None
    sla_due_at: str                  # cadence start + first-contact SLA
    deliveries: list[DeliveryState]


@dataclass(frozen=True)
class RepBoard:
    rep: str
    name: str
    in_hours: bool
    away: bool
    away_until: str | None
    away_reason: str | None
    open_leads: int
    max_open: int | None
    week_assigned: int               # round-robin count (after any credit back)
    week_credited: int
    week_share: float | None
    weight_share: float
    disabled_channels: dict[str, Any]


@dataclass(frozen=True)
class Today:
    since: str
    speed_to_lead: SpeedToLead
    cadence_lateness: Spread         # re-alerts fired after their due time
    unrouted: int
    dead_letters: int


@dataclass(frozen=True)
class Board:
    at: str
    paused: bool
    open_hot_leads: int              # all of them; ``leads`` holds the most urgent ``BOARD_ROWS``
    leads: list[OpenLead]
    reps: list[RepBoard]
    today: Today | None              # None: a refresh of the live part only

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.today is not None:
            out["today"]["speed_to_lead"] = _json(self.today.speed_to_lead)
        return out


BOARD_ROWS = 200
TODAY = timedelta(hours=24)


def board(session: Session, rules: Rules, now: datetime | None = None, *, today: bool = True,
          window: timedelta = TODAY) -> Board:
    """Everything ``/board`` shows, bounded: the ``BOARD_ROWS`` open hot leads whose cadence started
    first, every rep, and (``today``) the last ``window``, as ``report --since 24h`` has it. The
    board refreshes the leads and reps every 2 s and the day's figures, which scan the day's
    episodes, every 10 s."""
    now = now or db.now_utc()
    # "current = true" (not "IS true"): what lets PostgreSQL use the partial index ix_assignments_open_start.
    # A closed lead's episodes are closed with it (worker.services.operator.close_lead): the episode's status says it.
    unclaimed = (db.Assignment.current == True, db.Assignment.claimed_at.is_(None),  # noqa: E712
                 db.Assignment.rep_id.is_not(None), db.HotEpisode.status == "open")
    open_assignments = select(db.Assignment.id).join(db.HotEpisode, db.HotEpisode.id == db.Assignment.episode_id) \
        .where(*unclaimed)
    A, L, S, D = db.Assignment, db.Lead, db.AlertStep, db.Delivery   # plain columns: no objects to build
    rows = session.execute(select(A.id, A.rep_id, A.route, A.created_at, A.start_at, L.id, L.traits, L.breakdown,
                                  L.score, L.tier).join(L, L.id == A.lead_id)
                           .where(A.id.in_(open_assignments.order_by(A.start_at, A.id).limit(BOARD_ROWS)
                                           .scalar_subquery()))
                           .order_by(A.start_at, A.id)).all()
    total = int(session.scalar(select(func.count()).select_from(open_assignments.subquery())) or 0)
    ids = [row[0] for row in rows]
    steps: dict[int, list[Any]] = {}
    if ids:
        for st in session.execute(select(S.id, S.assignment_id, S.step, S.kind, S.status, S.due_at)
                                  .where(S.assignment_id.in_(ids)).order_by(S.due_at, S.id)):
            steps.setdefault(st.assignment_id or 0, []).append(st)
    step_ids = [st.id for lst in steps.values() for st in lst if st.status != "pending"]
    deliveries: dict[int, list[Any]] = {}
    for i in range(0, len(step_ids), 500):
        for d in session.execute(select(D.step_id, D.recipient, D.channel, D.status)
                                 .where(D.step_id.in_(step_ids[i:i + 500])).order_by(D.id)):
            deliveries.setdefault(d.step_id or 0, []).append(d)
    sla = rules.alerts.first_contact_sla
    leads = []
    for aid, rep_id, route, created_at, start_at, lead_id, traits, breakdown, score, tier in rows:
        mine = steps.get(aid, [])
        nxt = next((st for st in mine if st.status == "pending"), None)
        traits = traits or {}
        company = traits["company"] if isinstance(traits.get("company"), dict) else {}
        events = (breakdown or {}).get("events") or {}
        top = sorted(((v.get("points", 0), k) for k, v in events.items() if isinstance(v, dict)), reverse=True)[:3]
        leads.append(OpenLead(
            lead_id, _text(traits.get("name")), _text(company.get("name")), round(score, 1), tier,
            [k for p, k in top if p > 0], rep_id, route, iso(created_at) or "",
            nxt.kind if nxt else None, iso(nxt.due_at) if nxt else None, iso(start_at + sla) or "",
            [DeliveryState(st.step, st.kind, d.recipient, d.channel, d.status)
             for st in mine for d in deliveries.get(st.id, [])]))

    state = routing_state(session, rules, None, now)
    away = away_of(session, now)
    disabled = {s.rep_id: dict(s.disabled_channels or {}) for s in session.scalars(select(db.RepState))}
    week = {r.id: sum(state.rep(r.id).assigned_7d.values()) for r in rules.reps}
    weights = sum(r.weight for r in rules.reps) or 1
    reps = []
    for r in rules.reps:
        rs = state.rep(r.id)
        until, why = away.get(r.id, (None, None))
        reps.append(RepBoard(
            r.id, r.display, is_working(parse_hours(r.hours), r.timezone, r.holidays, now), until is not None,
            None if until is None or until >= FOREVER else iso(until), why, rs.open_leads, r.max_open,
            week[r.id], sum(rs.credited_7d.values()),
            round(week[r.id] / sum(week.values()), 3) if sum(week.values()) else None,
            round(r.weight / weights, 3), disabled.get(r.id, {})))

    if not today:
        return Board(iso(now) or "", is_paused(session), total, leads, reps, None)
    return Board(iso(now) or "", is_paused(session), total, leads, reps, day(session, now, window))


def day(session: Session, now: datetime, window: timedelta = TODAY) -> Today:
    """The board's "today": speed to lead, the cadence's lateness, unrouted leads, dead letters."""
    start = now - window
    late = [max(0.0, (_aware(fired) - _aware(due)).total_seconds()) for fired, due in session.execute(
        select(db.AlertStep.fired_at, db.AlertStep.due_at)
        .where(db.AlertStep.fired_at >= start, db.AlertStep.step.between(1, 99))).all() if fired is not None]
    unrouted = int(session.scalar(select(func.count()).select_from(db.HotEpisode)
                                  .where(db.HotEpisode.status == "unrouted", db.HotEpisode.closed_at.is_(None))) or 0)
    return Today(iso(start) or "", speed_to_lead(session, start), Spread.of(late), unrouted,
                 dead_letters_not_retried(session))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
