"""Alert texts (SPEC §5): every kind, the SMS rules, and what an attacker's trait values can and cannot do."""

from __future__ import annotations

import re
import string
import unicodedata
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.messages import (
    CLAIMABLE,
    CODE_ALPHABET,
    KINDS,
    REPLY,
    LeadView,
    clean_trait,
    is_gsm7,
    render_alert,
    render_summary,
    short_code,
    sms_length,
    to_gsm7,
)
from routing.scoring import Breakdown, EventPoints

T0 = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)
URL = "https://leads.example.com/claim/eyJib2IiLCJsZWFkLTEyMyIsNDIsMTc5MDAwMDAwMF0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
TRAITS = {
    "name": "Jane Doe", "title": "VP Sales", "email": "jane@acme.com", "phone": "+1 415 555 0100",
    "company": {"name": "Acme Corp", "industry": "software", "employee_count": 1200, "domain": "acme.com"},
    "role": "decision_maker", "budget_confirmed": True, "timeline_days": 14,
}
BREAKDOWN = Breakdown(
    at=T0, behavior=55, fit=45, tier="hot", hot=True, red_hot=False,
    events=(EventPoints("Demo Requested", 1, 1, 25), EventPoints("Pricing Downloaded", 1, 1, 20),
            EventPoints("Page Viewed", 3, 3, 3), EventPoints("Pricing Page Viewed", 1, 1, 10),
            EventPoints("Careers Page Viewed", 1, 1, -5)),
    fit_rules=(("industry match", 10), ("company size", 10), ("geography", 5), ("role", 20)),
    qualification=(("budget_confirmed is true", True), ("timeline_days ≤ 30", True)),
).to_dict()
TIMELINE = ((T0 - timedelta(minutes=30), "Page Viewed", 1.0), (T0 - timedelta(minutes=10), "Pricing Downloaded", 20.0),
            (T0, "Demo Requested", 25.0))
KIND_WORDS = {  # how each kind announces itself, in the SMS and in the subject
    "first": ("New hot lead", "New hot lead"),
    "retry": ("Reminder 4", "Reminder 4"),
    "escalation": ("Escalation", "Escalation"),
    "reassign": ("Reassigned to you", "Reassigned to you"),
    "fyi": ("FYI", "FYI"),
    "priority": ("RED-HOT", "RED-HOT"),
    "unrouted": ("UNROUTED", "Unrouted"),
}
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")
# an independent, simpler test for anything a phone or mail client could turn into a link
LINKISH = re.compile(r"://|www\.|[A-Za-z0-9-]+\.[A-Za-z]{2,}", re.IGNORECASE)


def lead(traits=None, *, lead_id="lead-123", score=100.0, tier="hot", breakdown=None, timeline=TIMELINE,
         qualification=()) -> LeadView:
    return LeadView(lead_id=lead_id, traits=TRAITS if traits is None else traits, score=score, tier=tier,
                    breakdown=BREAKDOWN if breakdown is None else breakdown, timeline=timeline,
                    qualification=qualification)


def alert(kind, view=None, **kw):
    args = {"rep_name": "Bob Smith", "claim_url": URL, "retry": 4, "owner_name": "Alice Jones",
            "reasons": ["no team matched the lead"]} | kw
    return render_alert(kind, view or lead(), **args)


# ---------------------------------------------------------------- every kind


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_reads_as_what_it_is_in_sms_and_subject(kind):
    a = alert(kind)
    sms_word, subject_word = KIND_WORDS[kind]
    assert sms_word in a.sms
    assert subject_word in a.subject
    others = {k: w for k, w in KIND_WORDS.items() if k != kind}
    assert not any(w[0] in a.sms for w in others.values())   # and not as another kind


@pytest.mark.parametrize("kind", sorted(CLAIMABLE))
def test_claimable_kinds_carry_the_reply_line_link_and_code(kind):
    a = alert(kind)
    assert REPLY in a.sms
    assert URL in a.sms
    assert short_code("lead-123") in a.sms
    assert f'href="{URL}"' in a.html and "Claim this lead" in a.html
    assert URL in a.text


