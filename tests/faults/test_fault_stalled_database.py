"""The database stalls (a TCP proxy in front of PostgreSQL stops forwarding) while reps claim leads:
the claims wait, the API does not. Ingestion answers in its usual time, ``/healthz`` answers within
its bound and names the database, and once the database is cut off for good the waiting claims
get a 503, not a hang.

Always PostgreSQL, in a SQLite run too, as the other outage scenarios."""

from __future__ import annotations

import base64
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.support.faults import ProxiedDatabase
from tests.support.stack import SECRET_KEY, Processes, free_port, wait_until
from worker.adapters.tokens import ClaimToken, sign

WRITE_KEY = "wk-stall-5e1c"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}


def _track(n: int) -> dict[str, Any]:
    return {"type": "track", "messageId": f"stall-{n}", "userId": f"u-stall-{n % 5}", "event": "Page Viewed"}


def _timed_track(url: str, n: int) -> float:
    start = time.monotonic()
    r = httpx.post(f"{url}/v1/track", json=_track(n), headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return time.monotonic() - start


def test_claims_waiting_on_a_stalled_database_hold_up_no_ingestion(
        service_env: dict[str, str], processes: Processes, postgres_behind_proxy: ProxiedDatabase) -> None:
    pg = postgres_behind_proxy
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    processes.env.update({"DATABASE_URL": pg.url, "LEADROUTER_WRITE_KEY": WRITE_KEY})
    api = processes.leadrouter("api", "--port", str(port), name="api")

    def healthy() -> bool:
        assert api.poll() is None, processes.logs()
        try:
            return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(healthy, timeout=30, message="the API to be healthy")
    usual = max(_timed_track(url, n) for n in range(10))
    expires = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())
    answers: list[int] = []

    def claim(n: int, into: list[int] = answers) -> None:
        token = sign(SECRET_KEY, ClaimToken("bob", f"u-claim-{n}", n + 1, expires))
        r = httpx.post(f"{url}/claim/{token}", data={"action": "claim"}, timeout=120)
        into.append(r.status_code)

    def three_pooled_connections() -> bool:
        # A stall hits connections that are open. A claim that had to open a connection while the
        # database stalls gets a 503 once libpq's connect timeout (5 s) passes, which a slow machine
        # reaches before the test is done timing ingestion; so the pool holds three open
        # connections first. Three claims are held at the proxy together, then let through at once.
        if pg.proxy.open >= 3:
            return True
        before, warm = pg.proxy.held, []
        pg.proxy.hold()
        burst = [threading.Thread(target=claim, args=(50 + n, warm), daemon=True) for n in range(3)]
        for t in burst:
            t.start()
        try:
            wait_until(lambda: pg.proxy.held >= before + 3, timeout=20, message="three warm-up claims at the proxy")
        finally:
            pg.proxy.release()
        for t in burst:
            t.join(30)
        return pg.proxy.open >= 3

    wait_until(three_pooled_connections, timeout=90, message="the API to hold three open database connections")

    pg.proxy.hold()                     # the database stops answering; nothing is closed
    claims = [threading.Thread(target=claim, args=(n,), daemon=True) for n in range(3)]
    for t in claims:
        t.start()
    try:
        # each claim has its database call sitting in the proxy: the API is waiting on all three
        wait_until(lambda: pg.proxy.held >= len(claims), timeout=20, message="the claims to reach the database (a claim that blocks the event loop keeps the next ones from being read at all)")
        took = [_timed_track(url, 100 + n) for n in range(20)]
        assert max(took) < max(1.0, 10 * usual), (took, usual)
        assert not answers, "a claim answered while the database stalled"      # they really waited

        start = time.monotonic()
        health = httpx.get(f"{url}/healthz", timeout=30)
        assert time.monotonic() - start < 4.0
        assert health.status_code == 503
        body = health.json()
        assert body["redis"] == "ok" and body["database"].startswith("unreachable"), body
    finally:
        pg.proxy.cut()                  # now it is gone: the waiting claims fail instead of hanging
    for t in claims:
        t.join(60)
    assert answers == [503, 503, 503], answers
    assert api.poll() is None
