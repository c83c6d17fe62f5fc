"""The words of alerting, one typed vocabulary: what a cadence step is, what message it sends, and
the states a step and a delivery pass through. ``StrEnum`` members are their own string values, so
they are stored and compared as plain text in the database.
"""

from __future__ import annotations

from enum import StrEnum


class StepKind(StrEnum):
    """An ``alert_steps`` row: what the step is in its lead's story."""

    FIRST = "first"              # an episode's first alert
    PRIORITY = "priority"        # a first alert that reads red-hot, or hot → red-hot for the owner
    REASSIGNED = "reassigned"    # the first alert of a reassignment (a pass, an SLA that ran out)
    MANUAL = "manual"            # the first alert of an operator's ``lead assign``
    RETRY = "retry"              # a reminder of the cadence
    ESCALATION = "escalation"    # the manager, now, when every channel of the rep failed
    REASSIGN = "reassign"        # the cadence ran out: reassign (sends nothing itself)
    FYI = "fyi"                  # a cooled lead hot again, for its owner; no cadence
    UNROUTED = "unrouted"        # nobody to route to: the ``unrouted_notify`` addresses


class MessageKind(StrEnum):
    """The text a delivery carries (``routing.messages.render_alert``)."""

    FIRST = "first"
    RETRY = "retry"
    ESCALATION = "escalation"
    REASSIGN = "reassign"
    PRIORITY = "priority"
    FYI = "fyi"
    UNROUTED = "unrouted"


class StepStatus(StrEnum):
    PENDING = "pending"          # waiting for its due time
    FIRING = "firing"            # claimed by one worker, its deliveries written
    DONE = "done"                # fired (or handled: reassigned, nobody to alert)
    CANCELLED = "cancelled"      # called off: claimed, contacted, closed, merged, no longer current
    SKIPPED = "skipped"          # overdue, collapsed into a later step of its cadence


class DeliveryStatus(StrEnum):
    PENDING = "pending"          # written, its request about to leave
    SENT = "sent"                # the provider took it
    MAYBE_SENT = "maybe_sent"    # no answer (a timeout, a 5xx, a worker that died): settled by asking
    DELIVERED = "delivered"      # the provider's callback says it arrived
    FAILED = "failed"            # refused, or confirmed never taken
    HELD = "held"                # over the rep's hourly cap; summarized later
    SUMMARIZED = "summarized"    # went out in an hourly-cap summary


# The one mapping from a step to the message it sends; REASSIGN sends none of its own.
MESSAGE_OF: dict[StepKind, MessageKind | None] = {
    StepKind.FIRST: MessageKind.FIRST,
    StepKind.PRIORITY: MessageKind.PRIORITY,
    StepKind.REASSIGNED: MessageKind.REASSIGN,
    StepKind.MANUAL: MessageKind.FIRST,
    StepKind.RETRY: MessageKind.RETRY,
    StepKind.ESCALATION: MessageKind.ESCALATION,
    StepKind.REASSIGN: None,
    StepKind.FYI: MessageKind.FYI,
    StepKind.UNROUTED: MessageKind.UNROUTED,
}

# Messages that carry a claim link and "Reply 1 to claim, 2 to pass".
CLAIMABLE = frozenset({MessageKind.FIRST, MessageKind.RETRY, MessageKind.ESCALATION, MessageKind.REASSIGN,
                       MessageKind.PRIORITY})
# Steps whose messages carry one: the ones an SMS of can be recognized by its link.
CLAIMABLE_STEPS = frozenset(k for k, m in MESSAGE_OF.items() if m in CLAIMABLE)
# Steps that alert the owner as part of one cadence: its first alert (under whatever name the assignment
# began) and its reminders. Overdue ones collapse into the latest; a late first alert moves the reminders.
OPENING = frozenset({StepKind.FIRST, StepKind.PRIORITY, StepKind.REASSIGNED, StepKind.MANUAL})
CADENCE = OPENING | {StepKind.RETRY}
# Steps whose SMS carries a ValidityPeriod: a stale reminder is never delivered after its successor.
EXPIRING = CADENCE


def message_of(kind: str) -> MessageKind | None:
    """The message a step of ``kind`` sends (None for ``reassign``); an unknown kind is a bug, not a default."""
    return MESSAGE_OF[StepKind(kind)]


def describe_delivery(status: str, settled_by: str | None, resent: bool, error: str | None) -> str:
    """How a delivery ended and why, in a line for ``explain``."""
    where = {"callback": "the provider's status callback", "lookup": "asking the provider",
             "twin": "its SMS twin, found taken"}
    if resent:
        if status in (DeliveryStatus.SENT, DeliveryStatus.DELIVERED):
            return f"confirmed unsent, sent again: {status}"
        if status == DeliveryStatus.MAYBE_SENT:
            return "confirmed unsent, sent again: no answer yet"
        return f"confirmed unsent, sent again: {error or status}"
    if status == DeliveryStatus.MAYBE_SENT:
        return f"maybe sent ({error or 'no answer'}); to be settled by asking the provider"
    if status == DeliveryStatus.PENDING:
        return "sending"
    if status == DeliveryStatus.HELD:
        return "held by the hourly cap"
    if status == DeliveryStatus.SUMMARIZED:
        return "held by the hourly cap, then sent in a summary"
    if settled_by is not None:
        outcome = error if status == DeliveryStatus.FAILED and error else status
        return f"maybe sent, settled by {where.get(settled_by, settled_by)}: {outcome}"
    if status == DeliveryStatus.FAILED:
        return f"failed: {error or 'refused'}"
    return str(status)
