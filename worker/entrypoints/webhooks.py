"""Provider webhooks and the claim page.

- ``POST /webhooks/twilio/sms``: a rep's reply (claim, pass, away, back, help), answered with TwiML.
- ``POST /webhooks/twilio/status``: delivery status of a sent SMS.
- ``POST /webhooks/sendgrid/events``: signed email events.
- ``GET``/``POST /claim/<token>``: the claim page; only ``POST`` acts.

Every request is verified before anything is read from it; a bad signature
answers 403 and changes nothing. Inbound messages and events are deduplicated
by the provider's id, so a replayed webhook has no second effect.
"""

from __future__ import annotations

import base64
import binascii
import functools
import html
import json
import logging
import re
import time
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from routing.durations import parse_duration
from routing.messages import short_code
from worker.adapters import db
from worker.adapters.db import now_utc
from worker.adapters.runtime import get_runtime
from worker.adapters.tokens import TokenError, verify
from worker.entrypoints.http_common import (
    MAX_BODY,
    REFUSED,
    STR,
    TWILIO_SIGNATURE,
    dedup_key,
    forbidden,
    form_body_doc,
    header_doc,
    html_doc,
    in_db_thread,
    parse_form,
    read_body,
    remember,
    text_doc,
    too_large,
)
from worker.services.claims import AckResult, claim, current_assignment, pass_lead
from worker.services.settling import settle

log = logging.getLogger("leadrouter.webhooks")
router = APIRouter()

SENDGRID_MAX_AGE = 600           # seconds: older signed timestamps are refused (replays)
CLAIM_WORDS = {"1", "Y", "YES", "CLAIM"}
PASS_WORDS = {"2", "PASS"}
HELP_TEXT = ("leadrouter: reply 1 (or YES, CLAIM) to claim your newest lead, 2 (or PASS) to pass it on; "
             "add the code to pick a lead (1 K7Q). AWAY, AWAY 2h, BACK set your availability.")


# ---------------------------------------------------------------- Twilio


def _twilio_ok(request: Request, path: str, params: dict[str, str]) -> bool:
    from twilio.request_validator import RequestValidator

    settings = get_runtime().settings
    signature = request.headers.get("X-Twilio-Signature", "")
    if not settings.twilio_auth_token or not signature:
        return False
    url = settings.public_url.rstrip("/") + path
    if request.url.query:   # the status callback URL carries the delivery id; Twilio signs the whole URL
        url += "?" + request.url.query
    return bool(RequestValidator(settings.twilio_auth_token).validate(url, params, signature))


def _twiml(text: str | None) -> Response:
    from twilio.twiml.messaging_response import MessagingResponse

    from routing.messages import sms_reply

    resp = MessagingResponse()
    if text:
        resp.message(sms_reply(text))
    return Response(str(resp), media_type="application/xml")


def _digits(phone: str) -> str:
    return re.sub(r"\D", "", phone or "")


async def signed_twilio_form(request: Request, path: str) -> dict[str, str] | Response:
    """The form Twilio posted to ``path``, or the refusal to answer: too large, unreadable, or not signed."""
    body = await read_body(request)
    if body is None:
        return too_large()
    params = parse_form(body)
    if params is None or not _twilio_ok(request, path, params):
        return forbidden()
    return params


@router.post("/webhooks/twilio/sms", tags=["webhooks"], response_class=Response,
             responses={200: {"description": "TwiML: the answer to the rep (empty for a replay or an unknown number).",
                              "content": {"application/xml": {"schema": STR}}},
                        400: text_doc("MessageSid or From is missing."), **REFUSED},
             openapi_extra={"parameters": [TWILIO_SIGNATURE], "requestBody": form_body_doc(
                 {"MessageSid": STR, "From": STR, "To": STR, "Body": STR}, ["MessageSid", "From"])})
async def twilio_sms(request: Request) -> Response:
    """A rep's SMS reply. Verified with ``X-Twilio-Signature``; answered with TwiML."""
    params = await signed_twilio_form(request, "/webhooks/twilio/sms")
    if isinstance(params, Response):
        return params
    sid, sender, text = params.get("MessageSid", ""), params.get("From", ""), params.get("Body", "")
    if not sid or not sender:
        return Response("MessageSid and From are required", status_code=400, media_type="text/plain")
    return await in_db_thread(_answer_reply, sid, sender, text)


def _answer_reply(sid: str, sender: str, text: str) -> Response:
    rt = get_runtime()
    rules = rt.rules
    now = now_utc()
    due: tuple[int, ...] = ()
    with rt.sessions.begin() as session:
        if not remember(session, dedup_key("twilio", sid), now):
            return _twiml(None)
        rep = next((r for r in rules.reps if r.phone and _digits(r.phone) == _digits(sender)), None)
        if rep is None:
            log.warning("reply from a number that is no rep's ignored (%s)", sid)
            return _twiml(None)
        reply, due = handle_reply(session, rep.id, sender, text, now)
    if due:
        from worker.services.dispatch import dispatch_steps

        dispatch_steps(rt, list(due))
    return _twiml(reply)


