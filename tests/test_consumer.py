"""The consumer against a real broker: a failing sink gets the same batch again, nothing is
skipped or repeated after success, and a restart resumes exactly at the stored offsets."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from kafka import KafkaProducer, TopicPartition

from cdc.consumer import BatchPolicy, Consumer, Offsets, kafka_consumer
from cdc.records import Record
from deploy.localstack.stack import LocalStack

pytestmark = pytest.mark.stack


def produce(bootstrap: str, topic: str, n: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for i in range(n):
            producer.send(topic, key=str(i % 7).encode(), value=f"v{i}".encode())
        producer.flush()
    finally:
        producer.close()


class Sink:
    """Fails the first ``failures`` calls, then keeps what it is given."""

    def __init__(self, failures: int, want: int) -> None:
        self.failures = failures
        self.want = want
        self.calls: list[tuple[list[Record], Offsets]] = []
        self.stored: list[Record] = []
        self.errors_seen: list[str | None] = []
        self.done = threading.Event()
        self.consumer: Consumer | None = None

    def __call__(self, records: Sequence[Record], offsets: Offsets) -> None:
        self.calls.append((list(records), dict(offsets)))
        if self.failures:
            self.failures -= 1
            raise OSError("disk full (simulated by the test's sink)")
        assert self.consumer is not None
        self.errors_seen.append(self.consumer.last_error)
        self.stored.extend(records)
        if len(self.stored) >= self.want:
            self.done.set()


def run(consumer: Consumer, sink: Sink, timeout: float = 60) -> None:
    sink.consumer = consumer
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        assert sink.done.wait(timeout), f"stored {len(sink.stored)} of {sink.want}"
    finally:
        consumer.stop()
        thread.join(10)
        consumer.client.close()


def consumer_for(stack: LocalStack, topic: str, sink: Sink, stored: Offsets | None = None) -> Consumer:
    client = kafka_consumer(stack.bootstrap, f"test-{uuid.uuid4().hex[:6]}")
    return Consumer(client, [topic], stored or {}, sink, BatchPolicy(max_events=10, max_wait_ms=50))


def test_a_failing_sink_gets_the_same_batch_again_and_nothing_is_skipped(line_stack: LocalStack) -> None:
    topic = f"consumer-{uuid.uuid4().hex[:8]}"
    produce(line_stack.bootstrap, topic, 60)
    sink = Sink(failures=3, want=60)
    consumer = consumer_for(line_stack, topic, sink)
    run(consumer, sink)
    first, retried = sink.calls[0], sink.calls[3]
    assert [r.where for r in retried[0]] == [r.where for r in first[0]]  # the very same batch, after backoff
    assert retried[1] == first[1]
    assert sink.errors_seen[0] is not None and "disk full" in sink.errors_seen[0]  # reported while failing
    assert consumer.last_error is None and consumer.failures == 0  # and cleared by the success
    where = [r.where for r in sink.stored]
    assert len(where) == len(set(where)) == 60  # each record stored exactly once
    by_partition: dict[int, list[int]] = {}
    for r in sink.stored:
        by_partition.setdefault(r.partition, []).append(r.offset)
    for p, offsets in by_partition.items():
        assert offsets == list(range(len(offsets)))  # in order, no gap
        assert consumer.stored[(topic, p)] == len(offsets)
    status = consumer.status()
    assert status["ok"] and status["events"] == 60 and status["batches"] >= 6


def test_a_restart_resumes_exactly_at_the_stored_offsets(line_stack: LocalStack) -> None:
    topic = f"consumer-{uuid.uuid4().hex[:8]}"
    produce(line_stack.bootstrap, topic, 40)
    everything = Sink(failures=0, want=40)
    run(consumer_for(line_stack, topic, everything), everything)
    ends: dict[int, int] = {}
    for r in everything.stored:
        ends[r.partition] = max(ends.get(r.partition, 0), r.offset + 1)
    stored = {(topic, p): end // 2 for p, end in ends.items()}  # what a store had committed before a crash
    rest = Sink(failures=0, want=sum(end - end // 2 for end in ends.values()))
    run(consumer_for(line_stack, topic, rest, stored), rest)
    got: dict[int, list[int]] = {}
    for r in rest.stored:
        got.setdefault(r.partition, []).append(r.offset)
    assert got == {p: list(range(end // 2, end)) for p, end in ends.items() if end // 2 < end}


def test_discovery_assigns_every_existing_mapped_topic_first_from_the_connect_metadata(line_stack: LocalStack) -> None:
    # The first discovery reads the metadata the client fetched as it connected; a
    # later one asks the broker, so a topic created meanwhile is picked up.
    topics = [f"consumer-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    for topic in topics[:2]:
        produce(line_stack.bootstrap, topic, 4)
    client = kafka_consumer(line_stack.bootstrap, f"test-{uuid.uuid4().hex[:6]}")
    try:
        consumer = Consumer(client, topics, {}, lambda records, offsets: None)
        consumer.discover()
        assert consumer.assigned == {TopicPartition(t, p) for t in topics[:2] for p in client.partitions_for_topic(t)}
        produce(line_stack.bootstrap, topics[2], 4)
        consumer.discover()
        assert {tp.topic for tp in consumer.assigned} == set(topics)
    finally:
        client.close()


def test_status_says_what_fails(line_stack: LocalStack) -> None:
    topic = f"consumer-{uuid.uuid4().hex[:8]}"
    produce(line_stack.bootstrap, topic, 5)
    sink = Sink(failures=10**6, want=1)
    consumer = consumer_for(line_stack, topic, sink)
    thread = threading.Thread(target=consumer.run, daemon=True)
    sink.consumer = consumer
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and consumer.failures < 2:
        time.sleep(0.05)
    status: dict[str, Any] = consumer.status()
    consumer.stop()
    thread.join(15)
    consumer.client.close()
    assert not status["ok"] and status["failures"] >= 2
    assert status["last_error"].startswith("batch not stored: disk full")
    assert status["failing_since"] is not None and status["events"] == 0


class Prepared(Sink):
    """A sink whose batches are prepared first (as the service decodes them), in the decode thread."""

    def __init__(self, failures: int, want: int, *, broken_every: int = 0) -> None:
        super().__init__(failures, want)
        self.prepared_in: set[str] = set()
        self.broken_every = broken_every  # every n-th prepare raises: the batch must still be stored
        self.prepares = 0

    def prepare(self, records: Sequence[Record]) -> Any:
        self.prepares += 1
        self.prepared_in.add(threading.current_thread().name)
        if self.broken_every and self.prepares % self.broken_every == 0:
            raise ValueError("a bug in preparing (simulated)")
        got = list(records)
        return lambda offsets: self(got, offsets)


@pytest.mark.parametrize("broken_every", [0, 3], ids=["prepared", "prepare-fails-sometimes"])
def test_prepared_batches_are_stored_once_in_order_by_the_storing_thread(line_stack: LocalStack,
                                                                        broken_every: int) -> None:
    topic = f"consumer-{uuid.uuid4().hex[:8]}"
    produce(line_stack.bootstrap, topic, 80)
    sink = Prepared(failures=2, want=80, broken_every=broken_every)
    client = kafka_consumer(line_stack.bootstrap, f"test-{uuid.uuid4().hex[:6]}")
    consumer = Consumer(client, [topic], {}, sink, BatchPolicy(max_events=10, max_wait_ms=50), prepare=sink.prepare)
    run(consumer, sink)
    assert sink.prepared_in == {"feedstore-decode"}
    first, retried = sink.calls[0], sink.calls[2]
    assert [r.where for r in retried[0]] == [r.where for r in first[0]]  # a failed store is retried as is
    where = [r.where for r in sink.stored]
    assert len(where) == len(set(where)) == 80
    for p in {r.partition for r in sink.stored}:
        offsets = [r.offset for r in sink.stored if r.partition == p]
        assert offsets == list(range(len(offsets)))
        assert consumer.stored[(topic, p)] == len(offsets)
    if broken_every:
        assert sink.prepares >= broken_every  # some batches went the plain way, none was lost
