"""Who may write, and how fast: write keys (HTTP Basic, body or query string), the sources they name,
trusted and public sources, the per-source token bucket, and the record of every refused request."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
from functools import lru_cache
from itertools import islice
from typing import Any

import redis
from fastapi import Request
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from routing.events import (
    iso,
    map_page,
)
from routing.leads import CONTACTED
from worker.adapters import metrics
from worker.adapters.db import now_utc
from worker.adapters.runtime import get_runtime
from worker.adapters.settings import get_settings

log = logging.getLogger("leadrouter.api")


class IngestSettings(BaseSettings):
    """Per-source rate limit: a token bucket of ``burst`` events refilled at ``rate`` events a second."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    rate: float = Field(default=50.0, alias="LEADROUTER_RATE_LIMIT", gt=0)
    burst: int = Field(default=500, alias="LEADROUTER_RATE_BURST", ge=1)


@lru_cache(maxsize=1)
def get_ingest_settings() -> IngestSettings:
    return IngestSettings()


class IngestError(Exception):
    """A refused request: answered with ``status`` and a Segment-style ``{code, message}`` body."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


# ---------------------------------------------------------------- write keys and rate limits


def basic_user(header: str | None) -> str | None:
    """The user name of an HTTP Basic ``Authorization`` header (Segment puts the write key there)."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return decoded.partition(":")[0] or None


# A "writeKey" member with a plain string value, wherever it is in the body. The body's top-level
# writeKey is necessarily one of these matches (unless its name is written with escapes).
WRITE_KEY_IN_BODY = re.compile(rb'"writeKey"\s*:\s*"((?:[^"\\]|\\.){0,400})"')


def may_name_a_source(body: bytes) -> bool:
    """Whether the body can carry a write key we know, found without parsing it: a body from an
    unknown key is refused before its JSON (up to 500 KB of it) is parsed."""
    for found in islice(WRITE_KEY_IN_BODY.finditer(body), 1000):
        try:
            key = json.loads(b'"' + found.group(1) + b'"')
        except ValueError:
            continue
        if isinstance(key, str) and source_for(key) is not None:
            return True
    return False


def source_for(key: str | None) -> str | None:
    """The source a write key names, trusted or public; None for a key we do not know."""
    if not key:
        return None
    found = None
    for known, source in get_settings().sources().items():
        if hmac.compare_digest(known.encode(), key.encode("utf-8", "replace")):
            found = source
    return found


def is_public(source: str) -> bool:
    """A browser source (``LEADROUTER_PUBLIC_WRITE_KEYS``): its key is on every page of the site."""
    return source in get_settings().public_sources()


def contacts_a_lead(raw: Any, rules: Any) -> bool:
    """Whether the event records first contact (``Lead Contacted``), directly or as a mapped page."""
    if not isinstance(raw, dict):
        return False
    if raw.get("type") == "track" and isinstance(raw.get("event"), str):
        name = raw["event"].strip()
    elif raw.get("type") == "page":
        name = map_page(raw, rules.pages)
    else:
        return False
    return name.casefold() == CONTACTED.casefold()


_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
if cost > burst then
  return {-1, tostring(burst)}
end
if tokens < cost then
  return {0, tostring((cost - tokens) / rate)}
end
tokens = tokens - cost
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {1, tostring(tokens)}
"""


def take_tokens(r: redis.Redis, source: str, cost: int) -> float:
    """Spend ``cost`` events from ``source``'s bucket; 0 when allowed, else the seconds to wait.

    A request costing more than the whole burst is refused (413) and spends nothing: let
    through, it would leave the bucket in debt and every other sender on that key refused
    for as long as the debt lasts.
    """
    s = get_ingest_settings()
    allowed, value = r.eval(_BUCKET, 1, f"lr:ratelimit:{source}", s.rate, s.burst, max(cost, 1))
    if int(allowed) == -1:
        raise IngestError(413, "over_burst", f"a request of {cost} events is more than source {source!r} may send "
                          f"at once ({s.burst}); send at most {s.burst} events per request")
    return 0.0 if int(allowed) == 1 else float(value.decode() if isinstance(value, bytes) else value)


# ---------------------------------------------------------------- refusals

def mask_ip(ip: str | None) -> str | None:
    """An address with its host part hidden (``203.0.113.x``, ``2001:db8:85a3::x``): enough to tell
    networks apart in a log, not to name a visitor."""
    if not ip:
        return None
    if ":" in ip:
        return ":".join(ip.split(":")[:3]) + "::x"
    head, dot, _ = ip.rpartition(".")
    return f"{head}.x" if dot else "x"


def mask_user_agent(ua: str | None) -> str | None:
    """The first product token only (``Mozilla/5.0``, ``analytics-node-next/latest``)."""
    if not ua:
        return None
    first = ua.strip().split(" ", 1)[0][:60]
    return first + (" …" if len(ua.strip()) > len(first) else "")


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def record_refusal(request: Request, route: str, source: str, status: int, code: str, message: str) -> None:
    """Log a refused tracking request with its reason, count it by route and source, and keep it
    among the latest refusals ``status`` shows. Never raises: a refusal is answered either way.

    ``source`` is the source's name, ``unknown`` for a key we do not know (never the key itself),
    or ``none`` when no key came with the request."""
    ip, ua = mask_ip(client_ip(request)), mask_user_agent(request.headers.get("user-agent"))
    log.warning("refused %s %s: %s %s (%s); source %s, client %s, user agent %s",
                request.method, request.url.path[:200], status, code, message[:300], source, ip, ua)
    metrics.inc("requests_refused_total", route=route, source=source, status=str(status), reason=code)
    entry = {"at": iso(now_utc()), "route": route, "path": request.url.path[:200], "source": source,
             "status": status, "reason": code, "message": message[:300], "client": ip, "user_agent": ua}
    try:
        pipe = get_runtime().redis.pipeline()
        pipe.lpush(metrics.REFUSALS_KEY, json.dumps(entry))
        pipe.ltrim(metrics.REFUSALS_KEY, 0, metrics.REFUSALS_KEPT - 1)
        pipe.execute()
    except Exception as exc:
        log.warning("refusal not recorded for status: %s", exc)


