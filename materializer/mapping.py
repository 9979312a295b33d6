"""The operator's mapping file: which source tables feed which InTarget feeds, and how.

A new operator onboards by writing this file, not code (ARCHITECTURE.md decision 6).
Field values are DuckDB SQL expressions over the decoded source columns, so the
materializer maps whole batches in one statement instead of row by row in Python.
Everything that can be checked without data is checked at load (keys, feed and field
names, SQL syntax, unknown functions, constants and enum-map values against the spec's
vocabularies), and every error names the file, the feed and the field, because the
person reading it is editing that file.

Format (YAML; docs/mapping.md is the full reference)::

    topic_prefix: spacevegas          # Debezium's topic.prefix
    source_zone: Europe/Malta         # zone of naive source timestamps (default UTC)
    tables:                           # optional, per source table
      public.users:
        zone: Europe/Malta            # per-table override of source_zone
        topic: other.name             # when the topic is not <topic_prefix>.<schema>.<table>
        columns: {created: timestamp, balance: "decimal(12,2)"}   # types for schema-less events
    feeds:
      players:
        source: public.users
        fields:
          id: user_id::VARCHAR                           # an SQL expression
          gender: {sql: sex, map: {M: male, F: female}, default: other}
          is_blocked: {const: false}
        custom_fields:                                   # players only
          vip_level: {type: integer, sql: vip}
        on_delete: ignore              # or {set: {is_blocked: true}}
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import duckdb
import yaml

from cdc.decode import ColumnType, parse_column_type
from materializer import MaterializerError
from materializer.validate import evaluate
from schemas import CUSTOM_FIELD_TYPES, Feed, Field, load_feeds


class MappingError(MaterializerError, ValueError):
    """The mapping file is wrong; the message names file, feed and field and says what to write."""


@dataclass(frozen=True)
class SourceTable:
    name: str  # "schema.table"
    topic: str
    zone: ZoneInfo
    types: dict[str, ColumnType] = field(default_factory=dict)


@dataclass(frozen=True)
class FeedMapping:
    """One feed of the mapping. ``feed`` is the spec's feed plus this operator's custom
    fields (appended after the standard ones), so everything downstream (store, export,
    API) reads its columns from here."""

    feed: Feed
    source: SourceTable
    exprs: dict[str, str]  # feed field -> SQL expression over source columns
    delete_set: dict[str, str] | None  # None: deletes are ignored

    @cached_property
    def field_columns(self) -> dict[str, frozenset[str]]:
        """Source columns each field's expression reads."""
        return {name: frozenset(referenced_columns(sql)) for name, sql in self.exprs.items()}

    @cached_property
    def columns(self) -> frozenset[str]:
        """Source columns the expressions read: staged as NULL when an event lacks them
        (a delete's key-only before image, or an event from before a column was added)."""
        exprs = list((self.delete_set or {}).values())
        return frozenset(col for sql in exprs for col in referenced_columns(sql)).union(
            *self.field_columns.values())


@dataclass(frozen=True)
class Mapping:
    path: Path
    topic_prefix: str
    tables: dict[str, SourceTable]  # by topic
    feeds: dict[str, FeedMapping]  # by feed name

    def for_topic(self, topic: str) -> list[FeedMapping]:
        return [fm for fm in self.feeds.values() if fm.source.topic == topic]

    def columns(self, topic: str) -> frozenset[str]:
        return frozenset().union(*(fm.columns for fm in self.for_topic(topic)))

    @property
    def topics(self) -> list[str]:
        return sorted({fm.source.topic for fm in self.feeds.values()})


_TOP_KEYS = {"topic_prefix", "source_zone", "tables", "feeds"}
_TABLE_KEYS = {"zone", "columns", "topic"}
_FEED_KEYS = {"source", "fields", "custom_fields", "on_delete"}
_VALUE_KEYS = {"sql", "map", "default", "const"}
_CUSTOM_KEYS = _VALUE_KEYS | {"type", "description"}
_CUSTOM_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_YAML_BOOLS = "YAML reads unquoted yes/no/on/off/true/false as booleans"


