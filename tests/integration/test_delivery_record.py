"""The sender's record of a provider's answer never overwrites what a status callback already settled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from routing.kinds import DeliveryStatus
from worker.adapters import db
from worker.services.deliveries import Delivery, record

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def test_a_callback_that_overtook_the_senders_record_stands_and_waiting_rows_are_written(service_env) -> None:
    engine = sa.create_engine(service_env["DATABASE_URL"])
    try:
        with Session(engine) as s, s.begin():
            rows = {status: db.Delivery(lead_id="L-1", recipient="bob", channel="voice", to="+14155550102",
                                        status=status, created_at=NOW, updated_at=NOW)
                    for status in (DeliveryStatus.PENDING, DeliveryStatus.MAYBE_SENT, DeliveryStatus.FAILED)}
            s.add_all(rows.values())
            s.flush()
            ids = {status: row.id for status, row in rows.items()}
        answered = NOW + timedelta(seconds=1)
        items = [Delivery(id=ids[status], recipient="bob", channel="voice", address="+14155550102",
                          status=DeliveryStatus.SENT, provider_id=f"CA{n:032d}", answered_at=answered)
                 for n, status in enumerate(ids)]
        with Session(engine) as s, s.begin():
            record(s, items)
        with Session(engine) as s:
            after = {status: s.get(db.Delivery, row_id) for status, row_id in ids.items()}
    finally:
        engine.dispose()
    for waiting in (DeliveryStatus.PENDING, DeliveryStatus.MAYBE_SENT):
        assert after[waiting].status == "sent" and after[waiting].provider_id is not None
        assert after[waiting].sent_at is not None and after[waiting].sent_at.replace(tzinfo=UTC) == answered
    settled = after[DeliveryStatus.FAILED]     # "no-answer" came in first: it stands
    assert settled.status == "failed" and settled.sent_at is None and settled.provider_id is None
