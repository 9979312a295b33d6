"""casino_activity end to end: legacy Postgres -> real Debezium -> tansu -> feedstore serve -> HTTP.

Actions are written to the operator's ``game_actions`` table in phases separated by
whole-second window bounds, so the test knows in which window each action's stamp lies
without reading the store. The rows each window must return are computed from the
source table with plain SQL (psycopg), then compared with the pulls. The replay checks
re-produce the topic's records into the broker, and re-seek a restarted service to
offset 0, and the pulls must not change.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import duckdb
import orjson
import psycopg
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from bench.casino import key_schema, value_schema
from deploy.localstack.demo import serve_process
from deploy.localstack.procs import port_open, stop, wait_until
from deploy.localstack.stack import LocalStack
from deploy.localstack.workload import Workload
from materializer.stamp import utc_now
from tests.fix_stack import Served

pytestmark = pytest.mark.stack

TOPIC = "spacevegas.public.game_actions"
FEED = "casino_activity"

# The spec's step 3, from the source table: SpaceVegas counts a ROLLBACK row as one
# cancelled bet of its amount (deploy/mappings/spacevegas.yaml), times are Malta wall clock.
EXPECTED = """
SELECT round_ref::text AS session_id, min(user_id)::text AS player_id,
       (count(*) FILTER (WHERE tx_type = 'BET') - count(*) FILTER (WHERE tx_type = 'ROLLBACK'))::int AS bet_count,
       (count(*) FILTER (WHERE tx_type = 'WIN'))::int AS win_count,
       coalesce(sum(amount) FILTER (WHERE tx_type = 'BET'), 0)
         - coalesce(sum(amount) FILTER (WHERE tx_type = 'ROLLBACK'), 0) AS bet_amount,
       coalesce(sum(amount) FILTER (WHERE tx_type = 'WIN'), 0) AS win_amount,
       to_char(min(created) AT TIME ZONE 'Europe/Malta' AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS created_at,
       to_char(max(created) AT TIME ZONE 'Europe/Malta' AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS updated_at,
       min(game_title) AS game_name, min(provider) AS game_vendor, min(currency) AS currency
FROM game_actions WHERE round_ref = ANY(%s::uuid[]) GROUP BY round_ref
"""
COMPARED = ("session_id", "player_id", "bet_count", "win_count", "bet_amount", "win_amount", "created_at",
            "updated_at", "game_name", "game_vendor", "currency")


def expected(pg: psycopg.Connection[Any], sessions: list[str]) -> dict[str, dict[str, Any]]:
    cur = pg.cursor(row_factory=psycopg.rows.dict_row)
    return {r["session_id"]: _norm(r) for r in cur.execute(EXPECTED, (sessions,)).fetchall()}


def _norm(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row[k] for k in COMPARED}
    for k in ("bet_amount", "win_amount"):
        out[k] = Decimal(str(out[k])).normalize()
    return out


def act(pg: psycopg.Connection[Any], session: str, kind: str, amount: str, *, user: int = 41,
        created: str = "now() AT TIME ZONE 'Europe/Malta'") -> int:
    row = pg.execute(
        "INSERT INTO game_actions (round_ref, user_id, game_code, game_title, provider, tx_type, amount, currency, "
        "wallet, client_ip, client_ua, aff_code, created) VALUES (%s, %s, 'pariplay-lucky-lion', 'Lucky Lion', "
        f"'PARIPLAY', %s, %s, 'EUR', 'real', '10.1.2.3', 'Mozilla/5.0 (X11; Linux)', 'spring', {created}) "
        "RETURNING id", (session, user, kind, Decimal(amount))).fetchone()
    assert row is not None
    return int(row[0])


def boundary() -> datetime:
    """The next whole second, once it has passed: a window bound the API can express."""
    t = utc_now().replace(microsecond=0) + timedelta(seconds=1)
    time.sleep(max(0.0, (t - utc_now()).total_seconds()) + 0.02)
    return t


def pulled(served: Served, start: datetime, end: datetime, mine: list[str]) -> dict[str, dict[str, Any]]:
    rows = served.pull(FEED, start, end)
    assert len({r["session_id"] for r in rows}) == len(rows), "one row per session"
    return {r["session_id"]: r for r in rows if r["session_id"] in mine}


def settle(served: Served, pg: psycopg.Connection[Any], since: datetime, mine: list[str]) -> None:
    """Wait until the API shows every session as the source table has it now."""
    def done() -> bool:
        got = pulled(served, since, utc_now() + timedelta(hours=1), mine)
        return {s: _norm(r) for s, r in got.items()} == expected(pg, mine)
    served.wait_for(done, timeout=60)


@pytest.fixture
def sessions() -> list[str]:
    return [str(uuid.uuid4()) for _ in range(3)]


def test_sessions_across_windows_late_actions_rollbacks_and_replays(
        stack: LocalStack, pg: psycopg.Connection[Any], served: Served, sessions: list[str]) -> None:
    s1, s2, s3 = sessions
    served.wait_for(lambda: served.get("/health")[0] == 200)
    t0 = boundary()
    # Window 1: s1 bets and wins, s2 bets.
    bet1 = act(pg, s1, "BET", "5.00")
    win1 = act(pg, s1, "WIN", "7.50")
    bet2 = act(pg, s2, "BET", "1.00", user=42)
    settle(served, pg, t0, [s1, s2])
    t1 = boundary()
    # Window 2: s1's bet is rolled back (a ROLLBACK row); s3 gets a late action, whose
    # own time is three days old, then a bet.
    act(pg, s1, "ROLLBACK", "5.00")
    act(pg, s3, "BET", "2.00", user=43, created="now() AT TIME ZONE 'Europe/Malta' - interval '3 days'")
    act(pg, s3, "BET", "4.00", user=43)
    settle(served, pg, t0, sessions)
    t2 = boundary()
    # Window 3: s1 bets again and its win is deleted (cancelled); s2's bet is corrected;
    # a column no feed carries changes on s3 (must not move it).
    act(pg, s1, "BET", "3.00")
    pg.execute("DELETE FROM game_actions WHERE id = %s", (win1,))
    pg.execute("UPDATE game_actions SET amount = 4.00 WHERE id = %s", (bet2,))
    pg.execute("UPDATE game_actions SET server_node = 'node-9' WHERE round_ref = %s", (s3,))
    settle(served, pg, t0, sessions)
    t3 = boundary()
    assert bet1 and bet2

    windows = {"w1": (t0, t1), "w2": (t1, t2), "w3": (t2, t3)}
    landed = {"w1": {s1, s2}, "w2": {s1, s3}, "w3": {s1, s2}}  # where each session had an action stamped

    def check_windows() -> dict[str, dict[str, dict[str, Any]]]:
        now = expected(pg, sessions)
        got = {}
        for name, (start, end) in windows.items():
            rows = pulled(served, start, end, sessions)
            assert set(rows) == landed[name], name
            for sid, row in rows.items():
                assert _norm(row) == now[sid], (name, sid)  # aggregated over all actions known now
            got[name] = rows
        last = {s1: windows["w3"], s2: windows["w3"], s3: windows["w2"]}  # the window of each one's last change
        for sid, (start, end) in last.items():
            stamp = datetime.fromisoformat(got["w2" if sid == s3 else "w1"][sid]["modified_at"])
            assert start <= stamp < end, sid
        assert pulled(served, t3, t3 + timedelta(minutes=5), sessions) == {}
        return got

    first = check_windows()
    assert first["w2"][s3]["created_at"] < first["w2"][s3]["updated_at"]  # the late action is the first
    assert (first["w3"][s1]["bet_count"], first["w3"][s1]["win_count"]) == (1, 0)

    # Replays: the whole partition set re-produced (duplicates at new offsets), then a
    # restarted service re-seeked to offset 0. Nothing may move or double-count.
    records = read_topic(stack.bootstrap)
    real = next(r for r in records if r.value)
    # bench/casino.py synthesizes these envelopes for its ingest figures: same schema as Debezium's.
    assert orjson.loads(real.value)["schema"] == value_schema("spacevegas")
    assert orjson.loads(real.key)["schema"] == key_schema("spacevegas")
    produce(stack.bootstrap, [(r.partition, r.key, r.value) for r in records])
    wait_for_sentinels(served, stack.bootstrap, records, t3)
    assert check_windows() == first

    port = int(served.url.rsplit(":", 1)[1])
    db = served.log.parent / "feedstore.duckdb"
    stop(served.proc, signal.SIGTERM, timeout=20)
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE fs_offsets SET next_offset = 0 WHERE topic = ?", [TOPIC])
    served.proc = serve_process(stack, port, db, log_format="json")
    wait_until(lambda: port_open(port), timeout=60, what="feedstore serve", log=served.log, proc=served.proc)
    wait_for_sentinels(served, stack.bootstrap, records, t3)
    assert check_windows() == first


def test_workload_casino_steps_match_the_source(stack: LocalStack, pg: psycopg.Connection[Any],
                                                served: Served) -> None:
    """The demo's workload (deploy/localstack/workload.py): its sessions as plain SQL sees them."""
    w = Workload(stack.dsn, seed=11)
    start = utc_now() - timedelta(seconds=1)
    with pg.cursor() as cur:
        w.seed_reference_data(cur)
        for step in [w.play] * 30 + [w.roll_back_bet, w.correct_action, w.touch_action] * 3 + [w.play] * 10:
            step(cur)
    mine = [s for s, _, _ in w.sessions]
    settle(served, pg, start, mine)
    assert len(mine) >= 2


# --------------------------------------------------------------------------- Kafka helpers

def read_topic(bootstrap: str, timeout: float = 30) -> list[ConsumerRecord]:
    """Every record of the actions topic, all partitions, up to the high-water marks."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        parts = consumer.partitions_for_topic(TOPIC) or set()
        tps = [TopicPartition(TOPIC, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout
        quiet = 0
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300)
            for msgs in batch.values():
                out.extend(msgs)
            done = all(consumer.highwater(tp) is not None and consumer.position(tp) >= (consumer.highwater(tp) or 0)
                       for tp in tps)
            quiet = quiet + 1 if not batch else 0
            if done and quiet >= 2:
                return out
        raise AssertionError(f"could not read {TOPIC} to its end in {timeout}s ({len(out)} records)")
    finally:
        consumer.close()


def produce(bootstrap: str, records: Sequence[tuple[int, bytes | None, bytes | None]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        for partition, key, value in records:
            producer.send(TOPIC, key=key, value=value, partition=partition)
        producer.flush(30)
    finally:
        producer.close()


def wait_for_sentinels(served: Served, bootstrap: str, records: list[ConsumerRecord], since: datetime) -> None:
    """Put one new action at the end of every partition and wait until all are served:
    everything before them in their partition has been consumed by then."""
    template = next(r for r in records if r.value and orjson.loads(r.value)["payload"]["op"] == "c")
    value, key = orjson.loads(template.value), orjson.loads(template.key)
    sentinels: dict[str, int] = {}
    out = []
    for partition in sorted({r.partition for r in records} | {0, 1, 2, 3}):
        sid, ident = str(uuid.uuid4()), 10**12 + int(time.time() * 1000) % 10**9 * 10 + partition
        value["payload"]["after"] |= {"id": ident, "round_ref": sid}
        key["payload"]["id"] = ident
        out.append((partition, orjson.dumps(key), orjson.dumps(value)))
        sentinels[sid] = partition
    produce(bootstrap, out)

    def seen() -> bool:
        rows = served.pull(FEED, since, utc_now() + timedelta(hours=1))
        return set(sentinels) <= {r["session_id"] for r in rows}
    served.wait_for(seen, timeout=60)
