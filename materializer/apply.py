"""Apply one consumed batch to the feeds: decode, stage, map set-based, stamp, commit.

Per batch there is exactly one DuckDB transaction holding the feed rows, the stamp and
the Kafka offsets that produced them (decisions 1 and 4). Decoding is per event in
Python (it has to be); everything after that is one SQL statement per feed over an
Arrow table of the whole batch (decision 6), which is what makes ~10^5 events/s
possible where per-row upserts manage ~10^3.

Rows only move when their feed-visible content changes, and events older than the
row's stored source position are skipped (decision 3), so replays are harmless.

An event that cannot be decoded or mapped is quarantined with its coordinates and
the rest of the batch goes on (decision 8). A mapping error shows up as a failed
statement for the whole batch, so the culprits are found by bisecting in rolled-back
trial transactions; that cost is paid only when a batch actually contains bad input.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa

from cdc.decode import Change, DecodeError, decode
from cdc.records import Record
from materializer import StoreError
from materializer.mapping import FeedMapping, SourceTable
from materializer.stamp import utc_now
from materializer.store import POS, SQL_TYPES, Store, q, scalar, table_name

log = logging.getLogger("feedstore.materializer")

# Errors that mean "this input does not fit the mapping", as opposed to the store failing.
DATA_ERRORS: tuple[type[Exception], ...] = (
    duckdb.ConversionException, duckdb.InvalidInputException, duckdb.BinderException,
    duckdb.OutOfRangeException, duckdb.ConstraintException, duckdb.TypeMismatchException,
    pa.ArrowException,
)

_I, _OP, _POS = "__fs_i", "__fs_op", "__fs_pos"


@dataclass
class BatchResult:
    stamp: datetime | None = None
    events: int = 0
    changed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    skipped: int = 0  # tombstones, heartbeats, truncates: not row changes
    quarantined: int = 0


@dataclass(frozen=True, slots=True)
class _Decoded:
    index: int  # into the batch's records
    change: Change


@dataclass(frozen=True, slots=True)
class _Reject:
    index: int
    reason: str
    feed: str | None = None


class Materializer:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.mapping = store.mapping

    def apply(self, records: Sequence[Record], next_offsets: dict[tuple[str, int], int]) -> BatchResult:
        """Apply ``records`` and move the stored offsets to ``next_offsets``, atomically."""
        result = BatchResult(events=len(records))
        changes, rejects = self._decode(records, result)
        with self.store.writer() as cur, self.store.stamper.batch() as stamp:
            result.stamp = stamp
            try:
                self._commit(cur, records, changes, rejects, next_offsets, stamp, result)
            except DATA_ERRORS:
                cur.rollback()
                result.changed.clear()
                bad = self._bisect(cur, records, changes, stamp)
                good = [c for c in changes if c.index not in bad]
                self._commit(cur, records, good, rejects + list(bad.values()), next_offsets, stamp, result)
        return result

    # -- decoding ---------------------------------------------------------------------

    def _decode(self, records: Sequence[Record], result: BatchResult) -> tuple[list[_Decoded], list[_Reject]]:
        changes: list[_Decoded] = []
        rejects: list[_Reject] = []
        tables = self.mapping.tables
        for i, rec in enumerate(records):
            table = tables.get(rec.topic)
            if table is None:
                rejects.append(_Reject(i, f"topic {rec.topic!r} is not mapped to any feed"))
                continue
            try:
                change = decode(rec.topic, rec.key, rec.value, types=table.types, zone=table.zone)
            except DecodeError as ex:
                rejects.append(_Reject(i, str(ex)))
                continue
            if change is None or change.op in ("t", "m"):
                result.skipped += 1
                continue
            changes.append(_Decoded(i, change))
        return changes, rejects

    # -- the transaction --------------------------------------------------------------

    def _commit(self, cur: duckdb.DuckDBPyConnection, records: Sequence[Record], changes: list[_Decoded],
                rejects: list[_Reject], next_offsets: dict[tuple[str, int], int], stamp: datetime,
                result: BatchResult) -> None:
        try:
            cur.begin()
            more = self._write(cur, records, changes, stamp, result)
            _quarantine(cur, records, rejects + more)
            result.quarantined = len(rejects) + len(more)
            if next_offsets:
                now = utc_now()
                cur.executemany(
                    "INSERT OR REPLACE INTO fs_offsets VALUES (?, ?, ?, ?)",
                    [(t, p, o, now) for (t, p), o in next_offsets.items()])
            cur.execute("INSERT OR REPLACE INTO fs_meta VALUES ('last_stamp', ?)", [stamp.isoformat()])
            cur.commit()
        except DATA_ERRORS:
            raise
        except duckdb.Error as ex:
            _safe_rollback(cur)
            raise StoreError(f"writing the batch to {self.store.path} failed: {ex}. Offsets were not "
                             "advanced; fix the cause (disk space, permissions) and the batch is retried") from ex

    def _write(self, cur: duckdb.DuckDBPyConnection, records: Sequence[Record], changes: Iterable[_Decoded],
               stamp: datetime, result: BatchResult) -> list[_Reject]:
        rejects: list[_Reject] = []
        by_topic: dict[str, list[_Decoded]] = defaultdict(list)
        for d in changes:
            by_topic[records[d.index].topic].append(d)
        for topic, group in by_topic.items():
            # Re-registering replaces the previous batch's view; no unregister, which
            # would fail inside a transaction that a bad event has aborted.
            cur.register("fs_stage", _stage(group, records, self.mapping.columns(topic)))
            for fm in self.mapping.for_topic(topic):
                rejects += _map_feed(cur, fm, stamp, result)
        return rejects

    def _bisect(self, cur: duckdb.DuckDBPyConnection, records: Sequence[Record], changes: list[_Decoded],
                stamp: datetime) -> dict[int, _Reject]:
        """Find the events that make the mapping fail, by trial runs that are rolled back."""
        bad: dict[int, _Reject] = {}

        def trial(part: list[_Decoded]) -> None:
            try:
                cur.begin()
                self._write(cur, records, part, stamp, BatchResult())
            except DATA_ERRORS as ex:
                _safe_rollback(cur)
                if len(part) == 1:
                    bad[part[0].index] = _Reject(part[0].index, f"mapping failed: {_first_line(ex)}")
                    return
                mid = len(part) // 2
                trial(part[:mid])
                trial(part[mid:])
            else:
                cur.rollback()

        trial(changes)
        return bad


def _stage(group: list[_Decoded], records: Sequence[Record], columns: frozenset[str]) -> pa.Table:
    """One Arrow table for a topic's events: source columns plus index, op and position."""
    rows: list[dict[str, Any]] = []
    blank = dict.fromkeys(columns)
    for d in group:
        c = d.change
        row = blank | ((c.before if c.op == "d" else c.after) or {})
        row[_I] = d.index
        row[_OP] = c.op
        row[_POS] = c.position if c.position is not None else records[d.index].offset
        rows.append(row)
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # A column whose values change type across events (schema evolution): keep it as text.
        names = {k for r in rows for k in r}
        cols = {}
        for name in names:
            values = [r.get(name) for r in rows]
            try:
                cols[name] = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                cols[name] = pa.array([None if v is None else str(v) for v in values], pa.string())
        return pa.table(cols)