@pytest.mark.parametrize("kind", ["fyi", "unrouted"])
def test_fyi_and_unrouted_ask_for_no_claim(kind):
    a = alert(kind)
    for part in (a.sms, a.text, a.html):
        assert REPLY not in part
        assert URL not in part
    assert "Claim this lead" not in a.html
    assert short_code("lead-123") in a.sms   # the lead is still named by its code


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_sms_names_the_lead_score_signals_and_phone(kind):
    sms = alert(kind).sms
    for fact in ("Jane Doe", "VP Sales", "Acme Corp", "Score 100", "(hot)", "+1 415 555 0100"):
        assert fact in sms
    assert is_gsm7(sms) and sms_length(sms) <= 306


def test_top_signals_are_the_highest_points_first_and_never_negative():
    sms = alert("fyi").sms   # no link: room for every signal
    top = sms[sms.index("Top: "):].splitlines()[0]
    assert top == "Top: Demo Requested +25, Pricing Downloaded +20, Pricing Page Viewed +10"
    assert "Careers" not in sms


def test_retry_and_escalation_say_which_reminder_and_whose_lead():
    assert "Reminder 4" in alert("retry", retry=4).sms
    assert "Reminder 4" in alert("retry", retry=4).subject
    esc = alert("escalation", retry=3, owner_name="Alice Jones")
    assert "Alice Jones has not claimed after 3 reminders" in esc.sms
    assert "not claimed by Alice Jones after 3 reminders" in esc.subject
    assert "Alice Jones has not claimed this hot lead after 3 reminders" in esc.text


def test_reassign_says_the_previous_rep_did_not_claim():
    a = alert("reassign")
    assert "previous rep did not claim" in a.sms
    assert "previous rep did not claim" in a.text


def test_unrouted_says_why_nobody_could_take_it():
    a = alert("unrouted", reasons=["no team matched the lead", "on-call rep at capacity 10/10"])
    assert "Why: no team matched the lead; on-call rep at capacity 10/10" in a.sms
    assert "- on-call rep at capacity 10/10" in a.text
    assert "<li>on-call rep at capacity 10/10</li>" in a.html


def test_priority_lists_the_qualification_met_gsm_safe():
    view = lead(tier="red_hot", qualification=["budget confirmed", "timeline_days ≤ 30"])
    a = alert("priority", view)
    assert "Qualified: budget confirmed, timeline_days <= 30" in a.sms   # ≤ is not GSM-7
    assert "budget confirmed, timeline_days ≤ 30" in a.subject
    assert "- budget confirmed" in a.text and "<li>timeline_days ≤ 30</li>" in a.html


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown alert kind"):
        alert("hello")


# ---------------------------------------------------------------- SMS length and shortening


def test_long_values_give_way_signals_first_never_the_instructions():
    long_url = URL + "x" * 40
    view = lead({**TRAITS, "company": {"name": "Acme " * 30}, "title": "Senior Vice President " * 5})
    sms = alert("first", view, claim_url=long_url).sms
    assert sms_length(sms) <= 306
    assert REPLY in sms and long_url in sms and short_code("lead-123") in sms
    assert "Top:" not in sms                       # the signals went first
    assert "Jane Doe" in sms and "Acme" in sms     # the lead is still named, shortened
    assert "..." in sms


def test_signals_shrink_before_the_lead_is_renamed():
    sms = alert("first", claim_url=URL + "x" * 20).sms
    assert "Jane Doe, VP Sales at Acme Corp" in sms
    assert sms.count("+") < 1 + 3   # fewer than three signals beside the phone's +


def test_a_link_too_long_for_any_sms_still_leaves_the_reply_line():
    sms = alert("escalation", claim_url="https://leads.example.com/claim/" + "a" * 400).sms
    assert sms_length(sms) <= 306 and is_gsm7(sms)
    assert REPLY in sms and short_code("lead-123") in sms
    assert "Claim link: see email" in sms


def test_a_claim_url_that_is_not_gsm7_is_refused():
    with pytest.raises(ValueError, match="GSM-7"):
        alert("first", claim_url="https://leads.example.com/claim/☃")


def test_missing_phone_and_name_are_said_plainly():
    sms = alert("first", lead({"company": {"name": "Acme"}})).sms
    assert "No phone on file" in sms and "(no name)" in sms
    assert "Jane Doe" in alert("first", lead({"first_name": "Jane", "last_name": "Doe"})).sms


# ---------------------------------------------------------------- attacker-controlled traits

