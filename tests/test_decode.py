"""Tests for cdc.decode: Debezium JSON change events -> Change. Pure, no services.

The envelopes under tests/data/debezium/ were captured from Debezium 3.6.3.Final
(Postgres connector, pgoutput) for this table and these statements::

    CREATE TYPE player_status AS ENUM ('active', 'blocked', 'closed');
    CREATE TABLE public.players (
      id bigint PRIMARY KEY, username text NOT NULL, email varchar(200), country char(2),
      status player_status NOT NULL DEFAULT 'active', is_vip boolean NOT NULL DEFAULT false,
      level smallint, rating double precision, balance numeric(12,2) NOT NULL,
      bonus_balance numeric, birth_date date, created_at timestamp(6) NOT NULL,
      updated_at timestamp(3), last_login_at timestamptz, daily_limit_reset time(6),
      tags text[], prefs jsonb, external_id uuid, avatar bytea);
    INSERT INTO public.players VALUES
     (1001, 'lucky_anna', 'anna@example.com', 'DE', 'active', true, 7, 4.75, 1234.56, 10.125,
      '1969-07-20', '2023-03-26 02:30:00.123456', '2023-10-29 02:30:00.5',
      '2024-01-15 10:00:00.654321+01', '23:59:59.999999', ARRAY['slots','live'],
      '{"lang": "de", "notify": true}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\xdeadbeef'),
     (1002, 'bob', NULL, 'AT', 'blocked', false, NULL, NULL, -0.01, NULL, '1900-01-01',
      'infinity', '-infinity', NULL, '00:00:00', '{}', NULL, NULL, NULL);
    -- after the snapshot:
    UPDATE public.players SET balance = balance - 250.50,
           updated_at = '2024-06-01 08:15:00.250', level = 8 WHERE id = 1001;
    DELETE FROM public.players WHERE id = 1002;

created_at and updated_at of player 1001 sit in Europe/Berlin's 2023 DST gap and fold.
"""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cdc import CdcError, Change, ColumnType, DecodeError, decode, parse_column_type

DATA = Path(__file__).parent / "data" / "debezium"
BERLIN = ZoneInfo("Europe/Berlin")
TOPIC = "spacevegas.public.players"
LSN, TS_MS = 21691224, 1795653639264
EPOCH = datetime(1970, 1, 1)


# --------------------------------------------------------------------------- encoding like Debezium