def _map_feed(cur: duckdb.DuckDBPyConnection, fm: FeedMapping, stamp: datetime,
              result: BatchResult) -> list[_Reject]:
    feed, t = fm.feed, table_name(fm.feed)
    cols = [f for f in feed.fields if f.name != feed.stamp]
    select = ", ".join(
        f"{'CAST' if f.required else 'TRY_CAST'}(({fm.exprs[f.name]}) AS {SQL_TYPES[f.type]}) AS {q(f.name)}"
        for f in cols)
    key = ", ".join(q(k) for k in feed.key)
    cur.execute(
        f"CREATE OR REPLACE TEMP TABLE fs_mapped AS SELECT {select}, {_OP}, {_POS}, {_I} FROM fs_stage "
        f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {_POS} DESC, {_I} DESC) = 1")
    required = [f for f in cols if f.required]
    missing = " OR ".join(f"{q(f.name)} IS NULL" for f in required) or "FALSE"
    missing_m = " OR ".join(f"m.{q(f.name)} IS NULL" for f in required) or "FALSE"
    rejects = [
        _Reject(i, f"required field(s) empty after mapping: {reason}", feed.name)
        for i, reason in cur.execute(
            f"SELECT {_I}, concat_ws(', ', "
            + ", ".join(f"CASE WHEN {q(f.name)} IS NULL THEN '{f.name}' END" for f in required)
            + f") FROM fs_mapped WHERE {_OP} <> 'd' AND ({missing})").fetchall()
    ] if required else []
    on = " AND ".join(f"m.{q(k)} = f.{q(k)}" for k in feed.key)
    names = ", ".join(q(f.name) for f in feed.fields)
    updates = ", ".join(f"{q(f.name)} = excluded.{q(f.name)}" for f in feed.fields if f.name not in feed.key)
    upsert = f"ON CONFLICT ({key}) DO UPDATE SET {updates}, {POS} = excluded.{POS}"
    first_key = q(feed.key[0])

    def row(values: dict[str, str]) -> tuple[str, str]:
        differs = " OR ".join(f"{values[f.name]} IS DISTINCT FROM f.{q(f.name)}" for f in cols)
        out = ", ".join(
            f"CASE WHEN f.{first_key} IS NULL OR {differs} THEN $stamp ELSE f.{q(feed.stamp)} END"
            if f.name == feed.stamp else values[f.name] for f in feed.fields)
        return out, differs

    values, differs = row({f.name: f"m.{q(f.name)}" for f in cols})
    n = scalar(
        cur,
        f"INSERT INTO {t} ({names}, {POS}) SELECT {values}, m.{_POS} FROM fs_mapped m LEFT JOIN {t} f ON {on} "
        f"WHERE m.{_OP} <> 'd' AND NOT ({missing_m}) "
        f"AND (f.{first_key} IS NULL OR (m.{_POS} >= f.{POS} AND ({differs}))) {upsert}",
        {"stamp": stamp})
    if fm.delete_set:
        dvalues = {f.name: f"f.{q(f.name)}" for f in cols} | {
            name: f"CAST(({expr}) AS {SQL_TYPES[feed.field(name).type]})" for name, expr in fm.delete_set.items()}
        dvals, ddiff = row(dvalues)
        n += scalar(
            cur,
            f"INSERT INTO {t} ({names}, {POS}) SELECT {dvals}, m.{_POS} FROM fs_mapped m JOIN {t} f ON {on} "
            f"WHERE m.{_OP} = 'd' AND m.{_POS} >= f.{POS} AND ({ddiff}) {upsert}",
            {"stamp": stamp})
    result.changed[feed.name] += n
    return rejects


def _quarantine(cur: duckdb.DuckDBPyConnection, records: Sequence[Record], rejects: list[_Reject]) -> None:
    if not rejects:
        return
    now = utc_now()
    cur.executemany(
        "INSERT INTO fs_quarantine (topic, kafka_partition, kafka_offset, reason, feed, key, value, quarantined_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(r.topic, r.partition, r.offset, j.reason, j.feed, r.key, r.value, now)
         for j in rejects for r in (records[j.index],)])
    for j in rejects:
        log.warning("quarantined", extra={"where": records[j.index].where, "reason": j.reason, "feed": j.feed})


def _safe_rollback(cur: duckdb.DuckDBPyConnection) -> None:
    with contextlib.suppress(duckdb.Error):
        cur.rollback()


def _first_line(ex: Exception) -> str:
    return str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__


__all__ = ["BatchResult", "Materializer", "SourceTable"]
