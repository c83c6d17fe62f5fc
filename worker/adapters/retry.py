"""What the worker tries again after an error, how often, and how long it waits between tries.

Every retry in ``worker/`` is one of the policies below. Each says what it retries with an
explicit ``on``: whether an error may be tried again is a decision about that error, never a
default (a send that may already be out must not go twice; a bad entry must end dead-lettered,
not retried forever). The shape is stamina's (hynek/stamina): ``on`` answers ``True`` (retry
after the exponential backoff), a number of seconds (retry after exactly that, a provider's
``Retry-After``) or ``False`` (raise now); the backoff before retry ``n`` is
``min(wait_max, wait_initial * 2 ** (n - 1) + uniform(0, wait_jitter))``.

It is not stamina itself because stamina takes neither the sleep nor the random source as an
argument (it has one global switch that removes every wait): the tests here check the waits
themselves, a capped ``Retry-After`` among them, without sleeping for them.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError

from worker.adapters.channels.base import Channel, OutboundMessage, SendResult, TransportError

log = logging.getLogger("leadrouter.retry")


class BatchTooSlow(RuntimeError):
    """A batch ran past its deadline; its transaction is rolled back and the caller splits it."""
T = TypeVar("T")
Verdict = bool | float   # retry after the backoff / after exactly these seconds / raise now


# ---------------------------------------------------------------- what is retried


def is_outage(exc: BaseException) -> bool:
    """The database is away (a dropped connection, a server restarting, a lock timeout, a deadlock
    victim on PostgreSQL): the same work succeeds once it is back."""
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


def is_failure(exc: BaseException) -> bool:
    """Any other error: a race lost to another worker (a unique key taken meanwhile) passes on a
    second try; a bad entry does not, and is isolated after its tries."""
    return isinstance(exc, Exception) and not is_outage(exc)


def is_lost_race(exc: BaseException) -> bool:
    """A batch that failed otherwise than by an outage or by running late (which is split, not
    retried): a deadlock victim or a race lost to another worker passes as a whole on a second try."""
    return is_failure(exc) and not isinstance(exc, BatchTooSlow)


def unsent(max_retry_after: float) -> Callable[[BaseException], Verdict]:
    """A provider error that proves nothing was sent (connection refused, 429, 503), after the
    provider's ``Retry-After`` where it gave one (at most ``max_retry_after`` seconds). A
    ``maybe_sent`` is never retried: neither provider takes an idempotency key, so a second request
    could deliver the alert twice."""

    def verdict(exc: BaseException) -> Verdict:
        if not isinstance(exc, TransportError) or exc.kind != "transient":
            return False
        if exc.retry_after is None:
            return True
        return max(0.0, min(exc.retry_after, max_retry_after))

    return verdict


# ---------------------------------------------------------------- how


@dataclass(frozen=True)
class Policy:
    """Call a function again while ``on`` says so, up to ``attempts`` calls in all and ``timeout``
    seconds of waiting in all (``None``: no such bound); past either, the last error is raised."""

    name: str                                  # what is being retried, for the log line of each retry
    on: Callable[[BaseException], Verdict]
    attempts: int | None = None
    timeout: float | None = None
    wait_initial: float = 0.0
    wait_max: float = 0.0
    wait_jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.attempts is None and self.timeout is None:
            raise ValueError(f"retry policy {self.name!r} needs attempts or a timeout: it would never give up")

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """The wait before retry number ``retry`` (1 for the first retry)."""
        jitter = (rng or random).uniform(0, self.wait_jitter) if self.wait_jitter else 0.0
        try:
            return min(self.wait_max, self.wait_initial * 2 ** (retry - 1) + jitter)
        except OverflowError:
            return self.wait_max

    def call(self, fn: Callable[[], T], *, about: str = "", sleep: Callable[[float], None] = time.sleep,
             rng: random.Random | None = None) -> T:
        """``fn()``, tried again as this policy says; ``about`` names the work in the log."""
        waited = 0.0
        attempt = 1
        while True:
            try:
                return fn()
            except BaseException as exc:
                verdict = self.on(exc)
                if verdict is False or (self.attempts is not None and attempt >= self.attempts):
                    raise
                delay = self.backoff(attempt, rng) if verdict is True else float(verdict)
                if self.timeout is not None and waited >= self.timeout:
                    raise
                log.warning("%s%s: %s%s; try %d%s in %.2fs", self.name, f" ({about})" if about else "",
                            type(exc).__name__, _first_line(exc), attempt + 1,
                            f" of {self.attempts}" if self.attempts is not None else "", delay)
                sleep(delay)
                waited += delay
                attempt += 1

    def but(self, **changes: object) -> Policy:
        """The same policy with some bounds changed (``attempts=3``)."""
        return replace(self, **changes)  # type: ignore[arg-type]


def _first_line(exc: BaseException) -> str:
    """The error's first line: a database error's SQL and parameters stay out of the log."""
    lines = str(exc).splitlines()
    return f": {lines[0][:200]}" if lines else ""


# ---------------------------------------------------------------- the policies

# A drain waits out a database outage with its batch held (never dead-lettering it, SPEC §8), up
# to ten minutes of waiting; then it leaves the batch pending for a later drain.
OUTAGE_WAIT_LIMIT = 600.0
DRAIN_OUTAGE = Policy("the database is unavailable, a batch waits", on=is_outage, timeout=OUTAGE_WAIT_LIMIT,
                      wait_initial=0.2, wait_max=5.0, wait_jitter=0.1)
# A batch that failed otherwise is applied once more as a whole (a deadlock victim, a lost race)
# before its entries are applied one by one.
BATCH_AGAIN = Policy("a batch failed, once more as a whole", on=is_lost_race, attempts=2)
# One entry on its own: three tries, then it is dead-lettered with its error (SPEC §2).
ENTRY_AGAIN = Policy("an entry failed", on=is_failure, attempts=3)
# The providers have answered: a short database outage must not lose what they said.
RECORD_OUTAGE = Policy("the database is unavailable while recording deliveries", on=is_outage, attempts=3,
                       wait_initial=0.5, wait_max=2.0)
# A send that provably did not go out. The waits have a random part, so a fleet of workers hit by
# the same 429 does not come back in lock-step.
SEND = Policy("a send was refused", on=unsent(30.0), attempts=4, wait_initial=0.1, wait_max=5.0, wait_jitter=0.1)


def send_with_retry(channel: Channel, msg: OutboundMessage, *, attempts: int = 4, max_retry_after: float = 30.0,
                    sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None) -> SendResult:
    """Send, retrying only errors that prove nothing was sent (:data:`SEND`)."""
    policy = SEND.but(attempts=attempts, on=unsent(max_retry_after))
    return policy.call(lambda: channel.send(msg), about=f"delivery {msg.delivery_id} via {channel.name}",
                       sleep=sleep, rng=rng)
