"""The stack in containers: Postgres, Apache Kafka (KRaft) and Debezium's Kafka Connect.

This is the production shape (deploy/compose.yaml) for tests: a real Kafka broker and
a real Kafka Connect worker running the connector config ``feedstore connector-config``
generates, instead of tansu and the embedded engine. It needs a Docker engine, which
many machines (and this project's default CI) do not have, so:

* ``containers_stack`` (session) starts it when an engine answers, and skips with the
  reason when none does or testcontainers is not installed (``pip install -e
  '.[containers]'``);
* ``--stack=containers`` (or ``FEEDSTORE_TEST_STACK=containers``) makes the ``stack``
  fixture itself use it, so the stack tests run against containers; the local stack
  stays the default.

:class:`ContainerStack` offers what tests use of ``LocalStack``: ``dsn``, ``bootstrap``,
``prefix``, ``workdir``, ``postgres.port``/``dbname``, ``broker.pause``/``resume``,
``start_debezium`` and ``debezium.restart``.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from deploy.localstack.procs import StackError, free_port
from deploy.localstack.stack import legacy_schema

POSTGRES_IMAGE = "postgres:17.6"
KAFKA_IMAGE = "apache/kafka:3.9.1"
CONNECT_IMAGE = "quay.io/debezium/connect:3.6.3.Final"  # as deploy/compose.yaml
PASSWORD = "feedstore-test"  # throw-away containers only
SECRET = "/run/secrets/source-db.properties"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--stack", choices=("local", "containers"), default=os.environ.get("FEEDSTORE_TEST_STACK",
                                                                                         "local"),
                     help="stack backend for the stack tests (default local; containers needs Docker)")


def docker_unavailable() -> str | None:
    """Why the containers backend cannot run here, or None when it can."""
    try:
        import docker
        import testcontainers  # noqa: F401
    except ImportError as ex:
        return f"{ex.name} is not installed: pip install -e '.[containers]' (the local stack covers the same tests)"
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, OSError) as ex:  # requests' errors are OSErrors
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return f"no Docker engine reachable at {host} ({type(ex).__name__}); the local stack covers the same tests"
    return None


@dataclass
class _Postgres:
    container: Any
    dbname: str = "operator"

    @property
    def host(self) -> str:
        return str(self.container.get_container_host_ip())

    @property
    def port(self) -> int:
        return int(self.container.get_exposed_port(5432))


@dataclass
class _Broker:
    container: Any
    port: int

    def pause(self) -> None:
        self.container.get_wrapped_container().pause()

    def resume(self) -> None:
        self.container.get_wrapped_container().unpause()


@dataclass
class Connector:
    """One connector in the Connect worker: what ``LocalStack.start_debezium`` returns."""

    url: str
    config: dict[str, str]

    @property
    def name(self) -> str:
        return self.config["name"]

    def start(self, dsn: str = "") -> Connector:
        from feedstore.connector import register

        register({"name": self.name, "config": self.config}, self.url, wait_s=120)
        return self

    def stop(self) -> None:
        req = urllib.request.Request(f"{self.url}/connectors/{self.name}", method="DELETE")
        with urllib.request.urlopen(req, timeout=30):
            pass

    def restart(self, dsn: str = "") -> None:
        req = urllib.request.Request(
            f"{self.url}/connectors/{self.name}/restart?includeTasks=true", method="POST")
        with urllib.request.urlopen(req, timeout=30):
            pass


@dataclass
class ContainerStack:
    workdir: Path
    prefix: str = "spacevegas"
    schemas: bool = True
    unwrap: bool = False
    network: Any = None
    postgres: _Postgres = field(init=False)
    broker: _Broker = field(init=False)
    connect: Any = None
    debezium: Connector | None = None
    _started: list[Any] = field(default_factory=list)

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres:{PASSWORD}@{self.postgres.host}:{self.postgres.port}/{self.postgres.dbname}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.broker.port}"

    @property
    def connect_url(self) -> str:
        return f"http://{self.connect.get_container_host_ip()}:{self.connect.get_exposed_port(8083)}"

    def start(self, schema_sql: str | None = None, *, debezium: bool = True) -> ContainerStack:
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.network import Network
        from testcontainers.core.waiting_utils import wait_for_logs

        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:  # testcontainers < 4.14
            from testcontainers.postgres import PostgresContainer

        try:
            self.network = Network().create()
            pg = (PostgresContainer(POSTGRES_IMAGE, username="postgres", password=PASSWORD, dbname="operator",
                                    driver=None)
                  .with_command("postgres -c wal_level=logical -c max_replication_slots=10 -c max_wal_senders=10")
                  .with_network(self.network).with_network_aliases("postgres"))
            self._started.append(pg.start())
            self.postgres = _Postgres(pg)

            port = free_port()  # advertised to clients outside Docker, so it must be known before start
            kafka = (DockerContainer(KAFKA_IMAGE).with_network(self.network).with_network_aliases("kafka")
                     .with_bind_ports(9094, port).with_envs(**_kraft(port)))
            self._started.append(kafka.start())
            wait_for_logs(kafka, "Kafka Server started", timeout=120)
            self.broker = _Broker(kafka, port)

            secret = self.workdir / "source-db.properties"
            secret.write_text(f"password={PASSWORD}\n")
            connect = (DockerContainer(CONNECT_IMAGE).with_network(self.network).with_exposed_ports(8083)
                       .with_volume_mapping(str(secret), SECRET, "ro").with_envs(**_connect_env()))
            self._started.append(connect.start())
            self.connect = connect
            _wait_http(f"{self.connect_url}/connectors", timeout=180)

            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute((schema_sql if schema_sql is not None else legacy_schema()).encode())
            if debezium:
                self.debezium = self.start_debezium()
        except BaseException:
            self.stop()
            raise
        return self

    def start_debezium(self, *, prefix: str | None = None, slot: str = "feedstore",
                       schemas: bool | None = None, unwrap: bool | None = None) -> Connector:
        """Register a connector shaped like the local stack's engine (all public tables)."""
        from deploy.localstack.debezium import connector_properties

        props = connector_properties(dsn_host="postgres", port=5432, dbname=self.postgres.dbname,
                                     prefix=prefix or self.prefix, workdir=self.workdir, slot=slot,
                                     schemas=self.schemas if schemas is None else schemas,
                                     unwrap=self.unwrap if unwrap is None else unwrap)
        for key in ("offset.storage", "offset.storage.file.filename", "offset.flush.interval.ms"):
            props.pop(key)  # Connect keeps offsets in its own topic
        props |= {"name": f"{prefix or self.prefix}-{slot}", "database.password": f"${{file:{SECRET}:password}}",
                  "key.converter": "org.apache.kafka.connect.json.JsonConverter",
                  "value.converter": "org.apache.kafka.connect.json.JsonConverter"}
        return Connector(self.connect_url, props).start()

    def stop(self) -> None:
        for container in reversed(self._started):
            try:
                container.stop()
            except Exception as ex:  # noqa: BLE001 - a container that already died must not hide the others
                print(f"stopping {container.image} failed: {ex}")
        self._started.clear()
        if self.network is not None:
            self.network.remove()
            self.network = None


