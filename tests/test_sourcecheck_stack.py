"""``feedstore source check`` against the local stack's real Postgres.

Each test gets a database of its own in the stack's server, with the legacy schema and
no CDC set up, and a role name of its own, so nothing touches the ``operator``
database the session's Debezium streams.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from deploy.localstack.stack import LocalStack, legacy_schema
from feedstore.cli import main

pytestmark = pytest.mark.stack
PROJECT = Path(__file__).resolve().parents[1]
REFERENCE = PROJECT / "deploy" / "mappings" / "spacevegas.yaml"


@dataclass
class Source:
    admin: str  # DSN as the superuser
    dbname: str
    role: str
    slot: str
    stack: LocalStack

    def dsn(self, user: str) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.stack.postgres.port}/{self.dbname}"

    def args(self, mapping: Path, dsn: str | None = None) -> list[str]:
        """The stack's own Debezium holds slot 'feedstore': every test uses a slot of its own."""
        return ["--dsn", dsn or self.admin, "--slot", self.slot, "--mapping", str(mapping)]

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            cur = conn.execute(query.encode())
            return cur.fetchall() if cur.description else []


@pytest.fixture
def source(stack: LocalStack) -> Iterator[Source]:
    tag = uuid.uuid4().hex[:8]
    dbname, role = f"onboard_{tag}", f"dbz_{tag}"
    server = f"postgresql://postgres@127.0.0.1:{stack.postgres.port}/postgres"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"'.encode())
    src = Source(f"postgresql://postgres@127.0.0.1:{stack.postgres.port}/{dbname}", dbname, role, role, stack)
    src.sql(legacy_schema())
    yield src
    try:
        _drop(server, dbname, [role, f"probe_{tag}"])
    except Exception:
        import time
        time.sleep(2)
        print("PGLOG", stack.postgres.log.read_text()[-8000:])
        raise


def _drop(server: str, dbname: str, roles: list[str]) -> None:
    with psycopg.connect(server, autocommit=True) as conn:
        for (slot,) in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s", (dbname,)):
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)'.encode())
        for name in roles:
            conn.execute(f'DROP ROLE IF EXISTS "{name}"'.encode())


def players_mapping(tmp_path: Path, source: str | None = None, on_delete: Any = None,
                    player_id: str | None = None, prefix: str = "onboard") -> Path:
    """The reference players feed alone (other feeds' tables are not the point here)."""
    doc = yaml.safe_load(REFERENCE.read_text())
    feed = dict(doc["feeds"]["players"])
    tables = {k: v for k, v in (doc.get("tables") or {}).items() if k == feed["source"]}
    if source:
        tables = {source: tables[feed["source"]]} if tables else {}
        feed["source"] = source
    if on_delete is not None:
        feed["on_delete"] = on_delete
    if player_id is not None:
        feed["fields"] = dict(feed["fields"], id=player_id)
    path = tmp_path / "mapping.yaml"
    path.write_text(yaml.safe_dump({"topic_prefix": prefix, "source_zone": doc.get("source_zone", "UTC"),
                                    "tables": tables, "feeds": {"players": feed}}))
    return path


