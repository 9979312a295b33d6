"""PullGate: pulls take turns, and yield time to ingest while it has a backlog (pure)."""

from __future__ import annotations

import threading

import falcon.testing
import pytest

from api.app import create_app
from api.gate import PullGate


class Time:
    """A clock and a sleep that only move when told: the gate's waits become visible."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def work(gate: PullGate, t: Time, seconds: float) -> None:
    with gate:
        t.now += seconds


def test_with_a_backlog_pulls_get_their_share_of_the_time() -> None:
    t = Time()
    gate = PullGate(share=0.25, busy=lambda: True, clock=t.clock, sleep=t.sleep)
    work(gate, t, 0.1)
    work(gate, t, 0.1)  # must wait 0.1 * (1 / 0.25 - 1) = 0.3 s first
    assert t.slept == [0.3]


def test_without_a_backlog_pulls_run_at_full_speed() -> None:
    t = Time()
    gate = PullGate(share=0.25, busy=lambda: False, clock=t.clock, sleep=t.sleep)
    for _ in range(3):
        work(gate, t, 0.1)
    assert t.slept == []


def test_the_wait_is_skipped_once_the_backlog_is_gone() -> None:
    t, backlog = Time(), [True]
    gate = PullGate(share=0.5, busy=lambda: backlog[0], clock=t.clock, sleep=t.sleep)
    work(gate, t, 0.2)
    backlog[0] = False
    work(gate, t, 0.2)
    assert t.slept == []


def test_only_slots_pulls_work_at_once() -> None:
    gate = PullGate(slots=2)
    inside, peak, lock = [0], [0], threading.Lock()
    release = threading.Event()

    def pull() -> None:
        with gate:
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            release.wait(0.05)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=pull) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(5)
    assert peak[0] == 2


def test_an_error_inside_still_frees_the_slot() -> None:
    gate = PullGate(slots=1)
    with pytest.raises(RuntimeError), gate:
        raise RuntimeError("duckdb went away")
    with gate:  # would block forever if the slot had leaked
        pass


@pytest.mark.parametrize(("slots", "share"), [(0, 0.5), (1, 0.0), (1, 1.5)])
def test_nonsense_settings_are_refused(slots: int, share: float) -> None:
    with pytest.raises(ValueError, match="slots"):
        PullGate(slots=slots, share=share)


def test_a_gated_pull_under_backlog_returns_the_same_bytes(store, materializer, events) -> None:
    """The app's gate changes when DuckDB works, never what a pull returns."""
    materializer.apply([events.record("c", None, events.user(i)) for i in range(1, 30)], {})
    query = "from=2025-03-01+11:00:00&to=2025-03-01+13:00:00"
    free = falcon.testing.TestClient(create_app(store)).simulate_get("/api/players", query_string=query)
    gated_app = create_app(store, pull_concurrency=1, pull_share=0.5, lag=lambda: {("t", 0): 5_000})
    gated = falcon.testing.TestClient(gated_app).simulate_get("/api/players", query_string=query)
    assert gated.status_code == free.status_code == 200
    assert gated.content == free.content
    assert gated.text.count("\n") == 30  # header + 29 users
