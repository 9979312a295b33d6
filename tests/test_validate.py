"""The SQL normalization rules (materializer/validate.py) against their Python references.

The vocabularies' Python functions (schemas.vocab) and the standard library (ipaddress,
zoneinfo) are the oracles; the SQL must agree with them on every generated input.
Pure: an in-memory DuckDB, no services.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from materializer.validate import check, evaluate, register_vocab
from schemas import Field, load_feeds, vocab

FEEDS = load_feeds()
LOCALE = FEEDS["players"].field("locale")
TIMEZONE = FEEDS["players"].field("timezone")
IP = FEEDS["players"].field("ip")
CURRENCY = FEEDS["transactions"].field("currency")


def normalize(field: Field, values: list[Any], arrow_type: pa.DataType | None = None, zone: str = "UTC") -> list[Any]:
    """Run the field's check over many values in one statement, as a batch would."""
    conn = duckdb.connect()
    register_vocab(conn)
    conn.register("vals", pa.table({"i": list(range(len(values))), "raw": pa.array(values, arrow_type)}))
    c = check(field, "raw", zone)
    return [row[0] for row in conn.execute(f"SELECT {c.value} FROM vals ORDER BY i").fetchall()]


def sample_of(values: frozenset[str], k: int = 60) -> list[str]:
    return sorted(values)[:: max(1, len(values) // k)]


# --------------------------------------------------------------------------- formats

locale_text = st.text(alphabet="abcdefghijklmnopqrstuvwxyzENUSGBR-_.@8 \t", max_size=14)
locale_like = st.builds(
    lambda lang, sep, region, tail: f"{lang}{sep}{region}{tail}",
    st.sampled_from(["en", "EN", "pt", "eng", "fil", "iw", "xx", "zz", "und", "de"]),
    st.sampled_from(["", "-", "_", "__"]),
    st.sampled_from(["", "US", "us", "GB", "XX", "Hant", "419", "BR"]),
    st.sampled_from(["", ".UTF-8", "@euro", " ", "\t"]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(locale_text, locale_like), min_size=1, max_size=80))
def test_locale_sql_agrees_with_vocab(values: list[str]) -> None:
    assert normalize(LOCALE, values) == [vocab.normalize_locale(v) for v in values]


def test_locale_examples() -> None:
    values = ["en", "en-US", "EN_us", "eng_GB", "pt_BR.UTF-8", "zh-Hant-TW", "iw_IL", "es_419", "xx", "en_XX"]
    assert normalize(LOCALE, values) == ["en", "en_US", "en_US", "en_GB", "pt_BR", "zh_TW", "he_IL", None, None, None]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.one_of(
    st.sampled_from(sample_of(vocab.timezones())).map(lambda z: z.upper() if len(z) % 2 else z.lower()),
    st.text(alphabet="abcdeuropMALT/_ ", max_size=16)), min_size=1, max_size=60))
def test_timezone_sql_agrees_with_vocab(values: list[str]) -> None:
    assert normalize(TIMEZONE, values) == [vocab.normalize_timezone(v) for v in values]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.one_of(
    st.sampled_from(sample_of(vocab.currencies())).map(lambda c: f" {c.lower()} "),
    st.sampled_from(["BTC", "usdt", "Matic", "CUC", "HRK", "XBT", ""]),
    st.text(alphabet="ABCDEUSRTH ", max_size=5)), min_size=1, max_size=60))
def test_currency_sql_agrees_with_vocab(values: list[str]) -> None:
    expected = [vocab.normalize_currency(v) if v.strip() else None for v in values]
    assert normalize(CURRENCY, values) == expected


def python_ip(text: str) -> str | None:
    try:
        ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    return text.strip() if "%" not in text else None


ip_parts = st.one_of(st.integers(0, 300).map(str), st.sampled_from(["", "0", "00", "01", "ffff", "FFFF", "1:2", "db8"]))
ipv4ish = st.lists(ip_parts, min_size=3, max_size=5).map(".".join)
ipv6ish = st.lists(st.sampled_from(["", "0", "1", "db8", "ffff", "12345", "g1", "2001", "1.2.3.4", "0.0.0.0"]),
                   min_size=2, max_size=10).map(":".join)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(ipv4ish, ipv6ish, st.ip_addresses().map(str)), min_size=1, max_size=80))
