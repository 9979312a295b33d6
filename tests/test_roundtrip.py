"""Property-style round trip: random legacy rows -> Postgres -> Debezium -> API CSV -> parsed back.

A seeded generator writes users and payments full of what breaks pipelines: NULLs next
to empty strings, unicode (accents, CJK, emoji, zero-width space), quotes, commas, CR/LF,
tabs and backslashes in text, dates at 0001-01-01 and 9999-12-31, timestamps across DST
changes and in Malta's pre-1900 local mean time, decimals at the limits of their columns,
enum spellings in any case and some that are not valid at all. The expectation is
computed here from the rows as Postgres stores them (read back, so inet and numeric are
in their canonical text), with the spec's oracles (schemas.vocab, Field.canonical,
zoneinfo): never by calling the materializer. The API's CSV, read by a strict RFC 4180
reader that keeps NULL apart from "", must equal it exactly; events whose required
values are invalid must be absent.

Set FEEDSTORE_ROUNDTRIP_SEED to replay a failure; the seed is in every assertion message.
"""

from __future__ import annotations

import os
import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from materializer.mapping import load_mapping
from materializer.stamp import utc_now
from schemas import Field, vocab
from tests.fix_stack import Served
from tests.fix_store import MAPPING
from tests.test_feeds_forms import csv_records, typed

pytestmark = pytest.mark.stack

SEED = int(os.environ.get("FEEDSTORE_ROUNDTRIP_SEED", random.SystemRandom().randrange(10**6)))
ROWS = 40
MALTA = ZoneInfo("Europe/Malta")
FEEDS = {name: load_mapping(MAPPING).feeds[name].feed for name in ("players", "contacts", "transactions")}
ALPHABET = [*"aZé ß中😀\u200b,;\"'\n\r\t\\/|#-_.", "\r\n", "  ", "O'Brien", '"quoted"', "a,b", "NULL", "\\N"]


def text(r: random.Random, nullable: bool = True, max_parts: int = 8) -> str | None:
    if nullable and r.random() < 0.15:
        return None
    return "".join(r.choice(ALPHABET) for _ in range(r.randrange(0, max_parts)))


def wall(r: random.Random) -> datetime:
    """A Malta wall-clock time: mostly ordinary, some at DST changes, before 1900, at 9999."""
    pick = r.random()
    if pick < 0.15:
        return datetime(r.choice([2024, 2023]), r.choice([3, 10]), r.choice([31, 29, 27]), r.choice([1, 2, 3]), 30)
    if pick < 0.25:
        return datetime(r.randrange(1850, 1900), r.randrange(1, 13), r.randrange(1, 29), r.randrange(24),
                        r.randrange(60))
    if pick < 0.3:
        return datetime(9999, 12, 30, 23, 59, 59, 999999)
    return datetime(1970, 1, 1) + timedelta(seconds=r.randrange(0, 2_000_000_000), microseconds=r.randrange(10**6))


def malta_to_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=MALTA).astimezone(UTC).replace(tzinfo=None)


def money(r: random.Random, digits: int, scale: int) -> Decimal:
    limit = 10 ** (digits - scale) - Decimal(1).scaleb(-scale)
    pick = r.random()
    if pick < 0.1:
        return r.choice([limit, -limit])
    if pick < 0.2:
        return r.choice([Decimal(0), Decimal(1).scaleb(-scale), -Decimal(1).scaleb(-scale)])
    return Decimal(r.randrange(-(10 ** digits) + 1, 10 ** digits)).scaleb(-scale)


