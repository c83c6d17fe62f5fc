"""The durable event log: Redis Streams with a consumer group.

Events are appended with XADD (durable as Redis' AOF is), read in batches with
XREADGROUP, acknowledged with XACK only after their database transaction
commits, and taken over from a dead consumer with XAUTOCLAIM. Celery messages
only *kick* a drain; losing one loses no event.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import redis

GROUP = "workers"
FAST, NORMAL = "fast", "normal"
LANES = (FAST, NORMAL)
PREFIX = "lr"


def stream_key(lane: str) -> str:
    return f"{PREFIX}:events:{lane}"


def kick_key(lane: str) -> str:
    return f"{PREFIX}:kick:{lane}"


def sweep_key(lane: str) -> str:
    return f"{PREFIX}:sweep:{lane}"


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class Entry:
    id: str
    source: str
    received_at: str
    payload: dict[str, Any]
    deliveries: int = 1


def ensure_groups(r: redis.Redis) -> None:
    for lane in LANES:
        try:
            r.xgroup_create(stream_key(lane), GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


def append(r: redis.Redis, lane: str, items: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    """XADD each (source, received_at, payload); one round trip for the lot."""
    pipe = r.pipeline(transaction=False)
    for source, received_at, payload in items:
        pipe.xadd(stream_key(lane), {"s": source, "r": received_at,
                                     "p": json.dumps(payload, separators=(",", ":"))})
    return [i.decode() if isinstance(i, bytes) else i for i in pipe.execute()]


def _decode(raw: list[Any]) -> list[Entry]:
    out = []
    for entry_id, fields in raw:
        if fields is None:  # deleted while pending
            continue
        f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
             for k, v in fields.items()}
        try:
            payload = json.loads(f.get("p", "{}"))
        except ValueError:
            payload = {"_unparseable": f.get("p", "")}
        eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        out.append(Entry(eid, f.get("s", "default"), f.get("r", ""), payload))
    return out


def read_batch(r: redis.Redis, lane: str, consumer: str, count: int, *, reclaim_idle_ms: int) -> list[Entry]:
    """This consumer's own unacknowledged entries first, then a dead consumer's, then new ones."""
    try:
        return _read_batch(r, lane, consumer, count, reclaim_idle_ms)
    except redis.ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
    # First read on this Redis (or its data was lost): the group starts at 0, so every
    # entry already appended is still delivered.
    ensure_groups(r)
    return _read_batch(r, lane, consumer, count, reclaim_idle_ms)


def _read_batch(r: redis.Redis, lane: str, consumer: str, count: int, reclaim_idle_ms: int) -> list[Entry]:
    key = stream_key(lane)
    # RESP2 replies: [[key, entries]], or empty
    mine = cast("list[list[Any]]", r.xreadgroup(GROUP, consumer, {key: "0"}, count=count))
    entries = _decode(mine[0][1]) if mine else []
    if len(entries) < count:
        claimed = r.xautoclaim(key, GROUP, consumer, min_idle_time=reclaim_idle_ms, start_id="0-0",
                               count=count - len(entries))
        entries += _decode(claimed[1])
    if len(entries) < count:
        fresh = cast("list[list[Any]]", r.xreadgroup(GROUP, consumer, {key: ">"}, count=count - len(entries)))
        if fresh:
            entries += _decode(fresh[0][1])
    return entries


def ack(r: redis.Redis, lane: str, ids: list[str]) -> None:
    if not ids:
        return
    pipe = r.pipeline(transaction=True)
    pipe.xack(stream_key(lane), GROUP, *ids)
    pipe.xdel(stream_key(lane), *ids)
    pipe.execute()


def pending_count(r: redis.Redis, lane: str) -> int:
    """Entries read by some consumer and not yet acknowledged."""
    try:
        return int(r.xpending(stream_key(lane), GROUP)["pending"])
    except redis.ResponseError:  # no group yet: nothing was read
        return 0


def backlog(r: redis.Redis, lane: str) -> dict[str, int]:
    """Entries not yet read by the group (lag) and read but unacknowledged (pending)."""
    key = stream_key(lane)
    try:
        groups = r.xinfo_groups(key)
    except redis.ResponseError:
        return {"waiting": 0, "pending": 0}
    for g in groups:
        name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
        if name == GROUP:
            lag = g.get("lag")
            if lag is None:  # Redis < 7 or an undetermined lag: fall back to the stream length
                lag = max(0, r.xlen(key) - int(g.get("pending", 0)))
            return {"waiting": int(lag), "pending": int(g.get("pending", 0))}
    return {"waiting": r.xlen(key), "pending": 0}


@dataclass
class _Held:
    r: redis.Redis
    lane: str
    consumer: str
    ids: set[str]
    every: float
    next_at: float


_held: dict[int, _Held] = {}    # batches being worked on in this process, by token
_held_lock = threading.Lock()
_keeper: tuple[int, threading.Thread] | None = None
_tokens = itertools.count(1)


@contextmanager
def keep_claimed(r: redis.Redis, lane: str, consumer: str, ids: list[str], every: float) -> Iterator[None]:
    """While the body works on ``ids``, keep their idle time short, every ``every`` seconds: a slow batch is
    still this consumer's, and ``XAUTOCLAIM`` hands it to no one else in turn. Only the entries this
    consumer still holds are touched (one another consumer took over stays theirs). One thread per
    process does it for every batch held: a drain costs a registration, not a thread of its own."""
    global _keeper
    token = next(_tokens)
    with _held_lock:
        if _keeper is None or _keeper[0] != os.getpid() or not _keeper[1].is_alive():
            _held.clear()    # a forked child holds none of its parent's batches
            thread = threading.Thread(target=_keep, name="keep-claimed", daemon=True)
            _keeper = (os.getpid(), thread)
            thread.start()
        _held[token] = _Held(r, lane, consumer, set(ids), every, time.monotonic() + every)
    try:
        yield
    finally:
        with _held_lock:
            _held.pop(token, None)


def _keep() -> None:
    while True:
        time.sleep(0.05)
        now = time.monotonic()
        with _held_lock:
            due = [h for h in _held.values() if h.next_at <= now]
            for h in due:
                h.next_at = now + h.every
        for h in due:
            _refresh(h)


def _refresh(h: _Held) -> None:
    key = stream_key(h.lane)
    try:
        rows = h.r.xpending_range(key, GROUP, min="-", max="+", count=len(h.ids) + 100, consumername=h.consumer)
        held = (row["message_id"] for row in rows)
        mine: list[int | bytes | str | memoryview[int]] = [
            i for i in (m.decode() if isinstance(m, bytes) else str(m) for m in held) if i in h.ids]
        if mine:
            h.r.xclaim(key, GROUP, h.consumer, min_idle_time=0, message_ids=mine, justid=True)
    except redis.RedisError:
        pass   # Redis away: the batch's own read or ack will say so
