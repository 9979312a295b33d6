"""Apply one consumed batch to the feeds: decode, stage, map set-based, stamp, commit.

Per batch there is exactly one DuckDB transaction holding the feed rows, the stamp and
the Kafka offsets that produced them (decisions 1 and 4). Decoding (:meth:`Materializer.decode`)
needs no store: big batches column-wise (cdc/columnar.py), the rest event by event, and
the service runs it for the next batch while this one is stored. Everything after it
is a few SQL statements per feed over an Arrow table of the whole batch (decision 6),
which is what makes ~10^5 events/s possible where per-row upserts manage ~10^3.

Per feed, one statement maps and validates the whole batch (materializer/validate.py
has the rules): the mapping's expressions give raw values, the checks turn them into
the spec's canonical typed values or NULL. A required field that ends up NULL
quarantines the event, with the field, the value and the rule in the reason; an
optional field whose given value is invalid is emitted empty and counted per feed,
field and reason in ``fs_field_errors`` (and in ``BatchResult.invalid``). Nothing is
dropped without a trace.

Rows only move when their feed-visible content changes, and events older than the
row's stored source position are skipped (decision 3), so replays are harmless.

An event that cannot be decoded is quarantined with its coordinates and the rest of
the batch goes on (decision 8). An expression that fails outright (a function that
raises on some input) fails the statement for the whole batch, so the culprits are
found by bisecting in rolled-back trial transactions; that cost is paid only when a
batch actually contains such input.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa

from cdc.columnar import MIN_EVENTS, Columns, decode_columns
from cdc.decode import Change, DecodeError, check_keys, decode
from cdc.records import Record
from materializer import StoreError
from materializer.casino import apply_actions, ensure_schema
from materializer.casino_mapping import ActionsMapping
from materializer.mapping import FeedMapping
from materializer.replay import load_resend, remaining, save_resend
from materializer.stamp import utc_now
from materializer.store import HASH, POS, Store, q, save_offsets, scalar, table_name
from materializer.validate import check, lit, register_vocab, vocab_lookups, vocab_tables

log = logging.getLogger("feedstore.materializer")

# Errors that mean "this input does not fit the mapping", as opposed to the store failing.
DATA_ERRORS: tuple[type[Exception], ...] = (
    duckdb.ConversionException, duckdb.InvalidInputException, duckdb.BinderException,
    duckdb.OutOfRangeException, duckdb.ConstraintException, duckdb.TypeMismatchException,
    duckdb.NotImplementedException, pa.ArrowException,
)

_I, _OP, _POS = "__fs_i", "__fs_op", "__fs_pos"
_MISSING, _INVALID = "__fs_missing", "__fs_invalid"
_EXAMPLE_CHARS = 200


@dataclass
class BatchResult:
    stamp: datetime | None = None
    events: int = 0
    changed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    skipped: int = 0  # tombstones, heartbeats, truncates: not row changes
    quarantined: int = 0
    # Optional field values that were given but invalid, emitted empty; by feed.
    invalid: dict[str, int] = field(default_factory=lambda: defaultdict(int))


@dataclass(frozen=True, slots=True)
class _Decoded:
    index: int  # into the batch's records
    change: Change


@dataclass(frozen=True, slots=True)
class _Reject:
    index: int
    reason: str
    feed: str | None = None


@dataclass(frozen=True, slots=True)
class _Staged:
    """A topic's events already in Arrow (cdc/columnar.py): what _stage would have built."""

    table: pa.Table
    absent: frozenset[str]
    deletes: bool


@dataclass
class Decoded:
    """A batch decoded and ready to apply (:meth:`Materializer.decode`)."""

    changes: list[_Decoded]  # decoded event by event
    rejects: list[_Reject]
    staged: dict[str, _Staged]  # topic -> decoded column by column
    skipped: int = 0  # tombstones, heartbeats, transaction markers


