"""The fault suite's hands on the running product: publish to any Redis, read the database, break the network."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import redis
from celery import Celery
from sqlalchemy import create_engine, func
from sqlalchemy import select as sql_select
from sqlalchemy.orm import Session, sessionmaker

from routing.config import load_rules
from routing.events import iso
from tests.support.alerting import fast_rules
from tests.support.stack import Processes, RedisServer, free_port
from worker.adapters import db, stream
from worker.services.publish import publish, queue_for

FIT = {"name": "Jane Doe", "title": "VP Engineering", "phone": "+14155550100", "role": "decision_maker",
       "company": {"name": "Acme", "industry": "software", "employee_count": 1200}, "address": {"country": "US"}}
# 10 + 10 + 5 + 20 = 45 fit points under the shipped rules


def ts(seconds_ago: float = 60.0) -> str:
    return iso(datetime.now().astimezone() - timedelta(seconds=seconds_ago)) or ""


def track(mid: str, user: str, event: str = "Email Clicked", seconds_ago: float = 60.0) -> dict[str, Any]:
    return {"type": "track", "messageId": mid, "userId": user, "event": event, "timestamp": ts(seconds_ago)}


def identify(mid: str, user: str, seconds_ago: float = 120.0, **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "messageId": mid, "userId": user, "traits": {"email": f"{user}@acme.com", **FIT,
                                                                              **traits},
            "timestamp": ts(seconds_ago)}


def background(prefix: str, n: int, leads: int = 20) -> list[dict[str, Any]]:
    """``n`` low-value events over ``leads`` leads: they score, they never make a lead hot."""
    names = ["Email Clicked", "Page Viewed", "Blog Post Viewed"]
    return [track(f"{prefix}-{i}", f"{prefix}-u{i % leads}", names[i % 3]) for i in range(n)]


PrivateRedis = RedisServer   # a redis-server of one test's own: killed, paused, restarted at will


class Publisher:
    """``worker.services.publish.publish`` into one Redis, with drains kicked on that same Redis.

    The product's own kick goes through the Celery app of this process, which is bound to the
    session's Redis; a test with a Redis of its own kicks through a Celery client of its own.
    """

    def __init__(self, redis_url: str, rules_path: str | Path):
        self.redis = redis.Redis.from_url(redis_url)
        self.rules = load_rules(Path(rules_path))
        self._celery = Celery("leadrouter-faults", broker=redis_url)
        self._celery.conf.update(task_serializer="json", broker_connection_retry_on_startup=True)

    def kick(self, r: redis.Redis, lane: str) -> None:
        if r.set(stream.kick_key(lane), "1", nx=True, px=2000):
            self._celery.send_task("leadrouter.drain", args=(lane,), queue=queue_for(lane))

    def publish(self, events: list[dict[str, Any]], chunk: int = 100) -> int:
        accepted = 0
        for i in range(0, len(events), chunk):
            result = publish(self.redis, events[i:i + chunk], self.rules, kick=self.kick)
            assert result.errors == [], result.errors
            accepted += result.accepted
        return accepted

    def workers_ready(self, n: int) -> bool:
        """Whether ``n`` Celery workers answer a ping on this broker (their pools are up)."""
        return len(self._celery.control.ping(timeout=0.5) or []) >= n

    def drained(self) -> bool:
        """Nothing waiting in either lane, nothing read and unacknowledged."""
        return all(stream.backlog(self.redis, lane) == {"waiting": 0, "pending": 0} for lane in stream.LANES)

    def held_by(self) -> dict[str, int]:
        """Consumer name → entries it read and has not acknowledged, both lanes."""
        out: dict[str, int] = {}
        for lane in stream.LANES:
            try:
                infos = self.redis.xinfo_consumers(stream.stream_key(lane), stream.GROUP)
            except redis.ResponseError:
                continue
            for c in infos:
                name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                out[name] = out.get(name, 0) + int(c["pending"])
        return out

    def pending_message_ids(self) -> set[str]:
        """The messageIds of every entry read and not yet acknowledged."""
        import json

        mids: set[str] = set()
        for lane in stream.LANES:
            key = stream.stream_key(lane)
            try:
                rows = self.redis.xpending_range(key, stream.GROUP, min="-", max="+", count=100_000)
            except redis.ResponseError:
                continue
            for row in rows:
                for _, fields in self.redis.xrange(key, row["message_id"], row["message_id"]) or []:
                    if fields:
                        mids.add(json.loads(fields[b"p"])["messageId"])
        return mids

    def close(self) -> None:
        self._celery.close()
        self.redis.close()


class Store:
    """Reads of the product's database."""

    def __init__(self, url: str):
        self.engine = create_engine(url)
        self.sessions: sessionmaker[Session] = sessionmaker(self.engine, expire_on_commit=False)

    def count(self, model: type, *where: Any) -> int:
        with self.sessions() as s:
            return int(s.scalar(sql_select(func.count()).select_from(model).where(*where)) or 0)

    def rows(self, model: Any, *where: Any) -> list[Any]:
        with self.sessions() as s:
            return list(s.scalars(sql_select(model).where(*where).order_by(model.id)))

    def message_ids(self) -> set[str]:
        with self.sessions() as s:
            return set(s.scalars(sql_select(db.Event.message_id)))

    def exactly_once(self, events: list[dict[str, Any]]) -> None:
        """Every event stored once, none twice, none extra; every lead counted each of its events once."""
        with self.sessions() as s:
            rows = s.execute(sql_select(db.Event.source, db.Event.message_id, func.count())
                             .group_by(db.Event.source, db.Event.message_id)).all()
            counts = dict(s.execute(sql_select(db.Lead.id, db.Lead.event_count)).all())
        stored = {mid: n for _, mid, n in rows}
        wanted = {e["messageId"] for e in events}
        assert set(stored) == wanted, (f"missing {sorted(wanted - set(stored))[:10]}, "
                                       f"unexpected {sorted(set(stored) - wanted)[:10]}")
        assert all(n == 1 for n in stored.values())
        per_lead: dict[str, int] = {}
        for e in events:
            per_lead[e["userId"]] = per_lead.get(e["userId"], 0) + 1
        assert {lead: counts.get(lead) for lead in per_lead} == per_lead

    def close(self) -> None:
        self.engine.dispose()


