"""Operator commands through the real CLI: explain, status, report, rep, lead, pause/resume,
forget, dead-letters. The database is filled the way production fills it: events are
published to the stream and drained in this process; what belongs to other parts (an
alert sender's deliveries, a scheduler's heartbeat) is written as those parts write it."""

from __future__ import annotations

import getpass
from datetime import timedelta

from sqlalchemy import select

from tests.support.operator import (
    EMAIL,
    PHONE,
    all_text,
    cli,
    cli_json,
    current,
    drain,
    feed,
    hot_lead,
    send,
    sessions,
    ts,
)
from worker.adapters import db

# ---------------------------------------------------------------- explain


def test_explain_json_matches_simulate_and_resolves_merged_ids(env: dict[str, str]) -> None:
    from routing.simulate import simulate
    from worker.adapters.runtime import get_runtime

    pre = [{"type": "page", "messageId": "anon-page", "anonymousId": "a-jane", "name": "Pricing",
            "properties": {"path": "/pricing"}, "timestamp": ts(20)}]
    events = pre + hot_lead("u-jane", email=EMAIL, phone=PHONE, anon="a-jane")
    feed(events)

    data = cli_json(env, "explain", "u-jane")
    sim = simulate(events, get_runtime().rules).lead("u-jane")
    assert sim is not None
    for key in ("lead_id", "score", "behavior", "fit", "tier", "hot_at", "red_hot_at", "rep", "reasons"):
        assert key in data
    assert (data["lead_id"], data["score"], data["behavior"], data["fit"], data["tier"], data["rep"]) == \
        (sim.lead_id, sim.score, sim.behavior, sim.fit, sim.tier, sim.rep)
    assert data["rep"] == "bob" and data["tier"] == "hot" and data["hot_at"] is not None
    assert data["reasons"] == sim.reasons
    names = [e["name"] for e in data["events"]]
    assert "Pricing Page Viewed" in names and "Demo Requested" in names      # the merged anonymous history too
    demo = next(e for e in data["events"] if e["name"] == "Demo Requested")
    assert demo["points"] == 25 and demo["score_after"] == 100 and demo["tier_after"] == "hot"
    crossing = next(e for e in data["events"] if e["effect"] == "route")   # 10 + 45 fit + 20 = 75
    assert crossing["name"] == "Pricing Downloaded" and crossing["score_after"] == 75
    assert [ep["event_id"] for ep in data["episodes"]] == [crossing["id"]]
    decision = data["decision"]
    assert decision["rep"] == "bob" and decision["team"] == "na"
    assert {c["rep"] for c in decision["candidates"]} == {"alice", "bob"}
    assert all(c["status"] and "reason" in c for c in decision["candidates"])
    first = [a for a in data["alerts"] if a["step"] == 0]
    assert first and first[0]["kind"] == "first" and first[0]["status"] == "pending" and first[0]["rep"] == "bob"
    assert len(data["alerts"]) == 1 + len(get_runtime().rules.alerts.retries) + 1   # first, retries, reassign check

    merged = cli_json(env, "explain", "anon:a-jane")
    assert merged["lead_id"] == "u-jane" and merged["requested_id"] == "anon:a-jane"

    text = cli(env, "explain", "u-jane").stdout
    assert "routing decision" in text and "Demo Requested" in text and "bob" in text
    assert "candidate" in text.splitlines()[text.splitlines().index(next(
        line for line in text.splitlines() if line.startswith("routing decision"))) + 1]

    missing = cli(env, "explain", "nobody-here", ok=False)
    assert missing.returncode == 1 and "no lead 'nobody-here'" in missing.stderr


# ---------------------------------------------------------------- pause


def test_pause_stops_alerting_but_not_scoring(env: dict[str, str]) -> None:
    from worker.services import pause

    with sessions()() as s:
        assert pause.is_paused(s) is False
    out = cli(env, "pause").stdout
    assert "paused" in out
    with sessions()() as s:
        assert pause.is_paused(s) is True
        row = s.get(db.Setting, pause.PAUSE_KEY)
        assert row is not None and row.value["actor"] == getpass.getuser()
    status = cli_json(env, "status")
    assert status["paused"] is True
    assert "ALERTING PAUSED" in cli(env, "status").stdout

    feed(hot_lead("u-paused"))
    with sessions()() as s:
        lead = s.get(db.Lead, "u-paused")
        assert lead is not None and lead.score == 90 and lead.tier == "hot"

    cli(env, "resume")
    with sessions()() as s:
        assert pause.is_paused(s) is False
    assert cli_json(env, "status")["paused"] is False


