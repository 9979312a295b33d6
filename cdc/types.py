"""Column types and value converters for Debezium-encoded values, and the cdc error types.

Debezium writes most SQL types as something JSON can carry: a date as days since
1970, a `numeric` as base64 of its unscaled two's-complement integer, a
`timestamp without time zone` as the wall-clock digits counted as if they were UTC.
The meaning is in the schema (the field's `name`), or, for events sent without a
schema, in the operator's mapping file (`parse_column_type`). Both paths share the
converters below, so one SQL value decodes to the same Python value however it
arrived.

Output conventions (DuckDB-friendly):

* timestamps are naive `datetime` in UTC (DuckDB TIMESTAMP);
* `timestamp without time zone` digits are read in the configured source zone;
  a wall time that does not exist (DST gap) or exists twice (DST fold) is read
  with ``fold=0``: the offset in force *before* the transition (so 02:30 in a
  spring-forward gap moves 1 h earlier in UTC, and an ambiguous autumn 02:30 is the
  first, summer-time occurrence);
* values outside Python's range saturate instead of failing: Postgres `infinity` /
  `-infinity` (which Debezium sends as huge epoch numbers or the strings
  ``"infinity"``/``"-infinity"``) become ``datetime.max``/``datetime.min``
  (``date.max``/``date.min`` for dates), because those sentinels are legitimate
  source data and must not send rows to quarantine;
* `time` `24:00:00` (legal in Postgres) becomes ``time.max``;
* decimals are exact `decimal.Decimal`; JSON text stays `str`; bytes are `bytes`.

The error types live here (not in ``cdc/__init__``) so that every module of the
package can import them without an import cycle.
"""

from __future__ import annotations

import binascii
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

Converter = Callable[[Any], Any]
"""Turns one non-null JSON value into its Python value; raises ValueError/TypeError."""


class CdcError(Exception):
    """Base of every error the cdc package raises on purpose."""


class DecodeError(CdcError):
    """An event (or one of its values) is not what Debezium would have sent.

    The message says which part is wrong and what to check, so it can be stored
    in the quarantine table as is.
    """


class BadValueError(ValueError):
    """A converter's precise reason; the caller prefixes the column name."""


# --------------------------------------------------------------------------- dates and times

_EPOCH = datetime(1970, 1, 1)
_fromiso = datetime.fromisoformat
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_DAY_US = 86_400_000_000
_LONG = 2**63
_UTC_KEYS = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Universal", "Etc/Universal",
                       "Zulu", "Etc/Zulu"})


def is_utc(zone: tzinfo) -> bool:
    """True when wall clock == UTC in `zone` at all times (lets us skip offset lookups)."""
    return zone == UTC or getattr(zone, "key", None) in _UTC_KEYS


def _saturate_dt(v: int) -> datetime:
    return datetime.max if v > 0 else datetime.min


def days_to_date(v: Any) -> date:
    """io.debezium.time.Date / connect Date: days since 1970-01-01."""
    try:
        return date.fromordinal(v + _EPOCH_ORDINAL)
    except (ValueError, OverflowError):
        if v.__class__ is int:
            return date.max if v > 0 else date.min
        raise