def check(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The command as an operator runs it (a process: stdin, exit code, no traceback)."""
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    return subprocess.run([sys.executable, "-m", "feedstore.cli", "source", "check", *args], input=stdin,
                          capture_output=True, text=True, env=env, timeout=60, check=False)


def test_fresh_database_is_set_up_by_apply(source: Source, tmp_path: Path) -> None:
    mapping = players_mapping(tmp_path)
    args = [*source.args(mapping), "--role", source.role]
    first = check(*args)
    assert first.returncode == 2, first.stderr
    for expected in (f'CREATE ROLE "{source.role}" WITH LOGIN REPLICATION;', 'GRANT SELECT ON "public"."users"',
                     'CREATE TABLE "public"."debezium_signal"', 'CREATE PUBLICATION "feedstore_publication" '
                     'FOR TABLE "public"."users", "public"."debezium_signal"'):
        assert expected in first.stdout
    assert "Run again with --apply" in first.stdout

    declined = check(*args, "--apply", stdin="n\n")
    assert declined.returncode == 2 and "Nothing applied." in declined.stdout
    assert source.sql(f"SELECT 1 FROM pg_roles WHERE rolname = '{source.role}'") == []

    applied = check(*args, "--apply", stdin="y\n")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "Ready:" in applied.stdout
    assert source.sql(f"SELECT rolcanlogin, rolreplication FROM pg_roles WHERE rolname = '{source.role}'") == [
        (True, True)]
    assert sorted(source.sql("SELECT schemaname || '.' || tablename FROM pg_publication_tables "
                             "WHERE pubname = 'feedstore_publication'")) == [("public.debezium_signal",),
                                                                            ("public.users",)]
    assert source.sql(f"SELECT has_table_privilege('{source.role}', 'public.users', 'SELECT')") == [(True,)]

    again = check(*args)
    assert again.returncode == 0 and "fix " not in again.stdout


def test_wrong_dsn_is_one_clear_message(source: Source) -> None:
    for dsn, advice in ((f"postgresql://postgres@127.0.0.1:{source.stack.postgres.port}/nope", "database name"),
                        ("postgresql://postgres@127.0.0.1:9/x", "host and port"),
                        (source.dsn("nobody"), "Check the user")):
        done = check("--dsn", dsn, "--mapping", str(REFERENCE))
        assert done.returncode == 2
        assert done.stdout == ""
        assert done.stderr.startswith("feedstore: cannot connect to") and done.stderr.count("\n") == 1
        assert advice in done.stderr and "Traceback" not in done.stderr


def test_missing_privileges_are_named_with_their_grants(source: Source, tmp_path: Path) -> None:
    probe = f"probe_{source.role.split('_')[1]}"
    source.sql(f'CREATE ROLE "{probe}" LOGIN')
    args = source.args(players_mapping(tmp_path), source.dsn(probe))
    done = check(*args)
    assert done.returncode == 2
    lines = {line.split()[1] + " " + line.split()[2]: line for line in done.stdout.splitlines()
             if line.startswith("  fix")}
    assert "lacks the REPLICATION attribute" in lines[f"role {probe}:"]
    assert f'ALTER ROLE "{probe}" WITH REPLICATION;' in done.stdout
    assert f'GRANT SELECT ON "public"."users" TO "{probe}";' in done.stdout
    # Applying needs rights this role does not have: one message saying how to run it instead.
    denied = check(*args, "--apply", "--yes")
    assert denied.returncode == 2
    err = denied.stderr.strip()
    assert err.startswith("feedstore: permission denied for ALTER ROLE") and "\n" not in err
    assert "--role" in err and "Traceback" not in denied.stderr


def test_table_without_a_key(source: Source, tmp_path: Path) -> None:
    source.sql("CREATE TABLE public.users_nokey (LIKE public.users)")
    done = check(*source.args(players_mapping(tmp_path, "public.users_nokey")))
    assert done.returncode == 2
    (line,) = [x for x in done.stdout.splitlines() if "users_nokey: primary key" in x]
    assert line.split()[0] == "fix" and "has none" in line
    assert 'ALTER TABLE "public"."users_nokey" ADD PRIMARY KEY (<column>);   -- your decision' in done.stdout
    # --apply never invents a key, but applies the rest
    applied = check(*source.args(players_mapping(tmp_path, "public.users_nokey")),
                    "--apply", "--yes")
    assert applied.returncode == 2
    assert source.sql("SELECT count(*) FROM pg_index WHERE indrelid = 'public.users_nokey'::regclass") == [(0,)]
    # a unique index on NOT NULL columns is offered as the key
    source.sql("ALTER TABLE public.users_nokey ALTER user_id SET NOT NULL; "
               "CREATE UNIQUE INDEX users_nokey_uid ON public.users_nokey (user_id)")
    done = check(*source.args(players_mapping(tmp_path, "public.users_nokey")))
    assert 'ADD PRIMARY KEY USING INDEX "users_nokey_uid"' in done.stdout


def test_replica_identity_follows_the_delete_policy(source: Source, tmp_path: Path) -> None:
    keyed = players_mapping(tmp_path, on_delete={"set": {"status": "Deleted"}})
    done = check(*source.args(keyed), "--apply", "--yes")
    assert done.returncode == 0, done.stdout
    assert source.sql("SELECT relreplident FROM pg_class WHERE oid = 'public.users'::regclass") == [("d",)]

    # InTarget knows players by e-mail here: a delete must carry the e-mail to find the row.
    reads_row = players_mapping(tmp_path, on_delete={"set": {"status": "Deleted"}}, player_id="lower(email)")
    done = check(*source.args(reads_row))
    assert done.returncode == 2
    assert "needs FULL: the players feed's on_delete needs email of the deleted row" in done.stdout
    assert check(*source.args(reads_row), "--apply", "--yes").returncode == 0
    assert source.sql("SELECT relreplident FROM pg_class WHERE oid = 'public.users'::regclass") == [("f",)]


def test_publication_for_all_tables_conflicts_with_filtered_mode(source: Source, tmp_path: Path) -> None:
    source.sql("CREATE PUBLICATION feedstore_publication FOR ALL TABLES")
    mapping = players_mapping(tmp_path)
    done = check(*source.args(mapping))
    assert "is FOR ALL TABLES" in done.stdout and done.returncode == 2
    ok = check(*source.args(mapping), "--publication-mode", "all_tables",
               "--apply", "--yes")
    assert ok.returncode == 0, ok.stdout
    (line,) = [x for x in ok.stdout.splitlines() if "publication feedstore_publication" in x][-1:]
    assert line.split()[0] == "ok" and line.endswith("all tables")


def test_in_process_cli_matches_the_process(source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["source", "check", *source.args(players_mapping(tmp_path))]) == 2
    assert "fix    publication feedstore_publication" in capsys.readouterr().out
