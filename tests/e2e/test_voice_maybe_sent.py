"""A "maybe sent" call (its request went out, Twilio's answer never came) is looked up in Twilio's Calls list:
one Twilio took is settled, never placed twice; one it never took is placed again, once, while its step
stands. The real Twilio SDK against the local stand-in; the alert path called as the workers would."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
from ruamel.yaml import YAML

from tests.support.alerting import deliveries, make_hot, steps_of
from tests.support.voice import BOB, CALLERS
from worker.adapters.runtime import get_runtime


@pytest.fixture
def calls_only(voice_env):
    """The first alert by voice alone, so the stand-in's scripted failure meets the call."""
    path = Path(voice_env["LEADROUTER_CONFIG"])
    yaml = YAML()
    doc = yaml.load(path.read_text())
    doc["alerts"]["channels"]["first"] = ["voice"]
    with path.open("w") as fh:
        yaml.dump(doc, fh)
    from worker.adapters.runtime import reset_runtime

    reset_runtime()
    return voice_env


def _first_call(env, lead: str):
    from worker.services.alerts import fire_steps

    make_hot(lead)
    step = steps_of(env, lead, 0)[0]
    fire_steps(get_runtime(), [step.id])
    return step, {d.channel: d for d in deliveries(env, step.id)}["voice"]


def _later(minutes: float = 2):
    from worker.adapters.db import now_utc

    return now_utc() + timedelta(minutes=minutes)


def _call_posts(providers) -> list:
    return [r for r in providers.requests if r["method"] == "POST" and r["path"].endswith("/Calls.json")]


def test_a_call_twilio_never_took_is_placed_again_once(calls_only, providers, queued):
    from worker.services.alerts import settle_maybe_sent

    providers.fail_next("twilio", [("drop",)])
    step, call = _first_call(calls_only, "v-lost-1")
    assert call.status == "maybe_sent" and call.provider_id is None and len(_call_posts(providers)) == 1
    assert settle_maybe_sent(get_runtime()) == 0                 # too early: its status callback may still come
    assert settle_maybe_sent(get_runtime(), _later()) == 1
    lists = [r for r in providers.requests if r["method"] == "GET" and r["path"].endswith("/Calls.json")]
    assert lists and dict(parse_qsl(lists[0]["query"]))["To"] == BOB
    placed = providers.calls()
    assert len(placed) == 1 and placed[0]["To"] == BOB and placed[0]["From"] in CALLERS
    call = {d.channel: d for d in deliveries(calls_only, step.id)}["voice"]
    assert call.status == "sent" and call.resent_at is not None and call.provider_id == placed[0]["Sid"]
    assert settle_maybe_sent(get_runtime(), _later(3)) == 0        # settled: nothing more to ask or place
    assert len(_call_posts(providers)) == 2 and len(providers.calls()) == 1
    assert providers.violations == []


def test_a_call_twilio_took_whose_answer_was_lost_is_settled_not_placed_again(calls_only, providers, queued):
    from worker.services.alerts import settle_maybe_sent

    providers.fail_next("twilio", [("accept_then_drop",)])
    step, call = _first_call(calls_only, "v-took-1")
    assert call.status == "maybe_sent" and call.provider_id is None
    (taken,) = providers.voice_calls.values()
    assert settle_maybe_sent(get_runtime(), _later()) == 1
    call = {d.channel: d for d in deliveries(calls_only, step.id)}["voice"]
    assert call.status == "sent" and call.provider_id == taken["sid"] and call.resent_at is None
    assert call.settled_by == "lookup"
    assert settle_maybe_sent(get_runtime(), _later(3)) == 0
    assert len(_call_posts(providers)) == 1         # one call to the rep, never a second
    assert providers.violations == []


def test_a_maybe_sent_call_with_its_sid_is_fetched_by_it_and_settled(calls_only, providers, queued):
    from sqlalchemy import update

    from worker.adapters import db as models
    from worker.services.alerts import settle_maybe_sent

    providers.fail_next("twilio", [("accept_then_drop",)])
    step, call = _first_call(calls_only, "v-sid-1")
    (taken,) = providers.voice_calls.values()
    with get_runtime().sessions.begin() as session:   # the CallSid learnt (say from a callback of another status)
        session.execute(update(models.Delivery).where(models.Delivery.id == call.id)
                        .values(provider_id=taken["sid"]))
    assert settle_maybe_sent(get_runtime(), _later()) == 1
    fetched = [r for r in providers.requests if r["method"] == "GET" and taken["sid"] in r["path"]]
    assert fetched, "the call is fetched by its sid"
    assert {d.channel: d for d in deliveries(calls_only, step.id)}["voice"].status == "sent"
    assert len(_call_posts(providers)) == 1
    assert providers.violations == []