class Materializer:
    def __init__(self, store: Store, *, max_event_bytes: int | None = None,
                 columnar_from: int | None = MIN_EVENTS) -> None:
        self.store = store
        self.mapping = store.mapping
        # A topic with at least this many events in a batch is decoded column by column
        # (cdc/columnar.py); None decodes every event on its own.
        self.columnar_from = columnar_from
        # Larger values are quarantined undecoded (docs/guarantees.md): a CDC event of
        # megabytes is a runaway column, not a CRM field, and must not stall the line.
        self.max_event_bytes = max_event_bytes
        ensure_schema(store)  # the casino actions table, when the mapping has one
        vocab_tables()  # built now (~70 ms), not in the first batch
        for topic in self.mapping.topics:
            self.mapping.columns(topic)  # parsed now too (~17 ms through DuckDB's parser)
        self._raw_types: dict[tuple[str, str], list[str]] = {}  # see _map_feed
        # `feedstore replay --resend`: rows touched by events below these offsets are
        # re-stamped even when unchanged (materializer/replay.py); shrinks as batches pass.
        self.resend: dict[tuple[str, int], int] = {}
        self._resend_idx: list[int] = []  # this batch's events to re-stamp (indexes into records)
        self.reload_resend()

    def reload_resend(self) -> None:
        """Re-read the resend range after a replay rewrote it (in the writer's thread)."""
        with self.store.cursor() as cur:
            self.resend = load_resend(cur)

    def decode(self, records: Sequence[Record]) -> Decoded:
        """The first half of :meth:`apply`, which touches no store: the service decodes the
        next batch (in another thread) while this one is stored."""
        return self._decode(records)

    def apply(self, records: Sequence[Record], next_offsets: dict[tuple[str, int], int], *,
              decoded: Decoded | None = None,
              also: Callable[[duckdb.DuckDBPyConnection], None] | None = None) -> BatchResult:
        """Apply ``records`` and move the stored offsets to ``next_offsets``, atomically.

        ``decoded`` is :meth:`decode` of the same records, when the caller has it already.
        ``also`` runs inside the same transaction, just before it commits (quarantine
        retry marks the retried entries there, so a crash cannot apply without marking).
        """
        result = BatchResult(events=len(records))
        batch = decoded if decoded is not None else self._decode(records)
        result.skipped = batch.skipped
        also = self._with_resend(records, next_offsets, also)
        with self.store.writer() as cur, self.store.stamper.batch() as stamp:
            register_vocab(cur)
            result.stamp = stamp
            try:
                self._commit(cur, records, batch, next_offsets, stamp, result, also)
            except DATA_ERRORS:
                cur.rollback()
                result.changed.clear()
                result.invalid.clear()
                if batch.staged:  # find the culprits event by event
                    batch = self._decode(records, columnar=False)
                    result.skipped = batch.skipped
                bad = self._bisect(cur, records, batch.changes, stamp)
                good = [c for c in batch.changes if c.index not in bad]
                self._commit(cur, records, Decoded(good, batch.rejects + list(bad.values()), {}, batch.skipped),
                             next_offsets, stamp, result, also)
        if self.resend:
            self.resend = remaining(self.resend, next_offsets)
        return result

    def _with_resend(self, records: Sequence[Record], next_offsets: dict[tuple[str, int], int],
                     also: Callable[[duckdb.DuckDBPyConnection], None] | None
                     ) -> Callable[[duckdb.DuckDBPyConnection], None] | None:
        """Stage which events are resent (``fs_resend``) and shrink the saved range in the batch's transaction."""
        self._resend_idx = [i for i, r in enumerate(records)
                            if r.offset < self.resend.get((r.topic, r.partition), -1)] if self.resend else []
        if not self.resend:
            return also
        left = remaining(self.resend, next_offsets)
        if left == self.resend:
            return also

        def save(cur: duckdb.DuckDBPyConnection) -> None:
            save_resend(cur, left)
            if also is not None:
                also(cur)

        return save

    # -- decoding ---------------------------------------------------------------------

    def _decode(self, records: Sequence[Record], *, columnar: bool = True) -> Decoded:
        batch = Decoded([], [], {})
        rejects = batch.rejects
        tables = self.mapping.tables
        by_topic: dict[str, list[int]] = defaultdict(list)
        for i, rec in enumerate(records):
            table = tables.get(rec.topic)
            if table is None:
                if _is_meta(rec):  # a heartbeat or transaction marker routed here: nothing to map
                    batch.skipped += 1
                    continue
                rejects.append(_Reject(i, f"topic {rec.topic!r} is not mapped to any feed"))
                continue
            if self.max_event_bytes is not None and rec.value is not None and len(rec.value) > self.max_event_bytes:
                rejects.append(_Reject(i, f"value is {len(rec.value):,} bytes, over the {self.max_event_bytes:,}-byte "
                                          "limit (FEEDSTORE_MAX_EVENT_BYTES); if such rows are legitimate, raise it "
                                          "and run `feedstore quarantine retry`"))
                continue
            if rec.value is None:  # a tombstone
                batch.skipped += 1
                continue
            by_topic[rec.topic].append(i)
        for topic, indexes in by_topic.items():
            staged = self._columns(topic, records, indexes) if columnar else None
            if staged is not None:
                batch.staged[topic] = staged
                continue
            self._decode_events(topic, records, indexes, batch)
        return batch

    def _columns(self, topic: str, records: Sequence[Record], indexes: list[int]) -> _Staged | None:
        """The fast path (cdc/columnar.py), when the events take it; their keys are checked as decode() would."""
        if self.columnar_from is None:
            return None
        table = self.mapping.tables[topic]
        wanted = self.mapping.columns(topic)
        cols = decode_columns(topic, table.name, [records[i].value or b"" for i in indexes],
                              [records[i].offset for i in indexes], wanted=wanted, types=table.types, zone=table.zone,
                              min_events=self.columnar_from)
        if cols is None:
            return None
        try:
            check_keys(topic, (records[i].key for i in indexes), types=table.types, zone=table.zone)
        except DecodeError:
            return None  # the per-event path quarantines the event with the bad key
        return _staged(cols, indexes, wanted)

    def _decode_events(self, topic: str, records: Sequence[Record], indexes: list[int], batch: Decoded) -> None:
        table = self.mapping.tables[topic]
        for i in indexes:
            rec = records[i]
            try:
                change = decode(rec.topic, rec.key, rec.value, types=table.types, zone=table.zone)
            except DecodeError as ex:
                batch.rejects.append(_Reject(i, str(ex)))
                continue
            if change is None or change.op in ("t", "m"):
                batch.skipped += 1
                continue
            if change.table != table.name and rec.topic == f"{self.mapping.topic_prefix}.{table.name}":
                batch.rejects.append(_Reject(i, f"event of table {change.table!r} on topic {rec.topic!r}, which "
                                                f"carries {table.name!r}: a connector or routing mistake; map that "
                                                "table (its own topic) or fix the routing"))
                continue
            batch.changes.append(_Decoded(i, change))

    # -- the transaction --------------------------------------------------------------

    def _commit(self, cur: duckdb.DuckDBPyConnection, records: Sequence[Record], batch: Decoded,
                next_offsets: dict[tuple[str, int], int], stamp: datetime,
                result: BatchResult, also: Callable[[duckdb.DuckDBPyConnection], None] | None = None) -> None:
        rejects = batch.rejects
        try:
            cur.begin()
            more = self._write(cur, records, batch.changes, stamp, result, batch.staged)
            _quarantine(cur, records, rejects + more)
            result.quarantined = len(rejects) + len(more)
            save_offsets(cur, next_offsets)
            cur.execute("INSERT OR REPLACE INTO fs_meta VALUES ('last_stamp', ?)", [stamp.isoformat()])
            if also is not None:
                also(cur)
            cur.commit()
        except DATA_ERRORS:
            raise
        except duckdb.Error as ex:
            _safe_rollback(cur)
            raise StoreError(f"writing the batch to {self.store.path} failed: {ex}. Offsets were not "
                             "advanced; fix the cause (disk space, permissions) and the batch is retried") from ex

    def _write(self, cur: duckdb.DuckDBPyConnection, records: Sequence[Record], changes: Iterable[_Decoded],
               stamp: datetime, result: BatchResult, ready: dict[str, _Staged] | None = None) -> list[_Reject]:
        rejects: list[_Reject] = []
        by_topic: dict[str, list[_Decoded]] = defaultdict(list)
        for d in changes:
            by_topic[records[d.index].topic].append(d)
        topics: dict[str, _Staged] = dict(ready or {})
        for topic, group in by_topic.items():
            table, absent = _stage(group, records, self.mapping.columns(topic))
            topics[topic] = _Staged(table, absent, any(d.change.op == "d" for d in group))
        for topic, staged in topics.items():
            # Re-registering replaces the previous batch's view; no unregister, which
            # would fail inside a transaction that a bad event has aborted.
            cur.register("fs_stage", staged.table)
            resend = self._resend_idx
            if resend:
                cur.register("fs_resend", pa.table({_I: pa.array(resend, pa.int64())}))
            for fm in self.mapping.for_topic(topic):
                if isinstance(fm, ActionsMapping):  # game actions, aggregated per session (materializer/casino.py)
                    rejects += [_Reject(i, why, fm.feed.name) for i, why in apply_actions(
                        cur, fm, stamp, result.changed, result.invalid, bool(resend))]
                    continue
                rejects += _map_feed(cur, fm, stamp, result, _Shape(staged.table.schema.to_string(), staged.absent,
                                                                    staged.deletes, bool(resend)), self._raw_types)
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


