"""`leadrouter simulate` as an operator runs it: tables, the summary, and `--compare` (SPEC §6)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.stack import CONFIG, ROOT

SAAS = ROOT / "config" / "presets" / "b2b-saas.yaml"

# Wednesday 2026-11-18, 15:00Z = 10:00 in New York, 09:00 in Chicago, 07:00 in Los Angeles
EVENTS = [
    # a SaaS buyer: warm under the default model, hot under the b2b-saas preset
    {"type": "identify", "messageId": "i1", "userId": "u-saas", "timestamp": "2026-11-18T15:00:00Z",
     "traits": {"role": "decision_maker", "company": {"industry": "software", "employee_count": 120},
                "address": {"country": "US"}}},
    {"type": "track", "messageId": "t1", "userId": "u-saas", "event": "Trial Activated",
     "timestamp": "2026-11-18T15:01:00Z"},
    {"type": "track", "messageId": "t2", "userId": "u-saas", "event": "Security Questionnaire Requested",
     "timestamp": "2026-11-18T15:02:00Z"},
    {"type": "track", "messageId": "t3", "userId": "u-saas", "event": "Pricing Page Viewed",
     "timestamp": "2026-11-18T15:03:00Z"},
    # red-hot under both: fintech, 900 people, US -> team na, alice has the fintech skill
    {"type": "identify", "messageId": "i2", "userId": "u-demo", "timestamp": "2026-11-18T15:00:00Z",
     "traits": {"role": "decision_maker", "budget_confirmed": True, "timeline_days": 14,
                "company": {"industry": "fintech", "employee_count": 900}, "address": {"country": "US"}}},
    {"type": "track", "messageId": "t4", "userId": "u-demo", "event": "Demo Requested",
     "timestamp": "2026-11-18T15:05:00Z"},
    {"type": "track", "messageId": "t5", "userId": "u-demo", "event": "Pricing Downloaded",
     "timestamp": "2026-11-18T15:06:00Z"},
    {"type": "track", "messageId": "t6", "userId": "u-cold", "event": "Blog Post Viewed",
     "timestamp": "2026-11-18T15:07:00Z"},
]

# routing outcomes other than a plain team assignment, under rules with no default team
OUTCOME_RULES = """\
scoring:
  events:
    Demo Requested: {points: 80}
reps:
  - {id: alice, timezone: America/New_York, hours: Mon-Fri 09:00-17:00}
  - {id: maria, timezone: America/New_York, hours: Mon-Sun 00:00-24:00}
teams:
  - id: na
    match: {address.country: [US]}
    reps: [alice]
routing:
  after_hours: on_call
  on_call: maria
"""


def lead(user: str, country: str, ts: str) -> list[dict[str, Any]]:
    return [{"type": "identify", "messageId": f"i-{user}", "userId": user, "timestamp": ts,
             "traits": {"address": {"country": country}}},
            {"type": "track", "messageId": f"t-{user}", "userId": user, "event": "Demo Requested", "timestamp": ts}]


OUTCOME_EVENTS = (lead("u-day", "US", "2026-11-18T15:00:00Z")      # 10:00 New York: alice
                  + lead("u-night", "US", "2026-11-18T04:00:00Z")  # 23:00 New York: on-call
                  + lead("u-abroad", "FR", "2026-11-18T15:00:00Z"))  # no team matches: unrouted


def write_events(tmp_path: Path, events: list[dict[str, Any]], bad_line: bool = False) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in events) + ("\nnot json" if bad_line else "") + "\n")
    return path


def leadrouter(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker.entrypoints.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def table(text: str, first_header: str) -> tuple[str, list[str]]:
    """The header line of the table whose first column is ``first_header``, and its rows."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [first_header]
                 and i + 1 < len(lines) and set(lines[i + 1]) <= {"-", " "})
    rows = []
    for line in lines[start + 2:]:
        if not line.strip():
            break
        rows.append(line)
    return lines[start], rows


def test_simulate_prints_an_aligned_lead_table_and_a_summary(tmp_path: Path) -> None:
    done = leadrouter("simulate", "--events", str(write_events(tmp_path, EVENTS)), "--config", str(CONFIG))
    assert done.returncode == 0, done.stderr
    header, rows = table(done.stdout, "lead")
    assert [r.split()[0] for r in rows] == ["u-cold", "u-demo", "u-saas"]
    demo = next(r for r in rows if r.startswith("u-demo"))
    # left-aligned text columns start under their header; numbers end under theirs
    assert demo[header.index("rep"):].split()[0] == "alice"
    assert demo[header.index("tier"):].split()[0] == "red-hot"
    end = header.index("score") + len("score")
    assert demo[:end].split()[-1] == "90"
    assert demo[header.index("hot at"):].split()[0] == "2026-11-18T15:06:00Z"
    summary = dict(re.findall(r"^  ([a-z -]+?)\s+(\d+)\b", done.stdout, re.M))
    assert summary == {"leads": "3", "went hot": "1", "routed": "1", "after hours": "0", "on-call": "0",
                       "unrouted": "0"}
    _, split = table(done.stdout, "rep")
    assert [r.split() for r in split] == [["alice", "1", "100%"]]


