"""A public (browser) write key is readable by anyone: what its events may and may not do to a lead."""

from __future__ import annotations

from tests.support.alerting import fast_rules, hot_lead
from tests.support.pipeline import Pipeline
from tests.support.stack import wait_until
from worker.adapters import db

TRUSTED = {"email": "jane@acme.com", "phone": "+14155550100", "title": "VP Engineering",
           "company": {"name": "Acme", "industry": "software"}}


def test_a_public_source_adds_to_a_lead_but_cannot_overwrite_what_a_trusted_one_set(pipeline: Pipeline) -> None:
    pipeline.worker(LEADROUTER_PUBLIC_WRITE_KEYS="web:pk_browser", LEADROUTER_WRITE_KEYS="crm:sk_server")
    pipeline.publish([{"type": "identify", "messageId": "t-1", "userId": "u-trust", "traits": TRUSTED,
                       "timestamp": "2026-11-02T10:00:00Z"}], source="crm")
    pipeline.wait_events(1)
    pipeline.publish([{"type": "identify", "messageId": "p-1", "userId": "u-trust", "timestamp": "2026-11-02T11:00:00Z",
                       "traits": {"email": "attacker@evil.example", "phone": "+19995550000", "title": "Intern",
                                  "company": {"name": "Evil", "employee_count": 300}, "nickname": "JD"}}],
                     source="web")
    pipeline.wait_events(2)
    lead = pipeline.lead("u-trust")
    assert lead is not None
    assert lead.traits == {**TRUSTED, "company": {"name": "Acme", "industry": "software", "employee_count": 300},
                           "nickname": "JD"}
    [stored] = pipeline.rows(db.Event, db.Event.message_id == "p-1")
    assert stored.traits == {"company": {"employee_count": 300}, "nickname": "JD"}   # what it could say


def test_a_public_source_may_give_a_new_lead_its_email_but_not_change_it(pipeline: Pipeline) -> None:
    pipeline.worker(LEADROUTER_PUBLIC_WRITE_KEYS="web:pk_browser")
    pipeline.publish([{"type": "identify", "messageId": "w-1", "userId": "u-form", "traits": {"email": "li@acme.io"},
                       "timestamp": "2026-11-02T10:00:00Z"}], source="web")
    pipeline.publish([{"type": "identify", "messageId": "w-2", "userId": "u-form",
                       "traits": {"email": "someone@else.example"}, "timestamp": "2026-11-02T10:05:00Z"}],
                     source="web")
    pipeline.wait_events(2)
    lead = pipeline.lead("u-form")
    assert lead is not None and lead.traits == {"email": "li@acme.io"}


def test_a_public_source_cannot_stop_a_cadence_with_lead_contacted(pipeline: Pipeline) -> None:
    fast_rules(pipeline.config, retries=["10m"], first_contact_sla="10m")
    pipeline.processes.env.update({"LEADROUTER_PUBLIC_WRITE_KEYS": "web:pk_browser"})
    pipeline.processes.celery_worker(queues="events,fast,alerts", concurrency=2)
    pipeline.publish(hot_lead("u-hot"))
    wait_until(lambda: pipeline.count(db.AlertStep, db.AlertStep.lead_id == "u-hot",
                                      db.AlertStep.status == "pending") > 0, timeout=30, message="the cadence")
    pipeline.publish([{"type": "track", "messageId": "forged", "userId": "u-hot", "event": "Lead Contacted"}],
                     source="web")
    wait_until(lambda: pipeline.drained() and pipeline.count(db.DeadLetter) == 1, timeout=30,
               message="the forged contact refused")
    [refused] = pipeline.rows(db.DeadLetter)
    assert refused.message_id == "forged" and refused.error == "a public source may not send Lead Contacted"
    lead = pipeline.lead("u-hot")
    assert lead is not None and lead.contacted_at is None
    assert pipeline.count(db.AlertStep, db.AlertStep.lead_id == "u-hot", db.AlertStep.status == "cancelled") == 0
    # the same event from a trusted source (the CRM) does stop it
    pipeline.publish([{"type": "track", "messageId": "real", "userId": "u-hot", "event": "Lead Contacted"}])
    wait_until(lambda: pipeline.count(db.AlertStep, db.AlertStep.lead_id == "u-hot",
                                      db.AlertStep.status == "pending") == 0, timeout=30,
               message="the cadence stopped by the trusted contact")


def test_the_campaign_a_lead_came_from_counts_live_as_in_simulate(pipeline: Pipeline) -> None:
    from ruamel.yaml import YAML

    yaml = YAML()
    doc = yaml.load(pipeline.config.read_text())
    doc["scoring"]["fit"].append({"name": "paid search", "trait": "context.campaign.source", "in": ["google"],
                                  "points": 15})
    with pipeline.config.open("w") as fh:
        yaml.dump(doc, fh)
    pipeline.worker()
    pipeline.publish([{"type": "page", "messageId": "c-1", "userId": "u-ads",
                       "properties": {"path": "/pricing"}, "context": {"campaign": {"source": "google"}}}])
    pipeline.wait_events(1)
    # a later event, in a batch of its own: the stored history is read back with the campaign in it
    pipeline.publish([{"type": "track", "messageId": "c-2", "userId": "u-ads", "event": "Email Clicked"}])
    pipeline.wait_events(2)
    lead = pipeline.lead("u-ads")
    assert lead is not None and lead.fit == 15 and lead.score == 30
    assert lead.traits["context"]["campaign"] == {"source": "google"}
