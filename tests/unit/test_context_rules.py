"""Where a lead came from (UTM campaign, referrer, page) is readable by fit rules as ``context.*``."""

from __future__ import annotations

from ruamel.yaml import YAML

from routing.config import load_rules
from routing.simulate import simulate
from tests.support.stack import CONFIG


def rules_with_campaign_rule(tmp_path):
    yaml = YAML()
    doc = yaml.load(CONFIG.read_text())
    doc["scoring"]["fit"].append({"name": "paid search", "trait": "context.campaign.source", "in": ["google"],
                                  "points": 15})
    path = tmp_path / "rules.yaml"
    with path.open("w") as fh:
        yaml.dump(doc, fh)
    return load_rules(path)


def test_a_fit_rule_reads_the_campaign_of_a_page_view(tmp_path):
    rules = rules_with_campaign_rule(tmp_path)
    events = [
        {"type": "page", "messageId": "p1", "userId": "u-ads", "timestamp": "2026-11-02T10:00:00Z",
         "properties": {"path": "/pricing"}, "context": {"campaign": {"source": "google", "name": "brand"}}},
        {"type": "page", "messageId": "p2", "userId": "u-organic", "timestamp": "2026-11-02T10:00:00Z",
         "properties": {"path": "/pricing"}, "context": {"campaign": {"source": "newsletter"}}},
    ]
    leads = {r.lead_id: r for r in simulate(events, rules).leads}
    assert leads["u-ads"].fit == 15 and leads["u-ads"].score == 25     # 15 fit + 10 for the pricing page
    assert leads["u-organic"].fit == 0 and leads["u-organic"].score == 10


def test_an_original_timestamp_alone_dates_the_event_in_a_replay(tmp_path):
    rules = load_rules(CONFIG)
    events = [{"type": "track", "messageId": "r1", "userId": "u-rs", "event": "Demo Requested",
               "originalTimestamp": "2026-11-02T10:00:00Z"}]
    [lead] = simulate(events, rules).leads
    assert lead.score == 25
    assert simulate(events, rules).summary["as_of"] == "2026-11-02T10:00:00Z"
