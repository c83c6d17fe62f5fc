"""The database's tables: SQLAlchemy 2.0 models, the same on SQLite and PostgreSQL (engines and sessions:
:mod:`worker.adapters.engines`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.sql import Executable

UTC = UTC


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on SQLite (which stores naive text) too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


ID = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Lead(Base):
    __tablename__ = "leads"

    id: Mapped[str] = mapped_column(String(220), primary_key=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    traits: Mapped[dict[str, Any]] = mapped_column(default=dict)
    score: Mapped[float] = mapped_column(Float, default=0)
    behavior: Mapped[float] = mapped_column(Float, default=0)
    fit: Mapped[float] = mapped_column(Float, default=0)
    tier: Mapped[str] = mapped_column(String(16), default="cold")
    breakdown: Mapped[dict[str, Any]] = mapped_column(default=dict)
    hot_at: Mapped[datetime | None]
    red_hot_at: Mapped[datetime | None]
    last_routed_at: Mapped[datetime | None]
    hot_unalerted: Mapped[bool] = mapped_column(Boolean, default=False)
    owner: Mapped[str | None] = mapped_column(String(100))
    merged_into: Mapped[str | None] = mapped_column(String(220))
    contacted_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    forgotten_at: Mapped[datetime | None]
    event_count: Mapped[int] = mapped_column(Integer, default=0)
    rules_hash: Mapped[str | None] = mapped_column(String(32))


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("source", "message_id", name="uq_events_source_message"),
        Index("ix_events_lead_ts", "lead_id", "timestamp"),
    )

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(100))
    message_id: Mapped[str] = mapped_column(String(220))
    lead_id: Mapped[str] = mapped_column(String(220))
    type: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(220))
    timestamp: Mapped[datetime]
    received_at: Mapped[datetime]
    processed_at: Mapped[datetime]
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict)
    traits: Mapped[dict[str, Any]] = mapped_column(default=dict)
    points: Mapped[float] = mapped_column(Float, default=0)
    score_after: Mapped[float] = mapped_column(Float, default=0)
    tier_after: Mapped[str] = mapped_column(String(16), default="cold")
    effect: Mapped[str | None] = mapped_column(String(40))
    stale: Mapped[bool] = mapped_column(Boolean, default=False)


class IdentityLink(Base):
    __tablename__ = "identity_links"

    anon_lead_id: Mapped[str] = mapped_column(String(220), primary_key=True)
    user_lead_id: Mapped[str] = mapped_column(String(220), index=True)
    linked_at: Mapped[datetime]


class HotEpisode(Base):
    __tablename__ = "hot_episodes"
    __table_args__ = (Index("ix_hot_episodes_opened", "opened_at"),)   # report and board windows

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    lead_id: Mapped[str] = mapped_column(String(220), index=True)
    opened_at: Mapped[datetime]
    event_id: Mapped[int | None] = mapped_column(ID)
    event_received_at: Mapped[datetime | None]
    red_hot: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="open")   # open, claimed, contacted, closed, unrouted
    closed_at: Mapped[datetime | None]
    rules_hash: Mapped[str] = mapped_column(String(32))
    reassignments: Mapped[int] = mapped_column(Integer, default=0)


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (Index("ix_assignments_rep_created", "rep_id", "created_at"),
                      # the board's open hot leads: unclaimed current assignments by cadence start
                      Index("ix_assignments_open_start", "start_at", "id",
                            postgresql_where=text("current AND claimed_at IS NULL"),
                            sqlite_where=text("current AND claimed_at IS NULL")))

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    episode_id: Mapped[int | None] = mapped_column(ForeignKey("hot_episodes.id"), index=True)
    lead_id: Mapped[str] = mapped_column(String(220), index=True)
    rep_id: Mapped[str | None] = mapped_column(String(100))
    team_id: Mapped[str | None] = mapped_column(String(100))
    domain: Mapped[str | None] = mapped_column(String(253), index=True)
    route: Mapped[str] = mapped_column(String(20))
    reasons: Mapped[dict[str, Any]] = mapped_column(default=dict)
    rules_hash: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime]
    start_at: Mapped[datetime]
    current: Mapped[bool] = mapped_column(Boolean, default=True)
    ended_at: Mapped[datetime | None]
    end_reason: Mapped[str | None] = mapped_column(String(20))
    claimed_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    actor: Mapped[str | None] = mapped_column(String(100))


class AlertStep(Base):
    """A durable timer: one step of an assignment's cadence, claimed by the scheduler tick."""

    __tablename__ = "alert_steps"
    __table_args__ = (
        UniqueConstraint("assignment_id", "step", name="uq_alert_steps_assignment_step"),
        Index("ix_alert_steps_due", "status", "due_at"),
        Index("ix_alert_steps_fired", "fired_at"),   # the board's cadence lateness
    )

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    assignment_id: Mapped[int | None] = mapped_column(ForeignKey("assignments.id"))
    lead_id: Mapped[str] = mapped_column(String(220), index=True)
    step: Mapped[int] = mapped_column(Integer)          # 0 first alert, 1..N retries, N+1 reassign check; 100+ one-off notes
    kind: Mapped[str] = mapped_column(String(20))       # first, retry, reassign, fyi, priority, unrouted, summary
    due_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16), default="pending")  # routing.kinds.StepStatus
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claimed_at: Mapped[datetime | None]
    fired_at: Mapped[datetime | None]
    note: Mapped[str | None] = mapped_column(Text)