def handle_reply(session: Session, rep_id: str, sender: str, text: str, now: datetime) -> tuple[str, tuple[int, ...]]:
    """What a rep's reply does, and the answer they get."""
    rt = get_runtime()
    rules = rt.rules
    words = text.strip().upper().split()
    if not words:
        return HELP_TEXT, ()
    word, rest = words[0], words[1:]
    if word == "HELP" or word == "INFO":
        return HELP_TEXT, ()
    if word == "AWAY":
        until = now + timedelta(days=3650)
        if rest:
            try:
                until = now + parse_duration(rest[0].lower())
            except (ValueError, OverflowError):   # "AWAY 99999999999d" is past any date
                return "Say AWAY, or AWAY 2h / AWAY 30m.", ()
        _set_away(session, rep_id, until, now)
        return ("You are away until you reply BACK." if not rest
                else f"You are away until {until.strftime('%H:%M UTC')}."), ()
    if word == "BACK":
        _set_away(session, rep_id, None, now)
        return "Welcome back: new leads can reach you again.", ()
    if word in CLAIM_WORDS or word in PASS_WORDS:
        lead_id = _target_lead(session, rep_id, sender, rest[0] if rest else None, now)
        if lead_id is None:
            return ("No lead with that code was sent to you in the last 24 hours." if rest
                    else "There is no unclaimed lead alert for you in the last 24 hours."), ()
        act = claim if word in CLAIM_WORDS else pass_lead
        result: AckResult = act(session, rules, lead_id, rep_id, now, via="sms")
        return result.message, result.due_steps
    return "Unknown reply. " + HELP_TEXT, ()


def _set_away(session: Session, rep_id: str, until: datetime | None, now: datetime) -> None:
    state = session.get(db.RepState, rep_id)
    if state is None:
        session.add(db.RepState(rep_id=rep_id, away_until=until, disabled_channels={}, updated_at=now))
    else:
        state.away_until, state.updated_at = until, now
    session.add(db.Trace(lead_id=f"rep:{rep_id}", at=now, kind="away" if until else "back", actor=rep_id,
                         detail={"via": "sms", "until": until.isoformat() if until else None}))


def _target_lead(session: Session, rep_id: str, sender: str, code: str | None, now: datetime) -> str | None:
    """With a code: the lead alerted to this rep in the last 24 h whose code matches. Without: the newest
    alert sent to this number in the last 24 h whose lead is still unclaimed."""
    rows = session.execute(
        select(db.Delivery.lead_id, db.Delivery.to, db.Delivery.channel)
        .where(db.Delivery.recipient == rep_id, db.Delivery.created_at >= now - timedelta(hours=24))
        .order_by(db.Delivery.created_at.desc(), db.Delivery.id.desc())
    ).all()
    seen: set[str] = set()
    for lead_id, to, channel in rows:
        if code is not None:
            if short_code(lead_id) == code.upper():
                return lead_id
            continue
        if lead_id in seen or channel != "sms" or _digits(to) != _digits(sender):
            continue
        seen.add(lead_id)
        a = current_assignment(session, lead_id)
        if a is not None and a.claimed_at is None:
            return lead_id
    return None


@router.post("/webhooks/twilio/status", tags=["webhooks"], status_code=204, response_class=Response,
             responses={204: {"description": "Recorded."}, 400: text_doc("MessageSid or MessageStatus is missing."),
                        **REFUSED},
             openapi_extra={"parameters": [TWILIO_SIGNATURE], "requestBody": form_body_doc(
                 {"MessageSid": STR, "MessageStatus": STR, "ErrorCode": STR}, ["MessageSid", "MessageStatus"])})
async def twilio_status(request: Request) -> Response:
    """Twilio's message status callback: settles a delivery; a failure moves the step to email."""
    params = await signed_twilio_form(request, "/webhooks/twilio/status")
    if isinstance(params, Response):
        return params
    sid, status = params.get("MessageSid", ""), params.get("MessageStatus", "")
    if not sid or not status:
        return Response("MessageSid and MessageStatus are required", status_code=400, media_type="text/plain")
    await in_db_thread(functools.partial(settle, get_runtime(), sid, status, params.get("ErrorCode") or None,
                                         kind_hint="sms", delivery_id=request.query_params.get("delivery_id")))
    return Response(status_code=204)


# ---------------------------------------------------------------- SendGrid


