"""Decode one topic's share of a batch column by column: the fast path.

Decoding event by event (``cdc.decode``) and then turning the rows into Arrow costs
~17 µs of Python per event on the reference ``users`` table, all of it holding the
GIL that the Kafka fetch thread needs as well (bench/ingest.py, py-spy): that, not
DuckDB, capped ingest. Here Arrow's C++ JSON reader parses the payloads straight into
columns, in parallel and without the GIL, and Python touches only the columns whose
Debezium encoding needs converting (dates, timestamps, decimals), with the very
converters ``cdc.decode`` uses.

It takes only the common case: Debezium envelopes of one table, ops c/u/r/d, all
with the same embedded schema or all without one. Anything else (unwrapped rows, a
schema change inside the batch, a value that does not parse or convert, another
table on the topic) returns None, and the caller decodes those events one by one,
which is exact and decides what goes to quarantine. Both paths stage the same values
(tests/test_columnar.py compares them). One difference is by design: only the image
that is staged (the after image, the before image of a delete) is converted, so a
malformed before image of an update, which no feed reads, is not noticed here.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from cdc.decode import ENVELOPE, HEAD, SEP, value_schema
from cdc.types import UTC, CdcError, ColumnType, Converter
from cdc.vector import vector

log = logging.getLogger("feedstore.columnar")

# Below this many events the per-event path is as fast and the setup is not worth it.
MIN_EVENTS = 64
_ROW_OPS = pa.array(["c", "u", "r", "d"])
# Arrow scalars, not Python values: pyarrow converting a bare Python value looks for
# dateutil on every call (an import that fails when it is not installed), ~40 µs each.
_DELETE = pa.scalar("d", pa.string())
_READ = pj.ReadOptions(use_threads=True, block_size=1 << 20)
_MAX_BLOCK = 1 << 30  # the reader's blocks are int32-sized; a batch this big decodes per event


@dataclass(frozen=True, slots=True)
class Columns:
    """A topic's events as columns, in the order given."""

    ops: pa.Array  # c, u, r or d
    positions: pa.Array  # int64: the source LSN, else the Kafka offset (as cdc.decode's position)
    values: dict[str, pa.Array]  # wanted column -> the after image's value, the before image's for deletes
    seen: frozenset[str]  # wanted columns that some non-delete event carried
    deletes: bool  # some event is a delete (counted while decoding; the stage needs it)


def decode_columns(topic: str, table: str, values: Sequence[bytes], offsets: Sequence[int], *,
                   wanted: frozenset[str], types: Mapping[str, ColumnType] | None = None,
                   zone: tzinfo = UTC, min_events: int = MIN_EVENTS) -> Columns | None:
    """The events' columns, or None when they are not all plain envelopes of ``table``
    (``schema.table``) that parse and convert; then decode them one by one instead."""
    if not values or len(values) < min_events:
        return None
    try:
        return _decode(topic, table, values, offsets, wanted, types, zone)
    except (CdcError, pa.ArrowException, ValueError, TypeError, ArithmeticError, KeyError) as ex:
        log.debug("columnar decoding declined; decoding per event", extra={"topic": topic, "why": str(ex)[:200]})
        return None


def _decode(topic: str, table: str, values: Sequence[bytes], offsets: Sequence[int], wanted: frozenset[str],
            types: Mapping[str, ColumnType] | None, zone: tzinfo) -> Columns | None:
    n = len(values)
    first = values[0]
    convs: dict[str, Converter]
    if first.startswith(HEAD):
        known = value_schema(topic, first, zone)
        if known is None:
            return None
        schema_bytes, plan = known
        if plan.kind != ENVELOPE:
            return None
        start = len(HEAD) + len(schema_bytes)
        cut = start + len(SEP)
        payloads = []
        for v in values:
            if not (v.startswith(schema_bytes, len(HEAD)) and v.startswith(SEP, start) and v.endswith(b"}")):
                return None  # another schema (or layout) in the batch
            payloads.append(v[cut:-1])
        convs = {name: conv for name, conv, _ in plan.after}
        explicit = _arrow_schema(schema_bytes, frozenset(wanted | convs.keys()))
        if explicit is None:
            return None
    else:
        if any(v.startswith(HEAD) for v in values):
            return None
        payloads = list(values)
        convs = {name: t.converter(zone) for name, t in (types or {}).items()}
        explicit = None
    data = _read(payloads, explicit)
    if data is None or data.num_rows != n:
        return None
    return _columns(data, table, offsets, wanted, convs)


