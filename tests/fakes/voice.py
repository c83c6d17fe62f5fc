"""Twilio Programmable Voice for the local provider stand-in: the Calls API, and Twilio's side of a call.

:func:`answer_calls` serves ``POST``/``GET`` ``/2010-04-01/Accounts/{AccountSid}/Calls.json`` and
``GET …/Calls/{Sid}.json`` for :class:`tests.fakes.providers.FakeProviderServer`; each request is
checked against Twilio's own OpenAPI document like the SMS requests are, plus the rules the
document does not state. :class:`CallPlayer` then plays Twilio once the call is placed: it fetches
the call's TwiML URL signed as Twilio signs it, posts the rep's ``Digits`` to the ``<Gather>``
action, and posts status callbacks (the rep's leg, and the bridged leg a ``<Dial><Number>`` starts).
"""

from __future__ import annotations

import re
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode, urljoin, urlsplit

if TYPE_CHECKING:
    from tests.fakes.providers import FakeProviderServer, _Answer

CALLS_CREATE = "/2010-04-01/Accounts/{AccountSid}/Calls.json"
CALLS_FETCH = "/2010-04-01/Accounts/{AccountSid}/Calls/{Sid}.json"
_CREATE_RE = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Calls\.json$")
_FETCH_RE = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Calls/(?P<sid>[^/]+)\.json$")
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
EVENTS = {"initiated", "ringing", "answered", "completed"}


def is_calls_path(path: str) -> bool:
    return bool(_CREATE_RE.match(path) or _FETCH_RE.match(path))


def call_problems(form: Mapping[str, str], events: list[str]) -> list[tuple[int, str]]:
    """Twilio's rules for creating a call that its OpenAPI document does not state, as (code, message)."""
    problems: list[tuple[int, str]] = []
    to, sender = form.get("To", ""), form.get("From", "")
    if not to:
        problems.append((21201, "No 'To' number is specified"))
    elif not _E164.fullmatch(to):
        problems.append((13224, "Dial: Invalid phone number format"))
    if not sender:
        problems.append((21213, "No 'From' number is specified"))
    elif not _E164.fullmatch(sender):
        problems.append((21212, "Invalid 'From' Phone Number"))
    if sum(1 for k in ("Url", "Twiml", "ApplicationSid") if form.get(k)) != 1:
        problems.append((21205, "Exactly one of Url, Twiml or ApplicationSid is required"))
    for key in ("Url", "StatusCallback"):
        value = form.get(key)
        if value and urlsplit(value).scheme not in ("http", "https"):
            problems.append((21205, f"{key} is not a valid URL"))
    timeout = form.get("Timeout")
    if timeout is not None and not (timeout.isdigit() and 1 <= int(timeout) <= 600):
        problems.append((21216, "Timeout must be between 1 and 600 seconds"))
    if form.get("MachineDetection") not in (None, "Enable", "DetectMessageEnd"):
        problems.append((21626, "MachineDetection must be Enable or DetectMessageEnd"))
    if any(e not in EVENTS for e in events):
        problems.append((21626, f"StatusCallbackEvent values are {sorted(EVENTS)}"))
    return problems


def answer_calls(server: FakeProviderServer, method: str, path: str, form: Mapping[str, str] | None, body: bytes,
                 account: str, problems: list[str], query: str = "") -> _Answer:
    """The Calls API's answer (authentication is checked by the caller)."""
    from urllib.parse import parse_qs

    from tests.fakes.providers import _json_answer, _twilio_error

    fetch = _FETCH_RE.match(path)
    if method == "GET" and fetch is not None:
        with server._lock:
            call = server.voice_calls.get(fetch["sid"])
            call = dict(call) if call and call["account_sid"] == account else None
        if call is None:
            return _twilio_error(404, 20404, f"The requested resource {path} was not found")
        return _json_answer(200, call, call["sid"])
    if method == "GET" and fetch is None:
        return _list(server, account, path, query)
    if method != "POST" or fetch is not None:
        return _twilio_error(405, 20004, "Method not allowed")
    events = parse_qs(body.decode("utf-8", "replace")).get("StatusCallbackEvent", [])   # a repeated key
    rules = call_problems(form or {}, events)
    problems += [f"POST {path}: Twilio {code}: {text}" for code, text in rules]
    if rules:
        return _twilio_error(400, rules[0][0], rules[0][1])
    if problems:
        return _twilio_error(400, 20001, problems[0])
    return _json_answer(201, _create(server, account, form or {}, events), None)


def _list(server: FakeProviderServer, account: str, path: str, query: str) -> _Answer:
    """``GET …/Calls.json``: the account's calls, newest first, filtered by ``To`` and ``From`` as Twilio does."""
    from urllib.parse import parse_qsl

    from tests.fakes.providers import _json_answer

    params = dict(parse_qsl(query, keep_blank_values=True))
    size = max(1, min(1000, int(params.get("PageSize") or 50)))
    with server._lock:
        found = [dict(c) for c in reversed(server.voice_calls.values()) if c["account_sid"] == account
                 and params.get("To", c["to"]) == c["to"] and params.get("From", c["from"]) == c["from"]]
    uri = f"{path}?PageSize={size}&Page=0"
    page = {"calls": found[:size], "end": min(size, len(found)) - 1, "first_page_uri": uri, "next_page_uri": None,
            "page": 0, "page_size": size, "previous_page_uri": None, "start": 0, "uri": uri}
    return _json_answer(200, page)


