"""A local HTTP server that speaks Twilio's and SendGrid's APIs.

The real SDKs run unchanged against it (``TWILIO_API_BASE_URL`` /
``SENDGRID_API_BASE_URL`` = ``server.url``). Every request is checked against
the providers' own OpenAPI documents (``../shared/provider-specs/``, read in
place) with openapi-core, plus the rules those documents cannot express, and
each problem is kept in ``server.violations``. Failures can be scripted per
provider with :meth:`FakeProviderServer.fail_next`.

Usage::

    with start_provider_server() as server:
        channel = TwilioSmsChannel(..., api_base_url=server.url)
        ...
        server.wait_for(lambda s: len(s.sms()) == 1)
        assert server.violations == []
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import functools
import json
import math
import os
import queue
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, TypedDict
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

from tests.fakes.voice import CALLS_CREATE, CALLS_FETCH, answer_calls, is_calls_path

Provider = Literal["twilio", "sendgrid"]
Validation = Literal["sync", "background", "off"]

# A scripted answer: ("ok",), ("status", 429, {"Retry-After": "1"}), ("status", 503),
# ("twilio_error", 21211), ("sendgrid_status", 400, body), ("hang", seconds), ("drop",)
Scripted = tuple[Any, ...]

DEFAULT_SPECS_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "provider-specs"

TWILIO_CREATE = "/2010-04-01/Accounts/{AccountSid}/Messages.json"
TWILIO_FETCH = "/2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json"
SENDGRID_SEND = "/v3/mail/send"

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_TWILIO_CREATE_RE = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages\.json$")
_TWILIO_FETCH_RE = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages/(?P<sid>[^/]+)\.json$")


class RecordedRequest(TypedDict):
    provider: str  # "twilio" | "sendgrid" | "unknown"
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    form: dict[str, str] | None  # Twilio form fields (the last value of a repeated key)
    json: Any  # SendGrid's parsed JSON body
    received_at: float  # time.time(), comparable across processes
    received_monotonic: float  # time.monotonic(), for in-process latencies
    status: int | None  # what the fake answered; None while pending, or after hang/drop
    provider_id: str | None  # the MessageSid or X-Message-Id handed out
    response_headers: dict[str, str]
    response_body: bytes


# ---------------------------------------------------------------- the specs


def specs_dir() -> Path:
    return Path(os.environ.get("LEADROUTER_PROVIDER_SPECS") or DEFAULT_SPECS_DIR)


@functools.cache
def load_spec(provider: Provider) -> OpenAPI:
    """The provider's official document, cut down to the operations we use.

    Twilio's document is 1.8 MB and 121 paths; validating it as a whole takes
    about 2 s. Keeping the three operations and the components they reference
    (computed here, in memory, never written anywhere) loads in ~0.1 s, and
    the pruned document is still checked by openapi-spec-validator.
    """
    if provider == "twilio":
        doc = json.loads((specs_dir() / "twilio_api_v2010.json").read_text())
        ops = {TWILIO_CREATE: {"post", "get"}, TWILIO_FETCH: {"get"}, CALLS_CREATE: {"post", "get"}, CALLS_FETCH: {"get"}}
    else:
        doc = json.loads((specs_dir() / "tsg_mail_v3.json").read_text())
        ops = {SENDGRID_SEND: {"post"}}
    # Twilio types phone numbers with a format of its own; in a query parameter openapi-core
    # refuses a format it has no checker for, so it gets E.164's.
    # A call's To and From are "endpoint"s (a number, a SIP address or a client); we only ever dial numbers.
    phone = {"phone-number": lambda value: isinstance(value, str) and _E164.fullmatch(value) is not None,
             "endpoint": lambda value: isinstance(value, str) and _E164.fullmatch(value) is not None}
    return OpenAPI.from_dict(_prune(doc, ops), config=Config(
        extra_format_validators=phone, extra_format_unmarshallers={"phone-number": str, "endpoint": str}))


def _prune(doc: dict[str, Any], ops: Mapping[str, set[str]]) -> dict[str, Any]:
    methods = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
    paths = {
        path: {k: v for k, v in doc["paths"][path].items() if k not in methods or k in wanted}
        for path, wanted in ops.items()
    }
    pruned: dict[str, Any] = {k: v for k, v in doc.items() if k not in ("paths", "components")}
    pruned["paths"] = paths
    components: dict[str, dict[str, Any]] = {"securitySchemes": doc["components"].get("securitySchemes", {})}
    pending, seen = set(_refs(paths)), set()
    while pending:
        ref = pending.pop()
        if ref in seen:
            continue
        seen.add(ref)
        _, _, kind, name = ref.split("/", 3)  # "#/components/<kind>/<name>"
        node = doc["components"][kind][name]
        components.setdefault(kind, {})[name] = node
        pending.update(_refs(node))
    pruned["components"] = components
    return pruned


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield ref
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


@dataclass
class _SpecRequest:
    """A captured request in the shape openapi-core reads (its Request protocol)."""

    host_url: str
    path: str
    method: str
    body: bytes | None
    content_type: str
    parameters: RequestParameters


@dataclass(frozen=True)
class _SpecResponse:
    status_code: int
    content_type: str
    headers: Headers
    data: bytes | None


def spec_problems(record: RecordedRequest) -> list[str]:
    """What the provider's OpenAPI document says is wrong with this request."""
    result = load_spec(_provider_of(record)).unmarshal_request(_spec_request(record))
    return [_describe(err) for err in result.errors]