def _read(payloads: list[bytes], explicit: pa.Schema | None) -> pa.Table | None:
    buf = b"\n".join(payloads)
    if explicit is not None:
        opts = pj.ParseOptions(explicit_schema=explicit, unexpected_field_behavior="ignore")
        return pj.read_json(io.BytesIO(buf), read_options=_READ, parse_options=opts)
    if len(buf) >= _MAX_BLOCK:
        return None
    # Inferred in one block: across blocks the reader cannot widen a field of a nested
    # row that one block saw only as null (a delete's sparse before image) and another
    # saw as text, and that batch would go the slow way for nothing. Measured: the
    # same CPU as 1 MB blocks in threads, the parse just runs on one core.
    data = pj.read_json(io.BytesIO(buf), read_options=pj.ReadOptions(use_threads=False, block_size=len(buf) + 1))
    # The reader takes ISO-looking strings for timestamps; JSON has none, so such fields
    # are read again as the strings they are.
    text = pa.schema([pa.field(f.name, _as_string(f.type)) for f in data.schema])
    if text != data.schema:
        opts = pj.ParseOptions(explicit_schema=text, unexpected_field_behavior="infer")
        data = pj.read_json(io.BytesIO(buf), read_options=_READ, parse_options=opts)
    return data


def _columns(data: pa.Table, table: str, offsets: Sequence[int], wanted: frozenset[str],
             convs: dict[str, Converter]) -> Columns | None:
    names = set(data.column_names)
    if not {"op", "source"} <= names:
        return None
    ops = data["op"].combine_chunks()
    if ops.type != pa.string() or not pc.all(pc.fill_null(pc.is_in(ops, value_set=_ROW_OPS), False)).as_py():
        return None
    source = data["source"].combine_chunks()
    if not pa.types.is_struct(source.type) or source.null_count:
        return None
    schema_name, _, table_name = table.partition(".")
    for field, want in (("schema", schema_name), ("table", table_name)):
        got = _field(source, field)
        if got is None or got.type != pa.string():
            return None
        if not pc.all(pc.fill_null(pc.equal(got, pa.scalar(want, pa.string())), False)).as_py():
            return None
    lsn = _field(source, "lsn")
    off = pa.array(offsets, pa.int64())
    positions = off if lsn is None or not pa.types.is_integer(lsn.type) else pc.coalesce(lsn.cast(pa.int64()), off)

    after = _image(data, "after")
    before = _image(data, "before")
    deletes = pc.equal(ops, _DELETE)
    deleted = pc.sum(deletes).as_py() or 0
    any_delete, has_upserts = deleted > 0, deleted < len(ops)
    if has_upserts and (after is None or pc.any(pc.and_(pc.invert(deletes), after.is_null())).as_py()):
        return None  # a c/u/r without its row: the per-event path says so in quarantine

    out: dict[str, pa.Array] = {}
    for name in wanted | convs.keys():
        a, b = _field(after, name), _field(before, name) if any_delete else None
        if a is None and b is None:
            continue
        col = _merge(deletes, a, b) if any_delete else a
        if col is None:
            return None
        conv = convs.get(name)
        if conv is not None:
            col = _convert(col, conv)
        if name in wanted:
            out[name] = col
    # As the per-event path: with no upsert in the batch, no column counts as missing.
    seen = frozenset(n for n in wanted if after is not None and after.type.get_field_index(n) >= 0) \
        if has_upserts else wanted
    return Columns(ops, positions, out, seen, any_delete)


def _image(data: pa.Table, name: str) -> pa.StructArray | None:
    """The before/after column: a struct array, or None when no event has one."""
    if name not in data.column_names:
        return None
    col = data[name].combine_chunks()
    if pa.types.is_null(col.type):
        return None
    if not pa.types.is_struct(col.type):
        raise TypeError(f"'{name}' is {col.type}, not a row")
    return col


