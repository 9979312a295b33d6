"""cdc.columnar against cdc.decode: the same events give the same values, or the fast
path declines and the per-event path decides. Pure, no services.

Random round trips: generated rows with awkward values (DST gaps and folds, dates and
timestamps beyond Python's range, unicode and quotes, negative and huge decimals,
empty arrays) go through both paths, with and without an embedded schema.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from cdc import CdcError, ColumnType, decode, parse_column_type
from cdc.columnar import Columns, decode_columns
from cdc.decode import check_keys
from tests.test_decode import FIELDS, TOPIC, b64_unscaled, envelope, key, logical, micros, struct, wrap

MALTA = ZoneInfo("Europe/Malta")
TABLE = "public.players"
# The users-like columns the fast path takes; `bonus` (a VariableScaleDecimal struct) it declines.
COLS = {name: f for name, f in FIELDS.items() if name != "bonus"} | {
    "lifetime": {"type": "bytes", "optional": True, "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
                 "parameters": {"scale": "2"}},
}
TYPES: dict[str, ColumnType] = {name: parse_column_type(text) for name, text in {
    "balance": "decimal(12,2)", "lifetime": "decimal(14,2)", "birth_date": "date", "created_at": "timestamp",
    "updated_at": "timestamp(ms)", "last_login_at": "timestamptz", "reset_at": "time", "tags": "array<string>",
    "avatar": "bytes", "rating": "float",
}.items()}
WANTED = frozenset(COLS) - {"email"} | {"not_in_any_event"}
TEXT = ["", "a", "Zoë", "quote \" and \\ back", "comma, semi; tab\t", "line\nbreak", "日本語", "😀", "2024-01-01",
        "2024-01-01T10:00:00Z", "NULL"]


def wire_row(rng: random.Random, id_: int) -> dict[str, Any]:
    """One row as Debezium writes it, values drawn to hit edges."""
    wall = rng.choice([
        datetime(2024, 3, 31, 2, 30), datetime(2024, 10, 27, 2, 30),  # Malta's DST gap and fold
        datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59, 999999),
        datetime(2000, 1, 1) + timedelta(seconds=rng.randrange(10**9), microseconds=rng.randrange(10**6)),
    ])
    return {
        "id": id_,
        "username": rng.choice(TEXT),
        "balance": b64_unscaled(rng.choice([0, -1, 1, -123456, 10**20, -(10**20)])),
        "lifetime": rng.choice([None, b64_unscaled(rng.randrange(-10**12, 10**12))]),
        "birth_date": rng.choice([None, -165, 0, 2932896, 2932897, -719162, -719163, 10**7]),
        "created_at": rng.choice([micros(wall), 9224318016000000000 // 1000, -9223372036854775]),
        "updated_at": rng.choice([None, micros(wall) // 1000]),
        "last_login_at": rng.choice([None, "2024-01-15T09:00:00.654321Z", "2024-03-31T01:30:00Z", "infinity"]),
        "reset_at": rng.choice([None, 0, 86399999999, 86400000000]),
        "tags": rng.choice([None, [], ["slots", "live"], ["ü"]]),
        "prefs": rng.choice([None, '{"lang": "de"}']),
        "external_id": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "status": rng.choice(["active", "blocked"]),
        "avatar": rng.choice([None, "3q2+7w==", ""]),
        "rating": rng.choice([None, 4.75, 0.0, -1e300, 3]),
        "is_vip": rng.choice([True, False]),
        "email": None,
    }


def batch(rng: random.Random, n: int, *, schema: bool) -> list[bytes]:
    values = []
    for i in range(n):
        op = rng.choice("cccuurd")
        row = wire_row(rng, i)
        before, after = (row, None) if op == "d" else (None, row)
        values.append(envelope(op, before, after, schema=schema, fields=COLS, lsn=1000 + i))
    return values


def per_event(values: list[bytes], *, schema: bool, zone: Any) -> list[tuple[str, int, dict[str, Any]]]:
    out = []
    for v in values:
        change = decode(TOPIC, None, v, types=None if schema else TYPES, zone=zone)
        assert change is not None
        image = (change.before if change.op == "d" else change.after) or {}
        out.append((change.op, change.position if change.position is not None else -1, image))
    return out


def fast(values: list[bytes], *, schema: bool, zone: Any = UTC, **kw: Any) -> Columns | None:
    return decode_columns(TOPIC, TABLE, values, list(range(len(values))), wanted=WANTED,
                          types=None if schema else TYPES, zone=zone, **kw)


@pytest.mark.parametrize("zone", [UTC, MALTA], ids=["utc", "malta"])
@pytest.mark.parametrize("schema", [True, False], ids=["schema", "schemaless"])
@pytest.mark.parametrize("seed", range(4))
def test_random_rows_give_the_values_of_the_per_event_path(seed: int, schema: bool, zone: Any) -> None:
    rng = random.Random(seed)
    values = batch(rng, 200, schema=schema)
    cols = fast(values, schema=schema, zone=zone)
    assert cols is not None, "the fast path must take plain envelopes"
    expected = per_event(values, schema=schema, zone=zone)
    assert cols.ops.to_pylist() == [op for op, _, _ in expected]
    assert cols.positions.to_pylist() == [pos for _, pos, _ in expected]
    for name in sorted(WANTED):
        want = [image.get(name) for _, _, image in expected]
        got = cols.values[name].to_pylist() if name in cols.values else [None] * len(values)
        assert got == want, name
    assert cols.seen == WANTED - {"not_in_any_event"}


def test_a_batch_of_deletes_only_reads_the_before_images() -> None:
    rng = random.Random(7)
    values = [envelope("d", wire_row(rng, i), None, fields=COLS, lsn=i) for i in range(100)]
    cols = fast(values, schema=True)
    assert cols is not None and set(cols.ops.to_pylist()) == {"d"}
    assert cols.values["id"].to_pylist() == list(range(100))
    assert cols.seen == WANTED  # as the per-event path: no upsert, so no column is reported missing


def test_missing_lsn_falls_back_to_the_kafka_offset() -> None:
    rng = random.Random(3)
    values = [orjson.dumps({**orjson.loads(v), "source": {"schema": "public", "table": "players"}})
              for v in batch(rng, 80, schema=False)]
    cols = fast(values, schema=False)
    assert cols is not None and cols.positions.to_pylist() == list(range(80))


def mutate(values: list[bytes], at: int, new: bytes) -> list[bytes]:
    return [*values[:at], new, *values[at + 1:]]


@pytest.mark.parametrize("schema", [True, False], ids=["schema", "schemaless"])
@pytest.mark.parametrize("case", [
    "not json", "truncate op", "other table", "after missing", "value not a row", "type clash", "int too big",
    "bad date", "other schema",
])
def test_anything_unusual_is_left_to_the_per_event_path(case: str, schema: bool) -> None:
    rng = random.Random(11)
    values = batch(rng, 100, schema=schema)
    row = wire_row(rng, 5)
    make = {
        "not json": lambda: b"{not json",
        "truncate op": lambda: envelope("t", None, None, schema=schema, fields=COLS),
        "other table": lambda: envelope("c", None, row, schema=schema, fields=COLS, table="accounts"),
        "after missing": lambda: envelope("u", None, None, schema=schema, fields=COLS),
        "value not a row": lambda: envelope("c", None, None, schema=schema, fields=COLS).replace(
            b'"after":null', b'"after":"x"'),
        "type clash": lambda: envelope("c", None, {**row, "id": "seven"}, schema=schema, fields=COLS),
        "int too big": lambda: envelope("c", None, {**row, "id": 5}, schema=schema, fields=COLS).replace(
            b'"id":5,', b'"id":1180591620717411303424,'),
        "bad date": lambda: envelope("c", None, {**row, "birth_date": "yesterday"}, schema=schema, fields=COLS),
        # with a schema: another one; without: one event that carries a schema
        "other schema": lambda: envelope("c", None, {"id": 1}, fields={"id": {"type": "int64", "optional": False}}),
    }
    bad = make[case]()
    assert bad != values[50]
    assert fast(mutate(values, 50, bad), schema=schema) is None


def test_a_struct_column_is_left_to_the_per_event_path() -> None:
    fields = COLS | {"bonus": FIELDS["bonus"]}
    values = [envelope("c", None, {**wire_row(random.Random(i), i), "bonus": {"scale": 1, "value": "AQ=="}},
                       fields=fields) for i in range(100)]
    assert fast(values, schema=True) is None


def test_small_batches_are_left_to_the_per_event_path() -> None:
    values = batch(random.Random(1), 10, schema=True)
    assert fast(values, schema=True) is None
    assert fast(values, schema=True, min_events=1) is not None


def test_a_timestamp_typed_column_stays_as_python_would_read_it() -> None:
    """Arrow's JSON reader takes ISO-looking strings for timestamps; they must stay text."""
    values = [envelope("c", None, {"id": i, "username": "2024-01-01T10:00:00"}, schema=False,
                       fields={"id": COLS["id"], "username": COLS["username"]}) for i in range(70)]
    cols = decode_columns(TOPIC, TABLE, values, list(range(70)), wanted=frozenset({"id", "username"}))
    assert cols is not None and cols.values["username"].to_pylist() == ["2024-01-01T10:00:00"] * 70