def test_ip_sql_agrees_with_ipaddress(values: list[str]) -> None:
    assert normalize(IP, values) == [python_ip(v) for v in values]


# --------------------------------------------------------------------------- enumerations

ENUM_FIELDS = [f for feed in FEEDS.values() for f in feed.fields if f.allowed]


@pytest.mark.parametrize("field", ENUM_FIELDS, ids=lambda f: f.name + "/" + "-".join(f.allowed or ())[:20])
def test_enum_canonical_in_any_case(field: Field) -> None:
    spellings = [*(field.allowed or ()), *field.aliases]
    values = [s.upper() for s in spellings] + [f"  {s.title()} " for s in spellings] + ["nonsense", ""]
    expected = [field.canonical(v) if v.strip() else None for v in values]
    assert normalize(field, values) == expected
    assert None not in expected[: 2 * len(spellings)]  # every spelling is accepted


# --------------------------------------------------------------------------- types

def test_decimal_rounds_half_away_from_zero_to_the_field_scale() -> None:
    money = FEEDS["transactions"].field("amount")  # scale 8
    two = Field("ltv", "decimal", False, "custom", scale=2)
    values = ["1.123456785", "-1.123456785", "0.000000005", "1e40", "abc", "12"]
    assert normalize(money, values) == [Decimal("1.12345679"), Decimal("-1.12345679"), Decimal("1E-8"),
                                        None, None, Decimal("12")]
    assert normalize(two, ["1.005", "-2.675", "3"]) == [Decimal("1.01"), Decimal("-2.68"), Decimal("3")]


def test_flag_is_zero_or_one() -> None:
    active = FEEDS["bonus_assignments"].field("active")
    assert normalize(active, [True, False, None]) == [1, 0, None]
    assert normalize(active, [0, 1, 2, -1]) == [0, 1, None, None]
    assert normalize(active, ["1", "true", "no", "2"]) == [1, 1, 0, None]


def test_float_must_be_finite() -> None:
    ratio = FEEDS["sport_odds"].field("ratio")
    assert normalize(ratio, [3.6, float("nan"), float("inf"), None]) == [3.6, None, None, None]


def test_timestamps_become_utc() -> None:
    created = FEEDS["transactions"].field("created_at")
    text = ["2024-07-01 10:00:00", "2024-07-01T10:00:00Z", "2024-07-01 10:00:00+05:30", "2024-01-15 10:00", "never"]
    assert normalize(created, text, zone="Europe/Malta") == [
        datetime(2024, 7, 1, 8), datetime(2024, 7, 1, 10), datetime(2024, 7, 1, 4, 30), datetime(2024, 1, 15, 9),
        None]
    # A TIMESTAMP value is already UTC (the decoder converted it); a TIMESTAMPTZ is an instant.
    naive = datetime(2024, 7, 1, 10)
    assert normalize(created, [naive], zone="Europe/Malta") == [naive]
    aware = datetime(2024, 7, 1, 10, tzinfo=ZoneInfo("Asia/Tokyo"))
    assert normalize(created, [aware], pa.timestamp("us", tz="Asia/Tokyo")) == [
        aware.astimezone(UTC).replace(tzinfo=None)]


def test_dates_and_booleans() -> None:
    birthday = FEEDS["players"].field("birthday")
    assert normalize(birthday, ["1985-07-10", "1985-02-30"]) == [date(1985, 7, 10), None]
    blocked = FEEDS["players"].field("is_blocked")
    assert normalize(blocked, ["t", "false", "yes", "maybe"]) == [True, False, True, None]


def test_required_text_may_not_be_blank_optional_text_is_verbatim() -> None:
    player_id = FEEDS["transactions"].field("player_id")
    comment = FEEDS["transactions"].field("comment")
    assert normalize(player_id, [" 42 ", "  ", "\t"]) == [" 42 ", None, None]
    assert normalize(comment, [" a, \"b\"\n", "", None]) == [" a, \"b\"\n", "", None]