def user_row(r: random.Random) -> dict[str, Any]:
    return {
        "fname": text(r), "lname": text(r), "sex": r.choice(["M", "F", "X", " ", None]),
        "country_name": text(r), "city": text(r),
        "last_ip": r.choice([None, f"{r.randrange(1, 224)}.{r.randrange(256)}.0.{r.randrange(256)}",
                             f"2001:db8::{r.randrange(65536):x}", "::1"]),
        "lang": r.choice([None, "", "en", "EN-us", "pt_BR.UTF-8", "zh-Hant-TW", "iw_IL", "xx", "es_419", " de "]),
        "tz": r.choice([None, "Europe/Malta", "europe/LONDON", "Mars/Olympus", "UTC", ""]),
        "dob": r.choice([None, date(1, 1, 1), date(9999, 12, 31), date(1970, 1, 1),
                         date(1900, 1, 1) + timedelta(days=r.randrange(50000))]),
        "created": wall(r), "affiliate_code": text(r), "reg_source": text(r), "reg_ua": text(r, max_parts=30),
        "state": r.choice([0, 1, 2, 3]), "no_marketing": r.random() < 0.5,
        "email": text(r), "email_ok_at": r.choice([None, wall(r)]), "phone": text(r),
        "phone_ok_at": r.choice([None, wall(r)]), "sms_optin": r.random() < 0.5, "push_token": text(r),
        "vip_level": r.choice([None, 0, 32767, -32768, r.randrange(10)]),
        "lifetime_value": r.choice([None, money(r, 14, 2)]),
        "kyc_status": r.choice([None, "pending", "Verified", ""]),
        "last_deposit_at": r.choice([None, wall(r)]),
        "segments": r.choice([None, [], [text(r, nullable=False) for _ in range(r.randrange(1, 4))]]),
    }


def payment_row(r: random.Random, user_id: int) -> dict[str, Any]:
    return {
        "user_id": user_id, "amount": money(r, 20, 8),
        "ccy": r.choice(["EUR", "eur", " btc ", "USDT", "Matic", "ZZZ", "HRK"]),
        "kind": r.choice(["D", "W", "D", "W", "X"]),
        "pay_type": r.choice(["real", "REAL MONEY", "bonus", "Cashback", "test", "fake", "weird"]),
        "state": r.choice(["pending", "processing", "ok", "failed", "NEW", "lost"]),
        "provider": text(r), "affiliate": text(r), "created": wall(r), "account_no": text(r),
        "masked_pan": text(r), "note": text(r, max_parts=30), "psp_ref": text(r),
    }


def canon(field: Field, value: str | None) -> str | None:
    """The spec's canonical spelling (Field.canonical), blank as absent."""
    return None if value is None or not value.strip() else field.canonical(value)


def expect_player(u: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(u["user_id"]), "first_name": u["fname"], "last_name": u["lname"],
        "gender": {"M": "male", "F": "female"}.get(u["sex"], u["sex"]), "country": u["country_name"],
        "city": u["city"], "ip": u["last_ip"],
        "locale": None if u["lang"] is None else vocab.normalize_locale(u["lang"]),
        "timezone": None if u["tz"] is None else vocab.normalize_timezone(u["tz"]),
        "birthday": u["dob"], "registered_at": malta_to_utc(u["created"]), "ref_code": u["affiliate_code"],
        "traffic_source": u["reg_source"], "user_agent": u["reg_ua"], "is_blocked": u["state"] == 1,
        "status": {0: "Normal", 1: "Blocked", 2: "Closed"}.get(u["state"], str(u["state"])),
        "self_excluded": u["no_marketing"], "vip_level": u["vip_level"], "lifetime_value": u["lifetime_value"],
        "kyc_status": None if u["kyc_status"] is None else u["kyc_status"].upper(),
        "last_deposit_at": malta_to_utc(u["last_deposit_at"]), "segments": u["segments"],
    }


def expect_contact(u: dict[str, Any]) -> dict[str, Any]:
    return {
        "player_id": str(u["user_id"]), "email": u["email"], "email_confirmed_at": malta_to_utc(u["email_ok_at"]),
        "email_subscribe": not u["no_marketing"], "phone": u["phone"],
        "phone_subscribe": u["sms_optin"] and not u["no_marketing"],
        "phone_confirmed_at": malta_to_utc(u["phone_ok_at"]), "push_token": u["push_token"],
        "created_at": malta_to_utc(u["created"]),
    }


