"""Outbound lead events: signed webhooks to CRMs and notices to Slack, through a durable outbox.

Whatever changes a lead's ownership (routing, a claim, a reassignment, a ``Lead
Contacted`` event) writes its outbound events into ``outbound_webhooks`` in the
same transaction, so an event exists exactly when its cause committed. A
:class:`Sender` (running in the ``beat`` process, on threads of its own) posts
them afterwards: in order per lead and receiver (a row waits while an earlier
one for the same lead and receiver is pending), retried with exponential
backoff for ``outbound.retry_for`` (24 h by default), honouring ``Retry-After``.
A 2xx delivers; 408, 429, 5xx, timeouts and connection errors retry; any other
status stops that delivery as failed, visible in ``leadrouter status``. Nothing
here runs on the alert path, so a slow or dead receiver never delays an alert.

Delivery is at least once: a sender that dies mid-request leaves a lease that
expires, and the row is sent again with the same ``X-Leadrouter-Id``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from routing.config import Outbound, Rules
from routing.messages import LeadView, render_slack
from worker.adapters import db
from worker.adapters.settings import get_settings

if TYPE_CHECKING:
    from worker.adapters.runtime import Runtime

log = logging.getLogger("leadrouter.outbound")

SLACK = "slack"            # the receiver name of Slack notices; the URL is a setting, never stored
USER_AGENT = "leadrouter-webhooks/1"
LEASE_MARGIN = timedelta(seconds=30)
RETRY_AFTER_MAX = 3600.0   # a receiver's Retry-After is honoured up to an hour


# ---------------------------------------------------------------- signing


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """``v1=<hex HMAC-SHA256 of "<timestamp>.<body>">``: the ``X-Leadrouter-Signature`` header."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(secret: str, headers: dict[str, str], body: bytes, *, tolerance: int = 300,
           now: float | None = None) -> bool:
    """What a receiver does: recompute the signature and refuse old timestamps (replays)."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        ts = int(lower.get("x-leadrouter-timestamp", ""))
    except ValueError:
        return False
    if abs((now if now is not None else time.time()) - ts) > tolerance:
        return False
    given = lower.get("x-leadrouter-signature", "")
    return any(hmac.compare_digest(signature(secret, ts, body), part.strip()) for part in given.split(","))


# ---------------------------------------------------------------- what is sent


def _iso(t: datetime | None) -> str | None:
    return t.isoformat().replace("+00:00", "Z") if t else None


def _rep(rules: Rules, rep_id: str | None) -> dict[str, Any] | None:
    if not rep_id:
        return None
    rep = rules.rep(rep_id)
    if rep is None:
        return {"id": rep_id}
    return {"id": rep.id, "name": rep.name, "email": rep.email, "phone": rep.phone, "manager": rep.manager}


def lead_payload(lead: db.Lead) -> dict[str, Any]:
    breakdown = lead.breakdown or {}
    return {
        "id": lead.id,
        "score": lead.score,
        "behavior": lead.behavior,
        "fit": lead.fit,
        "tier": lead.tier,
        "hot_at": _iso(lead.hot_at),
        "red_hot_at": _iso(lead.red_hot_at),
        "owner": lead.owner,
        "traits": lead.traits or {},
        "score_breakdown": {"events": breakdown.get("events", {}), "fit_rules": breakdown.get("fit_rules", {}),
                            "qualification": breakdown.get("qualification", {})},
    }


def decision_payload(assignment: db.Assignment | None) -> dict[str, Any] | None:
    if assignment is None:
        return None
    reasons = dict(assignment.reasons or {})
    return {
        "assignment_id": assignment.id,
        "route": assignment.route,
        "team": assignment.team_id,
        "start_at": _iso(assignment.start_at),
        "candidates": reasons.get("candidates", []),
        "notes": reasons.get("notes", []),
        "actor": assignment.actor,
        "rules_hash": assignment.rules_hash,
    }


@dataclass
class Emitter:
    """Writes lead events into the outbox inside the caller's transaction."""

    rules: Rules
    slack_url: str | None = None

    @classmethod
    def for_rules(cls, rules: Rules) -> Emitter:
        return cls(rules, get_settings().slack_webhook_url)

    def wants(self, event: str) -> bool:
        """Whether any webhook takes ``event``: callers skip the lookups its payload needs otherwise."""
        return any(w.wants(event) for w in self.rules.outbound.webhooks)

    def lead_event(self, session: Session, event: str, lead: db.Lead, now: datetime, *,
                   assignment: db.Assignment | None = None, rep: str | None = None,
                   previous_rep: str | None = None, detail: dict[str, Any] | None = None) -> None:
        targets = [w.url for w in self.rules.outbound.webhooks if w.wants(event)]
        if not targets:
            return
        event_id = f"evt_{uuid.uuid4().hex}"
        body = {
            "id": event_id,
            "event": event,
            "occurred_at": _iso(now),
            "lead": lead_payload(lead),
            "rep": _rep(self.rules, rep if rep is not None else (assignment.rep_id if assignment else None)),
            "previous_rep": _rep(self.rules, previous_rep),
            "decision": decision_payload(assignment),
            **({"detail": detail} if detail else {}),
        }
        self._queue(session, event_id, event, lead.id, targets, _dump(body), now)

    def slack(self, session: Session, notice: str, lead: db.Lead, now: datetime, *,
              rep: str | None = None, manager: str | None = None, retry: int = 0, reason: str = "") -> None:
        if not self.slack_url or notice not in self.rules.outbound.slack.notices:
            return
        view = LeadView(lead_id=lead.id, traits=lead.traits or {}, score=lead.score, tier=lead.tier,
                        breakdown=lead.breakdown or {})

        def name(rep_id: str | None) -> str | None:
            r = self.rules.rep(rep_id) if rep_id else None
            return r.display if r else rep_id

        payload = render_slack(notice, view, rep=name(rep), manager=name(manager), retry=retry, reason=reason)
        self._queue(session, f"evt_{uuid.uuid4().hex}", notice, lead.id, [SLACK], _dump(payload), now)

    def _queue(self, session: Session, event_id: str, event: str, lead_id: str, receivers: list[str], body: str,
               now: datetime) -> None:
        session.add_all([db.OutboundWebhook(event_id=event_id, event=event, lead_id=lead_id, receiver=r, body=body,
                                            status="pending", attempts=0, next_attempt_at=now, created_at=now)
                         for r in receivers])


