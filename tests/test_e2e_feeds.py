"""Every feed end to end: legacy tables -> real Debezium -> tansu -> `feedstore serve` -> HTTP.

One serve process for the module. The fixture inserts a row into every legacy table,
updates each, then deletes each, and after every phase pulls every feed as CSV and JSON.
The tests then compare each feed's row with what the test wrote, converted by hand
(zones, enum spellings, decimals), field by field and type by type.

"After every phase" is exact, not a guess: a tail of the topics finds the Kafka
position of each change the phase made, and the serve process's consumer group must
have committed past it (the service commits to the group after the DuckDB commit).
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from kafka import KafkaConsumer, TopicPartition

from cdc.consumer import Consumer, kafka_consumer
from cdc.decode import decode
from deploy.localstack.demo import serve_process
from deploy.localstack.procs import free_port, port_open, stop, wait_until
from deploy.localstack.stack import LocalStack
from materializer.mapping import load_mapping
from materializer.stamp import utc_now
from schemas import Feed
from tests.fix_stack import Served
from tests.fix_store import MAPPING
from tests.test_feeds_forms import csv_records, json_records, typed

pytestmark = pytest.mark.stack

MALTA = ZoneInfo("Europe/Malta")
FEEDS = {name: fm.feed for name, fm in load_mapping(MAPPING).feeds.items() if name != "casino_activity"}
GROUP = f"e2e-feeds-{uuid.uuid4().hex[:8]}"


def utc(wall: datetime) -> datetime:
    """Malta wall-clock time (how the legacy tables store it) in UTC."""
    return wall.replace(tzinfo=MALTA).astimezone(UTC).replace(tzinfo=None)


# --------------------------------------------------------------------------- knowing a change was applied

class Tail:
    """Reads the mapped topics to find the Kafka position of given changes."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        client = kafka_consumer(bootstrap, f"{GROUP}-tail", max_poll_interval_ms=5000)
        self.consumer = Consumer(client, topics, {}, lambda records, offsets: None, rediscover_s=0.5)
        self.consumer.discover()

    def find(self, wanted: set[tuple[str, str, Any]], timeout: float = 60) -> dict[tuple[str, int], int]:
        """Wait for change events (table, op, key value); return the next offset past each."""
        found: dict[tuple[str, int], int] = {}
        left = set(wanted)
        deadline = time.monotonic() + timeout
        while left:
            assert time.monotonic() < deadline, f"Debezium did not produce {sorted(map(str, left))}"
            for rec in self.consumer.poll_batch():
                change = decode(rec.topic, rec.key, rec.value)
                if change is None or change.key is None:
                    continue
                hit = (change.table.split(".")[-1], change.op, next(iter(change.key.values())))
                if hit in left:
                    left.discard(hit)
                    found[(rec.topic, rec.partition)] = max(found.get((rec.topic, rec.partition), 0), rec.offset + 1)
        return found

    def close(self) -> None:
        self.consumer.client.close()


def wait_committed(bootstrap: str, offsets: dict[tuple[str, int], int], log: Path, timeout: float = 60) -> None:
    """Block until the serve process's group has committed at least ``offsets``."""
    client = KafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout
        while True:
            behind = {tp: off for tp, off in offsets.items()
                      if (client.committed(TopicPartition(*tp)) or 0) < off}
            if not behind:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"serve did not commit {behind}; log tail:\n"
                                     + "\n".join(log.read_text().splitlines()[-20:]))
            time.sleep(0.2)
    finally:
        client.close()


# --------------------------------------------------------------------------- the scenario

@dataclass
class Pulled:
    csv: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    json: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass
class Scenario:
    tag: str
    ids: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, Pulled] = field(default_factory=dict)
    start: datetime = field(default_factory=lambda: utc_now().replace(microsecond=0) - timedelta(seconds=1))


T1 = datetime(2024, 3, 31, 1, 30, 0)   # Malta: the night of the spring DST change (UTC+1 -> UTC+2)
T2 = datetime(2024, 7, 1, 10, 0, 0)    # Malta summer: UTC+2
T3 = datetime(2024, 12, 31, 23, 0, 0)  # Malta winter: UTC+1


