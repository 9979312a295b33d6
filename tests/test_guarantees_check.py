"""The checker of tests/pullcheck.py catches each violation it is there to catch.

Pure: hand-made pulls against a hand-made reference. A checker that passes everything
would make the stack tests worthless, so each rule gets a run that breaks it.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

import pytest

from materializer.mapping import Mapping
from tests.fix_line import Progress
from tests.pullcheck import Reference, Report, Version, check
from tests.pullsim import Pull, Row, epoch, stamp_text

T0 = datetime(2025, 5, 1, 12, 0, 0)
TOPIC = "spacevegas.public.users"


def row(city: str, stamp: datetime, player: str = "1") -> Row:
    return {"id": player, "city": city, "modified_at": stamp_text(stamp)}


def content(city: str, player: str = "1") -> Row:
    return {"id": player, "city": city}


def at(seconds: float) -> float:
    return epoch(T0) + seconds


class World:
    """Player 1 changes city A -> B -> C; B is committed at 2.1 s, stored before 3 s,
    and C is committed at 10 s: the pull of [2, 3) must return B."""

    def __init__(self) -> None:
        self.versions = [Version(content("A"), (TOPIC, 0, 0), at(0.1)),
                         Version(content("B"), (TOPIC, 0, 1), at(2.1)),
                         Version(content("C"), (TOPIC, 0, 2), at(10.0))]
        self.progress = Progress("unused:9092", "unused")
        self.progress.samples = [(at(0.5), {(TOPIC, 0): 1}), (at(2.6), {(TOPIC, 0): 2}), (at(10.5), {(TOPIC, 0): 3})]
        self.deliveries: dict[int, list[Row]] = {0: [row("A", T0 + timedelta(seconds=0.3))],
                                                 2: [row("B", T0 + timedelta(seconds=2.4))],
                                                 10: [row("C", T0 + timedelta(seconds=10.2))]}
        self.final = row("C", T0 + timedelta(seconds=10.2))

    def pulls(self) -> list[Pull]:
        out = []
        for s in range(12):
            start = T0 + timedelta(seconds=s)
            out.append(Pull("minute", "players", start, start + timedelta(seconds=1), at(s + 1.05), at(s + 1.1), 1,
                            tuple(self.deliveries.get(s, []))))
        return out

    def check(self, mapping: Mapping) -> Report:
        ref = Reference(versions={name: defaultdict(list) for name in mapping.feeds}, aggregated=set())
        ref.versions["players"][("1",)] = self.versions
        final: dict[str, list[Row]] = {name: [] for name in mapping.feeds} | {"players": [self.final]}
        return check(self.pulls(), ref, final, self.progress, mapping, sim="minute")


def test_a_correct_run_passes_and_counts_the_provable_versions(mapping: Mapping) -> None:
    report = World().check(mapping)
    assert report.problems == []
    assert (report.versions, report.delivered_versions, report.intermediate, report.required) == (3, 3, 2, 2)


def test_a_version_that_sat_in_the_store_during_its_windows_pull_must_be_delivered(mapping: Mapping) -> None:
    world = World()
    del world.deliveries[2]
    assert any("was in the store" in p and "pull did not return it" in p for p in world.check(mapping).problems)


def test_a_version_superseded_before_its_window_was_pulled_may_be_missing(mapping: Mapping) -> None:
    world = World()
    del world.deliveries[2]
    world.versions[2] = Version(content("C"), (TOPIC, 0, 2), at(2.9))  # C came before [2, 3) was pulled
    world.deliveries[10] = [row("C", T0 + timedelta(seconds=2.95))]
    world.deliveries[2] = world.deliveries.pop(10)
    world.final = row("C", T0 + timedelta(seconds=2.95))
    report = world.check(mapping)
    assert report.problems == []
    assert report.superseded == 1 and report.required == 1  # B excused, A still proven


@pytest.mark.parametrize(("breakage", "message"), [
    ("twice", "a row twice in one window"),
    ("outside", "outside the window"),
    ("stale", "is not a later source version"),
    ("bump", "is not a later source version"),
    ("final", "the source's final version"),
    ("gap", "windows not contiguous"),
    ("phantom", "no source event produced it"),
])
def test_each_violation_is_reported(mapping: Mapping, breakage: str, message: str) -> None:
    world = World()
    if breakage == "twice":
        world.deliveries[10].append(row("C", T0 + timedelta(seconds=10.3)))
    elif breakage == "outside":
        world.deliveries[2] = [row("B", T0 + timedelta(seconds=3.5))]
    elif breakage == "stale":  # A again after B: an old event applied over a newer one
        world.deliveries[5] = [row("A", T0 + timedelta(seconds=5.5))]
    elif breakage == "bump":  # C twice with no change in between
        world.deliveries[11] = [row("C", T0 + timedelta(seconds=11.5))]
        world.final = row("C", T0 + timedelta(seconds=11.5))
    elif breakage == "final":
        world.final = row("B", T0 + timedelta(seconds=10.2))
    elif breakage == "phantom":
        world.deliveries[4] = [row("X", T0 + timedelta(seconds=4.5), player="99")]
    report = world.check(mapping)
    if breakage == "gap":
        pulls = [p for p in world.pulls() if p.start != T0 + timedelta(seconds=5)]
        ref = Reference({name: defaultdict(list) for name in mapping.feeds}, set())
        ref.versions["players"][("1",)] = world.versions
        final: dict[str, list[Row]] = {name: [] for name in mapping.feeds} | {"players": [world.final]}
        report = check(pulls, ref, final, world.progress, mapping, sim="minute")
    assert any(message in p for p in report.problems), report.problems