def _dump(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str)


# ---------------------------------------------------------------- delivering


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    retry: bool
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None


def classify(response: httpx.Response | None, exc: Exception | None) -> Outcome:
    if exc is not None:
        return Outcome(False, True, None, f"{type(exc).__name__}: {exc}"[:300])
    assert response is not None
    code = response.status_code
    if 200 <= code < 300:
        return Outcome(True, False, code)
    text = response.text[:200].strip()
    error = f"HTTP {code}" + (f": {text}" if text else "")
    if code in (408, 429) or code >= 500:
        return Outcome(False, True, code, error, _retry_after(response.headers.get("retry-after")))
    return Outcome(False, False, code, error)     # 3xx (redirects are not followed) and other 4xx: stop


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - db.now_utc()).total_seconds())
    except (TypeError, ValueError):
        return None


def backoff(policy: Outbound, attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failed attempt: doubling from ``retry_initial``, capped."""
    initial = policy.retry_initial.total_seconds()
    return timedelta(seconds=min(initial * 2 ** min(attempts - 1, 30), policy.retry_max.total_seconds()))


def head_of_line(session: Session, now: datetime, limit: int, busy: set[int]) -> list[db.OutboundWebhook]:
    """Pending rows due now that no earlier pending row of the same lead and receiver precedes."""
    earlier = aliased(db.OutboundWebhook)
    o = db.OutboundWebhook
    q = (select(o).where(o.status == "pending", o.next_attempt_at <= now,
                         or_(o.lease_until.is_(None), o.lease_until < now),
                         ~exists().where(and_(earlier.receiver == o.receiver, earlier.lead_id == o.lead_id,
                                              earlier.status == "pending", earlier.id < o.id)))
         .order_by(o.next_attempt_at, o.id).limit(limit + len(busy)))
    return [row for row in session.scalars(q) if row.id not in busy][:limit]


class Sender:
    """Posts due outbox rows on a small thread pool; one row per lead and receiver at a time."""

    def __init__(self, sessions: Any, rules: Callable[[], Rules], *, secret: str, slack_url: str | None,
                 threads: int = 8, client: httpx.Client | None = None):
        self.sessions = sessions
        self.rules = rules
        self.secret = secret
        self.slack_url = slack_url
        self.threads = threads
        self.client = client or httpx.Client(follow_redirects=False, headers={"User-Agent": USER_AGENT})
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="outbound")
        self.busy: set[int] = set()
        self.lock = threading.Lock()
        self.wake = threading.Event()

    # -- one pass
    def run_once(self) -> int:
        """Lease the due heads of line and hand them to the pool; returns how many started."""
        now = db.now_utc()
        policy = self.rules().outbound
        with self.lock:
            free = self.threads - len(self.busy)
            busy = set(self.busy)
        if free <= 0:
            return 0
        started = []
        with self.sessions.begin() as session:
            for row in head_of_line(session, now, free, busy):
                won = db.changed_rows(session, update(db.OutboundWebhook)
                                      .where(db.OutboundWebhook.id == row.id, db.OutboundWebhook.status == "pending",
                                             or_(db.OutboundWebhook.lease_until.is_(None),
                                                 db.OutboundWebhook.lease_until < now))
                                      .values(lease_until=now + policy.timeout + LEASE_MARGIN))
                if won == 1:
                    started.append((row.id, row.event_id, row.event, row.receiver, row.body))
        with self.lock:
            self.busy.update(r[0] for r in started)
        for args in started:
            self.pool.submit(self._deliver, *args)
        return len(started)

    def _deliver(self, row_id: int, event_id: str, event: str, receiver: str, body: str) -> None:
        try:
            policy = self.rules().outbound
            outcome = self._post(event_id, event, receiver, body.encode(), policy.timeout.total_seconds())
            self._record(row_id, outcome, policy)
        except Exception:   # the row's lease expires and it is tried again
            log.exception("outbound delivery %s failed unexpectedly", row_id)
        finally:
            with self.lock:
                self.busy.discard(row_id)
            self.wake.set()

    def _post(self, event_id: str, event: str, receiver: str, body: bytes, timeout: float) -> Outcome:
        headers = {"Content-Type": "application/json"}
        if receiver == SLACK:
            if not self.slack_url:
                return Outcome(False, False, None, "SLACK_WEBHOOK_URL is not set")
            url = self.slack_url
        else:
            url = receiver
            ts = int(time.time())
            headers.update({"X-Leadrouter-Event": event, "X-Leadrouter-Id": event_id,
                            "X-Leadrouter-Timestamp": str(ts),
                            "X-Leadrouter-Signature": signature(self.secret, ts, body)})
        try:
            response = self.client.post(url, content=body, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            return classify(None, exc)
        return classify(response, None)

    def _record(self, row_id: int, outcome: Outcome, policy: Outbound) -> None:
        now = db.now_utc()
        with self.sessions.begin() as session:
            row = session.get(db.OutboundWebhook, row_id)
            if row is None or row.status != "pending":
                return
            row.attempts += 1
            row.last_status = outcome.status
            row.lease_until = None
            if outcome.delivered:
                row.status, row.delivered_at, row.last_error = "delivered", now, None
                return
            row.last_error = outcome.error
            wait = backoff(policy, row.attempts)
            if outcome.retry_after is not None:
                wait = max(wait, timedelta(seconds=min(outcome.retry_after, RETRY_AFTER_MAX)))
            if not outcome.retry:
                row.status = "failed"
                log.warning("webhook %s to %s failed for good: %s", row.event_id, receiver_name(row.receiver), outcome.error)
            elif now + wait > row.created_at + policy.retry_for:
                row.status = "failed"
                row.last_error = f"gave up after {row.attempts} attempts: {outcome.error}"
                log.warning("webhook %s to %s: %s", row.event_id, receiver_name(row.receiver), row.last_error)
            else:
                row.next_attempt_at = now + wait

    # -- the loop
    def run_forever(self, stop: threading.Event, interval: float = 0.25) -> None:
        failures = 0
        while not stop.is_set():
            try:
                self.run_once()
                failures = 0
            except Exception as exc:   # the database away: keep going, it comes back
                failures += 1
                log.warning("outbound pass failed (%s: %s)", type(exc).__name__, exc)
                stop.wait(min(5.0, 0.5 * failures))
            self.wake.wait(interval)
            self.wake.clear()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()


def receiver_name(receiver: str) -> str:
    """A receiver as logs and ``status`` show it: the host only (URLs may carry tokens)."""
    return SLACK if receiver == SLACK else (urlsplit(receiver).netloc or "?")


def start_background(rt: Runtime, stop: threading.Event) -> threading.Thread:
    """Run a :class:`Sender` for ``rt`` on a daemon thread until ``stop`` is set."""
    settings = rt.settings
    sender = Sender(rt.sessions, lambda: rt.rules, secret=settings.secret_key,
                    slack_url=settings.slack_webhook_url)

    def run() -> None:
        try:
            sender.run_forever(stop)
        finally:
            sender.close()

    thread = threading.Thread(target=run, name="outbound-sender", daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------- status


def summary(session: Session, now: datetime, recent: int = 10) -> dict[str, Any]:
    o = db.OutboundWebhook
    counts = dict(session.execute(select(o.status, func.count()).group_by(o.status)).all())
    oldest = session.scalar(select(func.min(o.created_at)).where(o.status == "pending"))
    failures = session.execute(select(o.id, o.event, o.lead_id, o.receiver, o.attempts, o.last_status, o.last_error,
                                      o.created_at)
                               .where(o.status == "failed").order_by(o.id.desc()).limit(recent)).all()
    return {
        "pending": int(counts.get("pending", 0)),
        "delivered": int(counts.get("delivered", 0)),
        "failed": int(counts.get("failed", 0)),
        "oldest_pending_seconds": round((now - oldest).total_seconds(), 1) if oldest else None,
        "recent_failures": [{"id": r.id, "event": r.event, "lead": r.lead_id, "receiver": receiver_name(r.receiver),
                             "attempts": r.attempts, "status": r.last_status, "error": r.last_error,
                             "at": _iso(r.created_at)} for r in failures],
    }


def forget(session: Session, lead_ids: set[str], scrub: Callable[[Any], Any]) -> int:
    """Erase the bodies that carry the leads' data; undelivered ones are cancelled, never sent."""
    n = 0
    for row in session.scalars(select(db.OutboundWebhook).where(db.OutboundWebhook.lead_id.in_(lead_ids))):
        row.body = _dump({"erased": True})
        row.last_error = scrub(row.last_error)
        if row.status == "pending":
            row.status, row.last_error = "cancelled", "lead forgotten before delivery"
        n += 1
    return n