def _is_meta(rec: Record) -> bool:
    """Debezium's heartbeats, transaction markers and tombstones: safe to skip anywhere."""
    try:
        return decode(rec.topic, rec.key, rec.value) is None
    except DecodeError:
        return False


# --------------------------------------------------------------------------- staging

def _stage(group: list[_Decoded], records: Sequence[Record],
           columns: frozenset[str]) -> tuple[pa.Table, frozenset[str]]:
    """One Arrow table for a topic's events: source columns plus index, op and position.

    Also returns the referenced columns that no row event carried at all: those read
    as NULL, which would hide a typo in the mapping, so the caller counts them.
    """
    rows: list[dict[str, Any]] = []
    blank = dict.fromkeys(columns)
    unseen = set(columns)
    rows_seen = False
    for d in group:
        c = d.change
        image = (c.before if c.op == "d" else c.after) or {}
        if c.op != "d":
            rows_seen = True
            if unseen:
                unseen.difference_update(image)
        row = blank | image
        row[_I] = d.index
        row[_OP] = c.op
        row[_POS] = c.position if c.position is not None else records[d.index].offset
        rows.append(row)
    try:
        table = pa.Table.from_pylist(rows)
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
        table = pa.table(cols)
    return _fit_decimals(table), frozenset(unseen if rows_seen else ())


