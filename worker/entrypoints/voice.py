"""Voice alerts, the service side: the call's TwiML, the rep's keypress, the bridge, the call's fate.

The flow of one voice delivery (each request signed by Twilio and checked against
``LEADROUTER_PUBLIC_URL`` like the SMS webhooks; the delivery id is in the signed query):

- ``POST /webhooks/twilio/voice``: the rep answered. A voicemail (answering-machine detection)
  is hung up on and counts as a failed attempt; a person hears the lead and the menu (``<Gather>``).
- ``POST /webhooks/twilio/voice/gather``: 1 claims through the same compare-and-set as SMS and
  the claim page, then bridges with ``<Dial>`` to the lead's E.164 phone from the caller id
  (unless quiet hours hold in the lead's zone); 2 passes; 3 reads it again.
- ``POST /webhooks/twilio/voice/status``: the rep's leg. No answer, busy, failed, or a
  machine: a failed attempt on the voice channel for that step, and the cadence goes on.
- ``POST /webhooks/twilio/voice/bridge``: the lead's leg. Completed after at least
  ``voice.contact_after``: first contact, recorded as ``Lead Contacted`` records it.
- ``POST /webhooks/twilio/voice/dial``: the bridge ended; the rep is told how.

Callbacks are deduplicated by ``CallSid`` (and status): a replay has no second effect.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from twilio.twiml.voice_response import VoiceResponse

from routing.config import Rules
from routing.kinds import DeliveryStatus, message_of
from routing.voice import MENU, NO_INPUT, Keypress, bridge, is_contact, keypress, spoken_summary, unanswered
from worker.adapters import db
from worker.adapters.channels.base import mask_phone
from worker.adapters.channels.twilio_voice import voice_url
from worker.adapters.db import now_utc
from worker.adapters.runtime import Runtime, get_runtime
from worker.adapters.settings import Settings
from worker.adapters.voice_channel import caller_ids
from worker.entrypoints.http_common import (
    REFUSED,
    STR,
    TWILIO_SIGNATURE,
    dedup_key,
    form_body_doc,
    in_db_thread,
    remember,
)
from worker.entrypoints.webhooks import signed_twilio_form
from worker.services.claims import claim, current_assignment, pass_lead

log = logging.getLogger("leadrouter.voice")
router = APIRouter()

GATHER_SECONDS = 8
DIAL_SECONDS = 30
_ID = re.compile(r"[0-9]{1,18}")


# ---------------------------------------------------------------- the routes

_TWIML: dict[int | str, dict[str, Any]] = {200: {"description": "TwiML for the call.", "content": {"application/xml": {"schema": STR}}}}
_CALL_FORM = form_body_doc({"CallSid": STR, "CallStatus": STR, "From": STR, "To": STR, "AnsweredBy": STR,
                         "Digits": STR, "CallDuration": STR, "ParentCallSid": STR}, ["CallSid"])
_OPENAPI = {"parameters": [TWILIO_SIGNATURE, {"name": "delivery_id", "in": "query", "required": True,
                                               "schema": STR}], "requestBody": _CALL_FORM}


def _xml(resp: VoiceResponse) -> Response:
    return Response(str(resp), media_type="application/xml")


def _bad(text: str) -> Response:
    return Response(text, status_code=400, media_type="text/plain")


async def _signed(request: Request, path: str) -> tuple[dict[str, str], int] | Response:
    params = await signed_twilio_form(request, path)
    if isinstance(params, Response):
        return params
    delivery_id = request.query_params.get("delivery_id", "")
    if not params.get("CallSid") or not _ID.fullmatch(delivery_id):
        return _bad("CallSid and delivery_id are required")
    return params, int(delivery_id)


def _route(path: str, summary: str, work: Callable[[dict[str, str], int], Response]) -> None:
    async def endpoint(request: Request) -> Response:
        got = await _signed(request, path)
        if isinstance(got, Response):
            return got
        return await in_db_thread(functools.partial(work, *got))

    endpoint.__name__ = "twilio_voice_" + (path.rsplit("/", 1)[-1] or "twiml")
    router.add_api_route(path, endpoint, methods=["POST"], tags=["webhooks"], summary=summary,
                         response_class=Response, openapi_extra=_OPENAPI,
                         responses={**_TWIML, 400: {"description": "CallSid or delivery_id missing."}, **REFUSED})


# ---------------------------------------------------------------- what each request does


class _Call:
    """One voice delivery as a request about it finds it, in the request's transaction."""

    def __init__(self, session: Session, delivery: db.Delivery, now: datetime) -> None:
        self.session, self.d, self.now = session, delivery, now
        self.step = session.get(db.AlertStep, delivery.step_id) if delivery.step_id else None
        self.lead = session.get(db.Lead, delivery.lead_id)
        self.assignment = session.get(db.Assignment, self.step.assignment_id) \
            if self.step is not None and self.step.assignment_id else None

    def trace(self, kind: str, **detail: Any) -> None:
        self.session.add(db.Trace(lead_id=self.d.lead_id, at=self.now, kind=kind, actor=self.d.recipient,
                                  detail={"delivery": self.d.id, **detail}))


