"""Driving real third-party tracking clients against a running API: the npm packages pinned in
``tests/clients``, and a proxy that records what each client sends and can fail a request the way
a server having a bad moment does (a 503), so the client's retry is exercised too."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.stack import ROOT

CLIENTS = ROOT / "tests" / "clients"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "te", "trailer", "upgrade"}


def node_clients() -> Path:
    """``tests/clients/node_modules`` as ``package-lock.json`` pins it, installed with ``npm ci`` when
    missing or older than the lock file. Fails (never skips) when node or npm is missing."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not on PATH (apt-get install nodejs npm): the client conformance tests need it")
    stamp = CLIENTS / "node_modules" / ".package-lock.json"
    lock = CLIENTS / "package-lock.json"
    if not stamp.exists() or stamp.stat().st_mtime < lock.stat().st_mtime:
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=CLIENTS,
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.fail(f"npm ci in {CLIENTS} failed:\n{done.stdout}\n{done.stderr}")
    return CLIENTS / "node_modules"


@dataclass
class Seen:
    """One request as the proxy passed it on (or failed it)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: datetime

    def json(self) -> Any:
        raw = gzip.decompress(self.body) if self.headers.get("content-encoding") == "gzip" else self.body
        return json.loads(raw)


@dataclass
class FaultyProxy:
    """A reverse proxy to ``target`` that records every request and answers the next ``fail`` POSTs
    with ``status`` itself (CORS headers included, as a real server's error page would have them)."""

    target: str
    fail: int = 0
    status: int = 503
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        proxy = self
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                with proxy._lock:
                    failing = self.command == "POST" and proxy.fail > 0
                    if failing:
                        proxy.fail -= 1
                if failing:
                    status, out_headers, content = proxy.status, {"content-type": "application/json"}, b'{"success":false}'
                    if "origin" in headers:
                        out_headers["access-control-allow-origin"] = headers["origin"]
                else:
                    forward = {k: v for k, v in headers.items() if k not in HOP_BY_HOP}
                    r = httpx.request(self.command, proxy.target + self.path, content=body, headers=forward,
                                      timeout=30)
                    status, content = r.status_code, r.content
                    out_headers = {k: v for k, v in r.headers.items()
                                   if k.lower() not in HOP_BY_HOP and k.lower() != "content-encoding"}
                with proxy._lock:
                    proxy.seen.append(Seen(self.command, self.path, headers, body, status, datetime.now(UTC)))
                try:
                    self.send_response(status)
                    for k, v in out_headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(content)))
                    self.end_headers()
                    self.wfile.write(content)
                except (BrokenPipeError, ConnectionResetError):   # a page that left does not read its answer
                    pass

            do_POST = do_GET = do_OPTIONS = _relay  # noqa: N815 (http.server's naming)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def posts(self) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.method == "POST"]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_node_client(client: str, host: str, write_key: str, lead: str, name: str,
                    original_timestamp: str | None = None) -> str:
    node_clients()
    args = ["node", str(CLIENTS / "send.js"), client, host, write_key, lead, name]
    if original_timestamp:
        args.append(original_timestamp)
    started = time.monotonic()
    done = subprocess.run(args, cwd=CLIENTS, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (f"{client} did not deliver its events ({time.monotonic() - started:.1f} s):\n"
                                  f"{done.stdout}\n{done.stderr}")
    return done.stdout


def events_as_received(seen: list[Seen]) -> list[dict[str, Any]]:
    """The events of the requests the API accepted, one by one as ``simulate`` reads them: the batch's
    ``sentAt`` and ``context`` carried into each, and ``receivedAt`` the moment the proxy passed it on."""
    out: list[dict[str, Any]] = []
    for s in seen:
        if s.method != "POST" or s.status != 200:
            continue
        data = s.json()
        items = data["batch"] if "batch" in data else [data]
        for item in items:
            event = {k: v for k, v in item.items() if k != "writeKey"}
            if data.get("sentAt") and not event.get("sentAt"):
                event["sentAt"] = data["sentAt"]
            event["receivedAt"] = s.at.isoformat().replace("+00:00", "Z")
            out.append(event)
    return out


# ---------------------------------------------------------------- analytics.js in a browser

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("chromium is not installed (apt-get install chromium): the browser client tests need it")
    return path


def _page_html(write_key: str, cdn: str, api_host: str, strategy: dict[str, Any]) -> bytes:
    """A site's page with Segment's snippet, reduced to what it does: name the write key and the CDN,
    pass load options, and load analytics.js's standalone build (from this site, not Segment's CDN)."""
    options = {"integrations": {"Segment.io": {"apiHost": api_host, "protocol": "http",
                                               "deliveryStrategy": strategy}}}
    return f"""<!doctype html>
<html><head><title>Pricing - Acme</title>
<script>
  window.analytics = [];
  window.analytics._writeKey = {json.dumps(write_key)};
  window.analytics._cdn = {json.dumps(cdn)};
  window.analytics._loadOptions = {json.dumps(options)};
</script>
<script src="/analytics.js/v1/{write_key}/analytics.min.js"></script>
</head><body><h1>Pricing</h1><a id="next" href="/next.html">next</a></body></html>""".encode()


class SiteServer:
    """A web site on its own origin serving analytics.js's standalone build and the CDN settings it
    loads, as Segment's CDN would (``{cdn}/v1/projects/{key}/settings``, chunks under
    ``{cdn}/analytics-next/bundles/``). Pages: ``/standard.html`` and ``/batching.html``."""

    def __init__(self, write_key: str, api_host: str) -> None:
        umd = node_clients() / "@segment" / "analytics-next" / "dist" / "umd"
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                content_type = "application/javascript"
                if path.startswith("/analytics.js/v1/"):
                    body = (umd / "standalone.js").read_bytes()
                elif path.startswith("/analytics-next/bundles/") and (umd / Path(path).name).is_file():
                    body = (umd / Path(path).name).read_bytes()
                elif path == f"/v1/projects/{write_key}/settings":
                    body, content_type = json.dumps(site.settings()).encode(), "application/json"
                elif path in ("/standard.html", "/batching.html", "/next.html"):
                    strategy: dict[str, Any] = {"strategy": "standard", "config": {}}
                    if path == "/batching.html":
                        strategy = {"strategy": "batching", "config": {"size": 3, "timeout": 1000}}
                    if path == "/next.html":
                        strategy = {"strategy": "batching", "config": {"size": 50, "timeout": 60000}}
                    body, content_type = _page_html(write_key, site.url, api_host, strategy), "text/html"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.write_key = write_key
        self.api_host = api_host
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def settings(self) -> dict[str, Any]:
        return {"integrations": {"Segment.io": {"apiKey": self.write_key, "apiHost": self.api_host,
                                                "protocol": "http", "addBundledMetadata": True}},
                "plan": {}, "edgeFunction": {}, "analyticsNextEnabled": True, "middlewareSettings": {},
                "enabledMiddleware": {}, "metrics": {"sampleRate": 0}, "legacyVideoPluginsEnabled": False,
                "remotePlugins": []}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
