"""The benchmark harness works on tiny sizes: records, report, child processes, fixtures, pre-fill.

No timing is asserted here (speed is what ``make bench`` measures); these tests only
make sure that the suite's parts do what the figures rely on, so a broken harness is
found by ``make test`` and not after twenty minutes of ``make bench``.
"""

from __future__ import annotations

import os
import types
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pytest

from bench import capture, common, peer, scale
from bench.__main__ import busy, run_one
from bench.common import Context, PeakRss, Report, in_child, percentile, render_markdown, summary_rows
from bench.ingest import mapping_for
from deploy.localstack.stack import LocalStack
from materializer.export import csv_chunks
from materializer.mapping import load_mapping
from materializer.store import Store


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) != percentile([], 50)  # NaN for no data, not a made-up zero


def test_report_marks_targets_both_ways() -> None:
    rep = Report("x", "X", measures="m", baseline="b")
    rep.ratio("fast enough", 0.7, "a / b", target=0.6)
    rep.ratio("too slow", 0.5, "a / b", target=0.6)
    rep.ratio("small is good", 1.5, "a / b", target=2.0, higher_is_better=False)
    rep.ratio("no target", 1.0, "a / b")
    met = [r["met"] for r in rep.as_dict()["ratios"]]
    assert met == [True, False, True, None]


def test_summary_puts_every_ratio_before_any_figure() -> None:
    a = Report("a", "A", measures="", baseline="")
    a.figure("rate", 10.0, "events/s")
    a.ratio("r1", 0.5, "x")
    b = Report("b", "B", measures="", baseline="")
    b.ratio("r2", 2.0, "y")
    b.figure("rss", 100.0, "MB")
    rows = summary_rows([a.as_dict(), b.as_dict(), {"name": "c", "answer": 42}])
    kinds = ["ratio" if r[2].endswith("x") else "figure" for r in rows if r[0] in ("a", "b")]
    assert kinds == ["ratio", "ratio", "figure", "figure"]
    assert ["c", "answer", "42", "", ""] in rows  # a record in another shape is still reported


def test_markdown_has_machine_versions_sizes_and_failures() -> None:
    rep = Report("ingest", "Ingest", measures="what is timed", baseline="what it is compared with")
    rep.sizes["events"] = 1234
    rep.ratio("feedstore / baseline", 0.65, "ev/s over ev/s", target=0.6)
    meta = {"quick": True, "date": "2025-01-01 00:00 UTC", "elapsed_s": 12.0, "machine": common.machine(),
            "versions": common.versions({"postgres": "16"}), "load_before": "1", "load_after": "2", "notes": []}
    text = render_markdown([rep.as_dict(), common.failed("casino", "ValueError: boom")], meta)
    assert "## Summary (ratios first)" in text
    assert "duckdb" in text and "postgres 16" in text
    assert f"{os.cpu_count()} cores" in text
    assert "events 1,234" in text and "0.65x" in text and "met" in text
    assert "FAILED" in text and "ValueError: boom" in text


def test_peak_rss_sees_an_allocation() -> None:
    with PeakRss(children=False) as rss:
        before = rss.sample()
        block = bytearray(64 * 2**20)
        block[::4096] = b"x" * len(block[::4096])
        rss.sample()
    assert rss.peak >= before + 32 * 2**20


def _child_ok(n: int) -> dict[str, Any]:
    return {"pid": os.getpid(), "n": n * 2}


def _child_fails() -> dict[str, Any]:
    raise ValueError("no such thing")


def test_in_child_runs_elsewhere_and_reports_failures() -> None:
    out, rss_mb = in_child(_child_ok, 21, timeout=60)
    assert out["n"] == 42 and out["pid"] != os.getpid()
    assert rss_mb > 1
    with pytest.raises(RuntimeError, match="no such thing"):
        in_child(_child_fails, timeout=60)


def test_runner_tolerates_missing_failing_and_old_style_modules(tmp_path: Path) -> None:
    ctx = Context(quick=True, work=tmp_path)
    assert "not there yet" in run_one("no_such_benchmark", ctx)["error"]

    old = types.ModuleType("bench.oldstyle")
    old.run = lambda quick: {"answer": 42, "quick": quick}  # type: ignore[attr-defined]
    broken = types.ModuleType("bench.broken")

    def boom(quick: bool, ctx: Context | None = None) -> dict[str, Any]:
        raise RuntimeError("kaputt")

    broken.run = boom  # type: ignore[attr-defined]
    modules = {"bench.oldstyle": old, "bench.broken": broken}
    res = run_one("oldstyle", ctx, load=modules.__getitem__)
    assert res["answer"] == 42 and res["quick"] is True and res["name"] == "oldstyle"
    assert "kaputt" in run_one("broken", ctx, load=modules.__getitem__)["error"]


def test_busy_machine_is_called_out_in_the_report() -> None:
    idle = {"cores": 2, "load_avg": "0.50 / 0.40 / 0.30"}
    loaded = {"cores": 2, "load_avg": "7.00 / 5.00 / 3.00"}
    assert busy(idle, idle) == []
    notes = busy(idle, loaded)
    assert len(notes) == 1 and "7.0 on 2 cores" in notes[0]


def test_mapping_for_moves_every_topic_to_the_new_prefix(tmp_path: Path) -> None:
    mapping = load_mapping(mapping_for("benchx", tmp_path))
    assert mapping.topics and all(t.startswith("benchx.") for t in mapping.topics)
    assert set(mapping.feeds) == set(load_mapping(common.MAPPING).feeds)


