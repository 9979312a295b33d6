"""Stamps never decrease, closed windows stay closed (clock steps, restarts), the barrier holds readers."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from materializer.apply import Materializer
from materializer.mapping import Mapping
from materializer.stamp import TICK, Stamper
from materializer.store import Store
from tests.fix_store import Events, ManualClock


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


# -- closing a window fences it, also when the clock steps back -------------------------

def test_closing_a_window_fences_it_against_a_clock_that_steps_back() -> None:
    clock = ManualClock(datetime(2025, 1, 1, 12, 0, 10))
    stamper = Stamper(datetime(2025, 1, 1, 12, 0, 9), clock)
    end = datetime(2025, 1, 1, 12, 0, 10)
    assert stamper.close(end, timeout=0.1) is True  # [.., 12:00:10) is served now
    clock.now = datetime(2025, 1, 1, 12, 0, 5)  # NTP steps the clock back 5 s
    with stamper.batch() as s:
        pass
    assert s >= end  # without the fence it would be 12:00:09.000001, inside the served window
    assert stamper.closed == end


def test_a_window_still_open_by_the_clock_is_not_fenced() -> None:
    clock = ManualClock(datetime(2025, 1, 1, 12))
    stamper = Stamper(None, clock)
    assert stamper.close(datetime(2025, 1, 1, 13), timeout=0.1) is True  # reaches into the future
    with stamper.batch() as s:
        pass
    assert s == datetime(2025, 1, 1, 12)  # wall time, not pushed to the window's end
    assert stamper.closed == datetime.min


def test_close_waits_for_a_batch_stamped_inside_the_window() -> None:
    clock = ManualClock(datetime(2025, 1, 1, 12))
    stamper = Stamper(None, clock)
    entered, release = threading.Event(), threading.Event()

    def writer() -> None:
        with stamper.batch():
            entered.set()
            release.wait(5)

    t = threading.Thread(target=writer)
    t.start()
    entered.wait(5)
    clock.advance(seconds=2)
    assert stamper.close(datetime(2025, 1, 1, 12, 0, 1), timeout=0.05) is False
    release.set()
    t.join()
    assert stamper.close(datetime(2025, 1, 1, 12, 0, 1), timeout=1) is True


@st.composite
def _steps(draw: st.DrawFn) -> list[tuple[str, int]]:
    ops = st.one_of(st.tuples(st.just("clock"), st.integers(-5_000_000, 5_000_000)),
                    st.tuples(st.just("batch"), st.just(0)),
                    st.tuples(st.just("close"), st.integers(-3_000_000, 3_000_000)))
    return draw(st.lists(ops, min_size=1, max_size=60))


@settings(max_examples=200, deadline=None)
@given(_steps())
def test_stamps_increase_and_never_enter_a_closed_window(steps: list[tuple[str, int]]) -> None:
    """Any interleaving of clock jumps (back and forth), batches and closed windows."""
    clock = ManualClock(datetime(2025, 1, 1, 12))
    stamper = Stamper(None, clock)
    stamps: list[datetime] = []
    fence = datetime.min
    for op, arg in steps:
        if op == "clock":
            clock.advance(microseconds=arg)
        elif op == "batch":
            with stamper.batch() as s:
                stamps.append(s)
            assert s >= fence
        else:
            end = clock.now + timedelta(microseconds=arg)
            if end <= stamper.floor():
                fence = max(fence, end)
            assert stamper.close(end, timeout=0.01)
    assert all(a < b for a, b in itertools.pairwise(stamps))


# -- across restarts: the store keeps the stamp floor and the fence ----------------------

def test_stamps_continue_above_the_stored_ones_after_a_restart_on_an_earlier_clock(
        tmp_path: Path, mapping: Mapping, events: Events) -> None:
    clock = ManualClock(datetime(2025, 3, 1, 12))
    store = Store(tmp_path / "s.duckdb", mapping, clock=clock)
    first = Materializer(store).apply([events.record("c", None, events.user(1))], {}).stamp
    store.close()
    clock.now = datetime(2025, 3, 1, 11)  # restarted on a clock an hour behind
    store = Store(tmp_path / "s.duckdb", mapping, clock=clock)
    second = Materializer(store).apply([events.record("u", None, events.user(1, city="Mdina"))], {}).stamp
    store.close()
    assert first is not None and second is not None
    assert second > first


def test_a_served_window_stays_closed_across_a_restart_on_an_earlier_clock(
        tmp_path: Path, mapping: Mapping, events: Events) -> None:
    clock = ManualClock(datetime(2025, 3, 1, 12, 0, 0, 500_000))
    store = Store(tmp_path / "s.duckdb", mapping, clock=clock)
    Materializer(store).apply([events.record("c", None, events.user(1))], {})
    clock.advance(seconds=30)
    end = datetime(2025, 3, 1, 12, 0, 30)
    assert store.close_window(end, timeout=0.1)  # the CRM pulled [12:00:00, 12:00:30)
    store.close()  # crash or restart before any further batch
    clock.now = datetime(2025, 3, 1, 12, 0, 1)  # and the clock came back 29 s earlier
    store = Store(tmp_path / "s.duckdb", mapping, clock=clock)
    stamp = Materializer(store).apply([events.record("u", None, events.user(1, city="Mdina"))], {}).stamp
    store.close()
    assert stamp is not None and stamp >= end
