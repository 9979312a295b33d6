"""Peer: what an operator would try instead, a trigger-kept ``modified_at`` in their own Postgres.

The do-it-yourself alternative to Feedstore: add a ``modified_at`` column to the table,
a ``BEFORE INSERT OR UPDATE`` trigger that sets it to ``clock_timestamp()``, and an
index on it; InTarget's pull becomes ``COPY (SELECT <feed columns> ... WHERE modified_at
>= from AND modified_at < to ORDER BY modified_at) TO STDOUT`` through psycopg. We
measure on the same data, in the local stack's Postgres (the operator's database):

- write overhead: the same update workload on the same table without, then with, the
  trigger and index: single-row autocommit updates by primary key from a client (what
  an application does; client round trips dilute the difference), the same statements
  in a server-side PL/pgSQL loop (the database's own cost per update) and one bulk
  ``UPDATE``; ratio of times and of WAL bytes. Runs alternate (without, with, without,
  with) and the best of each is kept;
- export: rows/s of that COPY for a window of the same size as Feedstore's, against
  Feedstore's HTTP CSV (a real ``feedstore serve``) and DuckDB's ``COPY (window) TO``.

This peer does not give what Feedstore gives (no stamps for legacy tables whose writes
bypass the trigger's semantics, no completeness barrier for long transactions: a
transaction that commits late carries an old ``clock_timestamp()`` and lands in a
window that was already pulled); the benchmark only prices its costs.
"""

from __future__ import annotations

import random
import signal
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from bench.capture import PROFILE_SQL
from bench.common import MAPPING, Context, Report, bar, in_child, ratio, say
from bench.scale import fill, window_of

TABLE = "peer_users"
BASE = datetime(2024, 1, 1)

_FILL = f"""
INSERT INTO {TABLE} (user_id, fname, lname, sex, country_name, city, last_ip, lang, tz, dob, created,
                     affiliate_code, reg_source, reg_ua, state, no_marketing, email, phone, sms_optin, modified_at)
SELECT g,
{PROFILE_SQL}       timestamp '2020-01-01' + make_interval(secs => (g %% 100000000)::int),
       CASE WHEN g %% 3 = 0 THEN 'aff42' END,
       (ARRAY['Google','Tik-Tok','Email', NULL])[1 + g %% 4],
       'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0',
       (g %% 3)::smallint, g %% 11 = 0, 'user' || g || '@example.com', '+356 ' || (10000000 + g %% 89999999),
       g %% 5 <> 0,
       timestamptz '{BASE:%Y-%m-%d} 00:00:00+00' + g * interval '1 millisecond'
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) g
"""

# The players feed as an operator would write it by hand: the mapping's expressions in SQL.
_EXPORT = f"""
COPY (SELECT user_id AS id, fname AS first_name, lname AS last_name,
             CASE sex WHEN 'M' THEN 'male' WHEN 'F' THEN 'female' END AS gender,
             country_name AS country, city, host(last_ip) AS ip, replace(lang, '-', '_') AS locale, tz AS timezone,
             to_char(dob, 'YYYY-MM-DD') AS birthday,
             to_char(created AT TIME ZONE 'Europe/Malta' AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS registered_at,
             affiliate_code AS ref_code, reg_source AS traffic_source, reg_ua AS user_agent,
             to_char(modified_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS modified_at,
             state = 1 AS is_blocked,
             CASE state WHEN 0 THEN 'Normal' WHEN 1 THEN 'Blocked' WHEN 2 THEN 'Closed' END AS status,
             no_marketing AS self_excluded
      FROM {TABLE} WHERE modified_at >= %(start)s AND modified_at < %(end)s ORDER BY modified_at, user_id)
TO STDOUT (FORMAT csv, HEADER)
"""

