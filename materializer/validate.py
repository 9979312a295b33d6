"""Normalization and validation of mapped values against the spec, as SQL over a batch.

Why SQL and not Python: a batch is mapped by one statement per feed (decision 6), so
the checks have to be expressions in that statement, or every row would cross into
Python. Each feed field gets a :class:`Check`: the SQL that turns the mapping's raw
value into the spec's typed, canonical value, or NULL when the raw value is absent or
invalid. The materializer compares the two to tell "absent" from "invalid": a required
field that is either quarantines the event, an optional field that is invalid is
emitted empty and counted in ``fs_field_errors``.

The vocabularies (ISO 4217 plus the spec's cryptocurrencies, ISO 639 languages, ISO
3166 countries, IANA zones) come from :mod:`schemas.vocab` and are registered on each
cursor as small Arrow tables, so lookups are hash joins that DuckDB plans once per
statement. The rules mirror ``schemas.vocab.normalize_*`` and the tests hold them to it.

Rules, per feed type (``raw`` is the mapping expression's value, of any SQL type):

- every type: NULL or text that is blank once trimmed is *absent*, not invalid;
- string: the text; a required string may not be blank; an enumeration (``allowed``)
  is matched case-insensitively, aliases included, and emitted in its canonical
  spelling; formats: currency (upper-cased ISO 4217 code or a supported cryptocurrency),
  locale (``ll`` or ``ll_CC``: ISO 639 language, ISO 3166 country), timezone (IANA name,
  any case in, canonical spelling out), ip (an IPv4 or IPv6 address);
- timestamp: TIMESTAMP values are UTC (the decoder converts naive source columns from
  the table's zone); TIMESTAMPTZ values are converted to UTC; text with an offset or
  ``Z`` is read as that instant, text without one as wall-clock time in the table's zone;
- date: a DATE (or anything DuckDB casts to one);
- integer / decimal / float: cast; decimals are rounded half away from zero to the
  field's scale; a float must be finite;
- boolean: DuckDB's boolean cast (true/false, t/f, yes/no, 1/0, numbers);
- flag: 0 or 1 (booleans become 1/0), anything else is invalid;
- array (custom fields): a list, its items as text.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pycountry

from schemas import Field, vocab

#: What SQL's trim() removes: ASCII whitespace, as str.strip() does for such text.
WS = " \t\n\r\f\v"

_LOCALE_RE = (r"^([A-Za-z]{2,3})(?:[-_]([A-Za-z]{4}))?(?:[-_]([A-Za-z]{2}))?"
              r"(?:\.[A-Za-z0-9-]+)?(?:@[A-Za-z0-9]+)?$")
_OFFSET_RE = r"(?i)(z|[+-][0-9]{2}(:?[0-9]{2})?)$"

#: The store's column types (materializer/store.py SQL_TYPES, not imported: the store
#: imports the mapping, which imports this; a test keeps them equal). Decimals are
#: rounded to the field's own scale first, then widened to the store's, so comparisons
#: with stored rows stay exact.
STORE_TYPES = {
    "string": "VARCHAR", "integer": "BIGINT", "decimal": "DECIMAL(38,8)", "float": "DOUBLE",
    "boolean": "BOOLEAN", "flag": "SMALLINT", "timestamp": "TIMESTAMP", "date": "DATE",
    "array": "VARCHAR[]",
}
STORE_DECIMAL = STORE_TYPES["decimal"]


@dataclass(frozen=True)
class Check:
    """SQL for one field: ``value`` is the normalized value or NULL, ``present`` says
    whether the raw value counts as given; ``reason`` says why a given value can fail."""

    value: str
    present: str
    reason: str
    # The value depends on the raw value alone and costs vocabulary lookups (~1 µs a row
    # for a locale): worth computing once per distinct raw value of a batch instead.
    lookup: bool = False


def lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ipv6_regex() -> str:
    """An exact IPv6 text pattern (RFC 4291 section 2.2), with or without a trailing IPv4.

    One alternative per number of groups before ``::`` (the groups after it are then
    bounded), so the group-count rules hold exactly; the tests compare it with
    ``ipaddress``. Kept compact: DuckDB compiles it again for every batch's statement.
    """
    h = "[0-9A-Fa-f]{1,4}"

    def groups(n: int) -> str:  # exactly n groups joined by ':'
        return "" if n == 0 else h + (f"(?::{h}){{{n - 1}}}" if n > 1 else "")

    alts = [f"(?:{h}:){{7}}{h}", f"(?:{h}:){{6}}{_IPV4}"]
    for left in range(8):  # '::' stands for at least one group: at most 7 written
        right = f"(?:{h}(?::{h}){{0,{6 - left}}})?" if left < 7 else ""
        alts.append(f"{groups(left)}::{right}")
    for left in range(6):  # the IPv4 tail counts as two groups
        alts.append(f"{groups(left)}::(?:{h}:){{0,{5 - left}}}{_IPV4}")
    return "|".join(f"(?:{a})" for a in alts)


_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
IP_RE = rf"^(?:{_IPV4}|{_ipv6_regex()})$"


_TEXT = "VARCHAR"
_INSTANTS = frozenset({"TIMESTAMP WITH TIME ZONE", "DATE", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS"})


def check(field: Field, raw: str, zone: str = "UTC", raw_type: str | None = None) -> Check:
    """The SQL that normalizes ``raw`` (an SQL expression) for ``field``.

    ``zone`` is the IANA zone of the source table, for timestamps given as text
    without an offset. ``raw_type`` is the DuckDB type of ``raw`` when the caller
    knows it (the materializer asks DuckDB once per batch shape): the SQL is then
    specialized to it, which matters because DuckDB plans every batch's statement
    anew. Without it the SQL works for any type.
    """
    kind = field.type
    text = raw if raw_type == _TEXT else f"CAST({raw} AS VARCHAR)"
    trimmed = f"trim({text}, {lit(WS)})"
    present = (f"({raw} IS NOT NULL AND {trimmed} <> '')" if raw_type in (None, _TEXT)
               else f"({raw} IS NOT NULL)")
    if kind == "string":
        return _string(field, text, trimmed, present)
    if kind == "timestamp":
        from_text = (f"CASE WHEN regexp_matches({trimmed}, {lit(_OFFSET_RE)}) "
                     f"THEN CAST(TRY_CAST({trimmed} AS TIMESTAMPTZ) AS TIMESTAMP) "
                     f"ELSE CAST(timezone({lit(zone)}, TRY_CAST({trimmed} AS TIMESTAMP)) AS TIMESTAMP) END")
        if raw_type == "TIMESTAMP":
            value = raw
        elif raw_type in _INSTANTS:
            value = f"CAST({raw} AS TIMESTAMP)"  # TIMESTAMPTZ: in the session zone, pinned to UTC
        elif raw_type == _TEXT:
            value = from_text
        elif raw_type is None:
            value = f"CASE WHEN typeof({raw}) = 'VARCHAR' THEN {from_text} ELSE TRY_CAST({raw} AS TIMESTAMP) END"
        else:
            value = f"TRY_CAST({raw} AS TIMESTAMP)"
        return Check(value, present, "not a timestamp")
    if kind == "date":
        return Check(raw if raw_type == "DATE" else f"TRY_CAST({raw} AS DATE)", present, "not a date")
    if kind == "integer":
        return Check(f"TRY_CAST({raw} AS BIGINT)", present, "not an integer in the 64-bit range")
    if kind == "decimal":
        scale = field.scale if field.scale is not None else 2
        value = f"TRY_CAST(TRY_CAST({raw} AS DECIMAL(38,{scale})) AS {STORE_DECIMAL})"
        return Check(value, present, f"not a number that fits 30 digits before and {scale} after the point")
    if kind == "float":
        value = f"CASE WHEN isfinite(TRY_CAST({raw} AS DOUBLE)) THEN TRY_CAST({raw} AS DOUBLE) END"
        return Check(value, present, "not a finite number")
    if kind == "boolean":
        return Check(raw if raw_type == "BOOLEAN" else f"TRY_CAST({raw} AS BOOLEAN)", present, "not a boolean")
    if kind == "flag":
        n = f"coalesce(TRY_CAST({raw} AS SMALLINT), TRY_CAST(TRY_CAST({raw} AS BOOLEAN) AS SMALLINT))"
        return Check(f"CASE WHEN {n} IN (0, 1) THEN {n} END", present, "not 0 or 1")
    if kind == "array":
        value = raw if raw_type == "VARCHAR[]" else f"TRY_CAST({raw} AS VARCHAR[])"
        return Check(value, f"({raw} IS NOT NULL)", "not a list")
    raise ValueError(f"no check for field type {kind!r}")


def vocab_lookups(fields: Sequence[Field], checks: Sequence[Check], raws: Sequence[str],
                  types: Sequence[str | None], zone: str) -> tuple[list[str], str, str]:
    """Each field's checked value as SQL over the raw values' CTE ``r``, with the CTEs
    and joins that the vocabulary checks need.

    Vocabulary checks (locale, zone, currency) run once per distinct raw value of the
    batch, which has a handful, and are joined back: per row they were half the cost
    of mapping the players feed (~1 µs a row for a locale).
    """
    values = [c.value for c in checks]
    ctes, joins = "", ""
    for n, c in enumerate(checks):
        if c.lookup:
            once = check(fields[n], "__fs_v", zone, types[n]).value
            ctes += f"l{n} AS (SELECT __fs_v, {once} AS v FROM (SELECT DISTINCT {raws[n]} AS __fs_v FROM r)), "
            joins += f" LEFT JOIN l{n} ON r.{raws[n]} = l{n}.__fs_v"
            values[n] = f"l{n}.v"
    return values, ctes, joins


def _string(field: Field, text: str, trimmed: str, present: str) -> Check:
    if field.allowed is not None:
        pairs = [(v.casefold(), v) for v in field.allowed] + sorted(field.aliases.items())
        whens = " ".join(f"WHEN {lit(k)} THEN {lit(v)}" for k, v in pairs)
        return Check(f"CASE lower({trimmed}) {whens} END", present,
                     f"not one of {', '.join(field.allowed)}")
    fmt = field.format
    if fmt == "currency":
        value = f"(SELECT code FROM fs_vocab_currency WHERE code = upper({trimmed}))"
        return Check(value, present, "not an ISO 4217 code or a supported cryptocurrency", lookup=True)
    if fmt == "timezone":
        value = f"(SELECT name FROM fs_vocab_timezone WHERE folded = lower({trimmed}))"
        return Check(value, present, "not an IANA time zone", lookup=True)
    if fmt == "ip":
        return Check(f"CASE WHEN regexp_full_match({trimmed}, {lit(IP_RE)}) THEN {trimmed} END", present,
                     "not an IPv4 or IPv6 address")
    if fmt == "locale":
        parts = f"regexp_extract({trimmed}, {lit(_LOCALE_RE)}, ['lang', 'script', 'region'])"
        lang = f"(SELECT canonical FROM fs_vocab_language WHERE code = lower({parts}.lang))"
        region = f"upper({parts}.region)"
        value = (f"CASE WHEN {region} = '' THEN {lang} "
                 f"WHEN {region} IN (SELECT code FROM fs_vocab_country) THEN {lang} || '_' || {region} END")
        return Check(value, present, "not an ISO 639 language with an optional ISO 3166 country (en, en_US)",
                     lookup=True)
    if fmt is not None:
        raise ValueError(f"no check for format {fmt!r}")
    if field.required:
        return Check(f"CASE WHEN {trimmed} <> '' THEN {text} END", present, "blank")
    return Check(text, present, "")


# --------------------------------------------------------------------------- vocabularies

@functools.cache
def vocab_tables() -> dict[str, pa.Table]:
    """The lookup tables the checks join, built once per process from schemas.vocab."""
    # Every language code normalize_locale accepts, with what it makes of it: all
    # two-letter strings (withdrawn codes such as iw -> he included) and ISO 639-3.
    letters = string.ascii_lowercase
    candidates = [a + b for a in letters for b in letters] + [lang.alpha_3 for lang in pycountry.languages]
    languages = {code: canon for code in candidates if (canon := vocab.normalize_locale(code)) is not None}
    zones = sorted(vocab.timezones())
    return {
        "fs_vocab_currency": pa.table({"code": sorted(vocab.currencies())}),
        "fs_vocab_timezone": pa.table({"folded": [z.casefold() for z in zones], "name": zones}),
        "fs_vocab_language": pa.table({"code": list(languages), "canonical": list(languages.values())}),
        "fs_vocab_country": pa.table({"code": sorted(vocab.countries())}),
    }


def register_vocab(cur: duckdb.DuckDBPyConnection) -> None:
    """Make the vocabularies visible to the checks on this cursor (Arrow views, no copy).

    Also pins the cursor's zone to UTC: casting a TIMESTAMPTZ to TIMESTAMP uses the
    session zone, which otherwise is the host's.
    """
    cur.execute("SET TimeZone = 'UTC'")
    for name, table in vocab_tables().items():
        cur.register(name, table)


@functools.cache
def _scratch() -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect()
    register_vocab(conn)
    return conn


def evaluate(field: Field, sql: str, zone: str = "UTC") -> tuple[bool, Any]:
    """Evaluate a column-free expression (a mapping constant) the way a batch would.

    Returns (present, value): value None with present True means the constant is
    invalid for the field. Used at load, so a wrong constant fails at start.
    """
    c = check(field, "raw", zone)
    cur = _scratch().cursor()
    try:
        register_vocab(cur)
        row = cur.execute(f"SELECT {c.present}, {c.value} FROM (SELECT ({sql}) AS raw)").fetchone()
    finally:
        cur.close()
    assert row is not None
    return bool(row[0]), row[1]


__all__ = ["IP_RE", "STORE_DECIMAL", "STORE_TYPES", "WS", "Check", "check", "evaluate", "lit", "register_vocab",
           "vocab_lookups", "vocab_tables"]