anything = st.one_of(st.text(max_size=400), st.integers(), st.floats(), st.booleans(), st.none())
traits_st = st.fixed_dictionaries({
    "name": anything, "title": anything, "phone": anything, "email": anything, "preferred_contact": anything,
    "first_name": anything,
    "company": st.one_of(st.text(max_size=200), st.fixed_dictionaries({"name": anything, "industry": anything})),
})
breakdown_st = st.fixed_dictionaries({
    "events": st.dictionaries(st.text(max_size=80), st.fixed_dictionaries({
        "occurrences": st.integers(0, 9), "counted": st.integers(0, 9),
        "points": st.floats(-50, 50, allow_nan=False)}), max_size=6),
    "fit_rules": st.dictionaries(st.text(max_size=40), st.floats(-20, 20, allow_nan=False), max_size=4),
})
token_st = st.text(alphabet=string.ascii_letters + string.digits + "-_.", min_size=10, max_size=110)
leads_st = st.builds(
    lead, traits_st, lead_id=st.text(min_size=1, max_size=60), score=st.floats(-100, 10_000),
    tier=st.sampled_from(["cold", "warm", "hot", "red_hot"]), breakdown=breakdown_st, timeline=st.just(()),
    qualification=st.lists(st.text(max_size=60), max_size=3),
)


@settings(max_examples=150, deadline=None)
@given(view=leads_st, kind=st.sampled_from(sorted(CLAIMABLE)), token=token_st, retry=st.integers(0, 20),
       owner=st.one_of(st.none(), st.text(max_size=80)))
def test_claimable_sms_is_gsm7_fits_and_keeps_the_instructions(view, kind, token, retry, owner):
    url = "https://leads.example.com/claim/" + token
    sms = render_alert(kind, view, rep_name="Bob", claim_url=url, retry=retry, owner_name=owner).sms
    assert is_gsm7(sms)
    assert sms_length(sms) <= 306
    assert REPLY in sms and url in sms and f"(code {short_code(view.lead_id)})" in sms


@settings(max_examples=150, deadline=None)
@given(view=leads_st, kind=st.sampled_from(sorted(KINDS)), reasons=st.lists(st.text(max_size=100), max_size=3),
       owner=st.one_of(st.none(), st.text(max_size=80)))
def test_no_sms_carries_a_link_or_control_character_from_traits(view, kind, reasons, owner):
    sms = render_alert(kind, view, rep_name="Bob", claim_url=URL, owner_name=owner, reasons=reasons).sms
    assert is_gsm7(sms) and sms_length(sms) <= 306
    rest = sms.replace(URL, "")
    assert not LINKISH.search(rest), rest
    assert not CONTROL.search(rest.replace("\n", " "))


@settings(max_examples=100, deadline=None)
@given(view=leads_st, kind=st.sampled_from(sorted(KINDS)))
def test_email_escapes_every_trait_value(view, kind):
    a = render_alert(kind, view, rep_name="<b>Bob</b>", claim_url=URL, reasons=["<i>x</i>"])
    assert "<script" not in a.html.lower() and "<img" not in a.html.lower()
    assert "<b>" not in a.html and "<i>" not in a.html
    assert not CONTROL.search(a.subject)


@pytest.mark.parametrize("link", [
    "http://evil.com/x", "https://evil.com", "HTTPS://EVIL.COM/A?B=C", "www.evil.com", "evil.com/x", "evil.com",
    "sub.evil.co.uk:8080/p?q=1", "javascript:alert(1)", "data:text/html;base64,AAAA", "10.0.0.1/login",
    "evil\u200b.com", "ｅｖｉｌ．ｃｏｍ", "evil。com/x", "ftp://files.evil.org", "//evil.com/x",
])
def test_clean_trait_removes_urls(link):
    cleaned = clean_trait(f"Call me {link} today")
    assert cleaned == "Call me today"


def test_urls_are_removed_from_sms_and_email_alike():
    view = lead({**TRAITS, "name": "Jane http://evil.com/phish Doe", "title": "see evil.com/x",
                 "company": {"name": "www.evil.com Acme"}})
    a = alert("first", view)
    for part in (a.sms.replace(URL, ""), a.subject, a.text.replace(URL, ""), a.html.replace(URL, "")):
        assert "evil" not in part
    assert "Jane Doe" in a.sms and "Acme" in a.subject


