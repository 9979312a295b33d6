"""A source of its own per test in the local stack's Postgres, for onboarding tests.

Each test gets a schema of its own in the stack's ``operator`` database, with the
legacy tables and no CDC set up, and its own role, slot, publication and signal table
names. Schemas rather than databases: CREATE/DROP DATABASE force checkpoints, and a
checkpoint PANICs the stack's Postgres when a concurrent pytest session has reset
/tmp/pytest-of-<user> to mode 0700 under it (the server runs as another OS user).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from deploy.localstack.stack import LocalStack, legacy_schema

REFERENCE = Path(__file__).resolve().parents[1] / "deploy" / "mappings" / "spacevegas.yaml"


@dataclass
class Source:
    stack: LocalStack
    tag: str

    @property
    def schema(self) -> str:
        return f"onboard_{self.tag}"

    @property
    def role(self) -> str:
        return f"dbz_{self.tag}"

    @property
    def slot(self) -> str:
        return f"slot_{self.tag}"

    @property
    def publication(self) -> str:
        return f"pub_{self.tag}"

    @property
    def signal(self) -> str:
        return f"{self.schema}.debezium_signal"

    @property
    def admin(self) -> str:
        return self.dsn("postgres")

    def dsn(self, user: str) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.stack.postgres.port}/{self.stack.postgres.dbname}"

    def args(self, mapping: Path, dsn: str | None = None) -> list[str]:
        """Names of this test's own (the stack's Debezium holds slot 'feedstore')."""
        return ["--dsn", dsn or self.admin, "--slot", self.slot, "--publication", self.publication,
                "--signal-table", self.signal, "--mapping", str(mapping)]

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f"SET search_path TO {self.schema}".encode())
            cur = conn.execute(query.encode())
            return cur.fetchall() if cur.description else []


@pytest.fixture
def source(stack: LocalStack) -> Iterator[Source]:
    src = Source(stack, uuid.uuid4().hex[:8])
    with psycopg.connect(src.admin, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {src.schema}".encode())
    src.sql(legacy_schema())
    yield src
    with psycopg.connect(src.admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (src.slot,)).fetchone():
            conn.execute("SELECT pg_drop_replication_slot(%s)", (src.slot,))
        conn.execute(f"DROP PUBLICATION IF EXISTS {src.publication}".encode())
        conn.execute(f"DROP SCHEMA {src.schema} CASCADE".encode())
        for role in (src.role, f"probe_{src.tag}"):
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                conn.execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"'.encode())


def players_mapping(tmp_path: Path, source: Source, table: str = "users", on_delete: Any = None,
                    player_id: str | None = None, prefix: str = "onboard") -> Path:
    """The reference players feed alone, reading this test's schema."""
    doc = yaml.safe_load(REFERENCE.read_text())
    feed = dict(doc["feeds"]["players"])
    tables = {f"{source.schema}.{table}": v for k, v in (doc.get("tables") or {}).items() if k == feed["source"]}
    feed["source"] = f"{source.schema}.{table}"
    if on_delete is not None:
        feed["on_delete"] = on_delete
    if player_id is not None:
        feed["fields"] = dict(feed["fields"], id=player_id)
    path = tmp_path / "mapping.yaml"
    path.write_text(yaml.safe_dump({"topic_prefix": prefix, "source_zone": doc.get("source_zone", "UTC"),
                                    "tables": tables, "feeds": {"players": feed}}))
    return path