def _field(struct: Any, name: str) -> pa.Array | None:
    """A struct's field, null where the struct itself is null; None when it has no such field."""
    if struct is None or struct.type.get_field_index(name) < 0:
        return None
    return pc.struct_field(struct, name)


def _merge(deletes: pa.Array, a: pa.Array | None, b: pa.Array | None) -> pa.Array | None:
    """Per event, the after image's value, or the before image's for a delete."""
    if a is None:
        assert b is not None
        a = pa.nulls(len(b), b.type)
    if b is None:
        b = pa.nulls(len(a), a.type)
    if a.type != b.type:
        if pa.types.is_null(a.type):
            a = a.cast(b.type)
        elif pa.types.is_null(b.type):
            b = b.cast(a.type)
        else:
            return None  # the images disagree on the JSON type: let the per-event path judge
    return pc.if_else(deletes, b, a)


def _convert(col: pa.Array, conv: Converter) -> pa.Array:
    """Debezium's encoding -> the value cdc.decode gives; Arrow infers the type as it does there."""
    if col.null_count == len(col):
        return pa.nulls(len(col))  # as the loop below gives it, without the loop
    whole = vector(conv)
    out = whole(col) if whole is not None else None
    if out is not None:
        return out
    return pa.array([None if v is None else conv(v) for v in col.to_pylist()])


# --------------------------------------------------------------------------- schemas

_SCHEMAS: dict[tuple[bytes, frozenset[str]], pa.Schema | None] = {}


def _arrow_schema(schema_bytes: bytes, columns: frozenset[str]) -> pa.Schema | None:
    """The payload's Arrow schema from the embedded Connect schema: exact types, and
    only the columns needed (the reader skips the others); None for shapes it cannot say."""
    key = (schema_bytes, columns)
    if key not in _SCHEMAS:
        if len(_SCHEMAS) > 256:
            _SCHEMAS.clear()
        _SCHEMAS[key] = _payload_schema(orjson.loads(schema_bytes), columns)
    return _SCHEMAS[key]


def _payload_schema(schema: dict[str, Any], columns: frozenset[str]) -> pa.Schema | None:
    fields = {str(f.get("field")): f for f in schema.get("fields") or ()}
    row = fields.get("after") or fields.get("before")
    if row is None or "op" not in fields or "source" not in fields:
        return None
    cols = []
    for f in row.get("fields") or ():
        if f.get("field") in columns:
            typ = _arrow_type(f)
            if typ is None:
                return None
            cols.append(pa.field(f["field"], typ))
    image = pa.struct(cols)
    source = pa.struct([pa.field("schema", pa.string()), pa.field("table", pa.string()),
                        pa.field("lsn", pa.int64())])
    return pa.schema([pa.field("op", pa.string()), pa.field("source", source),
                      pa.field("before", image), pa.field("after", image)])


_CONNECT = {"int8": pa.int64(), "int16": pa.int64(), "int32": pa.int64(), "int64": pa.int64(),
            "float32": pa.float64(), "float64": pa.float64(), "float": pa.float64(), "double": pa.float64(),
            "boolean": pa.bool_(), "string": pa.string(), "bytes": pa.string()}


def _arrow_type(field: dict[str, Any]) -> pa.DataType | None:
    """How the JSON of a Connect field reads into Arrow before conversion (as orjson
    would give it); maps and structs are left to the per-event path."""
    typ = field.get("type")
    if typ == "array":
        item = _arrow_type(field.get("items") or {})
        return None if item is None else pa.list_(item)
    return _CONNECT.get(str(typ))


def _as_string(t: pa.DataType) -> pa.DataType:
    """``t`` with every timestamp in it (nested too) read as a string."""
    if pa.types.is_timestamp(t):
        return pa.string()
    if pa.types.is_struct(t):
        return pa.struct([pa.field(t.field(i).name, _as_string(t.field(i).type)) for i in range(t.num_fields)])
    if pa.types.is_list(t):
        return pa.list_(_as_string(t.value_type))
    return t


__all__ = ["MIN_EVENTS", "Columns", "decode_columns"]