_TRIGGER = f"""
CREATE OR REPLACE FUNCTION peer_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.modified_at := clock_timestamp(); RETURN NEW; END $$;
CREATE TRIGGER peer_touch BEFORE INSERT OR UPDATE ON {TABLE} FOR EACH ROW EXECUTE FUNCTION peer_touch();
CREATE INDEX peer_modified_at ON {TABLE} (modified_at);
"""
_UNTRIGGER = f"DROP TRIGGER IF EXISTS peer_touch ON {TABLE}; DROP INDEX IF EXISTS peer_modified_at;"
# The same single-row statements without the client: what the updates cost the database itself.
_LOOP = f"""
CREATE OR REPLACE FUNCTION peer_updates(ids bigint[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE uid bigint; n int := 0;
BEGIN
  FOREACH uid IN ARRAY ids LOOP
    UPDATE {TABLE} SET city = CASE WHEN n % 2 = 0 THEN 'Mosta' ELSE 'Sliema' END, login_count = login_count + 1
    WHERE user_id = uid;
    n := n + 1;
  END LOOP;
END $$
"""


def plan(quick: bool) -> dict[str, Any]:
    if quick:
        return {"window": 50_000, "extra": 20_000, "statements": 5_000, "bulk": 20_000, "rounds": 2}
    return {"window": 1_000_000, "extra": 200_000, "statements": 10_000, "bulk": 200_000, "rounds": 2}


def setup(dsn: str, rows: int) -> float:
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(f"CREATE TABLE {TABLE} (LIKE users INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)")
        conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN modified_at timestamptz")
        step = 100_000
        with bar(rows, "peer: filling Postgres", "row") as b:
            for lo in range(1, rows + 1, step):
                hi = min(rows, lo + step - 1)
                conn.execute(_FILL, {"lo": lo, "hi": hi})
                b.update(hi - lo + 1)
        conn.execute(f"VACUUM (ANALYZE) {TABLE}")
        conn.execute(_LOOP)
    return time.perf_counter() - started


def _wal(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
    return int(row[0]) if row else 0


def workload(dsn: str, ids: list[int], bulk: tuple[int, int]) -> dict[str, float]:
    """Single-row updates of ``ids`` (autocommit from this client, then the same statements in a
    server-side loop, free of client round trips), then one UPDATE of the id range ``bulk``."""
    out: dict[str, float] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"VACUUM {TABLE}")
        conn.execute("CHECKPOINT")
        wal = _wal(conn)
        started = time.perf_counter()
        with conn.cursor() as cur:
            for n, uid in enumerate(ids):
                cur.execute(f"UPDATE {TABLE} SET city = %s, login_count = login_count + 1 WHERE user_id = %s",
                            ("Sliema" if n % 2 else "Mosta", uid))
        out["oltp_secs"] = time.perf_counter() - started
        out["oltp_wal"] = _wal(conn) - wal
        started = time.perf_counter()
        conn.execute("SELECT peer_updates(%s)", (ids,))
        out["loop_secs"] = time.perf_counter() - started
        wal = _wal(conn)
        started = time.perf_counter()
        conn.execute(f"UPDATE {TABLE} SET state = CASE state WHEN 0 THEN 1 ELSE 0 END, "
                     "login_count = login_count + 1 WHERE user_id BETWEEN %s AND %s", bulk)
        out["bulk_secs"] = time.perf_counter() - started
        out["bulk_wal"] = _wal(conn) - wal
    return out


def peer_export(dsn: str, start: datetime, end: datetime) -> dict[str, Any]:
    started = time.perf_counter()
    size = lines = 0
    with psycopg.connect(dsn) as conn, conn.cursor() as cur, cur.copy(_EXPORT, {"start": start, "end": end}) as copy:
        for data in copy:
            block = bytes(data)
            size += len(block)
            lines += block.count(b"\n")
    return {"secs": time.perf_counter() - started, "rows": lines - 1, "bytes": size}


def duckdb_copy(db: str, mapping: str, rows: int, window: int) -> dict[str, Any]:
    """DuckDB's own COPY of the same window to a CSV file, in its own process."""
    from materializer.export import window_sql
    from materializer.mapping import load_mapping
    from materializer.store import Store

    start, end, _ = window_of(rows, window)
    store = Store(db, load_mapping(Path(mapping)))
    target = Path(db).with_suffix(".csv")
    try:
        sql = window_sql(store.feed("players")).replace("$start", f"TIMESTAMP '{start}'").replace(
            "$end", f"TIMESTAMP '{end}'")
        with store.cursor() as cur:
            started = time.perf_counter()
            cur.execute(f"COPY ({sql}) TO '{target}' (FORMAT csv, HEADER)")
            secs = time.perf_counter() - started
        size = target.stat().st_size
        with target.open("rb") as fh:
            lines = sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))
    finally:
        store.close()
        target.unlink(missing_ok=True)
    return {"secs": secs, "rows": lines - 1, "bytes": size}


