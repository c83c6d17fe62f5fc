"""Every case in ../shared/acceptance/scoring passes through `leadrouter simulate --json`."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.stack import ACCEPTANCE
from worker.entrypoints.cli import main

CASES = sorted((ACCEPTANCE / "scoring").glob("*.jsonl"))


def _instant(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_acceptance_cases_exist() -> None:
    assert len(CASES) >= 5, f"acceptance cases not found under {ACCEPTANCE}"


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_simulate_matches_expected(case: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--events", str(case), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    leads = {lead["lead_id"]: lead for lead in out["leads"]}
    expected = json.loads(case.with_suffix("").with_suffix(".expected.json").read_text())
    for lead_id, want in expected.items():
        got = leads[lead_id]
        for key in ("score", "behavior", "fit"):
            assert float(got[key]) == pytest.approx(float(want[key])), (lead_id, key)
        assert got["tier"] == want["tier"]
        assert _instant(got["hot_at"]) == _instant(want["hot_at"])
        assert _instant(got["red_hot_at"]) == _instant(want["red_hot_at"])