def load_mapping(path: str | Path) -> Mapping:
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as ex:
        raise MappingError(f"{path}: cannot read the mapping file ({ex.strerror}); set FEEDSTORE_MAPPING") from ex
    except yaml.YAMLError as ex:
        raise MappingError(f"{path}: not valid YAML: {ex}") from ex
    return parse_mapping(doc, path)


def parse_mapping(doc: Any, path: Path) -> Mapping:
    where = str(path)
    if not isinstance(doc, dict):
        raise MappingError(f"{where}: expected a mapping with 'topic_prefix' and 'feeds'")
    _no_unknown(doc, _TOP_KEYS, where)
    prefix = _need_str(doc, "topic_prefix", where)
    default_zone = _zone(doc.get("source_zone", "UTC"), f"{where}: source_zone")
    tables_doc = doc.get("tables") or {}
    if not isinstance(tables_doc, dict):
        raise MappingError(f"{where}: 'tables' must map 'schema.table' to its settings")
    feeds_doc = doc.get("feeds")
    if not isinstance(feeds_doc, dict) or not feeds_doc:
        raise MappingError(f"{where}: 'feeds' must map feed names to their definitions")
    for name, spec in tables_doc.items():
        tctx = f"{where}: tables.{name}"
        if not isinstance(spec, dict):
            raise MappingError(f"{tctx}: expected a mapping with 'zone', 'columns' and/or 'topic'")
        _no_unknown(spec, _TABLE_KEYS, tctx)
    known = load_feeds()
    tables: dict[str, SourceTable] = {}

    def table(name: str, ctx: str) -> SourceTable:
        if name.count(".") != 1:
            raise MappingError(f"{ctx}: source {name!r} must be written 'schema.table', e.g. public.users")
        spec = tables_doc.get(name) or {}
        topic = spec.get("topic") or f"{prefix}.{name}"
        if topic not in tables:
            zone = _zone(spec.get("zone"), f"{where}: tables.{name}.zone") if spec.get("zone") else default_zone
            types = {}
            columns = spec.get("columns") or {}
            if not isinstance(columns, dict):
                raise MappingError(f"{where}: tables.{name}.columns must map column names to types")
            for col, text in columns.items():
                try:
                    types[str(col)] = parse_column_type(str(text))
                except ValueError as ex:
                    raise MappingError(f"{where}: tables.{name}.columns.{col}: {ex}") from ex
            tables[topic] = SourceTable(name=name, topic=topic, zone=zone, types=types)
        return tables[topic]

    feeds: dict[str, FeedMapping] = {}
    for feed_name, spec in feeds_doc.items():
        ctx = f"{where}: feed {feed_name!r}"
        if feed_name not in known:
            raise MappingError(f"{ctx}: unknown feed; the feeds are {', '.join(sorted(known))}")
        if not isinstance(spec, dict):
            raise MappingError(f"{ctx}: expected 'source' and 'fields'")
        if feed_name == "casino_activity" or "actions" in spec:  # aggregated from game actions: docs/casino.md
            from materializer.casino_mapping import parse_actions

            feeds[feed_name] = parse_actions(known[feed_name], spec, table(_need_str(spec, "source", ctx), ctx), ctx)
            continue
        _no_unknown(spec, _FEED_KEYS, ctx)
        source = table(_need_str(spec, "source", ctx), ctx)
        feed = _with_custom_fields(known[feed_name], spec.get("custom_fields"), ctx)
        exprs = _field_exprs(feed, spec.get("fields"), spec.get("custom_fields") or {}, source, ctx)
        delete_set = _delete_policy(feed, spec.get("on_delete", "ignore"), source, ctx)
        feeds[feed_name] = FeedMapping(feed, source, exprs, delete_set)
    for name in tables_doc:
        if all(fm.source.name != name for fm in feeds.values()):
            raise MappingError(f"{where}: tables.{name}: no feed has this table as its 'source' (typo?)")
    return Mapping(path=path, topic_prefix=prefix, tables=tables, feeds=feeds)