# ---------------------------------------------------------------- rep availability


def test_rep_away_and_back(env: dict[str, str]) -> None:
    before = db.now_utc()
    out = cli(env, "rep", "away", "bob", "--for", "2h").stdout
    assert "bob is away until" in out
    with sessions()() as s:
        state = s.get(db.RepState, "bob")
        assert state is not None and state.away_until is not None
        assert timedelta(minutes=119) < state.away_until - before < timedelta(minutes=121)
    status = cli_json(env, "status")
    assert status["reps_away"] == ["bob"]
    bob = next(r for r in status["reps"] if r["rep"] == "bob")
    assert bob["away"] is True and bob["away_until"] is not None

    feed(hot_lead("u-soft", industry="software"))    # bob's skill, but bob is away
    a = current("u-soft")
    assert a is not None and a.rep_id == "alice"

    cli(env, "rep", "back", "bob")
    with sessions()() as s:
        state = s.get(db.RepState, "bob")
        assert state is not None and state.away_until is None
    assert cli_json(env, "status")["reps_away"] == []

    out = cli(env, "rep", "away", "carol").stdout      # no end: until `rep back`
    assert "rep back" in out
    carol = next(r for r in cli_json(env, "status")["reps"] if r["rep"] == "carol")
    assert carol["away"] is True and carol["away_until"] is None

    bad = cli(env, "rep", "away", "zed", "--for", "1h", ok=False)
    assert bad.returncode == 1 and "unknown rep 'zed'" in bad.stderr
    past = cli(env, "rep", "away", "alice", "--until", "2020-01-01T00:00:00Z", ok=False)
    assert past.returncode == 1 and "past" in past.stderr
    with sessions()() as s:
        assert s.get(db.RepState, "zed") is None
        alice = s.get(db.RepState, "alice")
        assert alice is None or alice.away_until is None


# ---------------------------------------------------------------- lead commands


def _pending_steps(assignment_id: int) -> int:
    with sessions()() as s:
        return len(list(s.scalars(select(db.AlertStep).where(db.AlertStep.assignment_id == assignment_id,
                                                            db.AlertStep.status == "pending"))))


