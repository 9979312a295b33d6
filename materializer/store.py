"""The DuckDB file: feed tables, stamps, Kafka offsets and quarantine, in one place.

One process owns the file (ARCHITECTURE.md decision 5). The materializer writes through
one cursor; every API request reads through a cursor of its own and sees a committed
snapshot, so a pull never observes half a batch.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from materializer import StoreError
from materializer.mapping import Mapping
from materializer.stamp import Clock, Stamper, utc_now
from schemas import Feed

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
"""


def table_name(feed: Feed) -> str:
    return f"feed_{feed.name}"


def q(name: str) -> str:
    """Quote an identifier: spec field names are plain, source column names may not be."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime


class Store:
    """Owns the DuckDB connection and the stamper; hands out cursors."""

    def __init__(self, path: Path | str, mapping: Mapping, *, clock: Clock = utc_now) -> None:
        self.path = Path(path)
        self.mapping = mapping
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = duckdb.connect(str(path))
        except duckdb.IOException as ex:
            raise StoreError(
                f"cannot open {path}: {ex}. Only one process may own a DuckDB file: stop the other "
                "`feedstore serve`, or give this instance its own FEEDSTORE_DB") from ex
        self._write_lock = threading.Lock()
        with self.cursor() as cur:
            cur.execute(_DDL)
            for fm in mapping.feeds.values():
                cur.execute(_feed_ddl(fm.feed))
            row = cur.execute("SELECT value FROM fs_meta WHERE name = 'last_stamp'").fetchone()
        last = datetime.fromisoformat(row[0]) if row else None
        self.stamper = Stamper(last, clock)

    @contextmanager
    def cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        cur = self._db.cursor()
        try:
            yield cur
        finally:
            cur.close()

    @contextmanager
    def writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The single write path: one writer at a time, one transaction per batch."""
        with self._write_lock, self.cursor() as cur:
            yield cur

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
        self._db.close()


def arrow_reader(cur: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any],
                 rows: int) -> pa.RecordBatchReader:
    """A query's result as Arrow batches of ``rows``, streamed, not materialized.

    Through a relation (``cur.sql``), not ``execute``: DuckDB copies DB-API results once
    more before handing them to Arrow.
    """
    return cur.sql(sql, params=params).to_arrow_reader(rows)


def scalar(cur: duckdb.DuckDBPyConnection, sql: str, params: object = None) -> Any:
    """The single value a query returns (counts, stamps); a missing row is a bug, not data."""
    row = cur.execute(sql, params).fetchone()
    assert row is not None, sql
    return row[0]


def _feed_ddl(feed: Feed) -> str:
    cols = [f"{q(f.name)} {SQL_TYPES[f.type]}" for f in feed.fields]
    cols.append(f"{POS} BIGINT")
    key = ", ".join(q(k) for k in feed.key)
    return f"CREATE TABLE IF NOT EXISTS {table_name(feed)} ({', '.join(cols)}, PRIMARY KEY ({key}))"
