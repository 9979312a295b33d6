"""Poison on the live line: raw bytes produced to the mapped topic (kafka-python) while the
workload runs. The simulated CRM must still get every real change (tests/pullcheck.py),
each bad record must be in the quarantine with its coordinates, counted, listed by the
CLI, and after the operator's fix re-applied and served in a later window.

Decisions written down in docs/guarantees.md: a topic with the prefix that the mapping
does not name is not subscribed at all (other tables of the operator's database are
none of the feeds' business), so nothing from it is read or quarantined; the quarantine
commands work offline, on a file the service does not hold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from kafka import KafkaProducer

from tests.fix_line import PROJECT, Line
from tests.pullcheck import run_and_check
from tests.pullsim import PullSimulator, from_epoch

pytestmark = pytest.mark.stack

BIG = 10 * 1024 * 1024


def envelope(user_id: int, **cols: Any) -> bytes:
    """A schema-less Debezium envelope for users, as a misconfigured or foreign producer might send."""
    row = {"user_id": user_id, "fname": "Mal", "lname": "Formed", "created": 1_700_000_000_000_000, "state": 0,
           "no_marketing": False} | cols
    return orjson.dumps({"before": None, "after": row, "op": "c", "ts_ms": 1_700_000_000_000,
                         "source": {"connector": "postgresql", "schema": "public", "table": "users",
                                    "lsn": 1, "ts_ms": 1_700_000_000_000}})


def other_table(user_id: int) -> bytes:
    doc = orjson.loads(envelope(user_id))
    doc["source"]["table"] = "accounts"
    return orjson.dumps(doc)


POISON: dict[str, tuple[int, bytes]] = {
    "not_json": (900000001, b"\x00\x9f<html>502 Bad Gateway</html>"),
    "not_envelope": (900000002, b'{"hello": "world", "n": [1, 2, 3]}'),
    "other_table": (900000003, other_table(900000003)),
    "breaks_mapping": (900000004, envelope(900000004, state="abc")),
    "huge": (900000005, envelope(900000005, reg_ua="x" * BIG)),
}


def cli(line: Line, *args: str, mapping: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ) | {"FEEDSTORE_DB": str(line.serve.db),
                              "FEEDSTORE_MAPPING": str(mapping or line.serve.mapping), "PYTHONPATH": str(PROJECT)}
    return subprocess.run([sys.executable, "-m", "feedstore.cli", "quarantine", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def fixed_mapping(line: Line, path: Path) -> Path:
    doc = yaml.safe_load(line.serve.mapping.read_text())
    doc["feeds"]["players"]["fields"]["is_blocked"] = "TRY_CAST(state AS INTEGER) = 1"
    doc["feeds"]["players"]["fields"]["status"] = {"sql": "TRY_CAST(state AS INTEGER)",
                                                   "map": {"0": "Normal", "1": "Blocked", "2": "Closed"}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


def test_poison_is_quarantined_counted_listed_and_reapplied_while_the_line_goes_on(line: Line,
                                                                                   tmp_path: Path) -> None:
    topic = f"{line.slot}.public.users"
    produced: dict[str, tuple[str, int, int]] = {}

    def inject(line: Line) -> None:
        producer = KafkaProducer(bootstrap_servers=line.stack.bootstrap, acks="all",
                                 max_request_size=16 * 1024 * 1024)
        try:
            for kind, (user_id, value) in POISON.items():
                meta = producer.send(topic, key=orjson.dumps({"user_id": user_id}), value=value).get(30)
                produced[kind] = (meta.topic, meta.partition, meta.offset)
            producer.send(f"{line.slot}.public.not_mapped", key=b'{"id": 1}', value=b"never read").get(30)
        finally:
            producer.close()

    sims = [PullSimulator(line.serve.url, line.feeds, name="minute", window=1, fmt="csv")]
    run = run_and_check(line, sims, tmp_path, inject, cooldown=3)  # every real change still delivered
    print("\npoison:", run.summary())

    _, body = line.serve.ready()
    assert body["quarantine"]["pending"] and sum(body["quarantine"]["pending"].values()) >= len(POISON)
    metrics = line.serve.client.get("/metrics")
    assert metrics is not None and b"feedstore_quarantined_events" in metrics[1]

    busy = cli(line, "list")
    assert busy.returncode == 2 and "stop `feedstore serve`" in busy.stderr  # the service holds the file

    line.serve.stop()
    listed = cli(line, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = [json.loads(x) for x in listed.stdout.splitlines()]
    where = {(e["topic"], e["partition"], e["offset"]): e for e in entries}
    assert set(produced.values()) <= set(where)  # each one, with its coordinates
    assert all(e["topic"] == topic for e in entries)  # nothing from the unmapped topic: never read
    assert where[produced["huge"]]["value_bytes"] > BIG
    assert "not valid JSON" in where[produced["not_json"]]["reason"]
    table = cli(line, "list", "--topic", topic)
    assert all(f"{t}[{p}]@{o}" in table.stdout for t, p, o in produced.values())

    fixed = fixed_mapping(line, tmp_path / "fixed.yaml")
    retried = cli(line, "retry", "--max-event-bytes", str(2 * BIG), "--json", mapping=fixed)
    outcome = json.loads(retried.stdout)
    assert retried.returncode == 1  # the three that no mapping can fix are still there ...
    assert (outcome["applied"], outcome["still_failing"]) == (2, 3)  # ... the other two went in
    after_retry = time.time()

    line.serve.mapping = fixed
    line.serve.start()  # the service again, with the fixed mapping
    start, end = from_epoch(int(after_retry) - 60), from_epoch(int(time.time()) + 1)
    rows = line.serve.client.window("players", start, end, "json") or []
    ids = {r["id"] for r in rows}
    assert {"900000004", "900000005"} <= ids  # served in the window of the retry, like any change
    assert {"900000001", "900000002", "900000003"}.isdisjoint(ids)