def test_lead_assign_release_close(env: dict[str, str]) -> None:
    feed(hot_lead("u-ops"))
    routed = current("u-ops")
    assert routed is not None and routed.rep_id == "bob" and _pending_steps(routed.id) > 0

    out = cli(env, "lead", "assign", "u-ops", "carol", "--reason", "speaks German").stdout
    assert "carol" in out
    manual = current("u-ops")
    assert manual is not None and manual.rep_id == "carol" and manual.route == "manual"
    assert manual.actor == getpass.getuser() and manual.episode_id == routed.episode_id
    assert _pending_steps(routed.id) == 0 and _pending_steps(manual.id) > 0
    with sessions()() as s:
        first = s.scalar(select(db.AlertStep).where(db.AlertStep.assignment_id == manual.id, db.AlertStep.step == 0))
        assert first is not None and first.kind == "first"
        trace = s.scalar(select(db.Trace).where(db.Trace.lead_id == "u-ops", db.Trace.kind == "operator.assign"))
        assert trace is not None and trace.actor == getpass.getuser()
        assert trace.detail["reason"] == "speaks German" and trace.detail["previous"] == ["bob"]
        lead = s.get(db.Lead, "u-ops")
        assert lead is not None and lead.owner == "carol"

    out = cli(env, "lead", "release", "u-ops").stdout
    released = current("u-ops")
    assert released is not None and released.id != manual.id and released.rep_id in ("alice", "bob")
    assert released.route == "team" and released.reasons["candidates"]
    assert _pending_steps(manual.id) == 0 and released.rep_id in out

    with sessions()() as s:
        n_assignments = len(list(s.scalars(select(db.Assignment).where(db.Assignment.lead_id == "u-ops"))))
    bad_rep = cli(env, "lead", "assign", "u-ops", "zed", ok=False)
    assert bad_rep.returncode == 1 and "unknown rep 'zed'" in bad_rep.stderr
    bad_lead = cli(env, "lead", "assign", "u-nobody", "bob", ok=False)
    assert bad_lead.returncode == 1 and "no lead 'u-nobody'" in bad_lead.stderr
    for action in ("release", "close"):
        r = cli(env, "lead", action, "u-nobody", ok=False)
        assert r.returncode == 1 and "no lead" in r.stderr
    after = current("u-ops")
    assert after is not None and after.id == released.id            # nothing changed
    with sessions()() as s:
        assert len(list(s.scalars(select(db.Assignment).where(db.Assignment.lead_id == "u-ops")))) == n_assignments

    cli(env, "lead", "close", "u-ops", "--reason", "duplicate")
    assert current("u-ops") is None
    with sessions()() as s:
        lead = s.get(db.Lead, "u-ops")
        assert lead is not None and lead.closed_at is not None
        assert not list(s.scalars(select(db.AlertStep).where(db.AlertStep.lead_id == "u-ops",
                                                             db.AlertStep.status == "pending")))
        assert {e.status for e in s.scalars(select(db.HotEpisode).where(db.HotEpisode.lead_id == "u-ops"))} \
            == {"closed"}
        kinds = [t.kind for t in s.scalars(select(db.Trace).where(db.Trace.lead_id == "u-ops").order_by(db.Trace.id))]
        assert kinds == ["operator.assign", "operator.release", "operator.close"]
    assert cli_json(env, "status")["hot_leads_open"] == 0


# ---------------------------------------------------------------- forget


def test_forget_leaves_no_personal_data(env: dict[str, str]) -> None:
    from worker.adapters import stream
    from worker.adapters.runtime import get_runtime

    pre = [{"type": "track", "messageId": "anon-1", "anonymousId": "a-forget", "event": "Webinar Attended",
            "properties": {"email": EMAIL}, "timestamp": ts(30)}]
    feed(pre + hot_lead("u-forget", email=EMAIL, phone=PHONE, anon="a-forget"))
    # an event of the same person that failed validation sits in the dead letters with its data
    stream.append(get_runtime().redis, stream.NORMAL,
                  [("default", ts(1), {"type": "identify", "userId": "u-forget", "traits": {"phone": PHONE}})])
    drain()
    now = db.now_utc()
    with sessions().begin() as s:
        step = s.scalar(select(db.AlertStep).where(db.AlertStep.lead_id == "u-forget", db.AlertStep.step == 0))
        assert step is not None
        s.add(db.Delivery(step_id=step.id, lead_id="u-forget", recipient="revops@example.com", channel="email",
                          to=EMAIL, status="failed", error=f"bounce for {EMAIL}", created_at=now, updated_at=now))
        s.add(db.Trace(lead_id="u-forget", at=now, kind="note", detail={"said": f"call me at {PHONE}"}))
        score_before = s.get(db.Lead, "u-forget").score  # type: ignore[union-attr]
        assert s.scalar(select(db.DeadLetter.id)) is not None
        found = [(t, c) for t, c, v in all_text(s) if EMAIL in v or PHONE in v]
        assert {t for t, _ in found} >= {"leads", "events", "deliveries", "lead_trace", "dead_letters"}

    out = cli(env, "forget", "u-forget").stdout
    assert "erased" in out

    with sessions()() as s:
        leaks = [(t, c, v[:80]) for t, c, v in all_text(s) if EMAIL in v or PHONE in v or "Jane" in v]
        assert leaks == []
        from worker.services.operator import forgotten_id

        lead = s.get(db.Lead, forgotten_id("u-forget"))
        assert lead is not None and lead.traits == {} and lead.forgotten_at is not None
        assert lead.score == score_before and lead.event_count == 3
        assert all(e.traits == {} and e.properties == {} for e in s.scalars(select(db.Event)))
        assert s.scalar(select(db.Trace).where(db.Trace.kind == "forgotten")) is not None
    data = cli_json(env, "explain", "u-forget")
    assert data["forgotten_at"] is not None and data["score"] == score_before and len(data["events"]) == 4

    missing = cli(env, "forget", "u-nobody", ok=False)
    assert missing.returncode == 1 and "no lead" in missing.stderr


