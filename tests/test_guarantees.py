"""Decisions 3 and 4 on a real DuckDB file: old, duplicate and invisible changes don't move
rows, and the offsets are exactly as durable as the rows they produced."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from cdc.records import Record
from materializer.apply import Materializer
from materializer.mapping import Mapping
from materializer.store import Store
from tests.fix_store import Events, ManualClock

TOPIC = "spacevegas.public.users"


def player(store: Store, player_id: int) -> dict[str, Any] | None:
    with store.cursor() as cur:
        cur.execute("SELECT * FROM feed_players WHERE id = ?", [str(player_id)])
        row = cur.fetchone()
        names = [d[0] for d in cur.description or ()]
    return None if row is None else dict(zip(names, row, strict=True))


def test_an_older_event_arriving_after_a_newer_one_is_skipped(materializer: Materializer, store: Store,
                                                                events: Events, clock: ManualClock) -> None:
    old = events.record("u", None, events.user(1, city="Old"), lsn=2000)
    new = events.record("u", None, events.user(1, city="New"), lsn=3000)
    materializer.apply([new], {})
    stamped = player(store, 1)
    clock.advance(seconds=5)
    result = materializer.apply([old], {})  # e.g. from another partition, or a re-sent batch
    assert result.changed["players"] == 0
    assert player(store, 1) == stamped
    assert stamped is not None and stamped["city"] == "New"


def test_within_a_batch_the_highest_position_wins_whatever_the_order(materializer: Materializer, store: Store,
                                                                      events: Events) -> None:
    late = events.record("u", None, events.user(1, city="Newest"), lsn=5000)
    early = events.record("u", None, events.user(1, city="Older"), lsn=4000)
    materializer.apply([late, early], {})
    row = player(store, 1)
    assert row is not None and row["city"] == "Newest"


def test_a_replayed_batch_changes_nothing_and_moves_no_stamp(materializer: Materializer, store: Store,
                                                            events: Events, clock: ManualClock) -> None:
    batch = [events.record("c", None, events.user(i)) for i in range(1, 6)]
    batch.append(events.record("u", None, events.user(2, city="Rabat")))
    first = materializer.apply(batch, {(TOPIC, 0): 6})
    before = [player(store, i) for i in range(1, 6)]
    clock.advance(minutes=1)
    again = materializer.apply(batch, {(TOPIC, 0): 6})  # Debezium re-sent, or offsets replayed
    assert first.changed["players"] == 5
    assert again.changed["players"] == 0
    assert [player(store, i) for i in range(1, 6)] == before


def test_a_change_the_feed_does_not_carry_moves_no_stamp(materializer: Materializer, store: Store,
                                                        events: Events, clock: ManualClock) -> None:
    materializer.apply([events.record("c", None, events.user(7))], {})
    stamped = player(store, 7)
    clock.advance(seconds=30)
    result = materializer.apply([events.record("u", None, events.user(7, login_count=42))], {})
    assert result.changed["players"] == 0
    assert player(store, 7) == stamped


def test_a_real_change_moves_the_stamp_to_the_batch_stamp(materializer: Materializer, store: Store,
                                                         events: Events, clock: ManualClock) -> None:
    materializer.apply([events.record("c", None, events.user(8))], {})
    clock.advance(seconds=30)
    result = materializer.apply([events.record("u", None, events.user(8, state=1))], {})
    row = player(store, 8)
    assert result.stamp is not None and row is not None
    assert row["modified_at"] == result.stamp
    assert (row["is_blocked"], row["status"]) == (True, "Blocked")


def test_delete_then_reinsert_follows_source_positions(materializer: Materializer, store: Store,
                                                      events: Events) -> None:
    materializer.apply([events.record("c", None, events.user(9))], {})
    gone = events.record("d", {"user_id": 9}, None)
    back = events.record("c", None, events.user(9, city="Gozo"))
    materializer.apply([gone], {})
    deleted = player(store, 9)
    materializer.apply([back, gone], {})  # the older delete re-sent after the re-insert
    row = player(store, 9)
    assert deleted is not None and deleted["status"] == "Deleted"
    assert row is not None and (row["status"], row["city"]) == ("Normal", "Gozo")


def test_offsets_are_stored_with_the_rows_and_read_back_after_a_restart(
        tmp_path: Path, mapping: Mapping, events: Events, clock: ManualClock) -> None:
    path = tmp_path / "s.duckdb"
    store = Store(path, mapping, clock=clock)
    batch = [events.record("c", None, events.user(i)) for i in range(3)]
    Materializer(store).apply(batch, {(TOPIC, 0): 3, (TOPIC, 2): 17})
    store.close()
    store = Store(path, mapping, clock=clock)
    try:
        assert store.offsets() == {(TOPIC, 0): 3, (TOPIC, 2): 17}
        assert store.row_counts()["players"] == 3
    finally:
        store.close()


def test_a_batch_quarantines_the_bad_event_and_stores_the_good_ones_and_the_offsets(
        materializer: Materializer, store: Store, events: Events) -> None:
    good = events.record("c", None, events.user(21))
    bad = Record(TOPIC, 0, 99, b'{"user_id": 22}', b"\xff\xfe not json")
    result = materializer.apply([good, bad], {(TOPIC, 0): 100})
    assert result.quarantined == 1
    assert store.offsets() == {(TOPIC, 0): 100}  # the line moved past it ...
    with store.cursor() as cur:  # ... and kept it
        kept = cur.execute("SELECT kafka_offset, value FROM fs_quarantine").fetchall()
    assert kept == [(99, b"\xff\xfe not json")]
    assert player(store, 21) is not None


def test_stamps_of_successive_batches_are_distinct_even_on_a_frozen_clock(
        materializer: Materializer, events: Events) -> None:
    stamps = [materializer.apply([events.record("u", None, events.user(1, city=f"c{i}"))], {}).stamp
              for i in range(5)]
    assert len(set(stamps)) == 5
    assert stamps == sorted(stamps)  # type: ignore[type-var]
    assert stamps[0] == datetime(2025, 3, 1, 12)


def test_a_batch_spanning_several_tables_is_stored_whatever_ran_before(materializer: Materializer, store: Store,
                                                                       events: Events) -> None:
    """Regression: a count left half-fetched by one table's statements made the next table's
    staging fail ("connection has an unfinished result"), the same way on every retry, so
    the line stopped for good. test_faults found it: Debezium re-sent a game action (no
    change, so the casino step ended on its count) in a batch with other tables."""
    action = {"id": 1, "round_ref": "6d13991f-f5ec-311a-9800-e18ad5df19e7", "user_id": 31, "game_code": "LL5",
              "game_title": "Lucky Lion", "provider": "PARIPLAY", "tx_type": "BET", "amount": "2.50",
              "currency": "EUR", "wallet": "real", "client_ip": "10.0.0.9", "client_ua": "Mozilla/5.0",
              "aff_code": None, "created": 1_700_000_000_000_000, "server_node": "n1"}
    first = events.record("c", None, action, table="game_actions", key=("id",))
    materializer.apply([first], {})
    again = events.record("c", None, action, lsn=first_lsn(first), table="game_actions", key=("id",))
    result = materializer.apply([again, events.record("c", None, events.user(31))], {})
    assert result.changed["players"] == 1 and not result.changed.get("casino_activity")


def first_lsn(rec: Record) -> int:
    import orjson

    return int(orjson.loads(rec.value or b"")["source"]["lsn"])


def test_scalar_leaves_the_cursor_free_for_the_next_statement(store: Store) -> None:
    import pyarrow as pa

    from materializer.store import scalar

    with store.writer() as cur:
        assert scalar(cur, "SELECT count(*) FROM fs_offsets") == 0
        cur.register("fs_probe", pa.table({"x": [1]}))  # raised ResourceInUseException before
        assert scalar(cur, "SELECT sum(x) FROM fs_probe") == 1