def spec_response_problems(record: RecordedRequest) -> list[str]:
    """What the provider's OpenAPI document says is wrong with the fake's answer.

    Not checked while serving (it costs as much again); a test calls it to
    keep the fake honest.
    """
    response = _SpecResponse(
        status_code=record["status"] or 0,
        content_type=record["response_headers"].get("Content-Type", "").lower(),
        headers=Headers(list(record["response_headers"].items())),
        data=record["response_body"] or None,
    )
    result = load_spec(_provider_of(record)).unmarshal_response(_spec_request(record), response)
    return [_describe(err) for err in result.errors]


def _provider_of(record: RecordedRequest) -> Provider:
    return "twilio" if record["provider"] == "twilio" else "sendgrid"


def _spec_request(record: RecordedRequest) -> _SpecRequest:
    headers = record["headers"]
    return _SpecRequest(
        # The provider's own server URL, so the spec's `servers` match.
        host_url="https://api.twilio.com" if record["provider"] == "twilio" else "https://api.sendgrid.com",
        path=record["path"],
        method=record["method"].lower(),
        body=record["body"] or None,
        content_type=headers.get("Content-Type", "").lower(),
        parameters=RequestParameters(
            query=ImmutableMultiDict(parse_qsl(record["query"], keep_blank_values=True)),
            header=Headers(list(headers.items())),
        ),
    )


def _describe(err: Exception) -> str:
    details = [str(e.message) for e in getattr(err.__cause__, "schema_errors", None) or ()]
    text = f"{type(err).__name__}: {err}".rstrip(": ")
    return f"{text} ({'; '.join(details)})" if details else text


# ---------------------------------------------------------------- provider rules


def twilio_problems(form: Mapping[str, str]) -> list[tuple[int, str]]:
    """Twilio's rules its OpenAPI document does not state, as (error code, message)."""
    problems: list[tuple[int, str]] = []
    if not form.get("To"):
        problems.append((21604, "A 'To' phone number is required."))
    if not form.get("From") and not form.get("MessagingServiceSid"):
        problems.append((21603, "A 'From' phone number or a 'MessagingServiceSid' is required."))
    if not form.get("Body") and not form.get("MediaUrl") and not form.get("ContentSid"):
        problems.append((21602, "Message body is required."))
    if len(form.get("Body", "")) > 1600:
        problems.append((21617, "The concatenated message body exceeds the 1600 character limit."))
    validity = form.get("ValidityPeriod")
    if validity is not None and not (validity.isdigit() and 1 <= int(validity) <= 36_000):
        problems.append((21624, "Validity period can only be set to integers between 1 and 36,000 seconds."))
    return problems


