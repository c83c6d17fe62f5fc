"""Provider rate limits, shared by every process through Redis: a token bucket per sender, and a pool.

Twilio places outbound calls at 1 per second per account by default (faster calls are queued by
Twilio, ringing later), and a US long code sends 1 SMS segment a second. A burst of hot leads
must neither be refused nor silently pile up behind one number: each sender has a bucket, a
:class:`SenderPool` takes the first sender of its pool with a token, and waits (briefly) for the
soonest one otherwise. The bucket lives in Redis and is taken by one Lua script, atomically, with
Redis's own clock, so workers on several machines share it exactly.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

# KEYS[1]: the bucket. ARGV: rate (tokens a second), burst (capacity), ttl (ms).
# Returns 0 when a token was taken, else the milliseconds until one will be there.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens, at = burst, now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return wait
"""

PREFIX = "leadrouter:ratelimit:"


class RateLimited(Exception):
    """No sender of the pool had a token within the wait allowed."""

    def __init__(self, kind: str, wait: float) -> None:
        super().__init__(f"every {kind} sender is at its rate limit; the next token in {wait:.2f} s")
        self.wait = wait


@dataclass
class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` kept, under one Redis key."""

    client: redis.Redis
    key: str
    rate: float
    burst: float = 1

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("a bucket needs a positive rate and a burst of at least 1")
        self._script = self.client.register_script(_TAKE)

    def take(self) -> float:
        """Take a token: 0.0 when taken, else the seconds until one is there (nothing is taken)."""
        ttl = int(max(self.burst / self.rate, 1) * 1000) + 1000
        wait = self._script(keys=[PREFIX + self.key], args=[self.rate, self.burst, ttl])
        return int(wait) / 1000


class SenderPool:
    """Senders of one kind (``call``, ``sms``), each with its own bucket; ``acquire`` names the one to use.

    The pool is read through ``senders`` at each acquire, so a changed rules file takes effect
    at once. Senders are tried from a rotating start: a burst spreads over the whole pool."""

    def __init__(self, client: redis.Redis, kind: str, senders: Callable[[], Sequence[str]], rate: Callable[[], float],
                 *, burst: float = 1, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client, self._kind, self._senders, self._rate, self._burst = client, kind, senders, rate, burst
        self._sleep, self._clock = sleep, clock
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, float], TokenBucket] = {}

    def _bucket(self, sender: str, rate: float) -> TokenBucket:
        with self._lock:
            bucket = self._buckets.get((sender, rate))
            if bucket is None:
                bucket = self._buckets[(sender, rate)] = TokenBucket(self._client, f"{self._kind}:{sender}", rate,
                                                                     self._burst)
            return bucket

    def acquire(self, max_wait: float) -> str:
        """The sender to use now, its token taken; waits up to ``max_wait`` seconds for one, else
        raises :class:`RateLimited` (nothing taken)."""
        senders = list(self._senders())
        if not senders:
            raise ValueError(f"no {self._kind} sender is configured")
        rate = self._rate()
        deadline = self._clock() + max_wait
        while True:
            start = next(self._turn) % len(senders)
            soonest = float("inf")
            for sender in senders[start:] + senders[:start]:
                wait = self._bucket(sender, rate).take()
                if wait == 0:
                    return sender
                soonest = min(soonest, wait)
            left = deadline - self._clock()
            if soonest > left:
                raise RateLimited(self._kind, soonest)
            self._sleep(soonest)
