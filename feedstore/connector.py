"""The Debezium Postgres connector config for Kafka Connect, derived from the mapping.

Why generated and not hand-written: every value here is a promise the rest of Feedstore
relies on. The topics must be ``<topic_prefix>.<schema>.<table>`` for exactly the mapped
tables; decimals and times must arrive in the encodings ``cdc/types.py`` decodes without
loss (``precise`` decimals, microsecond times); the heartbeat topic must keep Debezium's
``__debezium-heartbeat`` prefix the decoder skips; and the slot, publication and signal
table must be the ones ``feedstore source check`` prepared. Deriving the JSON from the
same mapping file the materializer reads keeps the two from drifting.

The database password is never written into the config: it is a Kafka Connect config
provider placeholder (``${file:...}``, ``${env:...}`` or ``${dir:...}``) that the Connect
worker resolves when it starts the connector.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from psycopg.conninfo import conninfo_to_dict

from feedstore.config import ConfigError
from materializer.mapping import Mapping

CONNECTOR_CLASS = "io.debezium.connector.postgresql.PostgresConnector"
JSON_CONVERTER = "org.apache.kafka.connect.json.JsonConverter"
HEARTBEAT_PREFIX = "__debezium-heartbeat"  # cdc/decode.py skips topics with this prefix
DEFAULT_PASSWORD_REF = "${file:/run/secrets/source-db.properties:password}"  # noqa: S105 - a reference
PUBLICATION_MODES = ("filtered", "all_tables", "disabled")
_PLACEHOLDER = re.compile(r"\$\{(file|env|dir):[^}]+\}")


class ConnectorError(ConfigError):
    """The connector config cannot be built as asked; the message says which option to fix."""


@dataclass(frozen=True)
class SourceNames:
    """The replication objects the source check prepares and the connector uses.

    Both commands take the same defaults so that ``source check --apply`` followed by
    ``connector-config`` needs no names typed twice.
    """

    slot: str = "feedstore"
    publication: str = "feedstore_publication"
    signal_table: str = "public.debezium_signal"
    publication_mode: str = "filtered"

    def __post_init__(self) -> None:
        if self.publication_mode not in PUBLICATION_MODES:
            raise ConnectorError(f"publication mode {self.publication_mode!r}: use one of "
                                 f"{', '.join(PUBLICATION_MODES)}")
        if not re.fullmatch(r"[a-z0-9_]{1,63}", self.slot):
            raise ConnectorError(f"slot name {self.slot!r}: Postgres allows only lower-case letters, "
                                 "digits and '_' (at most 63)")
        if self.signal_table.count(".") != 1:
            raise ConnectorError(f"signal table {self.signal_table!r}: write it as schema.table, "
                                 "e.g. public.debezium_signal")


@dataclass(frozen=True)
class Database:
    """Where the connector connects; the password is only ever a config-provider reference."""

    hostname: str
    dbname: str
    user: str = "debezium"
    port: int = 5432
    password_ref: str = DEFAULT_PASSWORD_REF

    def __post_init__(self) -> None:
        if not _PLACEHOLDER.fullmatch(self.password_ref):
            raise ConnectorError(
                "the database password must be a Kafka Connect config-provider reference such as "
                f"{DEFAULT_PASSWORD_REF} or ${{env:SOURCE_DB_PASSWORD}}, never the password itself")

    @classmethod
    def from_options(cls, dsn: str | None = None, **options: Any) -> Database:
        """Values from ``--dsn`` (libpq syntax), overridden by ``--database.*`` options.

        A password inside the DSN is ignored on purpose: it must not end up in a file
        that is posted to Kafka Connect and stored in its config topic.
        """
        values: dict[str, Any] = {}
        if dsn:
            try:
                parts = conninfo_to_dict(dsn)
            except Exception as ex:  # psycopg raises ProgrammingError for a malformed DSN
                raise ConnectorError(f"--dsn is not a valid PostgreSQL connection string: {ex}") from ex
            for key, field in (("host", "hostname"), ("dbname", "dbname"), ("user", "user"), ("port", "port")):
                if parts.get(key):
                    values[field] = parts[key]
        values |= {k: v for k, v in options.items() if v is not None}
        missing = [name for name in ("hostname", "dbname") if not values.get(name)]
        if missing:
            raise ConnectorError(f"no {' and '.join(missing)} for the source database: pass --dsn "
                                 "postgresql://USER@HOST:PORT/DBNAME or --database.hostname/--database.dbname")
        try:
            values["port"] = int(values.get("port", 5432))
        except ValueError as ex:
            raise ConnectorError(f"database port {values['port']!r} is not a number") from ex
        return cls(**values)


def include_list(tables: list[str]) -> str:
    """Debezium matches each entry as an anchored regex: escape the dot so that
    ``public.users`` cannot also match a table called ``publicxusers``."""
    return ",".join(re.escape(t) for t in tables)


def source_tables(mapping: Mapping) -> list[str]:
    """The mapped source tables, ``schema.table``, sorted."""
    return sorted({t.name for t in mapping.tables.values()} | {fm.source.name for fm in mapping.feeds.values()})


def connector_config(mapping: Mapping, db: Database, names: SourceNames | None = None, *,
                     name: str | None = None, heartbeat_ms: int = 10_000, snapshot_mode: str = "initial",
                     extra: dict[str, str] | None = None) -> dict[str, Any]:
    """``{"name": ..., "config": {...}}`` as Kafka Connect's ``POST /connectors`` takes it."""
    names = names or SourceNames()
    name = name or f"{mapping.topic_prefix}-feedstore"
    for table in mapping.tables.values():
        if table.topic != f"{mapping.topic_prefix}.{table.name}":
            raise ConnectorError(
                f"{mapping.path}: table {table.name} is read from topic {table.topic}, but this connector "
                f"writes {mapping.topic_prefix}.{table.name}; remove that 'topic:' or route the topic yourself "
                "(a RegexRouter transform via --set)")
    captured = [*source_tables(mapping), names.signal_table]
    config = {
        "name": name,
        "connector.class": CONNECTOR_CLASS,
        "tasks.max": "1",  # a Postgres slot is read by one task; Kafka partitions carry the parallelism
        "database.hostname": db.hostname,
        "database.port": str(db.port),
        "database.user": db.user,
        "database.password": db.password_ref,
        "database.dbname": db.dbname,
        "topic.prefix": mapping.topic_prefix,
        "plugin.name": "pgoutput",
        "slot.name": names.slot,
        "publication.name": names.publication,
        "publication.autocreate.mode": names.publication_mode,
        "table.include.list": include_list(captured),
        "snapshot.mode": snapshot_mode,
        # cdc/types.py decodes these without loss: Decimal (base64 + scale) and µs times.
        "decimal.handling.mode": "precise",
        "time.precision.mode": "adaptive_time_microseconds",
        "binary.handling.mode": "bytes",
        "key.converter": JSON_CONVERTER,
        "key.converter.schemas.enable": "true",
        "value.converter": JSON_CONVERTER,
        "value.converter.schemas.enable": "true",
        # Heartbeats keep the slot's confirmed LSN moving on quiet databases, so WAL is freed.
        "heartbeat.interval.ms": str(heartbeat_ms),
        "topic.heartbeat.prefix": HEARTBEAT_PREFIX,
        "signal.enabled.channels": "source",
        "signal.data.collection": names.signal_table,
        "incremental.snapshot.chunk.size": "10000",
        "tombstones.on.delete": "true",
        # Kafka Connect creates the change topics with the broker's defaults (-1) unless told.
        "topic.creation.default.replication.factor": "-1",
        "topic.creation.default.partitions": "-1",
    }
    for key, value in (extra or {}).items():
        if key == "database.password" and not _PLACEHOLDER.fullmatch(value):
            raise ConnectorError("database.password must stay a config-provider reference; use --password-ref")
        config[key] = value
    return {"name": name, "config": config}


