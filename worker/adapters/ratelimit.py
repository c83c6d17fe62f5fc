"""Provider rate limits, shared by every process through Redis: a token bucket per sender, and a pool.

Twilio places outbound calls at 1 per second per account by default and queues the calls it is
asked for faster (they ring later, they are not refused); a US long code sends 1 SMS segment a
second, and Twilio queues messages the same way. So a burst is never refused here either: each
request *reserves* the next slot of its sender's bucket and learns how long the provider will hold
it, and a :class:`SenderPool` gives the sender with the nearest slot, so a burst spreads over the
whole pool instead of queueing behind one number. The bucket lives in Redis and is taken by one
Lua script, atomically, on Redis's own clock, so workers on several machines share it exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

# KEYS[1]: the bucket. ARGV: rate (tokens a second), burst (capacity), ttl (ms), reserve (1: take the
# token even if it is not there yet, up to a day of debt). Returns 0 when a token was there, else the
# milliseconds until it is (with reserve: until the slot taken now comes round).
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local reserve = tonumber(ARGV[4]) == 1
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
  if reserve and tokens > -86400 * rate then
    tokens = tokens - 1
  end
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) + wait)
return wait
"""

PREFIX = "leadrouter:ratelimit:"


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
        return self._run(reserve=False)

    def reserve(self) -> float:
        """Take the next slot, now or later: the seconds until it comes round (0.0: now)."""
        return self._run(reserve=True)

    def _run(self, *, reserve: bool) -> float:
        ttl = int(max(self.burst / self.rate, 1) * 1000) + 1000
        wait = self._script(keys=[PREFIX + self.key], args=[self.rate, self.burst, ttl, 1 if reserve else 0])
        return int(wait) / 1000


# KEYS: the pool's buckets, in the order to try them. ARGV: rate, burst, ttl (ms), cost (tokens). Refills each
# bucket, picks the one whose next slot comes soonest (the first of equals), reserves ``cost`` tokens there
# and returns {its index (1-based), the milliseconds until the last of them comes round}. One script, so two
# processes picking at once never both take the same slot.
_PICK = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local best, best_tokens = nil, nil
for i, key in ipairs(KEYS) do
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local tokens = tonumber(state[1])
  local at = tonumber(state[2])
  if tokens == nil or at == nil then
    tokens, at = burst, now
  end
  tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
  if best == nil or tokens > best_tokens then
    best, best_tokens = i, tokens
  end
end
local tokens = best_tokens - cost
local wait = 0
if tokens < 0 then
  wait = math.ceil(-tokens * 1000 / rate)
end
redis.call('HSET', KEYS[best], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[best], tonumber(ARGV[3]) + wait)
return {best, wait}
"""


class SenderPool:
    """Senders of one kind (``call``, ``sms``), each with its own bucket; :meth:`pick` names the one to use.

    The pool is read through ``senders`` at each pick, so a changed rules file counts at once.
    Senders are tried from a rotating start, so a burst spreads over the whole pool. The pick is one
    Redis script over every sender's bucket: processes picking at once never take the same slot."""

    def __init__(self, client: redis.Redis, kind: str, senders: Callable[[], Sequence[str]],
                 rate: Callable[[], float], *, burst: float = 1) -> None:
        if burst < 1:
            raise ValueError("a bucket needs a burst of at least 1")
        self._kind, self._senders, self._rate, self._burst = kind, senders, rate, burst
        self._turn = itertools.count()
        self._script = client.register_script(_PICK)

    def pick(self, cost: int = 1) -> tuple[str, float]:
        """The sender whose next slot comes soonest, reserved (a sender with a token now first):
        (sender, seconds the provider will hold the request). Never waits, never refuses. A request that
        costs several tokens (an SMS of several segments) takes them all on the one sender."""
        senders = list(dict.fromkeys(self._senders()))
        if not senders:
            raise ValueError(f"no {self._kind} sender is configured")
        rate = self._rate()
        if rate <= 0:
            raise ValueError("a bucket needs a positive rate")
        start = next(self._turn) % len(senders)
        order = senders[start:] + senders[:start]
        ttl = int(max(self._burst / rate, 1) * 1000) + 1000
        index, wait = self._script(keys=[f"{PREFIX}{self._kind}:{s}" for s in order],
                                   args=[rate, self._burst, ttl, max(1, int(cost))])
        return order[int(index) - 1], int(wait) / 1000
