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

import json
import logging
import math
import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from routing.events import (
    MAX_BATCH_BYTES,
    MAX_EVENT_BYTES,
    EventError,
    EventTooLarge,
    check_envelope,
)
from routing.leads import CONTACTED
from worker.adapters import metrics
from worker.adapters.db import now_utc
from worker.adapters.runtime import get_runtime
from worker.entrypoints.ingest_access import (
    WRITE_KEY_IN_BODY,
    IngestError,
    basic_user,
    client_ip,
    contacts_a_lead,
    is_public,
    may_name_a_source,
    record_refusal,
    source_for,
    take_tokens,
)
from worker.entrypoints.ingest_schema import BATCH_SCHEMA, IngestResponse, event_schema, request_body, responses
from worker.services.publish import PublishResult, kick_drain, publish

log = logging.getLogger("leadrouter.api")

# A compressed body bigger than this cannot inflate to less than the limit (deflate's worst case
# adds a few bytes per 16 KB block), so it is refused before inflating anything.
MAX_COMPRESSED_BYTES = MAX_BATCH_BYTES + 16 * 1024
READ_STEP = 64 * 1024


class IngestJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: answers echo a refused event's ``messageId``,
    and "\\ud800" is valid JSON that has no UTF-8 form."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return IngestJSONResponse({"success": False, "code": code, "message": message}, status_code=status,
                              headers=headers)


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
        contacted = {i for i, raw in enumerate(events) if contacts_a_lead(raw, rt.rules)}
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
        header_key = (basic_user(request.headers.get("authorization"))
                      or request.query_params.get("writeKey") or None)
        if header_key is not None:
            source_label = source_for(header_key) or "unknown"
            if source_label == "unknown":
                raise IngestError(401, "unauthorized", "unknown write key",
                                  {"WWW-Authenticate": 'Basic realm="leadrouter"'})
        body = await read_body(request)
        if header_key is None and not may_name_a_source(body):
            source_label = "unknown" if WRITE_KEY_IN_BODY.search(body) else "none"
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
        events = _prepare(data, etype, client_ip(request))
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
            responses=responses(etype is not None),
            openapi_extra=request_body(event_schema(etype) if etype else BATCH_SCHEMA),
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
