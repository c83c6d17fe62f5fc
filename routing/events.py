"""Segment-spec events: validation and normalisation, pure.

An incoming event is a JSON object as Segment's tracking API defines it. It is
checked here (types, ids, size, nesting) and turned into an :class:`Event`
whose timestamp is an aware UTC datetime and whose lead id is known.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from routing.config import PageRule

MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_DEPTH = 32
MAX_SEND_DELAY = timedelta(days=1000 * 365)  # how long before its sentAt an event may say it happened
TYPES = {"track", "identify", "page", "alias"}
UTC = UTC


class EventError(ValueError):
    """A problem with one event: ``field`` names the offending key."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


class EventTooLarge(EventError):
    """The event is over :data:`MAX_EVENT_BYTES`."""


@dataclass(frozen=True)
class Event:
    type: str                        # track | identify | alias | other (ignored)
    message_id: str
    source: str
    timestamp: datetime              # aware UTC, skew-corrected
    received_at: datetime
    user_id: str | None = None
    anonymous_id: str | None = None
    previous_id: str | None = None   # alias
    name: str | None = None          # track event name (pages mapped)
    properties: Mapping[str, Any] = field(default_factory=dict)
    traits: Mapping[str, Any] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict)
    attribution: Mapping[str, Any] = field(default_factory=dict)   # context_traits(raw): context.* for rules

    @property
    def lead_id(self) -> str | None:
        if self.user_id:
            return self.user_id
        if self.anonymous_id:
            return anon_lead_id(self.anonymous_id)
        return None

    @property
    def link(self) -> tuple[str, str] | None:
        """(anonymous lead id, user lead id) when this event ties the two together."""
        if self.type == "alias" and self.previous_id and self.user_id:
            prev = self.previous_id
            return (prev if prev.startswith("anon:") else anon_lead_id(prev), self.user_id)
        if self.user_id and self.anonymous_id:
            return (anon_lead_id(self.anonymous_id), self.user_id)
        return None


def anon_lead_id(anonymous_id: str) -> str:
    return f"anon:{anonymous_id}"


def parse_time(value: Any, field: str) -> datetime:
    if not isinstance(value, str) or not value.strip():
        raise EventError(field, "must be an ISO 8601 timestamp string")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise EventError(field, f"not an ISO 8601 timestamp: {value!r}") from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)  # no offset means UTC
    try:
        return ts.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is a valid ISO string but no UTC instant
        raise EventError(field, f"out of range once converted to UTC: {value!r}") from None


def iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    ts = ts.astimezone(UTC)
    text = ts.isoformat(timespec="milliseconds" if ts.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def _depth(value: Any, limit: int) -> int:
    """Nesting depth in objects and arrays (``{}`` is 1, ``{"a": {}}`` is 2; scalars add nothing),
    stopping early once past ``limit`` (hostile input can be deep)."""
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    deepest = 0
    while stack:
        node, d = stack.pop()
        if d > deepest:
            deepest = d
            if deepest > limit:
                return deepest
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, d + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def _opt_id(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise EventError(key, "must be a string")
    text = str(value)
    if len(text) > 200:
        raise EventError(key, "is longer than 200 characters")
    return text


def map_page(raw: Mapping[str, Any], pages: list[PageRule]) -> str:
    """The track event name a ``page`` call stands for (first matching rule, else ``Page Viewed``)."""
    given = raw.get("properties")
    props: dict[str, Any] = given if isinstance(given, dict) else {}
    name = raw.get("name") if isinstance(raw.get("name"), str) else None
    path = props.get("path") if isinstance(props.get("path"), str) else None
    for rule in pages:
        if rule.name is not None and name is not None and name.strip().lower() == rule.name.strip().lower():
            return rule.event
        if rule.path is not None:
            prefix = rule.path.rstrip("/") or "/"
            for candidate in (path, name):
                if candidate is None:
                    continue
                c = candidate.split("?", 1)[0].split("#", 1)[0]
                if c == prefix or c.startswith(prefix + "/"):
                    return rule.event
    return "Page Viewed"


def _unstorable(value: Any) -> str | None:
    """Why ``value`` (searched all through) cannot be stored and scored, or None. Text with U+0000:
    no PostgreSQL text column holds it. An integer past a double's range: most JSON readers, and
    scoring, take numbers as doubles."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return "text may not contain NUL characters (\\u0000)"
        elif isinstance(node, int) and not isinstance(node, bool):
            if abs(node) > sys.float_info.max:
                return "a number is out of range (beyond ±1.8e308)"
        elif isinstance(node, dict):
            stack.extend(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


def _encoded(raw: dict[str, Any]) -> bytes:
    """``raw`` as compact UTF-8 JSON, or an EventError when it is not storable JSON text."""
    try:
        # NaN and Infinity are not JSON (json.loads accepts them; PostgreSQL does not)
        text = json.dumps(raw, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:   # from Python callers and NaN in files; never from the HTTP API
        raise EventError("", f"not JSON: {exc}") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # "\ud800" is valid JSON but no text: no database stores it, so it is refused here, not later
        raise EventError("", "text is not valid Unicode (a lone surrogate such as \\ud800)") from None


def check_envelope(raw: Any) -> None:
    """The checks that need no rules: shape, size, depth, ids. Raises :class:`EventError`.

    An event that passes is one :func:`normalize` accepts, so nothing accepted at ingestion
    becomes a dead letter for a reason ingestion could have seen.
    """
    if not isinstance(raw, dict):
        raise EventError("", "an event must be a JSON object")
    if _depth(raw, MAX_DEPTH) > MAX_DEPTH:
        raise EventError("", f"nesting deeper than {MAX_DEPTH} levels")
    if len(_encoded(raw)) > MAX_EVENT_BYTES:
        raise EventTooLarge("", f"event larger than {MAX_EVENT_BYTES // 1024} KB")
    for key, value in raw.items():
        if problem := _unstorable(value):
            raise EventError(key, problem)
    if problem := _unstorable(list(raw)):   # the keys themselves
        raise EventError("", problem)
    etype = raw.get("type")
    if not isinstance(etype, str) or not etype:
        raise EventError("type", "is required (track, identify, page or alias)")
    mid = _opt_id(raw, "messageId")
    if mid is None:
        raise EventError("messageId", "is required (it is the idempotency key)")
    for key in ("userId", "anonymousId", "previousId"):
        _opt_id(raw, key)   # optional, but when given they must be ids
    if etype in TYPES:
        if etype == "alias":
            if _opt_id(raw, "userId") is None or _opt_id(raw, "previousId") is None:
                raise EventError("previousId" if raw.get("userId") else "userId", "alias needs userId and previousId")
        elif _opt_id(raw, "userId") is None and _opt_id(raw, "anonymousId") is None:
            raise EventError("userId", "userId or anonymousId is required")
        if etype == "track":
            ev = raw.get("event")
            if not isinstance(ev, str) or not ev.strip():
                raise EventError("event", "track needs an event name (string)")
            if len(ev) > 200:
                raise EventError("event", "is longer than 200 characters")
        for key in ("properties", "traits", "context"):
            if key in raw and raw[key] is not None and not isinstance(raw[key], dict):
                raise EventError(key, "must be an object")
        if etype == "page" and "name" in raw and raw["name"] is not None and not isinstance(raw["name"], str):
            raise EventError("name", "must be a string")
    key = event_time_key(raw)
    times = {k: parse_time(raw[k], k) for k in (key, "sentAt") if k is not None and raw.get(k) is not None}
    if key is not None and len(times) == 2 and times["sentAt"] - times[key] > MAX_SEND_DELAY:
        raise EventError(key, f"is more than {MAX_SEND_DELAY.days // 365} years before sentAt")


def event_time_key(raw: Mapping[str, Any]) -> str | None:
    """Which key holds the time the event happened, as Segment reads it: ``timestamp``, else
    ``originalTimestamp`` (where RudderStack's SDKs put it), else none (the time received)."""
    for key in ("timestamp", "originalTimestamp"):
        if raw.get(key) is not None:
            return key
    return None


def event_time(raw: Mapping[str, Any], received_at: datetime) -> datetime:
    """When the event happened, as Segment defines it.

    ``timestamp``, else ``originalTimestamp``, else ``received_at``; when the request carries
    ``sentAt``, corrected for the sender's clock skew (+ receivedAt − sentAt); a time still in
    the future is clamped to ``received_at``. Raises :class:`EventError` for a malformed time.
    """
    key = event_time_key(raw)
    if key is None:
        return received_at
    ts = parse_time(raw[key], key)
    if raw.get("sentAt") is not None:
        # ts + (receivedAt - sentAt), computed as receivedAt + (ts - sentAt): a positive offset is a
        # time in the future, clamped to receivedAt anyway, and a negative one is bounded by
        # MAX_SEND_DELAY, so only a receivedAt near year 1 (a replay in simulate) can overflow
        offset = ts - parse_time(raw["sentAt"], "sentAt")
        try:
            ts = received_at + min(offset, timedelta(0))
        except OverflowError:
            raise EventError(key, "is too long before sentAt to correct for clock skew") from None
    return min(ts, received_at)


# Context a rule may read (``context.campaign.source``, ``context.referrer.type``, ``context.page.url``):
# where the lead came from. Never the IP or user agent, which are personal and say nothing of fit.
RULE_CONTEXT = ("campaign", "referrer", "page")


def context_traits(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The attribution an event's ``context`` carries, shaped as traits under ``context``
    (``{"context": {"campaign": {...}}}``), so fit rules and team matches read it by dotted path
    like any trait; empty when the event carries none."""
    ctx = raw.get("context")
    if not isinstance(ctx, Mapping):
        return {}
    kept = {k: ctx[k] for k in RULE_CONTEXT if isinstance(ctx.get(k), Mapping) and ctx[k]}
    return {"context": kept} if kept else {}


def normalize(
    raw: Mapping[str, Any],
    *,
    source: str,
    received_at: datetime,
    pages: list[PageRule],
) -> Event:
    """Validate ``raw`` and return the :class:`Event` it describes.

    ``received_at`` is when ingestion accepted it (or the envelope's ``receivedAt``); the event's
    time is :func:`event_time` (``timestamp``, else ``originalTimestamp``, skew-corrected by
    ``sentAt``, never later than ``received_at``).
    """
    check_envelope(raw)
    etype = str(raw["type"])
    ts = event_time(raw, received_at)
    props = raw.get("properties") or {}
    traits = raw.get("traits") or {}
    if etype == "track":
        kind, name = "track", str(raw["event"]).strip()
    elif etype == "page":
        kind, name = "track", map_page(raw, pages)
    elif etype in ("identify", "alias"):
        kind, name = etype, None
    else:
        kind, name = "other", None
    if etype == "page" and not traits:
        ctx = raw.get("context")
        if isinstance(ctx, dict) and isinstance(ctx.get("traits"), dict):
            traits = ctx["traits"]
    return Event(
        type=kind,
        message_id=str(_opt_id(raw, "messageId")),
        source=source,
        timestamp=ts,
        received_at=received_at,
        user_id=_opt_id(raw, "userId"),
        anonymous_id=_opt_id(raw, "anonymousId"),
        previous_id=_opt_id(raw, "previousId"),
        name=name,
        properties=props if isinstance(props, dict) else {},
        traits=traits if isinstance(traits, dict) else {},
        raw=raw,
        attribution=context_traits(raw),
    )
