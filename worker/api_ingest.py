"""Segment's HTTP tracking API: ``/v1/track``, ``/v1/identify``, ``/v1/page``, ``/v1/alias``, ``/v1/batch``.

An official Segment SDK pointed at this host just works: the write key comes as
the HTTP Basic user name (or ``writeKey`` in the body, as analytics.js sends it,
or in the query string, as RudderStack's beacon sends it), bodies may be
gzip-compressed, and the answer comes once every accepted event is durably
queued in the Redis stream (not after it is processed). Every route a client
of the Segment ecosystem posts to is served (see :data:`ROUTES`): a 404 or a
400 is dropped by those clients without a retry, so a route we miss loses
events silently. Every refused request is logged with its reason, counted in
``leadrouter_requests_refused_total`` by route and source, and the latest are
kept for ``leadrouter status``.

Hostile bodies are bounded: the size limit applies to the decompressed body,
which is inflated in steps and abandoned as soon as it passes the limit, so a
compressed bomb is never fully inflated.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import math
import re
import zlib
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from itertools import islice
from typing import Any

import redis
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.requests import ClientDisconnect

from routing.events import (
    MAX_BATCH_BYTES,
    MAX_EVENT_BYTES,
    EventError,
    EventTooLarge,
    check_envelope,
    iso,
    map_page,
)
from routing.leads import CONTACTED
from worker import metrics
from worker.db import now_utc
from worker.publish import PublishResult, kick_drain, publish
from worker.runtime import get_runtime
from worker.settings import get_settings

log = logging.getLogger("leadrouter.api")

# A compressed body bigger than this cannot inflate to less than the limit (deflate's worst case
# adds a few bytes per 16 KB block), so it is refused before inflating anything.
MAX_COMPRESSED_BYTES = MAX_BATCH_BYTES + 16 * 1024
READ_STEP = 64 * 1024


class IngestSettings(BaseSettings):
    """Per-source rate limit: a token bucket of ``burst`` events refilled at ``rate`` events a second."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    rate: float = Field(default=50.0, alias="LEADROUTER_RATE_LIMIT", gt=0)
    burst: int = Field(default=500, alias="LEADROUTER_RATE_BURST", ge=1)


@lru_cache(maxsize=1)
def get_ingest_settings() -> IngestSettings:
    return IngestSettings()


