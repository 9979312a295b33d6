"""The whole line under test, with handles to break each part of it.

``line_stack`` is a local stack (Postgres, Debezium, tansu) of its own, so the faults
injected here (frozen broker, restarted Postgres, killed Debezium) and the poison
events never reach the session ``stack`` other tests use. ``Line`` bundles:

- :class:`Serve`: a real ``feedstore serve`` (gunicorn master + worker) on a DuckDB
  file that survives restarts, in its own process group so ``kill -9`` hits it as a
  crash would; its output goes through a pipe, so a file-size limit on the worker
  (``prlimit``) hits DuckDB's files and not the log;
- :class:`Source`: the operator's database: an audit trigger recording every
  committed change (table, key, transaction, time) independently of Debezium, and
  the workload (``deploy/localstack/workload.py``) driven at a rate, reconnecting
  across a Postgres restart;
- :class:`Progress`: the consumer group's committed offsets, sampled: a lower bound
  of what the store had applied at each moment (the service commits them to the
  group only after the DuckDB transaction);
- :func:`read_log`: every event on the mapped topics, as Debezium produced them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
import psycopg
import pytest
import yaml
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from deploy.localstack.debezium import Debezium, connector_properties
from deploy.localstack.procs import free_port, port_open, wait_until
from deploy.localstack.stack import LocalStack, legacy_schema
from deploy.localstack.workload import Workload
from materializer.mapping import Mapping, load_mapping
from tests.pullsim import Client

PROJECT = Path(__file__).resolve().parents[1]
MAPPING = PROJECT / "deploy" / "mappings" / "spacevegas.yaml"


# --------------------------------------------------------------------------- feedstore serve

def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Serve:
    """``feedstore serve`` that can be killed, restarted and starved of disk."""

    stack: LocalStack
    db: Path
    log: Path
    group: str
    mapping: Path = MAPPING
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    kills: int = 0
    _pump: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def client(self) -> Client:
        return Client(self.url, timeout=10)

    def start(self) -> Serve:
        env = dict(os.environ) | {
            "FEEDSTORE_DB": str(self.db), "FEEDSTORE_MAPPING": str(self.mapping),
            "FEEDSTORE_KAFKA_BOOTSTRAP": self.stack.bootstrap, "FEEDSTORE_BIND": f"127.0.0.1:{self.port}",
            "FEEDSTORE_GROUP_ID": self.group, "FEEDSTORE_LOG_FORMAT": "json", "PYTHONPATH": str(PROJECT),
        } | self.env
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "feedstore.cli", "serve"], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent)
        self._pump = threading.Thread(target=self._copy_output, args=(self.proc,), daemon=True)
        self._pump.start()
        self.wait_up()
        return self

    def _copy_output(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        with open(self.log, "ab") as out:
            for line in proc.stdout:
                out.write(line)
                out.flush()

    def wait_up(self, timeout: float = 60) -> None:
        wait_until(lambda: port_open(self.port) and self.client.get("/health") is not None,
                   timeout=timeout, what="feedstore serve", log=self.log, proc=self.proc)

    def worker(self) -> psutil.Process:
        """The gunicorn worker: the process that owns the DuckDB file."""
        assert self.proc is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            kids = psutil.Process(self.proc.pid).children()
            if kids:
                return kids[0]
            time.sleep(0.05)
        raise AssertionError("gunicorn has no worker")

    def kill(self) -> None:
        """``kill -9`` of master and worker together (an OOM kill, a power cut)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        if self._pump is not None:
            self._pump.join(5)
        self.kills += 1

    def kill_worker(self) -> None:
        """``kill -9`` of the worker alone; gunicorn's master starts a new one on the same file."""
        old = self.worker()
        old.kill()
        old.wait(10)
        self.kills += 1
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(AssertionError):
                if self.worker().pid != old.pid:
                    break
            time.sleep(0.05)
        self.wait_up()

    def limit_file_size(self, nbytes: int | None) -> None:
        """RLIMIT_FSIZE on the worker (None lifts it): writes past it fail with EFBIG."""
        pid = self.worker().pid
        hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)[1]
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard if nbytes is None else nbytes, hard))

    def ready(self) -> tuple[int, dict[str, Any]]:
        got = self.client.get("/ready")
        if got is None:
            return 0, {}
        return got[0], orjson.loads(got[1])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self._pump is not None:
            self._pump.join(5)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