# --------------------------------------------------------------------------- fields

def _with_custom_fields(feed: Feed, doc: Any, ctx: str) -> Feed:
    """The feed with the operator's custom fields appended, typed as the spec allows."""
    if doc is None:
        return feed
    if not feed.custom_field_types:
        raise MappingError(f"{ctx}: custom_fields: the spec allows custom fields only in "
                           f"{', '.join(f.name for f in load_feeds().values() if f.custom_field_types)}")
    if not isinstance(doc, dict) or not doc:
        raise MappingError(f"{ctx}: custom_fields must map field names to {{type: ..., sql: ...}}")
    extra = []
    for name, spec in doc.items():
        fctx = f"{ctx}, custom field {name!r}"
        if not isinstance(name, str) or not _CUSTOM_NAME.fullmatch(name):
            raise MappingError(f"{fctx}: names are lower-case letters, digits and '_', starting with a letter")
        if name in feed.field_names:
            raise MappingError(f"{fctx}: {feed.name} already has a standard field of that name")
        if not isinstance(spec, dict):
            raise MappingError(f"{fctx}: write {{type: one of {', '.join(feed.custom_field_types)}, sql: ...}}")
        _no_unknown(spec, _CUSTOM_KEYS, fctx)
        kind = spec.get("type")
        if kind not in feed.custom_field_types:
            raise MappingError(f"{fctx}: type {kind!r} is not one the spec allows for custom fields "
                               f"({', '.join(feed.custom_field_types)}; decimal has 2 places, "
                               "timestamp is 'YYYY-MM-DD HH:MM:SS', array is a list of strings)")
        assert kind in CUSTOM_FIELD_TYPES
        description = spec.get("description") or f"Custom field ({kind})."
        extra.append(Field(name=name, type=kind, required=False, description=str(description),
                           scale=2 if kind == "decimal" else None))
    return dataclasses.replace(feed, fields=feed.fields + tuple(extra))


def _field_exprs(feed: Feed, doc: Any, custom: dict[str, Any], source: SourceTable, ctx: str) -> dict[str, str]:
    if not isinstance(doc, dict):
        raise MappingError(f"{ctx}: 'fields' must map feed fields to SQL expressions")
    names = set(feed.field_names)
    for name in doc:
        if name not in names or name in custom:
            raise MappingError(f"{ctx}, field {name!r}: not a field of {feed.name}; its fields are "
                               f"{', '.join(f for f in feed.field_names if f not in custom)} "
                               "(operator-specific fields go under custom_fields)")
    exprs: dict[str, str] = {}
    for f in feed.fields:
        fctx = f"{ctx}, {'custom ' if f.name in custom else ''}field {f.name!r}"
        if f.name == feed.stamp:
            if f.name in doc:
                raise MappingError(f"{fctx}: is Feedstore's own change stamp; remove it from the mapping")
            continue
        if f.name in custom:
            spec = {k: v for k, v in custom[f.name].items() if k not in ("type", "description")}
            if not spec:
                raise MappingError(f"{fctx}: say where the value comes from: sql: ..., or const: ...")
        elif f.name in doc:
            spec = doc[f.name]
        elif f.required:
            raise MappingError(f"{fctx}: required by the spec but not mapped; add an expression for it")
        else:
            exprs[f.name] = "NULL"
            continue
        exprs[f.name] = _expr(spec, f, source, fctx)
    return exprs


