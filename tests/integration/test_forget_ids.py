"""``forget`` erases who a lead was, its id included: a lead's id is often its email, and it was
the key of every row about the lead. Afterwards no table holds it (nor the anonymous id merged
into it, nor the domain it was routed by); the counts stay under a one-way id that only someone
with the services' secret key and the old id can find again."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from tests.support.operator import all_text, cli, cli_json, feed, hot_lead, sessions
from worker.adapters import db

USER = "jane.roe@roe-industries.com"
ANON = "anon-9f3c-roe"


def _mentions(s: Any, needle: str) -> list[tuple[str, str]]:
    # events.message_id is the producer's idempotency key, kept so a replayed event is still
    # recognised; this test's producer happens to build it from the user id
    return [(t, c) for t, c, v in all_text(s) if needle in v and (t, c) != ("events", "message_id")]


def test_forget_replaces_the_lead_id_everywhere_with_a_one_way_id(env):
    feed(hot_lead(USER, email=USER, anon=ANON))
    with sessions()() as s:
        assert {t for t, _ in _mentions(s, USER)} >= {"leads", "events", "hot_episodes", "assignments",
                                                      "alert_steps", "identity_links"}
        assert s.scalar(select(db.Assignment.domain).where(db.Assignment.lead_id == USER)) is not None
        score = s.get(db.Lead, USER).score
    out = cli(env, "forget", USER).stdout
    assert "erased" in out
    with sessions()() as s:
        assert _mentions(s, USER) == [] and _mentions(s, ANON) == [] and _mentions(s, "roe-industries") == []
        from worker.services.operator import forgotten_id

        lead = s.get(db.Lead, forgotten_id(USER))
        assert lead is not None and lead.id.startswith("forgotten:") and lead.score == score
        assert all(row.id.startswith("forgotten:") for row in s.scalars(select(db.Lead)))
        assert all(a.domain is None for a in s.scalars(select(db.Assignment)))
        assert all(e.lead_id.startswith("forgotten:") for e in s.scalars(select(db.Event)))
    data = cli_json(env, "explain", USER)              # the operator who holds the key can still find the counts
    assert data["forgotten_at"] is not None and data["score"] == score
    again = cli(env, "forget", USER)                   # forgetting twice is harmless
    assert again.returncode == 0


def test_forget_refuses_without_the_services_key(env):
    feed(hot_lead("u-keyless"))
    refused = cli({**env, "LEADROUTER_SECRET_KEY": ""}, "forget", "u-keyless", ok=False)
    assert refused.returncode == 1 and "LEADROUTER_SECRET_KEY" in refused.stderr
    with sessions()() as s:
        assert s.get(db.Lead, "u-keyless").forgotten_at is None
