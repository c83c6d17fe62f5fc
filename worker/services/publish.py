"""Publishing events: validate the envelope, append to the durable stream, kick a drain.

``publish()`` returns only after Redis has accepted every event (XADD), so an
event it reports as accepted survives a worker crash.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis

from routing.config import Rules
from routing.events import EventError, check_envelope, iso, map_page
from routing.scoring import event_rule
from worker.adapters import stream
from worker.adapters.db import now_utc

CLI_SOURCE = "default"


@dataclass
class PublishResult:
    accepted: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)   # {"index", "messageId", "field", "error"}
    fast: int = 0


def lane_for(raw: dict[str, Any], rules: Rules) -> str:
    """High-value events take the fast lane so a backlog of page views never delays them."""
    name: str | None = None
    if raw.get("type") == "track" and isinstance(raw.get("event"), str):
        name = raw["event"].strip()
    elif raw.get("type") == "page":
        name = map_page(raw, rules.pages)
    if name is None:
        return stream.NORMAL
    rule = event_rule(rules.scoring, name)
    if rule is not None and rule.points >= rules.alerts.fast_lane_min_points:
        return stream.FAST
    return stream.NORMAL


def publish(
    r: redis.Redis,
    events: Iterable[Any],
    rules: Rules,
    *,
    source: str = CLI_SOURCE,
    received_at: datetime | None = None,
    kick: Any = None,
) -> PublishResult:
    """Validate and durably queue ``events``; bad ones are reported by index and never queued."""
    received = iso(received_at or now_utc()) or ""
    result = PublishResult()
    lanes: dict[str, list[tuple[str, str, dict[str, Any]]]] = {stream.FAST: [], stream.NORMAL: []}
    for index, raw in enumerate(events):
        try:
            check_envelope(raw)
        except EventError as exc:
            mid = raw.get("messageId") if isinstance(raw, dict) else None
            result.errors.append({"index": index, "messageId": mid if isinstance(mid, str) else None,
                                  "field": exc.field, "error": exc.message})
            continue
        lanes[lane_for(raw, rules)].append((source, received, raw))
    for lane, items in lanes.items():
        if not items:
            continue
        stream.append(r, lane, items)
        result.accepted += len(items)
        if lane == stream.FAST:
            result.fast += len(items)
        (kick or kick_drain)(r, lane)
    return result


def kick_drain(r: redis.Redis, lane: str) -> None:
    """Ask a worker to drain ``lane``, unless a drain is already on its way."""
    if r.set(stream.kick_key(lane), "1", nx=True, px=2000):
        from worker.app import DRAIN, app

        app.send_task(DRAIN, args=(lane,), queue=queue_for(lane))


def queue_for(lane: str) -> str:
    return "fast" if lane == stream.FAST else "events"