def _staged(cols: Columns, indexes: list[int], wanted: frozenset[str]) -> _Staged:
    """The fast path's columns as the table _stage builds (absent columns read as NULL)."""
    n = len(indexes)
    data = {name: cols.values.get(name, pa.nulls(n)) for name in sorted(wanted)}
    data[_I] = pa.array(indexes, pa.int64())
    data[_OP] = cols.ops
    data[_POS] = cols.positions
    return _Staged(_fit_decimals(pa.table(data)), frozenset(wanted - cols.seen), cols.deletes)


def _fit_decimals(table: pa.Table) -> pa.Table:
    """DuckDB reads Arrow decimals up to 38 digits. Postgres numeric has no such limit,
    and Arrow sizes a column for its widest value; such columns go in as text, so the
    field checks judge each value (most still fit the feed's DECIMAL(38,8))."""
    for i, f in enumerate(table.schema):
        if pa.types.is_decimal(f.type) and f.type.precision > 38:
            text = pa.array([None if v is None else str(v) for v in table.column(i).to_pylist()], pa.string())
            table = table.set_column(i, f.name, text)
    return table


# --------------------------------------------------------------------------- mapping one feed

@dataclass(frozen=True, slots=True)
class _Shape:
    """What _map_feed needs to know about a topic's staged batch."""

    schema: str  # the Arrow schema's text: the key of the raw-type cache
    absent: frozenset[str]  # referenced columns no row event carried
    deletes: bool  # any delete events
    resend: bool = False  # `replay --resend`: fs_resend lists the batch's events whose rows are re-stamped


