"""The HTTP API as a producer drives it: uvicorn serving ``worker.entrypoints.api:create_app``, Segment's own SDK sending.

Events are checked where the API promises to put them: the durable Redis stream,
each entry carrying the source its write key names.
"""

from __future__ import annotations

import base64
import gzip
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import segment.analytics as analytics
from prometheus_client.parser import text_string_to_metric_families
from segment.analytics.request import APIError

from tests.support.ingest import KEYS, ORIGIN, Api, start_api
from tests.support.stack import CONFIG, Processes, free_port
from worker.adapters import stream


@pytest.fixture
def api(shared_api: Api) -> Api:
    """The shared API with an empty Redis: no queued events, full rate buckets, zeroed counters."""
    shared_api.redis.flushall()
    return shared_api


def track(mid: str | None = None, **kw: Any) -> dict[str, Any]:
    return {"type": "track", "messageId": mid or uuid.uuid4().hex, "userId": "u-1", "event": "Email Clicked", **kw}


# ---------------------------------------------------------------- Segment's SDK


def test_segment_sdk_events_are_queued_with_their_source(api: Api) -> None:
    analytics.write_key = KEYS["web"]
    analytics.host = api.url
    analytics.sync_mode = True
    analytics.default_client = None
    try:
        analytics.identify("u-42", {"email": "jane@acme.com", "role": "decision_maker"}, message_id="m-id")
        analytics.track("u-42", "Demo Requested", {"page": "/demo"}, message_id="m-demo")
        analytics.page("u-42", name="Pricing", properties={"path": "/pricing"}, message_id="m-page")
        analytics.alias("anon-9", "u-42", message_id="m-alias")
    finally:
        analytics.default_client = None
    entries = {e["payload"]["messageId"]: e for e in api.queued()}
    assert set(entries) == {"m-id", "m-demo", "m-page", "m-alias"}
    assert {e["source"] for e in entries.values()} == {"web"}
    assert entries["m-demo"]["lane"] == stream.FAST           # a high-value event skips the page-view queue
    assert entries["m-id"]["payload"]["traits"]["role"] == "decision_maker"
    assert entries["m-alias"]["payload"]["previousId"] == "anon-9"
    for e in entries.values():
        assert e["payload"]["sentAt"], "sentAt must reach the pipeline for skew correction"
        assert e["received_at"].endswith("Z")
        assert e["payload"]["context"]["library"]["name"] == "analytics-python"
        assert "writeKey" not in e["payload"]


def test_segment_sdk_gzip_batches_reach_the_stream(api: Api) -> None:
    errors: list[Exception] = []
    client = analytics.Client(KEYS["crm"], host=api.url, gzip=True, on_error=lambda e, _batch: errors.append(e),
                              max_retries=1)
    try:
        for i in range(25):
            client.track(f"u-{i}", "Webinar Attended", {"n": i}, message_id=f"g-{i}")
        client.flush()
    finally:
        client.shutdown()
    assert errors == []
    queued = api.queued()
    assert sorted(e["payload"]["messageId"] for e in queued) == sorted(f"g-{i}" for i in range(25))
    assert {e["source"] for e in queued} == {"crm"}


def test_unknown_write_key_is_refused_and_nothing_is_queued(api: Api) -> None:
    client = analytics.Client("not-a-key", host=api.url, sync_mode=True)
    with pytest.raises(APIError) as caught:
        client.track("u-1", "Demo Requested", message_id="x-1")
    assert caught.value.status == 401 and caught.value.code == "unauthorized"
    assert api.post("/v1/track", track(), key="wrong").status_code == 401
    body = {**track(), "writeKey": "wrong"}
    assert api.post("/v1/track", body, key=None).status_code == 401
    r = api.post("/v1/batch", {"batch": [track()]}, key=None)
    assert r.status_code == 401 and "write key" in r.json()["message"]
    r = api.post("/v1/t", track(), key=None, headers={"Authorization": "Basic %%%not-base64"})
    assert r.status_code == 401
    assert api.queued() == []


