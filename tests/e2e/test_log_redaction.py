"""Claim links are bearer credentials: no log of the API carries one, the web server's access log
included, under the documented ``uvicorn worker.entrypoints.api:create_app --factory`` command with uvicorn's
own logging configuration."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import httpx

from tests.support.stack import SECRET_KEY, Processes, free_port, wait_until
from worker.adapters.tokens import ClaimToken, sign


def test_the_access_log_under_uvicorn_factory_carries_no_claim_token(service_env, processes: Processes):
    port = free_port()
    processes.start(sys.executable, "-m", "uvicorn", "worker.entrypoints.api:create_app", "--factory", "--host", "127.0.0.1",
                    "--port", str(port), name="uvicorn")
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=5).status_code in (200, 503)
        except httpx.TransportError:
            return False

    wait_until(up, timeout=30, message="uvicorn to serve the app")
    token = sign(SECRET_KEY, ClaimToken("bob", "u-logged", 7, int((datetime.now(UTC) + timedelta(hours=1))
                                                                 .timestamp())))
    assert httpx.get(f"{url}/claim/{token}", timeout=10).status_code == 403        # no such lead
    assert httpx.post(f"{url}/claim/{token}?x=1", data={"action": "claim"}, timeout=10).status_code in (403, 409)
    wait_until(lambda: processes.logs().count("/claim/[redacted]") >= 2, timeout=10,
               message="both requests in the access log")
    logs = processes.logs()
    assert token not in logs and token.split(".")[0] not in logs and token.split(".")[1] not in logs
    assert '"GET /claim/[redacted] HTTP/1.1" 403' in logs and "GET /healthz HTTP/1.1" in logs
