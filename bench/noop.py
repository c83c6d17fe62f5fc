"""The raw Celery rate to compare event throughput against: a task that only counts itself.

A Celery app of its own on the product's broker (``REDIS_URL``) and a queue of
its own, configured like ``worker.app`` so the only difference is the work:
``celery -A bench.noop worker -Q bench_noop -c 2``.
"""

from __future__ import annotations

import os

import redis
from celery import Celery

QUEUE = "bench_noop"
COUNTER = "bench:noop:done"

app = Celery("bench_noop", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_default_queue=QUEUE,
    task_acks_late=False,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    worker_send_task_events=False,
    timezone="UTC",
)

_client: tuple[int, redis.Redis] | None = None


def _redis() -> redis.Redis:
    """One connection per worker process, made after the fork."""
    global _client
    if _client is None or _client[0] != os.getpid():
        _client = (os.getpid(), redis.Redis.from_url(os.environ["REDIS_URL"]))
    return _client[1]


@app.task(name="bench.noop.bump", ignore_result=True)
def bump() -> None:
    _redis().incr(COUNTER)
