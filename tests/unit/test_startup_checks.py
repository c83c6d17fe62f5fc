"""What ``api``, ``worker`` and ``beat`` check before starting (the processes themselves are driven
in tests/e2e/test_startup_refusals.py)."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tests.support.stack import CONFIG
from worker.adapters.settings import KNOWN_SECRETS, MIN_SECRET_BYTES, secret_problem
from worker.entrypoints.startup import rules_problems


@pytest.mark.parametrize("secret", [None, "", *sorted(KNOWN_SECRETS), " Dev-Insecure-Secret-Change-Me ",
                                    "x" * (MIN_SECRET_BYTES - 1), "é" * 15])
def test_weak_secrets_are_named(secret):
    assert secret_problem(secret) is not None


def test_strong_secrets_pass():
    assert secret_problem(secrets.token_urlsafe(32)) is None
    assert secret_problem("x" * MIN_SECRET_BYTES) is None
    assert secret_problem("é" * 16) is None          # bytes, not characters


def test_the_shipped_rules_load_and_broken_ones_are_listed_by_line(tmp_path: Path):
    assert rules_problems(CONFIG) == []
    broken = tmp_path / "routing.yaml"
    broken.write_text(CONFIG.read_text().replace("on_call: maria", "on_call: nobody-here"))
    (problem,) = rules_problems(broken)
    line = next(n for n, text in enumerate(broken.read_text().splitlines(), 1) if "nobody-here" in text)
    assert problem.startswith(f"{broken}:{line}: routing.on_call: ")
    assert rules_problems(tmp_path / "missing.yaml")[0].startswith(f"{tmp_path / 'missing.yaml'}:?: (top): cannot read")
