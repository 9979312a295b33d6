"""casino_activity over a real DuckDB store, driven with synthetic Debezium events.

The clock is injected, so every batch's stamp is placed exactly; the expected rows are
computed here, in plain Python, from the test's own copy of the source table (what the
operator's ``game_actions`` holds after the same statements), never by the code under
test.
"""

from __future__ import annotations

import csv
import io
import random
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import falcon.testing
import orjson
import pytest
import yaml

from api.app import create_app
from cdc.records import Record
from materializer.apply import Materializer
from materializer.casino import ACTIONS, TOUCHES, _aggregate_sql
from materializer.mapping import Mapping, MappingError, parse_mapping
from materializer.store import Store
from tests.fix_store import MAPPING, ManualClock, micros

TOPIC = "spacevegas.public.game_actions"
T0 = datetime(2025, 3, 1, 12, 0, 0)  # stamps: the clock
OWN = datetime(2025, 3, 1, 10, 0, 0)  # the actions' own times (Malta wall clock, UTC+1 in March)


@dataclass
class Source:
    """The operator's game_actions table as the test changed it, and the events it produced."""

    rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    lsn: int = 1000
    offset: int = 0
    sent: list[Record] = field(default_factory=list)

    def _event(self, op: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> Record:
        self.lsn += 8
        value = {"before": before, "after": after, "op": op, "ts_ms": 1_700_000_000_000,
                 "source": {"connector": "postgresql", "schema": "public", "table": "game_actions",
                            "lsn": self.lsn}}
        key = (after or before or {})["id"]
        rec = Record(TOPIC, 0, self.offset, orjson.dumps({"id": key}), orjson.dumps(value))
        self.offset += 1
        self.sent.append(rec)
        return rec

    def insert(self, ident: int, session: str, kind: str, amount: str, at: datetime, **cols: Any) -> Record:
        row = {"id": ident, "round_ref": session, "user_id": 7, "game_code": "lucky-lion", "game_title": "Lucky Lion",
               "provider": "PARIPLAY", "tx_type": kind, "amount": amount, "currency": "EUR", "wallet": "real",
               "client_ip": "10.0.0.1", "client_ua": "Mozilla/5.0", "aff_code": "spring", "created": micros(at),
               "server_node": "n1"} | cols
        self.rows[ident] = row
        return self._event("c", None, row)

    def update(self, ident: int, **cols: Any) -> Record:
        row = self.rows[ident] | cols
        self.rows[ident] = row
        return self._event("u", None, row)

    def delete(self, ident: int) -> Record:
        del self.rows[ident]
        return self._event("d", {"id": ident}, None)  # default replica identity: the key only

    def expected(self, session: str) -> dict[str, Any]:
        """The session's row as the spec defines it, from the source rows."""
        acts = [r for r in self.rows.values() if r["round_ref"] == session]
        bets = [(r, {"BET": 1, "ROLLBACK": -1}.get(r["tx_type"], 0)) for r in acts]
        times = [r["created"] for r in acts]
        return {"session_id": session, "player_id": str(acts[0]["user_id"]),
                "bet_count": sum(n for _, n in bets), "win_count": sum(r["tx_type"] == "WIN" for r in acts),
                "bet_amount": sum((n * Decimal(r["amount"]) for r, n in bets), Decimal(0)),
                "win_amount": sum((Decimal(r["amount"]) for r in acts if r["tx_type"] == "WIN"), Decimal(0)),
                "created_at": _utc(min(times)), "updated_at": _utc(max(times))}


def _utc(us: int) -> str:
    """Malta wall-clock micros (March: UTC+1) as the feed's UTC text."""
    return f"{datetime(1970, 1, 1) + timedelta(microseconds=us) - timedelta(hours=1):%Y-%m-%d %H:%M:%S}"


@pytest.fixture
def src() -> Source:
    return Source()


@pytest.fixture
def client(store: Store, materializer: Materializer) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_app(store, barrier_timeout=0.2))


