"""Window export: RFC 4180 CSV (byte for byte DuckDB's own COPY), streamed JSON, gzip,
runs of stamps in one snapshot. A real DuckDB store fed through the real materializer."""

from __future__ import annotations

import csv
import gzip
import io
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from materializer.apply import Materializer
from materializer.casino import ensure_schema
from materializer.export import csv_chunks, gzipped, json_chunks, text_buffer, window_sql
from materializer.store import Store
from tests.fix_store import Events, ManualClock

START, END = datetime(2025, 3, 1, 11), datetime(2025, 3, 1, 14)
TRICKY = ['Zoë "Z", Jr.', "São\nPaulo", "cr\rlf\r\n", "", " lead and trail ", "#hash", "a;b|c\\d", "日本語",
          "'single'", "tab\there", '"', ","]


def fill(materializer: Materializer, events: Events, clock: ManualClock, names: list[str]) -> None:
    """One user per name, three per batch (so the window has many stamps, several rows each)."""
    for at in range(0, len(names), 3):
        clock.advance(seconds=7)
        materializer.apply([events.record("c", None, events.user(i + 1, fname=name, city=name[::-1]))
                            for i, name in enumerate(names[at:at + 3], start=at)], {})


def body(chunks: object) -> bytes:
    return b"".join(chunks)  # type: ignore[arg-type]


def duckdb_copy(store: Store, tmp_path: Path, feed: str = "players") -> bytes:
    out = tmp_path / "copy.csv"
    with store.cursor() as cur:
        cur.execute(f"COPY ({window_sql(store.feed(feed))}) TO '{out}' (HEADER)", {"start": START, "end": END})
    return out.read_bytes()


def test_csv_is_byte_for_byte_duckdbs_copy_across_runs(store, materializer, events, clock, tmp_path) -> None:
    fill(materializer, events, clock, TRICKY * 3)
    expected = duckdb_copy(store, tmp_path)
    feed = store.feed("players")
    # runs of 2 rows and batches of 1 row: many runs and chunks, same bytes as one sorted COPY
    assert body(csv_chunks(store, feed, START, END, run_rows=2, batch_rows=1)) == expected
    assert body(csv_chunks(store, feed, START, END)) == expected
    assert expected.count(b"\n") > len(TRICKY) * 3  # quoted newlines inside fields, too


def test_csv_round_trips_through_an_rfc4180_reader(store, materializer, events, clock) -> None:
    fill(materializer, events, clock, TRICKY)
    text = body(csv_chunks(store, store.feed("players"), START, END, run_rows=2)).decode()
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [r["first_name"] for r in rows] == TRICKY
    assert [r["city"] for r in rows] == [name[::-1] for name in TRICKY]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                              max_size=12), min_size=1, max_size=6))
def test_any_text_round_trips(store, materializer, events, clock, names: list[str]) -> None:
    with store.writer() as cur:  # a fresh table per example; the store is shared by hypothesis
        cur.execute("DELETE FROM feed_players")
    fill(materializer, events, clock, names)
    end = clock.now + timedelta(seconds=1)
    text = body(csv_chunks(store, store.feed("players"), START, end, run_rows=2)).decode()
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert sorted(r["first_name"] for r in rows) == sorted(names)
    as_json = orjson.loads(body(json_chunks(store, store.feed("players"), START, end, run_rows=2)))
    assert sorted(r["first_name"] for r in as_json) == sorted(names)


def test_json_is_a_streamed_array_of_the_same_rows(store, materializer, events, clock) -> None:
    fill(materializer, events, clock, TRICKY)
    feed = store.feed("players")
    chunks = list(json_chunks(store, feed, START, END, run_rows=2, batch_rows=1))
    assert len(chunks) > len(TRICKY)  # one chunk per batch of one row, plus the closing bracket
    rows = orjson.loads(b"".join(chunks))
    assert [r["first_name"] for r in rows] == TRICKY
    assert list(rows[0]) == list(feed.field_names)
    assert isinstance(rows[0]["is_blocked"], bool)
    via_csv = list(csv.DictReader(io.StringIO(body(csv_chunks(store, feed, START, END)).decode(), newline="")))
    assert [r["id"] for r in rows] == [r["id"] for r in via_csv]
    assert [r["modified_at"] for r in rows] == sorted(r["modified_at"] for r in rows)


def test_empty_window(store) -> None:
    feed = store.feed("players")
    assert body(csv_chunks(store, feed, START, END)) == (",".join(feed.field_names) + "\n").encode()
    assert body(json_chunks(store, feed, START, END)) == b"[]"


def test_every_mapped_feed_exports_as_its_own_copy(store, tmp_path) -> None:
    """Every feed's CSV (also the casino session window) has the spec's columns in order."""
    ensure_schema(store)  # the casino feed reads its actions tables (the API creates them at start)
    for name in store.mapping.feeds:
        feed = store.feed(name)
        text = body(csv_chunks(store, feed, START, END)).decode()
        assert text.splitlines()[0].split(",") == list(feed.field_names), name
        assert orjson.loads(body(json_chunks(store, feed, START, END))) == [], name


def test_a_batch_committed_mid_stream_is_not_seen(store, materializer, events, clock) -> None:
    """All runs read one snapshot: a row moved by a batch committed while the pull is
    streaming is neither duplicated nor lost in that pull."""
    fill(materializer, events, clock, [f"user{i}" for i in range(9)])
    feed = store.feed("players")
    before = body(csv_chunks(store, feed, START, END))
    stream = csv_chunks(store, feed, START, END, run_rows=2, batch_rows=1)
    first = [next(stream), next(stream)]  # header and the first row are out
    clock.advance(seconds=30)
    materializer.apply([events.record("u", None, events.user(9, fname="moved", city="elsewhere"))], {})
    during = b"".join(first) + body(stream)
    assert during == before
    assert b"moved" in body(csv_chunks(store, feed, START, END))


def test_gzip_streams_one_member(store, materializer, events, clock) -> None:
    fill(materializer, events, clock, TRICKY * 2)
    plain = body(csv_chunks(store, store.feed("players"), START, END))
    packed = list(gzipped(csv_chunks(store, store.feed("players"), START, END, batch_rows=1)))
    assert gzip.decompress(b"".join(packed)) == plain
    assert len(b"".join(packed)) < len(plain)


def test_gzip_closes_its_source_when_the_client_leaves() -> None:
    closed = []

    def source():
        try:
            yield b"a" * 10
            yield b"b" * 10
        finally:
            closed.append(True)

    stream = gzipped(source())
    next(stream, None)
    stream.close()
    assert closed == [True]


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string(), pa.string_view()])
def test_text_buffer_is_the_values_concatenated(kind: pa.DataType) -> None:
    values = ["a,1\n", "", "ü\n", "zz\n"]
    arr = pa.array(values, type=kind)
    assert text_buffer(arr) == "".join(values).encode()
    assert text_buffer(arr.slice(1, 2)) == "ü\n".encode()


def test_duckdb_hands_lines_as_plain_strings(store) -> None:
    """The fast path (no cast) is the one DuckDB takes: a regular Arrow string column."""
    with store.cursor() as cur:
        batch = next(iter(cur.sql("SELECT 'x' || chr(10) AS line").to_arrow_reader(10)))
    assert batch.column(0).type in (pa.string(), pa.large_string())
    assert duckdb.__version__  # the version the byte-for-byte test above ran against