def _create(server: FakeProviderServer, account: str, form: Mapping[str, str], events: list[str]) -> dict[str, Any]:
    from tests.fakes.providers import _rfc2822_now

    sid = "CA" + secrets.token_hex(16)
    now = _rfc2822_now()
    # Twilio dials an account's REST calls at its calls-per-second (1 by default) and queues the rest:
    # when this one will ring, and its QueueTime.
    with server._lock:
        taken = time.time()
        slot = max(taken, server.next_call_slot.get(account, 0.0))
        server.next_call_slot[account] = slot + 1 / server.calls_per_second
    queue_ms = int((slot - taken) * 1000)
    call: dict[str, Any] = {
        "sid": sid, "account_sid": account, "api_version": "2010-04-01", "annotation": None, "answered_by": None,
        "caller_name": None, "date_created": now, "date_updated": now, "direction": "outbound-api",
        "duration": None, "end_time": None, "forwarded_from": None, "from": form.get("From"),
        "from_formatted": form.get("From"), "group_sid": None, "parent_call_sid": None, "phone_number_sid": None,
        "price": None, "price_unit": "USD", "queue_time": str(queue_ms), "start_time": None, "status": "queued",
        "subresource_uris": {}, "to": form.get("To"), "to_formatted": form.get("To"), "trunk_sid": None,
        "uri": f"/2010-04-01/Accounts/{account}/Calls/{sid}.json",
    }
    with server._lock:
        server.voice_calls[sid] = call
        server.call_forms[sid] = {**form, "StatusCallbackEvent": " ".join(events), "RingsAt": repr(slot)}
    return call


# ---------------------------------------------------------------- Twilio's side of a call


class _Http(Protocol):
    def post(self, url: str, *, content: bytes | str, headers: dict[str, str]) -> Any: ...


class CallPlayer:
    """Plays Twilio for placed calls: signed requests to our webhooks, TwiML answers parsed.

    ``http`` posts a path (``/webhooks/…?…``) to the app: a ``TestClient`` or an ``httpx.Client``
    with the app's address as ``base_url``. URLs are signed exactly as Twilio signs them: the full
    public URL (``LEADROUTER_PUBLIC_URL`` + path + query) and the sorted form fields."""

    def __init__(self, http: _Http, auth_token: str, account_sid: str) -> None:
        self.http, self.token, self.account_sid = http, auth_token, account_sid

    def post(self, url: str, params: Mapping[str, str], *, signature: str | None = None) -> Any:
        from twilio.request_validator import RequestValidator

        sig = signature if signature is not None else RequestValidator(self.token).compute_signature(url, dict(params))
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return self.http.post(path, content=urlencode(params),
                              headers={"X-Twilio-Signature": sig,
                                       "Content-Type": "application/x-www-form-urlencoded"})

    def _call_params(self, call: Mapping[str, str], status: str, **extra: str) -> dict[str, str]:
        return {"CallSid": call["Sid"], "AccountSid": self.account_sid, "From": call["From"], "To": call["To"],
                "CallStatus": status, "Direction": "outbound-api", "ApiVersion": "2010-04-01", **extra}

    def answer(self, call: Mapping[str, str], answered_by: str = "human") -> tuple[Any, ET.Element]:
        """The rep picks up (or their voicemail does): Twilio fetches the call's TwiML URL."""
        extra = {"AnsweredBy": answered_by} if call.get("MachineDetection") else {}
        resp = self.post(call["Url"], self._call_params(call, "in-progress", **extra))
        return resp, twiml(resp)

    def press(self, call: Mapping[str, str], document: ET.Element, digits: str) -> tuple[Any, ET.Element]:
        """The rep presses ``digits`` during the document's ``<Gather>``: Twilio posts them to its action."""
        gather = document.find("Gather")
        assert gather is not None, ET.tostring(document)
        action = urljoin(call["Url"], gather.get("action") or call["Url"])
        resp = self.post(action, self._call_params(call, "in-progress", Digits=digits, FinishedOnKey=""))
        return resp, twiml(resp)

    def status(self, call: Mapping[str, str], status: str, **extra: str) -> Any:
        """A status callback of the rep's leg (``StatusCallback``)."""
        params = self._call_params(call, status, CallbackSource="call-progress-events", SequenceNumber="0", **extra)
        return self.post(call["StatusCallback"], params)

    def bridged(self, call: Mapping[str, str], document: ET.Element, status: str, duration: int | None = None,
                child_sid: str | None = None) -> tuple[str, Any]:
        """A status callback of the leg a ``<Dial><Number statusCallback=…>`` started, to the lead."""
        number = document.find("Dial/Number")
        assert number is not None and number.get("statusCallback"), ET.tostring(document)
        sid = child_sid or "CA" + secrets.token_hex(16)
        params = {"CallSid": sid, "ParentCallSid": call["Sid"], "AccountSid": self.account_sid,
                  "From": call["From"], "To": (number.text or "").strip(), "CallStatus": status,
                  "Direction": "outbound-dial", "ApiVersion": "2010-04-01", "CallbackSource": "call-progress-events"}
        if duration is not None:
            params["CallDuration"] = str(duration)
        return sid, self.post(urljoin(call["Url"], number.get("statusCallback") or ""), params)


def twiml(resp: Any) -> ET.Element:
    """A TwiML answer, parsed; it must be a ``<Response>`` served as XML."""
    assert resp.status_code == 200, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith(("application/xml", "text/xml")), resp.headers
    root = ET.fromstring(resp.content)
    assert root.tag == "Response", resp.text
    return root
