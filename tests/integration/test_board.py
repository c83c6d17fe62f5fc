"""The operator's board (/board) through the real API app, on the real database and Redis:
sign-in, escaping, the operator buttons recorded with who pressed them, figures equal to
`leadrouter report --json`; and routing that heals itself (auto_away, credit_back)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.support.operator import cli, cli_json, current, feed, hot_lead, sessions
from worker.adapters import db
from worker.adapters.runtime import get_runtime

TOKEN = "alice-operator-token-0123456789"


@pytest.fixture
def client(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:  # noqa: F811
    from worker.adapters.settings import reset_settings

    monkeypatch.setenv("LEADROUTER_OPERATOR_TOKENS", f"ann:{TOKEN}")
    env["LEADROUTER_OPERATOR_TOKENS"] = f"ann:{TOKEN}"
    reset_settings()
    from worker.entrypoints.api import create_app

    with TestClient(create_app(), base_url="http://127.0.0.1:8000") as c:
        yield c


def login(c: TestClient) -> str:
    r = c.post("/board/login", data={"token": TOKEN}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/board", r.text
    page = c.get("/board")
    assert page.status_code == 200
    m = re.search(r'<meta name="csrf" content="([^"]+)">', page.text)
    assert m, page.text[:500]
    return m.group(1)


def rules_with(env: dict[str, str], routing_extra: str) -> None:  # noqa: F811
    from worker.adapters.runtime import reset_runtime

    path = Path(env["LEADROUTER_CONFIG"])
    text = path.read_text()
    assert "\nrouting:\n" in text
    path.write_text(text.replace("\nrouting:\n", "\nrouting:\n" + routing_extra, 1))
    reset_runtime()


def test_the_board_is_refused_without_a_valid_login(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    assert client.get("/board/data.json").status_code == 401
    assert client.get("/board/live").status_code == 401
    r = client.get("/board", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/board/login"
    assert client.post("/board/action", data={"action": "close", "lead": "x"}).status_code == 401
    bad = client.post("/board/login", data={"token": "not-the-token-at-all"})
    assert bad.status_code == 401 and "not valid" in bad.text and "set-cookie" not in bad.headers
    csrf = login(client)
    assert client.get("/board/data.json").status_code == 200
    cookie = client.cookies.get("leadrouter_board")
    assert cookie is not None
    # a tampered cookie (another name, same signature) is refused
    name, expires, sig = cookie.split(".")
    client.cookies.set("leadrouter_board", f"Ym9i.{expires}.{sig}", path="/board")
    assert client.get("/board/data.json").status_code == 401
    client.cookies.set("leadrouter_board", cookie, path="/board")
    # the button needs the page's CSRF token as well as the cookie
    assert client.post("/board/action", data={"action": "close", "lead": "x"}).status_code == 403
    assert client.post("/board/action", data={"action": "close", "lead": "x"},
                       headers={"X-Board-CSRF": csrf}).status_code == 409     # no such lead: refused, nothing done
    # a token taken out of the setting ends its sessions (at the API's restart)
    from worker.adapters.runtime import reset_runtime
    from worker.adapters.settings import reset_settings

    monkeypatch.setenv("LEADROUTER_OPERATOR_TOKENS", "bob:another-token-0123456789")
    reset_settings()
    reset_runtime()
    assert client.get("/board/data.json").status_code == 401


def test_board_shows_open_leads_escaped_and_agrees_with_report(client: TestClient, env: dict[str, str]  # noqa: F811
                                                               ) -> None:
    from worker.services.claims import claim

    rules = get_runtime().rules
    evil = hot_lead("u-evil")
    evil[0]["traits"]["name"] = "<script>alert(1)</script> Eve"
    feed(hot_lead("u-b1") + evil + hot_lead("u-b2", industry="fintech"))
    with sessions().begin() as s:   # the alert sender's first deliveries; one claim 40 s later
        for lead_id, delay, claim_after in (("u-b1", 0.4, 40), ("u-evil", 1.2, None), ("u-b2", 2.0, None)):
            a = s.scalar(select(db.Assignment).where(db.Assignment.lead_id == lead_id, db.Assignment.current.is_(True)))
            assert a is not None
            ep = s.get(db.HotEpisode, a.episode_id)
            step = s.scalar(select(db.AlertStep).where(db.AlertStep.assignment_id == a.id, db.AlertStep.step == 0))
            assert ep is not None and step is not None and ep.event_received_at is not None
            sent = ep.event_received_at + timedelta(seconds=delay)
            step.status, step.fired_at = "done", sent
            s.add(db.Delivery(step_id=step.id, lead_id=lead_id, recipient=a.rep_id or "", channel="sms", to="x",
                              status="delivered", created_at=sent, updated_at=sent, sent_at=sent))
            if claim_after is not None:
                assert claim(s, rules, lead_id, a.rep_id or "", sent + timedelta(seconds=claim_after), via="test").ok

    login(client)
    page = client.get("/board").text
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; Eve" in page
    assert page.count("<script") == 1 and 'src="/board/board.js"' in page        # ours, and only ours
    assert "Content-Security-Policy" in client.get("/board").headers
    data = client.get("/board/data.json").json()
    assert data["open_hot_leads"] == 2 and {lead["lead_id"] for lead in data["leads"]} == {"u-evil", "u-b2"}
    evil_row = next(lead for lead in data["leads"] if lead["lead_id"] == "u-evil")
    assert evil_row["deliveries"] == [{"step": 0, "kind": "first", "recipient": evil_row["rep"], "channel": "sms",
                                       "status": "delivered"}]
    assert evil_row["next_due_at"] and evil_row["signals"][0] == "Demo Requested"

    report = cli_json(env, "report", "--since", "24h")
    assert data["today"]["speed_to_lead"] == report["speed_to_lead"]
    speed = report["speed_to_lead"]
    assert speed["system_delay"]["count"] == 3 and speed["system_delay"]["median"] == 1.2
    assert speed["human_delay"]["count"] == 1 and speed["human_delay"]["median"] == 40.0
    reps = [current(lead).rep_id for lead in ("u-b1", "u-evil", "u-b2")]  # type: ignore[union-attr]
    assert {r["rep"]: r["alerted"] for r in speed["by_rep"]} == {rep: reps.count(rep) for rep in reps}
    svg = re.search(r'<svg id="histogram"[^>]*data-system="([0-9,]+)"[^>]*data-human="([0-9,]+)"', page)
    assert svg is not None
    assert sum(map(int, svg.group(1).split(","))) == 3 and sum(map(int, svg.group(2).split(","))) == 1
    assert "median human delay" in cli(env, "report", "--since", "24h").stdout


def test_board_buttons_are_recorded_with_the_operator(client: TestClient) -> None:
    feed(hot_lead("u-act"))
    csrf = login(client)
    before = current("u-act")
    assert before is not None
    target = "carol" if before.rep_id != "carol" else "alice"
    r = client.post("/board/action", data={"action": "assign", "lead": "u-act", "rep": target},
                    headers={"X-Board-CSRF": csrf})
    assert r.status_code == 200 and r.json()["success"], r.text
    after = current("u-act")
    assert after is not None and after.rep_id == target and after.actor == "board:ann"
    r = client.post("/board/action", data={"action": "close", "lead": "u-act", "reason": "junk"},
                    headers={"X-Board-CSRF": csrf})
    assert r.status_code == 200, r.text
    with sessions()() as s:
        kinds = {(t.kind, t.actor) for t in s.scalars(select(db.Trace).where(db.Trace.lead_id == "u-act"))}
        ended = s.get(db.Assignment, after.id)
    assert {("operator.assign", "board:ann"), ("operator.close", "board:ann")} <= kinds
    assert ended is not None and ended.end_reason == "closed as junk"
    bad = client.post("/board/action", data={"action": "assign", "lead": "u-act", "rep": "zed"},
                      headers={"X-Board-CSRF": csrf})
    assert bad.status_code == 409 and "unknown rep" in bad.json()["message"]
    timeline = client.get("/board/leads/u-act")
    assert timeline.status_code == 200 and f"assigned to <b>{target}</b>" in timeline.text
    assert "operator.close by board:ann" in timeline.text
    assert client.get("/board/leads/u-nobody").status_code == 404


def _fire_first_alert(lead_id: str, minutes_ago: float) -> db.Assignment:
    """What the alert sender records when a first alert goes out, ``minutes_ago``."""
    with sessions().begin() as s:
        a = s.scalar(select(db.Assignment).where(db.Assignment.lead_id == lead_id, db.Assignment.current.is_(True)))
        assert a is not None
        step = s.scalar(select(db.AlertStep).where(db.AlertStep.assignment_id == a.id, db.AlertStep.step == 0))
        assert step is not None
        step.status, step.fired_at = "done", db.now_utc() - timedelta(minutes=minutes_ago)
        s.expunge(a)
        return a


def test_auto_away_sets_a_rep_away_after_missed_first_alerts(env: dict[str, str]) -> None:  # noqa: F811
    from worker.services.healing import auto_away_chore

    rules_with(env, "  auto_away: {after_missed: 2, for: 30m}\n")
    feed(hot_lead("u-aw1", industry="fintech"))
    first = _fire_first_alert("u-aw1", 10)
    rep = first.rep_id
    auto_away_chore(get_runtime())
    assert not next(r for r in cli_json(env, "status")["reps"] if r["rep"] == rep)["away"]   # one miss only
    # the second lead goes to the same rep (skills), and its SLA passes unclaimed too
    feed(hot_lead("u-aw2", industry="fintech"))
    second = _fire_first_alert("u-aw2", 5)
    assert second.rep_id == rep
    auto_away_chore(get_runtime())
    shown = next(r for r in cli_json(env, "status")["reps"] if r["rep"] == rep)
    assert shown["away"] and "auto-away: 2 first alerts in a row" in shown["away_reason"]
    with sessions()() as s:
        escalations = list(s.scalars(select(db.AlertStep).where(db.AlertStep.kind == "escalation")))
        traces = list(s.scalars(select(db.Trace).where(db.Trace.kind == "rep.auto_away")))

    manager = get_runtime().rules.rep(rep or "").manager  # type: ignore[union-attr]
    assert manager, "the test's rules give every rep a manager"
    assert {e.assignment_id for e in escalations} == {first.id, second.id}       # the manager hears of both
    assert {t.lead_id for t in traces} == {"u-aw1", "u-aw2"}
    auto_away_chore(get_runtime())                                                           # once only
    with sessions()() as s:
        assert len(list(s.scalars(select(db.AlertStep).where(db.AlertStep.kind == "escalation")))) == 2
    # the next lead sees why the rep is skipped
    feed(hot_lead("u-aw3", industry="fintech"))
    story = cli_json(env, "explain", "u-aw3")
    skipped = next(c for c in story["decision"]["candidates"] if c["rep"] == rep)
    assert skipped["status"] == "skipped" and "auto-away" in skipped["reason"]
    # back: a clean run, the old misses do not count again
    cli(env, "rep", "back", rep or "")
    auto_away_chore(get_runtime())
    assert not next(r for r in cli_json(env, "status")["reps"] if r["rep"] == rep)["away"]


def test_credit_back_moves_a_junk_lead_off_the_reps_round_robin(env: dict[str, str]) -> None:  # noqa: F811
    rules_with(env, "  fairness: {credit_back: true}\n")
    feed(hot_lead("u-cb1", industry="retail"))
    first = current("u-cb1")
    assert first is not None and first.team_id is not None
    cli(env, "lead", "close", "u-cb1", "--reason", "junk")
    feed(hot_lead("u-cb2", industry="retail"))
    second = current("u-cb2")
    assert second is not None
    story: Any = cli_json(env, "explain", "u-cb2")
    reasons = {c["rep"]: c["reason"] for c in story["decision"]["candidates"]}
    assert "(1 credited back)" in reasons[first.rep_id or ""]
    assert "load 0/" in reasons[first.rep_id or ""]
    # the same rep gets the next lead again: the junk lead does not count against them
    assert second.rep_id == first.rep_id