def pull(client: falcon.testing.TestClient, start: datetime, end: datetime) -> dict[str, dict[str, Any]]:
    resp = client.simulate_get("/api/casino_activity", query_string=f"from={start:%Y-%m-%d+%H:%M:%S}"
                               f"&to={end:%Y-%m-%d+%H:%M:%S}&format=json")
    assert resp.status_code == 200, resp.text
    rows = orjson.loads(resp.content)
    assert len({r["session_id"] for r in rows}) == len(rows), "one row per session"
    return {r["session_id"]: r for r in rows}


def agg(row: dict[str, Any]) -> dict[str, Any]:
    """The comparable part of a pulled row (amounts as Decimal, whatever JSON made of them)."""
    keys = ("session_id", "player_id", "bet_count", "win_count", "bet_amount", "win_amount", "created_at",
            "updated_at")
    out = {k: row[k] for k in keys}
    out["bet_amount"] = Decimal(str(row["bet_amount"]))
    out["win_amount"] = Decimal(str(row["win_amount"]))
    return out


def hour(n: int) -> tuple[datetime, datetime]:
    return T0 + timedelta(hours=n), T0 + timedelta(hours=n + 1)


def at_hour(clock: ManualClock, n: int, minutes: int = 10) -> None:
    clock.now = T0 + timedelta(hours=n, minutes=minutes)


# --------------------------------------------------------------------------- the three steps

def test_session_across_three_windows_appears_in_each_with_everything_known(client, materializer, clock,
                                                                           src: Source) -> None:
    at_hour(clock, 0)
    materializer.apply([src.insert(1, "s1", "BET", "5.00", OWN), src.insert(2, "s2", "BET", "1.00", OWN)], {})
    at_hour(clock, 1)
    materializer.apply([src.insert(3, "s2", "WIN", "2.50", OWN + timedelta(minutes=1))], {})  # s1 idle
    at_hour(clock, 2)
    materializer.apply([src.insert(4, "s1", "WIN", "12.00", OWN + timedelta(minutes=70))], {})
    at_hour(clock, 3)
    materializer.apply([src.insert(5, "s1", "BET", "2.00", OWN + timedelta(minutes=75))], {})
    clock.now = T0 + timedelta(hours=5)

    windows = [pull(client, *hour(n)) for n in range(4)]
    assert set(windows[0]) == {"s1", "s2"}
    assert set(windows[1]) == {"s2"}  # s1 had no action stamped in hour 1
    assert set(windows[2]) == {"s1"}
    assert set(windows[3]) == {"s1"}
    for w in windows:  # each pull: all actions known now, whatever window they landed in
        for sid, row in w.items():
            assert agg(row) == src.expected(sid)
    s1 = windows[0]["s1"]
    assert s1["bet_count"] == 2 and s1["win_count"] == 1
    assert s1["created_at"] == "2025-03-01 09:00:00" and s1["updated_at"] == "2025-03-01 10:15:00"
    # modified_at: the latest stamp among the session's actions, even when after `to`
    assert s1["modified_at"] == f"{T0 + timedelta(hours=3, minutes=10):%Y-%m-%d %H:%M:%S}"
    assert windows[0]["s2"]["modified_at"] == f"{T0 + timedelta(hours=1, minutes=10):%Y-%m-%d %H:%M:%S}"


def test_window_bounds_are_half_open_on_the_action_stamp(client, materializer, clock, src: Source) -> None:
    clock.now = T0  # exactly `from`: inside
    materializer.apply([src.insert(1, "a", "BET", "1", OWN)], {})
    clock.now = T0 + timedelta(hours=1) - timedelta(microseconds=1)
    materializer.apply([src.insert(2, "b", "BET", "1", OWN)], {})
    clock.now = T0 + timedelta(hours=1)  # exactly `to`: next window
    materializer.apply([src.insert(3, "c", "BET", "1", OWN)], {})
    assert set(pull(client, *hour(0))) == {"a", "b"}
    assert set(pull(client, *hour(1))) == {"c"}


