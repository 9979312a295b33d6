"""Judges what the pull simulator got against what the source committed.

The truth is built from outside the line under test:

- every committed source change comes from an audit trigger in Postgres, and each must
  be on Kafka (Debezium lost nothing: :func:`tests.fix_line.missing_in_log`);
- the feed-visible *versions* of every row come from a reference replay of those Kafka
  events through a fresh store, one event per key per batch, with no crash, no retry,
  no batching effects: the successive contents a perfect line would have served, each
  with its Kafka coordinates and its source commit time (``source.ts_ms``);
- the final players rows come from plain SQL over ``users`` in Postgres (``players_sql``).

What is checked, per simulator and feed (:func:`check`):

1. every pull: no key twice, every stamp inside ``[from, to)``, stamps non-decreasing;
   the windows are contiguous;
2. per key, the deliveries across windows: stamps strictly increase, and their contents
   are a subsequence of the reference versions, in order (no stale, replayed or invented
   version, no bump without a change);
3. per key, the last delivery equals the last reference version and the store's final
   row; no key the reference lacks;
4. intermediate versions: a version must have been delivered whenever it provably sat in
   the store, stamped inside some window, when that window was pulled: its commit time
   is after the window's start, the consumer group shows it applied before the window's
   end (so its stamp is inside), and the next version was committed only after the pull
   answered. Versions not provably so were superseded before a pull could see them (they
   are counted, not excused blindly).

casino_activity is aggregated per session at pull time (decision 7), so only check 1
applies to it.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from cdc.records import Record
from feedstore.config import Settings
from materializer.apply import Materializer
from materializer.casino_mapping import ActionsMapping
from materializer.export import json_chunks
from materializer.mapping import Mapping, load_mapping
from materializer.stamp import TICK
from materializer.store import POS, Store, q, table_name
from tests.fix_line import Event, Line, Progress
from tests.pullsim import Pull, PullSimulator, Row, epoch, from_epoch, parse_rows, stamp_text

Key = tuple[str, ...]


@dataclass(frozen=True)
class Version:
    content: Row  # the feed row without its stamp, as the API renders it
    coord: tuple[str, int, int]  # the Kafka event that produced it
    commit: float  # source commit time, seconds since the epoch


@dataclass
class Reference:
    versions: dict[str, dict[Key, list[Version]]]  # feed -> key -> versions in order
    aggregated: set[str]


def reference(mapping_path: Path, events: Sequence[Event], workdir: Path) -> Reference:
    """Replay ``events`` one per key per batch through a fresh store; record each version."""
    mapping = load_mapping(mapping_path)
    store = Store(workdir / "reference.duckdb", mapping)
    try:
        materializer = Materializer(store, max_event_bytes=Settings().max_event_bytes)  # as the service
        versions: dict[str, dict[Key, list[Version]]] = {name: defaultdict(list) for name in mapping.feeds}
        aggregated = {name for name, fm in mapping.feeds.items() if isinstance(fm, ActionsMapping)}
        # Per batch at most one event per feed row: rows are keyed by the source columns the
        # feed keys read (not always the table's primary key: auto_logins is per player).
        key_cols: dict[str, list[str]] = defaultdict(list)
        for name, fm in mapping.feeds.items():
            if name not in aggregated:
                cols = set().union(*(fm.field_columns.get(k, frozenset()) for k in fm.feed.key))
                key_cols[fm.source.topic] = sorted(set(key_cols[fm.source.topic]) | cols)
        per_key: dict[tuple[Any, ...], list[Event]] = defaultdict(list)
        for e in sorted(events, key=lambda e: (e.position if e.position is not None else -1, e.coord)):
            if e.value is None:
                continue
            values = tuple((e.row or {}).get(c) for c in key_cols.get(e.topic, []))
            per_key[(e.topic, values) if any(v is not None for v in values) else (e.topic, e.key)].append(e)
        for batch in itertools.zip_longest(*per_key.values()):
            round_ = [e for e in batch if e is not None]
            result = materializer.apply([Record(e.topic, e.partition, e.offset, e.key, e.value) for e in round_], {})
            if result.stamp is None:
                continue
            by_pos = {(e.topic, e.position if e.position is not None else e.offset): e for e in round_}
            for name, fm in mapping.feeds.items():
                if name in aggregated or not result.changed.get(name):
                    continue
                for key, row, pos in _changed(store, mapping, name, result.stamp):
                    event = by_pos.get((fm.source.topic, pos))
                    assert event is not None, f"{name} {key}: no event at position {pos} in the round"
                    versions[name][key].append(Version(row, event.coord, (event.commit_ms or 0) / 1000))
        return Reference(versions, aggregated)
    finally:
        store.close()


def _changed(store: Store, mapping: Mapping, feed: str, stamp: datetime) -> list[tuple[Key, Row, int]]:
    f = mapping.feeds[feed].feed
    rows = parse_rows(b"".join(json_chunks(store, f, stamp, stamp + TICK)), "json")
    with store.cursor() as cur:
        pos = {tuple(str(v) for v in r[:-1]): r[-1] for r in cur.execute(
            f"SELECT {', '.join(q(k) for k in f.key)}, {POS} FROM {table_name(f)} WHERE {q(f.stamp)} = ?",
            [stamp]).fetchall()}
    out = []
    for row in rows:
        key = tuple(row[k] for k in f.key)
        out.append((key, {k: v for k, v in row.items() if k != f.stamp}, pos[key]))
    return out


@dataclass
class Report:
    """What one simulator's run covered; the numbers the issue note quotes."""

    sim: str
    windows: int = 0  # distinct windows pulled (each for every feed)
    pulls: int = 0
    retried: int = 0  # pulls that needed more than one attempt
    rows: int = 0
    keys: int = 0
    versions: int = 0
    delivered_versions: int = 0
    intermediate: int = 0
    required: int = 0  # intermediate versions provably visible to a pull: all delivered
    superseded: int = 0  # intermediate versions replaced before any pull could see them
    problems: list[str] = field(default_factory=list)

    def fail(self, text: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(text)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "problems"}