def start_service(processes: Processes, rules: Path, **env: str) -> tuple[subprocess.Popen[bytes],
                                                                          subprocess.Popen[bytes]]:
    """A worker and a scheduler on batches of 20 and a 3 s reclaim, with ``env`` pointing them at the
    Redis or the database a test is about to take away: (worker, beat)."""
    fast_rules(rules, first_contact_sla="1h")   # the 2 s reminder, and no reassignment however long a test takes
    processes.env.update({"LEADROUTER_BATCH_SIZE": "20", "LEADROUTER_RECLAIM_IDLE_SECONDS": "3", **env})
    worker = processes.celery_worker(queues="events,fast,alerts", concurrency=2)
    return worker, processes.leadrouter("beat", name="beat")


def running(processes: Processes, *procs: subprocess.Popen[bytes]) -> bool:
    """True while every one of ``procs`` runs; a wait on the product stops at once when one has died."""
    for proc in procs:
        assert proc.poll() is None, f"{proc.args!r} exited with {proc.returncode}\n{processes.logs()}"
    return True


def children_of(pid: int) -> set[int]:
    """The live child processes of ``pid`` (a Celery worker's pool)."""
    out: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(entry))
    return out


def delivery_id_of(request: Mapping[str, Any]) -> int | None:
    """Our delivery id as it travels with a provider request (Twilio's callback URL, SendGrid's custom_args)."""
    if request["provider"] == "twilio" and request["form"]:
        query = urlsplit(request["form"].get("StatusCallback", "")).query
        value = dict(parse_qsl(query)).get("delivery_id")
        return int(value) if value else None
    if request["provider"] == "sendgrid" and isinstance(request["json"], dict):
        for p in request["json"].get("personalizations", []):
            value = (p.get("custom_args") or {}).get("delivery_id")
            if value:
                return int(value)
    return None


class TcpProxy:
    """127.0.0.1:<port> forwarded to an upstream server.

    :meth:`cut` drops every connection and refuses new ones (the port is closed), and :meth:`restore`
    accepts again on the same port. :meth:`hold` stops forwarding without closing anything: what a
    client sends meanwhile waits in the proxy, and a :meth:`cut` throws it away unsent.
    """

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.port = free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._flowing = threading.Event()
        self._flowing.set()
        self._thread = threading.Thread(target=self._serve, name="tcp-proxy", daemon=True)
        self.accepted = 0
        self.held = 0   # pieces of traffic that arrived while held: requests the held side is waiting on

    def start(self) -> TcpProxy:
        self.restore()
        self._thread.start()
        return self

    def restore(self) -> None:
        with self._lock:
            if self._listener is None:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", self.port))
                s.listen(128)
                self._listener = s

    @property
    def open(self) -> int:
        """Connections open through the proxy right now."""
        with self._lock:
            return len(self._conns) // 2

    def hold(self) -> None:
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            conns, self._conns = self._conns, set()
        for c in conns:
            _hang_up(c)
        self._flowing.set()   # what was held finds its sockets closed and is dropped

    def stop(self) -> None:
        self._stopping.set()
        self.cut()
        self._thread.join(5)

    def _serve(self) -> None:
        while not self._stopping.is_set():
            with self._lock:   # cut() waits for this short poll, so it never closes a socket under select()
                listener = self._listener
                client = None
                if listener is not None:
                    ready, _, _ = select.select([listener], [], [], 0.05)
                    if ready:
                        client, _ = listener.accept()
            if listener is None:
                time.sleep(0.05)
            elif client is not None:
                threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
            upstream.settimeout(None)
        except OSError:
            _hang_up(client)
            return
        with self._lock:
            if self._listener is None:   # cut while connecting
                live = False
            else:
                live = True
                self._conns.update((client, upstream))
                self.accepted += 1
        if not live:
            _hang_up(client)
            _hang_up(upstream)
            return
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if not self._flowing.is_set():
                    with self._lock:
                        self.held += 1
                    self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.difference_update((src, dst))
            _hang_up(src)
            _hang_up(dst)


@dataclass
class ProxiedDatabase:
    proxy: TcpProxy
    url: str          # through the proxy: what the product is given
    direct_url: str   # straight to the server: what the test reads with, whatever the proxy does


def _hang_up(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()