def _date_key(wire: Any) -> bytes:
    return wrap(struct("spacevegas.public.players.Key", {"day": logical("io.debezium.time.Date", "int32")}),
                {"day": wire})


KEYS: dict[str, bytes | str | None] = {
    "schema": key(7), "plain": key(7, schema=False), "none": None, "null": b"null", "bare": b"42",
    "text": '{"id": 7}', "not json": b"{id: 7}", "truncated": key(7)[:-2], "schema, bad payload": key(7)[:-4] + b"x}}",
    "wrapped plain": b'{"schema":null,"payload":{"id":7}}', "typed plain": b'{"birth_date":18000}',
    "typed plain, bad": b'{"birth_date":"soon"}', "typed schema": _date_key(18000), "typed schema, bad": _date_key("x"),
    "empty": b"",
}


@pytest.mark.parametrize("name", KEYS)
def test_check_keys_accepts_exactly_what_decode_accepts(name: str) -> None:
    k = KEYS[name]
    value = envelope("c", None, {"id": 7}, schema=False)
    try:
        decode(TOPIC, k, value, types=TYPES)  # type: ignore[arg-type]
        decoded = True
    except CdcError:
        decoded = False
    for _ in range(2):  # the second time with the key's schema remembered
        try:
            check_keys(TOPIC, [key(1), k, key(2, schema=False)], types=TYPES)  # type: ignore[list-item]
            checked = True
        except CdcError:
            checked = False
        assert checked == decoded


def test_sparse_before_images_after_the_first_megabyte_do_not_send_the_batch_the_slow_way() -> None:
    # As the captured users stream: a megabyte of inserts (no before image at all),
    # then deletes whose before image holds the key and NOT NULL columns only, nulls
    # elsewhere. Inferred block by block, those did not merge and the batch declined.
    pad = "x" * 600
    values = [envelope("c", None, {"id": i, "username": pad, "is_vip": True}, schema=False, fields=COLS)
              for i in range(3000)]
    values += [envelope("d", {"id": i, "username": None, "status": None, "is_vip": False, "rating": None}, None,
                        schema=False, fields=COLS) for i in range(3000, 3500)]
    assert sum(map(len, values[:3000])) > 2**20
    cols = decode_columns(TOPIC, TABLE, values, list(range(len(values))),
                          wanted=frozenset({"id", "username", "is_vip"}), types=TYPES)
    assert cols is not None
    assert cols.values["username"].to_pylist() == [pad] * 3000 + [None] * 500
    assert cols.values["is_vip"].to_pylist() == [True] * 3000 + [False] * 500