def expect_transaction(p: dict[str, Any]) -> dict[str, Any] | None:
    """The feed row, or None when a required value is invalid (the event is quarantined)."""
    f = FEEDS["transactions"].field
    currency = vocab.normalize_currency(p["ccy"])
    direction = {"D": "IN", "W": "OUT"}.get(p["kind"], p["kind"])
    if currency is None or canon(f("dir"), direction) is None:
        return None
    status = {"pending": "New", "processing": "Process", "ok": "Success", "failed": "Fail"}.get(p["state"], p["state"])
    return {
        "id": p["pay_id"], "player_id": str(p["user_id"]), "amount": p["amount"], "currency": currency,
        "type": canon(f("type"), p["pay_type"]), "status": canon(f("status"), status),
        "payment_system": p["provider"], "dir": canon(f("dir"), direction), "ref_code": p["affiliate"],
        "created_at": malta_to_utc(p["created"]), "wallet_id": p["account_no"], "requisite": p["masked_pan"],
        "comment": p["note"],
    }


def insert(cur: psycopg.Cursor[Any], table: str, row: dict[str, Any], key: str) -> dict[str, Any]:
    """Insert and read the row back as Postgres stores it (inet/numeric/char canonical)."""
    cols = ", ".join(row)
    marks = ", ".join(["%s"] * len(row))
    back = ", ".join(f"host({c})" if c == "last_ip" else c for c in row)  # inet as it prints, no /32
    got = cur.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks}) RETURNING {key}, {back}",
                      list(row.values())).fetchone()
    assert got is not None
    return dict(zip([key, *row], got, strict=True))


def compare(name: str, want: dict[str, Any], got: dict[str, Any] | None) -> str | None:
    if got is None:
        return f"{name} {want}: missing"
    feed = FEEDS[name]
    diffs = {f.name: (typed(f, want[f.name]), got[f.name]) for f in feed.fields
             if f.name != feed.stamp and typed(f, want[f.name]) != got[f.name]}
    return f"{name} {want[feed.key[0]]}: {diffs}" if diffs else None


def test_random_legacy_rows_come_back_as_the_mapping_says(pg: psycopg.Connection[Any], served: Served) -> None:
    r = random.Random(SEED)
    start = utc_now().replace(microsecond=0) - timedelta(seconds=1)
    with pg.cursor() as cur:
        users = [insert(cur, "users", user_row(r), "user_id") for _ in range(ROWS)]
        payments = [insert(cur, "payments", payment_row(r, u["user_id"]), "pay_id") for u in users]
    for p in payments:
        p["pay_id"] = str(p["pay_id"])
    want = {
        "players": {str(u["user_id"]): expect_player(u) for u in users},
        "contacts": {str(u["user_id"]): expect_contact(u) for u in users},
        "transactions": {p["pay_id"]: t for p in payments if (t := expect_transaction(p)) is not None},
    }
    assert 0 < len(want["transactions"]) < ROWS, f"seed {SEED}: the sample should hold valid and invalid payments"

    def pulled() -> dict[str, dict[str, dict[str, Any]]]:
        out = {}
        for name, feed in FEEDS.items():
            status, _, body = served.get(f"/api/{name}", **{"from": f"{start:%Y-%m-%d %H:%M:%S}",
                                                            "to": f"{start + timedelta(hours=2):%Y-%m-%d %H:%M:%S}"})
            assert status == 200, body[:300]
            out[name] = {row[feed.key[0]]: row for row in csv_records(feed, body)}
        return out

    served.wait_for(lambda: all(set(want[n]) <= set(rows) for n, rows in pulled().items()), timeout=60)
    got = pulled()
    problems = [msg for name in FEEDS for key, row in want[name].items()
                if (msg := compare(name, row, got[name].get(key))) is not None]
    assert not problems, f"seed {SEED}:\n" + "\n".join(problems[:10])
    invalid = {p["pay_id"] for p in payments} - set(want["transactions"])
    assert not invalid & set(got["transactions"]), f"seed {SEED}: quarantined payments were served"
