"""Alerting policy, pure and clock-free: who hears about a cadence step and on which channels, why a
step is called off, which of a batch's alerts the hourly cap holds back, and how far a late first
alert moves its cadence's reminders.

The worker loads rows, turns them into the small values below, asks these functions, and persists
what they decided; nothing here touches the database, a provider or the clock.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from routing.cadence import escalates
from routing.config import Rep, Rules
from routing.kinds import OPENING, DeliveryStatus, MessageKind, StepKind, message_of

# A first alert this late moves its cadence's reminders along with it.
LATE_FIRST = timedelta(seconds=1)
# Steps numbered from here on are notes added to a cadence (an escalation after every channel failed).
EXTRA_STEPS = 100


@dataclass(frozen=True, slots=True)
class Step:
    """A cadence step as the policy sees it."""

    id: int
    kind: StepKind
    step: int                   # 0 = the first alert, 1.. = reminders, 100.. = extra escalations
    due_at: datetime
    lead_id: str
    assignment_id: int | None   # None for an unrouted notice


@dataclass(frozen=True, slots=True)
class Assignment:
    """The facts of an assignment a step's fate depends on."""

    id: int
    rep_id: str | None
    current: bool
    claimed_at: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class LeadState:
    """The facts of a lead a step's fate depends on."""

    id: str
    closed_at: datetime | None
    contacted_at: datetime | None


@dataclass(frozen=True, slots=True)
class Recipient:
    """One person on one channel, and the message they get for a step."""

    recipient: str          # rep id, or the address itself for an unrouted notice
    channel: str            # sms | email | console
    to: str
    kind: MessageKind
    rep_name: str
    claim_rep: str | None   # whose claim token goes in the message; None for a notice (no hourly cap)


def called_off(step: Step, assignment: Assignment | None, lead: LeadState | None) -> str | None:
    """Why a step must not alert anyone any more, if it must not: the lead closed, the assignment no
    longer current or claimed, or the lead contacted since it was assigned (a reminder is then moot;
    a first alert, an FYI or a priority note still tells the owner)."""
    if lead is None or lead.closed_at is not None:
        return "lead closed"
    if step.kind != StepKind.UNROUTED and (assignment is None or not assignment.current
                                           or assignment.claimed_at is not None):
        return "no longer current"
    if step.kind not in (StepKind.FYI, StepKind.PRIORITY, StepKind.UNROUTED) and step.step > 0 \
            and lead.contacted_at is not None and assignment is not None \
            and lead.contacted_at >= assignment.created_at:
        return "lead contacted"
    return None


def addresses(rep: Rep) -> list[tuple[str, str]]:
    """A rep's channels that have an address, in the rep's order: (channel, address)."""
    out = []
    for ch in rep.channels:
        if ch == "sms" and rep.phone:
            out.append(("sms", rep.phone))
        elif ch == "email" and rep.email:
            out.append(("email", rep.email))
        elif ch == "voice" and rep.phone:
            out.append(("voice", rep.phone))
        elif ch == "console":
            out.append(("console", rep.email or rep.phone or rep.id))
    return out


def audience(rules: Rules, kind: StepKind, step: int, rep: Rep) -> list[tuple[Rep, MessageKind]]:
    """Who a step of the rep's cadence reaches, and the message each gets: the rep (none for an
    escalation), and the manager with an escalation from ``escalate_from_retry`` on."""
    message = message_of(kind)
    if message is None:
        return []
    people = [] if kind == StepKind.ESCALATION else [(rep, message)]
    if (kind == StepKind.ESCALATION or (kind == StepKind.RETRY and escalates(step, rules.alerts))) and rep.manager:
        manager = rules.rep(rep.manager)
        if manager is not None:
            people.append((manager, MessageKind.ESCALATION))
    return people


Disabled = Callable[[str], Collection[str]]


def recipients(rules: Rules, kind: StepKind, step: int, rep_id: str | None, disabled: Disabled) -> list[Recipient]:
    """Who hears about a step, on which channels; ``disabled(rep_id)`` names a rep's switched-off channels.

    An unrouted notice goes to the ``unrouted_notify`` addresses (SMS for a phone number, email
    otherwise); any other step to the assignment's rep (and manager), nobody when the rep is gone
    from the rules."""
    if kind == StepKind.UNROUTED:
        return [Recipient(addr, "sms" if addr.startswith("+") else "email", addr, MessageKind.UNROUTED, "RevOps", None)
                for addr in rules.routing.unrouted_notify]
    rep = rules.rep(rep_id) if rep_id else None
    if rep is None:
        return []
    out = []
    for person, message in audience(rules, kind, step, rep):
        off = disabled(person.id)
        out += [Recipient(person.id, channel, to, message, person.display, person.id)
                for channel, to in addresses(person)
                if channel not in off and rules.alerts.channels.allows(message, channel)]
    return out


def held_by_cap(steps: Sequence[Iterable[Recipient]], sent_this_hour: Mapping[str, int], cap: int
                ) -> list[set[str]]:
    """For each step of a batch, in order, the reps whose alerts the hourly cap holds back.

    A step counts once per rep however many channels it uses, and the steps of one batch count
    one after another: a rep one alert under the cap gets the first step and not the second.
    Notices without a claiming rep are never held."""
    counts = dict(sent_this_hour)
    out = []
    for step in steps:
        reps = list(dict.fromkeys(r.recipient for r in step if r.claim_rep is not None))
        held = {rep for rep in reps if counts.get(rep, 0) >= cap}
        for rep in reps:
            if rep not in held:
                counts[rep] = counts.get(rep, 0) + 1
        out.append(held)
    return out


def late_firsts(steps: Iterable[Step], now: datetime) -> dict[int, timedelta]:
    """How late each cadence's first alert fires, by assignment id, for those later than ``LATE_FIRST``.

    Reminders are due at their offsets after the first alert: when it goes out late (a backlog, a
    short outage), the cadence starts that much later, so the first reminder never lands right on
    the heels of the alert it reminds of."""
    return {s.assignment_id: now - s.due_at for s in steps
            if s.kind in OPENING and s.step == 0 and s.assignment_id is not None and now - s.due_at > LATE_FIRST}


def reassign_after(last_alert_at: datetime | None, sla: timedelta, now: datetime) -> datetime | None:
    """When a cadence's reassignment, due now, may take the lead from its rep: ``None`` for now, else
    ``first_contact_sla`` after the last alert of the cadence that went out.

    Its planned time assumes every reminder went out on time. After a pause or an outage the overdue
    reminders collapse into one that goes out late, often in the very batch that holds the
    reassignment: a rep must never be reminded of a lead that leaves them in the same breath, so
    the rep gets the SLA to answer that reminder. A cadence that sent nothing waits for nothing, and
    a wait under ``LATE_FIRST`` (an on-time reminder's own sending time) is not worth a hand-back."""
    if last_alert_at is None or last_alert_at + sla - now <= LATE_FIRST:
        return None
    return last_alert_at + sla


def all_failed(outcomes: Iterable[tuple[str, DeliveryStatus]], rep_id: str | None) -> bool:
    """Whether every delivery of a step to the rep failed: then the escalation comes now, not later."""
    if rep_id is None:
        return False
    mine = [status for recipient, status in outcomes if recipient == rep_id]
    return bool(mine) and all(status == DeliveryStatus.FAILED for status in mine)