def test_late_action_lands_in_the_window_it_arrived_in(client, materializer, clock, src: Source) -> None:
    at_hour(clock, 0)
    materializer.apply([src.insert(1, "s", "BET", "3", OWN)], {})
    at_hour(clock, 4)  # arrives hours later, with an own time before everything else
    materializer.apply([src.insert(2, "s", "WIN", "9", OWN - timedelta(days=2))], {})
    late = pull(client, *hour(4))
    assert agg(late["s"]) == src.expected("s")
    assert late["s"]["created_at"] == "2025-02-27 09:00:00"
    assert "s" not in pull(client, *hour(2))


def test_own_times_far_from_now_are_kept(client, materializer, clock, src: Source) -> None:
    """A legacy table's placeholder dates (before 1970, far future) are times like any other."""
    at_hour(clock, 0)
    materializer.apply([src.insert(1, "s", "BET", "1", datetime(1960, 1, 1, 1)),
                        src.insert(2, "s", "WIN", "2", datetime(2999, 1, 1, 1))], {})
    row = pull(client, *hour(0))["s"]
    assert (row["created_at"], row["updated_at"]) == ("1960-01-01 00:00:00", "2999-01-01 00:00:00")
    assert agg(row) == src.expected("s")


# --------------------------------------------------------------------------- changes, replays

def test_rollback_row_cancels_a_bet(client, materializer, clock, src: Source) -> None:
    at_hour(clock, 0)
    materializer.apply([src.insert(1, "s", "BET", "5.00", OWN), src.insert(2, "s", "BET", "3.00", OWN)], {})
    at_hour(clock, 1)
    materializer.apply([src.insert(3, "s", "ROLLBACK", "5.00", OWN + timedelta(seconds=30))], {})
    row = pull(client, *hour(1))["s"]
    assert agg(row) == src.expected("s")
    assert (row["bet_count"], Decimal(str(row["bet_amount"]))) == (1, Decimal("3"))


def test_updated_and_deleted_actions_change_the_aggregate_and_restamp(client, materializer, clock,
                                                                       src: Source) -> None:
    at_hour(clock, 0)
    materializer.apply([src.insert(1, "s", "BET", "5.00", OWN), src.insert(2, "s", "WIN", "8.00", OWN),
                        src.insert(3, "t", "BET", "1.00", OWN)], {})
    at_hour(clock, 1)
    materializer.apply([src.update(1, amount="4.00")], {})  # a corrected bet
    at_hour(clock, 2)
    materializer.apply([src.delete(2)], {})  # a cancelled win, deleted in the source
    w1, w2 = pull(client, *hour(1)), pull(client, *hour(2))
    assert set(w1) == {"s"} and set(w2) == {"s"}  # t untouched: in neither
    assert set(pull(client, *hour(0))) == {"s", "t"}  # s stays in the window its actions first landed in
    assert agg(w2["s"]) == src.expected("s")
    assert (w2["s"]["win_count"], Decimal(str(w2["s"]["bet_amount"]))) == (0, Decimal("4"))
    assert w2["s"]["modified_at"] == f"{T0 + timedelta(hours=2, minutes=10):%Y-%m-%d %H:%M:%S}"


def test_session_whose_actions_are_all_deleted_reports_zeros(client, materializer, clock, src: Source) -> None:
    at_hour(clock, 0)
    materializer.apply([src.insert(1, "s", "BET", "5.00", OWN)], {})
    at_hour(clock, 1)
    materializer.apply([src.delete(1)], {})
    row = pull(client, *hour(1))["s"]
    assert (row["bet_count"], row["win_count"], Decimal(str(row["bet_amount"]))) == (0, 0, Decimal(0))
    assert row["created_at"] == "2025-03-01 09:00:00"  # the deleted action's time: still a row to send


