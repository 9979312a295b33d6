"""The Kafka side: read the mapped topics in batches and hand them on with their offsets.

Partitions are assigned manually, not through group rebalancing: one Feedstore instance
owns its feeds' topics outright (decision 5), and its offsets live in DuckDB next to the
rows (decision 4), so a restart seeks to exactly what was committed there. The offsets
are also committed to the Kafka group afterwards, best-effort, so that the standard
tools (``kafka-consumer-groups --describe``) show the lag.

Two threads, because fetching and storing each leave the other idle when run in turn
(py-spy on ``bench/ingest.py``: the storing thread waited on fetch responses ~40% of
its time). The fetch thread owns the ``KafkaConsumer`` (kafka-python is not thread
safe: every call on it, seeks and group commits included, happens there) and keeps
up to one batch of records queued ahead; the calling thread of :meth:`Consumer.run`
gathers them into batches and hands them to the sink. A seek bumps an epoch, and
records fetched before it are dropped unseen, so a replay never mixes positions.

Given a ``prepare`` step (the service's: decoding, which needs no store), a third
thread gathers and prepares the next batch while the current one is stored, so
parsing JSON and writing DuckDB overlap (bench/ingest.py, 200,000 schema-less events on two
cores: 36k -> 41k events/s). A batch prepared before a seek carries the old epoch and is
dropped too.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
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
Prepare = Callable[[Sequence[Record]], Callable[[Offsets], Any]]
"""Does the part of storing a batch that needs no store (decoding) and returns what
stores it; run by the decode thread for the next batch while one is being stored."""
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
    """How big a batch gets. Each batch has a fixed cost (SQL planning across the
    feeds), so small batches cap ingest; but waiting for big ones costs freshness.

    In the service (:meth:`Consumer.run`) the fetch thread reads on while a batch is
    stored, so the next batch is what arrived meanwhile plus up to ``max_wait_ms``
    (no wait once a poll finds nothing more, or once every partition is read to its
    high-water mark and the batch holds ``catchup_backlog`` events: the end of a backlog
    is stored at once, a trickle still batches up):
    batches grow by themselves to ``max_events`` when storing is the slower side, and
    stay small (fresh) when it is not. A synchronous reader (:meth:`Consumer.poll_batch`,
    the rebuild) has no such overlap; it gathers for ``max_wait_ms``, and up to
    ``catchup_wait_ms`` while the high-water marks show ``catchup_backlog`` more events."""

    max_events: int = 20_000
    # Longer than one fetch response takes to arrive (~90 ms for ~6 MB here), so a batch of
    # a backlog holds two or more: a 50,000-event backlog (bench/ingest.py) was stored in
    # 4 batches at 100 ms, mostly 3 at 125-175 ms, ~6% faster end to end; 200 ms and up
    # start the first batch too late to gain. Each batch costs ~60-80 ms of fixed CPU.
    max_wait_ms: int = 150
    catchup_wait_ms: int = 1_000
    catchup_backlog: int = 2_000
    # Fetched but not yet stored, at most: one batch of events, and this many value bytes
    # (a batch of 20,000 schema-embedded envelopes is ~145 MB).
    prefetch_bytes: int = 256 * 2**20


@dataclass(frozen=True, slots=True)
class _Chunk:
    """What one poll of the fetch thread returned."""

    epoch: int  # the seek generation it was read in
    records: list[Record]
    nbytes: int

    @classmethod
    def of(cls, epoch: int, records: list[Record]) -> _Chunk:
        return cls(epoch, records, sum(len(r.value or b"") for r in records))


@dataclass(frozen=True, slots=True)
class _Ready:
    """A gathered batch, prepared: what stores it, and the seek generation it was read in."""

    epoch: int
    records: list[Record]
    offsets: Offsets
    store: Callable[[Offsets], Any]


@dataclass(frozen=True, slots=True)
class _Seek:
    offsets: Offsets
    epoch: int


class Consumer:
    """Polls the given topics and calls ``sink(records, next_offsets)`` once per batch.

    ``sink`` must make the records and offsets durable together; when it raises, the
    same batch is offered again after a pause (backing off to 10 s), so nothing is
    skipped and the stored offsets never run ahead of the data. The loop itself never
    dies of a Kafka or sink error: it reports it in :attr:`last_error` (which /ready
    shows) and keeps trying, because an operator would rather fix a full disk or a
    frozen broker than restart the service.

    :meth:`run` is the service's loop (with its fetch thread); :meth:`discover` and
    :meth:`poll_batch` serve callers that read synchronously from one thread (rebuild,
    tests) and must not be mixed with :meth:`run`.
    """

    def __init__(self, client: KafkaConsumer, topics: Sequence[str], stored: Offsets, sink: Sink,
                 policy: BatchPolicy | None = None, *, rediscover_s: float = 5.0,
                 prepare: Prepare | None = None) -> None:
        self.client = client
        self.topics = list(topics)
        self.stored = dict(stored)
        self.sink = sink
        # With it, :meth:`run` stores each batch through what ``prepare`` returned, made in
        # a third thread while the batch before is stored; without it, by ``sink``.
        self.prepare = prepare
        self.policy = policy or BatchPolicy()
        self.rediscover_s = rediscover_s
        self.assigned: set[TopicPartition] = set()
        self.stopping = threading.Event()
        self._errors: dict[str, str] = {}  # "fetch" / "store" -> the current failure
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
        # Between the fetch thread and the storing thread (see the module docstring).
        self._room = threading.Condition()
        self._chunks: deque[_Chunk] = deque()
        self._epoch = 0  # storing side: chunks of an older epoch were read before a seek
        self._fetch_epoch = 0  # fetch side
        self._orders: queue.SimpleQueue[_Seek | Offsets] = queue.SimpleQueue()  # seeks and group commits
        self._dry = False  # the fetch thread's last poll found nothing: it is caught up
        self._level = False  # ... or it has read every partition up to its high-water mark
        self._read_to: Offsets = {}  # fetch thread: next offset per partition, as read so far
        self._handoff = threading.Condition()  # between the decode thread and the storing thread
        self._ready: _Ready | None = None  # one batch prepared ahead, at most

    @property
    def last_error(self) -> str | None:
        """The current failure, storing first: what /ready shows."""
        return self._errors.get("store") or self._errors.get("fetch")

    # -- reading (the fetch thread, or a synchronous caller) ---------------------------

    def discover(self) -> None:
        """Assign every partition of the mapped topics that exists now; seek new ones."""
        first = self._discovered_at == 0.0
        self._discovered_at = time.monotonic()
        existing = self._existing_topics(first)
        wanted: set[TopicPartition] = set()
        for topic in self.topics:
            if topic not in existing:
                continue
            for p in self.client.partitions_for_topic(topic) or ():
                wanted.add(TopicPartition(topic, p))
        new = wanted - self.assigned
        if not new:
            return
        # assign() keeps the position of partitions already assigned; only new ones are
        # positioned (at the store's offset), so records fetched ahead are not read twice.
        self.client.assign(sorted(wanted))
        for tp in new:
            self._seek(tp, self.stored.get((tp.topic, tp.partition)))
        self.assigned = wanted
        # The group commit follows each stored batch best-effort; a kill between the two
        # leaves the group behind the store. Re-publish what the store holds on assignment,
        # so lag tools (and anyone reading the group) agree with the store after a restart.
        held = {(tp.topic, tp.partition): self.stored[(tp.topic, tp.partition)]
                for tp in new if (tp.topic, tp.partition) in self.stored}
        if held:
            self._commit_to_group(held)
        log.info("assigned", extra={"partitions": len(wanted), "new": sorted(f"{t.topic}[{t.partition}]" for t in new)})

    def _existing_topics(self, first: bool) -> set[str]:
        """The topics the broker has, from one metadata request for all of them:
        partitions_for_topic() on a topic that does not exist yet makes a blocking request
        of its own, which with the reference mapping (12 topics, most not created until
        their table changes) stalled the consumer ~1.2 s at every rediscovery.

        The first time, the metadata the client fetched as it connected (all topics,
        moments ago) is used as it is: asking again waits out kafka-python's metadata
        refresh backoff, a fixed 100 ms in 3.0 (its ``retry_backoff_ms`` setting does not
        reach the metadata), which was a tenth of every start (bench/ingest.py)."""
        if first:
            cluster = getattr(self.client, "_cluster", None)  # kafka-python's own metadata cache
            known = cluster.topics() if cluster is not None else None
            if known:
                return set(known)
        return set(self.client.topics())

    def _seek(self, tp: TopicPartition, offset: int | None) -> None:
        """Position ``tp`` at ``offset``, or at its beginning when None."""
        if offset is None:
            self.client.seek_to_beginning(tp)
        else:
            self.client.seek(tp, offset)
        self._read_to[(tp.topic, tp.partition)] = offset or 0  # a log that begins later reads as behind

    def _poll(self, timeout_ms: int, max_records: int) -> tuple[list[Record], int]:
        """One poll: the records, and how many more are known to wait behind them."""
        records: list[Record] = []
        waiting = 0
        for tp, msgs in self.client.poll(timeout_ms=timeout_ms, max_records=max_records).items():
            records.extend(Record(tp.topic, tp.partition, m.offset, m.key, m.value, m.timestamp) for m in msgs)
            self._read_to[(tp.topic, tp.partition)] = msgs[-1].offset + 1
            hw = self.client.highwater(tp)
            if hw is not None:
                waiting += max(0, hw - (msgs[-1].offset + 1))
        return records, waiting

    def poll_batch(self) -> list[Record]:
        """One batch by the policy, read in the calling thread (synchronous callers only)."""
        if time.monotonic() - self._discovered_at > self.rediscover_s:
            self.discover()  # refreshes metadata, so new topics/partitions show up
        if not self.assigned:
            self.stopping.wait(1.0)  # no mapped topic exists yet (Debezium creates them)
            return []
        records: list[Record] = []
        policy = self.policy
        started = time.monotonic()
        backlog = 0
        while len(records) < policy.max_events:
            left_ms = int((self._deadline(started, backlog) - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            got, backlog = self._poll(left_ms, policy.max_events - len(records))
            records.extend(got)
        self._note_highwater()
        return records

    def _deadline(self, started: float, backlog: int) -> float:
        """When a batch begun at ``started`` is complete: soon, unless a backlog waits (then bigger batches)."""
        policy = self.policy
        wait_ms = policy.catchup_wait_ms if backlog >= policy.catchup_backlog else policy.max_wait_ms
        return started + wait_ms / 1000

    def _note_highwater(self) -> None:
        """Remember each partition's high-water mark (reading thread only; replaced whole,
        so other threads read a consistent dict)."""
        self.highwater = {(tp.topic, tp.partition): self.client.highwater(tp) for tp in self.assigned}

    def lag(self) -> dict[tuple[str, int], int | None]:
        """Events per partition not yet stored; None until a fetch has reported the partition's end."""
        stored = self.stored
        return {key: None if hw is None else max(0, hw - stored.get(key, 0)) for key, hw in self.highwater.items()}

    def _fetch_loop(self) -> None:
        """The fetch thread: keep up to one batch (and ``prefetch_bytes``) read ahead."""
        pause = 0.5
        limit = self.policy.max_events
        while not self.stopping.is_set():
            self._take_orders()
            with self._room:
                chunks = self._chunks
                if (sum(len(c.records) for c in chunks) >= limit
                        or sum(c.nbytes for c in chunks) >= self.policy.prefetch_bytes):
                    self._room.wait(0.1)  # the storing thread is behind; orders still get served
                    continue
            try:
                if not self.assigned or time.monotonic() - self._discovered_at > self.rediscover_s:
                    self.discover()  # refreshes metadata, so new topics/partitions show up
                if not self.assigned:
                    self.stopping.wait(1.0)  # no mapped topic exists yet (Debezium creates them)
                    continue
                records, _ = self._poll(100, limit)
                self._note_highwater()
                level = all(hw is not None and self._read_to.get(key, -1) >= hw for key, hw in self.highwater.items())
            except Exception as ex:  # noqa: BLE001 - a broker outage must not end the loop
                self._failed("fetch", "reading from Kafka failed; retrying", ex, pause, events=0)
                self.stopping.wait(pause)
                pause = min(pause * 2, 10.0)
                continue
            pause = 0.5
            self._recovered("fetch")
            chunk = _Chunk.of(self._fetch_epoch, records) if records else None
            with self._room:
                if chunk is not None:
                    self._chunks.append(chunk)
                self._dry = chunk is None
                self._level = level
                self._room.notify_all()

    def _take_orders(self) -> None:
        """Seeks and group commits asked for by the storing thread, done where the client lives."""
        while True:
            try:
                order = self._orders.get_nowait()
            except queue.Empty:
                return
            if isinstance(order, _Seek):
                # Everything read ahead was dropped, so every partition goes back to
                # where the store stands (or its beginning, if nothing is stored yet).
                for tp in self.assigned:
                    self._seek(tp, order.offsets.get((tp.topic, tp.partition)))
                self._fetch_epoch = order.epoch
            else:
                self._commit_to_group(order)

    # -- storing (the thread that calls run) ---------------------------------------------

    def run(self) -> None:
        threads = [threading.Thread(target=self._fetch_loop, name="feedstore-fetch", daemon=True)]
        if self.prepare is not None:
            threads.append(threading.Thread(target=self._prepare_loop, name="feedstore-decode", daemon=True))
        for t in threads:
            t.start()
        try:
            while not self.stopping.is_set():
                self._take_seeks()
                batch = self._take_ready() if self.prepare is not None else self._next(self._sink_for)
                if batch is not None and batch.epoch == self._epoch:  # else read before a seek: dropped
                    self._deliver(batch)
        finally:
            self.stopping.set()
            self._wake()
            for t in threads:
                t.join(30)
            if not threads[0].is_alive():
                self._take_orders()  # the last batches' group commits; the client is ours again

    def _sink_for(self, records: Sequence[Record]) -> Callable[[Offsets], Any]:
        return lambda offsets: self.sink(records, offsets)

    def _next(self, prepare: Prepare) -> _Ready | None:
        """Gather the next batch and prepare it; None when there was nothing to gather."""
        epoch, records = self._gather()
        if not records:
            return None
        offsets: Offsets = {}
        for r in records:
            offsets[(r.topic, r.partition)] = r.offset + 1
        try:
            store = prepare(records)
        except Exception as ex:  # a bug in preparing must not lose the batch
            log.error("preparing a batch failed; storing it by the plain path", exc_info=ex,
                      extra={"error": str(ex), "events": len(records)})
            store = self._sink_for(records)
        return _Ready(epoch, records, offsets, store)

    def _prepare_loop(self) -> None:
        """The decode thread: keep one batch gathered and prepared while the storing thread stores."""
        assert self.prepare is not None
        while not self.stopping.is_set():
            with self._handoff:
                while self._ready is not None and not self.stopping.is_set():
                    self._handoff.wait(0.2)
            batch = self._next(self.prepare)
            if batch is None:
                continue
            with self._handoff:
                self._ready = batch
                self._handoff.notify_all()

    def _take_ready(self) -> _Ready | None:
        with self._handoff:
            if self._ready is None:
                self._handoff.wait(0.2)  # wakes for seeks and stop too
            batch, self._ready = self._ready, None
            self._handoff.notify_all()
        return batch

    def _gather(self) -> tuple[int, list[Record]]:
        """The next batch from the fetched chunks, by the policy, and the seek generation
        it was read in; empty when idle (or a seek waits)."""
        policy = self.policy
        records: list[Record] = []
        started: float | None = None
        with self._room:
            epoch = self._epoch
            while (len(records) < policy.max_events and not self.stopping.is_set() and self._seeks.empty()
                   and self._epoch == epoch):
                if self._chunks:
                    chunk = self._chunks.popleft()
                    self._room.notify_all()
                    if chunk.epoch != epoch:
                        continue  # read before a seek
                    need = policy.max_events - len(records)
                    if len(chunk.records) > need:  # the rest opens the next batch
                        self._chunks.appendleft(_Chunk.of(chunk.epoch, chunk.records[need:]))
                    records.extend(chunk.records[:need])
                    if started is None:
                        started = time.monotonic()
                    continue
                if started is None:
                    self._room.wait(0.2)  # idle; wake up now and then for seeks and stop
                    if not self._chunks:
                        break
                    continue
                left = started + policy.max_wait_ms / 1000 - time.monotonic()
                # The fetcher has read everything there is: waiting adds nothing to a batch
                # that is big already (the end of a backlog); a trickle still batches up.
                if left <= 0 or self._dry or (self._level and len(records) >= policy.catchup_backlog):
                    break
                self._room.wait(left)
        return epoch, records

    def _deliver(self, batch: _Ready) -> None:
        records, offsets = batch.records, batch.offsets
        pause = 0.5
        while not self.stopping.is_set():
            try:
                batch.store(offsets)
            except Exception as ex:  # noqa: BLE001 - the line must not stop; the error is surfaced
                self._failed("store", "batch not stored; retrying", ex, pause, events=len(records))
                self.stopping.wait(pause)
                pause = min(pause * 2, 10.0)
                continue
            self._recovered("store")
            self.batches += 1
            self.events += len(records)
            self.last_batch_at = time.time()
            self.stored.update(offsets)
            self._orders.put(dict(offsets))  # to the group, by the fetch thread
            return

    # -- errors ------------------------------------------------------------------------

    def _failed(self, kind: str, what: str, ex: Exception, pause: float, *, events: int) -> None:
        self._errors[kind] = f"{what.split(';')[0]}: {ex}"
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = time.time()
        # The traceback once per streak: enough to diagnose, without one per retry.
        log.error(what, extra={"error": str(ex), "error_type": type(ex).__name__, "events": events,
                               "retry_in_s": pause, "failures": self.failures},
                  exc_info=ex if self.failures == 1 else None)

    def _recovered(self, kind: str) -> None:
        if self._errors.pop(kind, None) is None:
            return
        log.info("recovered", extra={"after_failures": self.failures, "what": kind,
                                     "failing_s": round(time.time() - (self.failing_since or time.time()), 1)})
        if not self._errors:
            self.failing_since = None
            self.failures = 0

    def _commit_to_group(self, offsets: Offsets) -> None:
        try:
            self.client.commit_async({TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                                      for (t, p), o in offsets.items()})
        except KafkaError as ex:
            log.debug("group commit failed (lag display only)", extra={"error": str(ex)})

    # -- seeks -------------------------------------------------------------------------

    def request_seek(self, offsets: Offsets, before: Callable[[], Any] | None = None) -> Future[Offsets]:
        """Move the read position from any thread; done by the loop between two batches.

        ``before`` runs first, in the storing thread (the replay rewinds the stored
        offsets there, in one transaction), so no batch is in flight while the store and
        the position change; when it returns a dict, that is the new position. The future
        answers the stored offsets just before the seek.
        """
        done: Future[Offsets] = Future()
        self._seeks.put((dict(offsets), before, done))
        self._wake()  # a batch being gathered ends now; the storing thread looks
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
                self._restart_reading(dict(self.stored))
                log.info("seek", extra={"partitions": {f"{t}[{p}]": o for (t, p), o in sorted(offsets.items())}})
                done.set_result(was)
            except Exception as ex:  # noqa: BLE001 - the requester gets the error; the loop goes on
                done.set_exception(ex)

    def _restart_reading(self, offsets: Offsets) -> None:
        """Drop what was read ahead and have the fetch thread seek every partition to
        ``offsets`` (the stored position); its next chunks carry the new epoch."""
        with self._room:
            self._epoch += 1
            self._chunks.clear()
            self._orders.put(_Seek(dict(offsets), self._epoch))
            self._room.notify_all()

    def status(self) -> dict[str, Any]:
        """What /ready reports: healthy unless the current batch or poll keeps failing."""
        return {"ok": self.last_error is None, "last_error": self.last_error,
                "failing_since": self.failing_since, "failures": self.failures,
                "batches": self.batches, "events": self.events, "last_batch_at": self.last_batch_at,
                "partitions": len(self.assigned)}

    def stop(self) -> None:
        self.stopping.set()
        self._wake()

    def _wake(self) -> None:
        """Wake every thread that waits for chunks or a prepared batch, to look at seeks and stop."""
        for cond in (self._room, self._handoff):
            with cond:
                cond.notify_all()
