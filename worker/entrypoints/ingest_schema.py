"""The OpenAPI description of the Segment-compatible routes: request bodies, answers and errors, as
``/openapi.json`` shows them (what :mod:`worker.entrypoints.api_ingest` accepts, for clients and contract tests)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from routing.events import (
    MAX_BATCH_BYTES,
    MAX_EVENT_BYTES,
)

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


def event_schema(etype: str | None) -> dict[str, Any]:
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


BATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["batch"],
    "additionalProperties": True,
    "properties": {
        "batch": {"type": "array", "items": event_schema(None),
                  "description": "The events; each is checked on its own, and a bad one does not stop the rest."},
        "sentAt": _COMMON["sentAt"],
        "context": {**_OBJ, "description": "Merged into each event's context (the event's own keys win)."},
        "integrations": _OBJ,
        "writeKey": _COMMON["writeKey"],
    },
    "description": f"At most {MAX_BATCH_BYTES // 1024} KB after decompression.",
}


def request_body(schema: dict[str, Any]) -> dict[str, Any]:
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


def responses(single: bool) -> dict[int | str, dict[str, Any]]:
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


