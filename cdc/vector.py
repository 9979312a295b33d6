"""Whole-column versions of the commonest converters in ``cdc.types``, for ``cdc.columnar``.

Converting dates and timestamps value by value cost ~3 µs of GIL-holding Python per
event on the reference ``users`` table, more than parsing the JSON. The columns here
give exactly what the per-value converter gives (``tests/test_vector.py`` holds
them to it, DST gaps and folds and saturation included), or None when they cannot
say, and the caller then converts value by value as before.

Wall-clock timestamps in a zone with DST need the zone's offset per value. Offsets
change only at transitions, so they are looked up once per distinct hour of the
column: an hour whose offset is the same at five points across it (its first and
last microsecond and every quarter between) is taken to have that offset throughout;
every other hour (one with a transition in it, where ``fold=0`` decides) and every
value near the ends of the calendar (where subtracting the offset saturates) is
converted by the per-value converter itself. tzdata has no two transitions within a
quarter of an hour of each other, which is what this relies on.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta, tzinfo

import pyarrow as pa
import pyarrow.compute as pc

from cdc.types import Converter, days_to_date, instant_ms, is_utc, wall_args, wall_timestamp

VectorConverter = Callable[[pa.Array], pa.Array | None]

_EPOCH = datetime(1970, 1, 1)
_EPOCH_DAYS = date(1970, 1, 1).toordinal()
_DAYS = (date.min.toordinal() - _EPOCH_DAYS, date.max.toordinal() - _EPOCH_DAYS)
_US = 1_000_000
_MIN_US = (datetime.min - _EPOCH) // timedelta(microseconds=1)
_MAX_US = (datetime.max - _EPOCH) // timedelta(microseconds=1)
_HOUR = 3600 * _US
_MARGIN = 2 * 24 * _HOUR  # more than any UTC offset: inside it, subtracting one cannot saturate
_PROBES = [timedelta(microseconds=m) for m in (0, _HOUR // 4, _HOUR // 2, 3 * _HOUR // 4, _HOUR - 1)]
_LONG = 2**63


def _i64(v: int) -> pa.Scalar:
    return pa.scalar(v, pa.int64())


# Arrow scalars, not Python ints: see cdc.columnar._DELETE (a few dozen calls a batch).
_S_DAYS = (_i64(_DAYS[0]), _i64(_DAYS[1]))
_S_MIN_US, _S_MAX_US = _i64(_MIN_US), _i64(_MAX_US)
_S_INNER = (_i64(_MIN_US + _MARGIN), _i64(_MAX_US - _MARGIN))
_S_LONG = (_i64(-_LONG), _i64(_LONG - 1))
_S_ZERO, _S_ONE = _i64(0), _i64(1)


def vector(conv: Converter) -> VectorConverter | None:
    """The whole-column form of ``conv``, if it has one."""
    if conv is days_to_date:
        return _dates
    if conv is instant_ms:
        return lambda col: _timestamps(col, "ms", None)
    wall = wall_args(conv)
    if wall is not None:
        unit, zone = wall
        return lambda col: _timestamps(col, unit, None if is_utc(zone) else zone)
    return None


def _dates(col: pa.Array) -> pa.Array | None:
    """Days since 1970 -> date32, saturating to date.min/max as ``days_to_date`` does."""
    if col.type != pa.int64():
        return None
    days = pc.max_element_wise(pc.min_element_wise(col, _S_DAYS[1], skip_nulls=False), _S_DAYS[0], skip_nulls=False)
    return days.cast(pa.int32()).cast(pa.date32())


def _timestamps(col: pa.Array, unit: str, zone: tzinfo | None) -> pa.Array | None:
    """Epoch counts in ``unit`` -> naive timestamp[us], read in ``zone`` (None: UTC)."""
    if col.type != pa.int64():
        return None
    if unit == "ns":
        # The converter drops sub-µs digits (floor) and saturates Java's Long.MIN/MAX.
        edge = pc.or_(pc.equal(col, _S_LONG[0]), pc.equal(col, _S_LONG[1]))
        us = _floor_div(col, 1000)
        us = pc.if_else(edge, pc.if_else(pc.greater(col, _S_ZERO), _S_MAX_US, _S_MIN_US), us)
    else:
        factor = 1000 if unit == "ms" else 1
        lo, hi = _i64(-(-_MIN_US // factor)), _i64(_MAX_US // factor)
        inside = pc.multiply(pc.max_element_wise(pc.min_element_wise(col, hi, skip_nulls=False), lo,
                                                 skip_nulls=False), _i64(factor))
        us = pc.if_else(pc.greater(col, hi), _S_MAX_US, pc.if_else(pc.less(col, lo), _S_MIN_US, inside))
    if zone is None:
        return us.cast(pa.timestamp("us"))
    return _in_zone(col, us, unit, zone)


def _in_zone(col: pa.Array, us: pa.Array, unit: str, zone: tzinfo) -> pa.Array:
    inner = pc.and_(pc.greater(us, _S_INNER[0]), pc.less(us, _S_INNER[1]))
    hours = _floor_div(pc.if_else(inner, us, pa.scalar(None, pa.int64())), _HOUR)
    uniq = pc.drop_null(pc.unique(hours))
    offsets = pa.array([_hour_offset(h, zone) for h in uniq.to_pylist()], pa.int64())
    offset = pc.take(offsets, pc.index_in(hours, value_set=uniq))
    out = pc.subtract(us, offset).cast(pa.timestamp("us"))
    # The rest, value by value: hours with a transition in them, values near the calendar's ends.
    rest = pc.fill_null(pc.and_(pc.is_valid(col), pc.is_null(offset)), False)
    if not pc.any(rest).as_py():
        return out
    conv = wall_timestamp(unit, zone)
    fixed = pa.array([conv(v) for v in pc.filter(col, rest).to_pylist()], pa.timestamp("us"))
    return pc.replace_with_mask(out, rest, fixed)


def _hour_offset(hour: int, zone: tzinfo) -> int | None:
    """The zone's offset in µs throughout the wall-clock hour ``hour``, None if it changes in it."""
    start = _EPOCH + timedelta(microseconds=hour * _HOUR)
    offsets = {zone.utcoffset(start + p) for p in _PROBES}
    if len(offsets) != 1:
        return None
    (off,) = offsets
    return None if off is None else off // timedelta(microseconds=1)


def _floor_div(col: pa.Array, n: int) -> pa.Array:
    """Integer division rounding down (Arrow's rounds toward zero)."""
    d = _i64(n)
    q = pc.divide(col, d)
    return pc.if_else(pc.greater(pc.multiply(q, d), col), pc.subtract(q, _S_ONE), q)


__all__ = ["VectorConverter", "vector"]