def test_replayed_and_duplicated_events_never_double_count(client, materializer, clock, src: Source) -> None:
    at_hour(clock, 0)
    first = [src.insert(1, "s", "BET", "5.00", OWN), src.insert(2, "s", "WIN", "7.00", OWN),
             src.update(1, amount="6.00"), src.delete(2), src.insert(3, "s", "BET", "1.00", OWN)]
    materializer.apply(first + first[:2], {})  # duplicates inside one batch
    before = pull(client, *hour(0))["s"]
    at_hour(clock, 1)
    result = materializer.apply(list(reversed(first)), {})  # the whole partition again, any order
    assert result.changed.get("casino_activity", 0) == 0
    assert pull(client, *hour(1)) == {}  # nothing moved
    after = pull(client, *hour(0))["s"]
    assert after == before
    assert agg(after) == src.expected("s")


def test_older_event_after_a_newer_one_is_skipped(client, materializer, clock, src: Source) -> None:
    at_hour(clock, 0)
    old = src.insert(1, "s", "BET", "5.00", OWN)
    new = src.update(1, amount="2.00")
    materializer.apply([new], {})
    at_hour(clock, 1)
    materializer.apply([old], {})
    assert pull(client, *hour(1)) == {}
    assert Decimal(str(pull(client, *hour(0))["s"]["bet_amount"])) == Decimal("2")


def test_an_action_moved_to_another_session_leaves_the_first(client, materializer, clock, store: Store,
                                                            src: Source) -> None:
    at_hour(clock, 0)
    materializer.apply([src.insert(1, "a", "BET", "5.00", OWN), src.insert(2, "b", "BET", "1.00", OWN)], {})
    at_hour(clock, 1)
    materializer.apply([src.update(1, round_ref="b")], {})
    w = pull(client, *hour(1))
    assert set(w) == {"b"} and agg(w["b"]) == src.expected("b")
    with store.cursor() as cur:  # "a" has no action left: no row for it any more
        assert cur.execute("SELECT count(*) FROM feed_casino_activity WHERE session_id = 'a'").fetchone() == (0,)


def test_descriptive_columns_come_from_the_latest_action_with_a_value(client, materializer, clock,
                                                                     src: Source) -> None:
    at_hour(clock, 0)
    materializer.apply([src.insert(1, "s", "BET", "1", OWN, client_ip="10.0.0.1"),
                        src.insert(2, "s", "BET", "1", OWN + timedelta(minutes=5), client_ip="10.0.0.2"),
                        src.insert(3, "s", "WIN", "1", OWN + timedelta(minutes=9), client_ip=None,
                                   wallet="bonus")], {})
    row = pull(client, *hour(0))["s"]
    assert row["ip"] == "10.0.0.2"  # the last action has none: the latest that has one
    assert row["balance_type"] == "Prize"  # 'bonus' through the spec's alias
    assert row["currency"] == "EUR" and row["game_name"] == "Lucky Lion" and row["game_vendor"] == "PARIPLAY"


# --------------------------------------------------------------------------- bad input

def test_bad_actions_are_quarantined_and_the_rest_applied(client, materializer, store: Store, clock,
                                                          src: Source) -> None:
    at_hour(clock, 0)
    good = src.insert(1, "s", "BET", "5.00", OWN)
    no_session = src.insert(2, None, "BET", "1.00", OWN)  # type: ignore[arg-type]
    bad_amount = src.insert(3, "s", "BET", "1.5e99", OWN)  # decodes, but fits no DECIMAL(38,8)
    bad_ip = src.insert(4, "s", "WIN", "2.00", OWN, client_ip="not-an-ip")
    result = materializer.apply([good, no_session, bad_amount, bad_ip], {})
    assert result.quarantined == 2
    with store.cursor() as cur:
        reasons = dict(cur.execute("SELECT kafka_offset, reason FROM fs_quarantine").fetchall())
        errors = cur.execute("SELECT feed, field, count FROM fs_field_errors").fetchall()
    assert "session_id: missing" in reasons[no_session.offset]
    assert "amount: invalid value" in reasons[bad_amount.offset]
    assert errors == [("casino_activity", "ip", 1)]  # optional: emitted empty, counted
    row = pull(client, *hour(0))["s"]
    assert (row["bet_count"], row["win_count"], row["ip"]) == (1, 1, "10.0.0.1")


