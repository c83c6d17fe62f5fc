"""What every provider webhook and the claim page do with a request before acting on it: read a
bounded body, parse a form, deduplicate by the provider's id, run database work off the event loop,
and describe themselves in the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import weakref
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import anyio
import anyio.to_thread
from fastapi import Request
from fastapi.responses import Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

from worker.adapters import db

T = TypeVar("T")

MAX_BODY = 64 * 1024


# ---------------------------------------------------------------- what the OpenAPI document says

STR: dict[str, Any] = {"type": "string"}


def text_doc(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": STR}}}


def html_doc(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/html": {"schema": STR}}}


def form_body_doc(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"required": bool(required), "content": {"application/x-www-form-urlencoded": {"schema": {
        "type": "object", "properties": properties, "required": required, "additionalProperties": STR}}}}


def header_doc(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": True, "schema": STR, "description": description}


TWILIO_SIGNATURE = header_doc("X-Twilio-Signature", "Base64 HMAC-SHA1 of the public URL and the form fields, "
                                                  "keyed with the Twilio auth token.")
REFUSED: dict[int | str, dict[str, Any]] = {403: text_doc("Missing or wrong signature; nothing changed."),
                                              413: text_doc(f"Body over {MAX_BODY // 1024} KB; nothing changed.")}


# Database work and provider calls never run on the event loop: one stalled call there would hold
# up every request, ingestion included. They run on worker threads, at most DB_THREADS at a time,
# counted apart from the thread pool the ingestion endpoints use, so requests stuck on an
# unreachable database cannot take the threads ingestion needs.
DB_THREADS = 8
_db_threads: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = weakref.WeakKeyDictionary()


def limiter_for_this_loop(table: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter],
                          total: int) -> anyio.CapacityLimiter:
    """One limiter per event loop (a test client runs several loops, one after another)."""
    loop = asyncio.get_running_loop()
    limiter = table.get(loop)
    if limiter is None:
        limiter = table[loop] = anyio.CapacityLimiter(total)
    return limiter


async def in_db_thread(fn: Callable[..., T], *args: Any) -> T:
    return await anyio.to_thread.run_sync(functools.partial(fn, *args),
                                          limiter=limiter_for_this_loop(_db_threads, DB_THREADS))


def forbidden() -> Response:
    return Response("forbidden", status_code=403, media_type="text/plain")


def too_large() -> Response:
    return Response(f"request body over {MAX_BODY // 1024} KB", status_code=413, media_type="text/plain")


async def read_body(request: Request) -> bytes | None:
    """The body, or None when it is over ``MAX_BODY``: read no further than that (a huge upload is never held)."""
    try:
        if int(request.headers.get("content-length", "0")) > MAX_BODY:
            return None
    except ValueError:
        pass   # no usable length: the stream is counted as it comes
    out = bytearray()
    try:
        async for piece in request.stream():
            out.extend(piece)
            if len(out) > MAX_BODY:
                return None
    except ClientDisconnect:
        return None
    return bytes(out)


def dedup_key(provider: str, provider_id: str) -> str:
    """The stored key for a provider's message or event id: the id itself when it fits the column
    (120 characters, printable), else its SHA-256, so that no two ids ever share a key."""
    key = f"{provider}:{provider_id}"
    if len(key) <= 120 and key.isprintable():
        return key
    return f"{provider}:sha256:{hashlib.sha256(provider_id.encode('utf-8', 'surrogatepass')).hexdigest()}"


def remember(session: Session, key: str, now: datetime) -> bool:
    """True the first time ``key`` is seen; a replay finds it already there."""
    if session.get(db.InboundMessage, key) is not None:
        return False
    try:
        with session.begin_nested():
            session.add(db.InboundMessage(key=key, received_at=now))
    except IntegrityError:
        return False
    return True


def parse_form(body: bytes) -> dict[str, str] | None:
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False))
    except (UnicodeDecodeError, ValueError):
        return None
