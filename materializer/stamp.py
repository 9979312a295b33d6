"""Monotonic batch stamps and the barrier that makes closed windows complete.

ARCHITECTURE.md decisions 1 and 2. A batch's stamp is ``max(now, last + 1µs)``: wall
time when the clock behaves, strictly increasing when it steps back or two batches
land in the same microsecond. The stamp is taken when a batch starts and becomes
visible when it commits, so a reader of ``[from, to)`` must wait for every in-flight
batch stamped before ``to``.

Waiting is not enough on its own when the wall clock steps back: a window that was
closed by the clock (``to <= now``) would receive stamps ``< to`` again once the clock
reads earlier. So closing a window also raises the stamp floor to ``to``
(:meth:`Stamper.close`): from then on every stamp is ``>= to``, whatever the clock
says. The store persists that floor, so it survives a restart too.
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
    ``last`` is the highest stamp ever handed out or promised to a reader (restored from
    the store on start).
    """

    def __init__(self, last: datetime | None, clock: Clock = utc_now) -> None:
        self._last = last or datetime.min
        self._closed = datetime.min
        self._clock = clock
        self._inflight: dict[int, datetime] = {}
        self._cond = threading.Condition()
        self._ids = iter(range(1, 1 << 62))

    @property
    def last(self) -> datetime:
        return self._last

    @property
    def closed(self) -> datetime:
        """The end of the latest window closed by :meth:`close`; no stamp will be below it."""
        return self._closed

    def floor(self) -> datetime:
        """The smallest stamp a batch starting now could get."""
        with self._cond:
            return max(self._clock(), self._last + TICK)

    def raise_to(self, last: datetime) -> None:
        """Never hand out a stamp ``<= last`` (a reopened store may know a higher one)."""
        with self._cond:
            self._last = max(self._last, last)

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

    def close(self, end: datetime, timeout: float) -> bool:
        """Make ``[.., end)`` final before a reader serves it; False if that takes too long.

        A window still open by the clock (``end`` above the floor) is left alone: it is
        answered with what is there now. A closed one is fenced (later stamps are
        ``>= end``) and then waited for: every in-flight batch stamped ``< end`` must
        finish first.
        """
        with self._cond:
            if end > max(self._clock(), self._last + TICK):
                return True
            if end - TICK > self._last:
                self._last = end - TICK
            self._closed = max(self._closed, end)
        return self.wait_closed(end, timeout)

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