# ---------------------------------------------------------------- dead letters


def test_dead_letters_list_and_retry(env: dict[str, str]) -> None:
    from worker.adapters import stream
    from worker.adapters.runtime import get_runtime

    stream.append(get_runtime().redis, stream.NORMAL,
                  [("default", ts(1), {"type": "track", "userId": "u-dl", "event": "Page Viewed"})])
    drain()
    listed = cli_json(env, "dead-letters", "list")
    assert len(listed) == 1 and "messageId" in listed[0]["error"] and listed[0]["retried_at"] is None
    bad_id = listed[0]["id"]
    text = cli(env, "dead-letters").stdout
    assert "messageId" in text.splitlines()[0] and str(bad_id) in text

    # an event that failed for a reason since fixed: its payload is valid now
    good = {"type": "track", "messageId": "dl-good", "userId": "u-dl", "event": "Demo Requested",
            "timestamp": ts(2)}
    with sessions().begin() as s:
        dl = db.DeadLetter(source="web", message_id="dl-good", payload={"event": good, "received_at": ts(2)},
                           error="temporary", created_at=db.now_utc())
        s.add(dl)
        s.flush()
        good_id = dl.id
    out = cli(env, "dead-letters", "retry", str(good_id)).stdout
    assert f"requeued dead letter {good_id}" in out
    assert stream.backlog(get_runtime().redis, stream.FAST)["waiting"] == 1
    drain()
    with sessions()() as s:
        ev = s.scalar(select(db.Event).where(db.Event.message_id == "dl-good"))
        assert ev is not None and ev.source == "web" and ev.lead_id == "u-dl" and ev.points == 25
        row = s.get(db.DeadLetter, good_id)
        assert row is not None and row.retried_at is not None and row.attempts == 2

    still_bad = cli(env, "dead-letters", "retry", str(bad_id), ok=False)
    assert still_bad.returncode == 1 and "still invalid" in still_bad.stderr
    with sessions()() as s:
        assert s.get(db.DeadLetter, bad_id).retried_at is None  # type: ignore[union-attr]
    unknown = cli(env, "dead-letters", "retry", "9999", ok=False)
    assert unknown.returncode == 1 and "no dead letter 9999" in unknown.stderr


# ---------------------------------------------------------------- status


def test_status_numbers(env: dict[str, str]) -> None:
    from worker.adapters.runtime import get_runtime

    feed(hot_lead("u-s1", industry="fintech"))
    with sessions().begin() as s:
        now = db.now_utc()
        s.add(db.RepState(rep_id="carol", away_until=None, disabled_channels={"sms": "21610 opted out"},
                          updated_at=now))
        s.add(db.Setting(key="worker:w1", value={"rules_hash": get_runtime().rules.hash, "seen_at": now.isoformat()},
                         updated_at=now))
        s.add(db.Setting(key="worker:w2", value={"rules_hash": "old0hash", "seen_at": now.isoformat()},
                         updated_at=now))
        s.add(db.HotEpisode(lead_id="u-nobody-fits", opened_at=now, status="unrouted", rules_hash="x"))
        s.add(db.DeadLetter(source="default", payload={}, error="bad", created_at=now))
    # queued, not yet drained: one Demo Requested (fast lane) and two page views
    send([{"type": "track", "messageId": f"w-{i}", "userId": "u-wait", "event": name, "timestamp": ts(1)}
          for i, name in enumerate(["Demo Requested", "Page Viewed", "Page Viewed"])])

    data = cli_json(env, "status")
    assert data["queues"]["events_waiting"] == 3 and data["queues"]["fast_lane"] == 1
    assert data["queues"]["dead_letters"] == 1
    assert data["hot_leads_open"] == 1 and data["alerts_due"] == 1
    assert data["unrouted"] == 1 and data["unrouted_leads"] == ["u-nobody-fits"]
    assert data["disabled_channels"] == {"carol": {"sms": "21610 opted out"}}
    assert next(r for r in data["reps"] if r["rep"] == "alice")["open_hot_leads"] == 1
    assert data["rules_hash"] == get_runtime().rules.hash
    assert {w["name"]: w["current"] for w in data["workers"]} == {"w1": True, "w2": False}
    assert data["paused"] is False and data["reps_away"] == []

    text = cli(env, "status").stdout
    assert "events waiting" in text and "21610 opted out" in text and "old0hash" in text
    rep_lines = [line for line in text.splitlines() if line.startswith(("alice ", "bob ", "carol ", "maria "))]
    assert len(rep_lines) == 4 and len({line.index(" available") for line in rep_lines}) == 1   # aligned


