"""Provider rate limits on a real Redis: a token bucket per sender, shared by every process, and a pool."""

from __future__ import annotations

import multiprocessing
import time
import uuid

import pytest
import redis

from tests.support.stack import RedisServer
from worker.adapters.ratelimit import SenderPool, TokenBucket


@pytest.fixture
def client(redis_server: RedisServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=redis_server.port)


def test_a_bucket_gives_its_burst_then_says_how_long_to_wait(client: redis.Redis) -> None:
    bucket = TokenBucket(client, f"t:{uuid.uuid4()}", rate=2, burst=3)
    assert [bucket.take() for _ in range(3)] == [0, 0, 0]
    wait = bucket.take()
    assert 0.3 < wait <= 0.5, wait
    time.sleep(wait)   # the bucket refills on Redis's clock: this is the wait it asked for, not a guess
    assert bucket.take() == 0


def test_bad_buckets_are_refused(client: redis.Redis) -> None:
    with pytest.raises(ValueError):
        TokenBucket(client, "x", rate=0)
    with pytest.raises(ValueError):
        TokenBucket(client, "x", rate=1, burst=0)


def _take_many(port: int, key: str, n: int, out: multiprocessing.Queue) -> None:   # type: ignore[type-arg]
    bucket = TokenBucket(redis.Redis(host="127.0.0.1", port=port), key, rate=0.001, burst=10)
    out.put(sum(1 for _ in range(n) if bucket.take() == 0))


def test_processes_share_one_bucket(redis_server: RedisServer) -> None:
    key, out = f"t:{uuid.uuid4()}", multiprocessing.get_context("spawn").Queue()
    procs = [multiprocessing.get_context("spawn").Process(target=_take_many, args=(redis_server.port, key, 8, out))
             for _ in range(3)]
    for p in procs:
        p.start()
    taken = sum(out.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert taken == 10   # 24 attempts from 3 processes, exactly the burst granted


def test_reserving_takes_the_next_slot_and_says_when_it_comes(client: redis.Redis) -> None:
    bucket = TokenBucket(client, f"t:{uuid.uuid4()}", rate=1, burst=1)
    waits = [bucket.reserve() for _ in range(4)]
    assert waits[0] == 0 and [round(w) for w in waits[1:]] == [1, 2, 3]
    assert bucket.take() > 3   # the reserved slots are spoken for


def test_a_pool_spreads_a_burst_over_its_senders_then_reserves_the_nearest_slot(client: redis.Redis) -> None:
    kind = f"sms-{uuid.uuid4()}"
    senders = ["+14155550100", "+14155550109", "+14155550119"]
    pool = SenderPool(client, kind, lambda: senders, lambda: 1.0)
    first = [pool.pick() for _ in range(3)]
    assert sorted(s for s, _ in first) == sorted(senders) and all(w == 0 for _, w in first)
    later = [pool.pick() for _ in range(6)]
    assert sorted(s for s, _ in later) == sorted(senders * 2)   # each sender's queue grows by one, in turn
    assert sorted(round(w) for _, w in later) == [1, 1, 1, 2, 2, 2]


def test_an_empty_pool_is_a_configuration_error(client: redis.Redis) -> None:
    with pytest.raises(ValueError, match="no sms sender"):
        SenderPool(client, "sms", lambda: [], lambda: 1.0).pick()


def test_a_pool_picked_from_many_threads_at_once_never_overbooks_a_sender(client: redis.Redis) -> None:
    from concurrent.futures import ThreadPoolExecutor

    kind = f"sms-{uuid.uuid4()}"
    senders = ["+14155550100", "+14155550109", "+14155550119"]
    pools = [SenderPool(client, kind, lambda: senders, lambda: 1.0) for _ in range(4)]   # four "processes"
    with ThreadPoolExecutor(12) as ex:
        picks = list(ex.map(lambda i: pools[i % 4].pick(cost=1 + i % 2), range(12)))   # 18 segments in all
    booked = {s: sum(1 + i % 2 for i, (p, _) in enumerate(picks) if p == s) for s in senders}
    assert sum(booked.values()) == 18 and max(booked.values()) - min(booked.values()) <= 2, booked
    for s in senders:   # each sender's last slot is its own segments beyond its first, at 1 a second
        assert max(w for p, w in picks if p == s) <= booked[s] - 1 + 0.1, (s, booked, picks)


def test_a_message_of_several_segments_takes_them_all_on_one_sender(client: redis.Redis) -> None:
    pool = SenderPool(client, f"sms-{uuid.uuid4()}", lambda: ["+14155550100"], lambda: 2.0)
    assert pool.pick(cost=2) == ("+14155550100", 0.5)   # the first segment now, the second half a second on
    sender, wait = pool.pick()
    assert 0.9 < wait <= 1.0, wait
