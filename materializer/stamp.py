"""Monotonic batch stamps and the barrier that makes closed windows complete.

ARCHITECTURE.md decisions 1 and 2. A batch's stamp is ``max(now, last + 1µs)``: wall
time when the clock behaves, strictly increasing when it steps back or two batches
land in the same microsecond. The stamp is taken when a batch starts and becomes
visible when it commits, so a reader of ``[from, to)`` must wait for every in-flight
batch stamped before ``to``; :class:`Barrier` is that wait.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]
TICK = timedelta(microseconds=1)


def utc_now() -> datetime:
    """Naive UTC, microsecond precision: the form DuckDB TIMESTAMP columns hold."""
    return datetime.now(UTC).replace(tzinfo=None)


class Stamper:
    """Hands out strictly increasing stamps and tracks which are not yet committed.

    One instance per store; thread-safe, so several materializer threads may share it.
    """

    def __init__(self, last: datetime | None, clock: Clock = utc_now) -> None:
        self._last = last or datetime.min
        self._clock = clock
        self._inflight: dict[int, datetime] = {}
        self._cond = threading.Condition()
        self._ids = iter(range(1, 1 << 62))

    @property
    def last(self) -> datetime:
        return self._last

    def floor(self) -> datetime:
        """The smallest stamp a batch starting now could get."""
        with self._cond:
            return max(self._clock(), self._last + TICK)

    @contextmanager
    def batch(self) -> Iterator[datetime]:
        """Reserve a stamp for one batch; release it when the batch committed or failed."""
        with self._cond:
            stamp = max(self._clock(), self._last + TICK)
            self._last = stamp
            ident = next(self._ids)
            self._inflight[ident] = stamp
        try:
            yield stamp
        finally:
            with self._cond:
                del self._inflight[ident]
                self._cond.notify_all()

    def wait_closed(self, to: datetime, timeout: float) -> bool:
        """Block until no in-flight batch holds a stamp ``< to``; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while any(s < to for s in self._inflight.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True