def _find(session: Session, delivery_id: int, call_sid: str, *, parent: bool = False) -> db.Delivery | None:
    """The voice delivery the signed URL names, if this call is its call. The call's answer may come
    after its TwiML is fetched: a delivery without a provider id yet takes this CallSid."""
    d = session.get(db.Delivery, delivery_id)
    if d is None or d.channel != "voice" or "\x00" in call_sid:
        return None
    if d.provider_id is None and not parent:
        d.provider_id = call_sid
    return d if d.provider_id == call_sid else None


def _fail(call: _Call, reason: str) -> None:
    """A call nobody took: a failed attempt on the voice channel for this step (the cadence goes on)."""
    d = call.d
    if d.status == DeliveryStatus.FAILED:
        return
    d.status, d.error, d.error_kind, d.updated_at = DeliveryStatus.FAILED, f"call {reason}", "transient", call.now
    d.settled_by = d.settled_by or "callback"
    call.trace("call unanswered", reason=reason)


def _open(call: _Call) -> str | None:
    """Why the call must not offer the lead any more, if it must not."""
    a = call.assignment
    if call.lead is None or call.lead.closed_at is not None:
        return "This lead is closed."
    if a is None or not a.current:
        return "This lead is no longer yours."
    if a.claimed_at is not None:
        return "You already claimed this lead." if a.claimed_by == call.d.recipient else "This lead is already claimed."
    return None


def _menu(call: _Call, resp: VoiceResponse, settings: Settings) -> None:
    from worker.services.alerts import lead_view

    rules = get_runtime().rules
    assert call.lead is not None and call.step is not None
    owner = rules.rep(call.assignment.rep_id) if call.assignment and call.assignment.rep_id else None
    kind = message_of(call.step.kind) or "first"
    text = spoken_summary(kind, lead_view(call.session, call.lead, rules), retry=call.step.step,
                          owner=owner.display if owner else None)
    gather = resp.gather(num_digits=1, action=voice_url(settings.public_url, "gather", str(call.d.id)),
                         method="POST", timeout=GATHER_SECONDS, action_on_empty_result=False)
    gather.say(text)
    gather.say(MENU)
    resp.say(NO_INPUT)


def answer_call(params: dict[str, str], delivery_id: int) -> Response:
    """The rep's phone answered: a machine is hung up on, a person hears the lead and the menu."""
    rt = get_runtime()
    resp = VoiceResponse()
    with rt.sessions.begin() as session:
        d = _find(session, delivery_id, params["CallSid"])
        if d is None:
            resp.hangup()
            return _xml(resp)
        call = _Call(session, d, now_utc())
        machine = unanswered("in-progress", params.get("AnsweredBy"))
        if machine is not None:
            _fail(call, machine)
            resp.hangup()
            return _xml(resp)
        call.trace("call answered", answered_by=params.get("AnsweredBy") or "unknown")
        why = _open(call)
        if why is not None or call.step is None:
            resp.say(why or "This alert is no longer open.")
            resp.hangup()
            return _xml(resp)
        _menu(call, resp, rt.settings)
    return _xml(resp)