def _map_feed(cur: duckdb.DuckDBPyConnection, fm: FeedMapping, stamp: datetime, result: BatchResult,
              shape: _Shape, raw_types: dict[tuple[str, str], list[str]]) -> list[_Reject]:
    feed = fm.feed
    cols = [f for f in feed.fields if f.name != feed.stamp]
    zone = fm.source.zone.key
    raws = [f"__fs_r{n}" for n in range(len(cols))]
    raw_select = ", ".join(f"({fm.exprs[f.name]}) AS {raw}" for f, raw in zip(cols, raws, strict=True))
    # The checks are specialized to the expressions' types (DuckDB plans each batch's
    # statement anew, and generic checks cost ~3x the planning). The types depend only
    # on the staged columns' types, so they are asked once per batch shape.
    types = raw_types.get((feed.name, shape.schema))
    if types is None:
        if len(raw_types) > 1000:
            raw_types.clear()
        types = [row[1] for row in cur.execute(f"DESCRIBE SELECT {raw_select} FROM fs_stage").fetchall()]
        raw_types[(feed.name, shape.schema)] = types
    checks = [check(f, r, zone, ty) for f, r, ty in zip(cols, raws, types, strict=True)]
    key = ", ".join(q(k) for k in feed.key)
    meta = f"{_OP}, {_POS}, {_I}"

    def given_but_null(n: int) -> str:
        return f"{q(cols[n].name)} IS NULL AND {checks[n].present}"

    def example(n: int) -> str:
        return f"left(CAST({raws[n]} AS VARCHAR), {_EXAMPLE_CHARS})"

    # Both are NULL for a clean event, and decided by one cheap test first: building
    # the reason text and the list of emptied fields for every row cost ~0.5 µs a row.
    required = [n for n, f in enumerate(cols) if f.required]
    missing = "NULL" if not required else (
        f"CASE WHEN {' OR '.join(f'{q(cols[n].name)} IS NULL' for n in required)} THEN NULLIF(concat_ws('; ', "
        + ", ".join(f"CASE WHEN {q(cols[n].name)} IS NULL THEN {lit(cols[n].name + ': ')} || CASE WHEN "
                    f"{checks[n].present} THEN 'invalid value ''' || {example(n)} || ''' (' || "
                    f"{lit(checks[n].reason)} || ')' ELSE 'missing' END END" for n in required)
        + "), '') END")
    optional = [n for n, f in enumerate(cols) if not f.required and checks[n].reason]
    invalid = "NULL" if not optional else (
        f"CASE WHEN {' OR '.join(f'({given_but_null(n)})' for n in optional)} THEN list_filter(["
        + ", ".join(f"CASE WHEN {given_but_null(n)} THEN struct_pack(field := {lit(cols[n].name)}, "
                    f"reason := {lit(checks[n].reason)}, example := {example(n)}) END" for n in optional)
        + "], lambda e: e IS NOT NULL) END")
    values, lookups, joins = vocab_lookups(cols, checks, raws, types, zone)
    cur.execute(
        "CREATE OR REPLACE TEMP TABLE fs_mapped AS "
        f"WITH r AS (SELECT {raw_select}, {meta} FROM fs_stage), {lookups}"
        f"n AS (SELECT {', '.join(f'{v} AS {q(f.name)}' for f, v in zip(cols, values, strict=True))}, "
        f"{', '.join(f'r.{raw}' for raw in raws)}, {', '.join(f'r.{m}' for m in (_OP, _POS, _I))} "
        f"FROM r{joins}) "
        f"SELECT {', '.join(q(f.name) for f in cols)}, {meta}, "
        f"{missing} AS {_MISSING}, {invalid} AS {_INVALID} FROM n")

    rejects = [
        _Reject(i, f"feed {feed.name}: required field(s) empty or invalid: {reason}", feed.name)
        for i, reason in cur.execute(
            f"SELECT {_I}, {_MISSING} FROM fs_mapped WHERE {_OP} <> 'd' AND {_MISSING} IS NOT NULL").fetchall()]
    if fm.delete_set and shape.deletes:
        no_key = " OR ".join(f"{q(k)} IS NULL" for k in feed.key)
        rejects += [
            _Reject(i, f"feed {feed.name}: delete event without its key ({', '.join(feed.key)}): the on_delete "
                       "policy cannot find the row; map the key from the table's primary key columns, or set "
                       "REPLICA IDENTITY FULL on the source table", feed.name)
            for (i,) in cur.execute(f"SELECT {_I} FROM fs_mapped WHERE {_OP} = 'd' AND ({no_key})").fetchall()]
    _count_invalid(cur, fm, stamp, result, bool(optional), shape.absent)

    def latest(where: str) -> str:
        """The newest event per key among ``where`` (a grouped arg_max: 1.5x a window's speed)."""
        return (f"(SELECT * FROM fs_mapped WHERE {_I} IN (SELECT arg_max({_I}, ({_POS}, {_I})) FROM fs_mapped "
                f"WHERE {where} GROUP BY {key})) m")

    # Upserts first (the newest valid non-delete event per key), then deletes, so an
    # insert and a delete of one key in the same batch end as the delete policy says.
    n = _replace_changed(
        cur, fm, {f.name: f"m.{q(f.name)}" for f in cols},
        latest(f"{_OP} <> 'd' AND {_MISSING} IS NULL"), stamp, new_rows=True)
    if fm.delete_set and shape.deletes:
        kept = {f.name: f"f.{q(f.name)}" for f in cols} | {
            name: check(feed.field(name), f"({expr})", zone).value for name, expr in fm.delete_set.items()}
        n += _replace_changed(
            cur, fm, kept, latest(f"{_OP} = 'd'"), stamp, new_rows=False)
    if shape.resend:
        n += _restamp(cur, fm, stamp)
    result.changed[feed.name] += n
    return rejects


