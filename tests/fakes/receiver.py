"""A local webhook receiver: a CRM endpoint and a Slack incoming webhook in one server.

It verifies each CRM request's signature the way the README tells receivers to,
checks each Slack payload against Block Kit's rules, records everything, and
answers what a test scripts (``fail_next``): a status code, a hang, or a dropped
connection; otherwise 200.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Block Kit: what each block type may carry, and the limits Slack enforces
_BLOCK_KEYS = {
    "header": {"type", "text", "block_id"},
    "section": {"type", "text", "fields", "accessory", "block_id"},
    "context": {"type", "elements", "block_id"},
    "divider": {"type", "block_id"},
    "actions": {"type", "elements", "block_id"},
}


def _text_problems(obj: Any, where: str, limit: int, plain_only: bool = False) -> list[str]:
    if not isinstance(obj, dict) or set(obj) - {"type", "text", "emoji", "verbatim"}:
        return [f"{where}: not a text object"]
    kinds = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
    problems = []
    if obj.get("type") not in kinds:
        problems.append(f"{where}: type {obj.get('type')!r}, expected one of {kinds}")
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        problems.append(f"{where}: text must be a non-empty string")
    elif len(text) > limit:
        problems.append(f"{where}: {len(text)} characters, limit {limit}")
    if "emoji" in obj and obj.get("type") != "plain_text":
        problems.append(f"{where}: emoji is only for plain_text")
    return problems


def block_kit_problems(payload: Any) -> list[str]:
    """Problems with an incoming-webhook payload by Block Kit's rules; [] when it is valid."""
    if not isinstance(payload, dict):
        return ["payload is not an object"]
    problems = []
    if not isinstance(payload.get("text"), str) or not payload["text"]:
        problems.append("text: a fallback text is required with blocks (notifications show it)")
    blocks = payload.get("blocks")
    if not isinstance(blocks, list) or not 1 <= len(blocks) <= 50:
        return problems + ["blocks: 1 to 50 blocks"]
    for i, b in enumerate(blocks):
        where = f"blocks[{i}]"
        if not isinstance(b, dict) or b.get("type") not in _BLOCK_KEYS:
            problems.append(f"{where}: unknown block {b!r:.60}")
            continue
        extra = set(b) - _BLOCK_KEYS[b["type"]]
        if extra:
            problems.append(f"{where}: unexpected keys {sorted(extra)}")
        if b["type"] == "header":
            problems += _text_problems(b.get("text"), f"{where}.text", 150, plain_only=True)
        elif b["type"] == "section":
            if "text" not in b and "fields" not in b:
                problems.append(f"{where}: a section needs text or fields")
            if "text" in b:
                problems += _text_problems(b["text"], f"{where}.text", 3000)
            if "fields" in b:
                fields = b["fields"]
                if not isinstance(fields, list) or not 1 <= len(fields) <= 10:
                    problems.append(f"{where}.fields: 1 to 10 fields")
                else:
                    for j, f in enumerate(fields):
                        problems += _text_problems(f, f"{where}.fields[{j}]", 2000)
        elif b["type"] == "context":
            elements = b.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
                problems.append(f"{where}.elements: 1 to 10 elements")
            else:
                for j, e in enumerate(elements):
                    problems += _text_problems(e, f"{where}.elements[{j}]", 2000)
    return problems


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    answered: int | None
    signature_ok: bool | None = None      # CRM requests: the signature checked with the shared secret
    problems: list[str] = field(default_factory=list)   # Slack requests: Block Kit problems

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    def __init__(self, secret: str):
        self.secret = secret
        self.received: list[Received] = []
        self.script: deque[tuple[str, tuple[Any, ...]]] = deque()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.released = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def fail_next(self, *answers: tuple[Any, ...], path: str = "/") -> None:
        """Answers for the next requests to paths starting with ``path``, in order: ("status", 500),
        ("status", 429, {"Retry-After": "2"}), ("hang",) until :meth:`release`, ("drop",) closes the
        connection without an answer."""
        with self.lock:
            self.script.extend((path, a) for a in answers)

    def _answer_for(self, path: str) -> tuple[Any, ...]:
        with self.lock:
            for i, (prefix, answer) in enumerate(self.script):
                if path.startswith(prefix):
                    del self.script[i]
                    return answer
        return ("status", 200)

    def release(self) -> None:
        self.released.set()

    def crm(self, ok_only: bool = True) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path.startswith("/crm") and (r.answered == 200 or not ok_only)]

    def slack(self) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path.startswith("/slack") and r.answered == 200]

    def wait_for(self, predicate: Callable[[WebhookReceiver], Any], timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate(self)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"receiver: condition not met in {timeout}s; got {len(self.received)} request(s)")

    def stop(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def _verify(self, headers: dict[str, str], body: bytes) -> bool:
        """The README's verification, written out independently of the product's code."""
        ts = headers.get("x-leadrouter-timestamp", "")
        given = headers.get("x-leadrouter-signature", "")
        if not ts.isdigit() or abs(time.time() - int(ts)) > 300 or not given.startswith("v1="):
            return False
        expected = hmac.new(self.secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(given[3:], expected)


def _handler(owner: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            answer = owner._answer_for(self.path)
            code = answer[1] if answer[0] == "status" else None
            record = Received(self.path, headers, body, time.time(), code)
            if self.path.startswith("/crm"):
                record.signature_ok = owner._verify(headers, body)
            elif self.path.startswith("/slack"):
                try:
                    record.problems = block_kit_problems(json.loads(body))
                except ValueError:
                    record.problems = ["body is not JSON"]
            with owner.lock:
                owner.received.append(record)
            if answer[0] == "hang":
                owner.released.wait(60)
                return
            if answer[0] == "drop":
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            text = b"ok" if code == 200 else b"not now"
            self.send_response(code or 200)
            for k, v in (answer[2] if len(answer) > 2 else {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

    return Handler
