"""Real faults between the operator's database and the API, each followed by the full
comparison of tests/pullcheck.py: everything the simulated CRM pulled and the store
itself, against the source tables.

Real processes and real signals: ``kill -9`` of ``feedstore serve`` (master and worker
together, or the worker alone, which gunicorn replaces), the broker frozen with
SIGSTOP, Debezium killed and restarted (it re-sends from its last flushed offsets),
Postgres restarted, and the disk filling up under DuckDB (RLIMIT_FSIZE on the worker).
The workload keeps writing through every fault.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from deploy.localstack.debezium import _slot_active
from deploy.localstack.procs import wait_until
from tests.fix_line import Line
from tests.pullcheck import Run, run_and_check
from tests.pullsim import PullSimulator

pytestmark = pytest.mark.stack

SEED = int(os.environ.get("FEEDSTORE_FAULT_SEED", "0")) or random.randrange(1, 10**6)


def simulators(line: Line) -> list[PullSimulator]:
    return [PullSimulator(line.serve.url, line.feeds, name="minute", window=1, fmt="csv"),
            PullSimulator(line.serve.url, line.feeds, name="minute-2", window=1, delay=2, fmt="json")]


def report(title: str, run: Run, **extra: object) -> None:
    print(f"\n{title}: {run.summary() | extra}")


def test_kill_9_at_random_moments(line: Line, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    moments: list[float] = []

    def kill_repeatedly(line: Line) -> None:
        for i in range(6):
            pause = rng.uniform(0.3, 1.5)
            moments.append(round(pause, 2))
            time.sleep(pause)
            if i % 2 == 0:
                line.serve.kill()  # master and worker: a crash of the whole service
                line.serve.start()  # on the same DuckDB file
            else:
                line.serve.kill_worker()  # gunicorn starts a new worker on the same file

    run = run_and_check(line, simulators(line), tmp_path, kill_repeatedly)
    report("kill -9", run, seed=SEED, pauses=moments)
    assert run.kills == 6
    assert "Traceback" not in line.serve.log_text()


def test_broker_frozen_for_10_seconds(line: Line, tmp_path: Path) -> None:
    def freeze(line: Line) -> None:
        line.stack.broker.pause()
        try:
            time.sleep(10)
        finally:
            line.stack.broker.resume()

    run = run_and_check(line, simulators(line), tmp_path, freeze)
    report("broker frozen 10 s", run)


def test_debezium_killed_and_restarted(line: Line, tmp_path: Path) -> None:
    def crash(line: Line) -> None:
        dbz = line.debezium
        assert dbz.proc is not None
        dbz.proc.kill()  # kill -9: what it sent after its last offset flush is sent again
        dbz.proc.wait(10)
        time.sleep(1)  # the workload goes on meanwhile
        wait_until(lambda: not _slot_active(line.dsn, line.slot), timeout=30, what="slot released")
        dbz.start(line.dsn)  # from its stored offsets

    run = run_and_check(line, simulators(line), tmp_path, crash)
    report("debezium killed and restarted", run, resent=_resent(line))


def test_postgres_restarted(line: Line, tmp_path: Path) -> None:
    operator_restarted_debezium = []

    def restart(line: Line) -> None:
        line.stack.postgres.restart()
        # Debezium's engine reconnects by itself when it can; an operator who sees the
        # slot stay inactive restarts the connector, which resumes from its offsets.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not _slot_active(line.dsn, line.slot):
            time.sleep(0.5)
        if not _slot_active(line.dsn, line.slot):
            line.debezium.restart(line.dsn)
            operator_restarted_debezium.append(True)

    run = run_and_check(line, simulators(line), tmp_path, restart)
    report("postgres restarted", run, debezium_restarted_by_operator=bool(operator_restarted_debezium),
           workload_errors=line.source.errors)


def test_full_disk_stops_the_offsets_with_a_clear_error_and_resumes(line: Line, tmp_path: Path) -> None:
    seen: dict[str, object] = {}

    def fill_disk(line: Line) -> None:
        serve = line.serve
        serve.limit_file_size(1)  # every DuckDB write now fails with EFBIG
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, body = serve.ready()
            error = str((body.get("consumer") or {}).get("last_error") or "")
            if status == 503 and "File too large" in error:
                break
            time.sleep(0.2)
        seen["ready"], seen["error"] = status, error
        stopped = line.progress.latest()
        time.sleep(3)  # the workload keeps producing meanwhile
        seen["moved"] = line.progress.latest() != stopped
        serve.limit_file_size(None)
        wait_until(lambda: serve.ready()[0] == 200, timeout=60, what="ready again after the disk was freed")

    run = run_and_check(line, simulators(line), tmp_path, fill_disk)
    report("disk full", run, error=seen.get("error"))
    assert seen["ready"] == 503 and "File too large" in str(seen["error"])
    assert seen["moved"] is False  # no offset progress while the data could not be written
    log = line.serve.log_text()
    assert "batch not stored; retrying" in log and "recovered" in log


def _resent(line: Line) -> int:
    """Events Debezium produced more than once (same table, key and source position)."""
    from tests.fix_line import read_log

    counts = Counter((e.topic, e.key, e.position) for e in read_log(line.stack.bootstrap, line.topics)
                     if e.position is not None)
    return sum(n - 1 for n in counts.values() if n > 1)
