"""A pull simulator that behaves like InTarget, on a compressed clock.

InTarget pulls every feed once per period for the period that has just closed
(``GET /api/<feed>?from=07:00:00&to=08:00:00`` at 08:00:01), sometimes with a delay
offset ("the previous minute, minus 2 minutes"), and saves what it gets. Here the
period is a parameter (``window`` seconds stand in for a minute or an hour), the
windows are the same half-open, contiguous, clock-aligned ``[from, to)`` in whole UTC
seconds, and a failed pull (connection refused while the server is down, 503 while
a batch is in flight or the store reopens) is retried until it succeeds, as a CRM that
must not skip a window would. Everything pulled is kept (:class:`Pull`) for
``tests/pullcheck.py`` to judge.

Rows are kept as text, normalized the same way for CSV and JSON (:func:`norm`): the
CSV form the spec prefers is what the simulator normally asks for.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import math
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

Row = dict[str, str]
FAR_PAST = datetime(2000, 1, 1)
FAR_FUTURE = datetime(2100, 1, 1)


def norm(value: Any) -> str:
    """One text form for a value from CSV or JSON: NULL and "" alike, booleans and
    arrays as the CSV writes them, numbers as their literal digits."""
    if value is None:
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(norm(v) for v in value)
    return str(value)


def parse_rows(body: bytes, fmt: str) -> list[Row]:
    if fmt == "csv":
        return [{k: norm(v) for k, v in r.items()} for r in csv.DictReader(io.StringIO(body.decode()))]
    # Numbers stay their literal text, so decimals compare digit for digit with the CSV.
    data = json.loads(body, parse_float=str, parse_int=str)
    return [{k: norm(v) for k, v in r.items()} for r in data]


def stamp_text(ts: datetime) -> str:
    return f"{ts:%Y-%m-%d %H:%M:%S}"


def epoch(ts: datetime) -> float:
    """Naive UTC as seconds since the epoch (the clock of time.time())."""
    return ts.replace(tzinfo=UTC).timestamp()


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Pull:
    """One successful pull: the window, when it was asked and answered, the rows."""

    sim: str
    feed: str
    start: datetime
    end: datetime
    asked_at: float  # time.time() of the first attempt
    answered_at: float  # time.time() when the successful response was complete
    attempts: int
    rows: tuple[Row, ...]


class Client:
    """GET over HTTP with the failures a CRM meets turned into ``None``."""

    def __init__(self, base_url: str, timeout: float = 30) -> None:
        self.base_url = base_url
        self.timeout = timeout

    def get(self, path: str, **params: str) -> tuple[int, bytes] | None:
        query = urllib.parse.urlencode(params, quote_via=urllib.parse.quote)
        try:
            with urllib.request.urlopen(f"{self.base_url}{path}?{query}", timeout=self.timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except (OSError, http.client.HTTPException):  # refused, reset, truncated while the server is killed
            return None

    def window(self, feed: str, start: datetime, end: datetime, fmt: str) -> list[Row] | None:
        got = self.get(f"/api/{feed}", **{"from": stamp_text(start), "to": stamp_text(end), "format": fmt})
        if got is None or got[0] != 200:
            return None
        try:
            return parse_rows(got[1], fmt)
        except (ValueError, csv.Error):  # a response cut short when the server died mid-stream
            return None

    def everything(self, feed: str) -> list[Row]:
        """The whole feed as the store holds it now (a window reaching into the future)."""
        while True:
            rows = self.window(feed, FAR_PAST, FAR_FUTURE, "json")
            if rows is not None:
                return rows
            time.sleep(0.2)


@dataclass
class PullSimulator:
    """Pulls ``[e - window, e)`` for every feed at ``e + delay + after``, e on the window grid.

    ``start()`` begins with the window that contains now; ``finish(t)`` lets it run
    until it has pulled every window that ends at or after ``t``, then it stops.
    """

    base_url: str
    feeds: Sequence[str]
    name: str = "minute"
    window: int = 1  # seconds; stands in for a minute (or an hour)
    delay: int = 0  # seconds; "the minute ending two minutes ago" is delay = 2 * window
    after: float = 0.05  # the pull comes just after the boundary, like InTarget's 08:00:01
    fmt: str = "csv"
    pulls: list[Pull] = field(default_factory=list)
    retries: int = 0
    _until: float | None = None
    _abort: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> PullSimulator:
        now = time.time()
        self.first_end = math.floor(now / self.window) * self.window + self.window - self.delay
        self._thread = threading.Thread(target=self._run, name=f"pullsim-{self.name}", daemon=True)
        self._thread.start()
        return self

    @property
    def covers_from(self) -> datetime:
        """Every stamp at or after this instant falls in some window this simulator pulls."""
        return from_epoch(self.first_end - self.window)

    def finish(self, until: float, timeout: float = 120) -> list[Pull]:
        self._until = until
        assert self._thread is not None
        self._thread.join(timeout + self.window + self.delay)
        if self._thread.is_alive():
            self._abort.set()
            raise AssertionError(f"simulator {self.name} did not finish its windows in time")
        return self.pulls

    def abort(self) -> None:
        self._abort.set()

    def _run(self) -> None:
        client = Client(self.base_url)
        end = self.first_end
        while not self._abort.is_set():
            if self._until is not None and end - self.window >= self._until:
                return
            due = end + self.delay + self.after
            if self._abort.wait(max(0.0, due - time.time())):
                return
            start_dt, end_dt = from_epoch(end - self.window), from_epoch(end)
            for feed in self.feeds:
                self._pull(client, feed, start_dt, end_dt)
            end += self.window

    def _pull(self, client: Client, feed: str, start: datetime, end: datetime) -> None:
        asked, attempts = time.time(), 0
        while not self._abort.is_set():
            attempts += 1
            rows = client.window(feed, start, end, self.fmt)
            if rows is not None:
                self.pulls.append(Pull(self.name, feed, start, end, asked, time.time(), attempts, tuple(rows)))
                return
            self.retries += 1
            self._abort.wait(0.2)


def windows(pulls: Iterable[Pull], feed: str) -> list[Pull]:
    return sorted((p for p in pulls if p.feed == feed), key=lambda p: p.start)


def span(pulls: Sequence[Pull]) -> timedelta:
    return max(p.end for p in pulls) - min(p.start for p in pulls) if pulls else timedelta(0)
