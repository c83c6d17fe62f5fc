"""The Celery application: ``celery -A worker.app worker``.

Queues: ``events`` (normal drains), ``fast`` (high-value drains) and
``alerts`` (batches of alert steps), each given its own worker capacity by
``leadrouter worker`` so alerts never wait behind event processing.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from kombu.transport import redis as kombu_redis

from worker.adapters.settings import get_settings

log = logging.getLogger("leadrouter.app")


class _RedisQoS(kombu_redis.QoS):
    def restore_unacked(self, client: Any = None) -> None:
        try:
            super().restore_unacked(client)
        except AttributeError:
            # When Redis goes away, kombu closes the consumer's channel after its transport was detached
            # from the connection, and putting prefetched messages back then raises an AttributeError
            # that stops the worker for good instead of letting it reconnect. Redis is unreachable at
            # that moment anyway: the messages stay in kombu's unacked set, which hands them out again
            # after the visibility timeout. They are only drain kicks and step ids, which the scheduler
            # tick re-issues long before that.
            log.warning("broker lost with %d prefetched messages; they come back after the visibility timeout",
                        len(self._delivered or ()))


class _RedisChannel(kombu_redis.Channel):
    QoS = _RedisQoS


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport, surviving the loss of the broker while it holds prefetched messages."""

    Channel = _RedisChannel


# Task names: a module that only queues a task sends it by name (``app.send_task``) and need not
# import worker.entrypoints.tasks, which imports nearly everything.
DRAIN = "leadrouter.drain"
FIRE_STEPS = "leadrouter.fire_steps"
FAILOVER = "leadrouter.failover"
TICK = "leadrouter.tick"

settings = get_settings()
app = Celery("leadrouter", broker=settings.redis_url, include=["worker.entrypoints.tasks"])
app.conf.update(
    broker_transport="worker.app:RedisTransport",
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_default_queue="events",
    task_acks_late=False,            # events live in the stream; a lost kick loses nothing
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,   # console alerts print as they are; logs go through our handler
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    broker_transport_options={"visibility_timeout": 3600, "socket_timeout": 10, "socket_connect_timeout": 5},
    worker_send_task_events=False,
    beat_schedule={"tick": {"task": TICK, "schedule": 1.0}},
    timezone="UTC",
)