def _expr(spec: Any, f: Field, source: SourceTable, ctx: str) -> str:
    """One field's mapping (expression, constant, or enum map) as a checked SQL expression."""
    constants: list[Any] = []
    if isinstance(spec, str):
        sql = spec
    elif spec is None or isinstance(spec, bool | int | float):
        sql = _literal(spec)
        constants.append(spec)
    elif isinstance(spec, dict):
        _no_unknown(spec, _VALUE_KEYS, ctx)
        if "const" in spec:
            if len(spec) > 1:
                raise MappingError(f"{ctx}: 'const' stands alone; drop {sorted(set(spec) - {'const'})}")
            sql = _literal(spec["const"])
            constants.append(spec["const"])
        elif "sql" in spec:
            sql = str(spec["sql"])
            if "map" in spec:
                sql = _enum_map(sql, spec, ctx)
                constants.extend(spec["map"].values())
                if spec.get("default") is not None:
                    constants.append(spec["default"])
            elif "default" in spec:
                sql = f"coalesce(({sql}), {_literal(spec['default'])})"
                constants.append(spec["default"])
        else:
            raise MappingError(f"{ctx}: write a SQL expression, {{const: value}} or {{sql: ..., map: {{...}}}}")
    else:
        raise MappingError(f"{ctx}: write a SQL expression, {{const: value}} or {{sql: ..., map: {{...}}}}")
    _check_syntax(sql, ctx)
    _check_binding(sql, source, ctx)
    for value in constants:
        _check_constant(f, value, source, ctx)
    return sql


def _enum_map(sql: str, spec: dict[str, Any], ctx: str) -> str:
    table = spec["map"]
    if not isinstance(table, MappingABC) or not table:
        raise MappingError(f"{ctx}: 'map' must be a non-empty table of source value -> feed value")
    whens = []
    for k, v in table.items():
        if isinstance(k, bool) or k is None:
            raise MappingError(f"{ctx}: map key {k!r}: {_YAML_BOOLS} (and ~/null as null); quote the "
                               "source value, e.g. 'Y': ..., and use 'default' for NULL")
        whens.append(f"WHEN {_literal(str(k))} THEN {_literal(v)}")
    # Without a default, unmapped values pass through, so the field's check judges them
    # (an unexpected 'Q' for dir is quarantined as "invalid value 'Q'", not "missing").
    default = _literal(spec["default"]) if "default" in spec else f"CAST(({sql}) AS VARCHAR)"
    # Source values are compared as text, so 1, '1' and a smallint 1 all match key 1.
    return f"CASE CAST(({sql}) AS VARCHAR) {' '.join(whens)} ELSE {default} END"


def _check_constant(f: Field, value: Any, source: SourceTable, ctx: str) -> None:
    if value is None:
        if f.required:
            raise MappingError(f"{ctx}: null is not allowed, the field is required")
        return
    present, normalized = evaluate(f, _literal(value), source.zone.key)
    if present and normalized is None:
        hint = f" (one of {', '.join(f.allowed)})" if f.allowed else ""
        raise MappingError(f"{ctx}: {value!r} is not a valid {f.type}{' ' + f.format if f.format else ''} "
                           f"for this field{hint}")
    if not present and f.required:
        raise MappingError(f"{ctx}: {value!r} is blank, and the field is required")


# --------------------------------------------------------------------------- deletes

def _delete_policy(feed: Feed, doc: Any, source: SourceTable, ctx: str) -> dict[str, str] | None:
    if doc in (None, "ignore"):
        return None
    if isinstance(doc, dict) and set(doc) == {"set"} and isinstance(doc["set"], dict) and doc["set"]:
        out = {}
        for name, value in doc["set"].items():
            fctx = f"{ctx}, on_delete.set field {name!r}"
            if name not in feed.field_names or name == feed.stamp or name in feed.key:
                raise MappingError(f"{fctx}: not a settable field of {feed.name} (the key and the stamp "
                                   "cannot be set)")
            f = feed.field(name)
            # Values are constants (what an operator writes: `active: 0`); {sql: ...} for an expression.
            spec = value if isinstance(value, dict) else {"const": value}
            sql = _expr(spec, f, source, fctx)
            if referenced_columns(sql):
                raise MappingError(f"{fctx}: on delete, set a constant or a column-free expression such as "
                                   "now(): a delete event carries only the key columns of the deleted row")
            out[name] = sql
        return out
    raise MappingError(f"{ctx}: on_delete must be 'ignore' or {{set: {{field: value}}}}")


# --------------------------------------------------------------------------- SQL checks

def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


