"""The claim page in a real headless Chromium: showing it claims nothing, the button does."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from tests.support.alerting import hot_lead, send
from tests.support.stack import ROOT, free_port, wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts"


def _url_ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def api(service_env, processes):
    port = free_port()
    processes.env["LEADROUTER_PUBLIC_URL"] = f"http://127.0.0.1:{port}"
    processes.leadrouter("api", "--host", "127.0.0.1", "--port", str(port), name="api")
    wait_until(lambda: _url_ok(f"http://127.0.0.1:{port}/healthz"), timeout=30, message="the API")
    return f"http://127.0.0.1:{port}"


def test_claim_page_in_a_real_browser(api, service_env, tmp_path: Path):
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    from worker.adapters import db
    from worker.adapters.runtime import get_runtime
    from worker.entrypoints.tasks import drain_once
    from worker.services.alerts import claim_url

    send(hot_lead("browser-1"))
    drain_once("fast")
    drain_once("normal")
    rt = get_runtime()
    engine = create_engine(service_env["DATABASE_URL"])
    with Session(engine) as s:
        a = s.scalar(select(db.Assignment).where(db.Assignment.lead_id == "browser-1",
                                                 db.Assignment.current.is_(True)))
        assert a is not None and a.rep_id is not None
        url = claim_url(rt.settings, rt.rules, a.rep_id, a, a.created_at)
    path = url.split("/claim/", 1)[1]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                           "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page()
        response = page.goto(f"{api}/claim/{path}")
        assert response is not None and response.status == 200
        assert response.headers["cache-control"] == "no-store"
        assert page.get_by_text("Jane Doe").is_visible()
        page.screenshot(path=str(ARTIFACTS / "claim-page.png"))
        page.reload()   # a mail scanner's GET, twice: nothing is claimed
        with Session(engine) as s:
            assert s.get(db.Assignment, a.id).claimed_at is None
        page.get_by_role("button", name="Claim").click()
        page.wait_for_load_state()
        assert "Claimed" in page.content()
        page.screenshot(path=str(ARTIFACTS / "claim-done.png"))
        browser.close()
    with Session(engine) as s:
        claimed = s.get(db.Assignment, a.id)
        assert claimed.claimed_by == a.rep_id and claimed.claimed_at is not None