# --------------------------------------------------------------------------- other shapes

def _mapping(tmp_path: Path, casino: dict[str, Any]) -> Mapping:
    doc = yaml.safe_load(MAPPING.read_text())
    doc["feeds"] = {"casino_activity": casino}
    doc["tables"] = {k: v for k, v in doc["tables"].items() if k == casino["source"]}
    return parse_mapping(doc, tmp_path / "mapping.yaml")


ROUND_SHAPE = {
    "source": "public.game_actions",
    "actions": {"key": "CAST(id AS VARCHAR)", "time": "created", "bet_amount": "bet", "win_amount": "win"},
    "fields": {"player_id": "CAST(user_id AS VARCHAR)", "session_id": "CAST(round_ref AS VARCHAR)",
               "game_name": "game_title", "currency": "currency"},
    "on_delete": "ignore",
}


def test_round_shape_two_amount_columns_and_deletes_ignored(tmp_path: Path, clock: ManualClock) -> None:
    """One row per round: a bet when bet > 0, a win when win > 0. A purge of old rows
    (on_delete: ignore) leaves the sessions as they were."""
    store = Store(tmp_path / "rounds.duckdb", _mapping(tmp_path, ROUND_SHAPE), clock=clock)
    try:
        m = Materializer(store)
        client = falcon.testing.TestClient(create_app(store, barrier_timeout=0.2))
        src = Source()
        rounds = [(1, "5.00", "0"), (2, "5.00", "12.50"), (3, "0", "3.00")]
        at_hour(clock, 0)
        m.apply([src.insert(i, "r", "ROUND", "0", OWN, bet=b, win=w) for i, b, w in rounds], {})
        at_hour(clock, 1)
        m.apply([src.delete(1)], {})
        assert pull(client, *hour(1)) == {}
        row = pull(client, *hour(0))["r"]
        assert (row["bet_count"], row["win_count"]) == (2, 2)
        assert (Decimal(str(row["bet_amount"])), Decimal(str(row["win_amount"]))) == (Decimal(10), Decimal("15.5"))
    finally:
        store.close()


def test_csv_pull_has_the_spec_columns_in_order(client, materializer, clock, src: Source) -> None:
    at_hour(clock, 0)
    materializer.apply([src.insert(1, "s", "BET", "5.10", OWN, client_ua='Mozilla/5.0 (X11, "Linux")')], {})
    resp = client.simulate_get("/api/casino_activity", query_string="from=2025-03-01+12:00:00&to=2025-03-01+13:00:00")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert list(rows[0]) == [f.name for f in materializer.store.feed("casino_activity").fields]
    assert rows[0]["user_agent"] == 'Mozilla/5.0 (X11, "Linux")'
    assert rows[0]["bet_amount"] == "5.1" and rows[0]["win_amount"] == "0"
    empty = client.simulate_get("/api/casino_activity", query_string="from=2025-03-01+14:00:00&to=2025-03-01+15:00:00")
    assert empty.text.splitlines() == [",".join(f.name for f in materializer.store.feed("casino_activity").fields)]


def test_actions_are_stored_once_per_key(materializer, store: Store, clock, src: Source) -> None:
    at_hour(clock, 0)
    materializer.apply([src.insert(1, "s", "BET", "1", OWN), src.update(1, amount="2")], {})
    at_hour(clock, 1)
    materializer.apply([src.update(1, amount="3"), src.delete(1)], {})
    at_hour(clock, 2)
    materializer.apply([src.insert(1, "s", "BET", "4", OWN)], {})  # the key comes back
    with store.cursor() as cur:
        rows = cur.execute(f"SELECT action_key, deleted, bet_amount FROM {ACTIONS}").fetchall()
    assert rows == [("1", False, Decimal(4))]


# --------------------------------------------------------------------------- the mapping