def insert_all(cur: psycopg.Cursor[Any], s: Scenario) -> set[tuple[str, str, Any]]:
    t = s.tag
    ids = s.ids
    ids["user"] = cur.execute(
        "INSERT INTO users (fname, lname, sex, country_name, city, last_ip, lang, tz, dob, created, affiliate_code,"
        " reg_source, reg_ua, state, no_marketing, email, email_ok_at, phone, phone_ok_at, sms_optin, push_token,"
        " vip_level, lifetime_value, kyc_status, last_deposit_at, segments) VALUES ('Renée', 'O''Brien, Jr.', 'F',"
        " 'Malta', 'Mdina', '192.0.2.10', 'pt-BR', 'europe/lisbon', '1985-07-10', %s, 'aff42', 'Tik-Tok', 'UA/1.0',"
        " 0, false, %s, %s, '+356 2123', NULL, true, 'push-tok', 3, 1234.56, 'verified', %s, %s)"
        " RETURNING user_id",
        (T2, f"renee.{t}@example.com", T3, T1, ["slots", "vip, gold"])).fetchone()[0]
    ids["payment"] = str(cur.execute(
        "INSERT INTO payments (user_id, amount, ccy, kind, pay_type, state, provider, affiliate, created, account_no,"
        " masked_pan, note, psp_ref) VALUES (%s, 1234.56789012, 'usdt', 'W', 'bonus', 'pending', 'Coinspaid',"
        " NULL, %s, %s, '0x12…ef', 'line1\nline2, \"quoted\"', 'psp-1') RETURNING pay_id",
        (ids["user"], T2, f"W-{t}")).fetchone()[0])
    ids["account"] = f"W-{t}"
    cur.execute("INSERT INTO accounts (account_no, user_id, acc_type, balance, ccy, opened) "
                "VALUES (%s, %s, 'REAL', 0.00012345, 'BTC', %s)", (ids["account"], ids["user"], T1))
    ids["login"] = cur.execute(
        "INSERT INTO login_history (user_id, ip_addr, at, aff, utm_source, agent, site, ok) "
        "VALUES (%s, '2001:db8::7', '2024-03-31 01:30:00+00', NULL, 'Email', 'UA/2.0', 'sv-mirror1.com', false) "
        "RETURNING login_id", (ids["user"],)).fetchone()[0]
    ids["token"], ids["token_value"] = cur.execute(
        "INSERT INTO remember_tokens (user_id, issued, expires) VALUES (%s, %s, NULL) RETURNING token_id, token",
        (ids["user"], T2)).fetchone()
    ids["bonus"] = f"B-{t}"
    cur.execute("INSERT INTO bonus_catalogue (bonus_code, title, added, wagering) VALUES (%s, %s, %s, 35)",
                (ids["bonus"], 'Welcome, "VIP"', T3))
    ids["grant"], ids["grant2"] = (r[0] for r in cur.execute(
        "INSERT INTO bonus_grants (user_id, bonus_code, granted, valid_until, status) VALUES "
        "(%s, %s, %s, %s, 'A'), (%s, %s, %s, NULL, 'A') RETURNING grant_id",
        (ids["user"], ids["bonus"], T2, T3, ids["user"], ids["bonus"], T2)).fetchall())
    ids["tournament"] = f"fb-cup-{t}"
    cur.execute("INSERT INTO sb_tournaments VALUES (%s, 'Malta Cup', 'fb', 'Football', 'International', %s, NULL)",
                (ids["tournament"], T2))
    ids["event"] = f"ev-{t}"
    cur.execute("INSERT INTO sb_events VALUES (%s, %s, 'Valletta FC', 'Floriana', NULL, 'NS', %s, false)",
                (ids["event"], ids["tournament"], T3))
    ids["bet"] = str(cur.execute(
        "INSERT INTO sb_bets (user_id, state, bet_kind, stake, payout, ccy, affiliate, placed_at) VALUES "
        "(%s, 'placed', 'M', 10.5, NULL, 'EUR', 'aff42', '2024-07-01 08:00:00+00') RETURNING bet_id",
        (ids["user"],)).fetchone()[0])
    ids["selection"] = cur.execute(
        "INSERT INTO sb_selections (bet_id, event_key, price, outcome, market, created) "
        "VALUES (%s, %s, 2.375, NULL, 'Match Result', %s) RETURNING sel_id",
        (ids["bet"], ids["event"], T2)).fetchone()[0]
    return {("users", "c", ids["user"]), ("payments", "c", ids["payment"]), ("accounts", "c", ids["account"]),
            ("login_history", "c", ids["login"]), ("remember_tokens", "c", ids["token"]),
            ("bonus_catalogue", "c", ids["bonus"]), ("bonus_grants", "c", ids["grant"]),
            ("bonus_grants", "c", ids["grant2"]), ("sb_tournaments", "c", ids["tournament"]),
            ("sb_events", "c", ids["event"]), ("sb_bets", "c", ids["bet"]), ("sb_selections", "c", ids["selection"])}