def _replace_changed(cur: duckdb.DuckDBPyConnection, fm: FeedMapping, values: dict[str, str], source: str,
                     stamp: datetime, *, new_rows: bool) -> int:
    """Write the rows whose feed-visible content changed, stamped; return how many.

    ``source`` is the batch's newest event per key (alias ``m``); ``values`` are the new
    field values as SQL over ``m`` and the stored row ``f``. A row moves only if it is
    new or its content hash differs and the event is not older than the stored one
    (decision 3). Comparing hashes reads three narrow columns of the stored table
    instead of all of them; the unique key is kept by deleting the changed keys and
    inserting their new versions, which DuckDB does at bulk speed (no ART index).
    The new versions land at the table's tail, so a recent window's rows share a few row
    groups and DuckDB's zone maps skip the rest: updating rows in place (MERGE INTO) kept
    the content the same but, with the changed keys spread over a 10M-row table, applied
    ~4x slower and made a last-minute pull ~60x slower, every row group now reaching
    into the newest stamps.
    """
    feed, t = fm.feed, table_name(fm.feed)
    cols = [f for f in feed.fields if f.name != feed.stamp]
    on = " AND ".join(f"m.{q(k)} = f.{q(k)}" for k in feed.key)
    content = f"hash({', '.join(values[f.name] for f in cols)})"
    stored = f"(SELECT {', '.join(q(k) for k in feed.key)}, {POS}, {HASH} FROM {t})" if new_rows else t
    join = "LEFT JOIN" if new_rows else "JOIN"
    fresh = f"f.{q(feed.key[0])} IS NULL OR " if new_rows else ""
    # CREATE TABLE AS answers its row count: no count(*) statement after it.
    n: int = scalar(
        cur,
        "CREATE OR REPLACE TEMP TABLE fs_changed AS SELECT "
        + ", ".join(f"{values[f.name]} AS {q(f.name)}" for f in cols)
        + f", m.{_POS} AS {POS}, {content} AS {HASH} FROM {source} {join} {stored} f ON {on} "
        f"WHERE {fresh}(m.{_POS} >= f.{POS} AND {content} IS DISTINCT FROM f.{HASH})")
    if n:
        match = " AND ".join(f"{t}.{q(k)} = c.{q(k)}" for k in feed.key)
        cur.execute(f"DELETE FROM {t} USING fs_changed c WHERE {match}")
        names = ", ".join(q(f.name) for f in feed.fields)
        cur.execute(
            f"INSERT INTO {t} ({names}, {POS}, {HASH}) SELECT "
            + ", ".join("$stamp" if f.name == feed.stamp else q(f.name) for f in feed.fields)
            + f", {POS}, {HASH} FROM fs_changed", {"stamp": stamp})
    return n