class IngestError(Exception):
    """A refused request: answered with ``status`` and a Segment-style ``{code, message}`` body."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class IngestJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: answers echo a refused event's ``messageId``,
    and "\\ud800" is valid JSON that has no UTF-8 form."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return IngestJSONResponse({"success": False, "code": code, "message": message}, status_code=status,
                              headers=headers)


# ---------------------------------------------------------------- documentation models


class EventErrorItem(BaseModel):
    index: int = Field(description="Position of the event in the request's batch (0 for a single event).")
    error: str = Field(description="Why the event was refused.")
    field: str | None = Field(default=None, description="The offending key, when one is to blame.")
    messageId: str | None = None


class IngestResponse(BaseModel):
    success: bool = True
    accepted: int = Field(description="Events durably queued by this request.")
    errors: list[EventErrorItem] = Field(default_factory=list,
                                         description="Events refused, by index; the others were queued.")


class ErrorResponse(BaseModel):
    success: bool = False
    code: str = Field(description="A stable machine-readable code, e.g. invalid_json, unauthorized.")
    message: str = Field(description="What was wrong, for a human.")


_ID = {"type": ["string", "integer"], "maxLength": 200}
_OBJ = {"type": "object", "additionalProperties": True}
_TS = {"type": "string", "description": "ISO 8601; without an offset it is UTC."}
_COMMON: dict[str, Any] = {
    "messageId": {**_ID, "description": "Idempotency key, unique within the write key's source."},
    "userId": _ID,
    "anonymousId": _ID,
    "timestamp": _TS,
    "sentAt": {**_TS, "description": "When the sender sent it; corrects the sender's clock skew."},
    "context": _OBJ,
    "integrations": _OBJ,
    "writeKey": {"type": "string", "description": "The write key, when not given as the HTTP Basic user name."},
}


def _event_schema(etype: str | None) -> dict[str, Any]:
    props = dict(_COMMON)
    required = ["messageId"]
    if etype in (None, "track"):
        props["event"] = {"type": "string", "maxLength": 200, "description": "The track event name."}
        props["properties"] = _OBJ
    if etype in (None, "identify"):
        props["traits"] = _OBJ
    if etype in (None, "page"):
        props["name"] = {"type": "string"}
        props["properties"] = _OBJ
    if etype in (None, "alias"):
        props["previousId"] = _ID
    if etype == "group":
        props["groupId"] = _ID
        props["traits"] = _OBJ
    if etype == "screen":
        props["name"] = {"type": "string"}
        props["properties"] = _OBJ
    props["type"] = ({"type": "string", "description": "track, identify, page or alias; other types are ignored."}
                     if etype is None else {"type": "string", "enum": [etype],
                                            "description": "Implied by the route; a different value is replaced."})
    if etype is None:
        required.append("type")
    if etype == "track":
        required.append("event")
    if etype == "alias":
        required += ["userId", "previousId"]
    return {"type": "object", "properties": props, "required": required, "additionalProperties": True,
            "description": f"A Segment {etype or 'event'} call; at most {MAX_EVENT_BYTES // 1024} KB."
                           + ("" if etype == "alias" else " userId or anonymousId is required."
                              if etype not in ("group", "screen") else " Accepted and ignored.")}


_BATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["batch"],
    "additionalProperties": True,
    "properties": {
        "batch": {"type": "array", "items": _event_schema(None),
                  "description": "The events; each is checked on its own, and a bad one does not stop the rest."},
        "sentAt": _COMMON["sentAt"],
        "context": {**_OBJ, "description": "Merged into each event's context (the event's own keys win)."},
        "integrations": _OBJ,
        "writeKey": _COMMON["writeKey"],
    },
    "description": f"At most {MAX_BATCH_BYTES // 1024} KB after decompression.",
}


def _request_body(schema: dict[str, Any]) -> dict[str, Any]:
    content = {"schema": schema}
    return {
        "requestBody": {
            "required": True,
            "description": "JSON, optionally with Content-Encoding: gzip (limits apply after decompression). "
                           "Any Content-Type is read as JSON, as browsers send text/plain to avoid a preflight.",
            "content": {"application/json": content, "text/plain": content},
        },
        "security": [{"writeKey": []}, {}],
    }


def _responses(single: bool) -> dict[int | str, dict[str, Any]]:
    return {
        200: {"model": IngestResponse, "description": "Accepted events are durably queued; refused ones are listed."},
        400: {"model": ErrorResponse, "description": "Malformed JSON, a body that is not an object, invalid gzip"
              + (", or an invalid event." if single else ", or a batch that is not a list.")},
        401: {"model": ErrorResponse, "description": "Missing or unknown write key; nothing was stored."},
        413: {"model": ErrorResponse, "description": f"Body over {MAX_BATCH_BYTES // 1024} KB after decompression"
              + (f", or the event over {MAX_EVENT_BYTES // 1024} KB." if single else ".")},
        415: {"model": ErrorResponse, "description": "A Content-Encoding other than gzip or identity."},
        429: {"model": ErrorResponse, "description": "The source's rate limit is exceeded; retry after Retry-After "
              "seconds. Nothing was stored.",
              "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}},
        503: {"model": ErrorResponse, "description": "The event queue (Redis) is unreachable; nothing was stored."},
    }


# ---------------------------------------------------------------- reading the body


async def read_body(request: Request, limit: int = MAX_BATCH_BYTES) -> bytes:
    """The request body, decompressed, never holding more than ``limit`` bytes of it."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "", "gzip", "x-gzip"):
        raise IngestError(415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported (use gzip)")
    gz = encoding in ("gzip", "x-gzip")
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise IngestError(400, "bad_request", "Content-Length is not a number") from None
        if size > (MAX_COMPRESSED_BYTES if gz else limit):
            raise IngestError(413, "too_large", f"request body over {limit // 1024} KB")
    out = bytearray()
    received = 0
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if gz else None

    def inflate(data: bytes) -> None:
        nonlocal inflater
        while data and inflater is not None:
            if inflater.eof:  # a second gzip member follows
                inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                chunk = inflater.decompress(data, limit - len(out) + 1)
            except zlib.error as exc:
                raise IngestError(400, "invalid_gzip", f"body is not valid gzip: {exc}") from None
            out.extend(chunk)
            if len(out) > limit:
                raise IngestError(413, "too_large", f"request body over {limit // 1024} KB after decompression")
            data = inflater.unconsumed_tail or (inflater.unused_data if inflater.eof else b"")

    try:
        async for piece in request.stream():
            received += len(piece)
            if inflater is None:
                if received > limit:
                    raise IngestError(413, "too_large", f"request body over {limit // 1024} KB")
                out.extend(piece)
            else:
                if received > MAX_COMPRESSED_BYTES:
                    raise IngestError(413, "too_large", f"request body over {limit // 1024} KB after decompression")
                for start in range(0, len(piece), READ_STEP):
                    inflate(piece[start:start + READ_STEP])
    except ClientDisconnect:
        raise IngestError(400, "bad_request", "the client went away before sending the whole body") from None
    if inflater is not None and received and not inflater.eof:
        raise IngestError(400, "invalid_gzip", "body is not valid gzip: truncated stream")
    return bytes(out)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def parse_json(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise IngestError(400, "invalid_json", "malformed JSON: the body is empty")
    try:
        data = json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
    except UnicodeDecodeError as exc:
        raise IngestError(400, "invalid_json", f"malformed JSON: not UTF-8 ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise IngestError(400, "invalid_json", f"malformed JSON: {exc}") from None
    except ValueError as exc:
        raise IngestError(400, "invalid_json", f"malformed JSON: {exc}") from None
    except RecursionError:
        raise IngestError(400, "invalid_json", "malformed JSON: nesting too deep") from None
    if not isinstance(data, dict):
        raise IngestError(400, "invalid_json", "the body must be a JSON object")
    return data


# ---------------------------------------------------------------- write keys and rate limits


def _basic_user(header: str | None) -> str | None:
    """The user name of an HTTP Basic ``Authorization`` header (Segment puts the write key there)."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return decoded.partition(":")[0] or None


# A "writeKey" member with a plain string value, wherever it is in the body. The body's top-level
# writeKey is necessarily one of these matches (unless its name is written with escapes).
_WRITE_KEY_IN_BODY = re.compile(rb'"writeKey"\s*:\s*"((?:[^"\\]|\\.){0,400})"')


def _may_name_a_source(body: bytes) -> bool:
    """Whether the body can carry a write key we know, found without parsing it: a body from an
    unknown key is refused before its JSON (up to 500 KB of it) is parsed."""
    for found in islice(_WRITE_KEY_IN_BODY.finditer(body), 1000):
        try:
            key = json.loads(b'"' + found.group(1) + b'"')
        except ValueError:
            continue
        if isinstance(key, str) and source_for(key) is not None:
            return True
    return False


def source_for(key: str | None) -> str | None:
    """The source a write key names, trusted or public; None for a key we do not know."""
    if not key:
        return None
    found = None
    for known, source in get_settings().sources().items():
        if hmac.compare_digest(known.encode(), key.encode("utf-8", "replace")):
            found = source
    return found


def is_public(source: str) -> bool:
    """A browser source (``LEADROUTER_PUBLIC_WRITE_KEYS``): its key is on every page of the site."""
    return source in get_settings().public_sources()


def _contacts_a_lead(raw: Any, rules: Any) -> bool:
    """Whether the event records first contact (``Lead Contacted``), directly or as a mapped page."""
    if not isinstance(raw, dict):
        return False
    if raw.get("type") == "track" and isinstance(raw.get("event"), str):
        name = raw["event"].strip()
    elif raw.get("type") == "page":
        name = map_page(raw, rules.pages)
    else:
        return False
    return name.casefold() == CONTACTED.casefold()


_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
if cost > burst then
  return {-1, tostring(burst)}
end
if tokens < cost then
  return {0, tostring((cost - tokens) / rate)}
end
tokens = tokens - cost
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {1, tostring(tokens)}
"""


def take_tokens(r: redis.Redis, source: str, cost: int) -> float:
    """Spend ``cost`` events from ``source``'s bucket; 0 when allowed, else the seconds to wait.

    A request costing more than the whole burst is refused (413) and spends nothing: let
    through, it would leave the bucket in debt and every other sender on that key refused
    for as long as the debt lasts.
    """
    s = get_ingest_settings()
    allowed, value = r.eval(_BUCKET, 1, f"lr:ratelimit:{source}", s.rate, s.burst, max(cost, 1))
    if int(allowed) == -1:
        raise IngestError(413, "over_burst", f"a request of {cost} events is more than source {source!r} may send "
                          f"at once ({s.burst}); send at most {s.burst} events per request")
    return 0.0 if int(allowed) == 1 else float(value.decode() if isinstance(value, bytes) else value)


# ---------------------------------------------------------------- refusals

def mask_ip(ip: str | None) -> str | None:
    """An address with its host part hidden (``203.0.113.x``, ``2001:db8:85a3::x``): enough to tell
    networks apart in a log, not to name a visitor."""
    if not ip:
        return None
    if ":" in ip:
        return ":".join(ip.split(":")[:3]) + "::x"
    head, dot, _ = ip.rpartition(".")
    return f"{head}.x" if dot else "x"


def mask_user_agent(ua: str | None) -> str | None:
    """The first product token only (``Mozilla/5.0``, ``analytics-node-next/latest``)."""
    if not ua:
        return None
    first = ua.strip().split(" ", 1)[0][:60]
    return first + (" …" if len(ua.strip()) > len(first) else "")


def _client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def record_refusal(request: Request, route: str, source: str, status: int, code: str, message: str) -> None:
    """Log a refused tracking request with its reason, count it by route and source, and keep it
    among the latest refusals ``status`` shows. Never raises: a refusal is answered either way.

    ``source`` is the source's name, ``unknown`` for a key we do not know (never the key itself),
    or ``none`` when no key came with the request."""
    ip, ua = mask_ip(_client_ip(request)), mask_user_agent(request.headers.get("user-agent"))
    log.warning("refused %s %s: %s %s (%s); source %s, client %s, user agent %s",
                request.method, request.url.path[:200], status, code, message[:300], source, ip, ua)
    metrics.inc("requests_refused_total", route=route, source=source, status=str(status), reason=code)
    entry = {"at": iso(now_utc()), "route": route, "path": request.url.path[:200], "source": source,
             "status": status, "reason": code, "message": message[:300], "client": ip, "user_agent": ua}
    try:
        pipe = get_runtime().redis.pipeline()
        pipe.lpush(metrics.REFUSALS_KEY, json.dumps(entry))
        pipe.ltrim(metrics.REFUSALS_KEY, 0, metrics.REFUSALS_KEPT - 1)
        pipe.execute()
    except Exception as exc:
        log.warning("refusal not recorded for status: %s", exc)


# ---------------------------------------------------------------- the endpoints


@dataclass
class Accepted:
    result: PublishResult
    errors: list[dict[str, Any]]


def _safe_kick(r: redis.Redis, lane: str) -> None:
    """Events are already in the stream; a lost kick only delays them to the scheduler's next drain."""
    try:
        kick_drain(r, lane)
    except Exception as exc:
        log.warning("could not kick a drain of the %s lane: %s", lane, exc)


def _with_ip(event: dict[str, Any], ip: str | None) -> dict[str, Any]:
    """As Segment's API does, an event without ``context.ip`` gets the address it came from."""
    ctx = event.get("context")
    if ip and (ctx is None or (isinstance(ctx, dict) and not ctx.get("ip"))):
        event["context"] = {**(ctx or {}), "ip": ip}
    return event


def _prepare(data: dict[str, Any], etype: str | None, ip: str | None = None) -> list[Any]:
    """The events of a request, with the batch's ``sentAt`` and ``context`` carried into each."""
    if etype is not None:
        event = {k: v for k, v in data.items() if k != "writeKey"}
        event["type"] = etype
        return [_with_ip(event, ip)]
    batch = data.get("batch")
    if not isinstance(batch, list):
        raise IngestError(400, "invalid_batch", "batch must be a list of events")
    sent_at = data.get("sentAt")
    context = data.get("context") if isinstance(data.get("context"), dict) else None
    events: list[Any] = []
    for item in batch:
        if isinstance(item, dict):
            item = {k: v for k, v in item.items() if k != "writeKey"}
            if sent_at is not None and item.get("sentAt") is None:
                item["sentAt"] = sent_at
            if context and (item.get("context") is None or isinstance(item.get("context"), dict)):
                item["context"] = {**context, **(item.get("context") or {})}
            item = _with_ip(item, ip)
        events.append(item)
    return events


REASONS = {"unauthorized": "unauthorized", "too_large": "too_large", "invalid_json": "malformed_json",
           "invalid_gzip": "bad_encoding", "unsupported_encoding": "bad_encoding", "invalid_event": "invalid",
           "invalid_batch": "malformed_json", "bad_request": "bad_request"}


def _reason(error: dict[str, Any]) -> str:
    return "too_large" if not error.get("field") and "larger than" in error["error"] else "invalid"


def _ingest_sync(source: str, events: list[Any], received_at: datetime) -> Accepted:
    rt = get_runtime()
    wait = take_tokens(rt.redis, source, len(events))
    if wait > 0:
        metrics.inc("events_rejected_total", len(events), reason="rate_limited")
        raise IngestError(429, "rate_limited",
                          f"rate limit for source {source!r} exceeded; retry in {math.ceil(wait)} s",
                          {"Retry-After": str(max(1, math.ceil(wait)))})
    refused: list[dict[str, Any]] = []
    indices = list(range(len(events)))
    if is_public(source):
        # only a trusted source (a CRM, a dialer) may say a rep reached the lead: it stops the cadence
        contacted = {i for i, raw in enumerate(events) if _contacts_a_lead(raw, rt.rules)}
        for i in sorted(contacted):
            mid = events[i].get("messageId")
            refused.append({"index": i, "field": "event", "messageId": mid if isinstance(mid, str) else None,
                            "error": f"a public source cannot send {CONTACTED} (send it with a trusted "
                                     "source's write key, from a CRM or backend)"})
        indices = [i for i in indices if i not in contacted]
    result = publish(rt.redis, [events[i] for i in indices], rt.rules, source=source, received_at=received_at,
                     kick=_safe_kick)
    found = refused + [{**e, "index": indices[e["index"]]} for e in result.errors]
    errors = [{"index": e["index"], "error": (f"{e['field']}: {e['error']}" if e.get("field") else e["error"]),
               "field": e.get("field") or None, "messageId": e.get("messageId")}
              for e in sorted(found, key=lambda e: e["index"])]
    if result.accepted:
        metrics.inc("events_ingested_total", result.accepted)
    for reason in {_reason(e) for e in errors}:
        metrics.inc("events_rejected_total", sum(1 for e in errors if _reason(e) == reason), reason=reason)
    return Accepted(result, errors)


async def ingest(request: Request, route: str, etype: str | None) -> JSONResponse:
    received_at = now_utc()
    source_label = "none"
    try:
        # the header (Segment's SDKs), else the query string (RudderStack's beacon), else the body
        header_key = (_basic_user(request.headers.get("authorization"))
                      or request.query_params.get("writeKey") or None)
        if header_key is not None:
            source_label = source_for(header_key) or "unknown"
            if source_label == "unknown":
                raise IngestError(401, "unauthorized", "unknown write key",
                                  {"WWW-Authenticate": 'Basic realm="leadrouter"'})
        body = await read_body(request)
        if header_key is None and not _may_name_a_source(body):
            source_label = "unknown" if _WRITE_KEY_IN_BODY.search(body) else "none"
            raise IngestError(401, "unauthorized", "unknown write key" if source_label == "unknown" else
                              "a write key is required (HTTP Basic user name or writeKey in the body)",
                              {"WWW-Authenticate": 'Basic realm="leadrouter"'})
        data = parse_json(body)
        key = header_key or (data.get("writeKey") if isinstance(data.get("writeKey"), str) else None)
        source = source_for(key)
        source_label = source or ("unknown" if key else "none")
        if source is None:
            raise IngestError(401, "unauthorized", "unknown write key" if key else
                              "a write key is required (HTTP Basic user name or writeKey in the body)",
                              {"WWW-Authenticate": 'Basic realm="leadrouter"'})
        events = _prepare(data, etype, _client_ip(request))
        if etype is not None:
            _check_single(events[0])
        accepted = await run_in_threadpool(_ingest_sync, source, events, received_at)
    except IngestError as exc:
        if exc.status != 429:
            await run_in_threadpool(metrics.inc, "events_rejected_total", 1, reason=REASONS.get(exc.code, exc.code))
        await run_in_threadpool(record_refusal, request, route, source_label, exc.status, exc.code, exc.message)
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    if etype is not None and accepted.errors:
        message = accepted.errors[0]["error"]
        await run_in_threadpool(record_refusal, request, route, source_label, 400, "invalid_event", message)
        return error_response(400, "invalid_event", message)
    return IngestJSONResponse({"success": True, "accepted": accepted.result.accepted, "errors": accepted.errors})


def _check_single(event: dict[str, Any]) -> None:
    """A single-event call is the event: its own size limit makes the whole request too large."""
    try:
        check_envelope(event)
    except EventTooLarge:
        raise IngestError(413, "too_large", f"event larger than {MAX_EVENT_BYTES // 1024} KB") from None
    except EventError as exc:
        raise IngestError(400, "invalid_event", str(exc)) from None


router = APIRouter(tags=["tracking"])


def _route(path: str, etype: str | None, summary: str, *, include: bool = True) -> None:
    async def endpoint(request: Request) -> JSONResponse:
        return await ingest(request, path, etype)

    endpoint.__name__ = "ingest_" + path.strip("/").replace("/", "_")
    for served, shown in ((path, include), (path + "/", False)):   # analytics-java posts to /v1/import/
        router.add_api_route(
            served, endpoint, methods=["POST"], summary=summary,
            operation_id=endpoint.__name__ + ("" if served == path else "_slash"), response_model=IngestResponse,
            responses=_responses(etype is not None),
            openapi_extra=_request_body(_event_schema(etype) if etype else _BATCH_SCHEMA),
            include_in_schema=shown,
        )


# Every route the clients of the Segment ecosystem post to (read from their sources; see the README's
# conformance table). The short forms are analytics.js's: the first letter of the type.
ROUTES: tuple[tuple[str, str | None, str], ...] = (
    ("/v1/track", "track", "Record a track event"),
    ("/v1/identify", "identify", "Identify a lead and set traits"),
    ("/v1/page", "page", "Record a page view"),
    ("/v1/alias", "alias", "Link a previous id to a user id"),
    ("/v1/group", "group", "Accepted and ignored (a Segment group call)"),
    ("/v1/screen", "screen", "Accepted and ignored (a Segment screen call)"),
    ("/v1/batch", None, "Send many events at once"),
    ("/v1/t", "track", "Record a track event (short form of /v1/track)"),
    ("/v1/i", "identify", "Identify a lead (short form of /v1/identify)"),
    ("/v1/p", "page", "Record a page view (short form of /v1/page)"),
    ("/v1/a", "alias", "Link ids (short form of /v1/alias)"),
    ("/v1/g", "group", "Accepted and ignored (short form of /v1/group)"),
    ("/v1/s", "screen", "Accepted and ignored (short form of /v1/screen)"),
    ("/v1/b", None, "Send many events at once (analytics.js batching mode, analytics-swift, analytics-kotlin)"),
    ("/v1/import", None, "Send many events at once (analytics-java, analytics-ruby)"),
    ("/beacon/v1/batch", None, "Send many events at once (RudderStack's beacon; writeKey in the query string)"),
)

for _path, _type, _summary in ROUTES:
    _route(_path, _type, _summary)
