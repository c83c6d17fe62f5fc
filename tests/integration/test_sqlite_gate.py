"""SQLite's urgent-writer gate: the normal lane starts no batch while the fast lane or an alert waits."""

from __future__ import annotations

import threading
import time

from sqlalchemy import create_engine

from worker.adapters import engines


def test_the_normal_lane_waits_while_an_urgent_write_is_on_and_goes_when_it_ends(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'gate.db'}")
    order: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def urgent_writer() -> None:
        with engines.urgent(engine):
            inside.set()
            release.wait(5)
            order.append("urgent done")

    t = threading.Thread(target=urgent_writer)
    t.start()
    assert inside.wait(5)
    waiter = threading.Thread(target=lambda: (engines.yield_to_urgent(engine), order.append("normal batch")))
    waiter.start()
    time.sleep(0.2)
    assert order == []                      # still held back
    release.set()
    t.join(5)
    waiter.join(5)
    assert order == ["urgent done", "normal batch"]


def test_urgent_writers_do_not_hold_each_other_up(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'gate.db'}")
    entered = threading.Event()

    def second() -> None:
        with engines.urgent(engine):
            entered.set()

    with engines.urgent(engine):
        t = threading.Thread(target=second)
        t.start()
        assert entered.wait(2)              # got in while the first is still inside
    t.join(2)


def test_with_no_urgent_write_the_normal_lane_does_not_wait(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'gate.db'}")
    assert engines.yield_to_urgent(engine) < 0.05


def test_the_normal_lane_is_never_held_longer_than_the_gate_allows(tmp_path, monkeypatch):
    monkeypatch.setattr(engines, "GATE_WAIT", 0.3)
    engine = create_engine(f"sqlite:///{tmp_path / 'gate.db'}")
    with engines.urgent(engine):                 # an urgent writer that never finishes
        waited = engines.yield_to_urgent(engine)
    assert 0.3 <= waited < 1.0


def test_no_gate_off_sqlite_files():
    assert engines._gate_path(create_engine("sqlite://")) is None
    assert engines._gate_path(create_engine("postgresql+psycopg://root@127.0.0.1:5432/test")) is None
