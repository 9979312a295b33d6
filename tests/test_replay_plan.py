"""Replay planning without services: argument parsing and target resolution (cdc/replay.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cdc.replay import Bounds, ReplayError, Target, make_plan, parse_duration, parse_topic, select, target_from

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
T = "spacevegas.public.users"
U = "spacevegas.public.payments"
GONE = "spacevegas.public.gone"


@pytest.mark.parametrize(("text", "want"), [
    ("PT30M", timedelta(minutes=30)), ("P1D", timedelta(days=1)), ("PT6H", timedelta(hours=6)),
    ("P2DT12H5M", timedelta(days=2, hours=12, minutes=5)), ("pt90s", timedelta(seconds=90)),
])
def test_durations(text: str, want: timedelta) -> None:
    assert parse_duration(text) == want


@pytest.mark.parametrize("text", ["", "P", "PT", "P1DT", "1D", "P1M", "P1Y", "PT-5M", "P1.5D", "P1W", "PT5M junk"])
def test_bad_durations_refused(text: str) -> None:
    with pytest.raises(ReplayError, match="--by-duration"):
        parse_duration(text)


def test_topic_partitions() -> None:
    assert parse_topic(T) == (T, None)
    assert parse_topic(f"{T}:0,3") == (T, frozenset({0, 3}))
    for bad in (f"{T}:x", f"{T}:", f"{T}:-1", ":1"):
        with pytest.raises(ReplayError):
            parse_topic(bad)


def test_exactly_one_target_and_future_refused() -> None:
    with pytest.raises(ReplayError, match="exactly one"):
        target_from(now=NOW)
    with pytest.raises(ReplayError, match="exactly one"):
        target_from(to_earliest=True, to_offset=3, now=NOW)
    with pytest.raises(ReplayError, match="in the future"):
        target_from(to_datetime="2026-05-01 12:00:01", now=NOW)
    with pytest.raises(ReplayError, match="negative"):
        target_from(shift_by=5, now=NOW)
    hour_ago = int((NOW - timedelta(hours=1)).timestamp() * 1000)
    assert target_from(by_duration="PT1H", now=NOW) == Target("time", hour_ago)
    assert target_from(to_datetime="2026-05-01T11:00:00", now=NOW) == target_from(by_duration="PT1H", now=NOW)


def test_select_topics_feeds_and_unknowns() -> None:
    mapped = [U, T]
    assert select(mapped, [], [], {"players": T}) == {U: None, T: None}
    assert select(mapped, [], ["players"], {"players": T}) == {T: None}
    assert select(mapped, [f"{T}:1", f"{T}:2"], [], {}) == {T: frozenset({1, 2})}
    with pytest.raises(ReplayError, match="not a mapped topic"):
        select(mapped, ["spacevegas.public.nope"], [], {})
    with pytest.raises(ReplayError, match="not a mapped feed"):
        select(mapped, [], ["nope"], {"players": T})


BOUNDS = {(T, 0): Bounds(0, 100, 40), (T, 1): Bounds(10, 50, None), (U, 0): Bounds(0, 0, None)}


def test_plan_per_target() -> None:
    stored = {(T, 0): 100, (T, 1): 50}
    chosen = {T: None}
    by_time = make_plan(Target("time", 1), chosen, stored, BOUNDS)
    assert [(r.partition, r.current, r.target, r.events) for r in by_time.rows] == [(0, 100, 40, 60), (1, 50, 50, 0)]
    assert by_time.moves == {(T, 0): 40} and by_time.until == {(T, 0): 100} and by_time.events == 60
    earliest = make_plan(Target("earliest"), chosen, stored, BOUNDS)
    assert [r.target for r in earliest.rows] == [0, 10]
    shifted = make_plan(Target("shift", -45), chosen, stored, BOUNDS)
    assert [r.target for r in shifted.rows] == [55, 10] and "retention" in shifted.rows[1].note
    assert make_plan(Target("offset", 20), {T: frozenset({1})}, stored, BOUNDS).moves == {(T, 1): 20}


def test_plan_refuses_what_it_cannot_honour() -> None:
    stored = {(T, 0): 60, (T, 1): 50}
    with pytest.raises(ReplayError, match="beyond the end"):
        make_plan(Target("offset", 101), {T: None}, stored, BOUNDS)
    with pytest.raises(ReplayError, match="only moves back"):
        make_plan(Target("offset", 70), {T: frozenset({0})}, stored, BOUNDS)
    with pytest.raises(ReplayError, match="no partition 7"):
        make_plan(Target("earliest"), {T: frozenset({7})}, stored, BOUNDS)
    with pytest.raises(ReplayError, match="does not exist"):
        make_plan(Target("earliest"), {GONE: None}, stored, BOUNDS, named=[GONE])
    assert make_plan(Target("earliest"), {GONE: None}, stored, BOUNDS).rows == ()  # not named: nothing to replay
    with pytest.raises(ReplayError, match="recreated"):
        make_plan(Target("earliest"), {T: None}, {(T, 0): 101}, BOUNDS)


def test_never_read_partition_is_left_alone() -> None:
    plan = make_plan(Target("earliest"), {T: frozenset({0})}, {}, BOUNDS)
    assert plan.moves == {} and "never read" in plan.rows[0].note