def gather(params: dict[str, str], delivery_id: int) -> Response:
    """The rep's key: 1 claims and bridges, 2 passes, 3 repeats; a claim or pass acts once per call."""
    rt = get_runtime()
    rules = rt.rules
    resp = VoiceResponse()
    due: tuple[int, ...] = ()
    with rt.sessions.begin() as session:
        d = _find(session, delivery_id, params["CallSid"])
        if d is None:
            resp.hangup()
            return _xml(resp)
        now = now_utc()
        call = _Call(session, d, now)
        key = keypress(params.get("Digits"))
        if key in (Keypress.REPEAT, Keypress.UNKNOWN):
            why = _open(call)
            if why is not None:
                resp.say(why)
                resp.hangup()
            else:
                if key == Keypress.UNKNOWN:
                    resp.say("Sorry, that key does nothing here.")
                _menu(call, resp, rt.settings)
            return _xml(resp)
        if not remember(session, dedup_key("twilio-call", f"{params['CallSid']}:keypress"), now):
            resp.hangup()   # a replayed keypress: acted on already
            return _xml(resp)
        assignment_id = call.assignment.id if call.assignment else None
        act = claim if key == Keypress.CLAIM else pass_lead
        result = act(session, rules, d.lead_id, d.recipient, now, via="voice", assignment_id=assignment_id)
        due = result.due_steps
        call.trace("keypress", digits=params.get("Digits"), action=str(key), ok=result.ok)
        if key == Keypress.CLAIM and result.ok and call.lead is not None:
            plan = bridge(call.lead.traits or {}, quiet_hours=rules.routing.quiet_hours,
                          default_zone=rules.routing.quiet_hours_timezone, now=now)
            resp.say(f"Claimed. {plan.say}")
            if plan.number is not None:
                caller = params.get("From") if params.get("From") in caller_ids(rules, rt.settings) else None
                dial = resp.dial(caller_id=caller or next(iter(caller_ids(rules, rt.settings)), None),
                                 action=voice_url(rt.settings.public_url, "dial", str(d.id)), method="POST",
                                 timeout=DIAL_SECONDS)
                dial.number(plan.number, status_callback=voice_url(rt.settings.public_url, "bridge", str(d.id)),
                            status_callback_event="answered completed", status_callback_method="POST")
                call.trace("bridge", to=mask_phone(plan.number))
            else:
                call.trace("bridge refused", reason=plan.say)
                resp.hangup()
        else:
            resp.say(result.message)
            resp.hangup()
    if due:
        from worker.services.dispatch import dispatch_steps

        dispatch_steps(rt, list(due))
    return _xml(resp)


def _on_call_event(params: dict[str, str], delivery_id: int, handle: Callable[[Runtime, _Call, str, str], None],
                   *, parent: bool = False) -> Response:
    """A status callback of either leg, once per (CallSid, status), for the voice delivery its signed URL
    names: ``handle(rt, call, sid, status)`` in one transaction. The lead's leg names the rep's call as
    its parent."""
    rt = get_runtime()
    sid, status = params["CallSid"], params.get("CallStatus", "")
    with rt.sessions.begin() as session:
        now = now_utc()
        if not remember(session, dedup_key("twilio-call", f"{sid}:{status}"), now):
            return Response(status_code=204)
        d = _find(session, delivery_id, params.get("ParentCallSid", "") if parent else sid, parent=parent)
        if d is not None:
            handle(rt, _Call(session, d, now), sid, status)
    return Response(status_code=204)