def b64_unscaled(n: int) -> str:
    """Java BigInteger.toByteArray(): minimal big-endian two's complement, base64."""
    bitlen = n.bit_length() if n >= 0 else (~n).bit_length()
    raw = n.to_bytes(bitlen // 8 + 1, "big", signed=True)
    return base64.b64encode(raw).decode()


def micros(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(microseconds=1)


# One row, as Python values and as Debezium puts it on the wire.
ROW: dict[str, Any] = {
    "id": 7,
    "username": "lucky_anna",
    "balance": Decimal("-1234.56"),
    "bonus": Decimal("10.125"),
    "birth_date": date(1969, 7, 20),
    "created_at": datetime(2023, 7, 1, 12, 0, 0, 123456),
    "updated_at": datetime(2024, 6, 1, 8, 15, 0, 250000),
    "last_login_at": datetime(2024, 1, 15, 9, 0, 0, 654321),
    "reset_at": time(23, 59, 59, 999999),
    "tags": ["slots", "live"],
    "prefs": '{"lang": "de", "notify": true}',
    "external_id": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "status": "active",
    "avatar": b"\xde\xad\xbe\xef",
    "rating": 4.75,
    "is_vip": True,
    "email": None,
}
WIRE: dict[str, Any] = {
    "id": 7,
    "username": "lucky_anna",
    "balance": b64_unscaled(-123456),
    "bonus": {"scale": 3, "value": b64_unscaled(10125)},
    "birth_date": -165,
    "created_at": 1688212800123456,
    "updated_at": 1717229700250,
    "last_login_at": "2024-01-15T09:00:00.654321Z",
    "reset_at": 86399999999,
    "tags": ["slots", "live"],
    "prefs": '{"lang": "de", "notify": true}',
    "external_id": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "status": "active",
    "avatar": "3q2+7w==",
    "rating": 4.75,
    "is_vip": True,
    "email": None,
}
FIELDS: dict[str, dict[str, Any]] = {
    "id": {"type": "int64", "optional": False},
    "username": {"type": "string", "optional": False},
    "balance": {"type": "bytes", "optional": False, "name": "org.apache.kafka.connect.data.Decimal",
                "version": 1, "parameters": {"scale": "2", "connect.decimal.precision": "12"}},
    "bonus": {"type": "struct", "fields": [{"type": "int32", "optional": False, "field": "scale"},
                                           {"type": "bytes", "optional": False, "field": "value"}],
              "optional": True, "name": "io.debezium.data.VariableScaleDecimal", "version": 1},
    "birth_date": {"type": "int32", "optional": True, "name": "io.debezium.time.Date", "version": 1},
    "created_at": {"type": "int64", "optional": False, "name": "io.debezium.time.MicroTimestamp", "version": 1},
    "updated_at": {"type": "int64", "optional": True, "name": "io.debezium.time.Timestamp", "version": 1},
    "last_login_at": {"type": "string", "optional": True, "name": "io.debezium.time.ZonedTimestamp", "version": 1},
    "reset_at": {"type": "int64", "optional": True, "name": "io.debezium.time.MicroTime", "version": 1},
    "tags": {"type": "array", "items": {"type": "string", "optional": True}, "optional": True},
    "prefs": {"type": "string", "optional": True, "name": "io.debezium.data.Json", "version": 1},
    "external_id": {"type": "string", "optional": True, "name": "io.debezium.data.Uuid", "version": 1},
    "status": {"type": "string", "optional": False, "name": "io.debezium.data.Enum", "version": 1,
               "parameters": {"allowed": "active,blocked,closed"}},
    "avatar": {"type": "bytes", "optional": True},
    "rating": {"type": "double", "optional": True},
    "is_vip": {"type": "boolean", "optional": False},
    "email": {"type": "string", "optional": True},
}
TYPES = {name: parse_column_type(text) for name, text in {
    "id": "integer", "username": "string", "balance": "decimal(12,2)", "bonus": "decimal",
    "birth_date": "date", "created_at": "timestamp", "updated_at": "timestamp(ms)",
    "last_login_at": "timestamptz", "reset_at": "time", "tags": "array<string>", "prefs": "json",
    "external_id": "uuid", "status": "string", "avatar": "bytes", "rating": "float", "is_vip": "boolean",
}.items()}
SOURCE_FIELDS = [
    {"type": "string", "optional": False, "field": "version"},
    {"type": "string", "optional": False, "field": "connector"},
    {"type": "string", "optional": False, "field": "name"},
    {"type": "int64", "optional": False, "field": "ts_ms"},
    {"type": "string", "optional": False, "field": "db"},
    {"type": "string", "optional": False, "field": "schema"},
    {"type": "string", "optional": False, "field": "table"},
    {"type": "int64", "optional": True, "field": "txId"},
    {"type": "int64", "optional": True, "field": "lsn"},
]


def struct(name: str, fields: dict[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"type": "struct", "fields": [{**f, "field": n} for n, f in fields.items()],
            "optional": False, "name": name, **extra}


def wrap(schema: dict[str, Any] | None, payload: Any) -> bytes:
    """Kafka JsonConverter's layout: schema first, compact."""
    return orjson.dumps(payload if schema is None else {"schema": schema, "payload": payload})


def envelope(op: str, before: dict[str, Any] | None, after: dict[str, Any] | None, *, schema: bool = True,
             fields: dict[str, dict[str, Any]] = FIELDS, lsn: int = LSN, table: str = "players") -> bytes:
    value = {**struct("spacevegas.public.players.Value", fields), "optional": True}
    env_schema = {"type": "struct", "name": "spacevegas.public.players.Envelope", "version": 2, "optional": False,
                  "fields": [{**value, "field": "before"}, {**value, "field": "after"},
                             {"type": "struct", "fields": SOURCE_FIELDS, "optional": False,
                              "name": "io.debezium.connector.postgresql.Source", "field": "source"},
                             {"type": "string", "optional": False, "field": "op"},
                             {"type": "int64", "optional": True, "field": "ts_ms"}]}
    payload = {"before": before, "after": after,
               "source": {"version": "3.6.3.Final", "connector": "postgresql", "name": "spacevegas",
                          "ts_ms": TS_MS, "db": "postgres", "schema": "public", "table": table,
                          "txId": 737, "lsn": lsn},
               "op": op, "ts_ms": TS_MS + 262}
    return wrap(env_schema if schema else None, payload)


def unwrapped(op: str, row: dict[str, Any], *, schema: bool = True, deleted: Any = "false",
              names: bool = True) -> bytes:
    meta: dict[str, Any] = {"__deleted": deleted, "__op": op, "__lsn": LSN, "__source_ts_ms": TS_MS}
    meta_fields = {"__deleted": {"type": "string", "optional": True}, "__op": {"type": "string", "optional": True},
                   "__lsn": {"type": "int64", "optional": True},
                   "__source_ts_ms": {"type": "int64", "optional": True}}
    if names:
        meta |= {"__table": "players", "__schema": "public"}
        meta_fields |= {"__table": {"type": "string", "optional": True},
                        "__schema": {"type": "string", "optional": True}}
    return wrap(struct("spacevegas.public.players.Value", FIELDS | meta_fields) if schema else None, row | meta)


def key(id_: int = 7, *, schema: bool = True) -> bytes:
    return wrap(struct("spacevegas.public.players.Key", {"id": {"type": "int64", "optional": False}})
                if schema else None, {"id": id_})


def column(field: dict[str, Any], wire: Any, zone: Any = UTC) -> Any:
    """Decode one value through a minimal envelope whose only column has schema `field`."""
    change = decode(TOPIC, None, envelope("c", None, {"v": wire}, fields={"v": field}), zone=zone)
    assert change is not None and change.after is not None
    return change.after["v"]


def logical(name: str, typ: str = "int64", **params: str) -> dict[str, Any]:
    f: dict[str, Any] = {"type": typ, "optional": True, "name": name, "version": 1}
    if params:
        f["parameters"] = params
    return f


def sample(name: str) -> tuple[str, bytes | None, bytes]:
    doc = json.loads((DATA / f"{name}.json").read_text())
    k = None if doc["key"] is None else orjson.dumps(doc["key"])
    return doc["topic"], k, orjson.dumps(doc["value"])


# --------------------------------------------------------------------------- the three shapes

SHAPES = {
    "envelope+schema": lambda op, row, wire: envelope(op, *((wire, None) if op == "d" else (None, wire))),
    "envelope": lambda op, row, wire: envelope(op, *((wire, None) if op == "d" else (None, wire)), schema=False),
    "unwrap+schema": lambda op, row, wire: unwrapped(op, wire, deleted="true" if op == "d" else "false"),
    "unwrap": lambda op, row, wire: unwrapped(op, wire, schema=False, deleted="true" if op == "d" else "false"),
}


@pytest.mark.parametrize("op", ["c", "u", "r", "d"])
@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_gives_the_same_change(shape: str, op: str) -> None:
    with_schema = shape.endswith("+schema")
    value = SHAPES[shape](op, ROW, dict(WIRE))
    change = decode(TOPIC, key(schema=with_schema), value, types=None if with_schema else TYPES)
    image = dict(ROW)
    expected = Change("public.players", op, image if op == "d" else None, None if op == "d" else image,
                      {"id": 7}, LSN, TS_MS)
    assert change == expected


def test_shapes_agree_in_a_source_zone_too() -> None:
    changes = {shape: decode(TOPIC, key(), make("u", ROW, dict(WIRE)), zone=BERLIN,
                             types=None if shape.endswith("+schema") else TYPES)
               for shape, make in SHAPES.items()}
    afters = [c.after for c in changes.values() if c is not None and c.after is not None]
    assert len(afters) == 4 and all(a == afters[0] for a in afters)
    assert afters[0]["created_at"] == datetime(2023, 7, 1, 10, 0, 0, 123456)  # CEST = UTC+2


def test_decoding_twice_hits_the_cached_plan_and_agrees() -> None:
    value = envelope("u", None, dict(WIRE))
    first, second = decode(TOPIC, key(), value), decode(TOPIC, key(), value)
    assert first == second and first is not None and first.after == ROW


def test_schema_is_honoured_when_json_layout_differs() -> None:
    """A hand-made envelope (spaces, payload first) takes the slow path to the same result."""
    doc = json.loads(envelope("u", None, dict(WIRE)))
    spaced = json.dumps({"payload": doc["payload"], "schema": doc["schema"]}, indent=1).encode()
    change = decode(TOPIC, key(), spaced)
    assert change is not None and change.after == ROW


def test_schema_change_on_a_topic_uses_the_new_schema() -> None:
    """Same topic, same column, type changes: the cached plan of the old schema must not apply."""
    old = envelope("u", None, {"v": 19000}, fields={"v": {"type": "int32", "optional": True}})
    new = envelope("u", None, {"v": 19000}, fields={"v": logical("io.debezium.time.Date", "int32")})
    for _ in range(2):
        assert decode(TOPIC, None, old).after == {"v": 19000}  # type: ignore[union-attr]
        assert decode(TOPIC, None, new).after == {"v": date(2022, 1, 8)}  # type: ignore[union-attr]


def test_payload_marker_inside_the_schema_does_not_confuse_the_fast_path() -> None:
    field = logical("io.debezium.time.Date", "int32", a="1", payload="x")  # schema text holds ,"payload":
    value = envelope("c", None, {"v": 1}, fields={"v": field})
    assert b',"payload":"x"' in value
    for _ in range(2):
        assert decode(TOPIC, None, value).after == {"v": date(1970, 1, 2)}  # type: ignore[union-attr]


def test_embedded_schema_wins_over_mapping_types() -> None:
    wrong = {"created_at": parse_column_type("timestamptz"), "balance": parse_column_type("string")}
    change = decode(TOPIC, key(), envelope("u", None, dict(WIRE)), types=wrong)
    assert change is not None and change.after == ROW


def test_schemaless_columns_without_a_type_pass_through() -> None:
    change = decode(TOPIC, key(schema=False), envelope("u", None, dict(WIRE), schema=False),
                    types={"birth_date": parse_column_type("date")})
    assert change is not None and change.after is not None
    assert change.after["birth_date"] == date(1969, 7, 20)
    assert change.after["created_at"] == 1688212800123456
    assert change.after["balance"] == WIRE["balance"]


# --------------------------------------------------------------------------- logical types

@pytest.mark.parametrize(("field", "wire", "expected"), [
    (logical("io.debezium.time.Date", "int32"), -165, date(1969, 7, 20)),
    (logical("io.debezium.time.Date", "int32"), -25567, date(1900, 1, 1)),
    (logical("io.debezium.time.Date", "int32"), 0, date(1970, 1, 1)),
    (logical("org.apache.kafka.connect.data.Date", "int32"), 18321, date(2020, 2, 29)),
    (logical("io.debezium.time.Time", "int32"), 3723004, time(1, 2, 3, 4000)),
    (logical("org.apache.kafka.connect.data.Time", "int32"), 3723004, time(1, 2, 3, 4000)),
    (logical("io.debezium.time.MicroTime"), 86399999999, time(23, 59, 59, 999999)),
    (logical("io.debezium.time.MicroTime"), 0, time(0, 0)),
    (logical("io.debezium.time.MicroTime"), 86400000000, time.max),  # Postgres '24:00:00'
    (logical("io.debezium.time.NanoTime"), 3723004005006, time(1, 2, 3, 4005)),
    (logical("io.debezium.time.ZonedTime", "string"), "09:00:00.654321Z", time(9, 0, 0, 654321)),
    (logical("io.debezium.time.Timestamp"), 1717229700250, datetime(2024, 6, 1, 8, 15, 0, 250000)),
    (logical("io.debezium.time.MicroTimestamp"), 1679797800123456, datetime(2023, 3, 26, 2, 30, 0, 123456)),
    (logical("io.debezium.time.MicroTimestamp"), -1, datetime(1969, 12, 31, 23, 59, 59, 999999)),
    (logical("io.debezium.time.NanoTimestamp"), 1679797800123456789, datetime(2023, 3, 26, 2, 30, 0, 123456)),
    (logical("io.debezium.time.NanoTimestamp"), -1_000_000_000, datetime(1969, 12, 31, 23, 59, 59)),
    (logical("org.apache.kafka.connect.data.Timestamp"), 1717229700250, datetime(2024, 6, 1, 8, 15, 0, 250000)),
    (logical("io.debezium.time.ZonedTimestamp", "string"), "2023-07-20T17:15:38.123456Z",
     datetime(2023, 7, 20, 17, 15, 38, 123456)),
    (logical("io.debezium.time.ZonedTimestamp", "string"), "2023-07-20T17:15:38+02:00",
     datetime(2023, 7, 20, 15, 15, 38)),
    (logical("io.debezium.time.ZonedTimestamp", "string"), "2023-07-20T17:15:38.123456789Z",
     datetime(2023, 7, 20, 17, 15, 38, 123456)),
    # Postgres infinity and values outside Python's range saturate
    (logical("io.debezium.time.MicroTimestamp"), 9223372036825200000, datetime.max),
    (logical("io.debezium.time.Timestamp"), -9223372036832400, datetime.min),
    (logical("io.debezium.time.NanoTimestamp"), 2**63 - 1, datetime.max),   # Long.MAX_VALUE
    (logical("io.debezium.time.NanoTimestamp"), -(2**63), datetime.min),
    (logical("io.debezium.time.ZonedTimestamp", "string"), "infinity", datetime.max),
    (logical("io.debezium.time.ZonedTimestamp", "string"), "-infinity", datetime.min),
    (logical("io.debezium.time.Date", "int32"), 2**31 - 1, date.max),
    (logical("io.debezium.time.Date", "int32"), -(2**31), date.min),
    # decimals: real Debezium bytes, negatives, scale 0, beyond 28 digits (the default context)
    (logical("org.apache.kafka.connect.data.Decimal", "bytes", scale="2"), "AeJA", Decimal("1234.56")),
    (logical("org.apache.kafka.connect.data.Decimal", "bytes", scale="2"), "/w==", Decimal("-0.01")),
    (logical("org.apache.kafka.connect.data.Decimal", "bytes", scale="4"), "DeC2s6dj//8=",
     Decimal("99999999999999.9999")),
    (logical("org.apache.kafka.connect.data.Decimal", "bytes", scale="4"), "/h34", Decimal("-12.3400")),
    (logical("org.apache.kafka.connect.data.Decimal", "bytes", scale="0"), "AA==", Decimal("0")),
    (logical("org.apache.kafka.connect.data.Decimal", "bytes", scale="0"), b64_unscaled(-(10**37)),
     Decimal("-1E+37")),
    (logical("org.apache.kafka.connect.data.Decimal", "bytes", scale="10"), b64_unscaled(-(10**38) + 1),
     Decimal("-9999999999999999999999999999.9999999999")),
    (logical("org.apache.kafka.connect.data.Decimal", "bytes", scale="2"), 12.5, Decimal("12.5")),
    (logical("io.debezium.data.VariableScaleDecimal", "struct"), {"scale": 3, "value": "J40="},
     Decimal("10.125")),
    (logical("io.debezium.data.VariableScaleDecimal", "struct"), {"scale": 0, "value": b64_unscaled(-5)},
     Decimal("-5")),
    # text-like and binary types
    (logical("io.debezium.data.Json", "string"), '{"a": [1, 2]}', '{"a": [1, 2]}'),
    (logical("io.debezium.data.Uuid", "string"), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
     "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    (logical("io.debezium.data.Enum", "string", allowed="a,b"), "b", "b"),
    (logical("io.debezium.data.Bits", "bytes", length="12"), "AQ8=", b"\x01\x0f"),
    ({"type": "bytes", "optional": True}, "3q2+7w==", b"\xde\xad\xbe\xef"),
    ({"type": "int64", "optional": True}, 2**62, 2**62),
    ({"type": "boolean", "optional": True}, False, False),
    ({"type": "string", "optional": True}, "x", "x"),
    # containers
    ({"type": "array", "items": logical("io.debezium.time.Date", "int32")}, [0, None, -1],
     [date(1970, 1, 1), None, date(1969, 12, 31)]),
    ({"type": "array", "items": {"type": "string", "optional": True}}, [], []),
    ({"type": "struct", "name": "io.debezium.data.geometry.Point", "fields": [
        {"type": "double", "optional": False, "field": "x"}, {"type": "bytes", "optional": True, "field": "wkb"}]},
     {"x": 1.5, "wkb": "AQ=="}, {"x": 1.5, "wkb": b"\x01"}),
    ({"type": "map", "keys": {"type": "string"}, "values": logical("io.debezium.time.Date", "int32")},
     {"a": 1}, {"a": date(1970, 1, 2)}),
])
def test_logical_type(field: dict[str, Any], wire: Any, expected: Any) -> None:
    got = column(field, wire)
    assert got == expected
    assert type(got) is type(expected)


def test_double_nan_sent_as_text() -> None:
    assert math.isnan(column({"type": "double", "optional": True}, "NaN"))
    assert column({"type": "double", "optional": True}, "-Infinity") == -math.inf


def test_decimal_keeps_its_scale_exactly() -> None:
    got = column(logical("org.apache.kafka.connect.data.Decimal", "bytes", scale="4"), "/h34")
    assert got.as_tuple().exponent == -4 and str(got) == "-12.3400"


def test_connect_timestamp_is_an_instant_not_shifted_by_zone() -> None:
    assert column(logical("org.apache.kafka.connect.data.Timestamp"), 0, BERLIN) == EPOCH


def test_zoned_timestamp_is_not_shifted_by_zone() -> None:
    got = column(logical("io.debezium.time.ZonedTimestamp", "string"), "2024-01-15T09:00:00Z", BERLIN)
    assert got == datetime(2024, 1, 15, 9, 0)


# --------------------------------------------------------------------------- DST

@pytest.mark.parametrize(("wall", "utc"), [
    (datetime(2024, 1, 15, 10, 0), datetime(2024, 1, 15, 9, 0)),           # CET, UTC+1
    (datetime(2024, 7, 15, 10, 0), datetime(2024, 7, 15, 8, 0)),            # CEST, UTC+2
    (datetime(2023, 3, 26, 2, 30), datetime(2023, 3, 26, 1, 30)),           # gap: fold=0 -> offset before (+1)
    (datetime(2023, 3, 26, 3, 0), datetime(2023, 3, 26, 1, 0)),             # first wall time after the gap
    (datetime(2023, 10, 29, 2, 30), datetime(2023, 10, 29, 0, 30)),         # fold: fold=0 -> first (+2)
    (datetime(2023, 10, 29, 3, 0), datetime(2023, 10, 29, 2, 0)),           # after the fold, +1
])
@pytest.mark.parametrize("name", ["io.debezium.time.Timestamp", "io.debezium.time.MicroTimestamp",
                                  "io.debezium.time.NanoTimestamp"])
def test_naive_timestamps_are_read_in_the_source_zone(name: str, wall: datetime, utc: datetime) -> None:
    unit = {"io.debezium.time.Timestamp": 1000, "io.debezium.time.MicroTimestamp": 1,
            "io.debezium.time.NanoTimestamp": 0.001}[name]
    wire = int(micros(wall) / unit)
    assert column(logical(name), wire, BERLIN) == utc
    assert column(logical(name), wire, UTC) == wall
    assert column(logical(name), wire, ZoneInfo("UTC")) == wall


def test_dst_without_schema_through_mapping_types() -> None:
    row = {"created_at": micros(datetime(2023, 10, 29, 2, 30)), "updated_at": micros(datetime(2023, 3, 26, 2, 30))}
    types = {"created_at": parse_column_type("timestamp"), "updated_at": parse_column_type("timestamp(us)")}
    change = decode(TOPIC, None, envelope("c", None, row, schema=False), types=types, zone=BERLIN)
    assert change is not None
    assert change.after == {"created_at": datetime(2023, 10, 29, 0, 30), "updated_at": datetime(2023, 3, 26, 1, 30)}


def test_infinity_survives_zone_conversion() -> None:
    assert column(logical("io.debezium.time.MicroTimestamp"), 9223372036825200000, BERLIN) == datetime.max
    near_max = micros(datetime(9999, 12, 31, 23, 30))
    assert column(logical("io.debezium.time.MicroTimestamp"), near_max, ZoneInfo("America/New_York")) == datetime.max


# --------------------------------------------------------------------------- mapping column types

@pytest.mark.parametrize(("text", "wire", "expected"), [
    ("string", "x", "x"),
    ("integer", -3, -3),
    ("float", 1.5, 1.5),
    ("float", "NaN", None),
    ("boolean", True, True),
    ("date", -1, date(1969, 12, 31)),
    ("time", 3723000004, time(1, 2, 3, 4)),
    ("timestamp", 1, datetime(1970, 1, 1, 0, 0, 0, 1)),
    ("timestamp(ms)", 1, datetime(1970, 1, 1, 0, 0, 0, 1000)),
    ("timestamp(ns)", 1000, datetime(1970, 1, 1, 0, 0, 0, 1)),
    ("timestamptz", "2023-07-20T17:15:38.5-03:00", datetime(2023, 7, 20, 20, 15, 38, 500000)),
    ("decimal(12,2)", "AeJA", Decimal("1234.56")),             # precise mode: base64
    ("decimal(12,2)", "1234.56", Decimal("1234.56")),          # string mode
    ("decimal(12,2)", "-0.01", Decimal("-0.01")),
    ("decimal(12,2)", 1234.56, Decimal("1234.56")),            # double mode
    ("decimal(12,2)", "12345", Decimal("12345")),              # text of a plain numeric (not 4k long)
    ("decimal(12,2)", "1234", Decimal("-26588.24")),           # digits only, 4k long, scale > 0: base64
    ("decimal(10,0)", "1000", Decimal("1000")),                # scale 0: digits are text
    ("decimal(10,0)", b64_unscaled(-7), Decimal("-7")),
    ("decimal(10,0)", "+Q==", Decimal("-7")),                  # base64 may start with '+'
    ("decimal(10,0)", "/w==", Decimal("-1")),
    ("decimal", {"scale": 3, "value": "J40="}, Decimal("10.125")),
    ("decimal", "10.125", Decimal("10.125")),
    ("decimal", 3, Decimal("3")),
    ("json", '{"a":1}', '{"a":1}'),
    ("json", {"a": 1}, '{"a":1}'),
    ("uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    ("bytes", "AQ8=", b"\x01\x0f"),
    ("array<date>", [0, None], [date(1970, 1, 1), None]),
    ("ARRAY< decimal(5, 1) >", ["AQ=="], [Decimal("0.1")]),
    ("array<array<integer>>", [[1], []], [[1], []]),
])
def test_column_type_decodes(text: str, wire: Any, expected: Any) -> None:
    got = parse_column_type(text).decode(wire)
    if expected is None:
        assert math.isnan(got)
    else:
        assert got == expected and type(got) is type(expected)


def test_column_type_text_round_trips() -> None:
    for text in ["string", "integer", "float", "boolean", "date", "time", "timestamp", "timestamp(ms)",
                 "timestamp(ns)", "timestamptz", "decimal", "decimal(12,2)", "json", "uuid", "bytes",
                 "array<decimal(5,1)>", "array<array<timestamp(ms)>>"]:
        t = parse_column_type(text)
        assert isinstance(t, ColumnType) and str(t) == text and parse_column_type(str(t)) == t
    assert parse_column_type(" Decimal( 12 , 2 ) ") == ColumnType("decimal", 12, 2)
    assert parse_column_type("timestamp(us)") == parse_column_type("timestamp")


@pytest.mark.parametrize("text", ["varchar", "decimal(0,0)", "decimal(12)", "array<>", "array<nope>", "", "int"])
def test_unknown_column_type_is_a_clear_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="column type") as exc:
        parse_column_type(text)
    if text != "decimal(0,0)":
        assert "expected one of" in str(exc.value) and "decimal(P,S)" in str(exc.value)


def test_column_type_decode_reports_why() -> None:
    assert parse_column_type("date").decode(None) is None
    with pytest.raises(DecodeError, match=r"not base64 of a Decimal.*decimal.handling.mode"):
        parse_column_type("decimal(12,2)").decode("AeJ")
    with pytest.raises(DecodeError, match="is not an integer"):
        parse_column_type("integer").decode("12")
    with pytest.raises(DecodeError, match="no UTC offset"):
        parse_column_type("timestamptz").decode("2023-07-20T17:15:38")
    with pytest.raises(DecodeError, match="does not fit declared type date"):
        parse_column_type("date").decode("2023-07-20")


# --------------------------------------------------------------------------- ops and non-row records

def test_truncate() -> None:
    value = envelope("t", None, None)
    assert decode("spacevegas.public.players", None, value) == Change(
        "public.players", "t", None, None, None, LSN, TS_MS)
    assert decode("spacevegas.public.players", None, envelope("t", None, None, schema=False)) == Change(
        "public.players", "t", None, None, None, LSN, TS_MS)


def test_logical_decoding_message() -> None:
    payload = {"op": "m", "ts_ms": TS_MS, "message": {"prefix": "feedstore", "content": "aGVsbG8="},
               "source": {"connector": "postgresql", "ts_ms": TS_MS, "db": "postgres", "schema": "", "table": "",
                          "lsn": 21691976}}
    change = decode("spacevegas.message", orjson.dumps({"prefix": "feedstore"}), orjson.dumps(payload))
    assert change == Change("spacevegas.message", "m", None, None, {"prefix": "feedstore"}, 21691976, TS_MS)


@pytest.mark.parametrize(("topic", "value"), [
    (TOPIC, None),                                                          # tombstone
    (TOPIC, b'{"schema":null,"payload":null}'),                             # tombstone, enveloped
    (TOPIC, b"null"),
    ("__debezium-heartbeat.spacevegas", b'{"ts_ms":1795653639002}'),
    ("__debezium-heartbeat.spacevegas", b"not even json"),                  # never parsed
    ("heartbeats.custom", b'{"schema":{"type":"struct","fields":[{"type":"int64","optional":false,'
                          b'"field":"ts_ms"}],"optional":false,"name":"io.debezium.connector.common.Heartbeat",'
                          b'"version":1},"payload":{"ts_ms":1795653639002}}'),
    ("heartbeats.custom", b'{"ts_ms":1795653639002}'),
    ("spacevegas.transaction", b'{"status":"BEGIN","id":"737:21691224","event_count":null,'
                               b'"data_collections":null,"ts_ms":1795653639264}'),
    ("tx.elsewhere", b'{"status":"END","id":"737:21691824","event_count":3,"data_collections":'
                     b'[{"data_collection":"public.players","event_count":1}],"ts_ms":1795653639264}'),
    ("spacevegas", b'{"source":{"server":"spacevegas"},"ts_ms":1,"databaseName":"shop","ddl":'
                   b'"ALTER TABLE t ADD c int","tableChanges":[]}'),               # schema change
])
def test_records_that_are_not_row_changes_are_skipped(topic: str, value: bytes | None) -> None:
    assert decode(topic, key(), value) is None


def test_null_key() -> None:
    change = decode(TOPIC, None, envelope("c", None, dict(WIRE)))
    assert change is not None and change.key is None and change.after == ROW


@pytest.mark.parametrize(("raw", "expected"), [
    (b'{"id":5}', {"id": 5}),
    (b'{"schema":{"type":"struct","fields":[{"type":"int64","optional":false,"field":"id"}],"optional":false,'
     b'"name":"k"},"payload":{"id":5}}', {"id": 5}),
    (b"5", {"key": 5}),
    (b'"abc"', {"key": "abc"}),
    (b'{"schema":{"type":"int32","optional":false,"name":"io.debezium.time.Date"},"payload":1}',
     {"key": date(1970, 1, 2)}),
    (b'{"schema":{"type":"struct","fields":[{"type":"int32","optional":false,"name":"io.debezium.time.Date",'
     b'"field":"day"},{"type":"string","optional":false,"field":"shop"}],"optional":false,"name":"k"},'
     b'"payload":{"day":19000,"shop":"x"}}', {"day": date(2022, 1, 8), "shop": "x"}),
    (b"null", None),
])
def test_key_forms(raw: bytes, expected: Any) -> None:
    change = decode(TOPIC, raw, envelope("c", None, dict(WIRE)))
    assert change is not None and change.key == expected


def test_schemaless_key_uses_mapping_types() -> None:
    change = decode(TOPIC, b'{"day":19000}', envelope("c", None, {"day": 19000}, schema=False),
                    types={"day": parse_column_type("date")})
    assert change is not None and change.key == {"day": date(2022, 1, 8)} and change.after == change.key


# --------------------------------------------------------------------------- ExtractNewRecordState

def test_unwrap_rewrite_delete() -> None:
    change = decode(TOPIC, key(), unwrapped("d", dict(WIRE), deleted="true"))
    assert change == Change("public.players", "d", ROW, None, {"id": 7}, LSN, TS_MS)
    assert change is not None and change.before is not None
    assert not any(name.startswith("__") for name in change.before)


@pytest.mark.parametrize(("deleted", "op", "expected_op"), [
    (True, "d", "d"), (False, "c", "c"), ("false", "r", "r"), ("true", "u", "d"),
])
def test_unwrap_deleted_flag(deleted: Any, op: str, expected_op: str) -> None:
    change = decode(TOPIC, key(schema=False), unwrapped(op, {"id": 7}, schema=False, deleted=deleted))
    assert change is not None and change.op == expected_op
    image = {"id": 7}
    assert (change.before, change.after) == ((image, None) if expected_op == "d" else (None, image))


def test_unwrap_without_table_fields_takes_the_table_from_the_topic() -> None:
    change = decode("prod.crm.players", None, unwrapped("u", {"id": 7, "__ts_ms": 5}, schema=False, names=False))
    assert change == Change("crm.players", "u", None, {"id": 7}, None, LSN, TS_MS)


def test_unwrap_without_op_field_is_an_upsert() -> None:
    change = decode(TOPIC, None, b'{"id":7,"__deleted":"false"}')
    assert change == Change("public.players", "u", None, {"id": 7}, None, None, None)


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize(("value", "message"), [
    (b"\x00\x01garbage", r"value is not valid JSON .*JsonConverter"),
    (b'{"id": 7', r"value is not valid JSON"),
    (b"", r"value is not valid JSON"),
    (b"[1, 2]", r"not a JSON object"),
    (b'"text"', r"not a JSON object"),
    (b'{"foo": 1, "bar": 2}', r"neither a Debezium envelope .* nor an ExtractNewRecordState row.*add.fields"),
    (b'{"schema": [], "payload": {}}', r"embedded schema is malformed"),
    (envelope("x", None, {"id": 7}, schema=False), r"unknown op 'x'"),
    (envelope("z", None, {"id": 7}), r"unknown op 'z'"),
    (envelope("u", None, None), r"op 'u' event has no 'after' row"),
    (envelope("c", None, [1], schema=False), r"'after' is \[1\], not a row object"),  # type: ignore[arg-type]
    (unwrapped("z", {"id": 7}), r"unknown op 'z' in __op"),
    (unwrapped("c", {"id": 7}, deleted="maybe"), r"__deleted is 'maybe'"),
])
def test_malformed_events_raise_decode_error(value: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(TOPIC, None, value)


def test_decimal_that_is_not_base64_names_the_column_and_the_fix() -> None:
    wire = dict(WIRE, balance="xx")
    with pytest.raises(DecodeError) as exc:
        decode(TOPIC, key(), envelope("u", None, wire))
    assert str(exc.value) == ("column 'balance': value 'xx' is not base64 of a Decimal; check "
                              "decimal.handling.mode or the mapping's column type")
    with pytest.raises(DecodeError, match="column 'balance': value 'xx' is not base64"):
        decode(TOPIC, None, envelope("u", None, wire, schema=False), types=TYPES)


def test_value_of_the_wrong_json_type_names_the_column() -> None:
    with pytest.raises(DecodeError, match=r"column 'birth_date': value '1969-07-20' does not fit its type "
                                          r"io.debezium.time.Date"):
        decode(TOPIC, None, envelope("u", None, dict(WIRE, birth_date="1969-07-20")))
    with pytest.raises(DecodeError, match=r"column 'reset_at': value 99999999999 is not a time of day"):
        decode(TOPIC, None, envelope("u", None, dict(WIRE, reset_at=99_999_999_999)))


def test_bad_key_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="key is not valid JSON"):
        decode(TOPIC, b"{nope", envelope("c", None, {"id": 7}))


def test_table_not_derivable() -> None:
    with pytest.raises(DecodeError, match="cannot tell the table of topic 'players'"):
        decode("players", None, unwrapped("u", {"id": 7}, schema=False, names=False))


def test_errors_form_one_tree() -> None:
    assert issubclass(DecodeError, CdcError) and issubclass(CdcError, Exception)


# --------------------------------------------------------------------------- captured samples

def test_sample_update_with_schema() -> None:
    topic, k, v = sample("players_update")
    change = decode(topic, k, v, zone=BERLIN)
    assert change == Change(
        table="public.players", op="u", before=None, key={"id": 1001}, position=21691224,
        source_ts_ms=1795653639264,
        after={
            "id": 1001, "username": "lucky_anna", "email": "anna@example.com", "country": "DE",
            "status": "active", "is_vip": True, "level": 8, "rating": 4.75,
            "balance": Decimal("984.06"), "bonus_balance": Decimal("10.125"),
            "birth_date": date(1969, 7, 20),
            "created_at": datetime(2023, 3, 26, 1, 30, 0, 123456),   # 02:30 in the DST gap, fold=0 -> +1
            "updated_at": datetime(2024, 6, 1, 6, 15, 0, 250000),    # 08:15 CEST
            "last_login_at": datetime(2024, 1, 15, 9, 0, 0, 654321),  # 10:00+01 in the source
            "daily_limit_reset": time(23, 59, 59, 999999),
            "tags": ["slots", "live"], "prefs": '{"lang": "de", "notify": true}',
            "external_id": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "avatar": b"\xde\xad\xbe\xef",
        })


def test_sample_snapshot_with_infinity() -> None:
    topic, k, v = sample("players_snapshot_infinity")
    change = decode(topic, k, v, zone=BERLIN)
    assert change is not None and change.after is not None
    assert (change.op, change.key, change.position) == ("r", {"id": 1002}, 21691184)
    after = change.after
    assert after["created_at"] == datetime.max and after["updated_at"] == datetime.min
    assert after["balance"] == Decimal("-0.01") and after["birth_date"] == date(1900, 1, 1)
    assert after["tags"] == [] and after["daily_limit_reset"] == time(0, 0) and after["prefs"] is None


def test_sample_unwrap_rewrite_delete() -> None:
    topic, k, v = sample("players_delete_unwrap")
    change = decode(topic, k, v)
    assert change is not None and change.before is not None
    assert (change.table, change.op, change.after, change.key) == ("public.players", "d", None, {"id": 1002})
    assert (change.position, change.source_ts_ms) == (21785448, 1795653656055)
    assert change.before["id"] == 1002 and change.before["balance"] == Decimal("0.00")
    assert not any(name.startswith("__") for name in change.before)


def test_samples_decode_the_same_from_cache_and_cold() -> None:
    for name in ["players_update", "players_snapshot_infinity", "players_delete_unwrap"]:
        topic, k, v = sample(name)
        warm = [decode(topic, k, v, zone=BERLIN) for _ in range(3)]
        cold = decode(topic + ".other", k, json.dumps(json.loads(v)).encode(), zone=BERLIN)  # other layout
        assert warm[0] == warm[1] == warm[2]
        assert cold is not None and warm[0] is not None and cold.after == warm[0].after


# --------------------------------------------------------------------------- properties

decimals = st.integers(min_value=0, max_value=18).flatmap(
    lambda scale: st.tuples(st.just(scale), st.integers(min_value=-(10**38) + 1, max_value=10**38 - 1)))


@settings(max_examples=300, deadline=None)
@given(decimals)
def test_decimal_round_trip(scale_and_unscaled: tuple[int, int]) -> None:
    scale, unscaled = scale_and_unscaled
    expected = Decimal(f"{unscaled}E-{scale}")
    wire = b64_unscaled(unscaled)
    via_schema = column(logical("org.apache.kafka.connect.data.Decimal", "bytes", scale=str(scale)), wire)
    via_mapping = parse_column_type(f"decimal(38,{scale})").decode(wire)
    via_variable = parse_column_type("decimal").decode({"scale": scale, "value": wire})
    for got in (via_schema, via_mapping, via_variable):
        assert got == expected and got.as_tuple().exponent == -scale


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1)))
def test_wall_clock_timestamp_round_trip(wall: datetime) -> None:
    exists = wall.replace(tzinfo=BERLIN).astimezone(UTC).astimezone(BERLIN).replace(tzinfo=None) == wall
    assume(exists)  # wall times in a DST gap do not exist; their rule is tested above
    wire = micros(wall)
    assert column(logical("io.debezium.time.MicroTimestamp"), wire) == wall
    utc = column(logical("io.debezium.time.MicroTimestamp"), wire, BERLIN)
    assert utc.replace(tzinfo=UTC).astimezone(BERLIN).replace(tzinfo=None) == wall
    assert parse_column_type("timestamp(ms)").decode(wire // 1000, BERLIN) == utc - timedelta(
        microseconds=wall.microsecond % 1000)


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1)),
       st.integers(min_value=-14 * 60, max_value=14 * 60))
def test_zoned_timestamp_round_trip(instant: datetime, offset_minutes: int) -> None:
    aware = instant.replace(tzinfo=UTC).astimezone(timezone(timedelta(minutes=offset_minutes)))
    assert column(logical("io.debezium.time.ZonedTimestamp", "string"), aware.isoformat()) == instant
    z_form = instant.isoformat() + "Z"
    assert column(logical("io.debezium.time.ZonedTimestamp", "string"), z_form) == instant
