"""The operator's path on the containers backend: real Kafka Connect runs the generated config.

Skipped, with the reason, where no Docker engine is reachable (see tests/fix_containers.py).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml
from kafka import KafkaConsumer

from feedstore.cli import main
from feedstore.connector import register
from tests.fix_containers import PASSWORD, ContainerStack, docker_unavailable
from tests.fix_onboard import REFERENCE

pytestmark = pytest.mark.stack


def test_docker_unavailability_is_explained() -> None:
    reason = docker_unavailable()
    assert reason is None or "local stack covers the same tests" in reason


def test_generated_connector_streams_through_kafka_connect(containers_stack: ContainerStack, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    role, slot = f"dbz_{tag}", f"slot_{tag}"
    with psycopg.connect(containers_stack.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'".encode())
        conn.execute("INSERT INTO users (fname, lname, sex) VALUES ('Ada', 'Lovelace', 'F')")
    # a prefix of its own: the stack's own connector already writes spacevegas.* topics
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(yaml.safe_dump(yaml.safe_load(REFERENCE.read_text()) | {"topic_prefix": f"onb{tag}"}))
    names = ["--slot", slot, "--publication", f"pub_{tag}", "--mapping", str(mapping)]
    assert main(["source", "check", "--dsn", containers_stack.dsn, "--role", role, *names, "--apply", "--yes"]) == 0
    out = tmp_path / "connector.json"
    # Connect reaches Postgres by its network alias, and reads the password from its secret file.
    assert main(["connector-config", "--dsn", f"postgresql://{role}@postgres:5432/operator", "--name",
                 f"onboard-{tag}", "-o", str(out), *names]) == 0
    connector = json.loads(out.read_text())
    assert "RUNNING" in register(connector, containers_stack.connect_url, wait_s=120)
    topic = f"onb{tag}.public.users"
    assert connector["config"]["topic.prefix"] == f"onb{tag}"
    consumer = KafkaConsumer(topic, bootstrap_servers=containers_stack.bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=60_000, group_id=f"t-{tag}")
    try:
        for message in consumer:
            if message.value and b'"Lovelace"' in message.value:
                break
        else:
            raise AssertionError(f"no snapshot event for the users row on {topic}")
    finally:
        consumer.close()
