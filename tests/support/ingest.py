"""The HTTP API as a producer drives it: uvicorn serving ``worker.entrypoints.api:create_app`` as a process of its own,
with write keys and CORS origins, and the stream it queues into."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.support.stack import CONFIG, SECRET_KEY, Processes, free_port, wait_until
from worker.adapters import stream

KEYS = {"web": "wk-web-1f9a", "crm": "wk-crm-77c2"}
ORIGIN = "https://www.example.com"
BASE_ENV = {
    "LEADROUTER_WRITE_KEYS": ",".join(f"{name}:{key}" for name, key in KEYS.items()),
    "LEADROUTER_CORS_ORIGINS": f"{ORIGIN}, https://app.example.com",
}


@dataclass
class Api:
    url: str
    redis: redis.Redis
    database_url: str

    def post(self, path: str, body: Any = None, *, key: str | None = KEYS["web"], content: bytes | None = None,
             headers: dict[str, str] | None = None) -> httpx.Response:
        h = dict(headers or {})
        if key is not None:
            h["Authorization"] = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        if content is None:
            content = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        return httpx.post(self.url + path, content=content, headers=h, timeout=10)

    def queued(self) -> list[dict[str, Any]]:
        """Every entry in both lanes: {"lane", "source", "received_at", "payload"}."""
        out = []
        for lane in stream.LANES:
            for _id, fields in self.redis.xrange(stream.stream_key(lane)):
                out.append({"lane": lane, "source": fields[b"s"].decode(), "received_at": fields[b"r"].decode(),
                            "payload": json.loads(fields[b"p"])})
        return out


def start_api(processes: Processes, env: dict[str, str], **extra: str) -> Api:
    port = free_port()
    processes.start(sys.executable, "-m", "uvicorn", "worker.entrypoints.api:create_app", "--factory", "--host", "127.0.0.1",
                    "--port", str(port), "--log-level", "warning", name="api", extra_env={**BASE_ENV, **extra})
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            httpx.get(url + "/openapi.json", timeout=1)
            return True
        except httpx.TransportError:
            return False

    try:
        wait_until(up, timeout=20, message="the API to listen")
    except AssertionError:
        raise AssertionError("API did not start:\n" + processes.logs()) from None
    return Api(url, redis.Redis.from_url(extra.get("REDIS_URL", env["REDIS_URL"])), env.get("DATABASE_URL", ""))


def shared_api_process(redis_url: str, database: str | None, home: Path) -> Iterator[Api]:
    """An API process on ``database`` (a SQLite file in ``home`` when None), stopped when the generator is."""
    from worker.adapters.migrate import upgrade

    if database is None:
        database = f"sqlite:///{home / 'leadrouter.db'}"
        upgrade(database)
    rules = home / "routing.yaml"
    rules.write_text(CONFIG.read_text())
    env = {"REDIS_URL": redis_url, "DATABASE_URL": database, "LEADROUTER_CONFIG": str(rules),
           "LEADROUTER_SECRET_KEY": SECRET_KEY}
    (home / "logs").mkdir()
    procs = Processes(env, home / "logs")
    try:
        yield start_api(procs, env)
    finally:
        procs.stop_all()