@router.post("/webhooks/sendgrid/events", tags=["webhooks"], status_code=204, response_class=Response,
             responses={204: {"description": "Recorded; an sg_event_id seen before changes nothing."},
                        400: text_doc("The body is not a JSON array of events."), **REFUSED},
             openapi_extra={"parameters": [
                 header_doc("X-Twilio-Email-Event-Webhook-Signature",
                         "Base64 ECDSA (P-256, SHA-256) signature of the timestamp followed by the body."),
                 header_doc("X-Twilio-Email-Event-Webhook-Timestamp",
                         f"Unix seconds; more than {SENDGRID_MAX_AGE} s away from now is refused.")],
                 "requestBody": {"required": True, "content": {"application/json": {"schema": {
                     "type": "array", "items": {"type": "object", "additionalProperties": True, "properties": {
                         "sg_event_id": STR, "sg_message_id": STR, "event": STR, "delivery_id": STR}}}}}}})
async def sendgrid_events(request: Request) -> Response:
    """SendGrid's signed event webhook (ECDSA); deduplicated by ``sg_event_id``."""
    body = await read_body(request)
    if body is None:
        return too_large()
    settings = get_runtime().settings
    signature = request.headers.get("X-Twilio-Email-Event-Webhook-Signature", "")
    stamp = request.headers.get("X-Twilio-Email-Event-Webhook-Timestamp", "")
    # ASCII digits only: "²".isdigit() is true, and a 400-digit stamp is no time at all
    if not settings.sendgrid_webhook_public_key or not signature or not re.fullmatch(r"[0-9]{1,12}", stamp):
        return forbidden()
    if abs(time.time() - int(stamp)) > SENDGRID_MAX_AGE:
        return forbidden()
    if not _sendgrid_ok(settings.sendgrid_webhook_public_key, body, signature, stamp):
        return forbidden()
    try:
        events = json.loads(body)
    except ValueError as exc:
        return Response(f"malformed JSON: {exc}", status_code=400, media_type="text/plain")
    except RecursionError:   # signed, but nested deeper than the parser goes: no event looks like that
        return Response("malformed JSON: nested too deeply", status_code=400, media_type="text/plain")
    if not isinstance(events, list):
        return Response("expected a JSON array of events", status_code=400, media_type="text/plain")
    await in_db_thread(_record_email_events, events)
    return Response(status_code=204)


def _record_email_events(events: list[Any]) -> None:
    rt = get_runtime()
    now = now_utc()
    todo: list[tuple[str, str]] = []
    with rt.sessions.begin() as session:
        for ev in events:
            if not isinstance(ev, dict) or not isinstance(ev.get("sg_event_id"), str):
                continue
            if not remember(session, dedup_key("sendgrid", ev["sg_event_id"]), now):
                continue
            delivery_id = ev.get("delivery_id")
            message_id = str(ev.get("sg_message_id") or "").split(".")[0]
            target = _delivery_key(session, delivery_id, message_id)
            if target is not None and isinstance(ev.get("event"), str):
                todo.append((target, ev["event"]))
    for provider_id, event in todo:
        settle(rt, provider_id, event, None, kind_hint="email")


def _delivery_key(session: Session, delivery_id: Any, message_id: str) -> str | None:
    d = None
    if isinstance(delivery_id, str) and re.fullmatch(r"[0-9]{1,18}", delivery_id):   # a row id ("²" is a digit too)
        d = session.get(db.Delivery, int(delivery_id))
    if d is None and message_id and "\x00" not in message_id:
        d = session.scalar(select(db.Delivery).where(db.Delivery.provider_id == message_id).limit(1))
    if d is None:
        return None
    if not d.provider_id:
        d.provider_id = message_id or f"delivery-{d.id}"
    return d.provider_id


def _sendgrid_ok(public_key: str, body: bytes, signature: str, stamp: str) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from sendgrid.helpers.eventwebhook import EventWebhook

    try:
        key = EventWebhook().convert_public_key_to_ecdsa(public_key)
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, stamp.encode() + body, ec.ECDSA(hashes.SHA256()))  # type: ignore[union-attr]
        return True
    except (InvalidSignature, binascii.Error, ValueError, TypeError):
        return False


