"""Segment's analytics.js 2.0 (``@segment/analytics-next``) in headless Chromium, its standalone build
served by a site on another origin than the API, in both delivery modes: each event reaches the
stream, also after a 503 that makes it retry (with ``X-Retry-Count``, a header its CORS preflight must
allow), and the events still buffered when the visitor leaves the page go out with ``keepalive``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.clients import CHROMIUM_ARGS, FaultyProxy, SiteServer, chromium
from tests.support.ingest import KEYS, Api, start_api
from tests.support.stack import Processes

WRITE_KEY = KEYS["web"]


@pytest.fixture
def browser_stack(processes: Processes, service_env: dict[str, str]) -> Iterator[tuple[Api, FaultyProxy, SiteServer]]:
    proxy = FaultyProxy("")
    site = SiteServer(WRITE_KEY, proxy.url.removeprefix("http://") + "/v1")
    api = start_api(processes, service_env, LEADROUTER_CORS_ORIGINS=site.url)
    proxy.target = api.url
    yield api, proxy, site
    site.stop()
    proxy.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium(), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser: Any, url: str) -> Any:
    page = browser.new_page()
    page.goto(url)
    page.wait_for_function("window.analytics && window.analytics.initialized === true", timeout=15_000)
    return page


def _wait_for_messages(api: Api, proxy: FaultyProxy, count: int) -> list[dict[str, Any]]:
    """The stream once ``count`` events are in it and the proxy has recorded the answers that took them."""
    from tests.support.stack import wait_until

    def delivered() -> int:
        return sum(len(body["batch"]) if "batch" in (body := p.json()) else 1
                   for p in proxy.posts() if p.status == 200)

    wait_until(lambda: delivered() >= count, timeout=30, message=f"{count} events delivered")
    return wait_until(lambda: q if len(q := api.queued()) >= count else None, timeout=10,
                      message=f"{count} events in the stream")


@pytest.mark.parametrize("mode", ["standard", "batching"])
def test_analytics_js_delivers_across_origins_and_retries_after_a_503(
        mode: str, browser_stack: tuple[Api, FaultyProxy, SiteServer], browser: Any) -> None:
    api, proxy, site = browser_stack
    proxy.fail = 1
    page = open_page(browser, f"{site.url}/{mode}.html")
    page.evaluate("""() => {
        analytics.identify('br-1', {name: 'Jane Browser', email: 'br-1@acme.com', role: 'decision_maker'});
        analytics.page();
        analytics.track('Demo Requested', {page: '/demo'});
    }""")
    queued = _wait_for_messages(api, proxy, 3)
    posts = proxy.posts()
    assert posts[0].status == 503 and any(p.status == 200 for p in posts[1:])
    expected = {"standard": {"/v1/i", "/v1/p", "/v1/t"}, "batching": {"/v1/b"}}[mode]
    assert {p.path for p in posts} == expected
    retried = [p for p in posts if "x-retry-count" in p.headers]
    assert retried and all(p.status == 200 for p in retried), [(p.path, p.status, p.headers) for p in posts]
    preflights = [s for s in proxy.seen if s.method == "OPTIONS"]
    assert any("x-retry-count" in s.headers.get("access-control-request-headers", "") for s in preflights)
    assert all(s.status == 200 for s in preflights)
    assert {e["source"] for e in queued} == {"web"}
    assert sorted(e["payload"]["type"] for e in queued) == ["identify", "page", "track"]
    page_event = next(e["payload"] for e in queued if e["payload"]["type"] == "page")
    ctx = page_event["context"]
    assert ctx["page"]["url"] == f"{site.url}/{mode}.html" and ctx["userAgent"] and ctx["ip"] == "127.0.0.1"
    assert {e["payload"].get("userId") for e in queued} == {"br-1"}
    assert len({e["payload"]["messageId"] for e in queued}) == 3      # the retry sent the same events again
    page.close()


def test_events_buffered_when_the_visitor_leaves_go_out_with_keepalive(
        browser_stack: tuple[Api, FaultyProxy, SiteServer], browser: Any) -> None:
    api, proxy, site = browser_stack
    page = open_page(browser, f"{site.url}/next.html?utm_source=google&utm_campaign=spring")   # batches every 60 s
    # each call resolves once the event has passed the plugins into the batch (not when it is sent)
    page.evaluate("""async () => {
        await analytics.identify('br-2', {name: 'Jane Leaving'});
        await analytics.track('Pricing Downloaded');
    }""")
    assert proxy.posts() == []
    page.goto("about:blank")            # pagehide: what is buffered leaves now
    queued = _wait_for_messages(api, proxy, 2)
    assert {p.path for p in proxy.posts()} == {"/v1/b"}
    assert sorted(e["payload"]["type"] for e in queued) == ["identify", "track"]
    track = next(e["payload"] for e in queued if e["payload"]["type"] == "track")
    assert track["context"]["campaign"] == {"source": "google", "name": "spring"}
