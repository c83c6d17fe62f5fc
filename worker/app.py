"""The Celery application: ``celery -A worker.app worker``.

Queues: ``events`` (normal drains), ``fast`` (high-value drains) and
``alerts`` (alert steps), each given its own worker capacity by
``leadrouter worker`` so alerts never wait behind event processing.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init

from worker.logs import setup_logging
from worker.settings import get_settings

settings = get_settings()
app = Celery("leadrouter", broker=settings.redis_url, include=["worker.tasks"])
app.conf.update(
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
    beat_schedule={"tick": {"task": "leadrouter.tick", "schedule": 1.0}},
    timezone="UTC",
)


@worker_process_init.connect
def _init_process(**_: object) -> None:
    from worker.runtime import get_runtime

    setup_logging()
    get_runtime().after_fork()
    _warm_up()


def _warm_up() -> None:
    """Import the alert path and build the provider clients now, not on the first hot lead."""
    try:
        from worker.alerts import channel_for
        from worker.runtime import get_runtime

        settings = get_runtime().settings
        channel_for("sms", settings)
        channel_for("email", settings)
    except Exception:  # a bad setting shows up, with its error, on the first alert instead
        import logging

        logging.getLogger("leadrouter.app").exception("alert channels could not be prepared")
