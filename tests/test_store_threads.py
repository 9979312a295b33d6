"""DuckDB's threads fitted to the store: one per row group of the largest table, up to one per core."""

from __future__ import annotations

from pathlib import Path

import duckdb

from materializer.mapping import Mapping
from materializer.store import ROW_GROUP, Store, threads_for


def test_one_thread_per_row_group_up_to_the_ceiling() -> None:
    assert threads_for(0, 8) == 1
    assert threads_for(ROW_GROUP, 8) == 1
    assert threads_for(ROW_GROUP + 1, 8) == 2
    assert threads_for(5 * ROW_GROUP, 8) == 5
    assert threads_for(50_000_000, 8) == 8
    assert threads_for(50_000_000, 1) == 1


def _default_threads() -> int:
    """DuckDB's own default (one per core, as it counts them): the ceiling of auto mode."""
    with duckdb.connect() as conn:
        (n,) = conn.execute("SELECT current_setting('threads')").fetchone() or (0,)
    return int(n)


def _fill(store: Store, rows: int) -> None:
    with store.writer() as cur:
        cur.execute(f"INSERT INTO feed_players (id) SELECT CAST(i AS VARCHAR) FROM range({rows}) t(i)")


def test_an_auto_store_grows_its_threads_with_its_largest_table(tmp_path: Path, mapping: Mapping) -> None:
    store = Store(tmp_path / "auto.duckdb", mapping)
    ceiling = _default_threads()
    try:
        assert store.fit_threads() == 1  # empty: nothing to scan in parallel
        _fill(store, 2 * ROW_GROUP + 1)
        assert store.fit_threads() == min(3, ceiling)
    finally:
        store.close()
    reopened = Store(tmp_path / "auto.duckdb", mapping)  # fitted again when the file is opened
    try:
        with reopened.cursor() as cur:
            (n,) = cur.execute("SELECT current_setting('threads')").fetchone() or (0,)
        assert n == min(3, ceiling)
    finally:
        reopened.close()


def test_explicit_threads_are_left_as_configured(tmp_path: Path, mapping: Mapping) -> None:
    store = Store(tmp_path / "fixed.duckdb", mapping, threads=3)
    try:
        _fill(store, ROW_GROUP * 5)
        assert store.fit_threads() == 3
    finally:
        store.close()
