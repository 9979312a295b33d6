"""``feedstore replay`` and ``rebuild`` through the real CLI against the real stack.

Offline: a DuckDB file filled from the real topics, the CLI run as a subprocess on it.
Online: a real ``feedstore serve`` with an admin token, rewound while a writer keeps
changing the source, then compared with the source row by row.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from cdc.consumer import kafka_consumer
from cdc.replay import gather
from deploy.localstack.demo import MAPPING, PROJECT
from deploy.localstack.procs import free_port, port_open, spawn, stop, wait_until
from deploy.localstack.stack import LocalStack
from materializer.apply import Materializer
from materializer.mapping import load_mapping
from materializer.rebuild import catch_up, feed_rows
from materializer.store import Store
from tests.fix_stack import Served

pytestmark = pytest.mark.stack

USERS = "spacevegas.public.users"
TOKEN = "t" * 40


def env_for(stack: LocalStack, db: Path, **more: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"FEEDSTORE_DB": str(db), "FEEDSTORE_MAPPING": str(MAPPING),
                "FEEDSTORE_KAFKA_BOOTSTRAP": stack.bootstrap, "PYTHONPATH": str(PROJECT),
                "FEEDSTORE_LOG_FORMAT": "json"}, **more)
    return env


def cli(stack: LocalStack, db: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "feedstore.cli", *argv], env=env_for(stack, db, **env),
                          capture_output=True, text=True, timeout=120, check=False)


def ok_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return doc


def fill(stack: LocalStack, db: Path, ids: list[int], check: str = "true") -> None:
    """Read the topics into ``db`` until the players feed has ``ids`` (and ``check`` holds)."""
    mapping = load_mapping(MAPPING)
    store = Store(db, mapping)
    try:
        mat = Materializer(store)
        deadline = time.monotonic() + 30
        while True:
            client = kafka_consumer(stack.bootstrap, "test-replay-fill")
            reader = kafka_consumer(stack.bootstrap, "test-replay-fill")
            try:
                ends = {tp: b.end for tp, b in gather(client, mapping.topics).items()}
                catch_up(mat, reader, mapping.topics, ends)
            finally:
                client.close()
                reader.close()
            with store.cursor() as cur:
                have = cur.execute(f"SELECT count(*) FROM feed_players WHERE CAST(id AS BIGINT) IN "
                                   f"({','.join(map(str, ids))}) AND ({check})").fetchall()[0][0]
            if have == len(ids):
                return
            assert time.monotonic() < deadline, f"players {ids} not in the store after 30 s"
            time.sleep(0.3)
    finally:
        store.close()


def snapshot(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    with duckdb.connect(str(db), read_only=True) as conn:
        names = [r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables "
                                            "WHERE table_name LIKE 'feed_%'").fetchall()]
        return {n: feed_rows(conn, n) for n in sorted(names)}


def offsets(db: Path) -> dict[tuple[str, int], int]:
    with duckdb.connect(str(db), read_only=True) as conn:
        return {(t, p): o for t, p, o in conn.execute("SELECT * EXCLUDE (updated_at) FROM fs_offsets").fetchall()}


def stamps(db: Path) -> dict[str, datetime]:
    with duckdb.connect(str(db), read_only=True) as conn:
        return dict(conn.execute("SELECT id, modified_at FROM feed_players").fetchall())


def boundary() -> str:
    """The next whole UTC second, after waiting for it: events before have earlier timestamps."""
    nxt = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    time.sleep((nxt - datetime.now(UTC)).total_seconds() + 0.05)
    return f"{nxt:%Y-%m-%d %H:%M:%S}"


def insert_users(pg: psycopg.Connection[Any], n: int, tag: str) -> list[int]:
    return [pg.execute("INSERT INTO users (fname, created) VALUES (%s, now()) RETURNING user_id",
                       (f"{tag}{i}",)).fetchone()[0] for i in range(n)]


def test_offline_replay_rereads_the_plan_and_changes_nothing_then_resend(
        stack: LocalStack, pg: psycopg.Connection[Any], tmp_path: Path) -> None:
    db = tmp_path / "feedstore.duckdb"
    first = insert_users(pg, 4, "off")
    fill(stack, db, first)
    t1 = boundary()
    pg.execute("UPDATE users SET fname = fname || '-x' WHERE user_id = ANY(%s)", (first[:3],))
    later = insert_users(pg, 2, "late")
    fill(stack, db, first + later, "first_name LIKE '%-x' OR first_name LIKE 'late%' OR id = "
                                   f"'{first[3]}'")
    before, at = snapshot(db), offsets(db)

    plan = ok_json(cli(stack, db, "replay", "--to-datetime", t1, "--json"))  # dry run
    users = [r for r in plan["rows"] if r["topic"] == USERS]
    assert sum(r["events"] for r in users) == 5  # 3 updates + 2 inserts after t1, nothing else
    assert plan["events"] == 5
    assert offsets(db) == at  # a dry run changes nothing

    done = ok_json(cli(stack, db, "replay", "--to-datetime", t1, "--execute", "--run-now", "--json"))
    assert done["read"] == done["applied"] == plan["events"]
    assert snapshot(db) == before  # same contents, same modified_at
    assert offsets(db) == at

    # Changes the feed cannot see: no bump; then --resend re-stamps exactly those rows.
    t2 = boundary()
    pg.execute("UPDATE users SET login_count = login_count + 1 WHERE user_id = ANY(%s)", (first[:2],))
    time.sleep(1.0)
    fill(stack, db, first)
    assert snapshot(db) == before
    old = stamps(db)
    resend = ok_json(cli(stack, db, "replay", "--to-datetime", t2, "--execute", "--run-now", "--resend", "--json"))
    assert resend["read"] == resend["applied"] == 2
    new = stamps(db)
    moved = {k for k in new if new[k] != old[k]}
    assert moved == {str(i) for i in first[:2]}
    assert min(new[k] for k in moved) > max(old.values())  # they land in the next window
    with duckdb.connect(str(db), read_only=True) as conn:  # the resend range is used up
        assert conn.execute("SELECT count(*) FROM fs_meta WHERE name = 'resend_until'").fetchall()[0][0] == 0


def test_bad_arguments_one_line_exit_2_nothing_changed(stack: LocalStack, pg: psycopg.Connection[Any],
                                                       tmp_path: Path) -> None:
    db = tmp_path / "feedstore.duckdb"
    fill(stack, db, insert_users(pg, 1, "bad"))
    at, rows = offsets(db), snapshot(db)
    future = f"{datetime.now(UTC) + timedelta(hours=1):%Y-%m-%d %H:%M:%S}"
    cases = {
        "not a mapped topic": ["--topic", "spacevegas.public.nope", "--to-earliest"],
        "in the future": ["--to-datetime", future],
        "beyond the end": ["--topic", f"{USERS}:0", "--to-offset", "99999999"],
        "--by-duration": ["--by-duration", "P1M"],
    }
    for why, argv in cases.items():
        proc = cli(stack, db, "replay", *argv, "--execute", "--run-now")
        assert proc.returncode == 2, (why, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and why in lines[0] and "Traceback" not in proc.stderr, (why, proc.stderr)
    assert offsets(db) == at and snapshot(db) == rows


def test_rebuild_equals_the_live_store(stack: LocalStack, pg: psycopg.Connection[Any], tmp_path: Path) -> None:
    db = tmp_path / "feedstore.duckdb"
    ids = insert_users(pg, 3, "rb")
    pg.execute("UPDATE users SET fname = 'rb-upd' WHERE user_id = %s", (ids[0],))
    fill(stack, db, ids, f"id <> '{ids[0]}' OR first_name = 'rb-upd'")
    # The stack is shared: earlier tests' events may still be arriving. The rebuild reads
    # to the end of the topics, so let the live store reach a quiet end first.
    before: dict[tuple[str, int], int] = {}
    while offsets(db) != before:
        before = offsets(db)
        time.sleep(1)
        fill(stack, db, ids)
    with duckdb.connect(str(db)) as conn:  # what a mapping bug would have stored for one row
        conn.execute("UPDATE feed_players SET first_name = 'bug' WHERE id = ?", [str(ids[0])])
    live = snapshot(db)
    served_until = max(stamps(db).values())
    built = ok_json(cli(stack, db, "rebuild", "--json"))  # the live file is not opened
    assert built["read"] > 0 and Path(built["file"]).exists()
    swapped = ok_json(cli(stack, db, "rebuild", "--swap", "--json"))
    assert Path(swapped["backup"]).exists() and not Path(built["file"]).exists()
    rebuilt = snapshot(db)
    key = str(ids[0])
    assert {k: v for k, v in rebuilt.items() if k != "feed_players"} == {
        k: v for k, v in live.items() if k != "feed_players"}  # same rows, live modified_at carried over
    assert [r for r in rebuilt["feed_players"] if r[0] != key] == [r for r in live["feed_players"] if r[0] != key]
    fixed = next(r for r in rebuilt["feed_players"] if r[0] == key)
    assert fixed[1] == "rb-upd" and stamps(db)[key] > served_until  # the correction reaches the next window


@pytest.fixture
def admin_served(stack: LocalStack, tmp_path: Path) -> Iterator[tuple[Served, Path]]:
    port = free_port()
    db = tmp_path / "feedstore.duckdb"
    log = tmp_path / "serve.log"
    proc = spawn([sys.executable, "-m", "feedstore.cli", "serve"], log=log,
                 env=env_for(stack, db, FEEDSTORE_BIND=f"127.0.0.1:{port}", FEEDSTORE_ADMIN_TOKEN=TOKEN))
    wait_until(lambda: port_open(port), timeout=60, what="feedstore serve", log=log, proc=proc)
    yield Served(f"http://127.0.0.1:{port}", proc, log), db
    stop(proc, signal.SIGTERM, timeout=20)
    assert "Traceback" not in log.read_text()


def test_online_replay_during_live_load_loses_and_duplicates_nothing(
        stack: LocalStack, pg: psycopg.Connection[Any], admin_served: tuple[Served, Path]) -> None:
    served, db = admin_served
    far_past, far = datetime(2000, 1, 1), datetime(2100, 1, 1)
    t0 = boundary()
    quiet = insert_users(pg, 5, "on")
    served.wait_for(lambda: {str(i) for i in quiet} <= {r["id"] for r in served.pull("players", far_past, far)})
    kept = {r["id"]: r for r in served.pull("players", far_past, far) if int(r["id"]) in quiet}

    # Wrong token and a held file: clear one-line refusals.
    wrong = cli(stack, db, "replay", "--online", "--url", served.url, "--to-datetime", t0, "--execute",
                FEEDSTORE_ADMIN_TOKEN="x" * 40)
    assert wrong.returncode == 2 and "HTTP 401" in wrong.stderr
    held = cli(stack, db, "replay", "--to-datetime", t0)
    assert held.returncode == 2 and "--online" in held.stderr

    stopping = threading.Event()
    touched: list[int] = []

    def load() -> None:
        with psycopg.connect(stack.dsn, autocommit=True) as conn:
            n = 0
            while not stopping.is_set():
                uid = conn.execute("INSERT INTO users (fname, created) VALUES (%s, now()) RETURNING user_id",
                                   (f"load{n}",)).fetchone()[0]
                touched.append(uid)
                if n % 3 == 0 and touched:
                    conn.execute("UPDATE users SET fname = fname || '+' WHERE user_id = %s", (touched[n // 2],))
                n += 1
                time.sleep(0.01)

    writer = threading.Thread(target=load)
    writer.start()
    try:
        time.sleep(1.0)
        done = ok_json(cli(stack, db, "replay", "--online", "--url", served.url, "--to-datetime", t0,
                           "--execute", "--json", FEEDSTORE_ADMIN_TOKEN=TOKEN))
        time.sleep(0.5)
    finally:
        stopping.set()
        writer.join(10)
    assert done["applied"] >= 5 and done["plan"]["events"] <= done["applied"]

    source = dict(pg.execute("SELECT CAST(user_id AS VARCHAR), fname FROM users WHERE user_id = ANY(%s)",
                             (quiet + touched,)).fetchall())

    def caught_up() -> bool:
        rows = [r for r in served.pull("players", far_past, far) if r["id"] in source]
        return {r["id"]: r["first_name"] for r in rows} == source

    served.wait_for(caught_up)
    rows = [r for r in served.pull("players", far_past, far) if r["id"] in source]
    assert len(rows) == len(source)  # each once: nothing lost, nothing duplicated
    assert {r["id"]: r for r in rows if int(r["id"]) in quiet} == kept  # replayed, unchanged, not re-stamped


def test_online_rebuild_installs_an_equal_store_while_serving(
        stack: LocalStack, pg: psycopg.Connection[Any], admin_served: tuple[Served, Path]) -> None:
    served, db = admin_served
    far_past, far = datetime(2000, 1, 1), datetime(2100, 1, 1)
    ids = insert_users(pg, 3, "orb")
    pg.execute("UPDATE users SET fname = 'orb-upd' WHERE user_id = %s", (ids[0],))
    served.wait_for(lambda: any(r["first_name"] == "orb-upd" for r in served.pull("players", far_past, far)))
    before = {f: served.pull(f, far_past, far) for f in ("players", "contacts")}

    done = ok_json(cli(stack, db, "rebuild", "--online", "--url", served.url, "--json", FEEDSTORE_ADMIN_TOKEN=TOKEN))
    assert done["state"] == "done" and done["read"] > 0
    assert set(done["restamped"].values()) == {0}  # every rebuilt row equals the live one
    assert {f: served.pull(f, far_past, far) for f in before} == before  # contents and modified_at
    assert not Path(done["file"]).exists()

    late = insert_users(pg, 1, "after-rebuild")[0]  # the consumer goes on from the rebuilt offsets
    served.wait_for(lambda: any(r["id"] == str(late) for r in served.pull("players", far_past, far)))
    assert len(served.pull("players", far_past, far)) == len(before["players"]) + 1
