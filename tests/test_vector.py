"""cdc.vector against the per-value converters it stands in for: same values, or None. Pure."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pyarrow as pa
import pytest

from cdc.types import days_to_date, instant_ms, wall_timestamp
from cdc.vector import vector

ZONES = [UTC, ZoneInfo("Europe/Malta"), ZoneInfo("Australia/Lord_Howe"), ZoneInfo("Asia/Kathmandu"),
         ZoneInfo("America/St_Johns"), ZoneInfo("Pacific/Apia"), ZoneInfo("Africa/Casablanca")]
SCALE = {"ms": 10**3, "us": 10**6, "ns": 10**9}
EPOCH = datetime(1970, 1, 1)


def counts(rng: random.Random, unit: str, n: int) -> list[int | None]:
    """Epoch counts near transitions, around the calendar's ends, and at int64's edges."""
    per_s = SCALE[unit]
    near = [datetime(2024, 3, 31, 2, 30), datetime(2024, 10, 27, 2, 30), datetime(1893, 11, 2),
            datetime(2011, 12, 30), datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59, 999999),
            datetime(1, 1, 2, 5), datetime(9999, 12, 30, 20)]
    out: list[int | None] = [None, 0, -1, 1, -(2**63), 2**63 - 1, -(2**63) + 1, 2**63 - 2]
    while len(out) < n:
        base = rng.choice([*near, EPOCH + timedelta(seconds=rng.randrange(-4 * 10**9, 4 * 10**9))])
        secs = (base - EPOCH) // timedelta(seconds=1) + rng.randrange(-7200, 7200)
        out.append(secs * per_s + rng.randrange(per_s))
    return out


@pytest.mark.parametrize("zone", ZONES, ids=lambda z: getattr(z, "key", "UTC"))
@pytest.mark.parametrize("unit", ["ms", "us", "ns"])
def test_wall_timestamps_match_the_per_value_converter(unit: str, zone: object) -> None:
    conv = wall_timestamp(unit, zone)  # type: ignore[arg-type]
    values = counts(random.Random(f"{unit}{zone}"), unit, 3000)
    # What JSON can carry into an int64 column; beyond the calendar, both saturate.
    values = [v for v in values if v is None or -(2**63) <= v < 2**63] + [2**62, -(2**62)]
    whole = vector(conv)
    assert whole is not None
    got = whole(pa.array(values, pa.int64()))
    assert got is not None
    assert got.to_pylist() == [None if v is None else conv(v) for v in values]


def test_instants_and_dates_match_the_per_value_converters() -> None:
    rng = random.Random(7)
    ms = [None, 0, -1, 2**62, -(2**62)] + [rng.randrange(-(10**14), 10**14) for _ in range(2000)]
    days = [None, 0, -719162, -719163, 2932896, 2932897, -(2**40), 2**40] + \
        [rng.randrange(-(10**6), 3 * 10**6) for _ in range(2000)]
    for conv, values in ((instant_ms, ms), (days_to_date, days)):
        whole = vector(conv)
        assert whole is not None
        got = whole(pa.array(values, pa.int64()))
        assert got is not None
        assert got.to_pylist() == [None if v is None else conv(v) for v in values], conv.__name__


def test_columns_it_cannot_judge_are_left_to_the_per_value_converter() -> None:
    whole = vector(days_to_date)
    assert whole is not None
    assert whole(pa.array([1.5, 2.0])) is None  # floats: days_to_date raises on them, per value
    assert whole(pa.array(["2024-01-01"])) is None
    assert vector(lambda v: v) is None
