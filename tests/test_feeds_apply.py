"""Every feed of the reference mapping, materialized from synthetic Debezium events.

No services: a real DuckDB store, the real mapping file and schema-less envelopes as
the Postgres connector writes them (types from the mapping's `tables.columns`). The
stack tests (test_e2e_feeds, test_shapes, test_roundtrip) cover real Debezium.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from cdc.records import Record
from materializer.apply import Materializer
from materializer.export import json_chunks
from materializer.mapping import load_mapping
from materializer.store import Store
from tests.fix_store import MAPPING, Events, ManualClock, micros

CASINO = "casino_activity"  # aggregated from game actions: tests/test_casino.py
T = datetime(2024, 7, 1, 10, 0, 0)  # Malta summer time: UTC+2
T_UTC = datetime(2024, 7, 1, 8, 0, 0)


def payment(pay_id: str, **cols: Any) -> dict[str, Any]:
    row = {"pay_id": pay_id, "user_id": 7, "amount": "12.50000000", "ccy": "eur", "kind": "D", "pay_type": "REAL",
           "state": "ok", "provider": "VISA", "affiliate": None, "created": micros(T), "account_no": "W-7-EUR",
           "masked_pan": "4916-****", "note": 'a, "b"\nc', "psp_ref": "x"}
    return row | cols


def rows(store: Store, feed: str, order: str = "1") -> list[dict[str, Any]]:
    with store.cursor() as cur:
        rel = cur.sql(f"SELECT * FROM feed_{feed} ORDER BY {order}")
        return [dict(zip(rel.columns, r, strict=True)) for r in rel.fetchall()]


def quarantine(store: Store) -> list[tuple[Any, ...]]:
    with store.cursor() as cur:
        return cur.execute("SELECT kafka_offset, feed, reason FROM fs_quarantine ORDER BY id").fetchall()


def field_errors(store: Store) -> dict[tuple[str, str], tuple[int, str | None]]:
    with store.cursor() as cur:
        found = cur.execute("SELECT feed, field, count, example FROM fs_field_errors").fetchall()
    return {(f, n): (c, e) for f, n, c, e in found}


def one_of_each(ev: Events) -> list[Any]:
    """One insert into every legacy table the reference mapping reads."""
    bet = str(uuid.uuid4())
    return [
        ev.record("c", None, ev.user(7, vip_level=3, lifetime_value="1234.567", kyc_status="verified",
                                     last_deposit_at=micros(T), segments=["slots", "live, vip"], email="a@b.c",
                                     sms_optin=True, email_ok_at=micros(T))),
        ev.record("c", None, payment("p1"), table="payments", key=("pay_id",)),
        ev.record("c", None, {"account_no": "W-7-BTC", "user_id": 7, "acc_type": "bonus", "balance": "0.00050000",
                              "ccy": "btc", "opened": micros(T)}, table="accounts", key=("account_no",)),
        ev.record("c", None, {"login_id": 1, "user_id": 7, "ip_addr": "2001:db8::1", "at": "2024-07-01T08:00:00Z",
                              "aff": None, "utm_source": "Email", "agent": "UA", "site": "sv.com", "ok": True},
                  table="login_history", key=("login_id",)),
        ev.record("c", None, {"token_id": 5, "user_id": 7, "token": "tok-1", "issued": micros(T), "expires": None},
                  table="remember_tokens", key=("token_id",)),
        ev.record("c", None, {"bonus_code": "WELCOME", "title": "Welcome Bonus", "added": micros(T),
                              "wagering": "35.00",
                              "enabled": True}, table="bonus_catalogue", key=("bonus_code",)),
        ev.record("c", None, {"grant_id": 9, "user_id": 7, "bonus_code": "WELCOME", "granted": micros(T),
                              "valid_until": None, "status": "A"}, table="bonus_grants", key=("grant_id",)),
        ev.record("c", None, {"tournament_key": "fb-cup", "title": "Cup", "sport_code": "fb", "sport": "Football",
                              "region": "International", "starts_on": micros(T), "ends_on": None},
                  table="sb_tournaments", key=("tournament_key",)),
        ev.record("c", None, {"event_key": "ev-1", "tournament_key": "fb-cup", "home": "A", "away": "B",
                              "event_name": None, "state": "LIVE", "kickoff": micros(T), "outright": False},
                  table="sb_events", key=("event_key",)),
        ev.record("c", None, {"bet_id": bet, "user_id": 7, "state": "WON", "bet_kind": "S", "stake": "5.00000000",
                              "payout": "12.50000000", "ccy": "EUR", "affiliate": None,
                              "placed_at": "2024-07-01T08:00:00.000000Z"}, table="sb_bets", key=("bet_id",)),
        ev.record("c", None, {"sel_id": 11, "bet_id": bet, "event_key": "ev-1", "price": "2.500", "outcome": None,
                              "market": "Match Result", "created": micros(T)}, table="sb_selections", key=("sel_id",)),
    ]


def test_every_mapped_feed_gets_its_row_normalized(store: Store, materializer: Materializer, events: Events,
                                                   clock: ManualClock) -> None:
    result = materializer.apply(one_of_each(events), {})
    assert result.quarantined == 0 and not result.invalid
    counts = {name: n for name, n in store.row_counts().items() if name != CASINO}
    assert set(result.changed) == set(counts) == set(store.mapping.feeds) - {CASINO}
    assert all(n == 1 for n in counts.values())

    player = rows(store, "players")[0]
    assert (player["id"], player["locale"], player["registered_at"]) == ("7", "en_US", datetime(2024, 1, 2, 2, 4, 5))
    assert player["modified_at"] == clock.now
    assert (player["vip_level"], player["lifetime_value"], player["kyc_status"]) == (3, Decimal("1234.57"), "VERIFIED")
    assert (player["last_deposit_at"], player["segments"]) == (T_UTC, ["slots", "live, vip"])
    contact = rows(store, "contacts")[0]
    assert (contact["player_id"], contact["email_subscribe"], contact["email_confirmed_at"]) == ("7", True, T_UTC)
    tx = rows(store, "transactions")[0]
    assert (tx["amount"], tx["currency"], tx["type"], tx["status"], tx["dir"]) == (
        Decimal("12.5"), "EUR", "Normal", "Success", "IN")
    assert (tx["created_at"], tx["updated_at"], tx["comment"]) == (T_UTC, clock.now, 'a, "b"\nc')
    wallet = rows(store, "wallets")[0]
    assert (wallet["type"], wallet["balance"], wallet["currency"]) == ("Prize", Decimal("0.0005"), "BTC")
    login = rows(store, "logins")[0]
    assert (login["ip"], login["created_at"], login["is_success"]) == ("2001:db8::1", T_UTC, True)
    assert rows(store, "auto_logins")[0]["login_token"] == "tok-1"
    assert rows(store, "bonuses")[0]["name"] == "Welcome Bonus"
    grant = rows(store, "bonus_assignments")[0]
    assert (grant["bonus_id"], grant["end_date"], grant["active"], grant["used"]) == ("WELCOME", None, 1, 0)
    assert rows(store, "sport_tournaments")[0]["end_date"] is None
    event = rows(store, "sport_events")[0]
    assert (event["title"], event["status"], event["type"]) == ("A - B", "live", "match")
    bet = rows(store, "sport_bets")[0]
    assert (bet["status"], bet["type"], bet["win_amount"], bet["created_at"]) == ("win", "single", Decimal("12.5"),
                                                                                 T_UTC)
    odd = rows(store, "sport_odds")[0]
    assert (odd["ratio"], odd["status"], odd["market"]) == (2.5, "not_resulted", "Match Result")


def test_required_field_invalid_or_missing_quarantines_with_the_reason(
        store: Store, materializer: Materializer, events: Events) -> None:
    batch = [
        events.record("c", None, payment("ok"), table="payments", key=("pay_id",)),
        events.record("c", None, payment("bad-ccy", ccy="ZZZ"), table="payments", key=("pay_id",)),
        events.record("c", None, payment("bad-dir", kind="Q"), table="payments", key=("pay_id",)),
        events.record("c", None, {"bonus_code": "B", "title": "  ", "added": micros(T)},
                      table="bonus_catalogue", key=("bonus_code",)),
    ]
    result = materializer.apply(batch, {})
    assert result.changed["transactions"] == 1 and result.quarantined == 3
    assert [r["id"] for r in rows(store, "transactions")] == ["ok"]
    (o1, f1, r1), (o2, _, r2), (o3, f3, r3) = quarantine(store)
    assert (o1, f1) == (1, "transactions") and "currency: invalid value 'ZZZ'" in r1 and "ISO 4217" in r1
    assert o2 == 2 and "dir: invalid value 'Q' (not one of IN, OUT)" in r2
    assert (o3, f3) == (3, "bonuses") and "name: missing" in r3


def test_optional_field_invalid_is_emptied_and_counted(store: Store, materializer: Materializer,
                                                       events: Events, clock: ManualClock) -> None:
    bad = events.user(1, lang="klingon", tz="Mars/Olympus", last_ip="10.0.0.300")
    result = materializer.apply([events.record("c", None, bad)], {})
    assert result.quarantined == 0 and result.invalid["players"] == 3
    player = rows(store, "players")[0]
    assert (player["locale"], player["timezone"], player["ip"], player["city"]) == (None, None, None, "Valletta")
    errors = field_errors(store)
    assert errors[("players", "locale")] == (1, "klingon")
    assert errors[("players", "timezone")] == (1, "Mars/Olympus")
    assert errors[("players", "ip")][0] == 1

    clock.advance(minutes=1)
    again = events.user(1, lang="klingon", tz="Europe/Malta", city="Mdina")
    replayed = events.record("c", None, bad, lsn=events.lsn)  # the first event again: not counted twice
    result = materializer.apply([replayed, events.record("u", None, again)], {})
    assert result.invalid["players"] == 1
    assert field_errors(store)[("players", "locale")][0] == 2
    assert field_errors(store)[("players", "timezone")][0] == 1


def test_unmapped_enum_value_with_default_and_aliases(store: Store, materializer: Materializer,
                                                      events: Events) -> None:
    base = {"tournament_key": "t", "home": "A", "away": "B", "event_name": None, "kickoff": micros(T),
            "outright": False}
    batch = [events.record("c", None, base | {"event_key": "e1", "state": "WEIRD"}, table="sb_events",
                           key=("event_key",)),
             events.record("c", None, base | {"event_key": "e2", "state": "CANC", "outright": True,
                                              "event_name": "Winner"}, table="sb_events", key=("event_key",))]
    materializer.apply(batch, {})
    got = [(r["id"], r["status"], r["title"], r["type"]) for r in rows(store, "sport_events")]
    assert got == [("e1", "unknown", "A - B", "match"), ("e2", "cancelled", "Winner", "outright")]


def test_delete_policies(store: Store, materializer: Materializer, events: Events, clock: ManualClock) -> None:
    grant = {"grant_id": 9, "user_id": 7, "bonus_code": "W", "granted": micros(T), "valid_until": None,
             "status": "A"}
    gkey = {"table": "bonus_grants", "key": ("grant_id",)}
    materializer.apply([events.record("c", None, payment("p1"), table="payments", key=("pay_id",)),
                        events.record("c", None, grant, **gkey)], {})
    first = clock.now
    clock.advance(minutes=1)
    materializer.apply([events.record("d", {"pay_id": "p1"}, None, table="payments", key=("pay_id",)),
                        events.record("d", {"grant_id": 9}, None, **gkey)], {})
    assert rows(store, "transactions")[0]["updated_at"] == first  # on_delete: ignore
    assigned = rows(store, "bonus_assignments")[0]
    assert (assigned["active"], assigned["bonus_id"], assigned["modified_at"]) == (0, "W", clock.now)

    # An insert and a delete of one key in the same batch end deleted, as the policy says.
    clock.advance(minutes=1)
    materializer.apply([events.record("c", None, grant | {"grant_id": 10}, **gkey),
                        events.record("d", {"grant_id": 10}, None, **gkey)], {})
    assert [(r["id"], r["active"]) for r in rows(store, "bonus_assignments")] == [("10", 0), ("9", 0)]

    # A delete that cannot name its row (no key in the before image) is quarantined, not lost.
    result = materializer.apply([events.record("d", {"grant_id": None}, None, **gkey)], {})
    assert result.quarantined == 1 and "REPLICA IDENTITY FULL" in quarantine(store)[-1][2]


def test_wide_decimals_are_judged_per_value(store: Store, materializer: Materializer, events: Events) -> None:
    """Postgres numeric is unbounded; a value past DECIMAL(38) must not sink the batch."""
    huge = "1" + "0" * 40 + ".5"  # 41 digits before the point: no DECIMAL(38) holds it
    batch = [events.record("c", None, payment("big", amount=huge), table="payments", key=("pay_id",)),
             events.record("c", None, payment("tiny", amount="0.00000001"), table="payments", key=("pay_id",))]
    result = materializer.apply(batch, {})
    assert [r["amount"] for r in rows(store, "transactions")] == [Decimal("1E-8")]
    assert result.quarantined == 1 and f"amount: invalid value '{huge}" in quarantine(store)[0][2]


def test_custom_fields_in_json(store: Store, materializer: Materializer, events: Events, clock: ManualClock) -> None:
    user = events.user(3, vip_level=2, lifetime_value="10.005", kyc_status=None, last_deposit_at=micros(T),
                       segments=["a", "b, c"])
    materializer.apply([events.record("c", None, user)], {})
    feed = store.feed("players")
    body = b"".join(json_chunks(store, feed, clock.now.replace(hour=0), clock.now.replace(hour=23)))
    row = orjson.loads(body)[0]
    assert list(row)[-5:] == ["vip_level", "lifetime_value", "kyc_status", "last_deposit_at", "segments"]
    assert (row["vip_level"], row["lifetime_value"], row["kyc_status"]) == (2, 10.01, None)
    assert (row["last_deposit_at"], row["segments"]) == ("2024-07-01 08:00:00", ["a", "b, c"])


def mapping_with(tmp_path: Path, change: Any) -> Path:
    doc = yaml.safe_load(MAPPING.read_text())
    change(doc)
    path = tmp_path / "mapping.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_column_no_event_carries_is_counted(tmp_path: Path, events: Events, clock: ManualClock) -> None:
    """A typo in a column name reads NULL; it must show up, not pass as 'no data'."""
    path = mapping_with(tmp_path, lambda d: d["feeds"]["players"]["fields"].update(city="cty"))
    store = Store(tmp_path / "s.duckdb", load_mapping(path), clock=clock)
    try:
        result = Materializer(store).apply([events.record("c", None, events.user(1)),
                                            events.record("c", None, events.user(2))], {})
        assert result.invalid["players"] == 2
        (count, _), = [v for (f, n), v in field_errors(store).items() if (f, n) == ("players", "city")]
        assert count == 2
        with store.cursor() as cur:
            reason = cur.execute("SELECT reason FROM fs_field_errors WHERE field = 'city'").fetchone()
        assert reason is not None and "cty" in reason[0] and "public.users" in reason[0]
    finally:
        store.close()


def test_custom_field_added_later_extends_an_existing_store(tmp_path: Path, events: Events,
                                                            clock: ManualClock) -> None:
    plain = mapping_with(tmp_path, lambda d: d["feeds"]["players"].pop("custom_fields"))
    store = Store(tmp_path / "s.duckdb", load_mapping(plain), clock=clock)
    Materializer(store).apply([events.record("c", None, events.user(1))], {})
    store.close()
    store = Store(tmp_path / "s.duckdb", load_mapping(MAPPING), clock=clock)
    try:
        result = Materializer(store).apply([events.record("u", None, events.user(1, vip_level=4))], {})
        assert result.quarantined == 0
        assert rows(store, "players")[0]["vip_level"] == 4
    finally:
        store.close()


@pytest.mark.parametrize("op", ["c", "r", "u"])
def test_players_and_contacts_from_one_event(store: Store, materializer: Materializer, events: Events,
                                             op: str) -> None:
    result = materializer.apply([events.record(op, None, events.user(5, email="x@y.z", no_marketing=True))], {})
    assert result.changed["players"] == result.changed["contacts"] == 1
    assert rows(store, "contacts")[0]["email_subscribe"] is False
    assert rows(store, "players")[0]["self_excluded"] is True


def test_every_debezium_shape_and_marker_in_one_batch(store: Store, materializer: Materializer,
                                                      events: Events) -> None:
    """Snapshot reads, unwrapped rows (with __deleted), tombstones, truncates, heartbeats and
    transaction markers: rows are applied, markers skipped, nothing quarantined."""
    users = "spacevegas.public.users"
    flat = events.user(2, city="Rabat") | {"__op": "c", "__lsn": 5000, "__source_ts_ms": 1, "__deleted": "false"}
    flat_gone = {"user_id": 3, "__op": "d", "__lsn": 5100, "__deleted": "true"}
    truncate = {"op": "t", "before": None, "after": None, "source": {"schema": "public", "table": "users", "lsn": 5200}}
    batch = [
        events.record("r", None, events.user(1)),
        events.record("c", None, events.user(3)),
        Record(users, 0, 90, b'{"user_id": 2}', orjson.dumps(flat)),
        Record(users, 0, 91, b'{"user_id": 3}', orjson.dumps(flat_gone)),
        Record(users, 0, 92, b'{"user_id": 3}', None),  # the delete's tombstone
        Record(users, 0, 93, None, orjson.dumps(truncate)),
        Record("__debezium-heartbeat.spacevegas", 0, 0, b'{"serverName": "spacevegas"}', b'{"ts_ms": 1}'),
        Record("spacevegas.transaction", 0, 0, b'{"id": "571:53195832"}',
               b'{"status": "BEGIN", "id": "571:53195832", "event_count": null, "data_collections": null}'),
    ]
    result = materializer.apply(batch, {})
    assert result.quarantined == 0 and result.skipped == 4
    assert [(r["id"], r["city"], r["status"]) for r in rows(store, "players")] == [
        ("1", "Valletta", "Normal"), ("2", "Rabat", "Normal"), ("3", "Valletta", "Deleted")]