# --------------------------------------------------------------------------- the source

_AUDIT = """
CREATE SCHEMA IF NOT EXISTS fs_audit;
CREATE UNLOGGED TABLE IF NOT EXISTS fs_audit.log (
    id bigserial PRIMARY KEY, tbl text NOT NULL, op text NOT NULL, txid bigint NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp(), row jsonb NOT NULL);
CREATE OR REPLACE FUNCTION fs_audit.record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fs_audit.log (tbl, op, txid, row)
    VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, TG_OP, txid_current() % 4294967296,
            to_jsonb(CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END));
    RETURN NULL;
END $$;
"""


@dataclass(frozen=True)
class Audited:
    tbl: str
    op: str
    txid: int
    at: float
    row: dict[str, Any]


class Source:
    """The operator's Postgres seen from outside the line: what was committed, and a workload."""

    def __init__(self, dsn: str, mapping: Mapping, *, rate: float = 20.0, seed: int = 11) -> None:
        self.dsn = dsn
        self.tables = sorted({fm.source.name for fm in mapping.feeds.values()})
        self.workload = Workload(dsn, rate=rate, seed=seed)
        self.statements = 0
        self.errors = 0
        self._run = threading.Event()
        self._idle = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.since = 0
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(_AUDIT)
            for t in self.tables:
                conn.execute(f"CREATE OR REPLACE TRIGGER fs_audit AFTER INSERT OR UPDATE OR DELETE ON {t} "
                             "FOR EACH ROW EXECUTE FUNCTION fs_audit.record()")
            row = conn.execute("SELECT coalesce(max(id), 0) FROM fs_audit.log").fetchone()
            self.since = int(row[0]) if row else 0  # this run's changes only
            self.keys = {t: [r[0] for r in conn.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
                (t,)).fetchall()] for t in self.tables}

    def start(self) -> Source:
        self._run.set()
        self._thread = threading.Thread(target=self._drive, name="workload", daemon=True)
        self._thread.start()
        return self

    def pause(self) -> None:
        """Stop issuing statements; returns once the one in flight (if any) has finished."""
        self._run.clear()
        self._idle.wait(30)

    def resume(self) -> None:
        self._run.set()

    def stop(self) -> None:
        self._stop.set()
        self._run.set()
        if self._thread is not None:
            self._thread.join(30)

    def _drive(self) -> None:
        interval = 1.0 / self.workload.rate
        seeded = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=3) as conn, conn.cursor() as cur:
                    if not seeded:
                        self.workload.seed_reference_data(cur)
                        seeded = True
                    next_at = time.monotonic()
                    while not self._stop.is_set():
                        if not self._run.is_set():
                            self._idle.set()
                            self._run.wait()
                            self._idle.clear()
                            next_at = time.monotonic()
                            continue
                        self.workload.step(cur)
                        self.statements += 1
                        next_at += interval
                        self._stop.wait(max(0.0, next_at - time.monotonic()))
            except psycopg.Error:
                self.errors += 1  # Postgres restarting: the statement may or may not have committed
                if not self._run.is_set():
                    self._idle.set()
                self._stop.wait(0.5)

    def audited(self) -> list[Audited]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            rows = conn.execute("SELECT tbl, op, txid, extract(epoch FROM at)::float8, row FROM fs_audit.log "
                                "WHERE id > %s ORDER BY id", (self.since,)).fetchall()
        return [Audited(t, op, int(x), float(at), row) for t, op, x, at, row in rows]


# --------------------------------------------------------------------------- Kafka