def test_clean_trait_removes_control_characters_and_collapses_whitespace():
    raw = "Jane\x00 \x1b[31mDoe\r\n\tVP\u202e\u200bSales\x7f  "
    cleaned = clean_trait(raw)
    assert not CONTROL.search(cleaned)
    assert cleaned == "Jane [31mDoe VPSales"


def test_clean_trait_shortens_with_an_ellipsis():
    assert clean_trait("a" * 100, 10) == "aaaaaaa..."
    assert clean_trait("short", 10) == "short"
    assert clean_trait(None) == "" and clean_trait(42) == "42"


@given(value=anything, limit=st.integers(0, 80))
def test_clean_trait_output_is_bounded_and_safe(value, limit):
    cleaned = clean_trait(value, limit)
    assert len(cleaned) <= limit
    assert not LINKISH.search(cleaned)
    assert all(unicodedata.category(c)[0] != "C" for c in cleaned)
    assert cleaned == cleaned.strip() and "  " not in cleaned


def test_html_escapes_a_script_in_any_trait():
    evil = "<script>alert(1)</script>"
    view = lead({**TRAITS, "name": evil, "title": evil, "company": {"name": evil, "industry": evil},
                 "preferred_contact": evil},
                breakdown={**BREAKDOWN, "events": {evil: {"occurrences": 1, "counted": 1, "points": 30}}},
                timeline=((T0, evil, 30.0),))
    a = alert("first", view)
    assert "<script" not in a.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in a.html
    assert "src=" not in a.html and "<img" not in a.html   # no external images or scripts at all


def test_claim_button_is_a_link_with_its_url_escaped():
    url = "https://leads.example.com/claim/abc?x=1&y=2"
    a = alert("first", claim_url=url)
    assert re.search(r'<a href="https://leads\.example\.com/claim/abc\?x=1&amp;y=2" style="[^"]*display:inline-block',
                     a.html)


def test_fyi_email_has_no_claim_button_even_with_a_link():
    assert "<a " not in alert("fyi", claim_url=URL).html


# ---------------------------------------------------------------- the hand-off package


def test_email_carries_timeline_breakdown_qualification_and_contact():
    a = alert("priority", lead(tier="red_hot", qualification=["budget_confirmed is true", "timeline_days ≤ 30"]))
    text = a.text
    assert text.index("Page Viewed  +1") < text.index("Pricing Downloaded  +20") < text.index("Demo Requested  +25")
    assert "2026-11-02 15:00 UTC  Demo Requested  +25" in text
    assert "Behavior: 55" in text and "Fit: 45" in text
    assert "industry match: +10" in text and "role: +20" in text and "Careers Page Viewed: -5" in text
    assert "Page Viewed (x3, 3 counted): +3" in text
    assert "- budget_confirmed is true" in text
    assert "Preferred contact: phone (+1 415 555 0100)" in text
    assert "<td style=\"padding:4px 12px 4px 0;vertical-align:top\">industry match</td>" in a.html
    assert "Qualification criteria met" in a.html and "Engagement timeline" in a.html


def test_next_actions_follow_the_signals():
    text = alert("first").text
    actions = text[text.index("Recommended next actions:"):text.index("Preferred contact")]
    assert actions.index("Call now and book the demo") < actions.index("Lead with pricing/ROI")
    plain = alert("first", lead(breakdown={"events": {"Blog Post Viewed": {"occurrences": 1, "points": 2}}})).text
    assert "Call now and book the demo" not in plain
    assert "Call within 5 minutes" in plain


@pytest.mark.parametrize(("traits", "expected"), [
    ({**TRAITS, "preferred_contact": "email"}, "Preferred contact: email (jane@acme.com)"),
    ({**TRAITS, "preferred_contact": "WhatsApp evenings"}, "Preferred contact: WhatsApp evenings"),
    (TRAITS, "Preferred contact: phone (+1 415 555 0100)"),
    ({"email": "jane@acme.com"}, "Preferred contact: email (jane@acme.com)"),
    ({"email": "http://evil.com"}, "Preferred contact: unknown: no phone or email on file"),
])
def test_preferred_contact(traits, expected):
    assert expected in alert("first", lead(traits)).text