def test_blank_is_absent_not_invalid() -> None:
    assert evaluate(CURRENCY, "'  '") == (False, None)
    assert evaluate(CURRENCY, "'ZZZ'") == (True, None)
    assert evaluate(CURRENCY, "' eur'") == (True, "EUR")


def test_arrays_are_lists_of_text() -> None:
    tags = Field("segments", "array", False, "custom")
    assert normalize(tags, [["a", "b"], [], None]) == [["a", "b"], [], None]
    assert normalize(tags, [[1, 2]], pa.list_(pa.int64())) == [["1", "2"]]


IP_EDGES = ["1:2:3:4::5:6:7:8", "1:2:3:4:5:6:7::", "::1:2:3:4:5:6:7", "::", "1::", ":::", "1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5::1.2.3.4", "1:2:3:4:5:6::1.2.3.4",
            "::ffff:1.2.3.4", "::1.2.3.4", "1.2.3.4", "01.2.3.4", "256.1.1.1", " 10.0.0.1 ", "fe80::1%eth0",
            "1:2:3:4:5:6:7:1.2.3.4", "12345::", "::1::", "1.2.3", "1.2.3.4.5", "::FFFF:C0A8:1",
            "1:2:3:4:5::6:1.2.3.4", "::1:2:3:4:5:6:1.2.3.4", "::1:2:3:4:5:1.2.3.4", "::1:2:3:4:5:6:7:8",
            "1::2:3:4:5:6:7", "1:2::3:4:5:1.2.3.4"]


def test_ip_edge_cases() -> None:
    assert normalize(IP, IP_EDGES) == [python_ip(v) for v in IP_EDGES]


@pytest.mark.parametrize(("field", "values", "arrow_type"), [
    (FEEDS["transactions"].field("created_at"), [datetime(2024, 7, 1, 10), None], pa.timestamp("us")),
    (FEEDS["transactions"].field("created_at"), [datetime(2024, 7, 1, 10, tzinfo=UTC)], pa.timestamp("us", tz="UTC")),
    (FEEDS["transactions"].field("created_at"), ["2024-07-01 10:00:00", "2024-07-01T10:00Z", "x", " "], pa.string()),
    (FEEDS["transactions"].field("created_at"), [date(2024, 7, 1)], pa.date32()),
    (FEEDS["transactions"].field("created_at"), [1, None], pa.int64()),
    (FEEDS["transactions"].field("player_id"), [42, None], pa.int64()),
    (FEEDS["transactions"].field("dir"), ["in", " Out ", "x", ""], pa.string()),
    (FEEDS["players"].field("birthday"), [date(1, 1, 1), None], pa.date32()),
    (FEEDS["players"].field("is_blocked"), [True, None], pa.bool_()),
    (Field("tags", "array", False, "custom"), [["a"], [], None], pa.list_(pa.string())),
])
def test_checks_specialized_to_the_raw_type_agree_with_the_generic_ones(field: Field, values: list[Any],
                                                                          arrow_type: pa.DataType) -> None:
    conn = duckdb.connect()
    register_vocab(conn)
    conn.register("vals", pa.table({"i": list(range(len(values))), "raw": pa.array(values, arrow_type)}))
    (raw_type,) = [r[1] for r in conn.execute("DESCRIBE SELECT raw FROM vals").fetchall()]
    generic, special = check(field, "raw", "Europe/Malta"), check(field, "raw", "Europe/Malta", raw_type)
    assert special != generic or raw_type not in ("TIMESTAMP", "VARCHAR", "DATE", "BOOLEAN", "VARCHAR[]")
    got = conn.execute(f"SELECT {generic.value}, {special.value}, {generic.present}, {special.present} "
                       "FROM vals ORDER BY i").fetchall()
    assert [(g, gp) for g, _, gp, _ in got] == [(s, sp) for _, s, _, sp in got]


def test_store_types_are_the_stores() -> None:
    from materializer.store import SQL_TYPES
    from materializer.validate import STORE_TYPES

    assert SQL_TYPES == STORE_TYPES