def update_all(cur: psycopg.Cursor[Any], s: Scenario) -> set[tuple[str, str, Any]]:
    ids = s.ids
    cur.execute("UPDATE users SET login_count = login_count + 7 WHERE user_id = %s", (ids["user"],))  # invisible
    cur.execute("UPDATE users SET city = 'Sliema', state = 1, vip_level = 4, segments = '{}', phone_ok_at = %s "
                "WHERE user_id = %s", (T2, ids["user"]))
    cur.execute("UPDATE payments SET state = 'ok', psp_ref = 'psp-2' WHERE pay_id = %s", (ids["payment"],))
    cur.execute("UPDATE accounts SET balance = balance + 1 WHERE account_no = %s", (ids["account"],))
    cur.execute("UPDATE login_history SET ok = true WHERE login_id = %s", (ids["login"],))
    ids["token2"], ids["token_value2"] = cur.execute(
        "WITH old AS (DELETE FROM remember_tokens WHERE user_id = %s) "
        "INSERT INTO remember_tokens (user_id, issued) VALUES (%s, %s) RETURNING token_id, token",
        (ids["user"], ids["user"], T3)).fetchone()
    cur.execute("UPDATE bonus_catalogue SET title = 'Welcome Bonus', wagering = 40 WHERE bonus_code = %s",
                (ids["bonus"],))
    cur.execute("UPDATE bonus_grants SET status = 'U' WHERE grant_id = %s", (ids["grant"],))
    cur.execute("UPDATE sb_tournaments SET ends_on = %s WHERE tournament_key = %s", (T3, ids["tournament"]))
    cur.execute("UPDATE sb_events SET state = 'LIVE' WHERE event_key = %s", (ids["event"],))
    cur.execute("UPDATE sb_bets SET state = 'won', payout = 26.25 WHERE bet_id = %s", (ids["bet"],))
    cur.execute("UPDATE sb_selections SET outcome = 'W' WHERE sel_id = %s", (ids["selection"],))
    return {("users", "u", ids["user"]), ("payments", "u", ids["payment"]), ("accounts", "u", ids["account"]),
            ("login_history", "u", ids["login"]), ("remember_tokens", "c", ids["token2"]),
            ("bonus_catalogue", "u", ids["bonus"]), ("bonus_grants", "u", ids["grant"]),
            ("sb_tournaments", "u", ids["tournament"]), ("sb_events", "u", ids["event"]),
            ("sb_bets", "u", ids["bet"]), ("sb_selections", "u", ids["selection"])}


DELETES = [("users", "user_id", "user"), ("payments", "pay_id", "payment"), ("accounts", "account_no", "account"),
           ("login_history", "login_id", "login"), ("remember_tokens", "token_id", "token2"),
           ("bonus_catalogue", "bonus_code", "bonus"), ("bonus_grants", "grant_id", "grant2"),
           ("sb_tournaments", "tournament_key", "tournament"), ("sb_events", "event_key", "event"),
           ("sb_selections", "sel_id", "selection"), ("sb_bets", "bet_id", "bet")]


def delete_all(cur: psycopg.Cursor[Any], s: Scenario) -> set[tuple[str, str, Any]]:
    for table, column, name in DELETES:
        cur.execute(f"DELETE FROM {table} WHERE {column} = %s", (s.ids[name],))
    return {(table, "d", s.ids[name]) for table, _, name in DELETES}


def pull_all(served: Served, s: Scenario) -> Pulled:
    got = Pulled()
    params = {"from": f"{s.start:%Y-%m-%d %H:%M:%S}", "to": f"{s.start + timedelta(hours=2):%Y-%m-%d %H:%M:%S}"}
    for name, feed in FEEDS.items():
        status, headers, body = served.get(f"/api/{name}", **params)
        assert status == 200 and headers["Content-Type"].startswith("text/csv"), body[:300]
        got.csv[name] = csv_records(feed, body)
        status, headers, body = served.get(f"/api/{name}", **params, format="json")
        assert status == 200 and headers["Content-Type"].startswith("application/json"), body[:300]
        got.json[name] = json_records(feed, body)
    return got