def test_fixture_roundtrip_keeps_bytes_and_partitions(tmp_path: Path) -> None:
    table = pa.table({"partition": pa.array([1, 0, 1], pa.int32()), "offset": pa.array([0, 0, 1], pa.int64()),
                      "key": pa.array([b"k1", b"k0", None], pa.binary()),
                      "value": pa.array([b'{"a":1}', b'{"b":2}', None], pa.binary()),
                      "timestamp": pa.array([5, 4, 6], pa.int64())})
    fx = capture.save(table, capture.path_for(tmp_path, "plain", 3), "plain")
    assert fx.events == 3 and fx.bytes == len(b"k1k0") + len(b'{"a":1}{"b":2}')
    assert capture.find(tmp_path, "plain", 2) == fx
    assert capture.find(tmp_path, "plain", 4) is None  # too small: capture again
    back = capture.load(fx)
    assert back.column("partition").to_pylist() == [0, 1, 1]  # partition, offset order for re-producing
    assert back.column("value").to_pylist() == [b'{"b":2}', b'{"a":1}', None]
    assert capture.load(fx, 2).column("timestamp").to_pylist() == [4, 5]  # the first events captured


def test_prefill_makes_every_feed_field_and_an_exact_window(tmp_path: Path) -> None:
    db, mapping = tmp_path / "s.duckdb", tmp_path / "m.yaml"
    mapping.write_text(common.MAPPING.read_text())
    out = scale.fill(str(db), str(mapping), 1000)
    assert out["bytes"] > 0
    store = Store(db, load_mapping(mapping))
    try:
        feed = store.feed("players")
        with store.cursor() as cur:
            n, ids = cur.execute("SELECT count(*), count(DISTINCT id) FROM feed_players").fetchone()  # type: ignore[misc]
            nulls = cur.execute("SELECT " + ", ".join(f'count("{f.name}")' for f in feed.fields)
                                + " FROM feed_players").fetchone()
        assert n == ids == 1000
        assert nulls is not None and all(c > 0 for c in nulls)  # every field gets values
        content = ", ".join(f'"{f.name}"' for f in feed.fields if f.name != feed.stamp)
        with store.cursor() as cur:  # the stored content hash is the one the materializer compares
            stale = cur.execute(f"SELECT count(*) FROM feed_players WHERE _fs_hash IS DISTINCT FROM hash({content})"
                                ).fetchone()
        assert stale == (0,)
        start, end, expect = scale.window_of(1000, 100)
        body = b"".join(csv_chunks(store, feed, start, end))
        assert body.count(b"\n") - 1 == expect == 100
        before = b"".join(csv_chunks(store, feed, start - timedelta(microseconds=scale.STEP_US), start))
        assert before.count(b"\n") - 1 == 1  # the row just before the window is in the one before
    finally:
        store.close()


def test_prefill_copies_the_base_chunk_with_new_ids(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    scale.fill(str(db), str(common.MAPPING), 1000, chunk=300)
    with duckdb.connect(str(db)) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT id), count(DISTINCT modified_at), "
                           "min(CAST(id AS BIGINT)), max(CAST(id AS BIGINT)) FROM feed_players").fetchone()
    assert row == (1000, 1000, 1000, 1, 1000)


@pytest.mark.stack
def test_produce_then_drain_gives_back_the_same_records(stack: LocalStack) -> None:
    table = pa.table({"partition": pa.array([0, 0, 2, 3], pa.int32()), "offset": pa.array([0, 1, 0, 0], pa.int64()),
                      "key": pa.array([b"a", b"b", b"c", None], pa.binary()),
                      "value": pa.array([b"1", None, b"3", b"4"], pa.binary()),
                      "timestamp": pa.array([1, 2, 3, 4], pa.int64())})
    topic = f"benchtest{os.getpid()}.public.users"
    capture.produce(stack.bootstrap, topic, table)
    back = capture.drain(stack.bootstrap, topic, 4, desc="test", timeout=60).sort_by(
        [("partition", "ascending"), ("offset", "ascending")])
    assert back.column("partition").to_pylist() == [0, 0, 2, 3]
    assert back.column("key").to_pylist() == [b"a", b"b", b"c", None]
    assert back.column("value").to_pylist() == [b"1", None, b"3", b"4"]


@pytest.mark.stack
def test_peer_trigger_stamps_updates_and_copy_exports_the_window(stack: LocalStack) -> None:
    peer.setup(stack.dsn, 200)
    try:
        start = peer.BASE + timedelta(milliseconds=1)
        out = peer.peer_export(stack.dsn, start, start + timedelta(milliseconds=50))
        assert out["rows"] == 50 and out["bytes"] > 50 * 50
        with psycopg.connect(stack.dsn, autocommit=True) as conn:
            conn.execute(peer._TRIGGER)
            res = peer.workload(stack.dsn, [5, 6, 7], (10, 19))
            assert res["oltp_wal"] > 0 and res["bulk_wal"] > 0
            moved = conn.execute(f"SELECT count(*) FROM {peer.TABLE} WHERE modified_at > now() - interval '1 hour'"
                                 ).fetchone()
            assert moved == (13,)  # 3 single-row updates + 10 bulk-updated rows got a fresh stamp
            conn.execute(peer._UNTRIGGER)
            assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname = 'peer_touch'").fetchone() == (0,)
    finally:
        with psycopg.connect(stack.dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {peer.TABLE}")