def heartbeat_topic(mapping: Mapping) -> str:
    return f"{HEARTBEAT_PREFIX}.{mapping.topic_prefix}"


def register(connector: dict[str, Any], url: str, *, wait_s: float = 60.0) -> str:
    """Create or update the connector through Kafka Connect's REST API, then wait for it to run.

    ``PUT /connectors/<name>/config`` is idempotent (creates or updates), so a deploy
    script or compose one-shot can run it on every start. Returns a one-line outcome;
    raises ConnectorError with Connect's own message when it refuses.
    """
    base = url.rstrip("/")
    name = connector["name"]
    body = json.dumps(connector["config"]).encode()
    req = urllib.request.Request(f"{base}/connectors/{name}/config", data=body, method="PUT",  # noqa: S310
                                 headers={"Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - the operator's Connect URL
            created = resp.status == 201
    except urllib.error.HTTPError as ex:
        raise ConnectorError(f"Kafka Connect refused connector {name} ({ex.code}): {_connect_message(ex)}") from ex
    except (urllib.error.URLError, OSError) as ex:
        raise ConnectorError(f"Kafka Connect is not reachable at {base} ({getattr(ex, 'reason', ex)}); "
                             "check --register (e.g. http://connect:8083) and that the worker is up") from ex
    deadline = time.monotonic() + wait_s
    state = "UNKNOWN"
    while True:
        status = _get_json(f"{base}/connectors/{name}/status")
        tasks = status.get("tasks") or []
        failed = [t for t in tasks if t.get("state") == "FAILED"]
        if status.get("connector", {}).get("state") == "FAILED" or failed:
            trace = (failed[0] if failed else status.get("connector", {})).get("trace") or ""
            raise ConnectorError(f"connector {name} failed: {trace.strip().splitlines()[0] if trace else '?'}; "
                                 f"see GET {base}/connectors/{name}/status")
        state = status.get("connector", {}).get("state", "UNKNOWN")
        if state == "RUNNING" and tasks and all(t.get("state") == "RUNNING" for t in tasks):
            break
        if time.monotonic() > deadline:
            raise ConnectorError(f"connector {name} is {state} after {wait_s:.0f}s; "
                                 f"see GET {base}/connectors/{name}/status")
        time.sleep(1)
    return f"connector {name} {'created' if created else 'updated'} and RUNNING at {base}"


def _get_json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - the operator's Connect URL
            data: dict[str, Any] = json.loads(resp.read())
            return data
    except urllib.error.HTTPError as ex:
        if ex.code == 404:
            return {}
        raise ConnectorError(f"GET {url} failed ({ex.code}): {_connect_message(ex)}") from ex
    except (urllib.error.URLError, OSError) as ex:
        raise ConnectorError(f"Kafka Connect stopped answering at {url} ({ex})") from ex


def _connect_message(ex: Any) -> str:
    raw = ex.read()
    try:
        return str(json.loads(raw).get("message", raw.decode(errors="replace")))
    except ValueError:
        return raw.decode(errors="replace")[:300]