@pytest.fixture(scope="module")
def scenario(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    tmp = tmp_path_factory.mktemp("e2e-feeds")
    port = free_port()
    with pytest.MonkeyPatch.context() as env:  # the child's settings, read from its environment
        env.setenv("FEEDSTORE_GROUP_ID", GROUP)
        proc = serve_process(stack, port, tmp / "feedstore.duckdb", log_format="json")
    log = tmp / "serve.log"
    tail = Tail(stack.bootstrap, load_mapping(MAPPING).topics)
    try:
        wait_until(lambda: port_open(port), timeout=60, what="feedstore serve", log=log, proc=proc)
        served = Served(f"http://127.0.0.1:{port}", proc, log)
        s = Scenario(tag=uuid.uuid4().hex[:8])
        phases: list[tuple[str, Callable[[psycopg.Cursor[Any], Scenario], set[tuple[str, str, Any]]]]] = [
            ("insert", insert_all), ("update", update_all), ("delete", delete_all)]
        with psycopg.connect(stack.dsn, autocommit=True) as conn, conn.cursor() as cur:
            for phase, write in phases:
                # Stamps are served to the second: start each phase in a new second, so a
                # row that moved shows a later modified_at, not the same one.
                time.sleep(1 - utc_now().microsecond / 1e6 + 0.01)
                wanted = write(cur, s)
                wait_committed(stack.bootstrap, tail.find(wanted), log)
                s.phases[phase] = pull_all(served, s)
        yield s
    finally:
        tail.close()
        stop(proc, signal.SIGTERM, timeout=20)
    assert "Traceback" not in log.read_text()


# --------------------------------------------------------------------------- what each feed must say

def expected(s: Scenario, phase: str) -> dict[str, dict[str, Any]]:
    """Each feed's row (all fields but the stamp) after ``phase``, worked out by hand."""
    i = s.ids
    user, updated, deleted = str(i["user"]), phase != "insert", phase == "delete"
    return {
        "players": {
            "id": user, "first_name": "Renée", "last_name": "O'Brien, Jr.", "gender": "female",
            "country": "Malta", "city": "Sliema" if updated else "Mdina", "ip": "192.0.2.10", "locale": "pt_BR",
            "timezone": "Europe/Lisbon", "birthday": datetime(1985, 7, 10).date(), "registered_at": utc(T2),
            "ref_code": "aff42", "traffic_source": "Tik-Tok", "user_agent": "UA/1.0", "is_blocked": updated,
            "status": "Deleted" if deleted else "Blocked" if updated else "Normal", "self_excluded": False,
            "vip_level": 4 if updated else 3, "lifetime_value": Decimal("1234.56"), "kyc_status": "VERIFIED",
            "last_deposit_at": utc(T1), "segments": [] if updated else ["slots", "vip, gold"]},
        "contacts": {
            "player_id": user, "email": f"renee.{s.tag}@example.com", "email_confirmed_at": utc(T3),
            "email_subscribe": not deleted, "phone": "+356 2123", "phone_subscribe": not deleted,
            "phone_confirmed_at": utc(T2) if updated else None, "push_token": "push-tok", "created_at": utc(T2)},
        "transactions": {
            "id": i["payment"], "player_id": user, "amount": Decimal("1234.56789012"), "currency": "USDT",
            "type": "Prize", "status": "Success" if updated else "New", "payment_system": "Coinspaid",
            "dir": "OUT", "ref_code": None, "created_at": utc(T2), "wallet_id": f"W-{s.tag}",
            "requisite": "0x12…ef", "comment": 'line1\nline2, "quoted"'},
        "logins": {
            "id": str(i["login"]), "player_id": user, "ip": "2001:db8::7", "created_at": datetime(2024, 3, 31, 1, 30),
            "ref_code": None, "traffic_source": "Email", "user_agent": "UA/2.0", "host": "sv-mirror1.com",
            "is_success": updated},
        "auto_logins": {
            "id": str(i["token2"] if updated else i["token"]), "player_id": user,
            "login_token": str(i["token_value2"] if updated else i["token_value"])},
        "wallets": {
            "id": f"W-{s.tag}", "player_id": user, "type": "Normal",
            "balance": Decimal("1.00012345") if updated else Decimal("0.00012345"), "currency": "BTC",
            "created_at": utc(T1)},
        "bonuses": {"id": f"B-{s.tag}", "name": "Welcome Bonus" if updated else 'Welcome, "VIP"',
                    "created_at": utc(T3)},
        "bonus_assignments": {
            "id": str(i["grant"]), "player_id": user, "bonus_id": f"B-{s.tag}", "end_date": utc(T3),
            "created_at": utc(T2), "active": 0 if updated else 1, "used": 1 if updated else 0},
        "sport_tournaments": {
            "id": f"fb-cup-{s.tag}", "name": "Malta Cup", "sport_id": "fb", "sport_name": "Football",
            "country_code": "International", "start_date": utc(T2), "end_date": utc(T3) if updated else None},
        "sport_events": {
            "id": f"ev-{s.tag}", "tournament_id": f"fb-cup-{s.tag}", "title": "Valletta FC - Floriana",
            "status": "live" if updated else "not_started", "start_date": utc(T3), "type": "match"},
        "sport_bets": {
            "id": i["bet"], "player_id": user, "status": "win" if updated else "placed", "type": "multiple",
            "stake": Decimal("10.5"), "win_amount": Decimal("26.25") if updated else None, "currency": "EUR",
            "ref_code": "aff42", "created_at": datetime(2024, 7, 1, 8)},
        "sport_odds": {
            "id": str(i["selection"]), "bet_id": i["bet"], "event_id": f"ev-{s.tag}", "ratio": 2.375,
            "status": "win" if updated else "not_resulted", "market": "Match Result", "created_at": utc(T2)},
    }


def row_of(rows: list[dict[str, Any]], feed: Feed, key: str) -> dict[str, Any]:
    found = [r for r in rows if r[feed.key[0]] == key]
    assert len(found) == 1, f"{feed.name}: {len(found)} rows for {key!r}"
    return found[0]


@pytest.mark.parametrize("name", list(FEEDS))
@pytest.mark.parametrize("phase", ["insert", "update", "delete"])
def test_feed_rows_have_the_spec_fields_values_and_types(scenario: Scenario, name: str, phase: str) -> None:
    feed = FEEDS[name]
    want = expected(scenario, phase)[name]
    key = want[feed.key[0]]
    pulled = scenario.phases[phase]
    for form, rows in (("csv", pulled.csv[name]), ("json", pulled.json[name])):
        row = row_of(rows, feed, key)
        assert list(row) == list(feed.field_names)
        got = {k: v for k, v in row.items() if k != feed.stamp}
        assert got == {f.name: typed(f, want[f.name]) for f in feed.fields if f.name != feed.stamp}, form
        assert scenario.start <= row[feed.stamp] <= utc_now(), form
    assert row_of(pulled.csv[name], feed, key) == row_of(pulled.json[name], feed, key)


FEEDS_WITH_DELETE_POLICY = {"players", "contacts", "bonus_assignments"}


@pytest.mark.parametrize("name", list(FEEDS))
def test_stamps_move_with_content_only(scenario: Scenario, name: str) -> None:
    """Updates move every row; deletes move only feeds whose policy changes the row."""
    feed = FEEDS[name]
    stamps = {}
    for phase in ("insert", "update", "delete"):
        want = expected(scenario, phase)[name]
        stamps[phase] = row_of(scenario.phases[phase].json[name], feed, want[feed.key[0]])[feed.stamp]
    assert stamps["insert"] < stamps["update"]
    if name in FEEDS_WITH_DELETE_POLICY and name != "bonus_assignments":
        assert stamps["update"] < stamps["delete"]
    else:  # on_delete: ignore (or, for the used grant, nothing to change)
        assert stamps["update"] == stamps["delete"]


def test_deleted_grant_stays_inactive(scenario: Scenario) -> None:
    """The second grant is deleted while active: the policy `active: 0` moves it."""
    feed = FEEDS["bonus_assignments"]
    key = str(scenario.ids["grant2"])
    before = row_of(scenario.phases["update"].json["bonus_assignments"], feed, key)
    after = row_of(scenario.phases["delete"].json["bonus_assignments"], feed, key)
    assert (before["active"], after["active"], after["used"]) == (1, 0, 0)
    assert after["modified_at"] > before["modified_at"]
