"""What the fuzz tests share: the write keys and SendGrid key the app trusts, the app under test and
what it queued, and a raw ASGI upload that counts what the app read."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from worker import stream

KEYS = {"web": "wk-fuzz-web-5d1e", "crm": "wk-fuzz-crm-0b7a"}
SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())


def sendgrid_public_key() -> str:
    """SENDGRID_WEBHOOK_PUBLIC_KEY for :data:`SENDGRID_KEY`, as SendGrid shows it (base64 DER)."""
    der = SENDGRID_KEY.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def sendgrid_sign(body: bytes, stamp: str, key: ec.EllipticCurvePrivateKey = SENDGRID_KEY) -> str:
    return base64.b64encode(key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


@dataclass
class Api:
    """The app behind a TestClient (a server exception fails the test), and what it queued."""

    client: Any
    app: Any
    redis: redis.Redis
    kicks: list[str] = field(default_factory=list)

    def post(self, path: str, content: bytes | Iterable[bytes] = b"", headers: dict[str, str] | None = None,
             key: str | None = KEYS["web"]) -> httpx.Response:
        h = dict(headers or {})
        if key is not None:
            h.setdefault("Authorization", basic(key))
        return self.client.post(path, content=content, headers=h)

    def reset_queue(self) -> None:
        self.redis.delete(*(stream.stream_key(lane) for lane in stream.LANES))
        self.kicks.clear()

    def queued(self) -> list[dict[str, Any]]:
        """Every event in both lanes, as the workers will read it."""
        return [json.loads(fields[b"p"]) for lane in stream.LANES
                for _id, fields in self.redis.xrange(stream.stream_key(lane))]


def post_streamed(app: Any, path: str, chunks: Iterator[bytes], headers: dict[str, str]) -> tuple[int, int]:
    """POST ``chunks`` to ``app`` over raw ASGI: (status, how many chunks the app pulled before answering)."""
    pulled = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
             "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}
    asyncio.run(app(scope, receive, send))
    return status, pulled
