"""Every route of the served OpenAPI document, fuzzed by schemathesis against the app in this process:
never a server error, and the status, content type and body the document promises."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.fuzz import KEYS, Api, basic
from tests.support.strategies import FUZZ
from worker.adapters.settings import reset_settings

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


class ServedApp:
    """Forwards to the app of the running test; at collection, to a fresh app serving the document."""

    def __init__(self) -> None:
        self.current: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await (self.current or _document_app())(scope, receive, send)


def _document_app() -> Any:
    """An app for reading the document at collection, under settings it accepts to start with (a
    strong key, the shipped rules), which are forgotten again afterwards."""
    import os

    from tests.support.stack import CONFIG as RULES
    from tests.support.stack import SECRET_KEY
    from worker.entrypoints.api import create_app

    saved = {k: os.environ.get(k) for k in ("LEADROUTER_SECRET_KEY", "LEADROUTER_CONFIG")}
    os.environ.update({"LEADROUTER_SECRET_KEY": SECRET_KEY, "LEADROUTER_CONFIG": str(RULES)})
    reset_settings()
    try:
        return create_app()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reset_settings()


SERVED = ServedApp()
# Schemathesis' coverage phase enumerates hundreds of boundary cases per route; the random fuzzing phase with
# a modest example count keeps the run short, and the hand-written fuzz tests cover the ingest boundaries.
CONFIG = schemathesis.Config.from_dict({"phases": {"coverage": {"enabled": False}}})
schema = schemathesis.openapi.from_asgi("/openapi.json", SERVED, config=CONFIG)
reset_settings()          # the document needs no settings; none read while serving it are kept


@pytest.fixture(autouse=True)
def _serve(api: Api) -> Iterator[None]:
    SERVED.current = api.app
    yield
    SERVED.current = None


@schema.parametrize()
@settings(FUZZ, max_examples=6)
def test_every_route_answers_as_documented_and_never_with_a_server_error(case: Any) -> None:
    # Ingestion is fuzzed as a known source, so bodies get past the write key to the event checks;
    # unknown keys are fuzzed in test_http_ingest_fuzz.
    headers = {"Authorization": basic(KEYS["web"])} if case.path.startswith("/v1/") else None
    response = case.call(headers=headers)
    case.validate_response(response, checks=CHECKS)
    if response.status_code != 200 and case.path.startswith("/v1/"):
        assert response.json()["success"] is False
