"""The DuckDB file: feed tables, stamps, Kafka offsets and quarantine, in one place.

One process owns the file (ARCHITECTURE.md decision 5). The materializer writes through
one cursor; every API request reads through a cursor of its own and sees a committed
snapshot, so a pull never observes half a batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from materializer import StoreError
from materializer.mapping import Mapping
from materializer.stamp import TICK, Clock, Stamper, utc_now
from schemas import Feed

log = logging.getLogger("feedstore.store")

SQL_TYPES = {
    "string": "VARCHAR",
    "integer": "BIGINT",
    "decimal": "DECIMAL(38,8)",
    "float": "DOUBLE",
    "boolean": "BOOLEAN",
    "flag": "SMALLINT",
    "timestamp": "TIMESTAMP",
    "date": "DATE",
    "array": "VARCHAR[]",
}

# Feedstore's own columns on every feed table, after the spec's fields.
POS = "_fs_pos"  # source position of the last applied event (LSN), decision 3
HASH = "_fs_hash"  # hash of the feed-visible content: "did it change?" without reading every column

_DDL = """
CREATE TABLE IF NOT EXISTS fs_meta (name VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS fs_offsets (
    topic VARCHAR, kafka_partition INTEGER, next_offset BIGINT, updated_at TIMESTAMP,
    PRIMARY KEY (topic, kafka_partition));
CREATE SEQUENCE IF NOT EXISTS fs_quarantine_id;
CREATE TABLE IF NOT EXISTS fs_quarantine (
    id BIGINT PRIMARY KEY DEFAULT nextval('fs_quarantine_id'),
    topic VARCHAR, kafka_partition INTEGER, kafka_offset BIGINT,
    reason VARCHAR, feed VARCHAR, key BLOB, value BLOB, quarantined_at TIMESTAMP,
    retried_at TIMESTAMP);
-- Optional feed fields whose mapped value was invalid and was emitted empty
-- (materializer/validate.py); one row per feed, field and reason, counted.
CREATE TABLE IF NOT EXISTS fs_field_errors (
    feed VARCHAR, field VARCHAR, reason VARCHAR, count BIGINT, example VARCHAR,
    first_seen TIMESTAMP, last_seen TIMESTAMP, PRIMARY KEY (feed, field, reason));
"""


# DuckDB's default is 16 MB. A checkpoint rewrites every row group a batch changed, and
# the casino writer's session updates reach all of them: each costs ~0.3 s whether 2 or
# 8 batches of changes wait in the WAL, so on bench/casino.py 16 MB checkpointed every
# second batch (5.2 µs an event) and 64 MB every sixth (2.5 µs). The price: up to 64 MB
# of WAL replayed when the service starts after a crash, a second or two.
CHECKPOINT_THRESHOLD = "64MB"

# DuckDB scans a table in parallel by row groups of this many rows. With
# FEEDSTORE_DUCKDB_THREADS=0 the store runs as many DuckDB threads as its largest table
# has row groups, up to DuckDB's default (one per core): below that a worker has nothing
# of its own to scan, and with the Kafka fetch and the decoding sharing the cores, the
# writer waited on a descheduled worker instead (bench/ingest.py on 2 cores, empty store:
# ~9% more events/s with one thread; at 1M rows the same either way, at 10M two threads
# ingest 1.5x one thread's rate).
ROW_GROUP = 122_880
FIT_EVERY_S = 10.0  # how often the writer looks at the table sizes again


def threads_for(rows: int, ceiling: int) -> int:
    """DuckDB threads for a store whose largest table has ``rows`` rows (auto mode)."""
    return max(1, min(ceiling, -(-rows // ROW_GROUP)))


def table_name(feed: Feed) -> str:
    return f"feed_{feed.name}"


def q(name: str) -> str:
    """Quote an identifier: spec field names are plain, source column names may not be."""
    return '"' + name.replace('"', '""') + '"'


class Store:
    """Owns the DuckDB connection and the stamper; hands out cursors.

    DuckDB invalidates a database after a fatal write error (a failed checkpoint on a
    full disk: "database has been invalidated ... must be restarted"). The store then
    stays unusable until :meth:`recover` reopens the file, which the service calls when
    a batch fails; meanwhile readers get :class:`StoreError` (the API answers 503).
    """

    def __init__(self, path: Path | str, mapping: Mapping, *, clock: Clock = utc_now, threads: int = 0) -> None:
        self.path = Path(path)
        self.mapping = mapping
        self.threads = threads  # DuckDB's threads; 0: fitted to the store (threads_for), at most one per core
        self._ceiling = 1  # DuckDB's own default, read when the file is opened
        self._fitted_at = 0.0
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.Lock()
        self._swap = threading.Lock()
        self._closed = False  # closed on purpose: never reopened behind the owner's back
        self.reopened = 0
        self._db: duckdb.DuckDBPyConnection | None = self._connect()
        floor, self._closed_saved = self._prepare()
        self.stamper = Stamper(floor, clock)

    def _connect(self) -> duckdb.DuckDBPyConnection:
        try:
            config: dict[str, str | bool | int | float | list[str]] = {"checkpoint_threshold": CHECKPOINT_THRESHOLD}
            if self.threads:
                config["threads"] = self.threads
            db = duckdb.connect(str(self.path), config=config)
            if not self.threads:
                self._ceiling = int(scalar(db, "SELECT current_setting('threads')"))
            return db
        except duckdb.IOException as ex:
            raise StoreError(
                f"cannot open {self.path}: {ex}. Only one process may own a DuckDB file: stop the other "
                "`feedstore serve`, or give this instance its own FEEDSTORE_DB") from ex
        except duckdb.Error as ex:
            raise StoreError(f"cannot open {self.path}: {ex}") from ex

    def _prepare(self) -> tuple[datetime | None, datetime]:
        """Create what is missing; return the stamp floor and the last saved closed window."""
        mapping = self.mapping
        with self.cursor() as cur:
            cur.execute(_DDL)
            for fm in mapping.feeds.values():
                cur.execute(_feed_ddl(fm.feed))
                # Fields added to a mapping later (custom fields) on a store made before.
                have = {r[0] for r in cur.execute("SELECT column_name FROM information_schema.columns "
                                                  "WHERE table_name = ?", [table_name(fm.feed)]).fetchall()}
                for f in fm.feed.fields:
                    if f.name not in have:
                        cur.execute(f"ALTER TABLE {table_name(fm.feed)} ADD COLUMN {q(f.name)} {SQL_TYPES[f.type]}")
            meta = dict(cur.execute(
                "SELECT name, value FROM fs_meta WHERE name IN ('last_stamp', 'closed_until')").fetchall())
            self._fit_threads(cur)
        last = datetime.fromisoformat(meta["last_stamp"]) if "last_stamp" in meta else None
        closed = datetime.fromisoformat(meta["closed_until"]) if "closed_until" in meta else datetime.min
        if closed > datetime.min and (last is None or closed - TICK > last):
            last = closed - TICK  # a window was served as closed: no stamp may land in it again
        return last, closed

    @contextmanager
    def cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        db = self._db
        if db is None:
            raise StoreError(f"{self.path} is being reopened after a write failure; retry shortly")
        try:
            cur = db.cursor()
        except duckdb.Error as ex:
            raise StoreError(f"{self.path} cannot be read: {ex}") from ex
        try:
            yield cur
        except (duckdb.FatalException, duckdb.ConnectionException) as ex:
            # Invalidated by a failed write, or closed by a reopen under this reader: a
            # retryable condition for the caller (the API answers 503), not a bug.
            raise StoreError(f"{self.path} is being reopened after a write failure; retry shortly "
                             f"({str(ex).strip().splitlines()[0]})") from ex
        finally:
            with suppress(duckdb.Error):
                cur.close()

    @contextmanager
    def writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The single write path: one writer at a time, one transaction per batch."""
        with self._write_lock, self.cursor() as cur:
            yield cur
            if not self.threads and time.monotonic() - self._fitted_at >= FIT_EVERY_S:
                try:
                    self._fit_threads(cur)
                except duckdb.Error as ex:  # a tuning step: the batch is stored, so it must not fail it
                    log.warning("fitting duckdb threads failed", extra={"error": str(ex)})

    def fit_threads(self) -> int:
        """Fit DuckDB's threads to the tables now (auto mode; the writer does it every
        FIT_EVERY_S) and return how many it runs."""
        with self.writer() as cur:
            return self._fit_threads(cur)

    def _fit_threads(self, cur: duckdb.DuckDBPyConnection) -> int:
        """The fit itself; returns the threads DuckDB runs now."""
        now = int(scalar(cur, "SELECT current_setting('threads')"))
        if self.threads:
            return now  # as configured when the file was opened
        self._fitted_at = time.monotonic()
        rows = int(scalar(cur, "SELECT coalesce(max(estimated_size), 0) FROM duckdb_tables() WHERE NOT temporary"))
        want = threads_for(rows, self._ceiling)
        if want != now:
            cur.execute(f"SET threads = {want}")
            log.info("duckdb threads fitted to the store", extra={"threads": want, "largest_table_rows": rows})
        return want

    def close_window(self, end: datetime, timeout: float) -> bool:
        """Make ``[.., end)`` final before it is served (decision 2); False on timeout.

        The fence is saved in the file as well, so a restart on a clock that reads
        earlier cannot stamp into a window that was already served.
        """
        if not self.stamper.close(end, timeout):
            return False
        closed = self.stamper.closed
        if closed > self._closed_saved:
            self._save_closed(closed, timeout)
        return True

    def _save_closed(self, closed: datetime, timeout: float) -> None:
        if not self._write_lock.acquire(timeout=timeout):
            return  # a batch is committing; it stamps >= closed and so saves a higher floor
        failed: Exception | None = None
        try:
            with self.cursor() as cur:
                cur.execute("INSERT OR REPLACE INTO fs_meta VALUES ('closed_until', ?)", [closed.isoformat()])
            self._closed_saved = max(self._closed_saved, closed)
        except (duckdb.Error, StoreError) as ex:
            # The fence still holds in memory; only a restart on a clock stepped back
            # before the next successful write could break it. Serving goes on.
            log.warning("could not save the closed-window fence", extra={"error": str(ex), "db": str(self.path)})
            failed = ex
        finally:
            self._write_lock.release()
        if failed is not None:  # this commit's checkpoint may have invalidated the file: reopen it
            with suppress(StoreError):
                self.recover()

    def healthy(self) -> str | None:
        """None when the file answers; else DuckDB's reason (e.g. invalidated after a fatal error)."""
        try:
            with self.cursor() as cur:
                cur.execute("SELECT 1").fetchall()
        except (duckdb.Error, StoreError) as ex:
            return str(ex).strip().splitlines()[0]
        return None

    def recover(self) -> bool:
        """Reopen the file if DuckDB invalidated it; True when it was reopened.

        Waits for the writer, closes the old connection (readers still on it fail and
        their clients retry), opens the file again (DuckDB replays its WAL) and raises
        the stamp floor to what the file holds, never lowering it.
        """
        with self._swap:
            if self._closed:
                return False
            reason = self.healthy()
            if reason is None or (self._db is not None and not _invalidated(reason)):
                return False
            with self._write_lock:
                old, self._db = self._db, None
                if old is not None:
                    with suppress(duckdb.Error):
                        old.close()
                self._db = self._connect()
                try:
                    floor, closed = self._prepare()
                except (duckdb.Error, StoreError) as ex:
                    db, self._db = self._db, None
                    with suppress(duckdb.Error):
                        db.close()
                    raise StoreError(f"reopening {self.path} failed: {ex}; retried with the next batch") from ex
            self._closed_saved = max(self._closed_saved, closed)
            if floor is not None:
                self.stamper.raise_to(floor)
            self.reopened += 1
            log.warning("store reopened after a fatal DuckDB error", extra={"db": str(self.path), "cause": reason})
            return True

    def offsets(self) -> dict[tuple[str, int], int]:
        with self.cursor() as cur:
            rows = cur.execute("SELECT topic, kafka_partition, next_offset FROM fs_offsets").fetchall()
        return {(t, p): o for t, p, o in rows}

    def feed(self, name: str) -> Feed:
        return self.mapping.feeds[name].feed

    def row_counts(self) -> dict[str, int]:
        with self.cursor() as cur:
            return {name: scalar(cur, f"SELECT count(*) FROM {table_name(fm.feed)}")
                    for name, fm in self.mapping.feeds.items()}

    def close(self) -> None:
        self._closed = True
        db, self._db = self._db, None
        if db is not None:
            db.close()


def _invalidated(reason: str) -> bool:
    """DuckDB's words for "this database instance is gone; open the file again"."""
    return "invalidated" in reason or "FATAL" in reason


def arrow_reader(cur: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any],
                 rows: int) -> pa.RecordBatchReader:
    """A query's result as Arrow batches of ``rows``, streamed, not materialized.

    Through a relation (``cur.sql``), not ``execute``: DuckDB copies DB-API results once
    more before handing them to Arrow.
    """
    return cur.sql(sql, params=params).to_arrow_reader(rows)


