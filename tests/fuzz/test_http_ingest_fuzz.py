"""Raw hostile bodies against the tracking API (SPEC §6, §8): random bytes, bad or bomb gzip, any content
type, deep nesting, bad write keys. Always a 4xx for what is refused, never a 5xx, and exactly the
accepted events in the Redis stream."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from routing.config import load_rules
from routing.events import MAX_BATCH_BYTES, EventError, EventTooLarge, check_envelope, normalize
from tests.support.fuzz import KEYS, Api, basic, post_streamed
from tests.support.stack import CONFIG
from tests.support.strategies import (
    FUZZ,
    any_text,
    event_dicts,
    flip_byte,
    json_values,
    scalars,
    timestamps,
    valid_event,
)
from worker.adapters import stream
from worker.entrypoints.api_ingest import IngestError, _prepare

SINGLE = {"/v1/track": "track", "/v1/identify": "identify", "/v1/page": "page", "/v1/alias": "alias",
          "/v1/t": "track", "/v1/i": "identify", "/v1/p": "page", "/v1/a": "alias"}
ROUTES = [*SINGLE, "/v1/batch", "/v1/b", "/v1/import"]
CONTENT_TYPES = [None, "application/json", "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=xyz", "application/octet-stream", "image/png", "\x7f;;;=", ""]
ENCODINGS = [None, "", "identity", "gzip", "x-gzip", "GZIP", "br", "deflate", "gzip, gzip", "compress", "zstd"]
SOME = settings(FUZZ, max_examples=25)
RULES = load_rules(CONFIG)


def canonical(events: list[Any]) -> list[str]:
    """Events as the stream carries them, in a comparable order."""
    return sorted(json.dumps(json.loads(json.dumps(e)), sort_keys=True) for e in events)


def assert_nothing_queued(api: Api, response: Any) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.json()["success"] is False and response.json()["message"]
    assert api.queued() == [], "a refused request queued events"
    assert api.kicks == []


@SOME
@given(path=st.sampled_from(ROUTES), body=st.one_of(st.binary(max_size=3000), json_values().map(
           lambda v: json.dumps(v).encode())),
       content_type=st.sampled_from(CONTENT_TYPES), encoding=st.sampled_from(ENCODINGS))
def test_random_bodies_are_refused_with_a_4xx_and_queue_nothing(api: Api, path: str, body: bytes,
                                                                  content_type: str | None, encoding: str | None) -> None:
    api.reset_queue()
    headers = {k: v for k, v in (("Content-Type", content_type), ("Content-Encoding", encoding)) if v is not None}
    r = api.post(path, content=body, headers=headers)
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        assert_nothing_queued(api, r)
    else:
        assert r.json()["accepted"] == len(api.queued())


TESTCLIENT_IP = "testclient"   # the client address Starlette's TestClient gives its requests


def expected_outcome(path: str, data: dict[str, Any]) -> tuple[int, list[Any], list[int]]:
    """What the contract says an authorised request gets: its status, the events queued, the refused indexes."""
    try:
        events = _prepare(data, SINGLE.get(path), TESTCLIENT_IP)
    except IngestError as exc:
        return exc.status, [], []
    good, refused = [], []
    for index, event in enumerate(events):
        try:
            check_envelope(event)
        except EventError as exc:
            if path in SINGLE:
                return (413 if isinstance(exc, EventTooLarge) else 400), [], []
            refused.append(index)
        else:
            good.append(event)
    return 200, good, refused


AUTHORISED = {"header", "crm", "body"}
auths = st.sampled_from(["header", "crm", "body", "header-wrong", "body-wrong", "body-not-string", "none"])
corruptions = st.one_of(st.none(), st.tuples(st.sampled_from(["flip", "truncate"]), st.integers(0, 10**6),
                                             st.integers(1, 255)))


@SOME
@given(path=st.sampled_from(ROUTES), event=event_dicts(), batch=st.lists(event_dicts(), max_size=4),
       batch_extra=st.fixed_dictionaries({}, optional={"sentAt": st.sampled_from(["2026-11-22T10:00:00Z", 5, "x"]),
                                                       "context": st.one_of(json_values(4), st.just({"ip": "1.2.3.4"}))}),
       auth=auths, content_type=st.sampled_from(CONTENT_TYPES), gz=st.booleans(), members=st.integers(1, 3),
       corruption=corruptions)
def test_events_over_http_get_what_the_contract_says_and_only_accepted_ones_are_queued(
        api: Api, path: str, event: dict[str, Any], batch: list[dict[str, Any]], batch_extra: dict[str, Any],
        auth: str, content_type: str | None, gz: bool, members: int, corruption: tuple[str, int, int] | None) -> None:
    api.reset_queue()
    data: dict[str, Any] = dict(event) if path in SINGLE else {"batch": batch, **batch_extra}
    data.pop("writeKey", None)
    key = {"header": KEYS["web"], "crm": KEYS["crm"], "header-wrong": KEYS["web"] + "x"}.get(auth)
    if auth.startswith("body"):
        data["writeKey"] = {"body": KEYS["crm"], "body-wrong": "nope", "body-not-string": [KEYS["crm"]]}[auth]
    raw = json.dumps(data).encode()
    headers = {"Content-Type": content_type} if content_type is not None else {}
    body = raw
    if gz:
        cut = [raw[i * len(raw) // members:(i + 1) * len(raw) // members] for i in range(members)]
        body = b"".join(gzip.compress(part, mtime=0) for part in cut)   # several gzip members are one body
        headers["Content-Encoding"] = "gzip"
        if corruption is not None:
            how, where, mask = corruption
            body = flip_byte(body, where, mask) if how == "flip" else body[:where % len(body)]
    r = api.post(path, content=body, headers=headers, key=key)
    assert r.status_code < 500, r.text

    if auth == "header-wrong":                      # refused before the body is read
        assert r.status_code == 401
        return assert_nothing_queued(api, r)
    if gz and corruption is not None and r.status_code in (400, 413) and r.json()["code"] in (
            "invalid_gzip", "invalid_json", "too_large"):
        return assert_nothing_queued(api, r)      # damaged; an intact body (a flipped mtime byte) is judged below
    if gz and corruption is not None and auth.startswith("body") and r.status_code == 401:
        return assert_nothing_queued(api, r)      # the write key was in the body, and the damage took it (truncated)
    if len(raw) > MAX_BATCH_BYTES:
        status, good, refused = 413, [], []
    elif auth not in AUTHORISED:
        status, good, refused = 401, [], []
    else:
        status, good, refused = expected_outcome(path, data)
    assert r.status_code == status, (r.status_code, r.text[:300])
    if status != 200:
        return assert_nothing_queued(api, r)
    answer = r.json()
    assert answer["success"] is True and answer["accepted"] == len(good)
    assert [e["index"] for e in answer["errors"]] == refused
    assert canonical(api.queued()) == canonical(good)
    assert bool(api.kicks) == bool(good) and set(api.kicks) <= set(stream.LANES)


hostile_values = st.one_of(
    st.sampled_from(["\ud800", "a\udfffb", "\udbff", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                     "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "2026-11-22T10:00:00+23:59", "", " ", "\x00",
                     10**4000, -(10**300), 1e308, -0.0, True, None, [], {}, [[[]]], "x" * 201]),
    timestamps, any_text, scalars)


@SOME
@given(path=st.sampled_from(ROUTES), kind=st.sampled_from(["track", "identify", "page", "alias"]),
       where=st.sampled_from(["messageId", "userId", "anonymousId", "previousId", "event", "name", "timestamp",
                              "sentAt", "type", "properties.key", "properties.value", "traits.value", "context.value"]),
       value=hostile_values)
def test_hostile_values_in_known_fields_are_refused_or_accepted_for_good(api: Api, path: str, kind: str, where: str,
                                                                         value: Any) -> None:
    api.reset_queue()
    event = valid_event("m-hostile", SINGLE.get(path, kind))
    if "." in where:
        container, part = where.split(".")
        event[container] = {str(value) if part == "key" else "k": 1 if part == "key" else value}
    else:
        event[where] = value
    body = json.dumps(event if path in SINGLE else {"batch": [event]}).encode()
    r = api.post(path, content=body)
    assert r.status_code < 500, r.text
    accepted = r.status_code == 200 and r.json()["accepted"] == 1
    if not accepted:
        assert api.queued() == []
        assert r.status_code in (400, 413) or r.json()["errors"][0]["error"]
        return
    [queued] = api.queued()
    # what was queued is what the workers can process: never a dead letter for a reason ingestion could see
    normalize(queued, source="web", received_at=datetime.now(UTC), pages=RULES.pages)


@SOME
@given(path=st.sampled_from(ROUTES), depth=st.one_of(st.integers(0, 40), st.integers(41, 3000)),
          brackets=st.sampled_from(["[]", "{}"]))
def test_deep_nesting_is_refused_at_33_levels_and_never_a_server_error(api: Api, path: str, depth: int,
                                                                       brackets: str) -> None:
    api.reset_queue()
    opening = brackets[0]
    inner = (b'{"k":' * depth + b"1" + b"}" * depth) if opening == "{" else (b"[" * depth + b"1" + b"]" * depth)
    event = json.dumps({**valid_event("m-deep", SINGLE.get(path, "track")), "properties": {"x": "@"}}).encode()
    event = event.replace(b'"@"', inner)
    body = event if path in SINGLE else b'{"batch": [' + event + b"]}"
    r = api.post(path, content=body)
    assert r.status_code < 500, r.text
    accepted = 1 + 1 + depth <= 32             # the event, its properties object, then the nesting
    if path in SINGLE:
        assert r.status_code == (200 if accepted else 400), (depth, r.text[:200])
    else:
        assert r.status_code in (200, 400)
        if r.status_code == 200:
            assert r.json()["accepted"] == int(accepted)
            assert accepted or "nesting deeper than 32" in r.json()["errors"][0]["error"]
    assert len(api.queued()) == (1 if accepted and r.status_code == 200 else 0)


@SOME
@given(size=st.one_of(st.integers(MAX_BATCH_BYTES - 64, MAX_BATCH_BYTES + 64), st.integers(0, 8 * 1024 * 1024)),
       gz=st.booleans(), members=st.integers(1, 4))
def test_the_500_kb_limit_holds_after_decompression(api: Api, size: int, gz: bool, members: int) -> None:
    api.reset_queue()
    head, tail = b'{"batch": [' + json.dumps(valid_event("m-pad")).encode() + b"]", b"}"
    body = head + b" " * max(0, size - len(head) - len(tail)) + tail
    headers = {}
    if gz:
        step = -(-len(body) // members)
        body_sent = b"".join(gzip.compress(body[i:i + step], compresslevel=1, mtime=0)
                             for i in range(0, len(body), step))
        headers["Content-Encoding"] = "gzip"
    else:
        body_sent = body
    r = api.post("/v1/batch", content=body_sent, headers=headers)
    if len(body) > MAX_BATCH_BYTES:
        assert r.status_code == 413 and "500 KB" in r.json()["message"]
        assert_nothing_queued(api, r)
    else:
        assert r.status_code == 200 and r.json()["accepted"] == 1 and len(api.queued()) == 1


def _endless(chunk: bytes, limit: int) -> Iterator[bytes]:
    for _ in range(limit):
        yield chunk


@settings(FUZZ, max_examples=10)
@given(path=st.sampled_from(["/v1/batch", "/v1/track", "/webhooks/twilio/sms", "/webhooks/twilio/status",
                             "/webhooks/sendgrid/events", "/claim/x.y"]), gz=st.booleans())
def test_a_huge_body_is_refused_before_it_is_read_whole(api: Api, path: str, gz: bool) -> None:
    """A 20 MB upload without Content-Length: the app answers 413 having read about its own limit, no more."""
    if gz:   # a compressed bomb: each chunk is a gzip member inflating to 16 MB of spaces
        chunk = gzip.compress(b" " * (16 * 1024 * 1024), compresslevel=9)
        headers = {"Content-Encoding": "gzip"}
    else:
        chunk, headers = b" " * (64 * 1024), {}
    limit = MAX_BATCH_BYTES if path.startswith("/v1/") and not gz else 64 * 1024
    status, pulled = post_streamed(api.app, path, _endless(chunk, 20 * 1024 * 1024 // len(chunk)),
                                   {**headers, "Authorization": basic(KEYS["web"])})
    assert status in ((413,) if not path.startswith("/claim/") else (403, 413)), status
    assert pulled * len(chunk) <= limit + 2 * len(chunk), pulled
    assert api.queued() == [] and api.kicks == []


def test_damaged_gzip_odd_encodings_and_bad_lengths_are_4xx(api: Api) -> None:
    good = json.dumps(valid_event("m-ok")).encode()
    cases = [({"Content-Encoding": "gzip"}, zlib.compress(good), 400),         # zlib, not gzip
             ({"Content-Encoding": "gzip"}, gzip.compress(good)[:-4], 400),    # no length trailer
             ({"Content-Encoding": "gzip"}, gzip.compress(good) + b"\x00junk", 400),
             ({"Content-Encoding": "br"}, good, 415),
             ({"Content-Length": "abc"}, good, 400)]
    for headers, body, status in cases:
        api.reset_queue()
        r = api.client.post("/v1/track", content=body, headers={"Authorization": basic(KEYS["web"]), **headers})
        assert r.status_code == status, (headers, r.status_code, r.text)
        assert api.queued() == []