BASE = {"source": "public.game_actions",
        "actions": {"key": "CAST(id AS VARCHAR)", "time": "created", "bet": "tx_type = 'BET'",
                    "win": "tx_type = 'WIN'", "amount": "amount"},
        "fields": {"player_id": "CAST(user_id AS VARCHAR)", "session_id": "CAST(round_ref AS VARCHAR)",
                   "game_name": "game_title", "currency": "currency"}}


def _with(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    doc = orjson.loads(orjson.dumps(BASE))
    node = doc
    for k in path[:-1]:
        node = node[k]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return dict(doc)


@pytest.mark.parametrize(("path", "value", "message"), [
    (("fields", "bet_count"), "count(*)", "computed per session"),
    (("fields", "modified_at"), "now()", "Feedstore's own change stamp"),
    (("fields", "game_name"), None, "game_name': required by the spec"),
    (("actions", "key"), None, "'key' is required"),
    (("actions", "time"), None, "'time' is required"),
    (("actions", "time"), "created +", "not a valid DuckDB SQL expression"),
    (("actions", "amount"), None, "how much each bet is"),
    (("actions", "bet"), None, "say which rows are bets"),
    (("actions", "colour"), "red", "unknown key"),
    (("actions",), None, "aggregated per session"),
    (("on_delete",), "archive", "on_delete must be 'remove'"),
])
def test_mapping_errors_name_the_problem(tmp_path: Path, path: tuple[str, ...], value: Any, message: str) -> None:
    with pytest.raises(MappingError, match=re.escape(message)):
        _mapping(tmp_path, _with(path, value))


def test_actions_only_for_casino_activity(tmp_path: Path) -> None:
    doc = yaml.safe_load(MAPPING.read_text())
    doc["feeds"] = {"players": doc["feeds"]["players"] | {"actions": BASE["actions"]}}
    with pytest.raises(MappingError, match="only for casino_activity"):
        parse_mapping(doc, tmp_path / "m.yaml")


def test_round_shape_defaults_bets_and_wins_from_the_amounts(tmp_path: Path) -> None:
    am = _mapping(tmp_path, ROUND_SHAPE).feeds["casino_activity"]
    assert am.columns >= {"id", "created", "bet", "win", "round_ref"}


# --------------------------------------------------------------------------- incremental = recompute

def test_incremental_session_rows_equal_a_full_recompute(materializer, store: Store, clock, src: Source) -> None:
    """Random batches of inserts (in and out of own-time order), corrections, moves,
    deletes, revived keys, replays and NULL descriptive values: after every batch each
    session row equals the three steps recomputed from all stored actions."""
    rng = random.Random(4)
    feed = store.feed("casino_activity")
    names = ", ".join(f.name for f in feed.fields) + ", _fs_pos"
    sessions = [f"s{i}" for i in range(12)]
    next_id = 1
    for batch in range(40):
        at_hour(clock, batch // 4, minutes=batch % 4 * 10)
        events: list[Record] = []
        for _ in range(rng.randrange(1, 25)):
            r = rng.random()
            live = list(src.rows)
            if r < 0.55 or not live:
                own = OWN + timedelta(seconds=next_id * 7 - rng.choice([0, 0, 0, 400]))  # some late
                events.append(src.insert(next_id, rng.choice(sessions), rng.choice(["BET", "WIN", "ROLLBACK"]),
                                         f"{rng.randrange(1, 999)}.{rng.randrange(100):02d}", own,
                                         client_ip=rng.choice(["10.0.0.1", "10.0.0.2", None]),
                                         wallet=rng.choice(["real", "bonus"])))
                next_id += 1
            elif r < 0.7:
                events.append(src.update(rng.choice(live), amount=f"{rng.randrange(1, 99)}.50"))
            elif r < 0.75:
                events.append(src.update(rng.choice(live), round_ref=rng.choice(sessions)))
            elif r < 0.8:
                events.append(src.update(rng.choice(live), created=micros(OWN - timedelta(minutes=rng.randrange(99)))))
            elif r < 0.87:
                events.append(src.delete(rng.choice(live)))
            elif r < 0.92:
                events.append(src.update(rng.choice(live), server_node="n2"))  # not feed-visible
            else:
                events.extend(rng.sample(src.sent, min(3, len(src.sent))))  # replays
        materializer.apply(events, {})
        with store.cursor() as cur:
            got = cur.execute(f"SELECT {names} FROM feed_casino_activity ORDER BY session_id").fetchall()
            want = cur.execute(f"SELECT {names} FROM ({_aggregate_sql(feed, ACTIONS)}) ORDER BY session_id").fetchall()
        assert got == want, f"batch {batch}"
        for sid in {r["round_ref"] for r in src.rows.values()}:
            row = dict(zip(names.split(", "), next(g for g in got if g[1] == sid), strict=True))
            exp = src.expected(sid)
            assert (row["bet_count"], row["win_count"], row["bet_amount"], row["win_amount"]) == (
                exp["bet_count"], exp["win_count"], exp["bet_amount"], exp["win_amount"]), (batch, sid)
    with store.cursor() as cur:  # every batch changed some session, and logged it
        assert cur.execute(f"SELECT count(DISTINCT stamp) FROM {TOUCHES}").fetchall() == [(40,)]


def test_rebuild_keeps_the_live_windows_of_unchanged_sessions(tmp_path: Path, mapping: Mapping,
                                                              src: Source) -> None:
    """materializer/rebuild.py re-reads the topics into a new file; casino.carry_stamps then
    gives unchanged sessions their live touches, and changed ones one touch at the fresh stamp."""
    from materializer.casino import carry_stamps

    events = [src.insert(1, "same", "BET", "5", OWN), src.insert(2, "fixed", "BET", "1", OWN)]
    clock = ManualClock(T0)
    live = Store(tmp_path / "live.duckdb", mapping, clock=clock)
    Materializer(live).apply(events[:1], {})
    clock.now = T0 + timedelta(hours=1)
    Materializer(live).apply(events[1:], {})
    with live.cursor() as cur:  # what a mapping bug stored for one session
        cur.execute("UPDATE feed_casino_activity SET game_name = 'bug' WHERE session_id = 'fixed'")
    live.close()
    clock.now = T0 + timedelta(hours=5)
    rebuilt = Store(tmp_path / "rebuilt.duckdb", mapping, clock=clock)
    try:
        Materializer(rebuilt).apply(events, {})
        fresh = T0 + timedelta(hours=6)
        with rebuilt.writer() as cur:
            cur.execute(f"ATTACH '{tmp_path / 'live.duckdb'}' AS live (READ_ONLY)")
            carry_stamps(cur, mapping, fresh)
            cur.execute("DETACH live")
        client = falcon.testing.TestClient(create_app(rebuilt, barrier_timeout=0.2))
        assert set(pull(client, *hour(0))) == {"same"}  # where the live file had it
        assert pull(client, *hour(1)) == {}  # "fixed" left its old window ...
        assert set(pull(client, fresh, fresh + timedelta(hours=1))) == {"fixed"}  # ... for the next one
        assert pull(client, *hour(5)) == {}  # the rebuild's own batch stamps are gone
    finally:
        rebuilt.close()


def test_bench_envelopes_decode_as_debezium_ones_do(mapping: Mapping) -> None:
    """bench/casino.py's synthetic events (their schema is checked against a real one in
    test_casino_e2e) decode to the row they were made from."""
    from bench.casino import Envelopes, decimal_b64
    from cdc.decode import decode

    env = Envelopes("spacevegas")
    src = mapping.tables[TOPIC]
    row = {"id": 9, "round_ref": "r-1", "user_id": 7, "game_code": "g", "game_title": "G", "provider": None,
           "tx_type": "BET", "amount": decimal_b64(Decimal("-12.34")), "currency": "EUR", "wallet": "real",
           "client_ip": None, "client_ua": None, "aff_code": None, "created": micros(datetime(2025, 1, 2, 3, 4, 5)),
           "server_node": None}
    change = decode(TOPIC, env.key(9), env.value("c", None, row, lsn=4242, ts_ms=1), types=src.types, zone=src.zone)
    assert change is not None and change.op == "c" and change.position == 4242 and change.key == {"id": 9}
    assert change.after is not None and change.after["amount"] == Decimal("-12.34")
    assert change.after["created"] == datetime(2025, 1, 2, 2, 4, 5)  # Malta wall clock to UTC


def test_replay_resend_sends_the_replayed_sessions_again(client, materializer: Materializer, store: Store, clock,
                                                         src: Source) -> None:
    """``feedstore replay --resend``: the sessions of the replayed events (only those) are
    in the next window again, unchanged; a plain replay moves nothing."""
    from materializer.replay import rewind

    tp = (TOPIC, 0)
    log = [src.insert(i, sid, "BET", str(i), OWN) for i, sid in ((1, "a"), (2, "b"), (3, "c"))]
    at_hour(clock, 0)
    materializer.apply(log, {tp: 3})
    before = pull(client, *hour(0))
    at_hour(clock, 1)
    rewind(store, {tp: 0}, {tp: 3}, resend=False)
    materializer.apply(log, {tp: 3})
    assert pull(client, *hour(1)) == {}
    rewind(store, {tp: 1}, {tp: 3}, resend=True)
    materializer.reload_resend()
    at_hour(clock, 2)
    result = materializer.apply(log[1:], {tp: 3})
    again = pull(client, *hour(2))
    assert set(again) == {"b", "c"} and result.changed["casino_activity"] == 2
    assert {k: agg(v) for k, v in again.items()} == {k: agg(before[k]) for k in ("b", "c")}
    assert set(pull(client, *hour(0))) == {"a", "b", "c"}  # the windows they were in keep them


def test_replayed_invalid_values_are_counted_once(materializer: Materializer, store: Store, clock,
                                                  src: Source) -> None:
    bad = src.insert(1, "s", "BET", "1", OWN, client_ip="not-an-ip")
    at_hour(clock, 0)
    materializer.apply([bad], {})
    materializer.apply([bad], {})
    with store.cursor() as cur:
        assert cur.execute("SELECT count FROM fs_field_errors WHERE feed = 'casino_activity'").fetchall() == [(1,)]


def test_online_rebuild_keeps_the_live_windows_of_unchanged_sessions(tmp_path: Path, mapping: Mapping,
                                                                     src: Source) -> None:
    """The same for ``POST /admin/rebuild`` (materializer/rebuild.adopt), which copies a
    rebuilt file's rows into the live store between two batches."""
    from materializer.rebuild import adopt

    events = [src.insert(1, "same", "BET", "5", OWN), src.insert(2, "fixed", "BET", "1", OWN)]
    clock = ManualClock(T0 + timedelta(hours=5))
    rebuilt = Store(tmp_path / "rebuilt.duckdb", mapping, clock=clock)
    Materializer(rebuilt).apply(events, {})
    rebuilt.close()
    clock.now = T0
    live = Store(tmp_path / "live.duckdb", mapping, clock=clock)
    try:
        Materializer(live).apply(events[:1], {})
        clock.now = T0 + timedelta(hours=1)
        Materializer(live).apply(events[1:], {})
        with live.cursor() as cur:  # what a mapping bug stored for one session
            cur.execute("UPDATE feed_casino_activity SET game_name = 'bug' WHERE session_id = 'fixed'")
        clock.now = T0 + timedelta(hours=6)
        adopt(live, tmp_path / "rebuilt.duckdb")
        client = falcon.testing.TestClient(create_app(live, barrier_timeout=0.2))
        assert set(pull(client, *hour(0))) == {"same"}
        assert pull(client, *hour(1)) == {}
        assert set(pull(client, *hour(6))) == {"fixed"}
        assert pull(client, *hour(6))["fixed"]["game_name"] == "Lucky Lion"
        assert pull(client, *hour(5)) == {}
    finally:
        live.close()