def test_naive_timeline_times_are_read_as_utc():
    view = lead(timeline=((datetime(2026, 1, 5, 9, 30), "Demo Requested", 25.0),))
    assert "2026-01-05 09:30 UTC  Demo Requested  +25" in alert("first", view).text


# ---------------------------------------------------------------- codes and GSM-7


def test_short_code_is_stable_across_runs():
    # a fixed value: a process-randomized hash() would break replies sent before a restart
    assert short_code("lead-123") == "CVG"
    assert short_code("lead-123") == short_code("lead-123")


@given(st.text(max_size=100))
def test_short_code_is_three_unambiguous_characters(lead_id):
    code = short_code(lead_id)
    assert len(code) == 3 and set(code) <= set(CODE_ALPHABET)
    assert not set(code) & set("0O1IL")


def test_short_codes_spread_over_leads():
    codes = {short_code(f"lead-{i}") for i in range(1000)}
    assert len(codes) > 950


@pytest.mark.parametrize(("raw", "expected"), [
    ("José Müller", "Jose Muller"),
    ("Ångström Straße", "Angstrom Strasse"),
    ("Æsir Øresund Łódź", "AEsir Oresund Lodz"),
    ("“Quoted” – dash… ‘single’", '"Quoted" - dash... \'single\''),
    ("Hot lead 🔥🚀 now", "Hot lead  now"),
    ("Ｆｕｌｌ ｗｉｄｔｈ", "Full width"),
    ("€5 {x} [y] ~z|^\\", "€5 {x} [y] ~z|^\\"),
    ("timeline ≤ 30", "timeline <= 30"),
    ("Иван 王", " "),
])
def test_to_gsm7_transliterates(raw, expected):
    assert to_gsm7(raw) == expected


@given(st.text())
def test_to_gsm7_always_gives_gsm7_and_is_idempotent(text):
    out = to_gsm7(text)
    assert is_gsm7(out)
    assert to_gsm7(out) == out


def test_is_gsm7_and_sms_length_count_extension_characters_twice():
    assert is_gsm7("Hello @£$¥ é Ñ") and not is_gsm7("emoji 😀") and not is_gsm7("ç")
    assert sms_length("abc") == 3
    assert sms_length("€[]") == 6
    with pytest.raises(ValueError):
        sms_length("😀")


# ---------------------------------------------------------------- the hourly cap's summary


def test_summary_lists_held_leads_with_their_codes():
    views = [lead({**TRAITS, "name": f"Lead {i}"}, lead_id=f"lead-{i}") for i in range(3)]
    s = render_summary("Bob", views, "the last hour")
    assert s.sms.startswith("3 hot lead alerts held back by your hourly cap (the last hour):")
    for v in views:
        assert f"{short_code(v.lead_id)} {v.traits['name']}, Acme Corp 100 hot" in s.sms
        assert v.traits["name"] in s.text and short_code(v.lead_id) in s.html
    assert "3 hot lead alerts" in s.subject


def test_summary_of_many_leads_fits_and_counts_the_rest():
    views = [lead({**TRAITS, "name": "N" * 50}, lead_id=f"lead-{i}") for i in range(40)]
    s = render_summary("Bob", views, "the last hour")
    assert is_gsm7(s.sms) and sms_length(s.sms) <= 306
    shown = sum(short_code(f"lead-{i}") in s.sms for i in range(40))
    assert 0 < shown < 40
    assert f"+{40 - shown} more in email" in s.sms
    assert s.text.count("Code: ") == 40


@settings(max_examples=50, deadline=None)
@given(views=st.lists(leads_st, max_size=8), window=st.text(max_size=60))
def test_summary_sms_is_always_gsm7_and_fits(views, window):
    s = render_summary("<Bob>", views, window)
    assert is_gsm7(s.sms) and sms_length(s.sms) <= 306
    assert "<Bob>" not in s.html and "<script" not in s.html


@pytest.mark.parametrize("name", ["Jane evil😀.com Doe", "Jane evil.c\u0301om Doe", "Jane evil\u2024com Doe"])
def test_transliteration_cannot_join_a_link_back_together(name):
    sms = alert("first", lead({**TRAITS, "name": name})).sms
    assert not LINKISH.search(sms.replace(URL, ""))
    assert "Jane" in sms and "Doe" in sms