def sendgrid_problems(mail: Any) -> list[dict[str, Any]]:
    """SendGrid's rules its OpenAPI document does not state, as SendGrid error objects."""
    if not isinstance(mail, dict):
        return [_sg_error(None, "Bad Request: the body must be a JSON object.")]
    problems: list[dict[str, Any]] = []
    personalizations = mail.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        problems.append(
            _sg_error(
                "personalizations", "The personalizations field is required and must have at least one personalization."
            )
        )
        personalizations = []
    templated = bool(mail.get("template_id"))
    for i, p in enumerate(personalizations):
        if not isinstance(p, dict) or not p.get("to"):
            problems.append(
                _sg_error(
                    f"personalizations.{i}.to",
                    "The to array is required for all personalization objects.",
                )
            )
        elif not templated and not mail.get("subject") and not p.get("subject"):
            problems.append(
                _sg_error(
                    "subject",
                    "The subject is required (at the top level or in every personalization).",
                )
            )
    content = mail.get("content")
    if not templated and not content:
        problems.append(
            _sg_error(
                "content",
                "Unless a valid template_id is provided, the content parameter is required.",
            )
        )
    if isinstance(content, list):
        types = [c.get("type") for c in content if isinstance(c, dict)]
        if len(set(types)) != len(types):
            problems.append(_sg_error("content", "Each content type may only be used once."))
        if "text/plain" in types and "text/html" in types and types.index("text/html") < types.index("text/plain"):
            problems.append(
                _sg_error(
                    "content",
                    "text/plain and text/html may only be provided in this order: text/plain, text/html.",
                )
            )
    return problems


def _sg_error(field_name: str | None, message: str) -> dict[str, Any]:
    return {"field": field_name, "message": message, "help": None}


# ---------------------------------------------------------------- the server


@dataclass
class _Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    provider_id: str | None = None