def http_csv(url: str) -> dict[str, Any]:
    started = time.perf_counter()
    size = lines = 0
    with urllib.request.urlopen(url, timeout=600) as resp:
        for block in iter(lambda: resp.read(1 << 20), b""):
            size += len(block)
            lines += block.count(b"\n")
    return {"secs": time.perf_counter() - started, "rows": lines - 1, "bytes": size}


def feedstore_http(ctx: Context, rows: int, window: int) -> dict[str, Any]:
    """Feedstore's HTTP CSV for a same-size window: a real ``feedstore serve`` on a pre-filled store."""
    from deploy.localstack.demo import serve_process
    from deploy.localstack.procs import free_port, port_open, stop, wait_until

    work = ctx.work / "peer-feedstore"
    work.mkdir(exist_ok=True)
    db = work / "feedstore.duckdb"
    say(f"peer: pre-filling a Feedstore store with {rows:,} players rows")
    in_child(fill, str(db), str(MAPPING), rows, timeout=1800)
    say("peer: DuckDB COPY of the window")
    cp, _ = in_child(duckdb_copy, str(db), str(MAPPING), rows, window)
    port = free_port()
    proc = serve_process(ctx.stack(), port, db)
    try:
        wait_until(lambda: port_open(port), timeout=60, what="feedstore serve", log=work / "serve.log", proc=proc)
        start, end, _ = window_of(rows, window)
        url = (f"http://127.0.0.1:{port}/api/players?from={start:%Y-%m-%d+%H:%M:%S}&to={end:%Y-%m-%d+%H:%M:%S}"
               "&format=csv")
        say("peer: Feedstore HTTP CSV of the window")
        http_csv(url.replace(f"to={end:%Y-%m-%d+%H:%M:%S}", f"to={start + timedelta(seconds=1):%Y-%m-%d+%H:%M:%S}"))
        http = http_csv(url)
    finally:
        stop(proc, signal.SIGTERM, timeout=20)
    return {"copy": cp, "http": http}