def _restamp(cur: duckdb.DuckDBPyConnection, fm: FeedMapping, stamp: datetime) -> int:
    """``replay --resend``: stamp every row a resent event touches, changed or not, so the
    CRM receives it again in the next window; content and source position stay."""
    feed, t = fm.feed, table_name(fm.feed)
    keys = ", ".join(f"m.{q(k)}" for k in feed.key)
    on = " AND ".join(f"k.{q(k)} = {t}.{q(k)}" for k in feed.key)
    n: int = scalar(
        cur,
        f"UPDATE {t} SET {q(feed.stamp)} = $stamp FROM (SELECT DISTINCT {keys} FROM fs_mapped m "
        f"JOIN fs_resend r ON m.{_I} = r.{_I} WHERE m.{_MISSING} IS NULL OR m.{_OP} = 'd') k "
        f"WHERE {on} AND {t}.{q(feed.stamp)} IS DISTINCT FROM $stamp",
        {"stamp": stamp})
    return n


def _count_invalid(cur: duckdb.DuckDBPyConnection, fm: FeedMapping, stamp: datetime, result: BatchResult,
                   checked: bool, absent: frozenset[str]) -> None:
    """Add this batch's emptied optional values to ``fs_field_errors`` and the result."""
    feed = fm.feed
    counts: list[tuple[str, str, int, str | None]] = []
    valid = f"{_OP} <> 'd' AND {_MISSING} IS NULL"
    emptied = f"{valid} AND {_INVALID} IS NOT NULL"
    # The join with the stored rows reads the whole feed table: pay it only when the
    # batch actually emptied a value (rare), not on every batch.
    if checked and scalar(cur, f"SELECT count(*) FROM fs_mapped WHERE {emptied}"):
        # Only events newer than the stored row count: a replay must not count twice.
        on = " AND ".join(f"m.{q(k)} = f.{q(k)}" for k in feed.key)
        counts += cur.execute(
            f"SELECT e.field, e.reason, count(*), max(e.example) FROM (SELECT unnest(m.{_INVALID}) AS e "
            f"FROM fs_mapped m LEFT JOIN {table_name(feed)} f ON {on} WHERE m.{_OP} <> 'd' AND m.{_MISSING} IS NULL "
            f"AND (f.{q(feed.key[0])} IS NULL OR m.{_POS} > f.{POS})) WHERE e IS NOT NULL "
            "GROUP BY ALL ORDER BY ALL").fetchall()
    if absent:
        optional = {f.name for f in feed.fields if not f.required}
        hit = {name: sorted(cols & absent) for name, cols in fm.field_columns.items() if cols & absent}
        rows = scalar(cur, f"SELECT count(*) FROM fs_stage WHERE {_OP} <> 'd'")
        counts += [(name, f"source column(s) {', '.join(c)} in no event of {fm.source.name}: a typo in the "
                          "mapping, or a column the connector does not send", rows, None)
                   for name, c in sorted(hit.items()) if name in optional]
    if not counts:
        return
    cur.executemany(
        "INSERT INTO fs_field_errors VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (feed, field, reason) DO UPDATE "
        "SET count = count + excluded.count, example = coalesce(excluded.example, example), "
        "last_seen = excluded.last_seen",
        [(feed.name, name, reason, count, ex, stamp, stamp) for name, reason, count, ex in counts])
    for name, reason, count, _ in counts:
        result.invalid[feed.name] += count
        log.warning("invalid optional values emitted empty",
                    extra={"feed": feed.name, "field": name, "reason": reason, "count": count})


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


__all__ = ["BatchResult", "Decoded", "Materializer"]
