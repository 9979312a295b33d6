"""The same changes through all three Debezium shapes give identical feed rows.

Shapes: (1) the envelope with its embedded schema (the session stack's engine,
prefix ``spacevegas``); (2) the envelope without a schema, typed by the mapping's
``tables.columns``; (3) ExtractNewRecordState's flat rows without a schema (deletes
rewritten as ``__deleted``). Two more real Debezium engines run on the same Postgres
with their own topic prefix and replication slot. Three stores are fed by three
materializers driven from kafka-python consumers, each with the reference mapping,
only ``topic_prefix`` changed. The rows of every feed must match, field by field
(the stamps excepted: they are each store's own).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from cdc.consumer import Consumer, kafka_consumer
from cdc.decode import decode
from deploy.localstack.stack import LocalStack
from materializer.apply import Materializer
from materializer.mapping import load_mapping
from materializer.store import Store, q, table_name
from tests.fix_store import MAPPING
from tests.test_e2e_feeds import FEEDS, Scenario, delete_all, expected, insert_all, update_all

pytestmark = pytest.mark.stack

SHAPES = {  # prefix -> (embedded schema, unwrapped)
    "spacevegas": (True, False),
    "svplain": (False, False),
    "svflat": (False, True),
}


@dataclass
class Shape:
    prefix: str
    store: Store
    materializer: Materializer
    consumer: Consumer
    seen: set[tuple[str, str, Any]]

    def step(self) -> None:
        records = self.consumer.poll_batch()
        if not records:
            return
        for rec in records:  # note which of the scenario's changes went by (the test's own decoding)
            table = self.store.mapping.tables.get(rec.topic)
            if table is None:
                continue
            change = decode(rec.topic, rec.key, rec.value, types=table.types, zone=table.zone)
            if change is not None and change.key:
                self.seen.add((change.table.split(".")[-1], change.op, next(iter(change.key.values()))))
        offsets = {(r.topic, r.partition): r.offset + 1 for r in records}
        self.materializer.apply(records, offsets)


@pytest.fixture(scope="module")
def engines(stack: LocalStack) -> Iterator[None]:
    """Debezium engines for shapes 2 and 3; the session's engine is shape 1."""
    started = []
    try:
        # One after the other: a logical slot is created only once no older transaction
        # runs, and the other engine's snapshot is one.
        for prefix, (schemas, unwrap) in SHAPES.items():
            if prefix != stack.prefix:
                started.append(stack.start_debezium(prefix=prefix, slot=f"shape_{prefix}", schemas=schemas,
                                                    unwrap=unwrap))
        yield
    finally:
        for dbz in started:
            dbz.stop()
        with psycopg.connect(stack.dsn, autocommit=True) as conn:
            for prefix in SHAPES:
                if prefix != stack.prefix:
                    conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                                 "WHERE slot_name = %s AND NOT active", (f"shape_{prefix}",))
                    conn.execute(f"DROP PUBLICATION IF EXISTS shape_{prefix}_publication")


def shape(stack: LocalStack, tmp: Path, prefix: str) -> Shape:
    doc = yaml.safe_load(MAPPING.read_text())
    doc["topic_prefix"] = prefix
    path = tmp / f"{prefix}.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    mapping = load_mapping(path)
    store = Store(tmp / f"{prefix}.duckdb", mapping)
    client = kafka_consumer(stack.bootstrap, f"shapes-{prefix}-{tmp.name}", max_poll_interval_ms=5000)
    consumer = Consumer(client, mapping.topics, {}, lambda records, offsets: None, rediscover_s=0.5)
    return Shape(prefix, store, Materializer(store), consumer, set())


def feed_rows(store: Store, name: str, key: str) -> list[tuple[Any, ...]]:
    feed = store.feed(name)
    cols = ", ".join(q(f.name) for f in feed.fields if f.name != feed.stamp)
    with store.cursor() as cur:
        return cur.execute(f"SELECT {cols} FROM {table_name(feed)} WHERE {q(feed.key[0])} = ?", [key]).fetchall()


def test_three_shapes_give_identical_feed_rows(stack: LocalStack, engines: None, tmp_path: Path) -> None:
    shapes = [shape(stack, tmp_path, prefix) for prefix in SHAPES]
    try:
        s = Scenario(tag="shape" + uuid.uuid4().hex[:6])
        wanted: set[tuple[str, str, Any]] = set()
        with psycopg.connect(stack.dsn, autocommit=True) as conn, conn.cursor() as cur:
            for write in (insert_all, update_all, delete_all):
                wanted |= write(cur, s)
        deadline = time.monotonic() + 120
        while not all(wanted <= sh.seen for sh in shapes):
            assert time.monotonic() < deadline, {sh.prefix: sorted(map(str, wanted - sh.seen)) for sh in shapes}
            for sh in shapes:
                sh.step()
        final = expected(s, "delete")
        for name, feed in FEEDS.items():
            key = str(final[name][feed.key[0]])
            rows = {sh.prefix: feed_rows(sh.store, name, key) for sh in shapes}
            assert len(rows["spacevegas"]) == 1, (name, rows)
            assert rows["svplain"] == rows["spacevegas"], name
            assert rows["svflat"] == rows["spacevegas"], name
        for sh in shapes:  # and nothing of the scenario was quarantined in any shape
            with sh.store.cursor() as cur:
                reasons = cur.execute("SELECT reason FROM fs_quarantine WHERE CAST(value AS VARCHAR) LIKE ?",
                                      [f"%{s.tag}%"]).fetchall()
            assert reasons == [], (sh.prefix, reasons)
    finally:
        for sh in shapes:
            sh.consumer.client.close()
            sh.store.close()