class FakeProviderServer:
    """Twilio and SendGrid on one port; see the module docstring."""

    def __init__(
        self,
        *,
        validation: Validation = "sync",
        twilio_auth_token: str | None = None,
        sendgrid_api_key: str | None = None,
    ) -> None:
        # "sync": openapi-core runs before answering (~10 ms a request) and a
        # spec violation is answered with a 400 like the provider would.
        # "background": answer at once from the provider rules alone and let a
        # thread check the spec; reading `violations` waits for it. For
        # benchmarks. "off": provider rules only.
        self.validation = validation
        self.twilio_auth_token = twilio_auth_token  # None: any token is accepted
        self.sendgrid_api_key = sendgrid_api_key
        self.latency = 0.0   # seconds every POST waits before it is taken and answered
        # Re-entrant, so a wait_for predicate may call the locking helpers.
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._requests: list[RecordedRequest] = []
        self._violations: list[str] = []
        self._scripts: dict[str, deque[Scripted]] = {"twilio": deque(), "sendgrid": deque()}
        self._messages: dict[str, dict[str, Any]] = {}  # Twilio message resources by sid
        self.voice_calls: dict[str, dict[str, Any]] = {}  # Twilio call resources by sid (tests/fakes/voice.py)
        self.call_forms: dict[str, dict[str, str]] = {}   # the form each call was created with
        self.calls_per_second = 1.0   # Twilio's default per account; faster calls are queued, as Twilio does
        self.next_call_slot: dict[str, float] = {}
        self._checks: queue.Queue[RecordedRequest | None] = queue.Queue()
        if validation != "off":
            for provider in ("twilio", "sendgrid"):
                load_spec(provider)  # pay the load once, before the first request
        self._httpd = _Server(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False  # a hung handler must not block stop()
        host, port = self._httpd.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self._threads = [
            threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, name="fake-providers", daemon=True
            )
        ]
        if validation == "background":
            self._threads.append(
                threading.Thread(target=self._check_in_background, name="fake-providers-spec", daemon=True)
            )
        for thread in self._threads:
            thread.start()

    # ---------------------------------------------------------- for tests

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def violations(self) -> list[str]:
        if self.validation == "background":
            self._checks.join()
        with self._lock:
            return list(self._violations)

    def sms(self) -> list[dict[str, str]]:
        """The form of every message Twilio accepted (201), with its ``Sid``."""
        with self._lock:
            return [
                {**(r["form"] or {}), "Sid": r["provider_id"] or ""}
                for r in self._requests
                if r["provider"] == "twilio" and r["method"] == "POST" and r["status"] == 201
                and not is_calls_path(r["path"])
            ]

    def calls(self) -> list[dict[str, str]]:
        """The form of every call Twilio accepted (201), with its ``Sid``, oldest first."""
        with self._lock:
            return [{**self.call_forms.get(r["provider_id"] or "", {}), "Sid": r["provider_id"] or ""}
                    for r in self._requests
                    if r["provider"] == "twilio" and r["method"] == "POST" and r["status"] == 201
                    and is_calls_path(r["path"])]

    def emails(self) -> list[dict[str, Any]]:
        """The JSON body of every mail SendGrid accepted (202)."""
        with self._lock:
            return [r["json"] for r in self._requests if r["provider"] == "sendgrid" and r["status"] == 202]

    def wait_for(self, predicate: Callable[[FakeProviderServer], Any], timeout: float = 5.0) -> Any:
        """Block until ``predicate(self)`` is truthy (re-checked on every request)."""
        with self._changed:
            result = self._changed.wait_for(lambda: predicate(self), timeout)
            if not result:
                raise TimeoutError(f"condition not met within {timeout}s; {len(self._requests)} requests so far")
            return result

    def fail_next(self, provider: Provider, responses: list[Scripted]) -> None:
        """Answer the provider's next requests (any path) with these, in order."""
        for response in responses:
            if response[0] not in ("ok", "status", "twilio_error", "sendgrid_status", "hang", "drop", "accept_then_drop"):
                raise ValueError(f"unknown scripted response {response!r}")
        with self._lock:
            self._scripts[provider].extend(responses)

    def scripted_left(self, provider: Provider) -> int:
        """How many answers given to :meth:`fail_next` still wait for their request."""
        with self._lock:
            return len(self._scripts[provider])

    def set_status(self, sid: str, status: str, error_code: int | None = None) -> None:
        with self._lock:
            message = self._messages[sid]
            message["status"] = status
            message["error_code"] = error_code
            message["date_updated"] = _rfc2822_now()

    def reset(self) -> None:
        """Forget requests, violations, scripts and messages (for a shared server)."""
        _ = self.violations  # let background checks of earlier requests finish
        with self._lock:
            self._requests.clear()
            self._violations.clear()
            self._messages.clear()
            self.voice_calls.clear()
            self.call_forms.clear()
            self.next_call_slot.clear()
            for script in self._scripts.values():
                script.clear()

    def stop(self) -> None:
        self._stopping.set()  # releases hung handlers
        self._httpd.shutdown()
        self._httpd.server_close()
        self._checks.put(None)

    def __enter__(self) -> FakeProviderServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------- serving

    def _handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> _Answer | None:
        """Record the request and decide the answer; None means hang up without one."""
        if handler.command == "POST" and self.latency > 0:   # a request in flight a while: a sender may die meanwhile
            self._stopping.wait(self.latency)
        received_at, received_monotonic = time.time(), time.monotonic()
        split = urlsplit(handler.path)
        path, method = unquote(split.path), handler.command
        headers = {k: v for k, v in handler.headers.items()}
        provider: Provider | None = (
            "twilio" if path.startswith("/2010-04-01/") else "sendgrid" if path.startswith("/v3/") else None
        )
        form = (
            dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            if provider == "twilio" and method == "POST"
            else None
        )
        payload = _json_or_none(body) if provider == "sendgrid" else None
        record = RecordedRequest(
            provider=provider or "unknown",
            method=method,
            path=path,
            query=split.query,
            headers=headers,
            body=body,
            form=form,
            json=payload,
            received_at=received_at,
            received_monotonic=received_monotonic,
            status=None,
            provider_id=None,
            response_headers={},
            response_body=b"",
        )
        with self._changed:
            self._requests.append(record)
            script = self._scripts[provider].popleft() if provider and self._scripts[provider] else None
            self._changed.notify_all()

        problems: list[str] = []
        if provider is None:
            problems.append(f"{method} {path}: no such provider endpoint")
        elif self.validation == "sync":
            problems += [f"{method} {path}: {p}" for p in spec_problems(record)]
        elif self.validation == "background":
            self._checks.put(record)

        answer: _Answer | None
        taken: str | None = None
        if provider is not None and script is not None and script[0] == "accept_then_drop":
            # The provider took the request and acted on it; its answer never reached the caller.
            kept = (self._twilio_calls(method, path, headers, form, body, problems, split.query)
                    if provider == "twilio" and is_calls_path(path)
                    else self._twilio(method, path, headers, form, problems) if provider == "twilio"
                    else self._sendgrid(headers, payload, problems))
            answer, taken = None, kept.provider_id
        elif provider is not None and script is not None and script[0] != "ok":
            answer = self._scripted(provider, script)
        elif provider == "twilio" and is_calls_path(path):
            answer = self._twilio_calls(method, path, headers, form, body, problems, split.query)
        elif provider == "twilio":
            answer = self._twilio(method, path, headers, form, problems, split.query)
        elif provider == "sendgrid":
            answer = self._sendgrid(headers, payload, problems)
        else:
            answer = _Answer(404, b'{"message": "not found"}', {"Content-Type": "application/json"})

        with self._changed:
            self._violations.extend(problems)
            record["status"] = answer.status if answer else None
            record["provider_id"] = taken
            if answer is not None:
                record["provider_id"] = answer.provider_id
                record["response_headers"] = answer.headers
                record["response_body"] = answer.body
            self._changed.notify_all()
        return answer

    def _scripted(self, provider: Provider, script: Scripted) -> _Answer | None:
        kind = script[0]
        if kind == "hang":
            self._stopping.wait(float(script[1]))
            return None
        if kind == "drop":
            return None
        if kind == "twilio_error":
            code = int(script[1])
            status = int(script[2]) if len(script) > 2 else 400
            return _twilio_error(status, code, TWILIO_ERROR_MESSAGES.get(code, f"Error {code}"))
        if kind == "sendgrid_status":
            status, payload = int(script[1]), script[2] if len(script) > 2 else {"errors": [_sg_error(None, "error")]}
            body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            return _Answer(status, body, {"Content-Type": "application/json"})
        if kind == "status":
            status, extra = int(script[1]), dict(script[2]) if len(script) > 2 else {}
            if provider == "twilio":
                code = 20003 if status == 401 else 20000 + status  # 20429, 20500, 20503 are Twilio's
                answer = _twilio_error(status, code, _REASONS.get(status, "Error"))
            else:
                answer = _sendgrid_error(status, _REASONS.get(status, "error"))
            answer.headers.update(extra)
            return answer
        raise ValueError(f"unknown scripted response {script!r}")

    def _twilio(
        self, method: str, path: str, headers: Mapping[str, str], form: Mapping[str, str] | None, problems: list[str],
        query: str = "",
    ) -> _Answer:
        create, fetch = _TWILIO_CREATE_RE.match(path), _TWILIO_FETCH_RE.match(path)
        match = create if method == "POST" else (fetch or create) if method == "GET" else None
        if match is None:
            return _twilio_error(404, 20404, f"The requested resource {path} was not found")
        account = match["account"]
        user, _, token = _basic_credentials(headers.get("Authorization", ""))
        if user != account or (self.twilio_auth_token is not None and token != self.twilio_auth_token):
            problems.append(f"{method} {path}: basic auth user is not the path's AccountSid, or the token is wrong")
            return _twilio_error(401, 20003, "Authenticate")
        if create is not None and method == "POST":
            rules = twilio_problems(form or {})
            problems += [f"POST {path}: Twilio {code}: {text}" for code, text in rules]
            if rules:
                return _twilio_error(400, rules[0][0], rules[0][1])
            if problems:
                # Only the spec objects; Twilio has no single code for "malformed
                # parameter", so 20001 stands in (the classifier reads it as invalid).
                return _twilio_error(400, 20001, problems[0])
            return self._create_message(account, form or {})
        if create is not None:   # GET: the list, newest first, filtered as Twilio filters it
            return self._list_messages(account, path, query)
        with self._lock:
            message = self._messages.get(match["sid"])
            message = dict(message) if message and message["account_sid"] == account else None
        if problems or message is None:
            return _twilio_error(404, 20404, f"The requested resource {path} was not found")
        return _json_answer(200, message, message["sid"])

    def _twilio_calls(self, method: str, path: str, headers: Mapping[str, str], form: Mapping[str, str] | None,
                      body: bytes, problems: list[str], query: str = "") -> _Answer:
        account = path.split("/")[3]
        user, _, token = _basic_credentials(headers.get("Authorization", ""))
        if user != account or (self.twilio_auth_token is not None and token != self.twilio_auth_token):
            problems.append(f"{method} {path}: basic auth user is not the path's AccountSid, or the token is wrong")
            return _twilio_error(401, 20003, "Authenticate")
        answer = answer_calls(self, method, path, form, body, account, problems, query)
        if answer.status == 201:
            answer.provider_id = json.loads(answer.body)["sid"]
        return answer

    def _list_messages(self, account: str, path: str, query: str) -> _Answer:
        params = dict(parse_qsl(query, keep_blank_values=True))
        size = max(1, min(1000, int(params.get("PageSize") or 50)))
        with self._lock:
            found = [dict(m) for m in reversed(self._messages.values()) if m["account_sid"] == account
                     and params.get("To", m["to"]) == m["to"] and params.get("From", m["from"]) == m["from"]]
        uri = f"{path}?PageSize={size}&Page=0"
        page = {"messages": found[:size], "end": min(size, len(found)) - 1, "first_page_uri": uri,
                "next_page_uri": None, "page": 0, "page_size": size, "previous_page_uri": None, "start": 0,
                "uri": uri}
        return _json_answer(200, page)

    def _create_message(self, account: str, form: Mapping[str, str]) -> _Answer:
        sid = "SM" + secrets.token_hex(16)
        now = _rfc2822_now()
        body = form.get("Body", "")
        message = {
            "account_sid": account,
            "api_version": "2010-04-01",
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "num_media": "0",
            "num_segments": str(sms_segments(body)),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "accepted" if form.get("MessagingServiceSid") and not form.get("From") else "queued",
            "subresource_uris": {"media": f"/2010-04-01/Accounts/{account}/Messages/{sid}/Media.json"},
            "to": form.get("To"),
            "uri": f"/2010-04-01/Accounts/{account}/Messages/{sid}.json",
        }
        with self._lock:
            self._messages[sid] = message
        return _json_answer(201, message, sid)

    def _sendgrid(self, headers: Mapping[str, str], mail: Any, problems: list[str]) -> _Answer:
        scheme, _, key = headers.get("Authorization", "").partition(" ")
        if (
            scheme.lower() != "bearer"
            or not key
            or (self.sendgrid_api_key is not None and key != self.sendgrid_api_key)
        ):
            problems.append("POST /v3/mail/send: missing or wrong bearer API key")
            return _sendgrid_error(401, "The provided authorization grant is invalid, expired, or revoked")
        rules = sendgrid_problems(mail)
        problems += [f"POST /v3/mail/send: {e['field']}: {e['message']}" for e in rules]
        if rules:
            return _Answer(400, json.dumps({"errors": rules}).encode(), {"Content-Type": "application/json"})
        if problems:
            return _sendgrid_error(400, problems[0])
        message_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
        return _Answer(202, b"", {"X-Message-Id": message_id}, provider_id=message_id)

    def _check_in_background(self) -> None:
        while (record := self._checks.get()) is not None:
            try:
                found = [f"{record['method']} {record['path']}: {p}" for p in spec_problems(record)]
                with self._changed:
                    self._violations.extend(found)
                    self._changed.notify_all()
            finally:
                self._checks.task_done()
        self._checks.task_done()


