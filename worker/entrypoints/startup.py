"""What ``api``, ``worker`` and ``beat`` check before they serve anything.

A service that starts with a guessable secret hands out forgeable claim links;
one that starts with rules it cannot load answers every request with a 500.
Both are refused here, at start, with the reason and exit status 1.
``leadrouter dev`` gives its children a random secret of its own, so a local
run needs no setting.
"""

from __future__ import annotations

import sys
from pathlib import Path

from routing.config import RulesError, load_rules
from worker.adapters.settings import MIN_SECRET_BYTES, secret_problem


class StartupRefused(Exception):
    """Why a long-running process will not start; printed as it is, exit 1."""


def rules_problems(path: Path) -> list[str]:
    """Every error of the rules file, ``path:line: key: message``; empty when it loads."""
    try:
        load_rules(path)
    except RulesError as exc:
        return [f"{path}:{e.line or '?'}: {e.path or '(top)'}: {e.message}" for e in exc.errors]
    return []


def check(role: str) -> None:
    """Raise :class:`StartupRefused` when ``role`` (api, worker, beat) must not start."""
    from worker.adapters.settings import get_settings

    try:
        settings = get_settings()
    except ValueError as exc:   # pydantic's ValidationError: already free of secret values (see settings)
        raise StartupRefused(f"leadrouter {role}: refusing to start: invalid settings\n  {exc}") from None
    problems: list[str] = []
    secret = secret_problem(settings.secret_key)
    if secret is not None:
        problems.append(f"{secret}: set it to a random value of at least {MIN_SECRET_BYTES} bytes, e.g. "
                        "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`; it signs claim links "
                        "and outbound webhooks")
    errors = rules_problems(settings.config_path)
    if errors:
        problems.append(f"the rules file {settings.config_path} does not load ({len(errors)} error(s)); "
                        "`leadrouter check-config` lists them:\n" + "\n".join(f"    {e}" for e in errors))
    if problems:
        raise StartupRefused(f"leadrouter {role}: refusing to start:\n" + "\n".join(f"  {p}" for p in problems))


def check_or_exit(role: str) -> None:
    """:func:`check`, and on a refusal print it to stderr and exit 1."""
    try:
        check(role)
    except StartupRefused as exc:
        print(str(exc), file=sys.stderr, flush=True)
        raise SystemExit(1) from None
