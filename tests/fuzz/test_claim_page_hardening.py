"""The claim page against someone holding a link that is not (or no longer) theirs: it shows and
claims only for the rep the token names, needs the button that was pressed, names nobody else
and carries no link an attacker put in a trait."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.support.fuzz import Api, Open, claim_path, open_lead
from worker.adapters import db


def _lead(api: Api, lead_id: str = "u-page", rep: str = "bob") -> Open:
    from worker.adapters.runtime import get_runtime

    return open_lead(get_runtime().sessions, lead_id, rep=rep)


def test_get_shows_the_lead_only_to_the_rep_the_token_names(api: Api) -> None:
    lead = _lead(api)
    mine = api.client.get(claim_path(lead.token(rep="bob")))
    assert mine.status_code == 200 and "Jane" in mine.text and 'value="claim"' in mine.text
    for who in ("alice", "maria", "nobody"):      # genuine signatures, the wrong rep, no escalation
        page = api.client.get(claim_path(lead.token(rep=who)))
        assert page.status_code == 410, who
        assert "Jane" not in page.text and "Bob" not in page.text and 'value="claim"' not in page.text


def test_a_manager_reached_by_an_escalation_sees_the_page(api: Api) -> None:
    lead = _lead(api, "u-escalated")
    now = datetime.now(UTC)
    with lead.sessions.begin() as s:
        step = db.AlertStep(lead_id=lead.lead_id, assignment_id=lead.assignment_id, step=3, kind="escalation",
                            due_at=now, status="done")
        s.add(step)
        s.flush()
        s.add(db.Delivery(step_id=step.id, lead_id=lead.lead_id, recipient="maria", channel="sms",
                          to="+14155550104", status="sent", created_at=now, updated_at=now))
    page = api.client.get(claim_path(lead.token(rep="maria")))
    assert page.status_code == 200 and 'value="claim"' in page.text


def test_an_empty_post_claims_nothing(api: Api) -> None:
    lead = _lead(api)
    for body in (None, {}, {"action": ""}, {"other": "claim"}):
        r = api.client.post(claim_path(lead.token()), data=body)
        assert r.status_code == 400 and "Claimed" not in r.text, body
    assert lead.claimed() == (None, None)
    done = api.client.post(claim_path(lead.token()), data={"action": "claim"})   # the button still works
    assert done.status_code == 200 and lead.claimed()[1] == "bob"


def test_a_link_that_no_longer_works_shows_neither_the_lead_nor_its_owner(api: Api) -> None:
    lead = _lead(api)
    assert api.client.post(claim_path(lead.token()), data={"action": "claim"}).status_code == 200
    page = api.client.get(claim_path(lead.token()))      # bob's own link, after his claim
    assert page.status_code == 410 and "Jane" not in page.text and 'value="claim"' not in page.text
    other = lead.token(rep="alice")
    for method in ("GET", "POST"):
        r = api.client.request(method, claim_path(other), data={"action": "claim"} if method == "POST" else None)
        assert r.status_code in (409, 410), (method, r.status_code)
        assert "Bob" not in r.text and "bob" not in r.text and "Jane" not in r.text, r.text


def test_a_refused_post_names_no_other_rep(api: Api) -> None:
    lead = _lead(api)
    for action in ("claim", "pass"):
        r = api.client.post(claim_path(lead.token(rep="alice")), data={"action": action})
        assert r.status_code == 409
        assert "Bob" not in r.text and "bob" not in r.text and "owns" not in r.text


def test_links_in_trait_values_are_removed_not_just_escaped(api: Api) -> None:
    lead = _lead(api, "u-links")
    with lead.sessions.begin() as s:
        row = s.get(db.Lead, lead.lead_id)
        row.traits = {"name": "Jane <script>x</script> Click evil.example/login", "title": "CTO https://evil.example",
                      "company": {"name": "Acme www.evil.example"}, "email": "javascript:alert(1)//@x.com",
                      "phone": "+1 415 555 0100"}
    page = api.client.get(claim_path(lead.token()))
    assert page.status_code == 200
    assert "evil" not in page.text and "javascript" not in page.text and "<script>" not in page.text
    assert "Jane" in page.text and "CTO" in page.text and "+1 415 555 0100" in page.text
