"""The delivery lifecycle (:mod:`worker.services.deliveries`), settled: the provider's word on a delivery, and
for a "maybe sent" no word has settled, asking the provider.

A status callback or an event settles a delivery (:func:`settle`), read by its channel's own rules;
a failure is failed over to the rep's other channel. A delivery is left ``maybe_sent`` by a timeout,
a dropped connection, a 5xx or a worker that died mid-send; past ``SETTLE_AFTER`` without a word the
provider is asked (:func:`settle_maybe_sent`), and what it has is what happened. When it confirms it
never took the message and the step still stands, the message goes out then, once: a crash never
silently swallows an alert.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, cast

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from routing import alerting
from routing.cadence import in_cadence
from routing.kinds import CLAIMABLE_STEPS, DeliveryStatus, StepStatus
from worker.adapters import db
from worker.adapters.channels import NotSupported, Sent, TransportError, read_status
from worker.adapters.channels.twilio_http import FIND_LIMIT
from worker.services import alert_text
from worker.services.deliveries import (
    Delivery,
    assignment_facts,
    disable_channel,
    lead_facts,
    plan_recipients,
    send_and_record,
    step_facts,
    transaction,
)
from worker.services.pause import is_paused

if TYPE_CHECKING:
    from worker.adapters.runtime import Runtime

log = logging.getLogger("leadrouter.alerts")

# A status callback normally comes within seconds; a request given up on may still be taken by the provider
# a few seconds later. Past this, the provider is asked, and what it has is what happened.
SETTLE_AFTER = timedelta(seconds=8)
SETTLE_WITHIN = timedelta(hours=24)      # older than that, the provider's own records are what is left
SETTLE_AGAIN = timedelta(minutes=10)     # a lookup that could not tell is repeated this much later
SETTLE_BATCH = 50
_LINK = re.compile(r"/claim/([A-Za-z0-9_.-]+)")
NOT_TAKEN = "not sent: the provider took no message for this number then"


def settle(rt: Runtime, provider_id: str, status: str, error_code: str | None, *, kind_hint: str,
           delivery_id: str | None = None, by: str = "callback") -> None:
    """Record a provider's word on a delivery; failed deliveries fail over to the other channel.

    ``delivery_id`` (from the status callback URL, which the provider signs) finds
    a delivery whose request timed out before the provider's answer named the
    message: a "maybe sent" one learns its provider id here. ``by`` says where the
    word came from (``callback``, or ``lookup`` when we asked), for ``explain``. An SMS
    found taken settles its twin, the same step's email to the same person still
    without an answer: SendGrid cannot be asked, and both left in the same instant."""
    if "\x00" in provider_id:   # no delivery has such an id, and PostgreSQL cannot even compare one
        return
    now = rt.now()
    failed_over: list[int] = []
    report = read_status(kind_hint, status, error_code)
    with rt.sessions.begin() as session:
        d = session.scalar(select(db.Delivery).where(db.Delivery.provider_id == provider_id).limit(1))
        if d is None and delivery_id is not None and re.fullmatch(r"[0-9]{1,18}", delivery_id):
            d = session.get(db.Delivery, int(delivery_id))
            if d is None or d.provider_id is not None or d.channel != kind_hint:
                return
            d.provider_id = provider_id
        if d is None:
            return
        d.updated_at = now
        unanswered = d.status in (DeliveryStatus.PENDING, DeliveryStatus.MAYBE_SENT)
        if unanswered and d.resent_at is None:
            d.settled_by = by
        if report.outcome == "delivered":
            d.status = DeliveryStatus.DELIVERED
        elif report.outcome == "failed":
            if d.status == DeliveryStatus.FAILED:
                return   # already settled: no second fail-over
            d.status = DeliveryStatus.FAILED
            d.error = f"{status} {error_code or ''}".strip()
            if report.recipient_error and d.recipient != d.to:
                d.error_kind = "recipient"
                disable_channel(session, d.recipient, d.channel, d.error, now)
            if d.channel == "voice":
                d.error, d.error_kind = f"call {status}", "transient"   # as its status callback would have
            else:
                failed_over.append(d.id)
        elif report.outcome == "sent" and unanswered:
            d.status = DeliveryStatus.SENT
            d.sent_at = d.sent_at or now
        if unanswered and d.channel == "sms" and d.step_id is not None \
                and d.status in (DeliveryStatus.SENT, DeliveryStatus.DELIVERED):
            session.execute(update(db.Delivery)
                            .where(db.Delivery.step_id == d.step_id, db.Delivery.recipient == d.recipient,
                                   db.Delivery.channel == "email", db.Delivery.status == DeliveryStatus.MAYBE_SENT)
                            .values(status=DeliveryStatus.SENT, settled_by="twin", updated_at=now))
    if failed_over:
        from worker.app import FAILOVER, app

        try:   # the other channel goes out from an alert worker, never from here
            app.send_task(FAILOVER, args=[failed_over], queue="alerts")
        except Exception:   # Redis away: the failure is recorded, and the cadence's next step still comes
            log.exception("fail-over of deliveries %s could not be queued", failed_over)


def settle_maybe_sent(rt: Runtime, now: datetime | None = None) -> int:
    """Deliveries left "maybe sent" that no status callback has settled: ask the provider. Returns how
    many were settled.

    A message with a provider id is looked up by it. One without (its answer never
    came) is found among the messages the provider took for that number around
    the time it was sent, by the claim link it carries: that link names the rep,
    the lead, the assignment and, through its expiry, the moment it was written.
    Found, it is settled as the provider has it. Not found, the provider confirms it
    never took it: if the step still stands it is sent then, once (:func:`_send_unsent`)."""
    now = now or rt.now()
    with rt.sessions.begin() as session:
        rows = session.execute(
            select(db.Delivery.id, db.Delivery.channel, db.Delivery.to, db.Delivery.recipient, db.Delivery.lead_id,
                   db.Delivery.provider_id, db.Delivery.created_at, db.Delivery.updated_at, db.Delivery.resent_at,
                   db.AlertStep.assignment_id)
            .outerjoin(db.AlertStep, db.AlertStep.id == db.Delivery.step_id)
            .where(db.Delivery.status == DeliveryStatus.MAYBE_SENT, db.Delivery.channel.in_(["sms", "voice"]),
                   db.Delivery.updated_at <= now - SETTLE_AFTER, db.Delivery.created_at >= now - SETTLE_WITHIN,
                   # without a provider id, only a message with a claim link can be recognized, and a call
                   # by its number and time
                   or_(db.Delivery.provider_id.is_not(None),
                       and_(db.Delivery.channel == "voice", db.Delivery.step_id.is_not(None)),
                       and_(db.AlertStep.kind.in_(sorted(CLAIMABLE_STEPS)), db.AlertStep.assignment_id.is_not(None))))
            .order_by(db.Delivery.id).limit(SETTLE_BATCH)).all()
    settled = 0
    for delivery_id, kind, to, recipient, lead_id, provider_id, created_at, updated_at, resent_at, assignment_id \
            in rows:
        channel = rt.channel(kind)
        written = resent_at or created_at     # the claim link's expiry counts from when the message was composed
        try:
            if provider_id:
                status = channel.fetch_status(provider_id)
                found = Sent(provider_id, status, "") if status else None
                unclear = False
            elif kind == "voice":
                found, unclear = _call_taken(rt, channel, to, written - timedelta(seconds=60),
                                             updated_at + timedelta(minutes=2))
            else:
                taken = channel.sent_between(to, written - timedelta(seconds=60), updated_at + timedelta(minutes=2))
                expected = int((written + rt.rules.alerts.claim_token_ttl).timestamp())
                found = next((m for m in taken if _carries_link(m.text, rt.settings.secret_key, recipient, lead_id,
                                                                assignment_id, expected)), None)
                # a full page of others may hide ours behind it: then the list does not tell
                unclear = found is None and len(taken) >= FIND_LIMIT
        except NotSupported:   # this process's channel cannot ask (say, the console): ask again later, and
            unclear, found = True, None   # let the rest of the batch through meanwhile
        except TransportError as err:
            log.warning("delivery %s: could not ask %s about it: %s", delivery_id, kind, err.message)
            continue
        if found is not None:
            settle(rt, found.provider_id, found.status, None, kind_hint=kind, delivery_id=str(delivery_id), by="lookup")
            settled += 1
        elif not unclear:
            settled += _send_unsent(rt, delivery_id, now)
        else:
            with rt.sessions.begin() as session:
                session.execute(update(db.Delivery).where(db.Delivery.id == delivery_id,
                                                          db.Delivery.status == DeliveryStatus.MAYBE_SENT)
                                .values(updated_at=now + SETTLE_AGAIN - SETTLE_AFTER))
    return settled


def _call_taken(rt: Runtime, channel: object, to: str, since: datetime, until: datetime) -> tuple[Sent | None, bool]:
    """A "maybe sent" call without its CallSid: the oldest call Twilio took to that number in the window that
    no delivery knows as its own (a call carries no text to recognize it by; one found means it was placed,
    as a second call would ring the rep twice). Returns (the call or None, whether the list could not tell)."""
    from worker.adapters.channels.twilio_voice import TwilioVoiceChannel

    if not isinstance(channel, TwilioVoiceChannel):
        raise NotSupported("only Twilio's calls can be looked up")
    taken = channel.sent_between(to, since, until)
    sids = [c.provider_id for c in taken]
    with rt.sessions.begin() as session:
        known = set(session.scalars(select(db.Delivery.provider_id).where(db.Delivery.provider_id.in_(sids)))) \
            if sids else set()
    mine = [c for c in taken if c.provider_id not in known]
    return (mine[-1] if mine else None), (not mine and len(taken) >= FIND_LIMIT)


def _carries_link(text: str, secret: str, rep_id: str, lead_id: str, assignment_id: int | None,
                  expires: int) -> bool:
    """Whether an SMS body carries the claim link this delivery wrote (its expiry within a second or two)."""
    from worker.adapters.tokens import TokenError, verify

    for token in _LINK.findall(text):
        try:
            t = verify(secret, token, datetime.fromtimestamp(0, UTC))
        except TokenError:
            continue
        if (t.rep_id, t.lead_id, t.assignment_id) == (rep_id, lead_id, assignment_id) and abs(t.expires - expires) <= 2:
            return True
    return False


def still_stands(session: Session, step: db.AlertStep | None, assignment: db.Assignment | None,
                 lead: db.Lead | None) -> str | None:
    """Why a step's message must not go out now after all, if it must not: called off (claimed, closed,
    contacted, no longer current), alerting paused, or superseded by a later step of its cadence."""
    if step is None:
        return "no step"
    why = alerting.called_off(step_facts(step), assignment_facts(assignment), lead_facts(lead))
    if why is not None:
        return why
    if is_paused(session):
        return "alerting paused"
    if step.assignment_id is not None and in_cadence(step.kind, step.step):
        later = session.scalar(select(db.AlertStep.id).where(
            db.AlertStep.assignment_id == step.assignment_id, db.AlertStep.step > step.step,
            db.AlertStep.step < alerting.EXTRA_STEPS,
            db.AlertStep.status.in_([StepStatus.FIRING, StepStatus.DONE])).limit(1))
        if later is not None:
            return "superseded by a later step"
    return None


def _send_unsent(rt: Runtime, delivery_id: int, now: datetime) -> int:
    """The provider confirms it never took this SMS. If its step still stands, send it now, once, with its
    twins of the same step and person still without an answer (the email of a worker that died mid-send);
    otherwise record them as not sent, and why. The compare-and-set on ``resent_at`` makes one scheduler of
    two the sender, and a message sent again is never sent a third time."""
    rules = rt.rules
    again: list[Delivery] = []
    with transaction(rt) as session:
        d = session.get(db.Delivery, delivery_id)
        if d is None or d.status != DeliveryStatus.MAYBE_SENT:
            return 0
        step = session.get(db.AlertStep, d.step_id) if d.step_id is not None else None
        assignment = session.get(db.Assignment, step.assignment_id) if step and step.assignment_id else None
        lead = session.get(db.Lead, d.lead_id)
        twins = list(session.scalars(select(db.Delivery).where(
            db.Delivery.step_id == d.step_id, db.Delivery.recipient == d.recipient, db.Delivery.id != d.id,
            db.Delivery.status == DeliveryStatus.MAYBE_SENT, db.Delivery.resent_at.is_(None)))) if step else []
        why = "sent once again already" if d.resent_at is not None else still_stands(session, step, assignment, lead)
        planned = {p.channel: p for p in plan_recipients(session, rules, step, assignment)
                   if p.recipient == d.recipient} if step is not None and why is None else {}
        for row in [d, *twins]:
            if why is None and row.channel in planned:
                won = db.changed_rows(session, update(db.Delivery)
                                      .where(db.Delivery.id == row.id, db.Delivery.status == DeliveryStatus.MAYBE_SENT,
                                             db.Delivery.resent_at.is_(None))
                                      .values(resent_at=now, updated_at=now, settled_by="lookup",
                                              error=None, error_kind=None))
                if won:
                    p = planned[row.channel]
                    again.append(Delivery(row.id, p.recipient, p.channel, p.to, cast(db.AlertStep, step), assignment,
                                          cast(db.Lead, lead), p))
            elif row is d:
                db.changed_rows(session, update(db.Delivery)
                                .where(db.Delivery.id == row.id, db.Delivery.status == DeliveryStatus.MAYBE_SENT)
                                .values(status=DeliveryStatus.FAILED, error_kind="transient", updated_at=now,
                                        settled_by="lookup",
                                        error=f"{NOT_TAKEN}; not sent again: {why or 'channel switched off'}"))
        timelines = alert_text.timelines(session, [d.lead_id]) if again else {}
    if again:
        log.warning("lead %s: %d alert message(s) the provider never took sent again", d.lead_id, len(again))
        alert_text.compose(rules, rt.settings, again, timelines, now)
        send_and_record(rt, again)
    return 1
