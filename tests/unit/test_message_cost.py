"""Rendering an alert looks at a bounded part of each trait value, however large the values a
producer sent (32 KB each is allowed in): the values are cut once, before any cleaning."""

from __future__ import annotations

import unicodedata

import routing.messages as messages
from routing.messages import KINDS, LeadView, clean_trait, render_alert, render_slack, render_summary


def _huge_lead(value: str) -> LeadView:
    traits = {k: value for k in ("name", "title", "phone", "email", "role", "budget_confirmed", "timeline_days")}
    traits["company"] = {"name": value, "industry": value, "employee_count": value}
    return LeadView("u-1", traits, 90, "hot", {"events": {"Demo Requested": {"points": 25, "count": 1}}})


def test_rendering_cleans_a_bounded_amount_of_text_for_32_kb_values(monkeypatch):
    seen = {"chars": 0}
    real = unicodedata.normalize

    def counting(form: str, text: str) -> str:
        seen["chars"] += len(text)
        return real(form, text)

    monkeypatch.setattr(messages.unicodedata, "normalize", counting)
    for value in (("word " * 7000)[:32_000], ("é😀x.y/" * 6000)[:32_000], "a" * 32_000):
        lead = _huge_lead(value)
        for kind in sorted(KINDS):
            seen["chars"] = 0
            out = render_alert(kind, lead, rep_name="Bob", claim_url="https://x.example/claim/abc", retry=3,
                               owner_name=value, reasons=[value])
            # 32 KB per value, 10 values, several SMS layouts tried: millions of characters if cleaned whole
            assert seen["chars"] < 120_000, (kind, seen["chars"])
            assert len(out.sms) <= 400 and value not in out.html
        seen["chars"] = 0
        render_summary("Bob", [lead] * 5, "1h")
        render_slack("lead.hot", lead, rep="Bob")
        assert seen["chars"] < 200_000


def test_clean_trait_looks_at_a_multiple_of_its_limit():
    assert clean_trait("Jane " + "x" * 100_000, 20) == "Jane " + "x" * 12 + "..."
    assert clean_trait("a" * 5000 + " evil.example/login", 60) == "a" * 57 + "..."
    assert "evil" not in clean_trait("Click evil.example/login" + "y" * 10_000, 60)
