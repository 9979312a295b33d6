"""Scale curve: ingest and export rates as the store grows to 1M, 10M and 50M rows.

For each size a fresh DuckDB file is pre-filled directly with SQL (players-like rows,
generated from the feed definition, so the benchmark follows the feed as it evolves),
then a fresh process opens it as ``feedstore serve`` would and measures:

- ingest: the same fixed topic of real Debezium events (captured, re-produced once),
  through ``feedstore.service`` wiring, until every offset is committed; the events'
  user ids fall inside the pre-filled range, so most of them update stored rows;
- export: a fixed-size window (rows whose ``modified_at`` is in ``[from, to)``)
  streamed as CSV by ``materializer.export.csv_chunks``, the code the API streams;
- peak RSS of that process.

The baseline for each rate is the same measurement on an empty store (size 0) in the
same run, so the ratios show how the cost grows with the stored rows. DuckDB's own
``COPY (window) TO`` is measured at every size too, as the ceiling for export.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bench import capture
from bench.common import Context, PeakRss, Report, bar, in_child, ratio, say
from bench.ingest import feedstore_ingest, mapping_for

BASE = datetime(2024, 1, 1)  # stamps of pre-filled rows: BASE + i * STEP
STEP_US = 1_000
CHUNK = 2_000_000  # rows per INSERT while pre-filling: bounded memory, visible progress

WORDS = ["Valletta", "Berlin", "São Paulo", "Tokyo", "Monrovia", "Toronto", "Sliema", "Hamburg", "O'Brien",
         "Dubois, Jr.", "Müller", "Camilleri"]


def plan(quick: bool) -> dict[str, Any]:
    if quick:
        return {"sizes": [0, 100_000, 500_000], "events": 5_000, "window": 50_000}
    return {"sizes": [0, 1_000_000, 10_000_000, 50_000_000], "events": 10_000, "window": 1_000_000}


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def value_sql(feed: Any, f: Any, k: int) -> str:
    """A deterministic, varied value for field ``f`` of row ``i`` (column number ``k``)."""
    if f.name == feed.stamp:
        return f"(TIMESTAMP '{BASE:%Y-%m-%d %H:%M:%S}' + to_microseconds(i * {STEP_US}))"
    if f.name in feed.key:
        return "CAST(i AS VARCHAR)" if f.type == "string" else "i"
    pick = f"(((i * {7919 + 104729 * k}) + {k}) % {len(WORDS)})"
    name = f.name.lower()
    if f.type == "string":
        if "mail" in name:
            return "'user' || i || '@example.com'"
        if name == "ip" or name.endswith("_ip"):
            return "'10.' || (i % 256) || '.' || ((i // 256) % 256) || '.' || (1 + i % 254)"
        if "agent" in name:
            return "'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0'"
        return f"([{', '.join(_lit(w) for w in WORDS)}])[1 + {pick}]"
    return {
        "integer": f"CAST({pick} AS BIGINT)",
        "decimal": "CAST((i % 100000) / 100 AS DECIMAL(38,8))",
        "float": "(i % 1000) / 7.0",
        "boolean": f"({pick} = 0)",
        "flag": "CAST(i % 2 AS SMALLINT)",
        "timestamp": "(TIMESTAMP '2020-01-01 00:00:00' + to_seconds(i % 100000000))",
        "date": "(DATE '1950-01-01' + CAST(i % 20000 AS INTEGER))",
        "array": f"CASE WHEN {pick} < 4 THEN string_split('vip,sports', ',') END",
    }.get(f.type, "NULL")


def fill(db: str, mapping: str, rows: int, feed_name: str = "players", chunk: int = CHUNK) -> dict[str, Any]:
    """Pre-fill ``feed_<feed_name>`` with ``rows`` rows (ids 1..rows), in its own process.

    The varied values are computed once for a chunk of CHUNK rows; further chunks copy
    it with new ids and stamps, so filling costs what DuckDB's insert costs, not what
    generating strings costs.
    """
    import duckdb

    from materializer import store as stores
    from materializer.mapping import load_mapping
    from materializer.store import POS, Store, q, table_name

    HASH = getattr(stores, "HASH", None)  # noqa: N806 - the store's column name, when it keeps one
    started = time.perf_counter()
    store = Store(db, load_mapping(Path(mapping)))
    feed = store.feed(feed_name)
    store.close()
    names = [q(f.name) for f in feed.fields]
    chunk = min(rows, chunk)
    exprs = ", ".join(f"{value_sql(feed, f, k)} AS {n}"
                      for k, (f, n) in enumerate(zip(feed.fields, names, strict=True)))
    moved = {
        f.name: f"CAST(__i + $off AS {'VARCHAR' if f.type == 'string' else 'BIGINT'})" if f.name in feed.key
        else f"{n} + to_microseconds(CAST($off AS BIGINT) * {STEP_US})" if f.name == feed.stamp else n
        for f, n in zip(feed.fields, names, strict=True)}
    extra = [(POS, "0")]
    if HASH:  # the content hash the materializer compares, over the fields but the stamp, in order
        extra.append((HASH, f"hash({', '.join(moved[f.name] for f in feed.fields if f.name != feed.stamp)})"))
    with duckdb.connect(db) as conn, bar(rows, f"pre-filling {feed_name}", "row") as b:
        conn.execute(f"CREATE TEMP TABLE fill_base AS SELECT i AS __i, {exprs} FROM range(1, {chunk + 1}) t(i)")
        for off in range(0, rows, chunk):
            n = min(chunk, rows - off)
            conn.execute(f"INSERT INTO {table_name(feed)} ({', '.join(names + [c for c, _ in extra])}) "
                         f"SELECT {', '.join(list(moved.values()) + [e for _, e in extra])} "
                         f"FROM fill_base WHERE __i <= {n}", {"off": off})
            b.update(n)
        conn.execute("CHECKPOINT")
    return {"secs": time.perf_counter() - started, "bytes": os.path.getsize(db)}


def window_of(rows: int, window: int) -> tuple[datetime, datetime, int]:
    """A window of ``window`` pre-filled rows from the middle of the table (all of it if smaller)."""
    n = min(rows, window)
    first = max(1, (rows - n) // 2 + 1)
    start = BASE + timedelta(microseconds=first * STEP_US)
    return start, start + timedelta(microseconds=n * STEP_US), n


def measure(db: str, mapping: str, bootstrap: str, events: int, rows: int, window: int,
            feed_name: str = "players") -> dict[str, Any]:
    """Ingest then export on a pre-filled store, in its own process (see the module docstring)."""
    from materializer.export import csv_chunks, window_sql
    from materializer.mapping import load_mapping
    from materializer.store import Store

    out: dict[str, Any] = {}
    with PeakRss(children=False) as rss:
        res = feedstore_ingest(bootstrap, mapping, db, events)
        out["ingest_secs"], out["ingest_rss_mb"] = res["secs"], rss.mb
        out["quarantined"] = res["quarantined"]
        store = Store(db, load_mapping(Path(mapping)))
        try:
            feed = store.feed(feed_name)
            start, end, expect = window_of(rows, window) if rows else (BASE, BASE, 0)
            out["window_rows_expected"] = expect
            if rows:
                rss.reset()
                t0 = time.perf_counter()
                size = n_lines = 0
                for chunk in csv_chunks(store, feed, start, end):
                    size += len(chunk)
                    n_lines += chunk.count(b"\n")
                out["export_secs"] = time.perf_counter() - t0
                out["export_rows"], out["export_bytes"], out["export_rss_mb"] = n_lines - 1, size, rss.mb
                target = Path(db).with_suffix(".copy.csv")
                sql = window_sql(feed).replace("$start", f"TIMESTAMP '{start}'").replace("$end", f"TIMESTAMP '{end}'")
                with store.cursor() as cur:
                    t0 = time.perf_counter()
                    cur.execute(f"COPY ({sql}) TO '{target}' (FORMAT csv, HEADER)")
                    out["copy_secs"] = time.perf_counter() - t0
                out["copy_bytes"] = target.stat().st_size
                target.unlink()
        finally:
            store.close()
    out["peak_rss_mb"] = rss.mb
    return out


def run(quick: bool, ctx: Context | None = None) -> dict[str, Any]:
    assert ctx is not None, "scale needs the suite's context (stack, cache)"
    p = plan(quick)
    rep = Report(
        "scale", "Scale curve: ingest and export as the store grows",
        measures=f"For each store size (players rows pre-filled with SQL), in a fresh process: ingest of the same "
                 f"{p['events']:,} real Debezium events (schema-embedded; their ids update pre-filled rows) through "
                 f"the feedstore.service wiring until committed, then a {p['window']:,}-row window exported as CSV "
                 "by materializer.export.csv_chunks (what the API streams); peak RSS of that process.",
        baseline="The same ingest on an empty store in the same run (ratios below 1 mean the store's size costs "
                 "throughput), and DuckDB's own COPY (window) TO csv at each size for export.",
    )
    rep.sizes = {"sizes": ", ".join(f"{n:,}" for n in p["sizes"]), "events": p["events"],
                 "window rows": p["window"]}
    s = ctx.stack()
    fixture = capture.ensure(ctx, p["events"])["schema"]
    table = capture.load(fixture, p["events"])
    prefix = f"scale{uuid.uuid4().hex[:6]}"
    say(f"scale: producing {table.num_rows:,} captured events into {prefix}.public.users")
    capture.produce(s.bootstrap, f"{prefix}.public.users", table)
    events = table.num_rows
    del table
    mapping = str(mapping_for(prefix, ctx.work))
    points: dict[int, dict[str, Any]] = {}
    budget_s = 90 if quick else 600
    started = time.monotonic()
    fill_rate = 0.0  # rows/s of the last pre-fill, to project the next one
    for n in p["sizes"]:
        last = points[max(points)] if points else None
        if n and last is not None and fill_rate:
            projected = n / fill_rate + 2 * (last["measure_secs"] + 10)
            left = budget_s - (time.monotonic() - started)
            if projected > left:
                rep.note(f"{n:,} rows skipped: pre-filling and measuring would take about {projected:.0f} s "
                         f"(from the {max(points):,}-row point), more than the {left:.0f} s left of this "
                         f"benchmark's {budget_s} s budget on this machine.")
                say(f"scale: skipping {n:,} rows (projected {projected:.0f}s, {left:.0f}s left)")
                continue
        db = ctx.work / f"scale-{n}.duckdb"
        filled: dict[str, Any] = {"secs": 0.0, "bytes": 0}
        if n:
            say(f"scale: pre-filling {n:,} rows")
            filled, fill_rss = in_child(fill, str(db), mapping, n, timeout=1800)
            fill_rate = n / max(filled["secs"], 1e-9)
            filled["rss_mb"] = fill_rss
            say(f"scale: filled {n:,} rows in {filled['secs']:.0f}s ({filled['bytes'] / 2**20:,.0f} MB file, "
                f"peak RSS {fill_rss:,.0f} MB)")
        say(f"scale: measuring at {n:,} rows")
        t0 = time.monotonic()
        m, rss = in_child(measure, str(db), mapping, s.bootstrap, events, n, p["window"], timeout=1800)
        m |= {"fill_secs": filled["secs"], "db_mb": filled["bytes"] / 2**20, "rss_mb": rss,
              "measure_secs": time.monotonic() - t0, "fill_rss_mb": filled.get("rss_mb", 0.0)}
        points[n] = m
        db.unlink(missing_ok=True)
        db.with_suffix(".duckdb.wal").unlink(missing_ok=True)
        say(f"scale: {n:,} rows: ingest {events / m['ingest_secs']:,.0f} ev/s"
            + (f", export {m['export_rows'] / m['export_secs']:,.0f} rows/s (COPY "
               f"{m['export_rows'] / m['copy_secs']:,.0f})" if n else "") + f", peak RSS {rss:,.0f} MB")
    empty = points.get(0)
    smallest = min((n for n in points if n), default=0)
    for n, m in points.items():
        rate = events / m["ingest_secs"]
        label = f"{n:,} rows"
        if n and empty:
            rep.ratio(f"ingest at {label} / empty store", ratio(rate, events / empty["ingest_secs"]),
                      "events/s at this size over events/s on an empty store")
        if n:
            exp = m["export_rows"] / m["export_secs"]
            cp = m["export_rows"] / m["copy_secs"]
            rep.ratio(f"export at {label}: csv_chunks / DuckDB COPY", ratio(exp, cp), "rows/s over rows/s")
            if n != smallest:
                base = points[smallest]
                rep.ratio(f"export at {label} / at {smallest:,} rows",
                          ratio(exp, base["export_rows"] / base["export_secs"]), "rows/s over rows/s, same window size")
            rep.figure(f"export at {label}", exp, "rows/s")
            rep.figure(f"DuckDB COPY at {label}", cp, "rows/s")
            if m["export_rows"] != m["window_rows_expected"]:
                rep.note(f"{label}: the window returned {m['export_rows']:,} rows, expected "
                         f"{m['window_rows_expected']:,} (ingested events moved some rows out of it).")
        rep.figure(f"ingest at {label}", rate, "events/s")
        rep.figure(f"peak RSS at {label}", m["rss_mb"], "MB")
        if n:
            rep.figure(f"store file at {label}", m["db_mb"], "MB")
            rep.figure(f"pre-fill of {label} (setup, not a result)", m["fill_secs"], "s")
            rep.figure(f"peak RSS pre-filling {label} (setup)", m["fill_rss_mb"], "MB")
        if m.get("quarantined"):
            rep.note(f"{label}: {m['quarantined']} events quarantined (expected 0).")
    return rep.as_dict()
