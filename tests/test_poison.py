"""Poison input on a real store: each kind is quarantined with its coordinates and reason,
counted, listed by ``feedstore quarantine list``, and re-applied by ``feedstore
quarantine retry`` once the mapping (or the size limit) is fixed. The good events of the
same batch are applied and the offsets move past the bad ones: the line never stops.

The same on the real line, with raw bytes produced to the topic, is test_poison_line.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from cdc.records import Record
from feedstore.cli import main
from materializer.apply import Materializer
from materializer.mapping import Mapping
from materializer.store import Store
from tests.fix_store import MAPPING, Events, ManualClock

TOPIC = "spacevegas.public.users"
BIG = 10 * 1024 * 1024


def poison(events: Events, base: int = 900) -> dict[str, Record]:
    """One record of each kind of bad input, keyed by kind; offsets follow ``events``."""

    def raw(value: bytes | None, key: int) -> Record:
        rec = Record(TOPIC, 0, events.offset, orjson.dumps({"user_id": key}), value)
        events.offset += 1
        return rec

    def other_table(user_id: int) -> Record:
        rec = events.record("c", None, events.user(user_id))
        doc = orjson.loads(rec.value or b"")
        doc["source"]["table"] = "accounts"
        return Record(rec.topic, rec.partition, rec.offset, rec.key, orjson.dumps(doc))

    return {
        "not_json": raw(b"\x00\x9f<html>garbage", base),
        "not_envelope": raw(b'{"hello": "world", "n": [1, 2, 3]}', base + 1),
        "other_table": other_table(base + 2),
        "breaks_mapping": events.record("c", None, events.user(base + 3, state="abc")),
        "huge": events.record("c", None, events.user(base + 4, reg_ua="x" * BIG)),
    }


def quarantined(store: Store) -> list[dict[str, Any]]:
    with store.cursor() as cur:
        rows = cur.execute("SELECT kafka_offset, reason, feed, retried_at FROM fs_quarantine ORDER BY id").fetchall()
    return [{"offset": o, "reason": r, "feed": f, "retried": t is not None} for o, r, f, t in rows]


def players(store: Store) -> set[str]:
    with store.cursor() as cur:
        return {r[0] for r in cur.execute("SELECT id FROM feed_players").fetchall()}


def fixed_mapping(tmp_path: Path) -> Path:
    """The operator's fix for the mapping failure: a state that is not a number is not 'blocked'."""
    doc = yaml.safe_load(MAPPING.read_text())
    doc["feeds"]["players"]["fields"]["is_blocked"] = "TRY_CAST(state AS INTEGER) = 1"
    doc["feeds"]["players"]["fields"]["status"] = {"sql": "TRY_CAST(state AS INTEGER)",
                                                   "map": {"0": "Normal", "1": "Blocked", "2": "Closed"}}
    path = tmp_path / "fixed.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


@pytest.fixture
def poisoned(tmp_path: Path, mapping: Mapping, events: Events) -> tuple[Path, dict[str, Record], Any]:
    """A store file that went through one batch: good events around every kind of poison."""
    path = tmp_path / "feedstore.duckdb"
    store = Store(path, mapping, clock=ManualClock(__import__("datetime").datetime(2025, 3, 1, 12)))
    good = [events.record("c", None, events.user(i)) for i in (1, 2)]
    bad = poison(events)
    tail = events.record("u", None, events.user(1, city="Mdina"))
    batch = [good[0], *bad.values(), good[1], tail]
    result = Materializer(store, max_event_bytes=1024 * 1024).apply(batch, {(TOPIC, 0): tail.offset + 1})
    store.close()
    return path, bad, result


