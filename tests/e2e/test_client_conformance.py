"""Real third-party clients, nobody here wrote them, pointed at a running ``leadrouter api``: the npm
packages pinned in ``tests/clients`` (installed by the test setup). Each must deliver its events, also
when its first request meets a 503 and it retries."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.clients import FaultyProxy, node_clients, run_node_client
from tests.e2e.test_ingest_api import KEYS, Api, shared_api  # noqa: F401 (the fixture)

NODE_CLIENTS = ("segment-node", "legacy-node", "rudder-node")


@pytest.fixture
def api(shared_api: Api) -> Api:  # noqa: F811
    shared_api.redis.flushall()
    return shared_api


@pytest.fixture
def proxy(api: Api) -> Iterator[FaultyProxy]:
    p = FaultyProxy(api.url)
    yield p
    p.stop()


@pytest.mark.parametrize("client", NODE_CLIENTS)
def test_node_client_delivers_after_a_503(client: str, api: Api, proxy: FaultyProxy) -> None:
    node_clients()
    proxy.fail = 1
    run_node_client(client, proxy.url, KEYS["crm"], f"{client}-1", "Jane Node")
    posts = proxy.posts()
    assert posts[0].status == 503 and all(p.status == 200 for p in posts[1:]) and len(posts) >= 2, \
        [(p.path, p.status) for p in posts]
    assert all(p.path == "/v1/batch" for p in posts)
    failed = {e["messageId"] for e in posts[0].json()["batch"]}
    delivered = [e for p in posts[1:] for e in p.json()["batch"]]
    assert failed <= {e["messageId"] for e in delivered}                       # the failed request was retried
    assert all(p.headers["authorization"].startswith("Basic ") for p in posts)   # the write key, as Basic user
    queued = api.queued()
    assert sorted(e["payload"]["messageId"] for e in queued) == sorted({e["messageId"] for e in delivered})
    assert len(queued) == 3
    assert {e["source"] for e in queued} == {"crm"}
    assert {e["payload"].get("userId") for e in queued} == {f"{client}-1"}
    assert {e["payload"]["type"] for e in queued} == {"identify", "track"}
    by_event: dict[Any, Any] = {e["payload"].get("event"): e["payload"] for e in queued}
    assert by_event[None]["traits"]["company"]["industry"] == "software"
    if client == "rudder-node":
        # RudderStack says when the event happened in originalTimestamp, never in timestamp
        assert all("originalTimestamp" in e["payload"] and "timestamp" not in e["payload"] for e in queued)
    else:
        assert all("timestamp" in e["payload"] for e in queued)
    assert all(e["payload"].get("sentAt") for e in queued)    # a batch's sentAt travels with each event
