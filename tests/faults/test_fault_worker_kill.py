"""``kill -9`` of Celery worker processes mid-stream, before and after their commit.

What the integration suite already shows (a whole worker group killed mid-drain, entries of a consumer
that is gone claimed without a new kick) is not repeated here. These pin the two moments a batch can
die at: a pool child killed while its batch waits for its transaction (the pool lives on and replaces
it), and a whole group killed after its transaction committed and before it acknowledged the entries.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from tests.support.faults import Publisher, Store, TcpProxy, background, children_of
from tests.support.stack import Processes, RedisServer, wait_until
from worker.adapters import db

QUEUES = "events,fast"


@contextmanager
def database_write_lock(url: str) -> Iterator[None]:
    """Hold the lock every batch needs before it can commit: SQLite's write lock, or PostgreSQL's
    EXCLUSIVE lock on ``events`` (reads go on, inserts wait)."""
    if url.startswith("sqlite"):
        lite = sqlite3.connect(url.split("///", 1)[1], timeout=30, isolation_level=None)
        lite.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            lite.execute("ROLLBACK")
            lite.close()
        return
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("LOCK TABLE events IN EXCLUSIVE MODE"))
            try:
                yield
            finally:
                conn.rollback()
    finally:
        engine.dispose()


def consumer_pid(name: str) -> int:
    """Consumers are named ``<host>-<pid>``."""
    return int(name.rpartition("-")[2])


def test_a_pool_child_killed_before_its_commit_is_replaced_and_its_batch_claimed(
        service_env: dict[str, str], processes: Processes) -> None:
    processes.env.update({"LEADROUTER_RECLAIM_IDLE_SECONDS": "2", "LEADROUTER_BATCH_SIZE": "20"})
    worker = processes.celery_worker(queues=QUEUES, concurrency=2)
    pub = Publisher(service_env["REDIS_URL"], service_env["LEADROUTER_CONFIG"])
    store = Store(service_env["DATABASE_URL"])
    try:
        first = background("k1", 100)
        pub.publish(first)
        wait_until(lambda: store.count(db.Event) == len(first) and pub.drained(), timeout=40,
                   message="the first wave")

        second = background("k2", 200)
        with database_write_lock(service_env["DATABASE_URL"]):
            pub.publish(second)
            pool = children_of(worker.pid)

            def holder() -> str | None:
                return next((name for name, n in pub.held_by().items() if n > 0 and consumer_pid(name) in pool),
                            None)

            victim = wait_until(holder, timeout=20, message="a pool child holding a batch it cannot commit")
            held = pub.held_by()[victim]
            os.kill(consumer_pid(victim), signal.SIGKILL)
            wait_until(lambda: consumer_pid(victim) not in children_of(worker.pid)
                       and len(children_of(worker.pid)) == 2, timeout=20, message="the pool to replace its child")
            assert held > 0 and store.count(db.Event) == len(first)   # the killed batch committed nothing

        third = background("k3", 100)   # the stream goes on while the dead child's entries wait to be claimed
        pub.publish(third)
        everything = first + second + third
        wait_until(lambda: store.count(db.Event) >= len(everything) and pub.drained(), timeout=60,
                   message="every event after the kill")
        store.exactly_once(everything)
        assert store.count(db.DeadLetter) == 0
        assert pub.held_by().get(victim, 0) == 0      # taken over by another consumer (XAUTOCLAIM)
        assert worker.poll() is None                  # the worker itself never went down
    finally:
        pub.close()
        store.close()


def test_a_worker_group_killed_after_its_commit_and_before_its_ack_doubles_nothing(
        service_env: dict[str, str], processes: Processes, redis_server: RedisServer) -> None:
    # The workers reach Redis through a proxy that can hold back what they send: a batch that commits
    # while the proxy holds is committed and its XACK has not reached Redis. The group is killed then,
    # and what it had sent is thrown away.
    proxy = TcpProxy(("127.0.0.1", redis_server.port)).start()
    processes.env.update({"REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0", "LEADROUTER_RECLAIM_IDLE_SECONDS": "2",
                          "LEADROUTER_BATCH_SIZE": "10"})
    worker = processes.celery_worker(queues=QUEUES, concurrency=2)
    pub = Publisher(service_env["REDIS_URL"], service_env["LEADROUTER_CONFIG"])
    store = Store(service_env["DATABASE_URL"])
    try:
        events = background("a", 800, leads=60)
        pub.publish(events, chunk=400)
        wait_until(lambda: store.count(db.Event) >= 30, timeout=40, message="processing")

        for _ in range(20):
            proxy.hold()
            at_hold = store.count(db.Event)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and store.count(db.Event) == at_hold:
                time.sleep(0.02)
            if store.count(db.Event) > at_hold:
                break   # a batch committed after the hold: its acknowledgement is stuck in the proxy
            proxy.release()   # every child was between batches: try again
            time.sleep(0.1)
        else:
            raise AssertionError("no batch was ever caught between its commit and its acknowledgement")
        processes.kill(worker)
        proxy.cut()
        proxy.restore()
        committed = store.message_ids()

        unacknowledged = pub.pending_message_ids()
        assert committed & unacknowledged, "the killed group held committed, unacknowledged entries"
        assert len(committed) < len(events), "the group died with work left"

        replacement = processes.celery_worker(queues=QUEUES, concurrency=2)
        wait_until(lambda: store.count(db.Event) >= len(events) and pub.drained(), timeout=60,
                   message="every event after the restart")
        store.exactly_once(events)
        assert store.count(db.DeadLetter) == 0
        assert replacement.poll() is None
    finally:
        pub.close()
        store.close()
        proxy.stop()