def test_each_kind_is_quarantined_with_its_coordinates_and_the_rest_goes_on(
        poisoned: tuple[Path, dict[str, Record], Any], mapping: Mapping) -> None:
    path, bad, result = poisoned
    store = Store(path, mapping)
    try:
        kept = quarantined(store)
        assert store.offsets() == {(TOPIC, 0): max(r.offset for r in bad.values()) + 2}  # past the last good one
        assert players(store) == {"1", "2"}  # the good events, including the update after the poison
        with store.cursor() as cur:
            city = cur.execute("SELECT city FROM feed_players WHERE id = '1'").fetchone()
    finally:
        store.close()
    assert city == ("Mdina",)
    by_offset = {q["offset"]: q for q in kept}
    assert result.quarantined == len(kept) >= 5
    assert set(by_offset) == {r.offset for r in bad.values()}  # every poison record, and only those
    reasons = {kind: by_offset[rec.offset]["reason"] for kind, rec in bad.items()}
    assert "not valid JSON" in reasons["not_json"]
    assert "envelope" in reasons["not_envelope"] or "Debezium" in reasons["not_envelope"]
    assert "'public.accounts'" in reasons["other_table"] and "public.users" in reasons["other_table"]
    assert "state" in reasons["breaks_mapping"] or "abc" in reasons["breaks_mapping"]
    assert "10,48" in reasons["huge"] and "FEEDSTORE_MAX_EVENT_BYTES" in reasons["huge"]


def test_quarantine_list_shows_filters_and_prints_json(poisoned: tuple[Path, dict[str, Record], Any],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    path, bad, _ = poisoned
    assert main(["quarantine", "list", "--db", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["id", "quarantined_at", "event", "feed", "size", "state", "reason"]
    for rec in bad.values():
        assert rec.where in out
    assert "10.0 MB" in out and "pending" in out
    assert main(["quarantine", "list", "--db", str(path), "--topic", "elsewhere"]) == 0
    assert not any(rec.where in capsys.readouterr().out for rec in bad.values())
    assert main(["quarantine", "list", "--db", str(path), "--json", "--limit", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2
    assert {"id", "topic", "partition", "offset", "reason", "feed", "value_bytes", "value_preview"} <= set(lines[0])
    assert (lines[0]["topic"], lines[0]["partition"]) == (TOPIC, 0)


def test_retry_after_the_fix_applies_what_now_fits_and_requarantines_the_rest(
        poisoned: tuple[Path, dict[str, Record], Any], mapping: Mapping, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path, bad, _ = poisoned
    fixed = fixed_mapping(tmp_path)
    # Only what the mapping fix addresses; bytes that are not JSON stay bad whatever the mapping.
    code = main(["quarantine", "retry", "--db", str(path), "--mapping", str(fixed), "--json"])
    outcome = json.loads(capsys.readouterr().out)
    assert code == 1  # some still fail ...
    assert outcome["events"] == 5
    assert outcome["applied"] == 1  # ... the mapping failure is fixed
    assert outcome["still_failing"] == 4
    store = Store(path, mapping)
    try:
        assert players(store) == {"1", "2", "903"}
        pending = [q for q in quarantined(store) if not q["retried"]]
        assert {q["offset"] for q in pending} == {r.offset for k, r in bad.items() if k != "breaks_mapping"}
        assert all(q["retried"] for q in quarantined(store) if q not in pending)
    finally:
        store.close()
    # The huge one is legitimate after all: raise the limit for this retry.
    code = main(["quarantine", "retry", "--db", str(path), "--mapping", str(fixed), "--max-event-bytes",
                 str(2 * BIG), "--json"])
    outcome = json.loads(capsys.readouterr().out)
    assert outcome["applied"] == 1 and outcome["still_failing"] == 3 and code == 1
    store = Store(path, mapping)
    try:
        assert "904" in players(store)
        with store.cursor() as cur:
            ua = cur.execute("SELECT length(user_agent) FROM feed_players WHERE id = '904'").fetchone()
    finally:
        store.close()
    assert ua == (BIG,)


def test_retry_with_nothing_pending_says_so(tmp_path: Path, mapping: Mapping,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    Store(tmp_path / "empty.duckdb", mapping).close()
    assert main(["quarantine", "retry", "--db", str(tmp_path / "empty.duckdb")]) == 0
    assert "nothing pending" in capsys.readouterr().out


def test_a_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quarantine", "list", "--db", str(tmp_path / "nope.duckdb")]) == 2
    assert "does not exist" in capsys.readouterr().err