# ---------------------------------------------------------------- the claim page

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:34rem;margin:2rem auto;padding:0 1rem;color:#1a1a1a}}
.card{{border:1px solid #ddd;border-radius:8px;padding:1rem 1.25rem}}dt{{color:#666;font-size:.85rem}}
dd{{margin:0 0 .6rem 0}}button{{font-size:1rem;padding:.6rem 1.4rem;border-radius:6px;border:0;margin-right:.5rem;
cursor:pointer}}.claim{{background:#0a7d38;color:#fff}}.pass{{background:#eee}}.note{{color:#555}}</style>
</head><body><h1>{title}</h1>{content}</body></html>"""


def _page(title: str, content: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(PAGE.format(title=html.escape(title), content=content), status_code=status,
                        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                 "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                                            "form-action 'self'",
                                 "Referrer-Policy": "no-referrer"})


def _check_token(token: str, now: datetime) -> tuple[Any, HTMLResponse | None]:
    try:
        claim_token = verify(get_runtime().settings.secret_key, token, now)
    except TokenError as exc:
        if exc.reason == "expired":
            return None, _page("Link expired", "<p>This claim link has expired. Reply to the SMS instead.</p>", 410)
        return None, _page("Invalid link", "<p>This claim link is not valid.</p>", 403)
    return claim_token, None


def _lead_details(lead: db.Lead) -> str:
    from routing.messages import contact_details

    rows = contact_details(lead.traits or {}) + [("Score", f"{lead.score:g} ({lead.tier.replace('_', '-')})")]
    items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in rows)
    return f'<div class="card"><dl>{items}</dl></div>'


def _open_to(session: Session, tok: Any, a: db.Assignment | None) -> bool:
    """Whether the token's rep may still act on its assignment: the assigned rep, or the manager an
    escalation reached."""
    from worker.services.claims import escalated_to

    if a is None or a.id != tok.assignment_id or a.claimed_at is not None:
        return False
    return a.rep_id == tok.rep_id or escalated_to(session, a, get_runtime().rules, tok.rep_id)


_GONE = "<p>This lead is no longer open to you.</p>"


_CLAIM_REFUSED: dict[int | str, dict[str, Any]] = {
    403: html_doc("Not a valid claim link."),
    410: html_doc("The link has expired, or the lead is no longer open to this rep.")}


@router.get("/claim/{token}", response_class=HTMLResponse, tags=["claim"], responses={**_CLAIM_REFUSED})
async def claim_page(token: str) -> HTMLResponse:
    """The lead and Claim / Pass buttons. Showing the page changes nothing (mail scanners follow links)."""
    return await in_db_thread(_show_claim, token)


def _show_claim(token: str) -> HTMLResponse:
    now = now_utc()
    tok, bad = _check_token(token, now)
    if bad is not None:
        return bad
    rt = get_runtime()
    with rt.sessions() as session:
        lead = session.get(db.Lead, tok.lead_id)
        a = current_assignment(session, tok.lead_id)
        if lead is None:
            return _page("Invalid link", "<p>This claim link is not valid.</p>", 403)
        if not _open_to(session, tok, a):
            # neither the lead nor who has it now: the link may have been forwarded
            return _page("No longer available", _GONE, 410)
        action = html.escape(f"/claim/{token}", quote=True)
        buttons = (f'<form method="post" action="{action}"><button class="claim" name="action" value="claim">'
                   f'Claim</button><button class="pass" name="action" value="pass">Pass</button></form>')
        return _page("New hot lead", _lead_details(lead) + f"<p>{buttons}</p>")


@router.post("/claim/{token}", response_class=HTMLResponse, tags=["claim"],
             responses={400: html_doc("An action other than claim or pass."), **_CLAIM_REFUSED,
                        409: html_doc("Already claimed, or no longer this rep's lead."),
                        413: html_doc(f"Body over {MAX_BODY // 1024} KB.")},
             openapi_extra={"requestBody": form_body_doc({"action": {"type": "string", "enum": ["claim", "pass"]}}, [])})
async def claim_post(token: str, request: Request) -> HTMLResponse:
    """Claim (or pass) the lead the token names."""
    now = now_utc()
    tok, bad = _check_token(token, now)
    if bad is not None:
        return bad
    body = await read_body(request)
    if body is None:
        return _page("Too large", "<p>Use the Claim or Pass button.</p>", 413)
    params = parse_form(body) or {}
    action = params.get("action")   # the button pressed; an empty POST (a link checker's) does nothing
    if action not in ("claim", "pass"):
        return _page("Unknown action", "<p>Use the Claim or Pass button.</p>", 400)
    return await in_db_thread(_act_on_claim, tok, action, now)


def _act_on_claim(tok: Any, action: str, now: datetime) -> HTMLResponse:
    rt = get_runtime()
    with rt.sessions.begin() as session:
        act = claim if action == "claim" else pass_lead
        result = act(session, rt.rules, tok.lead_id, tok.rep_id, now, via="link", assignment_id=tok.assignment_id)
    if result.due_steps:
        from worker.services.dispatch import dispatch_steps

        dispatch_steps(rt, list(result.due_steps))
    title = ("Claimed" if action == "claim" else "Passed") if result.ok else "Not available"
    return _page(title, f'<p class="note">{html.escape(result.message)}</p>', 200 if result.ok else 409)