def check(pulls: Sequence[Pull], ref: Reference, final: dict[str, list[Row]], progress: Progress,
          mapping: Mapping, *, sim: str) -> Report:
    """All checks of the module doc for one simulator's pulls; problems collected in the report."""
    report = Report(sim)
    report.pulls = len(pulls)
    report.retried = sum(1 for p in pulls if p.attempts > 1)
    report.windows = len({(p.start, p.end) for p in pulls})
    bounds = _Bounds(progress)
    todo = []
    for name, fm in mapping.feeds.items():
        feed = fm.feed
        mine = sorted((p for p in pulls if p.feed == name), key=lambda p: p.start)
        # casino_activity returns each session with an action in the window, aggregated
        # over all its actions (decision 7): its stamp may lie after the window.
        _check_windows(mine, feed.stamp, feed.key, report, name, stamps=name not in ref.aggregated)
        if name in ref.aggregated:
            continue
        deliveries: dict[Key, list[tuple[Pull, Row]]] = defaultdict(list)
        for p in mine:
            for row in p.rows:
                deliveries[tuple(row[k] for k in feed.key)].append((p, row))
                report.rows += 1
        versions = ref.versions[name]
        store = {tuple(r[k] for k in feed.key): r for r in final[name]}
        for key in store.keys() - versions.keys():
            report.fail(f"{name} {key}: in the store but no source event produced it")
        for key, vs in versions.items():
            report.keys += 1
            report.versions += len(vs)
            got = deliveries.get(key, [])
            for i, stamp in _check_key(name, key, vs, got, store.get(key), feed.stamp, report):
                bounds.delivered(vs[i].coord, stamp)
            todo.append((name, key, vs, got, mine))
        for key in deliveries.keys() - versions.keys():
            report.fail(f"{name} {key}: delivered but no source event produced it")
    for name, key, vs, got, mine in todo:
        _check_intermediate(name, key, vs, got, mine, bounds, report)
    return report