def _kraft(port: int) -> dict[str, str]:
    return {
        "CLUSTER_ID": "h7lHHP1IXimtFHpk69TZJQ", "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093,EXTERNAL://:9094",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://kafka:9092,EXTERNAL://127.0.0.1:{port}",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,EXTERNAL:PLAINTEXT",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER", "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@kafka:9093",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "PLAINTEXT",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1", "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_NUM_PARTITIONS": "4",
    }


def _connect_env() -> dict[str, str]:
    return {
        "BOOTSTRAP_SERVERS": "kafka:9092", "GROUP_ID": "feedstore-test-connect",
        "CONFIG_STORAGE_TOPIC": "_connect_configs", "OFFSET_STORAGE_TOPIC": "_connect_offsets",
        "STATUS_STORAGE_TOPIC": "_connect_statuses", "CONFIG_STORAGE_REPLICATION_FACTOR": "1",
        "OFFSET_STORAGE_REPLICATION_FACTOR": "1", "STATUS_STORAGE_REPLICATION_FACTOR": "1",
        "CONNECT_CONFIG_PROVIDERS": "file",
        "CONNECT_CONFIG_PROVIDERS_FILE_CLASS": "org.apache.kafka.common.config.provider.FileConfigProvider",
    }


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                json.loads(resp.read())
                return
        except (OSError, ValueError):
            time.sleep(1)
    raise StackError(f"{url} did not answer in {timeout:.0f}s")


@pytest.fixture(scope="session")
def containers_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContainerStack]:
    reason = docker_unavailable()
    if reason is not None:
        pytest.skip(f"containers backend: {reason}")
    stack = ContainerStack(workdir=tmp_path_factory.mktemp("containers")).start()
    yield stack
    stack.stop()
