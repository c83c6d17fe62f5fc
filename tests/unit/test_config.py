"""check-config: every problem in a rules file at once, each with its key path and line (SPEC §6)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from routing.config import Rules, RulesError, parse_rules
from tests.support.stack import ROOT

# line numbers matter below: each problem is on the line its comment names
BROKEN = """\
reps:
  - id: alice
    timezone: Mars/Olympus          # 3: bad time zone
    hours: Mon-Fri 08:00-25:00      # 4: impossible hour
    weight: 0                       # 5: zero weight
    manager: zed                    # 6: unknown manager
  - id: bob
    weight: -2                      # 8: negative weight
    hours: Mon-Fri 09:00-09:00      # 9: empty range
  - id: carol
    hours: Mon-Fry 09:00-17:00      # 11: unknown day
teams:
  - id: na
    reps: [alice, ghost]            # 14: unknown rep in a team
accounts:
  acme.com: nobody                  # 16: unknown account owner
routing:
  on_call: phantom                  # 18: unknown on-call rep
"""

EXPECTED = [
    (3, "reps.0.timezone", "unknown time zone 'Mars/Olympus'"),
    (4, "reps.0.hours", "impossible time '25:00'"),
    (5, "reps.0.weight", "greater than 0"),
    (6, "reps.0.manager", "unknown rep 'zed'"),
    (8, "reps.1.weight", "greater than 0"),
    (9, "reps.1.hours", "empty time range 09:00-09:00"),
    (11, "reps.2.hours", "unknown day 'Fry'"),
    (14, "teams.0.reps.1", "unknown rep 'ghost'"),
    (16, "accounts.acme.com", "unknown rep 'nobody'"),
    (18, "routing.on_call", "unknown rep 'phantom'"),
]


def errors_of(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(RulesError) as caught:
        parse_rules(text)
    return [(e.line, e.path, e.message) for e in caught.value.errors]


def test_every_error_in_a_broken_file_is_listed_with_its_line() -> None:
    got = errors_of(BROKEN)
    assert len(got) == len(EXPECTED), got
    for (line, path, message), (want_line, want_path, want_message) in zip(got, EXPECTED, strict=True):
        assert (line, path) == (want_line, want_path)
        assert want_message in message


def test_unknown_reps_are_reported_when_the_rest_is_valid_too() -> None:
    text = "reps:\n  - id: alice\nteams:\n  - id: default\n    reps: [alice, ghost]\nrouting:\n  on_call: zed\n"
    assert errors_of(text) == [(5, "teams.0.reps.1", "unknown rep 'ghost'"),
                               (7, "routing.on_call", "unknown rep 'zed'")]


def test_duplicate_ids_are_reported_beside_field_errors() -> None:
    text = ("reps:\n  - id: alice\n  - id: alice\n    timezone: Nowhere/City\n"
            "teams:\n  - id: t\n    reps: [alice]\n  - id: t\n    reps: [alice]\n")
    got = {(path, message.split(" (")[0]) for _, path, message in errors_of(text)}
    assert got == {("reps.1.id", "duplicate rep id 'alice'"), ("reps.1.timezone", "unknown time zone 'Nowhere/City'"),
                   ("teams.1.id", "duplicate team id 't'")}


def test_reference_checks_survive_a_malformed_reps_block() -> None:
    # reps is not a list: that is the error; no crash, and no flood of "unknown rep" noise
    got = errors_of("reps: {id: alice}\nteams:\n  - id: default\n    reps: [alice]\n")
    assert [path for _, path, _ in got] == ["reps"]


def test_building_rules_in_code_still_refuses_unknown_reps() -> None:
    with pytest.raises(ValidationError, match="teams.0.reps.0: unknown rep 'ghost'"):
        Rules.model_validate({"teams": [{"id": "default", "reps": ["ghost"]}]})


@pytest.mark.parametrize(("hours", "message"), [
    ("Mon-Fri 24:00-08:00", "cannot start at 24:00"),
    ("Mon-Fri 08:60-17:00", "impossible time '08:60'"),
    ("Mon-Fri 8-17", "cannot read working hours"),
    ("Mon-Fri 08:00-17:00,", "empty range"),
])
def test_impossible_hour_ranges_name_the_line(hours: str, message: str) -> None:
    [(line, path, got)] = errors_of(f"reps:\n  - id: alice\n    hours: '{hours}'\n")
    assert (line, path) == (3, "reps.0.hours")
    assert message in got


def test_check_config_lists_every_error_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    done = subprocess.run([sys.executable, "-m", "worker.entrypoints.cli", "check-config", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stdout == ""
    assert f"{path}: {len(EXPECTED)} error(s)" in done.stderr
    for line, key, message in EXPECTED:
        assert any(f"{path}:{line}: {key}: " in row and message in row for row in done.stderr.splitlines()), key


def test_check_config_accepts_the_shipped_rules() -> None:
    done = subprocess.run([sys.executable, "-m", "worker.entrypoints.cli", "check-config", "config/routing.yaml"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "18 events, 4 fit rules" in done.stdout