class _Server(ThreadingHTTPServer):
    # the default listen backlog of 5 makes a sixth simultaneous connection wait out a 1 s SYN
    # retransmit; workers send a burst's alerts concurrently, as the real endpoints allow
    request_queue_size = 1024
    daemon_threads = True


def _handler_for(server: FakeProviderServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the SDKs pool connections
        disable_nagle_algorithm = True  # headers and body go out as separate writes

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            answer = server._handle(self, body)
            if answer is None:
                self.close_connection = True  # hang up without a word
                return
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per request on stderr would drown test output

    return Handler


# ---------------------------------------------------------------- answers

TWILIO_ERROR_MESSAGES = {
    20003: "Authenticate",
    21211: "Invalid 'To' Phone Number",
    21212: "Invalid 'From' Phone Number",
    21606: "The 'From' number is not a valid message-capable Twilio phone number for this account.",
    21610: "Attempt to send to unsubscribed recipient",
    21614: "'To' number is not a valid mobile number",
    21659: "'From' is not a Twilio phone number or Short Code country mismatch",
}
_REASONS = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _twilio_error(status: int, code: int, message: str) -> _Answer:
    payload = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return _Answer(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})


def _sendgrid_error(status: int, message: str) -> _Answer:
    return _Answer(
        status, json.dumps({"errors": [_sg_error(None, message)]}).encode(), {"Content-Type": "application/json"}
    )