class _Bounds:
    """When was an event certainly stored (its stamp certainly below)? The earlier of two facts:

    - the consumer group's committed offset passed it (the service commits to the group
      after the DuckDB transaction), as :class:`Progress` sampled it;
    - a later event of the same partition was delivered with stamp second ``s``: the
      consumer applies a partition in offset order, so this event's batch stamp is at most
      that one, below ``s + 1``.
    """

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self._later: dict[tuple[str, int], list[tuple[int, float]]] = defaultdict(list)
        self._suffix: dict[tuple[str, int], tuple[list[int], list[float]]] | None = None

    def delivered(self, coord: tuple[str, int, int], stamp: str) -> None:
        self._later[coord[:2]].append((coord[2], epoch(datetime.fromisoformat(stamp)) + 1))
        self._suffix = None

    def stored_before(self, coord: tuple[str, int, int]) -> float | None:
        if self._suffix is None:
            self._suffix = {}
            for part, items in self._later.items():
                items.sort()
                mins = [t for _, t in items]
                for i in range(len(mins) - 2, -1, -1):
                    mins[i] = min(mins[i], mins[i + 1])
                self._suffix[part] = ([o for o, _ in items], mins)
        offsets, mins = self._suffix.get(coord[:2], ([], []))
        i = bisect.bisect_right(offsets, coord[2])
        later = mins[i] if i < len(mins) else None
        applied = self.progress.applied_by(*coord)
        known = [t for t in (later, applied) if t is not None]
        return min(known) if known else None


def _check_windows(mine: list[Pull], stamp: str, key: Sequence[str], report: Report, name: str, *,
                   stamps: bool = True) -> None:
    for a, b in itertools.pairwise(mine):
        if a.end != b.start:
            report.fail(f"{name}: windows not contiguous: {a.start}..{a.end} then {b.start}..{b.end}")
    for p in mine:
        keys = [tuple(r[k] for k in key) for r in p.rows]
        if len(keys) != len(set(keys)):
            dup = [k for k in keys if keys.count(k) > 1][:3]
            report.fail(f"{name} [{p.start}, {p.end}): a row twice in one window: {dup}")
        if not stamps:
            continue
        values = [r[stamp] for r in p.rows]
        if values != sorted(values):
            report.fail(f"{name} [{p.start}, {p.end}): {stamp} decreases within the window")
        lo, hi = stamp_text(p.start), stamp_text(p.end)
        outside = [s for s in values if not lo <= s < hi]
        if outside:
            report.fail(f"{name} [{p.start}, {p.end}): {stamp} outside the window: {outside[:3]}")


def _check_key(name: str, key: Key, versions: list[Version], got: list[tuple[Pull, Row]], stored: Row | None,
               stamp: str, report: Report) -> list[tuple[int, str]]:
    """Checks 2 and 3 for one key; returns which version each delivery was, with its stamp."""
    where = f"{name} {key}"
    if not got:
        report.fail(f"{where}: never delivered (last version {versions[-1].content})")
        return []
    stamps = [row[stamp] for _, row in got]
    if any(a >= b for a, b in itertools.pairwise(stamps)):
        report.fail(f"{where}: {stamp} does not increase across deliveries: {stamps}")
    i = 0
    matched: list[tuple[int, str]] = []
    for p, row in got:
        content = {k: v for k, v in row.items() if k != stamp}
        while i < len(versions) and versions[i].content != content:
            i += 1
        if i == len(versions):
            report.fail(f"{where}: delivery in [{p.start}, {p.end}) is not a later source version: {content}; "
                        f"versions {[v.content for v in versions]}")
            return matched
        if row[stamp] < stamp_text(from_epoch(versions[i].commit)):
            report.fail(f"{where}: {stamp} {row[stamp]} before the source committed that version")
        matched.append((i, row[stamp]))
        i += 1
    report.delivered_versions += len(matched)
    last = {k: v for k, v in got[-1][1].items() if k != stamp}
    if last != versions[-1].content:
        report.fail(f"{where}: last delivery {last} != the source's final version {versions[-1].content}")
    if stored is None or {k: v for k, v in stored.items() if k != stamp} != versions[-1].content:
        report.fail(f"{where}: the store holds {stored}, the source's final version is {versions[-1].content}")
    elif stored[stamp] != got[-1][1][stamp]:
        report.fail(f"{where}: the store's {stamp} {stored[stamp]} differs from the last delivery's")
    return matched


def _check_intermediate(name: str, key: Key, versions: list[Version], got: list[tuple[Pull, Row]],
                        mine: list[Pull], bounds: _Bounds, report: Report) -> None:
    for v, nxt in itertools.pairwise(versions):
        report.intermediate += 1
        applied = bounds.stored_before(v.coord)
        window = None
        if applied is not None:
            for p in mine:
                if epoch(p.start) <= v.commit and applied <= epoch(p.end):
                    window = p
                    break
        if window is None or nxt.commit <= window.answered_at:
            report.superseded += 1 if not any(_is(row, v) for _, row in got) else 0
            continue
        report.required += 1
        if not any(p is window and _is(row, v) for p, row in got):
            report.fail(f"{name} {key}: version {v.content} was in the store, stamped in [{window.start}, "
                        f"{window.end}), when that window was pulled, but the pull did not return it")