def save_offsets(cur: duckdb.DuckDBPyConnection, offsets: dict[tuple[str, int], int]) -> None:
    """Store the next offset to read per partition, in the caller's transaction.

    One statement over lists rather than ``executemany``, which DuckDB runs as one
    prepared statement per row: ~6 ms per batch of four partitions, now ~0.5 ms.
    """
    if offsets:
        cur.execute("INSERT OR REPLACE INTO fs_offsets SELECT unnest($1), unnest($2), unnest($3), $4",
                    [[t for t, _ in offsets], [p for _, p in offsets], list(offsets.values()), utc_now()])


def scalar(cur: duckdb.DuckDBPyConnection, sql: str, params: object = None) -> Any:
    """The single value a query returns (counts, stamps); a missing row is a bug, not data.

    Fetched to the end, not with ``fetchone``: DuckDB keeps a SELECT's result open until a
    fetch finds no more rows, and an open result makes the cursor's next ``register``
    fail ("connection has an unfinished result"), the same way on every retry of a batch.
    """
    rows = cur.execute(sql, params).fetchall()
    assert len(rows) == 1, sql
    return rows[0][0]


def _feed_ddl(feed: Feed) -> str:
    # No PRIMARY KEY: DuckDB's ART index turns every batch commit on a 1M-row table
    # into seconds (measured ~15 s vs ~0.02 s for 20k upserts); the key is kept unique
    # by the writer (delete + insert of the batch's changed keys, materializer/apply.py).
    cols = [f"{q(f.name)} {SQL_TYPES[f.type]}" for f in feed.fields]
    cols += [f"{POS} BIGINT", f"{HASH} UBIGINT"]
    return f"CREATE TABLE IF NOT EXISTS {table_name(feed)} ({', '.join(cols)})"
