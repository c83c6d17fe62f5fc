"""What the fuzz tests share: the write keys and SendGrid key the app trusts, the app under test and
what it queued, a raw ASGI upload that counts what the app read, an open lead with its claim tokens,
and signed (or forged) provider webhooks."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import redis
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twilio.request_validator import RequestValidator

from tests.support.alerting import PUBLIC, TOKEN
from tests.support.stack import SECRET_KEY
from worker.adapters import db, stream
from worker.adapters.tokens import ClaimToken, sign

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


# ---------------------------------------------------------------- claim links

SECRET = SECRET_KEY                 # LEADROUTER_SECRET_KEY of service_env


@dataclass
class Open:
    """A hot lead assigned to bob, not yet claimed."""

    lead_id: str
    assignment_id: int
    sessions: Any

    def token(self, rep: str = "bob", lead: str | None = None, assignment: int | None = None,
              expires: datetime | None = None, secret: str = SECRET) -> str:
        when = expires or datetime.now(UTC) + timedelta(hours=24)
        return sign(secret, ClaimToken(rep, lead or self.lead_id, self.assignment_id if assignment is None
                                       else assignment, int(when.timestamp())))

    def claimed(self) -> tuple[datetime | None, str | None]:
        with self.sessions() as s:
            a = s.get(db.Assignment, self.assignment_id)
            return a.claimed_at, a.claimed_by


def open_lead(sessions: Any, lead_id: str, rep: str = "bob") -> Open:
    now = datetime.now(UTC)
    with sessions.begin() as s:
        s.add(db.Lead(id=lead_id, created_at=now, updated_at=now, traits={"name": "Jane <b>Doe</b>"}, score=90,
                      tier="hot", hot_at=now, owner=rep))
        episode = db.HotEpisode(lead_id=lead_id, opened_at=now, rules_hash="h")
        s.add(episode)
        s.flush()
        a = db.Assignment(episode_id=episode.id, lead_id=lead_id, rep_id=rep, team_id="na", route="team",
                          rules_hash="h", created_at=now, start_at=now, current=True)
        s.add(a)
        s.flush()
        return Open(lead_id, a.id, sessions)


def claim_path(token: str) -> str:
    return "/claim/" + quote(token, safe="")


# ---------------------------------------------------------------- provider webhooks

BOB = "+14155550102"
SMS, STATUS, SENDGRID = "/webhooks/twilio/sms", "/webhooks/twilio/status", "/webhooks/sendgrid/events"


def header(value: str) -> bytes:
    """A header as a client may send it: any latin-1 text (HTTP carries bytes)."""
    return value.encode("latin-1", "replace")


def twilio_signature(path: str, params: dict[str, str], *, url: str = PUBLIC, token: str = TOKEN) -> str:
    return RequestValidator(token).compute_signature(f"{url}{path}", params)


def post_form(api: Api, path: str, params: dict[str, str], signature: str | None) -> Any:
    headers: dict[str, Any] = {"Content-Type": "application/x-www-form-urlencoded"}
    if signature is not None:
        headers["X-Twilio-Signature"] = header(signature)
    return api.client.post(path, content=urlencode(params), headers=headers)


def sendgrid_post(api: Api, events: list[dict[str, Any]] | bytes, *, stamp: str | None = None,
                  signature: str | None = None, key: ec.EllipticCurvePrivateKey | None = None) -> Any:
    body = events if isinstance(events, bytes) else json.dumps(events).encode()
    stamp = str(int(time.time())) if stamp is None else stamp
    if signature is None:
        signature = sendgrid_sign(body, stamp, key) if key else sendgrid_sign(body, stamp)
    return api.client.post(SENDGRID, content=body, headers={
        "Content-Type": "application/json", "X-Twilio-Email-Event-Webhook-Signature": header(signature),
        "X-Twilio-Email-Event-Webhook-Timestamp": header(stamp)})
