"""Real third-party clients, nobody here wrote them, pointed at a running ``leadrouter api``: the npm
packages pinned in ``tests/clients`` (installed by the test setup). Each must deliver its events, also
when its first request meets a 503 and it retries."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.clients import FaultyProxy, node_clients, run_node_client
from tests.support.ingest import KEYS, Api
from tests.support.stack import Processes

NODE_CLIENTS = ("segment-node", "legacy-node", "rudder-node")


@pytest.fixture
def api(shared_api: Api) -> Api:
    shared_api.redis.flushall()
    return shared_api


@pytest.fixture
def proxy(api: Api) -> Iterator[FaultyProxy]:
    p = FaultyProxy(api.url)
    yield p
    p.stop()


@pytest.mark.parametrize("client", NODE_CLIENTS)
def test_node_client_delivers_after_a_503(client: str, api: Api, proxy: FaultyProxy) -> None:
    node_clients()
    proxy.fail = 1
    run_node_client(client, proxy.url, KEYS["crm"], f"{client}-1", "Jane Node")
    posts = proxy.posts()
    assert posts[0].status == 503 and all(p.status == 200 for p in posts[1:]) and len(posts) >= 2, \
        [(p.path, p.status) for p in posts]
    assert all(p.path == "/v1/batch" for p in posts)
    failed = {e["messageId"] for e in posts[0].json()["batch"]}
    delivered = [e for p in posts[1:] for e in p.json()["batch"]]
    assert failed <= {e["messageId"] for e in delivered}                       # the failed request was retried
    assert all(p.headers["authorization"].startswith("Basic ") for p in posts)   # the write key, as Basic user
    queued = api.queued()
    assert sorted(e["payload"]["messageId"] for e in queued) == sorted({e["messageId"] for e in delivered})
    assert len(queued) == 3
    assert {e["source"] for e in queued} == {"crm"}
    assert {e["payload"].get("userId") for e in queued} == {f"{client}-1"}
    assert {e["payload"]["type"] for e in queued} == {"identify", "track"}
    by_event: dict[Any, Any] = {e["payload"].get("event"): e["payload"] for e in queued}
    assert by_event[None]["traits"]["company"]["industry"] == "software"
    if client == "rudder-node":
        # RudderStack says when the event happened in originalTimestamp, never in timestamp
        assert all("originalTimestamp" in e["payload"] and "timestamp" not in e["payload"] for e in queued)
    else:
        assert all("timestamp" in e["payload"] for e in queued)
    assert all(e["payload"].get("sentAt") for e in queued)    # a batch's sentAt travels with each event


# ---------------------------------------------------------------- the whole service, every client


REP_PHONES = {"alice": "+14155550101", "bob": "+14155550102", "carol": "+4915155550103", "maria": "+14155550104"}


def _browser_lead(browser: Any, site: Any, mode: str, lead: str, name: str) -> None:
    page = browser.new_page()
    page.goto(f"{site.url}/{mode}.html")
    page.wait_for_function("window.analytics && window.analytics.initialized === true", timeout=15_000)
    page.evaluate("""([lead, name]) => {
        analytics.identify(lead, {name, email: lead + '@' + lead + '.example.com', title: 'VP Engineering', phone: '+14155550100',
            role: 'decision_maker', company: {name: 'Acme', industry: 'software', employee_count: 1200},
            address: {country: 'US'}});
        analytics.track('Pricing Page Viewed', {path: '/pricing'});
        analytics.track('Demo Requested', {page: '/demo'});
    }""", [lead, name])
    return page


def test_every_client_gets_its_lead_scored_routed_and_alerted_as_simulate_predicts(
        alert_env: dict[str, str], processes: Processes, providers: Any) -> None:
    """Each client sends one hot lead, its first request failed with a 503; the lead is alerted to the
    rep ``simulate`` names for the events the API took. A RudderStack event that says it happened two
    days ago is scored then: hot on its timeline, stale, and no rep is paged at night for it."""
    from datetime import UTC, datetime, timedelta

    from playwright.sync_api import sync_playwright
    from sqlalchemy import create_engine, func, select
    from sqlalchemy.orm import Session

    from routing.config import load_rules
    from routing.events import parse_time
    from routing.simulate import simulate
    from tests.support.clients import CHROMIUM_ARGS, SiteServer, chromium, events_as_received
    from tests.support.ingest import start_api
    from tests.support.stack import wait_until
    from worker.adapters import db

    node_clients()
    proxy = FaultyProxy("")
    site = SiteServer(KEYS["web"], proxy.url.removeprefix("http://") + "/v1")
    processes.env.update(alert_env)
    processes.celery_worker(queues="events", concurrency=1, name="events")
    processes.celery_worker(queues="fast,alerts", concurrency=1, name="alerts")
    processes.leadrouter("beat", name="beat")
    api = start_api(processes, alert_env, LEADROUTER_CORS_ORIGINS=site.url)
    proxy.target = api.url
    engine = create_engine(alert_env["DATABASE_URL"])
    alerted: dict[str, str] = {}    # lead -> the phone its first alert went to

    def first_alert(name: str) -> str:
        sms = providers.wait_for(lambda s: [m for m in s.sms() if name in m["Body"]], timeout=30)
        return str(sms[0]["To"])

    try:
        for client in NODE_CLIENTS:
            proxy.fail = 1
            lead = f"{client}-hot"
            run_node_client(client, proxy.url, KEYS["crm"], lead, f"Jane {client.split('-')[0].title()}")
            alerted[lead] = first_alert(f"Jane {client.split('-')[0].title()}")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium(), headless=True, args=CHROMIUM_ARGS)
            for mode in ("standard", "batching"):
                proxy.fail = 1
                page = _browser_lead(browser, site, mode, f"browser-{mode}", f"Jane {mode.title()}")
                alerted[f"browser-{mode}"] = first_alert(f"Jane {mode.title()}")
                page.close()
            browser.close()
        late = (datetime.now(UTC) - timedelta(days=2)).isoformat().replace("+00:00", "Z")
        run_node_client("rudder-node", proxy.url, KEYS["crm"], "rudder-late", "Jane Late", original_timestamp=late)

        with Session(engine) as s:
            wait_until(lambda: s.scalar(select(func.count()).select_from(db.Event)
                                        .where(db.Event.lead_id == "rudder-late")) == 3,
                       timeout=30, message="the late RudderStack events to be processed")
            stale = s.get(db.Lead, "rudder-late")
            assert stale is not None and stale.tier == "hot"
            assert stale.hot_at is not None
            assert abs(stale.hot_at.replace(tzinfo=UTC) - parse_time(late, "t")) < timedelta(seconds=2)
            assert s.scalar(select(func.count()).select_from(db.Assignment)
                            .where(db.Assignment.lead_id == "rudder-late")) == 0
            # the first assignment of each lead: unclaimed, a lead is reassigned once its cadence runs out
            live: dict[str, str | None] = {}
            for a in s.scalars(select(db.Assignment).order_by(db.Assignment.id)):
                live.setdefault(a.lead_id, a.rep_id)
        assert not [m for m in providers.sms() if "Jane Late" in m["Body"]]

        # every request the clients made first was failed once, and retried
        assert sum(1 for p in proxy.posts() if p.status == 503) == 5
        replay = simulate(events_as_received(proxy.seen), load_rules(alert_env["LEADROUTER_CONFIG"]))
        predicted = {r.lead_id: r for r in replay.leads}
        assert replay.errors == []
        for lead, phone in alerted.items():
            assert predicted[lead].tier == "hot" and predicted[lead].rep is not None, predicted[lead]
            assert live[lead] == predicted[lead].rep, (lead, live[lead], predicted[lead])
            assert phone == REP_PHONES[predicted[lead].rep], (lead, phone, predicted[lead].rep)
        assert abs(predicted["rudder-late"].hot_at - parse_time(late, "t")) < timedelta(seconds=2)
        assert providers.violations == []
    finally:
        engine.dispose()
        site.stop()
        proxy.stop()


def test_analytics_python_delivers_after_a_503(api: Api, proxy: FaultyProxy) -> None:
    import segment.analytics as analytics

    errors: list[Exception] = []
    proxy.fail = 1
    client = analytics.Client(KEYS["crm"], host=proxy.url, gzip=True, max_retries=3,
                              on_error=lambda e, _batch: errors.append(e))
    try:
        client.identify("py-1", {"role": "decision_maker"}, message_id="py-1-a")
        client.track("py-1", "Demo Requested", message_id="py-1-b")
        client.flush()
    finally:
        client.shutdown()
    assert errors == []
    posts = proxy.posts()
    assert [p.status for p in posts] == [503, 200] and {p.path for p in posts} == {"/v1/batch"}
    assert posts[1].headers["content-encoding"] == "gzip" and posts[1].headers["authorization"].startswith("Basic ")
    assert sorted(e["payload"]["messageId"] for e in api.queued()) == ["py-1-a", "py-1-b"]


def _basic(key: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def test_requests_shaped_as_the_clients_that_cannot_run_here_send_them(api: Api) -> None:
    """analytics-go, analytics-java, analytics-ruby, analytics-swift, analytics-kotlin and RudderStack's
    browser SDK, each request as its source builds it: route, headers, where the write key and the
    times are, and the body's framing (Kotlin streams a gzip body without a Content-Length)."""
    import gzip
    import json

    import httpx

    sent = "2026-12-05T08:00:00.000Z"

    def ev(mid: str, **extra: Any) -> dict[str, Any]:
        return {"type": "track", "messageId": mid, "userId": "u-c", "event": "Email Clicked",
                "timestamp": "2026-12-05T07:59:59.000Z", **extra}

    def chunks(data: bytes) -> Iterator[bytes]:
        for i in range(0, len(data), 1000):
            yield data[i:i + 1000]

    key = KEYS["crm"]
    cases: list[tuple[str, str, dict[str, str], Any]] = [
        ("analytics-go", "/v1/batch",
         {"User-Agent": "analytics-go (version: 3.3.0)", "Content-Type": "application/json", "Authorization": _basic(key)},
         json.dumps({"messageId": "go-batch-1", "sentAt": sent, "batch": [ev("go-1")],
                     "context": {"library": {"name": "analytics-go", "version": "3.3.0"}}}).encode()),
        ("analytics-java", "/v1/import/",
         {"Content-Type": "application/json; charset=UTF-8", "Authorization": _basic(key), "User-Agent":
          "analytics-java/3.5.1", "X-Retry-Count": "1"},
         json.dumps({"batch": [ev("java-1", sentAt=sent)], "sentAt": sent, "sequence": 1, "writeKey": key,
                     "context": {"library": {"name": "analytics-java", "version": "3.5.1"}}}).encode()),
        ("analytics-ruby", "/v1/import",
         {"Accept": "application/json", "Content-Type": "application/json", "User-Agent": "analytics-ruby/2.5.0",
          "Authorization": _basic(key)},
         json.dumps({"sentAt": sent, "batch": [ev("ruby-1")]}).encode()),
        ("analytics-swift", "/v1/b",
         {"Content-Type": "application/json; charset=utf-8", "User-Agent": "analytics-ios/1.7.0",
          "Accept-Encoding": "gzip", "Authorization": _basic(key), "X-Retry-Count": "2"},
         ('{"batch":[' + json.dumps(ev("swift-1")) + f'],"sentAt":"{sent}","writeKey":"{key}"}}').encode()),
        ("analytics-kotlin", "/v1/b",
         {"Content-Type": "text/plain", "Content-Encoding": "gzip", "User-Agent": "analytics-kotlin/1.19.0"},
         chunks(gzip.compress(('{"batch":[' + json.dumps(ev("kotlin-1")) +
                               f'],"sentAt":"{sent}","writeKey":"{key}"}}').encode()))),
        ("rudder-sdk-js xhr", "/v1/batch",
         {"Content-Type": "application/json;charset=UTF-8", "Authorization": _basic(key), "AnonymousId": "YS0x",
          "SentAt": sent, "Rsa-Retry-Attempt": "1"},
         json.dumps({"batch": [{k: v for k, v in ev("rudder-js-1").items() if k != "timestamp"}
                               | {"originalTimestamp": "2026-12-05T07:59:59.000Z", "channel": "web"}],
                     "sentAt": sent}).encode()),
    ]
    for client, path, headers, body in cases:
        r = httpx.post(api.url + path, content=body, headers=headers, timeout=10)
        assert r.status_code == 200 and r.json()["accepted"] == 1 and r.json()["errors"] == [], (client, r.text)
    queued = {e["payload"]["messageId"]: e for e in api.queued()}
    assert set(queued) == {"go-1", "java-1", "ruby-1", "swift-1", "kotlin-1", "rudder-js-1"}
    assert {e["source"] for e in queued.values()} == {"crm"}
    assert queued["go-1"]["payload"]["context"]["library"]["name"] == "analytics-go"   # the batch's context
    assert all(e["payload"]["sentAt"] == sent for e in queued.values())