# ---------------------------------------------------------------- report


def test_report_numbers(env: dict[str, str]) -> None:
    from worker.adapters.runtime import get_runtime
    from worker.services.claims import claim

    rules = get_runtime().rules
    feed(hot_lead("u-r1", industry="software") + hot_lead("u-r2", industry="fintech")
         + hot_lead("u-r3", industry="retail"))
    reps = {lead: current(lead).rep_id for lead in ("u-r1", "u-r2", "u-r3")}  # type: ignore[union-attr]
    assert reps == {"u-r1": "bob", "u-r2": "alice", "u-r3": "alice"}

    # the alert sender's first deliveries, then two claims: bob in 30 s, alice in 200 s (past the 90 s SLA)
    with sessions().begin() as s:
        for lead_id, system_delay, claim_after in (("u-r1", 0.5, 30), ("u-r2", 1.5, 200), ("u-r3", 2.5, None)):
            a = s.scalar(select(db.Assignment).where(db.Assignment.lead_id == lead_id, db.Assignment.current.is_(True)))
            ep = s.get(db.HotEpisode, a.episode_id)  # type: ignore[union-attr]
            step = s.scalar(select(db.AlertStep).where(db.AlertStep.assignment_id == a.id,  # type: ignore[union-attr]
                                                       db.AlertStep.step == 0))
            sent = ep.event_received_at + timedelta(seconds=system_delay)  # type: ignore[union-attr,operator]
            for channel in ("sms", "email"):
                s.add(db.Delivery(step_id=step.id, lead_id=lead_id, recipient=a.rep_id, channel=channel,  # type: ignore
                                  to="x", status="delivered", created_at=sent, updated_at=sent,
                                  sent_at=sent + timedelta(seconds=0 if channel == "sms" else 1)))
            if claim_after is not None:
                res = claim(s, rules, lead_id, a.rep_id, sent + timedelta(seconds=claim_after), via="test")  # type: ignore
                assert res.ok, res.message

    data = cli_json(env, "report", "--since", "7d")
    by_rep = {r["rep"]: r for r in data["reps"]}
    assert by_rep["bob"] == {"rep": "bob", "assigned": 1, "claimed": 1, "claimed_within_sla": 1,
                             "median_time_to_claim": 30.0}
    assert by_rep["alice"] == {"rep": "alice", "assigned": 2, "claimed": 1, "claimed_within_sla": 0,
                               "median_time_to_claim": 200.0}
    assert data["totals"] == {"assigned": 3, "claimed": 2, "claimed_within_sla": 1, "median_time_to_claim": 115.0}
    speed = data["speed_to_lead"]
    assert speed["hot_episodes"] == 3
    assert speed["system_delay"]["count"] == 3 and speed["system_delay"]["median"] == 1.5
    assert speed["system_delay"]["max"] == 2.5
    assert speed["human_delay"]["count"] == 2 and speed["human_delay"]["median"] == 115.0
    assert data["first_contact_sla_seconds"] == 90

    text = cli(env, "report").stdout
    assert "system delay" in text and "human delay" in text
    header = next(line for line in text.splitlines() if line.startswith("rep "))
    bob_line = next(line for line in text.splitlines() if line.startswith("bob "))
    assert bob_line.index("1") == header.index("assigned")          # columns line up
    bad = cli(env, "report", "--since", "soon", ok=False)
    assert bad.returncode == 1
