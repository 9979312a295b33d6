"""The Kafka side: read the mapped topics in batches and hand them on with their offsets.

Partitions are assigned manually, not through group rebalancing: one Feedstore instance
owns its feeds' topics outright (decision 5), and its offsets live in DuckDB next to the
rows (decision 4), so a restart seeks to exactly what was committed there. The offsets
are also committed to the Kafka group afterwards, best-effort, so that the standard
tools (``kafka-consumer-groups --describe``) show the lag.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from cdc.records import Record

log = logging.getLogger("feedstore.consumer")

Offsets = dict[tuple[str, int], int]
Sink = Callable[[Sequence[Record], Offsets], Any]


def kafka_consumer(bootstrap: str, group_id: str, **overrides: Any) -> KafkaConsumer:
    """A kafka-python consumer tuned for large batches; needs the ``crc32c`` package for speed."""
    settings: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": 16 * 1024 * 1024,
        "fetch_max_bytes": 64 * 1024 * 1024,
        "fetch_max_wait_ms": 50,
        "metadata_max_age_ms": 5_000,
        "client_id": f"feedstore-{group_id}",
    }
    settings.update(overrides)
    return KafkaConsumer(**settings)


@dataclass
class BatchPolicy:
    """How big a batch gets. Each batch costs a fixed ~0.1-0.4 s of SQL planning across
    the feeds, so small batches cap ingest; but waiting for big ones costs freshness.
    Hence: gather for ``max_wait_ms`` when keeping up, and up to ``catchup_wait_ms``
    while the partitions' high-water marks show at least ``catchup_backlog`` more events
    (a backlog after a restart, a replay, or a burst)."""

    max_events: int = 20_000
    max_wait_ms: int = 100
    catchup_wait_ms: int = 1_000
    catchup_backlog: int = 2_000


class Consumer:
    """Polls the given topics and calls ``sink(records, next_offsets)`` once per batch.

    ``sink`` must make the records and offsets durable together; when it raises, the
    same batch is offered again after a pause (backing off to 10 s), so nothing is
    skipped and the stored offsets never run ahead of the data. The loop itself never
    dies of a Kafka or sink error: it reports it in :attr:`last_error` (which /ready
    shows) and keeps trying, because an operator would rather fix a full disk or a
    frozen broker than restart the service.
    """

    def __init__(self, client: KafkaConsumer, topics: Sequence[str], stored: Offsets, sink: Sink,
                 policy: BatchPolicy | None = None, *, rediscover_s: float = 5.0) -> None:
        self.client = client
        self.topics = list(topics)
        self.stored = dict(stored)
        self.sink = sink
        self.policy = policy or BatchPolicy()
        self.rediscover_s = rediscover_s
        self.assigned: set[TopicPartition] = set()
        self.stopping = threading.Event()
        self.last_error: str | None = None
        self.failing_since: float | None = None  # wall clock of the first failure in a row
        self.failures = 0  # failed attempts in a row
        self.batches = 0
        self.events = 0
        self.last_batch_at: float | None = None
        self._discovered_at = 0.0
        # High-water marks from fetch responses, for lag (tansu's ListOffsets(latest) under-reports).
        self.highwater: dict[tuple[str, int], int | None] = {}
        # Replays asked for by other threads (the admin endpoint), applied between batches.
        self._seeks: queue.SimpleQueue[tuple[Offsets, Callable[[], Any] | None, Future[Offsets]]] = queue.SimpleQueue()

    def discover(self) -> None:
        """Assign every partition of the mapped topics that exists now; seek new ones."""
        self._discovered_at = time.monotonic()
        # One metadata request for all topics: partitions_for_topic() on a topic that does
        # not exist yet makes a blocking request of its own (~0.1 s on tansu), which with the
        # reference mapping (12 topics, most not created until their table changes) stalled
        # the consumer ~1.2 s at every rediscovery (bench/ingest.py, py-spy).
        existing = self.client.topics()
        wanted: set[TopicPartition] = set()
        for topic in self.topics:
            if topic not in existing:
                continue
            for p in self.client.partitions_for_topic(topic) or ():
                wanted.add(TopicPartition(topic, p))
        new = wanted - self.assigned
        if not new:
            return
        self.client.assign(sorted(wanted))
        for tp in wanted:
            stored = self.stored.get((tp.topic, tp.partition))
            if stored is not None:
                self.client.seek(tp, stored)
            elif tp in new:
                self.client.seek_to_beginning(tp)
        self.assigned = wanted
        # The group commit follows each stored batch best-effort; a kill between the two
        # leaves the group behind the store. Re-publish what the store holds on assignment,
        # so lag tools (and anyone reading the group) agree with the store after a restart.
        held = {(tp.topic, tp.partition): self.stored[(tp.topic, tp.partition)]
                for tp in new if (tp.topic, tp.partition) in self.stored}
        if held:
            self._commit_to_group(held)
        log.info("assigned", extra={"partitions": len(wanted), "new": sorted(f"{t.topic}[{t.partition}]" for t in new)})

    def poll_batch(self) -> list[Record]:
        if time.monotonic() - self._discovered_at > self.rediscover_s:
            self.discover()  # refreshes metadata, so new topics/partitions show up
        if not self.assigned:
            self.stopping.wait(1.0)  # no mapped topic exists yet (Debezium creates them)
            return []
        records: list[Record] = []
        policy = self.policy
        started = time.monotonic()
        deadline = started + policy.max_wait_ms / 1000
        read_to: dict[TopicPartition, int] = {}
        while len(records) < policy.max_events:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                if self._backlog(read_to) < policy.catchup_backlog:
                    break
                left_ms = int((started + policy.catchup_wait_ms / 1000 - time.monotonic()) * 1000)
                if left_ms <= 0:
                    break
            polled = self.client.poll(timeout_ms=left_ms, max_records=policy.max_events - len(records))
            for tp, msgs in polled.items():
                records.extend(Record(tp.topic, tp.partition, m.offset, m.key, m.value, m.timestamp)
                               for m in msgs)
                read_to[tp] = msgs[-1].offset + 1
        self._note_highwater()
        return records

    def _backlog(self, read_to: dict[TopicPartition, int]) -> int:
        """Events known to be waiting beyond what this batch read, from fetch high-water marks."""
        waiting = 0
        for tp, offset in read_to.items():
            hw = self.client.highwater(tp)
            if hw is not None:
                waiting += max(0, hw - offset)
        return waiting

    def _note_highwater(self) -> None:
        """Remember each partition's high-water mark (consumer thread only; replaced whole,
        so other threads read a consistent dict)."""
        self.highwater = {(tp.topic, tp.partition): self.client.highwater(tp) for tp in self.assigned}

    def lag(self) -> dict[tuple[str, int], int | None]:
        """Events per partition not yet stored; None until a fetch has reported the partition's end."""
        stored = self.stored
        return {key: None if hw is None else max(0, hw - stored.get(key, 0)) for key, hw in self.highwater.items()}

    def run(self) -> None:
        pause = 0.5
        while not self.stopping.is_set():
            self._take_seeks()
            try:
                if not self.assigned:
                    self.discover()
                records = self.poll_batch()
            except Exception as ex:  # noqa: BLE001 - a broker outage must not end the loop
                self._failed("reading from Kafka failed; retrying", ex, pause, events=0)
                self.stopping.wait(pause)
                pause = min(pause * 2, 10.0)
                continue
            pause = 0.5
            if not records:
                continue
            offsets: Offsets = {}
            for r in records:
                offsets[(r.topic, r.partition)] = r.offset + 1
            self._deliver(records, offsets)

    def _deliver(self, records: list[Record], offsets: Offsets) -> None:
        pause = 0.5
        while not self.stopping.is_set():
            try:
                self.sink(records, offsets)
            except Exception as ex:  # noqa: BLE001 - the line must not stop; the error is surfaced
                self._failed("batch not stored; retrying", ex, pause, events=len(records))
                self.stopping.wait(pause)
                pause = min(pause * 2, 10.0)
                continue
            if self.last_error is not None:
                log.info("recovered", extra={"after_failures": self.failures,
                                             "failing_s": round(time.time() - (self.failing_since or time.time()), 1)})
            self.last_error = None
            self.failing_since = None
            self.failures = 0
            self.batches += 1
            self.events += len(records)
            self.last_batch_at = time.time()
            self.stored.update(offsets)
            self._commit_to_group(offsets)
            return

    def _failed(self, what: str, ex: Exception, pause: float, *, events: int) -> None:
        self.last_error = f"{what.split(';')[0]}: {ex}"
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = time.time()
        # The traceback once per streak: enough to diagnose, without one per retry.
        log.error(what, extra={"error": str(ex), "error_type": type(ex).__name__, "events": events,
                               "retry_in_s": pause, "failures": self.failures},
                  exc_info=ex if self.failures == 1 else None)

    def _commit_to_group(self, offsets: Offsets) -> None:
        try:
            self.client.commit_async({TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                                      for (t, p), o in offsets.items()})
        except KafkaError as ex:
            log.debug("group commit failed (lag display only)", extra={"error": str(ex)})

    def seek(self, offsets: Offsets) -> None:
        """Move the read position (replays). Call from the consumer's own thread only."""
        for (topic, partition), offset in offsets.items():
            self.client.seek(TopicPartition(topic, partition), offset)

    def request_seek(self, offsets: Offsets, before: Callable[[], Any] | None = None) -> Future[Offsets]:
        """Move the read position from any thread; done by the loop between two batches.

        ``before`` runs first, in the consumer's thread (the replay rewinds the stored
        offsets there, in one transaction), so no batch is in flight while the store and
        the position change; when it returns a dict, that is the new position. The future
        answers the stored offsets just before the seek.
        """
        done: Future[Offsets] = Future()
        self._seeks.put((dict(offsets), before, done))
        return done

    def _take_seeks(self) -> None:
        while True:
            try:
                offsets, before, done = self._seeks.get_nowait()
            except queue.Empty:
                return
            try:
                was = dict(self.stored)
                got = before() if before is not None else None
                if isinstance(got, dict):  # `before` decided the offsets itself (an installed rebuild)
                    offsets = got
                self.stored.update(offsets)
                self.seek({tp: o for tp, o in offsets.items() if TopicPartition(*tp) in self.assigned})
                log.info("seek", extra={"partitions": {f"{t}[{p}]": o for (t, p), o in sorted(offsets.items())}})
                done.set_result(was)
            except Exception as ex:  # noqa: BLE001 - the requester gets the error; the loop goes on
                done.set_exception(ex)

    def status(self) -> dict[str, Any]:
        """What /ready reports: healthy unless the current batch or poll keeps failing."""
        return {"ok": self.last_error is None, "last_error": self.last_error,
                "failing_since": self.failing_since, "failures": self.failures,
                "batches": self.batches, "events": self.events, "last_batch_at": self.last_batch_at,
                "partitions": len(self.assigned)}

    def stop(self) -> None:
        self.stopping.set()
