"""Decode one Debezium JSON change event (Kafka key + value bytes) into a `Change`.

Pure and service-free, because it is the consumer's hot path and must be testable
from captured bytes. It accepts the three shapes an operator's Kafka Connect may be
configured to produce, and gives the same `Change` for the same row in each:

1. the full envelope with embedded schema ``{"schema": ..., "payload": {...}}``;
2. the full envelope without schema (``schemas.enable=false``): the payload alone;
3. the flat row of ``ExtractNewRecordState`` (``add.fields=op,lsn,source.ts_ms,table,
   schema``, delete handling ``rewrite``), with or without the schema wrapper.

Speed: an embedded schema is usually 3/4 of the bytes and repeats verbatim for every
event of a table. Kafka's JsonConverter writes ``{"schema":S,"payload":P}`` in that
order, so for each topic we remember the exact bytes of the schemas already seen
(verified to be the whole schema) together with a compiled decoding plan; when an
event starts with known schema bytes (one memcmp) only the payload is parsed. The
plan lists just the columns that need converting, so untyped columns cost nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

import orjson

from cdc.types import (
    UTC,
    BadValueError,
    CdcError,
    ColumnType,
    Converter,
    DecodeError,
    array_of,
    b64_bytes,
    days_to_date,
    fixed_decimal,
    float_value,
    instant_ms,
    ms_to_time,
    ns_to_time,
    parse_column_type,
    us_to_time,
    variable_decimal,
    wall_timestamp,
    zoned_time,
    zoned_timestamp,
)

# ColumnType, parse_column_type and the errors are re-exported: callers import them from here.
__all__ = ["CdcError", "Change", "ColumnType", "DecodeError", "decode", "parse_column_type"]

_OPS = frozenset({"c", "u", "d", "r", "t", "m"})
_ROW_OPS = frozenset({"c", "u", "r", "d"})
_NEEDS_AFTER = frozenset({"c", "u", "r"})


@dataclass(frozen=True, slots=True)
class Change:
    """One row change, with Debezium's encodings already decoded.

    `before`/`after` are None where the op has no such image: ``c``/``r`` have no
    before, ``d`` no after, ``t`` (truncate) and ``m`` (logical decoding message)
    neither. Note that a Postgres delete's `before` only holds real values for the
    key columns unless the table has REPLICA IDENTITY FULL (Debezium fills the other
    NOT NULL columns with placeholders such as "" and 0).
    """

    table: str
    op: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    key: dict[str, Any] | None
    position: int | None
    source_ts_ms: int | None


# --------------------------------------------------------------------------- schema -> plan

_Fields = tuple[tuple[str, Converter, str], ...]   # (column, converter, type for messages)

_LOGICAL: dict[str, Converter] = {
    "io.debezium.time.Date": days_to_date,
    "org.apache.kafka.connect.data.Date": days_to_date,
    "io.debezium.time.Time": ms_to_time,
    "org.apache.kafka.connect.data.Time": ms_to_time,
    "io.debezium.time.MicroTime": us_to_time,
    "io.debezium.time.NanoTime": ns_to_time,
    "io.debezium.time.ZonedTime": zoned_time,
    "io.debezium.time.ZonedTimestamp": zoned_timestamp,
    # Connect's Timestamp is defined as a UTC instant, so no source-zone shift.
    "org.apache.kafka.connect.data.Timestamp": instant_ms,
    "io.debezium.data.VariableScaleDecimal": variable_decimal,
    "io.debezium.data.Bits": b64_bytes,
}
_WALL = {"io.debezium.time.Timestamp": "ms", "io.debezium.time.MicroTimestamp": "us",
         "io.debezium.time.NanoTimestamp": "ns"}
_PASS = frozenset({"io.debezium.data.Json", "io.debezium.data.Uuid", "io.debezium.data.Enum",
                   "io.debezium.data.EnumSet", "io.debezium.data.Xml"})


def _bad_schema(what: str) -> DecodeError:
    return DecodeError(f"embedded schema is malformed: {what}; is the value converter "
                       "Kafka's JsonConverter with schemas.enable=true?")


def _converter(schema: Any, zone: tzinfo) -> Converter | None:
    """The converter for one schema node, or None when the JSON value is already right."""
    if schema.__class__ is not dict:
        raise _bad_schema(f"a field's schema is {schema!r}, not an object")
    name = schema.get("name")
    if name is not None:
        if name in _PASS:
            return None
        conv = _LOGICAL.get(name)
        if conv is not None:
            return conv
        unit = _WALL.get(name)
        if unit is not None:
            return wall_timestamp(unit, zone)
        if name == "org.apache.kafka.connect.data.Decimal":
            scale = (schema.get("parameters") or {}).get("scale", "0")
            try:
                return fixed_decimal(int(scale), text_allowed=False)
            except (TypeError, ValueError):
                raise _bad_schema(f"Decimal scale {scale!r} is not an integer") from None
    typ = schema.get("type")
    if typ == "bytes":
        return b64_bytes
    if typ == "float64" or typ == "float32" or typ == "double" or typ == "float":
        return float_value
    if typ == "array":
        item = _converter(schema.get("items"), zone)
        return None if item is None else array_of(item)
    if typ == "map":
        val = _converter(schema.get("values"), zone)
        return None if val is None else _map_of(val)
    if typ == "struct":
        fields = _struct_fields(schema, zone)
        return _struct_of(fields) if fields else None
    return None


def _struct_fields(schema: Any, zone: tzinfo, skip_meta: bool = False) -> _Fields:
    if schema.__class__ is not dict:
        raise _bad_schema(f"struct schema is {schema!r}, not an object")
    out = []
    for f in schema.get("fields") or ():
        name = f.get("field") if f.__class__ is dict else None
        if name.__class__ is not str:
            raise _bad_schema(f"struct field {f!r} has no 'field' name")
        if skip_meta and name.startswith("__"):
            continue
        conv = _converter(f, zone)
        if conv is not None:
            out.append((name, conv, f.get("name") or f.get("type") or "?"))
    return tuple(out)


def _map_of(val: Converter) -> Converter:
    def conv(v: Any) -> Any:
        if v.__class__ is dict:
            return {k: None if x is None else val(x) for k, x in v.items()}
        raise TypeError(f"expected a JSON object for a map, got {v.__class__.__name__}")
    return conv


def _struct_of(fields: _Fields) -> Converter:
    def conv(v: Any) -> Any:
        if v.__class__ is not dict:
            raise TypeError(f"expected a JSON object for a struct, got {v.__class__.__name__}")
        return _apply(fields, v)
    return conv


_ENVELOPE, _ROW, _SKIP, _UNKNOWN = range(4)


@dataclass(frozen=True, slots=True)
class _Plan:
    kind: int
    before: _Fields = ()
    after: _Fields = ()
    meta: tuple[str, ...] = ()      # ROW: the add.fields columns to drop from the row
    scalar: Converter | None = None  # key schemas that are not structs


def _field_map(schema: dict[str, Any]) -> dict[str, Any]:
    fields = schema.get("fields")
    if schema.get("type") != "struct" or fields.__class__ is not list:
        return {}
    return {str(f.get("field")): f for f in fields if f.__class__ is dict}


def _compile_value(schema: dict[str, Any], zone: tzinfo) -> _Plan:
    name = schema.get("name") or ""
    if (name == "io.debezium.connector.common.Heartbeat"
            or name.endswith(("TransactionMetadataValue", "SchemaChangeValue"))):
        return _Plan(_SKIP)
    fields = _field_map(schema)
    if "op" in fields and "source" in fields:
        before, after = fields.get("before"), fields.get("after")
        return _Plan(_ENVELOPE,
                     before=_struct_fields(before, zone) if before else (),
                     after=_struct_fields(after, zone) if after else ())
    if "__op" in fields or "__deleted" in fields:
        meta = tuple(n for n in fields if n.startswith("__"))
        return _Plan(_ROW, after=_struct_fields(schema, zone, skip_meta=True), meta=meta)
    return _Plan(_UNKNOWN)


def _compile_key(schema: dict[str, Any], zone: tzinfo) -> _Plan:
    if schema.get("type") == "struct":
        return _Plan(_ROW, after=_struct_fields(schema, zone))
    return _Plan(_ROW, scalar=_converter(schema, zone))


# --------------------------------------------------------------------------- bytes -> (plan, payload)

_HEAD = b'{"schema":'
_SEP = b',"payload":'
_MAX_PER_TOPIC = 8
_MAX_TOPICS = 4096
_Cache = dict[tuple[str, tzinfo], list[tuple[bytes, _Plan]]]
_VALUE_PLANS: _Cache = {}
_KEY_PLANS: _Cache = {}
_COMPILED: dict[tuple[Any, bytes, tzinfo], _Plan] = {}  # by schema content, for other layouts


def _loads(raw: Any, what: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise DecodeError(f"{what} is not valid JSON ({e}); the connector must use "
                          f"Kafka's JsonConverter for the {what}") from None


def _known(raw: bytes, topic: str, zone: tzinfo, cache: _Cache) -> tuple[bytes, _Plan] | None:
    """The remembered schema that ``raw`` starts with, as ``{"schema":S,"payload":``, and its plan."""
    for schema_bytes, plan in cache.get((topic, zone), ()):
        if raw.startswith(schema_bytes, len(_HEAD)) and raw.startswith(_SEP, len(_HEAD) + len(schema_bytes)) \
                and raw.startswith(_HEAD):
            return schema_bytes, plan
    return None


def _load(raw: Any, topic: str, zone: tzinfo, cache: _Cache,
          compile_: Callable[[dict[str, Any], tzinfo], _Plan], what: str) -> tuple[_Plan | None, Any]:
    """Parse `raw`; return the compiled plan of its embedded schema (None if it has
    none) and its payload."""
    if raw.__class__ is not bytes:
        raw = raw.encode() if isinstance(raw, str) else bytes(raw)
    known = _known(raw, topic, zone, cache) if raw.endswith(b"}") else None
    if known is not None:
        schema_bytes, plan = known
        try:
            return plan, orjson.loads(memoryview(raw)[len(_HEAD) + len(schema_bytes) + len(_SEP):-1])
        except orjson.JSONDecodeError:
            pass  # not the layout we assumed: parse it all for a precise error
    doc = _loads(raw, what)
    if doc.__class__ is not dict or len(doc) != 2 or "schema" not in doc or "payload" not in doc:
        return None, doc
    schema = doc["schema"]
    if schema is None:
        return None, doc["payload"]
    if schema.__class__ is not dict:
        raise _bad_schema(f"'schema' is a {type(schema).__name__}, not an object")
    compiled_key = (compile_, orjson.dumps(schema), zone)
    found = _COMPILED.get(compiled_key)
    if found is None:
        try:
            found = _COMPILED[compiled_key] = compile_(schema, zone)
        except (AttributeError, TypeError, ValueError) as e:  # a shape we did not foresee
            raise _bad_schema(str(e)) from None
        if len(_COMPILED) > _MAX_TOPICS:
            _COMPILED.clear()
    plan = found
    # Remember the schema's exact bytes, but only if they are provably the whole schema.
    if raw.startswith(_HEAD):
        end = raw.find(_SEP, 10)
        if end > 0:
            schema_bytes = raw[10:end]
            try:
                same = orjson.loads(schema_bytes) == schema
            except orjson.JSONDecodeError:
                same = False
            if same:
                if len(cache) >= _MAX_TOPICS:
                    cache.clear()
                entries = cache.setdefault((topic, zone), [])
                if all(known != schema_bytes for known, _ in entries):
                    entries.insert(0, (schema_bytes, plan))
                    del entries[_MAX_PER_TOPIC:]
    return plan, doc["payload"]


# What cdc.columnar shares: the layout and the cached plans.
HEAD, SEP, ENVELOPE = _HEAD, _SEP, _ENVELOPE


def value_schema(topic: str, raw: bytes, zone: tzinfo = UTC) -> tuple[bytes, _Plan] | None:
    """The exact bytes of the schema embedded in ``raw`` and its compiled plan, learning
    them from ``raw`` when new; None when its layout is not ``{"schema":S,"payload":P}``."""
    known = _known(raw, topic, zone, _VALUE_PLANS)
    if known is None:
        _load(raw, topic, zone, _VALUE_PLANS, _compile_value, "value")  # parses it, remembers the schema
        known = _known(raw, topic, zone, _VALUE_PLANS)
    return known


def check_keys(topic: str, keys: Iterable[bytes | None], *, types: Mapping[str, ColumnType] | None = None,
               zone: tzinfo = UTC) -> None:
    """Raise DecodeError unless ``decode`` would accept every one of ``keys`` (cdc.columnar).

    A key whose columns need no converting can only fail by not being JSON, so for
    those one parse says it (~0.3 µs instead of ~3 µs of decoding); any other key is
    decoded in full. Each distinct key is checked once: a batch repeats the keys of
    busy rows (20,000 users events of bench/ingest.py carry 10,950 keys).
    """
    for key in dict.fromkeys(keys):
        if key is not None and not _json_only_key(key, topic, types, zone):
            _decode_key(key, topic, types, zone)  # learns a new schema, or says what is wrong


def _json_only_key(key: Any, topic: str, types: Mapping[str, ColumnType] | None, zone: tzinfo) -> bool:
    """True when ``key`` parses and nothing in it is converted, so _decode_key cannot fail on it."""
    if key.__class__ is not bytes:
        return False
    if key.startswith(_HEAD):  # with an embedded schema: one we know, that converts nothing
        known = _known(key, topic, zone, _KEY_PLANS) if key.endswith(b"}") else None
        if known is None or known[1].after or known[1].scalar is not None:
            return False
        return _parses(memoryview(key)[len(_HEAD) + len(known[0]) + len(_SEP):-1])
    try:
        p = orjson.loads(key)
    except orjson.JSONDecodeError:
        return False
    if p.__class__ is not dict:
        return True  # a bare scalar key
    # {"schema":..,"payload":..} is an envelope after all; typed columns convert.
    return not ("schema" in p and "payload" in p and len(p) == 2) and not (types and not types.keys().isdisjoint(p))


def _parses(raw: memoryview) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


# --------------------------------------------------------------------------- payload -> Change

def _apply(fields: _Fields, row: dict[str, Any]) -> dict[str, Any]:
    """Convert the typed columns of `row` in place (fresh from orjson, so ours)."""
    name = ""
    try:
        for name, conv, _ in fields:
            v = row.get(name)
            if v is not None:
                row[name] = conv(v)
    except BadValueError as e:
        raise DecodeError(f"column {name!r}: {e}") from None
    except (ValueError, TypeError, ArithmeticError) as e:
        typ = next(t for n, _, t in fields if n == name)
        raise DecodeError(f"column {name!r}: value {_short(row.get(name))} does not fit "
                          f"its type {typ} ({e}); check the connector's converters or the "
                          "mapping's column type") from None
    return row


def _apply_types(types: Mapping[str, ColumnType], zone: tzinfo,
                 row: dict[str, Any]) -> dict[str, Any]:
    names = types if len(types) <= len(row) else row
    for name in names:
        t = types.get(name)
        if t is None:
            continue
        v = row.get(name)
        if v is not None:
            try:
                row[name] = t.converter(zone)(v)
            except BadValueError as e:
                raise DecodeError(f"column {name!r}: {e} (mapping type {t})") from None
            except (ValueError, TypeError, ArithmeticError) as e:
                raise DecodeError(f"column {name!r}: value {_short(v)} does not fit the "
                                  f"mapping's type {t} ({e})") from None
    return row


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def _row(v: Any, fields: _Fields | None, types: Mapping[str, ColumnType] | None,
         zone: tzinfo, what: str) -> dict[str, Any]:
    if v.__class__ is not dict:
        raise DecodeError(f"'{what}' is {_short(v)}, not a row object")
    if fields is not None:
        return _apply(fields, v) if fields else v
    return _apply_types(types, zone, v) if types else v


def _topic_table(topic: str) -> tuple[str, str]:
    parts = topic.rsplit(".", 2)
    if len(parts) < 2 or not parts[-1] or not parts[-2]:
        raise DecodeError(f"cannot tell the table of topic {topic!r}: the event names no "
                          "table and the topic is not '<prefix>.<schema>.<table>'; add "
                          "'table,schema' to transforms.unwrap.add.fields")
    return parts[-2], parts[-1]


def _classify(p: dict[str, Any]) -> int:
    """The kind of a payload that came without a (recognized) schema."""
    if "op" in p and p.get("source").__class__ is dict:
        return _ENVELOPE
    if "__op" in p or "__deleted" in p:
        return _ROW
    if p.get("status") in ("BEGIN", "END") and ("event_count" in p or "data_collections" in p):
        return _SKIP  # transaction metadata
    if "ddl" in p or "tableChanges" in p:
        return _SKIP  # schema change
    if len(p) == 1 and "ts_ms" in p:
        return _SKIP  # heartbeat
    raise DecodeError("value is neither a Debezium envelope (with 'op' and 'source') nor an "
                      "ExtractNewRecordState row (with '__op'/'__deleted'); set "
                      "transforms.unwrap.add.fields=op,lsn,source.ts_ms,table,schema and "
                      f"delete handling 'rewrite' (keys seen: {_short(sorted(p)[:12])})")


def _int_or_none(v: Any) -> int | None:
    return v if v.__class__ is int else None


def _decode_key(key: Any, topic: str, types: Mapping[str, ColumnType] | None,
                zone: tzinfo) -> dict[str, Any] | None:
    if key is None:
        return None
    plan, p = _load(key, topic, zone, _KEY_PLANS, _compile_key, "key")
    if p is None:
        return None
    if p.__class__ is dict:
        if plan is not None:
            return _apply(plan.after, p) if plan.after else p
        return _apply_types(types, zone, p) if types else p
    if plan is not None and plan.scalar is not None:
        try:
            p = plan.scalar(p)
        except (ValueError, TypeError, ArithmeticError) as e:
            raise DecodeError(f"key {_short(p)} does not fit its schema ({e})") from None
    return {"key": p}  # a bare scalar key (e.g. after ExtractField$Key) gets the name "key"


def decode(topic: str, key: bytes | None, value: bytes | None, *,
           types: Mapping[str, ColumnType] | None = None,
           zone: tzinfo = UTC) -> Change | None:
    """Decode one Kafka record produced by Debezium.

    Returns None for records that are not row changes and are safe to skip:
    tombstones (value None, or a null payload), heartbeats (topic
    ``__debezium-heartbeat*`` or a Heartbeat schema), transaction metadata (topic
    ``*.transaction`` or a BEGIN/END record) and schema-change events.

    `types` gives the declared column types of this table and is used only when the
    event carries no schema (an embedded schema wins). `zone` is the source
    database's zone for `timestamp without time zone` columns. Raises DecodeError,
    with the cause and what to fix, for anything malformed; the caller quarantines
    the record and goes on.
    """
    if value is None or topic.startswith("__debezium-heartbeat") or topic.endswith(".transaction"):
        return None
    plan, p = _load(value, topic, zone, _VALUE_PLANS, _compile_value, "value")
    if p is None:
        return None
    if p.__class__ is not dict:
        raise DecodeError(f"value is {_short(p)}, not a JSON object; expected a Debezium "
                          "envelope or an ExtractNewRecordState row")
    if plan is not None and plan.kind == _UNKNOWN:
        plan = None  # a schema we do not recognize: judge the payload by its shape
    kind = _classify(p) if plan is None else plan.kind
    if kind == _SKIP:
        return None
    if kind == _ENVELOPE:
        return _from_envelope(topic, key, p, plan, types, zone)
    return _from_row(topic, key, p, plan, types, zone)


def _from_envelope(topic: str, key: Any, p: dict[str, Any], plan: _Plan | None,
                   types: Mapping[str, ColumnType] | None, zone: tzinfo) -> Change:
    op = p.get("op")
    if op not in _OPS:
        raise DecodeError(f"unknown op {_short(op)}; Debezium sends one of c, u, d, r, t, m")
    src = p.get("source")
    if src.__class__ is not dict:
        raise DecodeError(f"envelope's 'source' is {_short(src)}, not an object")
    before, after = p.get("before"), p.get("after")
    if before is not None:
        before = _row(before, None if plan is None else plan.before, types, zone, "before")
    if after is not None:
        after = _row(after, None if plan is None else plan.after, types, zone, "after")
    elif op in _NEEDS_AFTER:
        raise DecodeError(f"op {op!r} event has no 'after' row")
    schema, table = src.get("schema") or src.get("db"), src.get("table")
    if not (schema and table):
        schema, table = _topic_table(topic)
    return Change(f"{schema}.{table}", op, before, after, _decode_key(key, topic, types, zone),
                  _int_or_none(src.get("lsn")), _int_or_none(src.get("ts_ms")))


def _from_row(topic: str, key: Any, p: dict[str, Any], plan: _Plan | None,
              types: Mapping[str, ColumnType] | None, zone: tzinfo) -> Change:
    """An ExtractNewRecordState row: the `__` fields are metadata, never columns."""
    deleted = p.pop("__deleted", None)
    op = p.pop("__op", None)
    lsn = p.pop("__lsn", None)
    if lsn is None:
        lsn = p.pop("__source_lsn", None)
    ts = p.pop("__source_ts_ms", None)
    table, schema = p.pop("__table", None), p.pop("__schema", None)
    for extra in (plan.meta if plan is not None else [k for k in p if k.startswith("__")]):
        p.pop(extra, None)
    if deleted is True or deleted == "true":
        op = "d"
    elif not (deleted is None or deleted is False or deleted == "false"):
        raise DecodeError(f"__deleted is {_short(deleted)}; expected \"true\" or \"false\"")
    elif op is None:
        op = "u"  # no add.fields=op: an upsert of unknown origin
    elif op not in _ROW_OPS:
        raise DecodeError(f"unknown op {_short(op)} in __op; expected one of c, u, d, r")
    row = _row(p, None if plan is None else plan.after, types, zone, "row")
    if not (schema and table):
        topic_schema, topic_table = _topic_table(topic)
        schema, table = schema or topic_schema, table or topic_table
    k = _decode_key(key, topic, types, zone)
    ts_ms, position = _int_or_none(ts), _int_or_none(lsn)
    if op == "d":
        return Change(f"{schema}.{table}", "d", row, None, k, position, ts_ms)
    return Change(f"{schema}.{table}", op, None, row, k, position, ts_ms)
