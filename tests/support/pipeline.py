"""The integration suite's hand on the running product: publish, start workers, read the database."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, func, select

from routing.config import load_rules
from tests.support.stack import Processes, wait_until
from worker.adapters import db, engines, stream
from worker.services.publish import publish

EVENT_QUEUES = "events,fast"


class Pipeline:
    """The test's hand on the running product: publish, start workers, read the database."""

    def __init__(self, env: dict[str, str], processes: Processes):
        self.env = env
        self.processes = processes
        self.redis = redis.Redis.from_url(env["REDIS_URL"])
        # a plain engine: on SQLite the product takes the write lock at BEGIN, a reader need not
        self.engine = create_engine(env["DATABASE_URL"])
        self.sessions = engines.make_sessionmaker(self.engine)
        self.config = Path(env["LEADROUTER_CONFIG"])
        self.rules = load_rules(self.config)   # the publisher's copy: it only picks the lane

    def close(self) -> None:
        self.engine.dispose()
        self.redis.close()

    # -- producing
    def publish(self, events: list[dict[str, Any]], source: str = "default") -> int:
        result = publish(self.redis, events, self.rules, source=source)
        assert result.errors == [], result.errors
        return result.accepted

    def worker(self, concurrency: int = 2, **env: str) -> subprocess.Popen[bytes]:
        self.processes.env.update(env)
        return self.processes.celery_worker(queues=EVENT_QUEUES, concurrency=concurrency)

    # -- reading
    def lead(self, lead_id: str) -> db.Lead | None:
        with self.sessions() as s:
            return s.get(db.Lead, lead_id)

    def count(self, model: type, *where: Any) -> int:
        with self.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)

    def rows(self, model: type, *where: Any) -> list[Any]:
        with self.sessions() as s:
            return list(s.scalars(select(model).where(*where).order_by(model.id)))

    def drained(self) -> bool:
        """Nothing waiting in either lane and nothing read but unacknowledged."""
        return all(stream.backlog(self.redis, lane) == {"waiting": 0, "pending": 0} for lane in stream.LANES)

    def wait_events(self, n: int, timeout: float = 30.0) -> None:
        wait_until(lambda: self.count(db.Event) >= n and self.drained(), timeout=timeout,
                   message=f"{n} events stored and the stream drained")
        assert self.count(db.Event) == n