def test_write_key_in_the_body_names_the_source(api: Api) -> None:
    r = api.post("/v1/t", {"writeKey": KEYS["crm"], "messageId": "b-1", "userId": "u-7", "event": "Trial Started"},
                 key=None, headers={"Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True, "accepted": 1, "errors": []}
    [entry] = api.queued()
    assert entry["source"] == "crm"
    assert entry["payload"]["type"] == "track" and "writeKey" not in entry["payload"]


# ---------------------------------------------------------------- hostile and broken input


def test_malformed_json_is_a_400_with_the_parse_error(api: Api) -> None:
    r = api.post("/v1/batch", content=b'{"batch": [{"type": "track",')
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_json" and "line 1 column" in r.json()["message"]
    for bad in (b"", b"[1, 2]", b'{"messageId": NaN}', b'{"messageId": 1e999}', b"\xff\xfe{}", b"[" * 200_000 + b"]" * 200_000):
        r = api.post("/v1/track", content=bad)
        assert r.status_code in (400, 413), (bad[:20], r.status_code)
        assert r.json()["success"] is False
    r = api.post("/v1/batch", {"batch": {"not": "a list"}})
    assert r.status_code == 400 and "batch" in r.json()["message"]
    r = api.post("/v1/track", {"messageId": "t-1", "userId": "u-1"})   # no event name
    assert r.status_code == 400 and "event" in r.json()["message"]
    assert api.post("/v1/track", content=b"{}", headers={"Content-Encoding": "br"}).status_code == 415
    assert api.queued() == []


def test_oversized_requests_and_events(api: Api) -> None:
    big = {"batch": [track(f"s-{i}", properties={"pad": "x" * 20_000}) for i in range(30)]}   # ~600 KB
    r = api.post("/v1/batch", big)
    assert r.status_code == 413 and "500 KB" in r.json()["message"]
    # no Content-Length (chunked upload): the limit still holds while reading
    chunks = (json.dumps(big).encode()[i:i + 65536] for i in range(0, 700_000, 65536))
    r = httpx.post(api.url + "/v1/batch", content=chunks, timeout=10,
                   headers={"Authorization": "Basic " + base64.b64encode(f"{KEYS['web']}:".encode()).decode()})
    assert r.status_code == 413
    r = api.post("/v1/track", track("huge", properties={"pad": "x" * 40_000}))
    assert r.status_code == 413 and "32 KB" in r.json()["message"]
    r = api.post("/v1/batch", {"batch": [track("ok-1"), track("huge", properties={"pad": "x" * 40_000}), track("ok-2")]})
    assert r.status_code == 200
    assert r.json()["accepted"] == 2
    assert [(e["index"], "32 KB" in e["error"]) for e in r.json()["errors"]] == [(1, True)]
    assert sorted(e["payload"]["messageId"] for e in api.queued()) == ["ok-1", "ok-2"]


def test_gzip_bomb_is_refused_without_inflating_it(api: Api) -> None:
    bomb = gzip.compress(b'{"batch": [' + b" " * (64 * 1024 * 1024), compresslevel=6)   # 64 MB inflated
    assert len(bomb) < 100_000
    started = time.monotonic()
    r = api.post("/v1/batch", content=bomb, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 413 and "after decompression" in r.json()["message"]
    assert time.monotonic() - started < 3
    r = api.post("/v1/batch", content=b"\x1f\x8b\x08\x00garbage", headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400 and "gzip" in r.json()["message"]
    ok = gzip.compress(json.dumps({"batch": [track("gz-1")]}).encode())
    r = api.post("/v1/batch", content=ok, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200 and r.json()["accepted"] == 1
    assert [e["payload"]["messageId"] for e in api.queued()] == ["gz-1"]


def test_batch_reports_bad_events_by_index_and_queues_the_rest(api: Api) -> None:
    batch = [
        track("k-0", timestamp="2026-11-22T10:00:00Z"),
        {"type": "track", "userId": "u-1", "event": "Demo Requested"},            # no messageId
        "not an object",
        {"type": "identify", "messageId": "k-3", "anonymousId": "a-1", "traits": {"email": "x@y.com"}},
        track("k-4", timestamp="yesterday"),
    ]
    r = api.post("/v1/batch", {"batch": batch, "sentAt": "2026-11-22T10:00:05Z", "context": {"ip": "10.0.0.1"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True and body["accepted"] == 2
    assert [e["index"] for e in body["errors"]] == [1, 2, 4]
    assert "messageId" in body["errors"][0]["error"] and "timestamp" in body["errors"][2]["error"]
    queued = {e["payload"]["messageId"]: e["payload"] for e in api.queued()}
    assert set(queued) == {"k-0", "k-3"}
    assert queued["k-0"]["sentAt"] == "2026-11-22T10:00:05Z"      # the batch's sentAt travels with each event
    assert queued["k-3"]["context"]["ip"] == "10.0.0.1"


def test_cors_preflight_and_response_headers(api: Api) -> None:
    pre = httpx.options(api.url + "/v1/batch", timeout=5, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, content-encoding"})
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    other = httpx.options(api.url + "/v1/batch", timeout=5, headers={
        "Origin": "https://evil.example.net", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in other.headers
    r = api.post("/v1/t", {"writeKey": KEYS["web"], **track("c-1")}, key=None,
                 headers={"Origin": "https://app.example.com", "Content-Type": "text/plain"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.com"


def test_rate_limit_per_source(processes: Processes, service_env: dict[str, str]) -> None:
    api = start_api(processes, service_env, LEADROUTER_RATE_LIMIT="0.5", LEADROUTER_RATE_BURST="5")
    r = api.post("/v1/batch", {"batch": [track(f"r-{i}") for i in range(5)]})
    assert r.status_code == 200 and r.json()["accepted"] == 5
    r = api.post("/v1/track", track("r-over"))
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) >= 1
    assert r.json()["code"] == "rate_limited"
    r = api.post("/v1/track", track("r-other"), key=KEYS["crm"])          # another key has its own bucket
    assert r.status_code == 200
    assert sorted(e["payload"]["messageId"] for e in api.queued()) == sorted([f"r-{i}" for i in range(5)] + ["r-other"])


# ---------------------------------------------------------------- operations


def test_healthz_names_what_is_unreachable(api: Api, processes: Processes, service_env: dict[str, str],
                                           tmp_path: Path) -> None:
    r = httpx.get(api.url + "/healthz", timeout=10)
    assert r.status_code == 200 and r.json()["redis"] == "ok" and r.json()["database"] == "ok"
    assert r.json()["rules"].startswith("ok ")
    down = start_api(processes, service_env, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
                     DATABASE_URL=f"sqlite:///{tmp_path}")       # a directory: the database cannot open
    r = httpx.get(down.url + "/healthz", timeout=20)
    assert r.status_code == 503
    assert r.json()["redis"] != "ok" and r.json()["database"] != "ok"
    r = down.post("/v1/track", track())
    assert r.status_code == 503 and r.json()["success"] is False
    assert httpx.get(down.url + "/metrics", timeout=20).status_code == 200


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    """Settings read anew from the (patched) environment, and forgotten after the test."""
    from worker.adapters.settings import reset_settings

    reset_settings()
    yield
    reset_settings()


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(families: dict[str, Any], sample: str, **labels: str) -> float:
    for fam in families.values():
        for s in fam.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"no sample {sample} {labels}")


def test_metrics_parse_and_count(api: Api, redis_server: Any, monkeypatch: pytest.MonkeyPatch,
                                 fresh_settings: None) -> None:
    from sqlalchemy import delete

    from worker.adapters import metrics
    from worker.adapters.db import DeadLetter, now_utc
    from worker.adapters.engines import make_engine, make_sessionmaker
    from worker.adapters.settings import reset_settings

    monkeypatch.setenv("REDIS_URL", redis_server.url)    # this process records metrics as a worker would
    reset_settings()

    assert api.post("/v1/batch", {"batch": [track("mx-1"), track("mx-2"), {"type": "track"}]}).status_code == 200
    assert api.post("/v1/track", track(), key="nope").status_code == 401
    metrics.observe("speed_to_lead_seconds", 0.7)
    metrics.observe("leadrouter_speed_to_lead_seconds", 4000)
    metrics.inc("deliveries_total", channel="sms", outcome="sent")
    engine = make_engine(api.database_url)
    with make_sessionmaker(engine)() as s:
        s.execute(delete(DeadLetter))
        s.add(DeadLetter(source="web", message_id="d-1", payload={}, error="boom", created_at=now_utc()))
        s.commit()
    engine.dispose()
    time.sleep(0.02)     # the oldest queued event is now measurably old
    r = httpx.get(api.url + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    fams = _families(r.text)
    for name in ("leadrouter_events_ingested", "leadrouter_events_rejected", "leadrouter_events_processed",
                 "leadrouter_processing_lag_seconds", "leadrouter_fast_lane_depth", "leadrouter_hot_crossings",
                 "leadrouter_speed_to_lead_seconds", "leadrouter_time_to_claim_seconds", "leadrouter_deliveries",
                 "leadrouter_scheduler_lateness_seconds", "leadrouter_dead_letters"):
        assert name in fams, name
    assert _value(fams, "leadrouter_events_ingested_total") == 2
    assert _value(fams, "leadrouter_events_rejected_total", reason="invalid") == 1
    assert _value(fams, "leadrouter_events_rejected_total", reason="unauthorized") == 1
    assert _value(fams, "leadrouter_deliveries_total", channel="sms", outcome="sent") == 1
    assert _value(fams, "leadrouter_speed_to_lead_seconds_bucket", le="1.0") == 1
    assert _value(fams, "leadrouter_speed_to_lead_seconds_bucket", le="+Inf") == 2
    assert _value(fams, "leadrouter_speed_to_lead_seconds_count") == 2
    assert _value(fams, "leadrouter_speed_to_lead_seconds_sum") == pytest.approx(4000.7)
    assert _value(fams, "leadrouter_dead_letters") == 1
    assert _value(fams, "leadrouter_processing_lag_seconds") > 0
    assert _value(fams, "leadrouter_fast_lane_depth") == 0


def test_metrics_never_raise_when_redis_is_down(monkeypatch: pytest.MonkeyPatch, fresh_settings: None) -> None:
    from worker.adapters import metrics
    from worker.adapters.settings import reset_settings

    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    reset_settings()
    metrics.inc("events_processed_total", 3)
    metrics.observe("time_to_claim_seconds", 12.5)
    text = metrics.render(redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0"), None)
    assert "# TYPE leadrouter_events_processed_total counter" in text
    assert "leadrouter_events_processed_total 0" not in text     # unknown is not shown as zero
    assert list(text_string_to_metric_families(text))


def test_openapi_describes_every_route(api: Api, service_env: dict[str, str]) -> None:
    from openapi_spec_validator import validate

    doc = httpx.get(api.url + "/openapi.json", timeout=10).json()
    validate(doc)
    ingest = ["/v1/track", "/v1/identify", "/v1/page", "/v1/alias", "/v1/batch", "/v1/t", "/v1/i", "/v1/p", "/v1/a"]
    for path in ingest:
        op = doc["paths"][path]["post"]
        assert op["requestBody"]["content"]["application/json"]["schema"]["type"] == "object"
        assert {"200", "400", "401", "413", "429"} <= set(op["responses"]), path
    assert "writeKey" in doc["components"]["securitySchemes"]
    assert set(doc["paths"]["/healthz"]["get"]["responses"]) >= {"200", "503"}
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    from worker.entrypoints.api import create_app

    served = {(route.path, m) for route in _walk(create_app().routes) for m in route.methods
              if route.include_in_schema and m not in ("HEAD", "OPTIONS")}
    documented = {(p, m.upper()) for p, ops in doc["paths"].items() for m in ops}
    assert served <= documented and len(served) >= len(ingest) + 2


def _walk(routes: Any) -> Iterator[Any]:
    """Every API route of the app, inside included routers too."""
    from fastapi.routing import APIRoute

    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        inner = getattr(route, "original_router", None) or getattr(route, "router", None)
        if inner is not None and inner is not route and hasattr(inner, "routes"):
            yield from _walk(inner.routes)


# ---------------------------------------------------------------- every route the ecosystem's clients post to


def test_every_client_route_is_served(api: Api) -> None:
    """The routes read from the clients' sources: analytics.js batching and the mobile SDKs post /v1/b,
    analytics-java /v1/import/ (with the slash), analytics-ruby /v1/import, analytics.js's short forms
    include /v1/g and /v1/s, RudderStack's beacon /beacon/v1/batch?writeKey=…"""
    sent_at = "2026-11-22T10:00:05Z"
    for path in ("/v1/b", "/v1/import", "/v1/import/", "/v1/batch/"):
        mid = "r" + path.replace("/", "-")
        body = {"writeKey": KEYS["web"], "batch": [track(mid)], "sentAt": sent_at}
        r = api.post(path, body, key=None, headers={"Content-Type": "text/plain"})
        assert r.status_code == 200 and r.json()["accepted"] == 1, (path, r.text)
    for path, etype in (("/v1/g", "group"), ("/v1/s", "screen"), ("/v1/group", "group"), ("/v1/screen", "screen"),
                        ("/v1/t/", "track")):
        r = api.post(path, {"messageId": "r" + path.replace("/", "-"), "userId": "u-1", "event": "Email Clicked",
                            "groupId": "g-1", "name": "Home"})
        assert r.status_code == 200 and r.json()["accepted"] == 1, (path, r.text)
        assert api.queued()[-1]["payload"]["type"] == etype      # the route names the type
    beacon = json.dumps({"batch": [track("r-beacon")], "sentAt": sent_at}).encode()
    r = httpx.post(f"{api.url}/beacon/v1/batch?writeKey={KEYS['crm']}", content=beacon,
                   headers={"Content-Type": "text/plain;charset=UTF-8"}, timeout=10)
    assert r.status_code == 200 and r.json()["accepted"] == 1
    r = httpx.post(f"{api.url}/beacon/v1/batch?writeKey=nope", content=beacon, timeout=10)
    assert r.status_code == 401
    queued = {e["payload"]["messageId"]: e for e in api.queued()}
    assert set(queued) == {"r-v1-b", "r-v1-import", "r-v1-import-", "r-v1-batch-", "r-v1-g", "r-v1-s",
                           "r-v1-group", "r-v1-screen", "r-v1-t-", "r-beacon"}
    assert queued["r-beacon"]["source"] == "crm"
    assert queued["r-v1-g"]["payload"]["type"] == "group" and queued["r-v1-s"]["payload"]["type"] == "screen"
    assert queued["r-v1-b"]["payload"]["sentAt"] == sent_at
    assert queued["r-v1-b"]["payload"]["context"]["ip"] == "127.0.0.1"    # as Segment's API fills it


def test_cors_preflight_allows_the_headers_browser_clients_send(api: Api) -> None:
    # analytics.js retries with X-Retry-Count; RudderStack's SDK sends AnonymousId, SentAt, Rsa-Retry-Attempt
    for headers in ("authorization, content-type, x-retry-count", "anonymousid, sentat, rsa-retry-attempt"):
        pre = httpx.options(api.url + "/v1/b", timeout=5, headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": headers})
        assert pre.status_code == 200, pre.text
        allowed = {h.strip().lower() for h in pre.headers["access-control-allow-headers"].split(",")}
        assert set(headers.split(", ")) <= allowed
        assert pre.headers["access-control-allow-origin"] == ORIGIN
        assert "access-control-allow-credentials" not in pre.headers
    other = httpx.options(api.url + "/v1/b", timeout=5, headers={
        "Origin": "https://evil.example.net", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-retry-count"})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


def test_refusals_are_logged_counted_by_route_and_source_and_listed(api: Api, redis_server: Any,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   fresh_settings: None) -> None:
    from worker.adapters import metrics

    assert api.post("/v1/track", track(), key="nope").status_code == 401
    assert api.post("/v1/b", {"batch": "x", "writeKey": KEYS["crm"]}, key=None).status_code == 400
    assert api.post("/v1/t", {"messageId": "no-user", "event": "X"}).status_code == 400
    assert api.post("/v1/m", {"batch": []}).status_code == 404          # a route nobody serves
    fams = _families(httpx.get(api.url + "/metrics", timeout=10).text)
    refused = "leadrouter_requests_refused_total"
    assert _value(fams, refused, route="/v1/track", source="unknown", status="401", reason="unauthorized") == 1
    assert _value(fams, refused, route="/v1/b", source="crm", status="400", reason="invalid_batch") == 1
    assert _value(fams, refused, route="/v1/t", source="web", status="400", reason="invalid_event") == 1
    assert _value(fams, refused, route="unmatched", source="none", status="404", reason="http_404") == 1
    latest = metrics.latest_refusals(api.redis, 10)
    assert [(f["path"], f["status"]) for f in latest] == [("/v1/m", 404), ("/v1/t", 400), ("/v1/b", 400),
                                                           ("/v1/track", 401)]
    assert latest[0]["client"] == "127.0.0.x" and "nope" not in json.dumps(latest)
    assert "userId or anonymousId" in latest[1]["message"]
    # and `leadrouter status` shows them
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from routing.config import load_rules
    from worker.services import status, tables

    engine = create_engine(api.database_url)
    with Session(engine) as session:
        data = status.status(session, api.redis, load_rules(CONFIG))
    engine.dispose()
    assert [f["path"] for f in data.ingest_refusals] == ["/v1/m", "/v1/t", "/v1/b", "/v1/track"]
    text = tables.render_status(data)
    assert "refused request" in text and "404 http_404" in text and "401 unauthorized" in text


def test_a_request_over_the_burst_is_refused_whole_and_drains_nothing(processes: Processes,
                                                                      service_env: dict[str, str]) -> None:
    api = start_api(processes, service_env, LEADROUTER_RATE_LIMIT="0.5", LEADROUTER_RATE_BURST="5")
    r = api.post("/v1/batch", {"batch": [track(f"big-{i}") for i in range(6)]})
    assert r.status_code == 413 and r.json()["code"] == "over_burst" and "at most 5" in r.json()["message"]
    # the bucket is untouched: the next sender on the same key still has the whole burst
    r = api.post("/v1/batch", {"batch": [track(f"ok-{i}") for i in range(5)]})
    assert r.status_code == 200 and r.json()["accepted"] == 5
    assert sorted(e["payload"]["messageId"] for e in api.queued()) == [f"ok-{i}" for i in range(5)]


def test_an_unknown_body_write_key_is_refused_before_the_body_is_parsed(api: Api) -> None:
    # a body that parsing would refuse (malformed, nested past any limit): the key is judged first
    hostile = b'{"writeKey": "nope", "batch": [' + b"[" * 200_000 + b"]" * 200_000
    r = api.post("/v1/b", content=hostile, key=None, headers={"Content-Type": "text/plain"})
    assert r.status_code == 401 and r.json()["message"] == "unknown write key"
    r = api.post("/v1/b", content=b'{"batch": [' + b"[" * 1000, key=None)
    assert r.status_code == 401 and "a write key is required" in r.json()["message"]
    # a known key nested in an event's properties is not taken for the request's
    body = {"writeKey": "nope", "batch": [track("nk-1", properties={"writeKey": KEYS["web"]})]}
    assert api.post("/v1/b", body, key=None).status_code == 401
    # the request's own key, wherever the client put it among the members, and with escapes, is found
    body = {"batch": [track("nk-2", properties={"writeKey": "other"})], "writeKey": KEYS["web"]}
    assert api.post("/v1/b", body, key=None).status_code == 200
    escaped = json.dumps({"writeKey": KEYS["crm"], "batch": [track("nk-3")]}, ensure_ascii=True)
    escaped = escaped.replace(KEYS["crm"][:2], "\\u0077\\u006b")
    assert api.post("/v1/b", content=escaped.encode(), key=None).status_code == 200
    assert sorted(e["payload"]["messageId"] for e in api.queued()) == ["nk-2", "nk-3"]


def test_a_public_source_cannot_send_lead_contacted(processes: Processes, service_env: dict[str, str]) -> None:
    api = start_api(processes, service_env, LEADROUTER_PUBLIC_WRITE_KEYS="site:pk-site-5e1")
    batch = [track("pub-0"), track("pub-1", event="Lead Contacted"), track("pub-2", event=" lead contacted "),
             {"type": "track", "userId": "u-1"}, track("pub-4", event="Demo Requested")]
    r = api.post("/v1/b", {"writeKey": "pk-site-5e1", "batch": batch}, key=None)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 2
    assert [(e["index"], e["field"]) for e in r.json()["errors"]] == [(1, "event"), (2, "event"), (3, "messageId")]
    assert "public source cannot send Lead Contacted" in r.json()["errors"][0]["error"]
    r = api.post("/v1/track", track("pub-5", event="Lead Contacted"), key="pk-site-5e1")
    assert r.status_code == 400 and "public source" in r.json()["message"]
    # a trusted source may
    r = api.post("/v1/batch", {"batch": [track("crm-1", event="Lead Contacted")]}, key=KEYS["crm"])
    assert r.status_code == 200 and r.json()["accepted"] == 1
    queued = {e["payload"]["messageId"]: e["source"] for e in api.queued()}
    assert queued == {"pub-0": "site", "pub-4": "site", "crm-1": "crm"}


def test_refusal_logs_mask_the_client() -> None:
    from worker.entrypoints.ingest_access import mask_ip, mask_user_agent

    assert mask_ip("203.0.113.9") == "203.0.113.x"
    assert mask_ip("2001:db8:85a3:8d3:1319:8a2e:370:7348") == "2001:db8:85a3::x"
    assert mask_ip(None) is None
    ua = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0 Safari/537.36"
    assert mask_user_agent(ua) == "Mozilla/5.0 …"
    assert mask_user_agent("analytics-go (version: 3.3.0)") == "analytics-go …"
    assert mask_user_agent("curl/8.0") == "curl/8.0"