class Delivery(Base):
    """One attempt to reach one person on one channel; written before sending."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("step_id", "recipient", "channel", name="uq_deliveries_step_channel"),
                      Index("ix_deliveries_unsettled", "status", "updated_at"))

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    step_id: Mapped[int | None] = mapped_column(ForeignKey("alert_steps.id"), index=True)
    lead_id: Mapped[str] = mapped_column(String(220), index=True)
    recipient: Mapped[str] = mapped_column(String(100))   # rep id, or an address for unrouted notices
    channel: Mapped[str] = mapped_column(String(16))
    to: Mapped[str] = mapped_column(String(254))
    status: Mapped[str] = mapped_column(String(20), default="pending")  # routing.kinds.DeliveryStatus
    provider_id: Mapped[str | None] = mapped_column(String(100), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    error_kind: Mapped[str | None] = mapped_column(String(20))
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    # how a delivery that had no answer was settled: callback, lookup, twin (its SMS twin's word),
    # released (its worker died before the answer); resent_at: confirmed never taken and sent again
    settled_by: Mapped[str | None] = mapped_column(String(20))
    resent_at: Mapped[datetime | None]


class RepState(Base):
    __tablename__ = "rep_state"

    rep_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    away_until: Mapped[datetime | None]
    disabled_channels: Mapped[dict[str, Any]] = mapped_column(default=dict)  # channel -> reason
    updated_at: Mapped[datetime]


class DeadLetter(Base):
    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(100))
    message_id: Mapped[str | None] = mapped_column(String(220))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    retried_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=1)


class InboundMessage(Base):
    __tablename__ = "inbound_messages"

    key: Mapped[str] = mapped_column(String(120), primary_key=True)  # "twilio:<MessageSid>" or "sendgrid:<sg_event_id>"
    received_at: Mapped[datetime]


class Setting(Base):
    """Small shared state: pause flag, which rules hash each worker runs."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(120), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime]


class Trace(Base):
    """Operator actions and other notable lead history for ``explain``."""

    __tablename__ = "lead_trace"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    lead_id: Mapped[str] = mapped_column(String(220), index=True)
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str | None] = mapped_column(String(100))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class OutboundWebhook(Base):
    """The outbox: one lead event for one receiver (a webhook URL, or ``slack``), written in the
    transaction that made the event happen and delivered afterwards, in order per lead and receiver."""

    __tablename__ = "outbound_webhooks"
    __table_args__ = (
        UniqueConstraint("event_id", "receiver", name="uq_outbound_webhooks_event_receiver"),
        Index("ix_outbound_webhooks_due", "status", "next_attempt_at"),
        Index("ix_outbound_webhooks_order", "receiver", "lead_id", "status"),
    )

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(40))        # X-Leadrouter-Id: one per event, the same on retries
    event: Mapped[str] = mapped_column(String(40))           # lead.assigned, ... or escalation (Slack only)
    lead_id: Mapped[str] = mapped_column(String(220), index=True)
    receiver: Mapped[str] = mapped_column(String(1000))      # the webhook URL, or "slack"
    body: Mapped[str] = mapped_column(Text)                  # exactly the bytes signed and sent
    status: Mapped[str] = mapped_column(String(16), default="pending")   # pending, delivered, failed, cancelled
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    lease_until: Mapped[datetime | None]                     # a sender holds it until then
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]


def now_utc() -> datetime:
    return datetime.now(UTC)


def changed_rows(session: Session, stmt: Executable) -> int:
    """Run an UPDATE; how many rows it changed (for a compare-and-set: whether this one won)."""
    return cast("CursorResult[Any]", session.execute(stmt)).rowcount
