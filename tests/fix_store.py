"""A real DuckDB store on a temp file, with a hand-driven clock, and events to feed it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from cdc.records import Record
from materializer.apply import Materializer
from materializer.mapping import Mapping, load_mapping
from materializer.store import Store

PROJECT = Path(__file__).resolve().parents[1]
MAPPING = PROJECT / "deploy" / "mappings" / "spacevegas.yaml"
EPOCH = datetime(1970, 1, 1)


class ManualClock:
    """A clock the test moves; lets a test place stamps exactly (e.g. on a window bound)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> datetime:
        self.now += timedelta(**kw)
        return self.now


def micros(ts: datetime) -> int:
    return (ts - EPOCH) // timedelta(microseconds=1)


class Events:
    """Schema-less Debezium envelopes as the Postgres connector writes them.

    ``public.users`` by default; ``record(..., table="payments", key=("pay_id",))`` for the
    other legacy tables. LSNs grow across all tables, as they do in one database.
    """

    def __init__(self, topic: str = "spacevegas.public.users") -> None:
        self.topic = topic
        self.offset = 0
        self.lsn = 1000

    def user(self, user_id: int, **cols: Any) -> dict[str, Any]:
        row = {"user_id": user_id, "fname": "Ann", "lname": "Borg", "sex": "F", "country_name": "Malta",
               "city": "Valletta", "last_ip": "10.0.0.1", "lang": "en-US", "tz": "Europe/Malta",
               "dob": 7000, "created": micros(datetime(2024, 1, 2, 3, 4, 5)), "affiliate_code": None,
               "reg_source": "Google", "reg_ua": "Mozilla/5.0", "state": 0, "no_marketing": False,
               "email": None, "email_ok_at": None, "phone": None, "phone_ok_at": None, "sms_optin": True,
               "push_token": None, "vip_level": None, "lifetime_value": None, "kyc_status": None,
               "last_deposit_at": None, "segments": None, "login_count": 0, "last_seen": None}
        row.update(cols)
        return row

    def record(self, op: str, before: dict[str, Any] | None, after: dict[str, Any] | None,
               lsn: int | None = None, *, table: str = "users", key: tuple[str, ...] = ("user_id",)) -> Record:
        self.lsn = lsn if lsn is not None else self.lsn + 8
        key_src = after or before
        assert key_src is not None
        value = {"before": before, "after": after, "op": op, "ts_ms": 1_700_000_000_000,
                 "source": {"connector": "postgresql", "name": "spacevegas", "db": "operator",
                            "schema": "public", "table": table, "lsn": self.lsn, "ts_ms": 1_700_000_000_000}}
        topic = self.topic if table == "users" else self.topic.rsplit(".", 1)[0] + "." + table
        rec = Record(topic, 0, self.offset, orjson.dumps({k: key_src.get(k) for k in key}), orjson.dumps(value))
        self.offset += 1
        return rec


@pytest.fixture
def mapping() -> Mapping:
    return load_mapping(MAPPING)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2025, 3, 1, 12, 0, 0))


@pytest.fixture
def store(tmp_path: Path, mapping: Mapping, clock: ManualClock) -> Iterator[Store]:
    s = Store(tmp_path / "feedstore.duckdb", mapping, clock=clock)
    yield s
    s.close()


@pytest.fixture(params=["per-event", "columnar"])
def materializer(store: Store, request: pytest.FixtureRequest) -> Materializer:
    """Both decoding paths, so that every test using this fixture holds for each: one
    event at a time, and column by column (cdc/columnar.py) from the first event."""
    return Materializer(store, columnar_from=None if request.param == "per-event" else 1)


@pytest.fixture
def events() -> Events:
    return Events()
