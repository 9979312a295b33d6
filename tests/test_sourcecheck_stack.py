"""``feedstore source check`` against the local stack's real Postgres.

Each test works on a source of its own (``source`` in tests/fix_onboard.py): a schema
with the legacy tables and no CDC set up, and its own role, slot and publication.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from feedstore.cli import main
from tests.fix_onboard import REFERENCE, Source, players_mapping

pytestmark = pytest.mark.stack
PROJECT = Path(__file__).resolve().parents[1]


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


def check(*args: str, stdin: str | None = None) -> Done:
    """The command as an operator runs it. In-process (fast) unless the test types an answer,
    which needs a real process with a stdin; both go through ``feedstore.cli.main``."""
    if stdin is not None:
        env = dict(os.environ, PYTHONPATH=str(PROJECT))
        p = subprocess.run([sys.executable, "-m", "feedstore.cli", "source", "check", *args], input=stdin,
                           capture_output=True, text=True, env=env, timeout=60, check=False)
        return Done(p.returncode, p.stdout, p.stderr)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["source", "check", *args])
    return Done(code, out.getvalue(), err.getvalue())


def test_fresh_source_is_set_up_by_apply(source: Source, tmp_path: Path) -> None:
    mapping = players_mapping(tmp_path, source)
    args = [*source.args(mapping), "--role", source.role]
    users, signal = f'"{source.schema}"."users"', f'"{source.schema}"."debezium_signal"'
    first = check(*args)
    assert first.returncode == 2, first.stderr
    for expected in (f'CREATE ROLE "{source.role}" WITH LOGIN REPLICATION;',
                     f'GRANT USAGE ON SCHEMA "{source.schema}" TO "{source.role}";',
                     f'GRANT SELECT ON {users} TO "{source.role}";', f"CREATE TABLE {signal}",
                     f'CREATE PUBLICATION "{source.publication}" FOR TABLE {users}, {signal}'):
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
                             f"WHERE pubname = '{source.publication}'")) == [(source.signal,),
                                                                             (f"{source.schema}.users",)]
    assert source.sql(f"SELECT has_table_privilege('{source.role}', '{source.schema}.users', 'SELECT')") == [
        (True,)]

    again = check(*args)
    assert again.returncode == 0 and "\n  fix " not in again.stdout


def test_wrong_dsn_is_one_clear_message(source: Source) -> None:
    for dsn, advice, stdin in (
            (f"postgresql://postgres@127.0.0.1:{source.stack.postgres.port}/nope", "database name", ""),  # a process
            ("postgresql://postgres@127.0.0.1:9/x", "host and port", None),
            (source.dsn("nobody"), "Check the user", None)):
        done = check("--dsn", dsn, "--mapping", str(REFERENCE), stdin=stdin)
        assert done.returncode == 2
        assert done.stdout == ""
        assert done.stderr.startswith("feedstore: cannot connect to") and done.stderr.count("\n") == 1
        assert advice in done.stderr and "Traceback" not in done.stderr


def test_missing_privileges_are_named_with_their_grants(source: Source, tmp_path: Path) -> None:
    probe = f"probe_{source.tag}"
    source.sql(f'CREATE ROLE "{probe}" LOGIN')
    args = source.args(players_mapping(tmp_path, source), source.dsn(probe))
    done = check(*args)
    assert done.returncode == 2
    fixes = [line for line in done.stdout.splitlines() if line.startswith("  fix")]
    assert any(f"role {probe}: replication" in x and "lacks the REPLICATION attribute" in x for x in fixes)
    assert any(f"schema {source.schema}: usage" in x and f"may not use schema {source.schema}" in x
               for x in fixes)
    assert done.stdout.count(f'GRANT USAGE ON SCHEMA "{source.schema}"') == 1
    assert f'ALTER ROLE "{probe}" WITH REPLICATION;' in done.stdout
    assert f'GRANT SELECT ON "{source.schema}"."users" TO "{probe}";' in done.stdout
    # Applying needs rights this role does not have: one message saying how to run it instead.
    denied = check(*args, "--apply", "--yes")
    assert denied.returncode == 2
    err = denied.stderr.strip()
    assert err.startswith("feedstore: permission denied for ALTER ROLE") and "\n" not in err
    assert "--role" in err and "Traceback" not in denied.stderr
    assert source.sql(f"SELECT rolreplication FROM pg_roles WHERE rolname = '{probe}'") == [(False,)]


def test_table_without_a_key(source: Source, tmp_path: Path) -> None:
    source.sql("CREATE TABLE users_nokey (LIKE users)")
    mapping = players_mapping(tmp_path, source, "users_nokey")
    done = check(*source.args(mapping))
    assert done.returncode == 2
    (line,) = [x for x in done.stdout.splitlines() if "users_nokey: primary key" in x]
    assert line.split()[0] == "fix" and "has none" in line
    assert f'ALTER TABLE "{source.schema}"."users_nokey" ADD PRIMARY KEY (<column>);   -- your decision' \
        in done.stdout
    # --apply never invents a key, but applies the rest
    applied = check(*source.args(mapping), "--apply", "--yes")
    assert applied.returncode == 2 and "Applied" in applied.stdout
    assert source.sql("SELECT count(*) FROM pg_index WHERE indrelid = 'users_nokey'::regclass") == [(0,)]
    # a unique index on NOT NULL columns is offered as the key
    source.sql("ALTER TABLE users_nokey ALTER user_id SET NOT NULL; "
               "CREATE UNIQUE INDEX users_nokey_uid ON users_nokey (user_id)")
    done = check(*source.args(mapping))
    assert 'ADD PRIMARY KEY USING INDEX "users_nokey_uid"' in done.stdout


def test_replica_identity_follows_the_delete_policy(source: Source, tmp_path: Path) -> None:
    keyed = players_mapping(tmp_path, source, on_delete={"set": {"status": "Deleted"}})
    done = check(*source.args(keyed), "--apply", "--yes")
    assert done.returncode == 0, done.stdout
    assert source.sql("SELECT relreplident FROM pg_class WHERE oid = 'users'::regclass") == [("d",)]

    # InTarget knows players by e-mail here: a delete must carry the e-mail to find the row.
    by_email = players_mapping(tmp_path, source, on_delete={"set": {"status": "Deleted"}}, player_id="lower(email)")
    done = check(*source.args(by_email))
    assert done.returncode == 2
    assert "needs FULL: the players feed's on_delete needs email of the deleted row" in done.stdout
    assert check(*source.args(by_email), "--apply", "--yes").returncode == 0
    assert source.sql("SELECT relreplident FROM pg_class WHERE oid = 'users'::regclass") == [("f",)]


def test_publication_for_all_tables_conflicts_with_filtered_mode(source: Source, tmp_path: Path) -> None:
    source.sql(f"CREATE PUBLICATION {source.publication} FOR ALL TABLES")
    mapping = players_mapping(tmp_path, source)
    done = check(*source.args(mapping))
    assert "is FOR ALL TABLES" in done.stdout and done.returncode == 2
    ok = check(*source.args(mapping), "--publication-mode", "all_tables", "--apply", "--yes")
    assert ok.returncode == 0, ok.stdout
    line = [x for x in ok.stdout.splitlines() if f"publication {source.publication}" in x][-1]
    assert line.split()[0] == "ok" and line.endswith("all tables")