def _is(row: Row, v: Version) -> bool:
    return all(row.get(k) == val for k, val in v.content.items())


PLAYERS_CORE = ("id", "first_name", "last_name", "gender", "country", "city", "registered_at",
                "is_blocked", "status", "self_excluded")


def players_sql(dsn: str) -> dict[str, dict[str, str]]:
    """Players as plain SQL over the legacy ``users`` table, independent of the mapping code."""
    sql = """
        SELECT user_id::text, fname, lname,
               CASE sex WHEN 'M' THEN 'male' WHEN 'F' THEN 'female' END,
               country_name, city,
               to_char((created AT TIME ZONE 'Europe/Malta') AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
               CASE WHEN state = 1 THEN 'true' ELSE 'false' END,
               CASE state WHEN 0 THEN 'Normal' WHEN 1 THEN 'Blocked' WHEN 2 THEN 'Closed' END,
               CASE WHEN no_marketing THEN 'true' ELSE 'false' END
        FROM users"""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(sql).fetchall()
    return {r[0]: {k: "" if v is None else str(v) for k, v in zip(PLAYERS_CORE, r, strict=True)} for r in rows}


def check_players_source(dsn: str, final: Iterable[Row], deleted: set[str]) -> list[str]:
    """The store's players against Postgres, for the fields whose mapping is plain SQL."""
    truth = players_sql(dsn)
    store = {r["id"]: r for r in final}
    problems = [f"players {k}: in the source, not in the store" for k in truth.keys() - store.keys()]
    problems += [f"players {k}: in the store, not in the source" for k in store.keys() - truth.keys() - deleted]
    for k in truth.keys() & store.keys():
        got = {f: store[k][f] for f in PLAYERS_CORE}
        if got != truth[k]:
            problems.append(f"players {k}: store {got} != source {truth[k]}")
    return problems[:50]


# --------------------------------------------------------------------------- one run, judged

@dataclass
class Run:
    reports: list[Report]
    events: int
    kills: int
    source_changes: int
    statements: int
    seconds: dict[str, float]

    def summary(self) -> dict[str, Any]:
        return {"events": self.events, "kills": self.kills, "source_changes": self.source_changes,
                "statements": self.statements, "sims": [r.summary() for r in self.reports], "seconds": self.seconds}


def run_and_check(line: Line, sims: Sequence[PullSimulator], workdir: Path, fault: Callable[[Line], None], *,
                  prewarm: float = 2.0, warmup: float = 2.0, cooldown: float = 1.5) -> Run:
    """Pull while the workload runs, inject ``fault``, let the line settle, judge everything.

    The workload starts first, so the topics exist and the tables have rows to change
    when the simulators and then the service start (from the beginning of the topics).
    """
    phases: dict[str, float] = {}
    mark = time.monotonic()

    def phase(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        phases[name] = round(now - mark, 1)
        mark = now

    line.source.start()
    time.sleep(prewarm)
    for sim in sims:
        sim.start()
    try:
        line.serve.start()
        time.sleep(warmup)
        phase("run")
        fault(line)
        phase("fault")
        time.sleep(cooldown)
        events = line.settle()
        phase("settle")
        done = time.time()
        pulls = {sim.name: sim.finish(done) for sim in sims}
        phase("last windows")
    finally:
        for sim in sims:
            sim.abort()
    final = {feed: line.serve.client.everything(feed) for feed in line.feeds}
    ref = reference(line.serve.mapping, events, workdir)
    phase("reference")
    reports = [check(pulls[sim.name], ref, final, line.progress, line.mapping, sim=sim.name) for sim in sims]
    audited = line.source.audited()
    deleted = {str(a.row.get("user_id")) for a in audited if a.tbl == "public.users" and a.op == "DELETE"}
    problems = check_players_source(line.dsn, final["players"], deleted)
    for r in reports:
        problems += [f"[{r.sim}] {p}" for p in r.problems]
    phase("check")
    run = Run(reports, len(events), line.serve.kills, len(audited), line.source.statements, phases)
    assert not problems, "\n".join(problems[:40]) + f"\n{run.summary()}"
    return run