def _json_answer(status: int, payload: Any, provider_id: str | None = None) -> _Answer:
    return _Answer(status, json.dumps(payload).encode(), {"Content-Type": "application/json"}, provider_id)


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _basic_credentials(header: str) -> tuple[str, str, str]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return "", "", ""
    try:
        return base64.b64decode(encoded).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return "", "", ""


def _rfc2822_now() -> str:
    return email.utils.format_datetime(datetime.now(UTC))


_GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED = set("^{}\\[~]|€\f")  # two septets each


def sms_segments(body: str) -> int:
    """How many SMS segments Twilio bills for this body (GSM-7 or UCS-2)."""
    if all(c in _GSM7 or c in _GSM7_EXTENDED for c in body):
        septets = sum(2 if c in _GSM7_EXTENDED else 1 for c in body)
        return 1 if septets <= 160 else math.ceil(septets / 153)
    units = len(body.encode("utf-16-le")) // 2
    return 1 if units <= 70 else math.ceil(units / 67)


# ---------------------------------------------------------------- entry points


def start_provider_server(
    *,
    validation: Validation = "sync",
    twilio_auth_token: str | None = None,
    sendgrid_api_key: str | None = None,
) -> FakeProviderServer:
    """Start a fake Twilio + SendGrid on a free port; call ``.stop()`` (or use ``with``)."""
    return FakeProviderServer(
        validation=validation, twilio_auth_token=twilio_auth_token, sendgrid_api_key=sendgrid_api_key
    )


@pytest.fixture
def provider_server() -> Iterator[FakeProviderServer]:
    """A fresh fake provider server per test; import it into a conftest.py to use it."""
    with start_provider_server() as server:
        yield server
