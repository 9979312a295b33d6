"""Pulls yield to ingest: how many may run DuckDB work at once, and how much of the time.

One process does both jobs (decision 5), on few cores. The OS shares the CPU per
thread, so eight request threads each running a DuckDB query would leave the one
materializer thread an eighth of the machine, and a burst of pulls would stall ingest
(and with it freshness and /ready). The gate lets ``slots`` pulls work at once; the
rest wait their turn batch by batch (their clients keep reading what they were sent).
While ingest has a backlog it also caps the pulls' share of wall time: after a pull
step that took ``t``, the gate stays shut for ``t * (1 / share - 1)``. With no backlog
pulls run at full speed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType


class PullGate:
    def __init__(self, slots: int = 1, share: float = 0.5, busy: Callable[[], bool] = lambda: False,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if slots < 1 or not 0 < share <= 1:
            raise ValueError("slots must be >= 1 and share in (0, 1]")
        self.share = share
        self.busy = busy
        self.clock = clock
        self.sleep = sleep
        self._slots = threading.BoundedSemaphore(slots)
        self._reopen_at = 0.0
        self._started = threading.local()

    def __enter__(self) -> PullGate:
        self._slots.acquire()
        wait = self._reopen_at - self.clock()
        if wait > 0 and self.busy():
            self.sleep(wait)
        self._started.at = self.clock()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        try:
            now = self.clock()
            if self.share < 1 and self.busy():
                self._reopen_at = now + (now - self._started.at) * (1 / self.share - 1)
        finally:
            self._slots.release()