def test_simulate_counts_after_hours_on_call_and_unrouted(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(OUTCOME_RULES)
    events = str(write_events(tmp_path, OUTCOME_EVENTS))
    out = json.loads(leadrouter("simulate", "--events", events, "--config", str(rules), "--json").stdout)
    s = out["summary"]
    assert (s["routed"], s["on_call"], s["unrouted"], s["after_hours"]) == (2, 1, 1, 0)
    assert s["per_rep"] == {"alice": {"leads": 1, "share": 0.5}, "maria": {"leads": 1, "share": 0.5}}
    assert {r["lead_id"]: r["rep"] for r in out["leads"]} == {"u-abroad": None, "u-day": "alice",
                                                              "u-night": "maria"}
    text = leadrouter("simulate", "--events", events, "--config", str(rules)).stdout
    assert re.search(r"^  on-call\s+1\b", text, re.M) and re.search(r"^  unrouted\s+1\b", text, re.M)
    _, rows = table(text, "lead")
    assert next(r for r in rows if r.startswith("u-night")).split()[-2:] == ["maria", "on-call"]


def test_after_hours_queue_is_counted(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(OUTCOME_RULES.replace("after_hours: on_call", "after_hours: queue"))
    events = str(write_events(tmp_path, OUTCOME_EVENTS))
    s = json.loads(leadrouter("simulate", "--events", events, "--config", str(rules), "--json").stdout)["summary"]
    assert (s["after_hours"], s["on_call"], s["unrouted"]) == (1, 0, 1)


def test_bad_lines_are_reported_and_the_rest_replayed(tmp_path: Path) -> None:
    done = leadrouter("simulate", "--events", str(write_events(tmp_path, EVENTS, bad_line=True)),
                      "--config", str(CONFIG))
    assert done.returncode == 0
    assert re.search(r"^error: .*events\.jsonl:9: malformed JSON", done.stderr, re.M)
    assert "u-demo" in done.stdout


def test_a_number_too_long_to_read_is_a_bad_line_not_a_crash(tmp_path: Path) -> None:
    path = write_events(tmp_path, EVENTS)
    with path.open("a") as fh:   # valid JSON that Python refuses: an integer of over 4,300 digits
        fh.write('{"type": "track", "n": ' + "9" * 5000 + "}\n")
    done = leadrouter("simulate", "--events", str(path), "--config", str(CONFIG))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert re.search(rf"^error: .*events\.jsonl:{len(EVENTS) + 1}: malformed JSON", done.stderr, re.M)
    assert "u-demo" in done.stdout


def test_compare_lists_changed_leads_and_the_rep_split_in_a_table(tmp_path: Path) -> None:
    done = leadrouter("simulate", "--events", str(write_events(tmp_path, EVENTS)), "--config", str(CONFIG),
                      "--compare", str(SAAS))
    assert done.returncode == 0, done.stderr
    assert f"compared with {SAAS}" in done.stdout and "1 of 3 lead(s) change rep or tier" in done.stdout
    compared = done.stdout[done.stdout.index("compared with"):]
    header, rows = table(compared, "lead")
    assert len(rows) == 1 and rows[0].startswith("u-saas")
    row = rows[0]
    assert re.match(r"warm\s+-> hot\b", row[header.index("tier before"):])
    assert re.match(r"-\s+-> bob\b", row[header.index("rep before"):])
    assert re.match(r"55\s+-> 100\b", row[header.index("score"):])
    _, split = table(compared, "rep")
    assert [r.split() for r in split] == [["alice", "1", "1", "+0", "100%", "50%", "-50", "pts"],
                                          ["bob", "0", "1", "+1", "0%", "50%", "+50", "pts"]]
    _, outcomes = table(compared, "outcome")
    assert ["went", "hot", "1", "2", "+1"] in [r.split() for r in outcomes]


def test_compare_json_is_exact(tmp_path: Path) -> None:
    done = leadrouter("simulate", "--events", str(write_events(tmp_path, EVENTS)), "--config", str(CONFIG),
                      "--compare", str(SAAS), "--json")
    cmp = json.loads(done.stdout)["compare"]
    assert cmp["config"] == str(SAAS) and len(cmp["rules"]) == 2 and cmp["rules"][0] != cmp["rules"][1]
    assert cmp["changed"] == [{"lead_id": "u-saas", "rep": [None, "bob"], "tier": ["warm", "hot"],
                               "score": [55.0, 100.0], "route": [None, "team"]}]
    assert cmp["per_rep"] == {
        "alice": {"before": 1, "after": 1, "change": 0, "share_before": 1.0, "share_after": 0.5, "share_change": -0.5},
        "bob": {"before": 0, "after": 1, "change": 1, "share_before": 0.0, "share_after": 0.5, "share_change": 0.5},
    }
    assert (cmp["hot_crossings"], cmp["routed"], cmp["unrouted"]) == ([1, 2], [1, 2], [0, 0])
    assert cmp["tiers"]["warm"] == [1, 0] and cmp["tiers"]["hot"] == [0, 1]


def test_compare_against_itself_changes_nothing(tmp_path: Path) -> None:
    out = json.loads(leadrouter("simulate", "--events", str(write_events(tmp_path, EVENTS)), "--config",
                                str(CONFIG), "--compare", str(CONFIG), "--json").stdout)
    assert out["compare"]["changed"] == []
    assert all(v["change"] == 0 for v in out["compare"]["per_rep"].values())


@pytest.mark.parametrize("flag", ["--compare", "--config"])
def test_an_invalid_rules_file_stops_the_replay(tmp_path: Path, flag: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("teams:\n  - id: default\n    reps: [ghost]\n")
    args = ["--config", str(CONFIG), "--compare", str(bad)] if flag == "--compare" else ["--config", str(bad)]
    done = leadrouter("simulate", "--events", str(write_events(tmp_path, EVENTS)), *args)
    assert done.returncode == 1
    assert done.stdout == ""
    assert str(bad) in done.stderr and "teams.0.reps.0" in done.stderr and "unknown rep 'ghost'" in done.stderr
