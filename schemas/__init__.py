"""The InTarget feed definitions, loaded from ``feeds.yaml``.

Why the definitions are data and not code: every part of Feedstore needs the same
facts about a feed (its columns and their order, which column is the last-modified
stamp, the row key, the enumerations). The materializer builds DuckDB tables and
validates mapped rows from them, the API renders CSV/JSON in their column order and
documents them as OpenAPI, and the docs quote them. Keeping one YAML file that mirrors
the contract (``spec/intarget-data-feeds.txt``) line by line makes a contract change a
one-place edit that a reviewer can check against the spec, and lets every consumer
read it without importing the others. The YAML is checked when it is loaded, so a typo
fails at start-up with the feed and field named, not at the first pull.
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

__all__ = [
    "CUSTOM_FIELD_TYPES",
    "FEED_TYPES",
    "FORMATS",
    "Feed",
    "Field",
    "SchemaError",
    "load_feeds",
]

#: Column types a feed field may have (see feeds.yaml's header for their meaning).
FEED_TYPES: tuple[str, ...] = (
    "string", "integer", "decimal", "float", "boolean", "flag", "timestamp", "date",
)
#: Types the spec allows for the players' custom fields (feed types plus arrays).
CUSTOM_FIELD_TYPES: tuple[str, ...] = ("integer", "decimal", "string", "timestamp", "array")
#: Value formats checked against the vocabularies in ``schemas.vocab``.
FORMATS: tuple[str, ...] = ("currency", "locale", "timezone", "ip")

_FEED_KEYS = {"name", "title", "spec_section", "stamp", "key", "fields", "custom_field_types"}
_FIELD_KEYS = {"name", "type", "required", "description", "format", "allowed", "aliases", "scale"}
_DEFAULT_SCALE = 2  # the spec's "fractional number with two decimal places"


class SchemaError(ValueError):
    """feeds.yaml is inconsistent; the message names the feed and field."""

    def __init__(self, message: str, feed: str | None = None, field: str | None = None):
        where = "".join(
            f"{kind} {name!r}: " for kind, name in (("feed", feed), ("field", field)) if name
        )
        super().__init__(f"feeds.yaml: {where}{message}")
        self.feed = feed
        self.field = field


@dataclass(frozen=True)
class Field:
    """One column of a feed, in the spec's terms.

    ``allowed`` holds the canonical spellings of an enumeration; ``aliases`` maps other
    accepted spellings (lower case) to one of them. ``scale`` is the number of decimal
    places kept for ``decimal`` columns and ``None`` for every other type.
    """

    name: str
    type: str
    required: bool
    description: str
    format: str | None = None
    allowed: tuple[str, ...] | None = None
    aliases: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    scale: int | None = None

    def canonical(self, value: str) -> str | None:
        """The canonical spelling of an enumeration value, or None if it is not allowed.

        Matching ignores case and surrounding blanks, because operators' databases
        spell the same value differently ("normal", "Normal", "NORMAL"); the CRM gets
        one spelling. Fields without an enumeration return the value unchanged.
        """
        if self.allowed is None:
            return value
        wanted = value.strip().casefold()
        for candidate in self.allowed:
            if candidate.casefold() == wanted:
                return candidate
        return self.aliases.get(wanted)


@dataclass(frozen=True)
class Feed:
    """One endpoint of the contract: its columns in output order, its key and stamp."""

    name: str
    title: str
    stamp: str
    key: tuple[str, ...]
    fields: tuple[Field, ...]
    custom_field_types: tuple[str, ...] = ()
    spec_section: str = ""

    def field(self, name: str) -> Field:
        """The field called ``name``; KeyError naming the feed if there is none."""
        for candidate in self.fields:
            if candidate.name == name:
                return candidate
        raise KeyError(f"feed {self.name!r} has no field {name!r}")

    @property
    def field_names(self) -> tuple[str, ...]:
        """Column names in output (CSV header) order."""
        return tuple(f.name for f in self.fields)


@functools.cache
def _packaged_feeds() -> Mapping[str, Feed]:
    resource = importlib.resources.files(__name__).joinpath("feeds.yaml")
    return MappingProxyType(_parse(resource.read_text(encoding="utf-8")))


def load_feeds() -> dict[str, Feed]:
    """All feeds by name (their URL path segment), in the contract's order.

    Parsed and checked once per process; each call returns a new dict, so a caller
    that edits its copy cannot change what the others see.
    """
    return dict(_packaged_feeds())


def _load(path: str | Path) -> dict[str, Feed]:
    """Load and check a feeds file at ``path`` (tests and tools; not cached)."""
    return _parse(Path(path).read_text(encoding="utf-8"))


def _parse(text: str) -> dict[str, Feed]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SchemaError(f"not valid YAML: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("feeds"), list):
        raise SchemaError("expected a mapping with a list under 'feeds'")
    feeds: dict[str, Feed] = {}
    for raw in document["feeds"]:
        feed = _feed(raw)
        if feed.name in feeds:
            raise SchemaError("defined twice", feed=feed.name)
        feeds[feed.name] = feed
    return feeds


def _feed(raw: Any) -> Feed:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise SchemaError(f"each feed needs a 'name': {raw!r}")
    name = raw["name"]
    if not name.isidentifier() or name != name.lower():
        raise SchemaError("name must be a lower-case identifier (it is a URL path)", feed=name)
    _no_unknown_keys(raw, _FEED_KEYS, name, None)
    if not isinstance(raw.get("fields"), list) or not raw["fields"]:
        raise SchemaError("needs a non-empty list of 'fields'", feed=name)
    fields: list[Field] = []
    for raw_field in raw["fields"]:
        f = _field(raw_field, name)
        if any(seen.name == f.name for seen in fields):
            raise SchemaError("duplicate field", feed=name, field=f.name)
        fields.append(f)
    feed = Feed(
        name=name,
        title=_text(raw, "title", name, None),
        stamp=_text(raw, "stamp", name, None),
        key=tuple(_strings(raw.get("key"), "key", name)),
        fields=tuple(fields),
        custom_field_types=tuple(_strings(raw.get("custom_field_types", []), "custom_field_types", name)),
        spec_section=_text(raw, "spec_section", name, None),
    )
    _check_feed(feed)
    return feed


def _check_feed(feed: Feed) -> None:
    names = set(feed.field_names)
    if feed.stamp not in names:
        raise SchemaError("stamp is not a field of the feed", feed=feed.name, field=feed.stamp)
    stamp = feed.field(feed.stamp)
    if stamp.type != "timestamp" or not stamp.required:
        raise SchemaError("the stamp must be a required timestamp", feed=feed.name, field=stamp.name)
    if not feed.key or len(set(feed.key)) != len(feed.key):
        raise SchemaError("key must name one or more distinct fields", feed=feed.name)
    for part in feed.key:
        if part not in names:
            raise SchemaError("key is not a field of the feed", feed=feed.name, field=part)
        if not feed.field(part).required:
            raise SchemaError("key fields must be required", feed=feed.name, field=part)
    for custom in feed.custom_field_types:
        if custom not in CUSTOM_FIELD_TYPES:
            raise SchemaError(f"unknown custom field type {custom!r}", feed=feed.name)


def _field(raw: Any, feed: str) -> Field:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise SchemaError(f"each field needs a 'name': {raw!r}", feed=feed)
    name = raw["name"]
    _no_unknown_keys(raw, _FIELD_KEYS, feed, name)
    kind = raw.get("type")
    if kind not in FEED_TYPES:
        raise SchemaError(f"unknown type {kind!r} (one of {', '.join(FEED_TYPES)})", feed, name)
    required = raw.get("required")
    if not isinstance(required, bool):
        raise SchemaError("'required' must be true or false", feed, name)
    fmt = raw.get("format")
    if fmt is not None and (fmt not in FORMATS or kind != "string"):
        raise SchemaError(f"format {fmt!r} is unknown or not on a string field", feed, name)
    scale = raw.get("scale", _DEFAULT_SCALE if kind == "decimal" else None)
    if (kind == "decimal") != isinstance(scale, int) or isinstance(scale, bool):
        raise SchemaError("'scale' is for decimal fields only, and must be an integer", feed, name)
    allowed, aliases = _enumeration(raw, kind, feed, name)
    return Field(
        name=name,
        type=kind,
        required=required,
        description=_text(raw, "description", feed, name),
        format=fmt,
        allowed=allowed,
        aliases=aliases,
        scale=scale,
    )


def _enumeration(
    raw: dict[str, Any], kind: str, feed: str, name: str
) -> tuple[tuple[str, ...] | None, Mapping[str, str]]:
    if "allowed" not in raw:
        if "aliases" in raw:
            raise SchemaError("'aliases' without 'allowed'", feed, name)
        return None, MappingProxyType({})
    if kind != "string":
        raise SchemaError("'allowed' is only for string fields", feed, name)
    allowed = tuple(_strings(raw["allowed"], "allowed", feed, name))
    folded = [value.casefold() for value in allowed]
    if not allowed or len(set(folded)) != len(folded):
        raise SchemaError("'allowed' must list distinct values (ignoring case)", feed, name)
    aliases: dict[str, str] = {}
    raw_aliases = raw.get("aliases") or {}
    if not isinstance(raw_aliases, dict):
        raise SchemaError("'aliases' must map alias -> allowed value", feed, name)
    for alias, target in raw_aliases.items():
        if not isinstance(alias, str) or target not in allowed:
            raise SchemaError(f"alias {alias!r} must map to an allowed value, not {target!r}", feed, name)
        if alias.casefold() in folded:
            raise SchemaError(f"alias {alias!r} is already an allowed value", feed, name)
        aliases[alias.strip().casefold()] = target
    return allowed, MappingProxyType(aliases)


def _no_unknown_keys(raw: dict[str, Any], known: set[str], feed: str, field: str | None) -> None:
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:
        raise SchemaError(f"unknown keys {unknown} (typo?)", feed, field)


def _text(raw: dict[str, Any], key: str, feed: str, field: str | None) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise SchemaError(f"needs a non-empty string {key!r}", feed, field)
    return value.strip()


def _strings(value: Any, what: str, feed: str, field: str | None = None) -> list[str]:
    # YAML 1.1 turns bare yes/no/on/off into booleans: insist on real strings.
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SchemaError(f"{what!r} must be a string or a list of strings, got {value!r}", feed, field)
    return value