def run(quick: bool, ctx: Context | None = None) -> dict[str, Any]:
    assert ctx is not None, "peer needs the suite's context (stack)"
    p = plan(quick)
    rows = p["window"] + p["extra"]
    rep = Report(
        "peer", "Peer: trigger-maintained modified_at in the operator's Postgres",
        measures="Write overhead: the same update workload on the same table without and with a BEFORE INSERT OR "
                 "UPDATE trigger setting modified_at = clock_timestamp() plus an index on modified_at (single-row "
                 "autocommit UPDATEs by primary key from one client, and one bulk UPDATE). Export: COPY (SELECT "
                 "<players columns, mapped in SQL> WHERE modified_at in [from, to) ORDER BY modified_at) TO STDOUT "
                 "via psycopg for a window of the same size as Feedstore's.",
        baseline="Writes: the same workload without trigger and index, same run. Export: Feedstore's HTTP CSV "
                 "(a real feedstore serve on a store of the same size) and DuckDB COPY (window) TO csv.",
    )
    rep.sizes = {"table rows": rows, "window rows": p["window"], "single-row updates": p["statements"],
                 "bulk update rows": p["bulk"]}
    dsn = ctx.stack().dsn
    say(f"peer: filling {TABLE} with {rows:,} rows")
    fill_s = setup(dsn, rows)
    rng = random.Random(8)
    ids = [rng.randrange(p["window"] + 1, rows + 1) for _ in range(p["statements"])]
    bulk = (p["window"] + 1, p["window"] + p["bulk"])
    runs: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for r in range(p["rounds"]):
            for mode in ("without", "with"):
                conn.execute(_UNTRIGGER)
                if mode == "with":
                    conn.execute(_TRIGGER)
                say(f"peer: update workload {mode} trigger+index (round {r + 1}/{p['rounds']})")
                runs[mode].append(workload(dsn, ids, bulk))
    best = {m: {k: min(x[k] for x in rs) for k in rs[0]} for m, rs in runs.items()}
    a, b = best["without"], best["with"]
    rep.ratio("single-row updates: time with / without trigger+index", ratio(b["oltp_secs"], a["oltp_secs"]),
              "seconds over seconds (higher = the operator's writes cost more)")
    rep.ratio("single-row updates, server-side loop: time with / without", ratio(b["loop_secs"], a["loop_secs"]),
              "seconds over seconds (the same statements without client round trips)")
    rep.ratio("bulk update: time with / without trigger+index", ratio(b["bulk_secs"], a["bulk_secs"]),
              "seconds over seconds")
    rep.ratio("single-row updates: WAL with / without", ratio(b["oltp_wal"], a["oltp_wal"]), "bytes over bytes")
    rep.figure("single-row updates without trigger", p["statements"] / a["oltp_secs"], "updates/s")
    rep.figure("single-row updates with trigger+index", p["statements"] / b["oltp_secs"], "updates/s")
    rep.figure("server-side single-row updates without trigger", p["statements"] / a["loop_secs"], "updates/s")
    rep.figure("server-side single-row updates with trigger+index", p["statements"] / b["loop_secs"], "updates/s")
    rep.figure("bulk update without trigger", p["bulk"] / a["bulk_secs"], "rows/s")
    rep.figure("bulk update with trigger+index", p["bulk"] / b["bulk_secs"], "rows/s")

    # Export: the trigger and index stay in place (the peer's steady state).
    start = BASE + timedelta(seconds=1 / 1000)  # rows 1..window have modified_at BASE + id ms
    end = BASE + timedelta(seconds=(p["window"] + 1) / 1000)
    say(f"peer: COPY of a {p['window']:,}-row window through psycopg")
    peer_export(dsn, start, start + timedelta(seconds=1))  # warm the connection path and catalog
    pe = peer_export(dsn, start, end)
    fs = feedstore_http(ctx, rows, p["window"])
    pe_rate = pe["rows"] / pe["secs"]
    http_rate = fs["http"]["rows"] / fs["http"]["secs"]
    copy_rate = fs["copy"]["rows"] / fs["copy"]["secs"]
    rep.ratio("export: peer COPY / Feedstore HTTP CSV", ratio(pe_rate, http_rate), "rows/s over rows/s")
    rep.ratio("export: peer COPY / DuckDB COPY", ratio(pe_rate, copy_rate), "rows/s over rows/s")
    rep.ratio("export: Feedstore HTTP CSV / DuckDB COPY", ratio(http_rate, copy_rate), "rows/s over rows/s")
    rep.figure("export: peer COPY via psycopg", pe_rate, "rows/s")
    rep.figure("export: peer COPY via psycopg", pe["bytes"] / 2**20 / pe["secs"], "MB/s")
    rep.figure("export: Feedstore HTTP CSV", http_rate, "rows/s")
    rep.figure("export: Feedstore HTTP CSV", fs["http"]["bytes"] / 2**20 / fs["http"]["secs"], "MB/s")
    rep.figure("export: DuckDB COPY (window) TO csv", copy_rate, "rows/s")
    for name, x in (("peer", pe), ("Feedstore HTTP", fs["http"]), ("DuckDB COPY", fs["copy"])):
        if x["rows"] != p["window"]:
            rep.note(f"{name} returned {x['rows']:,} rows, expected {p['window']:,}.")
    rep.note(f"Row widths differ: the peer's SELECT carries the 18 players columns the legacy users table has "
             f"({pe['bytes'] / max(1, pe['rows']):.0f} B/row); Feedstore's players feed has "
             f"{fs['http']['bytes'] / max(1, fs['http']['rows']):.0f} B/row including fields from other tables.")
    rep.note(f"Setup (not a result): Postgres fill {fill_s:.0f} s. Best of {p['rounds']} alternating round(s).")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute("DROP FUNCTION IF EXISTS peer_touch()")
        conn.execute("DROP FUNCTION IF EXISTS peer_updates(bigint[])")
    return rep.as_dict()
