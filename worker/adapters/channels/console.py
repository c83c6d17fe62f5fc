"""Alerts printed to a terminal, for local runs without provider credentials."""

from __future__ import annotations

import sys
import threading
import uuid
from datetime import datetime
from typing import TextIO

from worker.adapters.channels.base import NotSupported, OutboundMessage, SendResult, Sent, mask_recipient

PROVIDER_ID_PREFIX = "console-"


class ConsoleChannel:
    name = "console"

    def __init__(self, stream: TextIO | None = None) -> None:
        # Resolved at send time when not given, so pytest's capsys and a
        # redirected sys.stdout see the output.
        self._stream = stream
        # Workers send from several threads; one alert's lines stay together.
        self._lock = threading.Lock()

    def send(self, msg: OutboundMessage) -> SendResult:
        provider_id = PROVIDER_ID_PREFIX + uuid.uuid4().hex
        # The terminal may be shared or recorded, so the recipient is masked
        # like in logs; the text is what the rep would read.
        lines = [
            f"─── {msg.channel} alert to {mask_recipient(msg.to)} (delivery {msg.delivery_id}) ───",
            *([f"Subject: {msg.subject}"] if msg.subject else []),
            msg.text,
            "─" * 40,
            "",
        ]
        stream = self._stream or sys.stdout
        with self._lock:
            stream.write("\n".join(lines))
            stream.flush()
        return SendResult(provider_id=provider_id, status="sent")

    def fetch_status(self, provider_id: str) -> str | None:
        # Printing is delivering: nothing can be left in flight.
        return "delivered" if provider_id.startswith(PROVIDER_ID_PREFIX) else None

    def sent_between(self, to: str, since: datetime, until: datetime) -> list[Sent]:
        raise NotSupported("the console keeps no record of what it printed")