def call_status(params: dict[str, str], delivery_id: int) -> Response:
    """The rep's leg: ringing and answered settle the delivery; no answer, busy, failed or a machine fail it."""

    def handle(rt: Runtime, call: _Call, sid: str, status: str) -> None:
        d = call.d
        reason = unanswered(status, params.get("AnsweredBy"))
        if reason is not None:
            _fail(call, reason)
        elif d.status in (DeliveryStatus.PENDING, DeliveryStatus.MAYBE_SENT, DeliveryStatus.SENT):
            if d.status != DeliveryStatus.SENT:
                d.settled_by = "callback"
            d.status = DeliveryStatus.DELIVERED if status in ("in-progress", "answered", "completed") \
                else DeliveryStatus.SENT
            d.sent_at, d.updated_at = d.sent_at or call.now, call.now
            if status == "ringing":
                call.trace("call ringing")

    return _on_call_event(params, delivery_id, handle)


def bridged(params: dict[str, str], delivery_id: int) -> Response:
    """The lead's leg: answered is traced; completed after ``voice.contact_after`` is first contact."""

    def handle(rt: Runtime, call: _Call, sid: str, status: str) -> None:
        duration = params.get("CallDuration")
        if status == "in-progress" or status == "answered":
            call.trace("bridged", call_sid=sid)
        elif status == "completed" and is_contact(duration, rt.rules.voice.contact_after):
            record_contact(call.session, rt.rules, call, sid, int(str(duration)))
        else:
            call.trace("bridge ended", call_sid=sid, status=status, duration=duration)

    return _on_call_event(params, delivery_id, handle, parent=True)


def record_contact(session: Session, rules: Rules, call: _Call, call_sid: str, duration: int) -> None:
    """First contact, as a ``Lead Contacted`` event records it: the cadence stops, the episode is
    contacted, and ``lead.contacted`` goes out, here with the call's duration."""
    from worker.services.outbound import Emitter

    lead, now = call.lead, call.now
    if lead is None:
        return
    if lead.contacted_at is None:
        lead.contacted_at = now
    cancelled = db.changed_rows(session, update(db.AlertStep)
                                .where(db.AlertStep.lead_id == lead.id, db.AlertStep.status == "pending")
                                .values(status="cancelled", note="lead contacted"))
    session.execute(update(db.HotEpisode).where(db.HotEpisode.lead_id == lead.id, db.HotEpisode.status == "open")
                    .values(status="contacted", closed_at=now))
    # speed to contact, measured: from the crossing event's arrival to the moment the lead picked up
    received = session.scalar(select(db.HotEpisode.event_received_at)
                              .where(db.HotEpisode.id == (call.assignment.episode_id if call.assignment else None)))
    speed = round(max(0.0, (now - received).total_seconds() - duration), 3) if received is not None else None
    call.trace("contacted", via="voice", call_sid=call_sid, duration=duration, speed_to_contact=speed,
               cancelled_steps=cancelled)
    Emitter.for_rules(rules).lead_event(session, "lead.contacted", lead, now,
                                        assignment=current_assignment(session, lead.id),
                                        detail={"via": "voice", "call_sid": call_sid, "duration": duration,
                                                "speed_to_contact": speed})


def dial_ended(params: dict[str, str], delivery_id: int) -> Response:
    """The bridge is over: tell the rep if the lead did not pick up."""
    resp = VoiceResponse()
    if params.get("DialCallStatus") in ("no-answer", "busy", "failed"):
        resp.say("The lead did not answer. The lead is yours; try again later.")
    resp.hangup()
    return _xml(resp)


_route("/webhooks/twilio/voice", "A voice alert's TwiML: the lead read aloud, and the menu", answer_call)
_route("/webhooks/twilio/voice/gather", "The rep's keypress: 1 claim and connect, 2 pass, 3 repeat", gather)
_route("/webhooks/twilio/voice/status", "A voice alert's call status callback", call_status)
_route("/webhooks/twilio/voice/bridge", "The bridged leg's status callback: contact after voice.contact_after",
       bridged)
_route("/webhooks/twilio/voice/dial", "The bridge ended", dial_ended)
