"""Which processes are alive to finish the alert steps they claimed.

A process that claims steps (an alert worker, a fast-lane worker sending first
alerts inline) keeps a short-lived Redis key fresh from a thread of its own
while it lives. A step left ``firing`` by a process whose key has expired
belongs to a process that died: the scheduler releases it within seconds. A
step of a process that is alive is never released, however slow its provider.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import redis

log = logging.getLogger("leadrouter.liveness")

TTL_SECONDS = 5          # a process silent this long is taken for dead
EVERY_SECONDS = 1.0      # how often a living process says so
_PREFIX = "lr:alive:"

_started: tuple[int, threading.Thread] | None = None
_client: redis.Redis | None = None
_lock = threading.Lock()


def claimer_id() -> str:
    """This process, as ``alert_steps.claimed_by`` names it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def keep_alive(r: redis.Redis) -> None:
    """Say this process is alive, and keep saying it from a daemon thread (one per process). Only the
    first call of a process waits on Redis; later ones find the thread running."""
    global _started, _client
    with _lock:
        _client = r     # the thread says it through the client its process uses now
        if _started is not None and _started[0] == os.getpid() and _started[1].is_alive():
            return
        me = claimer_id()
        try:
            r.set(_PREFIX + me, 1, ex=TTL_SECONDS)
        except redis.RedisError as exc:
            log.warning("could not say this process is alive (%s); its steps may be released", type(exc).__name__)
        thread = threading.Thread(target=_beat, args=(me,), name="alive", daemon=True)
        _started = (os.getpid(), thread)
        thread.start()


def _beat(me: str) -> None:
    while True:
        time.sleep(EVERY_SECONDS)
        try:
            if _client is not None:
                _client.set(_PREFIX + me, 1, ex=TTL_SECONDS)
        except redis.RedisError:
            pass   # Redis away: the key lapses, and the steps are released only if it stays away


def alive(r: redis.Redis, claimers: list[str]) -> set[str]:
    """The ``claimers`` whose processes are alive; raises ``redis.RedisError`` when Redis cannot tell."""
    if not claimers:
        return set()
    found = r.mget([_PREFIX + c for c in claimers])
    return {c for c, value in zip(claimers, found, strict=True) if value is not None}