@dataclass(frozen=True)
class Event:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    key_fields: dict[str, Any] | None
    op: str | None
    position: int | None
    txid: int | None
    commit_ms: int | None
    row: dict[str, Any] | None = None  # the after image, or the before image of a delete

    @property
    def coord(self) -> tuple[str, int, int]:
        return self.topic, self.partition, self.offset


def _payload(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(doc, dict) and "payload" in doc and "schema" in doc:
        return doc["payload"]
    return doc


def read_log(bootstrap: str, topics: list[str], timeout: float = 60) -> list[Event]:
    """Every event on ``topics`` from the beginning to the current end, in partition order.

    The end is each partition's high-water mark as fetch responses report it (tansu's
    ListOffsets under-reports it, docs/contributing.md).
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             max_partition_fetch_bytes=32 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    try:
        parts = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        events: list[Event] = []
        deadline = time.monotonic() + timeout
        while True:
            for tp, msgs in consumer.poll(timeout_ms=200).items():
                events.extend(_event(tp.topic, tp.partition, m.offset, m.key, m.value) for m in msgs)
            ends = {tp: consumer.highwater(tp) for tp in parts}
            if all(end is not None and consumer.position(tp) >= end for tp, end in ends.items()):
                return events
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topics} to their end: {ends}")
    finally:
        consumer.close()


def _event(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> Event:
    k, v = _payload(key), _payload(value)
    if not isinstance(v, dict):
        return Event(topic, partition, offset, key, value, k if isinstance(k, dict) else None, None, None, None, None)
    src = v["source"] if isinstance(v.get("source"), dict) else {}
    image = v.get("after") if v.get("after") is not None else v.get("before")
    return Event(topic, partition, offset, key, value, k if isinstance(k, dict) else None, v.get("op"),
                 src.get("lsn"), src.get("txId"), src.get("ts_ms"), image if isinstance(image, dict) else None)


class Progress:
    """Samples the consumer group's committed offsets: what the store had certainly applied, when."""

    def __init__(self, bootstrap: str, group: str, interval: float = 0.1) -> None:
        self.bootstrap, self.group, self.interval = bootstrap, group, interval
        self.samples: list[tuple[float, dict[tuple[str, int], int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def start(self) -> Progress:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        admin: KafkaAdminClient | None = None
        while not self._stop.is_set():
            try:
                if admin is None:
                    admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
                got = admin.list_group_offsets(self.group).get(self.group, {})
                at = time.time()
                self.samples.append((at, {(tp.topic, tp.partition): om.offset for tp, om in got.items()}))
            except Exception:  # noqa: BLE001 - a frozen broker: no sample this time
                if admin is not None:
                    with contextlib.suppress(Exception):
                        admin.close()
                admin = None
            self._stop.wait(self.interval)
        if admin is not None:
            admin.close()

    def latest(self) -> dict[tuple[str, int], int]:
        return self.samples[-1][1] if self.samples else {}

    def applied_by(self, topic: str, partition: int, offset: int) -> float | None:
        """The first sample at which the event was certainly stored, or None."""
        for at, offsets in self.samples:
            if offsets.get((topic, partition), -1) > offset:
                return at
        return None


# --------------------------------------------------------------------------- the bundle

@dataclass
class Line:
    """One test's line: its own source database, Debezium connector, topics and store."""

    stack: LocalStack
    dsn: str
    slot: str
    debezium: Debezium
    mapping: Mapping
    serve: Serve
    source: Source
    progress: Progress

    @property
    def topics(self) -> list[str]:
        return self.mapping.topics

    @property
    def feeds(self) -> list[str]:
        return list(self.mapping.feeds)

    def settle(self, timeout: float = 90) -> list[Event]:
        """Stop the workload, wait until Debezium produced every audited change and the
        store applied every event on the topics; return the topics' events."""
        self.source.pause()
        deadline = time.monotonic() + timeout
        audited = self.source.audited()
        while True:
            events = read_log(self.stack.bootstrap, self.topics)
            missing = missing_in_log(audited, events, self.source.keys)
            ends: dict[tuple[str, int], int] = {}
            for e in events:
                ends[(e.topic, e.partition)] = e.offset + 1
            stored = self.progress.latest()
            behind = {k: v - stored.get(k, 0) for k, v in ends.items() if stored.get(k, 0) < v}
            if not missing and not behind:
                return events
            if time.monotonic() > deadline:
                raise AssertionError(f"line did not settle: {len(missing)} audited changes not in Kafka "
                                     f"(e.g. {missing[:3]}), partitions behind: {behind}")
            time.sleep(0.5)


def missing_in_log(audited: list[Audited], events: list[Event],
                   keys: dict[str, list[str]]) -> list[tuple[str, str, int]]:
    """Committed source changes (table, key, transaction) that no Kafka event carries."""
    seen = set()
    for e in events:
        if e.key_fields is not None and e.txid is not None:
            seen.add((e.topic.split(".", 1)[1], _key_text(e.key_fields), e.txid))
    wanted = []
    for a in audited:
        key = _key_text({c: a.row.get(c) for c in keys[a.tbl]})
        if (a.tbl, key, a.txid) not in seen:
            wanted.append((a.tbl, key, a.txid))
    return wanted


def _key_text(fields: dict[str, Any]) -> str:
    return "|".join(f"{k}={fields[k]}" for k in sorted(fields))


@pytest.fixture(scope="session")
def line_stack() -> Iterator[LocalStack]:
    """Postgres and a broker of their own: faults and poison injected here never reach the
    shared ``stack``. Each test adds its own database and Debezium connector (``line``).
    Not under pytest's basetemp, for the reason tests/fix_stack.py gives."""
    stack = LocalStack(workdir=Path(tempfile.mkdtemp(prefix="feedstore-test-line-")))
    stack.start(debezium=False)
    yield stack
    stack.stop()


def operator_database(stack: LocalStack, name: str) -> str:
    """A fresh database with the legacy schema; its DSN."""
    admin = f"postgresql://postgres@127.0.0.1:{stack.postgres.port}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = f"postgresql://postgres@127.0.0.1:{stack.postgres.port}/{name}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(legacy_schema())
    return dsn


def mapping_for(prefix: str, path: Path) -> Path:
    """The reference mapping with this test's topic prefix."""
    doc = yaml.safe_load(MAPPING.read_text())
    doc["topic_prefix"] = prefix
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


@pytest.fixture
def line(line_stack: LocalStack, tmp_path: Path) -> Iterator[Line]:
    name = f"line_{uuid.uuid4().hex[:8]}"
    dsn = operator_database(line_stack, name)
    mapping_path = mapping_for(name, tmp_path / "mapping.yaml")
    mapping = load_mapping(mapping_path)
    workdir = tmp_path / "debezium"
    workdir.mkdir()
    props = connector_properties(dsn_host="127.0.0.1", port=line_stack.postgres.port, dbname=name, prefix=name,
                                 workdir=workdir, slot=name)
    # Debezium's offsets flushed every 5 s rather than every second: a crash then re-sends
    # more, which is what the line has to survive.
    props["offset.flush.interval.ms"] = "5000"
    debezium = Debezium(workdir, props, line_stack.bootstrap).start(dsn)
    serve = Serve(line_stack, tmp_path / "feedstore.duckdb", tmp_path / "serve.log", name, mapping=mapping_path)
    source = Source(dsn, mapping)
    progress = Progress(line_stack.bootstrap, name).start()
    try:
        yield Line(line_stack, dsn, name, debezium, mapping, serve, source, progress)
    finally:
        line_stack.broker.resume()  # never leave the broker frozen for the next test
        source.stop()
        progress.stop()
        serve.stop()
        debezium.stop()
        with contextlib.suppress(psycopg.Error), psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                         "WHERE slot_name = %s AND NOT active", (name,))
