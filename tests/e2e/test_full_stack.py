"""The whole service as processes: API, workers and scheduler. Events sent with the official Segment
SDK reach a rep through the local Twilio; the rep claims by a signed SMS reply sent to the API; the
story shows up in `report` and `/metrics`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode

import httpx
import segment.analytics as analytics
from prometheus_client.parser import text_string_to_metric_families

from tests.support.alerting import TOKEN, fast_rules, sms_to
from tests.support.stack import ROOT, free_port, wait_until


def test_segment_sdk_to_sms_alert_to_signed_reply_to_report(alert_env, processes, providers):
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    alert_env.update({"LEADROUTER_PUBLIC_URL": public, "LEADROUTER_WRITE_KEYS": "web:wk-web"})
    # a 60 s SLA: the claim below counts as within it however slow the machine
    fast_rules(Path(alert_env["LEADROUTER_CONFIG"]), retries=["30s", "60s"], first_contact_sla="60s")
    processes.env.update(alert_env)
    processes.celery_worker(queues="events", concurrency=1, name="events")
    processes.celery_worker(queues="fast,alerts", concurrency=2, name="alerts")
    processes.leadrouter("beat", name="beat")
    processes.leadrouter("api", "--host", "127.0.0.1", "--port", str(port), name="api")

    def healthy() -> bool:
        try:
            return httpx.get(f"{public}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, timeout=30, message="the API")
    client = analytics.Client("wk-web", host=public, sync_mode=True)
    client.identify("sdk-1", {"name": "Jane Doe", "email": "jane@acme.com", "title": "CTO",
                              "phone": "+14155550100", "role": "decision_maker",
                              "company": {"name": "Acme", "industry": "software", "employee_count": 900},
                              "address": {"country": "US"}}, message_id="sdk-1-a")
    client.track("sdk-1", "Pricing Page Viewed", message_id="sdk-1-b")
    client.track("sdk-1", "Demo Requested", {"page": "/demo"}, message_id="sdk-1-c")
    first = providers.wait_for(lambda s: sms_to(s, "+14155550102"), timeout=20)[0]
    assert "Jane Doe" in first["Body"] and "Reply 1 to claim, 2 to pass" in first["Body"]

    from twilio.request_validator import RequestValidator

    params = {"MessageSid": "SM" + "7" * 32, "From": "+14155550102", "To": "+15005550006", "Body": "YES",
              "AccountSid": "AC" + "0" * 32}
    signature = RequestValidator(TOKEN).compute_signature(f"{public}/webhooks/twilio/sms", params)
    reply = httpx.post(f"{public}/webhooks/twilio/sms", content=urlencode(params),
                       headers={"X-Twilio-Signature": signature,
                                "Content-Type": "application/x-www-form-urlencoded"})
    assert reply.status_code == 200 and "Claimed" in reply.text
    forged = httpx.post(f"{public}/webhooks/twilio/sms", content=urlencode({**params, "MessageSid": "SMx"}),
                        headers={"X-Twilio-Signature": "bad", "Content-Type": "application/x-www-form-urlencoded"})
    assert forged.status_code == 403

    out = subprocess.run([sys.executable, "-m", "worker.entrypoints.cli", "report", "--json"], cwd=ROOT, env=processes.env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    bob = next(r for r in report["reps"] if r["rep"] == "bob")
    assert bob["assigned"] == 1 and bob["claimed"] == 1 and bob["claimed_within_sla"] == 1

    metrics = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{public}/metrics").text)}

    def total(name: str, **labels: str) -> float:
        return sum(s.value for s in metrics[name].samples
                   if s.name.endswith(("_total", "_count")) and all(s.labels.get(k) == v for k, v in labels.items()))

    assert total("leadrouter_events_ingested", ) == 3
    assert total("leadrouter_deliveries", channel="sms", outcome="sent") >= 1
    assert total("leadrouter_speed_to_lead_seconds") == 1
    assert total("leadrouter_time_to_claim_seconds") == 1
    assert providers.violations == []