def _time_from_us(v: Any) -> time:
    if 0 <= v < _DAY_US:
        return time(v // 3_600_000_000, v // 60_000_000 % 60, v // 1_000_000 % 60, v % 1_000_000)
    if v == _DAY_US:
        return time.max
    raise BadValueError(f"value {v!r} is not a time of day (0 .. 24:00:00)")


def ms_to_time(v: Any) -> time:
    """io.debezium.time.Time / connect Time: milliseconds since midnight."""
    return _time_from_us(v * 1000)


def us_to_time(v: Any) -> time:
    """io.debezium.time.MicroTime: microseconds since midnight."""
    return _time_from_us(v)


def ns_to_time(v: Any) -> time:
    """io.debezium.time.NanoTime: nanoseconds since midnight (sub-µs digits dropped)."""
    return _time_from_us(v // 1000)


def zoned_time(v: Any) -> time:
    """io.debezium.time.ZonedTime: ISO time with offset -> naive time in UTC."""
    if v.__class__ is not str:
        raise TypeError("expected an ISO-8601 time string")
    try:
        t = time.fromisoformat(v)
    except ValueError:
        raise BadValueError(f"value {v!r} is not an ISO-8601 time") from None
    off = t.utcoffset()
    if not off:
        return t.replace(tzinfo=None)
    return (datetime.combine(date(2000, 1, 1), t) - off).time()


def instant_ms(v: Any) -> datetime:
    """org.apache.kafka.connect.data.Timestamp: ms since epoch of a UTC instant."""
    try:
        return _EPOCH + timedelta(milliseconds=v)
    except OverflowError:
        return _saturate_dt(v)


def zoned_timestamp(v: Any) -> datetime:
    """io.debezium.time.ZonedTimestamp: ISO-8601 with offset -> naive UTC."""
    if v.__class__ is not str:
        raise TypeError("expected an ISO-8601 timestamp string")
    if v[-1:] == "Z":  # what Debezium sends: parsing it naive is 6x faster than via tzinfo
        try:
            dt = _fromiso(v[:-1])
        except ValueError:
            pass
        else:
            if dt.tzinfo is None:
                return dt
    try:
        dt = _fromiso(v)
    except ValueError:
        if v in ("infinity", "+infinity"):
            return datetime.max
        if v == "-infinity":
            return datetime.min
        raise BadValueError(f"value {v!r} is not an ISO-8601 timestamp with offset") from None
    off = dt.utcoffset()
    if off is None:
        raise BadValueError(f"value {v!r} has no UTC offset; a timestamptz must carry one "
                       "(declare the column as 'timestamp' if it is wall-clock time)")
    try:
        return dt.replace(tzinfo=None) - off
    except OverflowError:
        return datetime.min if off > timedelta(0) else datetime.max


_UNITS = {"ms": 1, "us": 2, "ns": 3}
# Each wall-clock converter's (unit, zone), so cdc.vector can convert whole columns alike.
_WALL_ARGS: dict[Converter, tuple[str, tzinfo]] = {}


def wall_args(conv: Converter) -> tuple[str, tzinfo] | None:
    """(unit, zone) when ``conv`` is a :func:`wall_timestamp` converter."""
    return _WALL_ARGS.get(conv)


@functools.cache  # one converter per (unit, zone): schemas compiled again reuse it
def wall_timestamp(unit: str, zone: tzinfo) -> Converter:
    """io.debezium.time.{Timestamp,MicroTimestamp,NanoTimestamp}: wall-clock digits
    encoded as if UTC, read in `zone` (fold=0) and returned as naive UTC."""
    conv = _wall_timestamp(unit, zone)
    _WALL_ARGS[conv] = (unit, zone)
    return conv


def _wall_timestamp(unit: str, zone: tzinfo) -> Converter:
    u = _UNITS[unit]
    if u == 1:
        def digits(v: Any) -> datetime:
            return _EPOCH + timedelta(0, 0, 0, v)  # positional: 1/3 faster than keywords
    elif u == 2:
        def digits(v: Any) -> datetime:
            return _EPOCH + timedelta(0, 0, v)
    else:
        def digits(v: Any) -> datetime:
            if not -_LONG < v < _LONG - 1:  # Debezium's ns 'infinity' is Long.MAX/MIN, inside our range
                raise OverflowError
            return _EPOCH + timedelta(0, 0, v // 1000)

    if is_utc(zone):
        def conv(v: Any) -> datetime:
            try:
                return digits(v)
            except OverflowError:
                return _saturate_dt(v)
        return conv

    offset = zone.utcoffset

    def conv_zone(v: Any) -> datetime:
        try:
            dt = digits(v)
            return dt - offset(dt)  # type: ignore[operator]
        except OverflowError:
            return _saturate_dt(v)
    return conv_zone


# --------------------------------------------------------------------------- decimals, bytes, JSON

_A2B = binascii.a2b_base64


def b64_bytes(v: Any) -> bytes:
    """Connect `bytes` (bytea, Bits): base64 text -> bytes."""
    try:
        return _A2B(v, strict_mode=True)
    except (binascii.Error, ValueError):
        raise BadValueError(f"value {_short(v)} is not base64; check binary.handling.mode "
                       "or the mapping's column type") from None


def _unscaled(v: Any, what: str) -> int:
    try:
        return int.from_bytes(_A2B(v, strict_mode=True), "big", signed=True)
    except (binascii.Error, ValueError):
        raise BadValueError(f"value {_short(v)} is not base64 of a {what}; check "
                       "decimal.handling.mode or the mapping's column type") from None


def _text_decimal(v: Any) -> Decimal:
    """A decimal sent as a JSON number (decimal.handling.mode=double) or text (=string)."""
    cls = v.__class__
    if cls is int or cls is float:
        return Decimal(repr(v))  # repr: the shortest text that round-trips, not the binary fraction
    if cls is str:
        try:
            return Decimal(v)
        except InvalidOperation:
            raise BadValueError(f"value {_short(v)} is not a decimal number; check "
                           "decimal.handling.mode or the mapping's column type") from None
    raise TypeError(f"expected a base64 string or a number, got {cls.__name__}")


def fixed_decimal(scale: int, *, text_allowed: bool) -> Converter:
    """connect Decimal: base64 of the big-endian two's-complement unscaled integer.

    With an embedded schema (`text_allowed=False`) a string is always base64, as the
    schema says `bytes`. From a mapping (`text_allowed=True`) the connector's
    decimal.handling.mode is unknown, so a string is read as decimal text when it has
    a '-' or a '.' (base64 never does), and an all-digit string as base64 when
    scale > 0 (string mode would have printed the point) and as text when scale == 0.
    The one ambiguity left, an all-digit base64 for a scale-0 column in precise mode,
    is why schemaless topics with numeric(P,0) should use decimal.handling.mode=string.
    """
    suffix = f"E{-scale}"

    def conv(v: Any) -> Decimal:
        if v.__class__ is not str:
            return _text_decimal(v)
        if text_allowed and _is_decimal_text(v, scale):
            return _text_decimal(v)
        return Decimal(f"{_unscaled(v, 'Decimal')}{suffix}")
    return conv


def _is_decimal_text(v: str, scale: int) -> bool:
    if "." in v or v.startswith("-") or v in ("NaN", "Infinity"):
        return True  # base64 has no '.' or '-' (it does have '+')
    if v.isascii() and v.isdigit():
        return scale == 0 or len(v) % 4 != 0  # base64 text is always a multiple of 4 long
    return False


def variable_decimal(v: Any) -> Decimal:
    """io.debezium.data.VariableScaleDecimal {"scale": s, "value": base64}, or a number/text."""
    if v.__class__ is dict:
        scale = v.get("scale")
        if scale.__class__ is not int or "value" not in v:
            raise BadValueError(f"value {_short(v)} is not a VariableScaleDecimal "
                           "(expected {\"scale\": int, \"value\": base64})")
        return Decimal(f"{_unscaled(v['value'], 'VariableScaleDecimal')}E{-scale}")
    return _text_decimal(v)


def json_text(v: Any) -> str:
    """io.debezium.data.Json stays text; a parsed object (other converters) is re-serialized."""
    return v if v.__class__ is str else orjson.dumps(v).decode()


def float_value(v: Any) -> Any:
    """Jackson writes NaN/Infinity doubles as strings."""
    if v.__class__ is str:
        try:
            return float(v)
        except ValueError:
            raise BadValueError(f"value {_short(v)} is not a number") from None
    return v


def array_of(item: Converter) -> Converter:
    def conv(v: Any) -> list[Any]:
        if v.__class__ is not list:
            raise TypeError(f"expected a JSON array, got {v.__class__.__name__}")
        return [None if x is None else item(x) for x in v]
    return conv


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


# --------------------------------------------------------------------------- mapping column types

def _check(kind: str, *classes: type) -> Converter:
    def conv(v: Any) -> Any:
        if v.__class__ in classes:
            return v
        raise BadValueError(f"value {_short(v)} is not {kind}")
    return conv


def _check_float(v: Any) -> Any:
    if v.__class__ is float or v.__class__ is int:
        return v
    if v.__class__ is str:
        return float_value(v)
    raise BadValueError(f"value {_short(v)} is not a number")



_SIMPLE: dict[str, Callable[[tzinfo], Converter]] = {
    "float": lambda z: _check_float,
    "string": lambda z: _check("a string", str),
    "integer": lambda z: _check("an integer", int),
    "boolean": lambda z: _check("a boolean", bool),
    "date": lambda z: days_to_date,
    "time": lambda z: us_to_time,
    "timestamp": lambda z: wall_timestamp("us", z),
    "timestamp(ms)": lambda z: wall_timestamp("ms", z),
    "timestamp(ns)": lambda z: wall_timestamp("ns", z),
    "timestamptz": lambda z: zoned_timestamp,
    "decimal": lambda z: variable_decimal,
    "json": lambda z: json_text,
    "uuid": lambda z: _check("a UUID string", str),
    "bytes": lambda z: b64_bytes,
}
_ALIASES = {"timestamp(us)": "timestamp"}


@dataclass(frozen=True, slots=True)
class ColumnType:
    """A column's declared type from the mapping file, for events without a schema.

    `kind` is one of the vocabulary words of `parse_column_type`; `precision`/`scale`
    are set for ``decimal(P,S)``, `item` for ``array<T>``. `str(t)` gives the text
    back. Converters are built once per source zone and kept on the instance.
    """

    kind: str
    precision: int | None = None
    scale: int | None = None
    item: ColumnType | None = None
    _convs: dict[tzinfo, Converter] = field(default_factory=dict, init=False, repr=False,
                                            compare=False, hash=False)

    def __str__(self) -> str:
        if self.kind == "array":
            return f"array<{self.item}>"
        if self.kind == "decimal" and self.scale is not None:
            return f"decimal({self.precision},{self.scale})"
        return self.kind

    def converter(self, zone: tzinfo = UTC) -> Converter:
        """The function that decodes one non-null value of this type (cached per zone)."""
        conv = self._convs.get(zone)
        if conv is None:
            if self.kind == "array":
                assert self.item is not None
                conv = array_of(self.item.converter(zone))
            elif self.kind == "decimal" and self.scale is not None:
                conv = fixed_decimal(self.scale, text_allowed=True)
            else:
                conv = _SIMPLE[self.kind](zone)
            self._convs[zone] = conv
        return conv

    def decode(self, value: Any, zone: tzinfo = UTC) -> Any:
        """Decode one JSON value as Debezium encodes this type; None stays None.

        Raises DecodeError saying why the value does not fit.
        """
        if value is None:
            return None
        try:
            return self.converter(zone)(value)
        except BadValueError as e:
            raise DecodeError(f"{e} (declared type {self})") from None
        except (ValueError, TypeError, ArithmeticError) as e:
            raise DecodeError(f"value {_short(value)} does not fit declared type {self}: {e}") from None


_DECIMAL_RE = re.compile(r"decimal\((\d+),(-?\d+)\)")
_VOCABULARY = ("string, integer, float, boolean, date, time, timestamp, timestamp(ms), "
               "timestamp(ns), timestamptz, decimal, decimal(P,S), json, uuid, bytes, array<T>")


def parse_column_type(text: str) -> ColumnType:
    """Parse a mapping file's type text (case and spaces ignored), e.g. ``decimal(12,2)``,
    ``array<timestamp(ms)>``. Raises ValueError naming the accepted vocabulary."""
    if not isinstance(text, str):
        raise ValueError(f"column type must be a string, got {text!r}")
    t = "".join(text.split()).lower()
    t = _ALIASES.get(t, t)
    if t in _SIMPLE:
        return ColumnType(t)
    if t.startswith("array<") and t.endswith(">"):
        return ColumnType("array", item=parse_column_type(t[6:-1]))
    m = _DECIMAL_RE.fullmatch(t)
    if m:
        precision, scale = int(m.group(1)), int(m.group(2))
        if precision < 1:
            raise ValueError(f"column type {text!r}: precision must be at least 1")
        return ColumnType("decimal", precision, scale)
    raise ValueError(f"unknown column type {text!r}; expected one of: {_VOCABULARY}")