@functools.cache
def _scratch() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB for parsing and binding expressions at load."""
    return duckdb.connect()


def _parse(sql: str) -> dict[str, Any]:
    row = _scratch().cursor().execute("SELECT json_serialize_sql(?)", [f"SELECT {sql}"]).fetchone()
    assert row is not None
    parsed: dict[str, Any] = json.loads(row[0])
    return parsed


def _check_syntax(sql: str, ctx: str) -> None:
    result = _parse(sql)
    if result.get("error") or len(result.get("statements", [])) != 1:
        msg = result.get("error_message", "not a single expression")
        raise MappingError(f"{ctx}: {sql!r} is not a valid DuckDB SQL expression: {msg}")
    if '"class":"WINDOW"' in json.dumps(result, separators=(",", ":")):
        raise MappingError(f"{ctx}: {sql!r}: window functions are not allowed; an expression sees one row")


_DUCK_TYPES = {"string": "VARCHAR", "integer": "BIGINT", "float": "DOUBLE", "boolean": "BOOLEAN",
               "date": "DATE", "time": "TIME", "json": "VARCHAR", "uuid": "VARCHAR", "bytes": "BLOB"}


def _duck_type(t: ColumnType) -> str:
    if t.kind == "array":
        assert t.item is not None
        return _duck_type(t.item) + "[]"
    if t.kind == "decimal":
        return f"DECIMAL(38,{t.scale})" if t.scale is not None and 0 <= t.scale <= 38 else "DOUBLE"
    if t.kind.startswith("timestamp"):
        return "TIMESTAMP"
    return _DUCK_TYPES.get(t.kind, "VARCHAR")


def _check_binding(sql: str, source: SourceTable, ctx: str) -> None:
    """Bind the expression against NULL columns (typed where the mapping declares types).

    Catches what the parser cannot: unknown functions, wrong argument counts,
    aggregates. Type errors that depend on the real column types surface per event
    (quarantine), as those types are known only when events arrive.
    """
    cols = sorted(referenced_columns(sql))
    select = ", ".join(
        f"CAST(NULL AS {_duck_type(source.types[c])}) AS {_q(c)}" if c in source.types else f"NULL AS {_q(c)}"
        for c in cols)
    try:
        columns = select + ", " if select else ""
        _scratch().cursor().execute(f"SELECT ({sql}), __fs_k FROM (SELECT {columns}1 AS __fs_k)")
    except duckdb.CatalogException as ex:
        raise MappingError(f"{ctx}: {sql!r}: {_first_line(ex)}") from ex
    except duckdb.BinderException as ex:
        text = str(ex)
        if "__fs_k" in text:
            raise MappingError(f"{ctx}: {sql!r}: aggregate functions are not allowed; an expression "
                               "sees one row") from ex
        if "No function matches" in text:
            raise MappingError(f"{ctx}: {sql!r}: {_first_line(ex)}") from ex
    except duckdb.Error:
        pass  # e.g. a conversion error of a constant: shows per event, with the event named


def referenced_columns(sql: str) -> set[str]:
    """The column names an expression reads, from DuckDB's own parse tree."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("class") == "COLUMN_REF":
                found.add(node["column_names"][0])  # [0]: a struct access x.y reads x
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(_parse(sql))
    return found


# --------------------------------------------------------------------------- small helpers

def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _first_line(ex: Exception) -> str:
    return str(ex).strip().splitlines()[0]


def _no_unknown(doc: dict[Any, Any], known: set[str], ctx: str) -> None:
    unknown = sorted(str(k) for k in doc if k not in known)
    if unknown:
        raise MappingError(f"{ctx}: unknown key(s) {', '.join(unknown)} (typo?); expected {', '.join(sorted(known))}")


def _need_str(doc: dict[str, Any], key: str, ctx: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise MappingError(f"{ctx}: '{key}' is required and must be a string")
    return value


def _zone(name: Any, ctx: str) -> ZoneInfo:
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError) as ex:
        raise MappingError(f"{ctx}: {name!r} is not an IANA time zone (e.g. UTC, Europe/Malta)") from ex
