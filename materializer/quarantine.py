"""The quarantine: events the line set aside, and putting them back once the cause is fixed.

Decision 8. The materializer writes an entry per rejected event (and per feed, when
one event fails several feeds) with its Kafka coordinates, the reason and the raw key
and value, in the same transaction as the batch, so nothing is dropped silently and
the line never waits for a human.

Retrying re-applies the raw events through the materializer with the mapping and
limits in force now. The retried entries are marked in the same transaction as the
re-applied rows, so a crash can neither apply without marking nor mark without
applying; an event that fails again gets a fresh entry with the new reason. Events
are applied by source position like any other (decision 3): a retried event older
than what a row already holds is superseded, not applied over newer data.

The file has one owner (decision 5): these functions run offline, on a DuckDB file no
``feedstore serve`` has open.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from cdc.records import Record
from materializer import StoreError
from materializer.apply import Materializer
from materializer.stamp import utc_now

RETRY_BATCH = 5_000


@dataclass(frozen=True)
class Entry:
    id: int
    topic: str
    partition: int
    offset: int
    feed: str | None
    reason: str
    quarantined_at: datetime
    retried_at: datetime | None
    key: bytes | None
    value: bytes | None

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"

    def as_json(self, preview: int = 200) -> dict[str, Any]:
        return {
            "id": self.id, "topic": self.topic, "partition": self.partition, "offset": self.offset,
            "feed": self.feed, "reason": self.reason,
            "quarantined_at": self.quarantined_at.isoformat(sep=" "),
            "retried_at": None if self.retried_at is None else self.retried_at.isoformat(sep=" "),
            "key": _text(self.key, preview), "value_bytes": None if self.value is None else len(self.value),
            "value_preview": _text(self.value, preview),
        }


@dataclass(frozen=True)
class Filter:
    """Which entries: by feed, by topic, by id; pending only unless ``include_retried``."""

    feed: str | None = None
    topic: str | None = None
    ids: Sequence[int] = ()
    include_retried: bool = False

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = ["TRUE"]
        params: list[Any] = []
        if not self.include_retried:
            clauses.append("retried_at IS NULL")
        if self.feed is not None:
            clauses.append("feed = ?")
            params.append(self.feed)
        if self.topic is not None:
            clauses.append("topic = ?")
            params.append(self.topic)
        if self.ids:
            clauses.append(f"id IN ({', '.join('?' for _ in self.ids)})")
            params.extend(self.ids)
        return " AND ".join(clauses), params


_COLS = "id, topic, kafka_partition, kafka_offset, feed, reason, quarantined_at, retried_at, key, value"


def entries(cur: duckdb.DuckDBPyConnection, which: Filter = Filter(), limit: int | None = None) -> list[Entry]:
    where, params = which.where()
    sql = f"SELECT {_COLS} FROM fs_quarantine WHERE {where} ORDER BY id"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return [Entry(*row) for row in cur.execute(sql, params).fetchall()]


def counts(cur: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Pending entries per feed (``-`` for events rejected before any feed was involved)."""
    rows = cur.execute("SELECT coalesce(feed, '-'), count(*) FROM fs_quarantine WHERE retried_at IS NULL "
                       "GROUP BY ALL ORDER BY ALL").fetchall()
    return {feed: n for feed, n in rows}


def open_read_only(path: Path) -> duckdb.DuckDBPyConnection:
    """The file for reading, or a clear error when the service holds it."""
    if not path.exists():
        raise StoreError(f"{path} does not exist; set FEEDSTORE_DB or pass --db")
    try:
        return duckdb.connect(str(path), read_only=True)
    except duckdb.Error as ex:
        raise StoreError(busy(path, ex)) from ex


def busy(path: Path, ex: BaseException) -> str:
    return (f"cannot open {path}: {str(ex).strip().splitlines()[0]}. The quarantine commands work on the file "
            "offline: stop `feedstore serve` for this file, run the command, start it again")


@dataclass
class RetryResult:
    events: int = 0  # distinct events re-applied
    entries: int = 0  # quarantine entries marked as retried
    still_failing: int = 0  # events quarantined again (fresh entries with the new reason)
    changed: dict[str, int] = field(default_factory=dict)

    @property
    def applied(self) -> int:
        return self.events - self.still_failing


def retry(materializer: Materializer, which: Filter = Filter(), *, batch: int = RETRY_BATCH) -> RetryResult:
    """Re-apply the selected pending entries with the current mapping; see the module doc."""
    store = materializer.store
    result = RetryResult()
    with store.cursor() as cur:
        chosen = entries(cur, Filter(which.feed, which.topic, which.ids, include_retried=False))
    # One event can have an entry per feed it failed; it is re-applied once, to all feeds.
    events: dict[tuple[str, int, int], Entry] = {}
    for e in chosen:
        events.setdefault((e.topic, e.partition, e.offset), e)
    ordered = [events[k] for k in sorted(events)]
    for part in _chunks(ordered, batch):
        records = [Record(e.topic, e.partition, e.offset, e.key, e.value) for e in part]
        marks = _Marks([(e.topic, e.partition, e.offset) for e in part], since=_max_id(store))
        applied = materializer.apply(records, {}, also=marks)
        result.events += len(records)
        result.entries += marks.marked
        result.still_failing += marks.again
        for feed, n in applied.changed.items():
            result.changed[feed] = result.changed.get(feed, 0) + n
    return result


@dataclass
class _Marks:
    """Runs inside the retry's transaction: counts the events quarantined again (entries
    newer than ``since``) and marks the older entries of the retried events."""

    coords: list[tuple[str, int, int]]
    since: int
    again: int = 0
    marked: int = 0

    def __call__(self, cur: duckdb.DuckDBPyConnection) -> None:
        cur.execute("CREATE OR REPLACE TEMP TABLE fs_retry (topic VARCHAR, p INTEGER, o BIGINT)")
        cur.executemany("INSERT INTO fs_retry VALUES (?, ?, ?)", self.coords)
        join = ("q.topic = r.topic AND q.kafka_partition = r.p AND q.kafka_offset = r.o")
        again = cur.execute(f"SELECT count(DISTINCT (q.topic, q.kafka_partition, q.kafka_offset)) "
                            f"FROM fs_quarantine q JOIN fs_retry r ON {join} WHERE q.id > ?", [self.since]).fetchall()
        marked = cur.execute(f"UPDATE fs_quarantine q SET retried_at = ? FROM fs_retry r WHERE {join} "
                             "AND q.retried_at IS NULL AND q.id <= ?", [utc_now(), self.since]).fetchall()
        self.again = int(again[0][0]) if again else 0
        self.marked = int(marked[0][0]) if marked else 0


def _max_id(store: Any) -> int:
    with store.cursor() as cur:
        rows = cur.execute("SELECT coalesce(max(id), 0) FROM fs_quarantine").fetchall()
    return int(rows[0][0])


def _chunks(items: list[Entry], size: int) -> Iterator[list[Entry]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _text(raw: bytes | None, limit: int) -> str | None:
    if raw is None:
        return None
    text = raw[:limit].decode("utf-8", errors="replace")
    return text + ("…" if len(raw) > limit else "")
