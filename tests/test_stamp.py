"""Stamps never decrease and the barrier holds readers until earlier stamps commit."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

from materializer.stamp import TICK, Stamper
from tests.fix_store import ManualClock


def test_stamps_follow_the_clock_and_never_repeat() -> None:
    clock = ManualClock(datetime(2025, 1, 1))
    stamper = Stamper(None, clock)
    with stamper.batch() as a:
        pass
    with stamper.batch() as b:  # same instant: one microsecond later
        pass
    clock.advance(seconds=5)
    with stamper.batch() as c:
        pass
    assert a == datetime(2025, 1, 1)
    assert b == a + TICK
    assert c == datetime(2025, 1, 1, 0, 0, 5)


def test_clock_stepping_back_does_not_move_stamps_back() -> None:
    clock = ManualClock(datetime(2025, 1, 1, 12))
    stamper = Stamper(datetime(2025, 1, 1, 12, 30), clock)  # restored from the store
    with stamper.batch() as s:
        pass
    assert s == datetime(2025, 1, 1, 12, 30) + TICK
    assert stamper.floor() == s + TICK


def test_barrier_waits_for_inflight_batch_before_window_end() -> None:
    clock = ManualClock(datetime(2025, 1, 1, 12))
    stamper = Stamper(None, clock)
    end = datetime(2025, 1, 1, 12, 0, 1)
    released = threading.Event()

    def writer() -> None:
        with stamper.batch():
            released.wait(5)

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(0.05)
    assert stamper.wait_closed(end, timeout=0.1) is False  # stamp 12:00:00 < end, not committed
    assert stamper.wait_closed(datetime(2025, 1, 1, 12), timeout=0.1) is True  # window ends at the stamp
    threading.Timer(0.1, released.set).start()
    assert stamper.wait_closed(end, timeout=5) is True
    t.join()


def test_floor_is_monotonic_under_threads() -> None:
    clock = ManualClock(datetime(2025, 1, 1))
    stamper = Stamper(None, clock)
    seen: list[datetime] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(200):
            with stamper.batch() as s, lock:
                seen.append(s)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 800
    assert max(seen) == datetime(2025, 1, 1) + timedelta(microseconds=799)
