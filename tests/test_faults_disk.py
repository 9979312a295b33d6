"""A DuckDB write error (full disk, as a real RLIMIT_FSIZE) stops the offsets with the data,
and the line resumes without loss once it is lifted, also when DuckDB invalidated the
database and the store has to be reopened.

The service's own sink (``Service.apply``) runs in a child process, because the limit
applies to every file the process writes and the child has to ignore SIGXFSZ, as
``feedstore serve`` does. The process-level variant is in test_faults.py.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.fix_store import MAPPING, Events

TOPIC = "spacevegas.public.users"


def _limit(nbytes: int) -> None:
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))


def _unlimit() -> None:
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))


def _child(db: str, out: Any) -> None:
    """Drive Service.apply through a failing disk; report what the store held at each step."""
    import duckdb

    from feedstore.config import Settings
    from feedstore.service import Service
    from materializer import StoreError

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    service = Service.open(Settings(db_path=Path(db), mapping_path=MAPPING))
    store, ev = service.store, Events()
    seen: dict[str, Any] = {}

    def attempt(records: list[Any], offsets: dict[tuple[str, int], int]) -> str | None:
        try:
            service.apply(records, offsets)
        except Exception as ex:  # noqa: BLE001 - reported to the parent
            return f"{type(ex).__name__}: {ex}"
        return None

    def state() -> dict[str, Any]:
        return {"offsets": store.offsets(), "players": store.row_counts()["players"]}

    assert attempt([ev.record("c", None, ev.user(i)) for i in range(1, 11)], {(TOPIC, 0): 10}) is None
    seen["start"] = state()

    # 1. Every write fails with EFBIG: the batch and its offsets stay out, reads still work.
    _limit(1)
    batch2 = [ev.record("c", None, ev.user(i)) for i in range(11, 21)]
    seen["full_error"] = attempt(batch2, {(TOPIC, 0): 20})
    seen["full_again"] = attempt(batch2, {(TOPIC, 0): 20})
    seen["during"] = state()
    _unlimit()
    seen["lifted_error"] = attempt(batch2, {(TOPIC, 0): 20})
    seen["after"] = state()

    # 2. A checkpoint that cannot be written invalidates the database (DuckDB FATAL).
    batch3 = [ev.record("u", None, ev.user(i, city=f"City{i}")) for i in range(1, 21)]
    assert attempt(batch3[:10], {(TOPIC, 0): 30}) is None
    with store.writer() as cur:
        cur.execute("CREATE TABLE ballast AS SELECT range AS i, md5(range::VARCHAR) AS s FROM range(200000)")
    _limit(os.path.getsize(db) + 1)
    try:
        with store.writer() as cur:
            cur.execute("CHECKPOINT")
        seen["checkpoint_error"] = None
    except (duckdb.Error, StoreError) as ex:  # the store reports it as StoreError (retryable)
        seen["checkpoint_error"] = f"{type(ex).__name__}: {ex}"
    seen["health_invalid"] = store.healthy()
    _unlimit()
    seen["first_retry"] = attempt(batch3[10:], {(TOPIC, 0): 40})  # fails, and reopens the file
    seen["reopened"] = store.reopened
    seen["second_retry"] = attempt(batch3[10:], {(TOPIC, 0): 40})
    seen["final"] = state()
    with store.cursor() as cur:
        seen["cities"] = cur.execute("SELECT count(*) FROM feed_players WHERE city LIKE 'City%'").fetchall()[0][0]
    seen["health_final"] = store.healthy()
    store.close()
    out.put(seen)


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(str(tmp_path_factory.mktemp("disk") / "feedstore.duckdb"), queue))
    proc.start()
    try:
        seen: dict[str, Any] = queue.get(timeout=120)
    finally:
        proc.join(30)
    assert proc.exitcode == 0
    return seen


def test_a_full_disk_stops_rows_and_offsets_together_and_the_line_resumes(outcome: dict[str, Any]) -> None:
    assert outcome["start"] == {"offsets": {(TOPIC, 0): 10}, "players": 10}
    assert "File too large" in outcome["full_error"] and "StoreError" in outcome["full_error"]
    assert "Offsets were not advanced" in outcome["full_error"]
    assert outcome["full_again"] is not None
    assert outcome["during"] == outcome["start"]  # nothing half-written, offsets where the data is
    assert outcome["lifted_error"] is None
    assert outcome["after"] == {"offsets": {(TOPIC, 0): 20}, "players": 20}


def test_an_invalidated_database_is_reopened_and_nothing_is_lost(outcome: dict[str, Any]) -> None:
    assert outcome["checkpoint_error"] is not None and "FATAL" in outcome["checkpoint_error"]
    assert "File too large" in outcome["checkpoint_error"]
    assert outcome["health_invalid"] is not None and "invalidated" in outcome["health_invalid"]
    assert outcome["first_retry"] is not None  # the batch that met the invalid database failed ...
    assert outcome["reopened"] == 1  # ... and the service reopened the file
    assert outcome["second_retry"] is None  # the consumer's retry then went through
    assert outcome["final"] == {"offsets": {(TOPIC, 0): 40}, "players": 20}
    assert outcome["cities"] == 20
    assert outcome["health_final"] is None
