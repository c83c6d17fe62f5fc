"""Signed claim tokens: one rep, one assignment, an expiry; HMAC-SHA256 with LEADROUTER_SECRET_KEY."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime


class TokenError(ValueError):
    """``reason`` is ``tampered`` or ``expired``."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class ClaimToken:
    rep_id: str
    lead_id: str
    assignment_id: int
    expires: int  # unix seconds


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(secret: str, token: ClaimToken) -> str:
    body = _b64(json.dumps([token.rep_id, token.lead_id, token.assignment_id, token.expires],
                           separators=(",", ":")).encode())
    mac = hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()[:18]
    return f"{body}.{_b64(mac)}"


def verify(secret: str, text: str, now: datetime) -> ClaimToken:
    body, _, mac = text.partition(".")
    if not body or not mac or len(text) > 600:
        raise TokenError("tampered")
    try:
        want = _b64(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()[:18])
        genuine = hmac.compare_digest(want.encode(), mac.encode())
    except UnicodeError:   # lone surrogates: no link carries them
        raise TokenError("tampered") from None
    # Compared as written, not decoded: base64 decoding skips stray characters, so a decoded
    # comparison would take a link with a character added for the genuine one.
    if not genuine:
        raise TokenError("tampered")
    try:
        rep, lead, assignment, expires = json.loads(_unb64(body))
    except (ValueError, TypeError):
        raise TokenError("tampered") from None
    if not (isinstance(rep, str) and isinstance(lead, str) and isinstance(assignment, int)
            and isinstance(expires, int)):
        raise TokenError("tampered")
    if now.astimezone(UTC).timestamp() > expires:
        raise TokenError("expired")
    return ClaimToken(rep, lead, assignment, expires)
