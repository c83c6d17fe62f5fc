"""The operator's board in a real headless Chromium, on a running stack (API, workers, scheduler,
the local Twilio): refused without a login; signed in, a lead going hot appears with its
countdown, its name shown as text even when it carries markup; a signed SMS reply claims it and
the board drops it within 3 s."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from tests.support.alerting import TOKEN, fast_rules, hot_lead, send, sms_to
from tests.support.stack import ROOT, wait_until
from worker.adapters.launcher import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts"
OPERATOR = "board-operator-token-0123456789"
EVIL = "<script>alert(1)</script> Jane"


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_board_in_a_real_browser(alert_env, processes, providers):
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    public = f"http://127.0.0.1:{port}"
    alert_env.update({"LEADROUTER_PUBLIC_URL": public, "LEADROUTER_OPERATOR_TOKENS": f"dana:{OPERATOR}"})
    fast_rules(Path(alert_env["LEADROUTER_CONFIG"]), retries=["60s", "120s"], first_contact_sla="90s")
    processes.env.update(alert_env)
    processes.celery_worker(queues="events,fast,alerts", concurrency=2)
    processes.leadrouter("beat", name="beat")
    processes.leadrouter("api", "--host", "127.0.0.1", "--port", str(port), name="api")
    wait_until(lambda: _healthy(public), timeout=30, message="the API")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                           "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

        # no login: the data is refused and the page sends to the sign-in form
        refused = page.goto(f"{public}/board/data.json")
        assert refused is not None and refused.status == 401
        page.goto(f"{public}/board")
        assert page.url == f"{public}/board/login"
        page.fill("#token", "a-wrong-token-of-some-length")
        page.click("button[type=submit]")
        expect(page.get_by_role("alert")).to_contain_text("not valid")
        page.fill("#token", OPERATOR)
        page.click("button[type=submit]")
        page.wait_for_url(f"{public}/board")
        expect(page.get_by_text("signed in as dana")).to_be_visible()

        # a lead goes hot (its name carries markup): it appears with its countdown
        events = hot_lead("board-1")
        events[0]["traits"]["name"] = EVIL
        send(events)
        row = page.locator('tr[data-lead="board-1"]')
        expect(row).to_be_visible(timeout=15_000)
        expect(row.get_by_text(EVIL, exact=False)).to_be_visible()      # shown as text, never run
        expect(row.locator("[data-due]").first).to_have_text(_countdown(), timeout=3_000)
        rep_phone = "+14155550102"
        providers.wait_for(lambda s: sms_to(s, rep_phone), timeout=20)
        expect(row.locator(".pill.sent, .pill.delivered").first).to_be_visible(timeout=5_000)
        page.screenshot(path=str(ARTIFACTS / "board.png"), full_page=True)

        # the rep claims by a signed SMS reply: the board drops the lead within 3 s
        from twilio.request_validator import RequestValidator

        params = {"MessageSid": "SM" + "8" * 32, "From": rep_phone, "To": "+15005550006", "Body": "YES",
                  "AccountSid": "AC" + "0" * 32}
        signature = RequestValidator(TOKEN).compute_signature(f"{public}/webhooks/twilio/sms", params)
        reply = httpx.post(f"{public}/webhooks/twilio/sms", content=urlencode(params),
                           headers={"X-Twilio-Signature": signature,
                                    "Content-Type": "application/x-www-form-urlencoded"})
        assert reply.status_code == 200 and "Claimed" in reply.text, reply.text
        claimed_at = time.monotonic()
        expect(row).to_have_count(0, timeout=3_000)
        assert time.monotonic() - claimed_at < 3.0
        expect(page.locator("#human-median")).not_to_have_text("-", timeout=15_000)   # the day: every 10 s
        page.screenshot(path=str(ARTIFACTS / "board-claimed.png"), full_page=True)

        # the lead's timeline page
        page.goto(f"{public}/board/leads/board-1")
        expect(page.get_by_text("claimed by", exact=False).first).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "board-lead.png"), full_page=True)
        browser.close()
    assert dialogs == [], f"a script ran from lead data: {dialogs}"
    assert providers.violations == []


def _countdown():
    import re

    return re.compile(r"^(in|overdue) \d+:\d\d$")
