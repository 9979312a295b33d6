"""Replay planning: resolve an operator's target to one offset per topic partition.

Like ``kafka-consumer-groups --reset-offsets``, but safe for this store: a replay only
ever moves a partition *back* (moving forward would skip events the feeds never saw),
targets are clamped to what the topic still holds, and every mistake (an unknown topic
or partition, a datetime in the future, an offset beyond the end) is a
:class:`ReplayError` raised before anything changes.

The Kafka side is read once (:func:`gather`), then :func:`make_plan` is pure. tansu
answers two ListOffsets questions wrongly, so neither answer is trusted for the end:
ListOffsets(latest) under-reports the end of a partition, and a timestamp after the last
message gives offset 0 (timestamp -1) instead of "none". The end is taken from the
high-water mark of a fetch instead, and a -1 timestamp counts as "past the end".
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cdc.types import CdcError

TP = tuple[str, int]


class ReplayError(CdcError):
    """The replay request cannot be planned; the message says what to change."""


@dataclass(frozen=True)
class Target:
    """What to rewind to. ``kind``: earliest | offset | shift | time (``value`` in ms since the epoch)."""

    kind: str
    value: int = 0

    def describe(self) -> str:
        if self.kind == "time":
            return f"first event at or after {datetime.fromtimestamp(self.value / 1000, UTC):%Y-%m-%d %H:%M:%S} UTC"
        return {"earliest": "earliest", "offset": f"offset {self.value}", "shift": f"shift by {self.value}"}[self.kind]


@dataclass(frozen=True)
class Bounds:
    """What the broker holds for one partition; ``at_time``: the first offset at/after the
    target time (None: past the end)."""

    begin: int
    end: int
    at_time: int | None = None


@dataclass(frozen=True)
class Row:
    topic: str
    partition: int
    current: int  # where the store would read next (the beginning when it never stored one)
    target: int
    begin: int
    end: int
    stored: bool  # the store has an offset for this partition
    note: str = ""

    @property
    def events(self) -> int:
        return self.current - self.target

    def as_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "current": self.current, "target": self.target,
                "events": self.events, "begin": self.begin, "end": self.end, "note": self.note}


@dataclass(frozen=True)
class Plan:
    target: Target
    rows: tuple[Row, ...]

    @property
    def events(self) -> int:
        return sum(r.events for r in self.rows)

    @property
    def moves(self) -> dict[TP, int]:
        """The offsets to write: only partitions that actually move back."""
        return {(r.topic, r.partition): r.target for r in self.rows if r.events > 0}

    @property
    def until(self) -> dict[TP, int]:
        """Where the replayed range ends per partition (the offsets before the replay)."""
        return {(r.topic, r.partition): r.current for r in self.rows if r.events > 0}

    def table(self) -> str:
        head = ["topic", "partition", "current", "target", "events", "note"]
        rows = [[r.topic, str(r.partition), str(r.current) if r.stored else f"{r.current} (never read)",
                 str(r.target), f"{r.events:,}", r.note] for r in self.rows]
        widths = [max(len(h), *(len(x[i]) for x in rows)) if rows else len(h) for i, h in enumerate(head)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
        lines += ["  ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)).rstrip() for x in rows]
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {"target": self.target.describe(), "events": self.events, "rows": [r.as_json() for r in self.rows]}


# --------------------------------------------------------------------------- arguments

_DURATION = re.compile(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?")


def parse_duration(text: str) -> timedelta:
    """A strict ISO-8601 duration of days, hours, minutes, seconds (``P1DT2H30M``).

    Years and months are refused: their length depends on the calendar, and an operator
    rewinding "one month" should say how many days they mean.
    """
    m = _DURATION.fullmatch(text.strip().upper())
    if not m or not any(m.groups()) or text.strip().upper().endswith("T"):
        raise ReplayError(f"--by-duration {text!r}: expected an ISO-8601 duration of days/hours/minutes/seconds, "
                          "e.g. PT30M, PT6H, P1D, P2DT12H")
    d, h, mi, s = (int(g or 0) for g in m.groups())
    return timedelta(days=d, hours=h, minutes=mi, seconds=s)


def parse_datetime(text: str) -> datetime:
    """``YYYY-MM-DD HH:MM:SS`` (or ``T`` between), UTC, as an aware datetime."""
    try:
        dt = datetime.strptime(text.strip().replace("T", " "), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        raise ReplayError(f"--to-datetime {text!r}: expected 'YYYY-MM-DD HH:MM:SS' in UTC") from None
    return dt.replace(tzinfo=UTC)


def parse_topic(text: str) -> tuple[str, frozenset[int] | None]:
    """``name`` or ``name:0,1,3``."""
    name, sep, parts = text.partition(":")
    if not name:
        raise ReplayError(f"--topic {text!r}: expected 'name' or 'name:0,1,3'")
    if not sep:
        return name, None
    try:
        chosen = frozenset(int(p) for p in parts.split(","))
    except ValueError:
        raise ReplayError(f"--topic {text!r}: partitions must be numbers, e.g. {name}:0,1,3") from None
    if not chosen or min(chosen) < 0:
        raise ReplayError(f"--topic {text!r}: partitions must be numbers >= 0, e.g. {name}:0,1,3")
    return name, chosen


def target_from(*, to_datetime: str | None = None, by_duration: str | None = None, to_earliest: bool = False,
                to_offset: int | None = None, shift_by: int | None = None, now: datetime) -> Target:
    """Exactly one target from the command line; times are checked against ``now``."""
    given = [n for n, v in (("--to-datetime", to_datetime), ("--by-duration", by_duration),
                            ("--to-earliest", to_earliest or None), ("--to-offset", to_offset),
                            ("--shift-by", shift_by)) if v is not None]
    if len(given) != 1:
        raise ReplayError("give exactly one target: --to-datetime, --by-duration, --to-earliest, --to-offset or "
                          f"--shift-by (got {', '.join(given) or 'none'})")
    if to_datetime is not None:
        at = parse_datetime(to_datetime)
        if at > now:
            raise ReplayError(f"--to-datetime {to_datetime!r} is in the future (now {now:%Y-%m-%d %H:%M:%S} UTC); "
                              "times are UTC")
        return Target("time", int(at.timestamp() * 1000))
    if by_duration is not None:
        return Target("time", int((now - parse_duration(by_duration)).timestamp() * 1000))
    if to_earliest:
        return Target("earliest")
    if to_offset is not None:
        if to_offset < 0:
            raise ReplayError(f"--to-offset {to_offset}: offsets are >= 0")
        return Target("offset", to_offset)
    assert shift_by is not None
    if shift_by >= 0:
        raise ReplayError(f"--shift-by {shift_by}: replays move back; give a negative number, e.g. --shift-by -1000")
    return Target("shift", shift_by)


def select(mapped: Sequence[str], topics: Sequence[str], feeds: Sequence[str],
           feed_topics: Mapping[str, str]) -> dict[str, frozenset[int] | None]:
    """The topics (and partitions) a replay covers: ``--topic`` and ``--feed`` or all mapped topics."""
    chosen: dict[str, frozenset[int] | None] = {}
    for text in topics:
        name, parts = parse_topic(text)
        if name not in mapped:
            raise ReplayError(f"--topic {name!r} is not a mapped topic; mapped: {', '.join(mapped)}")
        chosen[name] = parts if name not in chosen or chosen[name] is None or parts is None else (
            (chosen[name] or frozenset()) | parts)
    for feed in feeds:
        if feed not in feed_topics:
            raise ReplayError(f"--feed {feed!r} is not a mapped feed; mapped: {', '.join(sorted(feed_topics))}")
        chosen.setdefault(feed_topics[feed], None)
    return chosen or dict.fromkeys(mapped)


# --------------------------------------------------------------------------- planning

def make_plan(target: Target, chosen: Mapping[str, frozenset[int] | None], stored: Mapping[TP, int],
              bounds: Mapping[TP, Bounds], named: Iterable[str] = ()) -> Plan:
    """One row per chosen partition; raises before anything is written if one cannot be honoured.

    A topic Debezium has not created yet (no change in that table so far) holds nothing
    to replay and is left out, unless it was ``named`` on the command line.
    """
    rows: list[Row] = []
    named = set(named)
    for topic, parts in sorted(chosen.items()):
        have = sorted(p for t, p in bounds if t == topic)
        if not have and topic not in named:
            continue
        if not have:
            raise ReplayError(f"topic {topic!r} does not exist on the broker (yet): nothing to replay")
        missing = sorted(set(parts or ()) - set(have))
        if missing:
            raise ReplayError(f"topic {topic!r} has no partition {', '.join(map(str, missing))}; it has "
                              f"{', '.join(map(str, have))}")
        for p in sorted(parts) if parts is not None else have:
            rows.append(_row(target, topic, p, stored.get((topic, p)), bounds[(topic, p)]))
    return Plan(target, tuple(rows))


def _row(target: Target, topic: str, p: int, stored: int | None, b: Bounds) -> Row:
    where = f"{topic}[{p}]"
    current = b.begin if stored is None else stored
    note = ""
    if current > b.end:
        raise ReplayError(f"{where}: the store has read up to offset {current} but the topic ends at {b.end}: the "
                          "topic was recreated; rebuild the store (`feedstore rebuild`) instead of replaying")
    if target.kind == "earliest":
        want = b.begin
    elif target.kind == "offset":
        if target.value > b.end:
            raise ReplayError(f"--to-offset {target.value} is beyond the end of {where} (offset {b.end})")
        if target.value > current:
            raise ReplayError(f"--to-offset {target.value} is ahead of what the store has read in {where} "
                              f"(offset {current}): a replay only moves back; skipping events would lose them")
        want = target.value
    elif target.kind == "shift":
        want = current + target.value
    else:
        want = b.end if b.at_time is None else b.at_time
    if want < b.begin:
        note = f"clamped: the topic holds offsets from {b.begin} (retention)"
        want = b.begin
    if want > current:  # a time after what the store has read: nothing to re-read there
        want = current
    if stored is None:
        note = note or "never read: the first start reads it from the beginning anyway"
        want = current
    return Row(topic, p, current, want, b.begin, b.end, stored is not None, note)


# --------------------------------------------------------------------------- the broker

def gather(client: Any, topics: Iterable[str], at_ms: int | None = None, *,
           timeout_s: float = 10.0) -> dict[TP, Bounds]:
    """Begin, true end and (for a time target) the offset at ``at_ms`` of every partition.

    ``client`` is a kafka-python ``KafkaConsumer`` used only for this (no group
    commits). The true end is the high-water mark a fetch reports: the client is
    assigned every partition at its reported end and polled until each has one.
    """
    from kafka import TopicPartition

    tps = [TopicPartition(t, p) for t in topics for p in sorted(client.partitions_for_topic(t) or ())]
    if not tps:
        return {}
    begin = client.beginning_offsets(tps)
    reported = client.end_offsets(tps)
    client.assign(tps)
    for tp in tps:
        client.seek(tp, max(begin[tp], reported[tp] - 1))
    deadline = time.monotonic() + timeout_s
    while any(client.highwater(tp) is None for tp in tps):
        if time.monotonic() > deadline:
            raise ReplayError("the broker did not report the end of every partition within "
                              f"{timeout_s:.0f} s; check FEEDSTORE_KAFKA_BOOTSTRAP and the broker")
        client.poll(timeout_ms=200, max_records=1)
    end = {tp: max(client.highwater(tp), reported[tp]) for tp in tps}
    at: dict[Any, Any] = {}
    if at_ms is not None:
        at = client.offsets_for_times(dict.fromkeys(tps, at_ms))
    out = {}
    for tp in tps:
        found = at.get(tp)
        # tansu: a time after the last message answers offset 0 with timestamp -1.
        at_time = None if found is None or found.timestamp < 0 else found.offset
        out[(tp.topic, tp.partition)] = Bounds(begin[tp], end[tp], at_time)
    return out
