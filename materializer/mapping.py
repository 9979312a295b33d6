"""The operator's mapping file: which source tables feed which InTarget feeds, and how.

A new operator onboards by writing this file, not code (ARCHITECTURE.md decision 6).
Field values are DuckDB SQL expressions over the decoded source columns, so the
materializer maps whole batches in one statement instead of row by row in Python.
Everything that can be checked without data is checked at load, and every error names
the file, the feed and the field, because the person reading it is editing that file.

Format (YAML; see docs/mapping.md for the full reference)::

    topic_prefix: spacevegas          # Debezium's topic.prefix
    source_zone: Europe/Malta         # zone of naive source timestamps (default UTC)
    tables:                           # optional: types for events without a schema
      public.users:
        zone: Europe/Malta            # per-table override of source_zone
        columns: {created: timestamp, balance: "decimal(12,2)"}
    feeds:
      players:
        source: public.users
        fields:
          id: user_id::VARCHAR
          first_name: fname
          gender: {sql: sex, map: {M: male, F: female}}
          is_blocked: {const: false}
        on_delete: ignore              # or {set: {is_blocked: "true"}}
"""

from __future__ import annotations

import json
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
from schemas import Feed, load_feeds


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
    feed: Feed
    source: SourceTable
    exprs: dict[str, str]  # feed field -> SQL expression over source columns
    delete_set: dict[str, str] | None  # None: deletes are ignored

    @cached_property
    def columns(self) -> frozenset[str]:
        """Source columns the expressions read: staged as NULL when an event lacks them
        (a delete's key-only before image, or an event from before a column was added)."""
        exprs = list(self.exprs.values()) + list((self.delete_set or {}).values())
        return frozenset(col for sql in exprs for col in referenced_columns(sql))


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
    prefix = _need_str(doc, "topic_prefix", where)
    default_zone = _zone(doc.get("source_zone", "UTC"), f"{where}: source_zone")
    tables_doc = doc.get("tables") or {}
    feeds_doc = doc.get("feeds")
    if not isinstance(feeds_doc, dict) or not feeds_doc:
        raise MappingError(f"{where}: 'feeds' must map feed names to their definitions")
    known = load_feeds()
    tables: dict[str, SourceTable] = {}

    def table(name: str, ctx: str) -> SourceTable:
        if name.count(".") != 1:
            raise MappingError(f"{ctx}: source {name!r} must be written 'schema.table', e.g. public.users")
        topic = f"{prefix}.{name}"
        if topic not in tables:
            spec = tables_doc.get(name) or {}
            zone = _zone(spec.get("zone"), f"{where}: tables.{name}.zone") if spec.get("zone") else default_zone
            types = {}
            for col, text in (spec.get("columns") or {}).items():
                try:
                    types[col] = parse_column_type(str(text))
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
        feed = known[feed_name]
        source = table(_need_str(spec, "source", ctx), ctx)
        exprs = _field_exprs(feed, spec.get("fields"), ctx)
        feeds[feed_name] = FeedMapping(feed, source, exprs, _delete_policy(feed, spec.get("on_delete", "ignore"), ctx))
    return Mapping(path=path, topic_prefix=prefix, tables=tables, feeds=feeds)


def _field_exprs(feed: Feed, doc: Any, ctx: str) -> dict[str, str]:
    if not isinstance(doc, dict):
        raise MappingError(f"{ctx}: 'fields' must map feed fields to SQL expressions")
    names = set(feed.field_names)
    for name in doc:
        if name not in names:
            raise MappingError(f"{ctx}, field {name!r}: not a field of {feed.name}; its fields are "
                               f"{', '.join(feed.field_names)}")
    exprs: dict[str, str] = {}
    for f in feed.fields:
        fctx = f"{ctx}, field {f.name!r}"
        if f.name == feed.stamp:
            if f.name in doc:
                raise MappingError(f"{fctx}: is Feedstore's own change stamp; remove it from the mapping")
            continue
        if f.name not in doc:
            if f.required:
                raise MappingError(f"{fctx}: required by the spec but not mapped; add an expression for it")
            exprs[f.name] = "NULL"
            continue
        exprs[f.name] = _expr(doc[f.name], fctx)
    return exprs


def _expr(spec: Any, ctx: str) -> str:
    """Turn one field's mapping (expression, constant, or enum map) into a SQL expression."""
    if isinstance(spec, str):
        sql = spec
    elif isinstance(spec, bool | int | float):
        sql = _literal(spec)
    elif isinstance(spec, dict) and "const" in spec:
        sql = _literal(spec["const"])
    elif isinstance(spec, dict) and "sql" in spec:
        sql = str(spec["sql"])
        if "map" in spec:
            table = spec["map"]
            if not isinstance(table, MappingABC) or not table:
                raise MappingError(f"{ctx}: 'map' must be a non-empty table of source value -> feed value")
            whens = " ".join(f"WHEN {_literal(k)} THEN {_literal(v)}" for k, v in table.items())
            default = _literal(spec["default"]) if "default" in spec else "NULL"
            sql = f"CASE CAST(({sql}) AS VARCHAR) {whens} ELSE {default} END"
    else:
        raise MappingError(f"{ctx}: write a SQL expression, {{const: value}} or {{sql: ..., map: {{...}}}}")
    _check_syntax(sql, ctx)
    return sql


def _delete_policy(feed: Feed, doc: Any, ctx: str) -> dict[str, str] | None:
    if doc in (None, "ignore"):
        return None
    if isinstance(doc, dict) and isinstance(doc.get("set"), dict):
        out = {}
        for name, value in doc["set"].items():
            if name not in feed.field_names or name == feed.stamp:
                raise MappingError(f"{ctx}, on_delete.set field {name!r}: not a settable field of {feed.name}")
            # Values are constants (what an operator writes: `active: 0`); {sql: ...} for an expression.
            value = value if isinstance(value, dict) else {"const": value}
            out[name] = _expr(value, f"{ctx}, on_delete.set field {name!r}")
        return out
    raise MappingError(f"{ctx}: on_delete must be 'ignore' or {{set: {{field: value}}}}")


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def _parse(sql: str) -> dict[str, Any]:
    row = duckdb.connect().execute("SELECT json_serialize_sql(?)", [f"SELECT {sql}"]).fetchone()
    assert row is not None
    parsed: dict[str, Any] = json.loads(row[0])
    return parsed


def _check_syntax(sql: str, ctx: str) -> None:
    result = _parse(sql)
    if result.get("error") or len(result.get("statements", [])) != 1:
        msg = result.get("error_message", "not a single expression")
        raise MappingError(f"{ctx}: {sql!r} is not a valid DuckDB SQL expression: {msg}")


def referenced_columns(sql: str) -> set[str]:
    """The column names an expression reads, from DuckDB's own parse tree."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("class") == "COLUMN_REF":
                found.add(node["column_names"][0])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(_parse(sql))
    return found


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
