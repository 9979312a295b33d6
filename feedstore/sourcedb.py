"""The source database side of ``source check``: read the catalog, run the fixes.

This is the psycopg boundary: every psycopg error is translated here, once, into
:class:`SourceError` saying what to do (a wrong DSN, a refused login, a grant the
connecting role may not give), so the command prints one line instead of a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from feedstore.config import ConfigError
from feedstore.connector import SourceNames, source_tables
from feedstore.sourcecheck import PUBLISH, Facts, Fix, PublicationFacts, SlotFacts, TableFacts
from materializer.mapping import Mapping


class SourceError(ConfigError):
    """The source database cannot be checked or fixed; the message says what to do."""


def describe(dsn: str) -> str:
    """The DSN without its password, for messages."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "the given DSN"
    host = parts.get("host") or "the default host"
    port = f":{parts['port']}" if parts.get("port") else ""
    db = parts.get("dbname") or parts.get("user") or "the default database"
    user = f" as {parts['user']}" if parts.get("user") else ""
    return f"{db} on {host}{port}{user}"


def connect(dsn: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.ProgrammingError as ex:
        raise SourceError(f"--dsn is not a valid PostgreSQL connection string ({_first_line(ex)}); "
                          "write it as postgresql://USER@HOST:PORT/DBNAME") from ex
    except psycopg.OperationalError as ex:
        raise SourceError(f"cannot connect to {describe(dsn)}: {_first_line(ex)}. {_connect_advice(str(ex))}") from ex


_ADVICE = (
    ("password authentication failed", "Check the user and password (PGPASSWORD or ~/.pgpass)."),
    ("no password supplied", "Give the password in PGPASSWORD or ~/.pgpass (not in shell history)."),
    ("no pg_hba.conf entry", "Allow this host and user in the server's pg_hba.conf, then reload it."),
    ("role \"", "Check the user in --dsn (postgresql://USER@HOST/DB)."),
    ("database \"", "Check the database name in --dsn (postgresql://USER@HOST:PORT/DBNAME)."),
    ("SSL", "Check sslmode in --dsn (e.g. ?sslmode=require) and the server's SSL settings."),
)


def _connect_advice(text: str) -> str:
    for needle, advice in _ADVICE:
        if needle in text:
            return advice
    return "Check that PostgreSQL runs there and the host and port in --dsn (postgresql://USER@HOST:PORT/DBNAME)."


def _first_line(ex: BaseException) -> str:
    text = str(ex).strip()
    # libpq prefixes: 'connection failed: connection to server at "..." failed: FATAL: ...'
    text = text.splitlines()[0] if text else type(ex).__name__
    return re.sub(r"^connection failed: ", "", text)


def gather(conn: psycopg.Connection[Any], mapping: Mapping, names: SourceNames | None = None,
           role: str | None = None) -> Facts:
    try:
        return _gather(conn, mapping, names or SourceNames(), role)
    except psycopg.Error as ex:
        raise SourceError(f"reading the catalog failed: {_first_line(ex)}") from ex


def _one(conn: psycopg.Connection[Any], query: str, params: Sequence[Any] = ()) -> Any:
    row = conn.execute(query.encode(), params).fetchone()
    return None if row is None else row[0]


def _gather(conn: psycopg.Connection[Any], mapping: Mapping, names: SourceNames, role: str | None) -> Facts:
    db, user = conn.execute("SELECT current_database(), current_user").fetchone() or ("", "")
    role = role or user
    settings = dict(conn.execute(
        "SELECT name, setting FROM pg_settings WHERE name IN "
        "('server_version_num', 'wal_level', 'max_replication_slots', 'max_wal_senders')").fetchall())
    rds = bool(_one(conn, "SELECT count(*) FROM pg_roles WHERE rolname = 'rds_replication'"))
    r = conn.execute("SELECT rolcanlogin, rolreplication OR rolsuper FROM pg_roles WHERE rolname = %s",
                     (role,)).fetchone()
    replication = bool(r and r[1]) or (rds and r is not None and bool(
        _one(conn, "SELECT pg_has_role(%s, 'rds_replication', 'MEMBER')", (role,))))
    slot_row = conn.execute(
        "SELECT s.plugin, s.database, s.active_pid, pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint, "
        "a.usename FROM pg_replication_slots s LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid "
        "WHERE s.slot_name = %s", (names.slot,)).fetchone()
    pub = None
    pub_row = conn.execute("SELECT puballtables, pubinsert, pubupdate, pubdelete FROM pg_publication "
                           "WHERE pubname = %s", (names.publication,)).fetchone()
    if pub_row is not None:
        tables = frozenset(f"{s}.{t}" for s, t in conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (names.publication,)))
        publish = frozenset(op for op, on in zip(PUBLISH, pub_row[1:], strict=True) if on)
        pub = PublicationFacts(bool(pub_row[0]), tables, publish)
    return Facts(
        version=int(settings["server_version_num"]), database=db, user=user, role=role,
        wal_level=settings["wal_level"],
        max_replication_slots=int(settings["max_replication_slots"]),
        slots_used=int(_one(conn, "SELECT count(*) FROM pg_replication_slots")),
        max_wal_senders=int(settings["max_wal_senders"]),
        senders_used=int(_one(conn, "SELECT count(*) FROM pg_stat_replication")),
        role_exists=r is not None, role_login=bool(r and r[0]), role_replication=replication, rds=rds,
        connect=r is not None and bool(_one(conn, "SELECT has_database_privilege(%s, %s, 'CONNECT')", (role, db))),
        slot=None if slot_row is None else SlotFacts(*slot_row),
        publication=pub,
        schemas=_schema_usage(conn, {t.split(".")[0] for t in [*source_tables(mapping), names.signal_table]},
                              role if r is not None else None),
        tables={t: _table_facts(conn, t, role if r is not None else None) for t in source_tables(mapping)},
        signal=_table_facts(conn, names.signal_table, role if r is not None else None),
    )


def _schema_usage(conn: psycopg.Connection[Any], schemas: set[str], role: str | None) -> dict[str, bool]:
    rows = conn.execute("SELECT nspname, %s::text IS NOT NULL AND has_schema_privilege(%s::text, oid, 'USAGE') "
                        "FROM pg_namespace WHERE nspname = ANY(%s)", (role, role, sorted(schemas))).fetchall()
    return {name: bool(usage) for name, usage in rows}


def _table_facts(conn: psycopg.Connection[Any], name: str, role: str | None) -> TableFacts:
    # By catalog names, not to_regclass: that needs USAGE on the schema, which may be what is missing.
    schema, table = name.split(".")
    oid = _one(conn, "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                     "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')", (schema, table))
    if oid is None:
        return TableFacts(name, exists=False)
    key = tuple(c for (c,) in conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s AND i.indisprimary ORDER BY array_position("
        "i.indkey::int2[], a.attnum)", (oid,)))
    unique = None if key else _one(conn, (
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s "
        "AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL AND NOT EXISTS (SELECT 1 FROM "
        "pg_attribute a WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) AND NOT a.attnotnull) "
        "ORDER BY c.relname LIMIT 1"), (oid,))
    cols = conn.execute(
        "SELECT a.attname, t.typstorage = 'x' AND a.atttypmod < 0 FROM pg_attribute a JOIN pg_type t "
        "ON t.oid = a.atttypid WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum", (oid,)).fetchall()
    privs: tuple[bool, bool] = (False, False)
    if role is not None:
        row = conn.execute("SELECT has_table_privilege(%s, %s::oid, 'SELECT'), has_table_privilege(%s, %s::oid, "
                           "'INSERT')", (role, oid, role, oid)).fetchone()
        privs = (bool(row[0]), bool(row[1])) if row else privs
    return TableFacts(
        name, exists=True, key=key, unique_index=unique,
        identity=str(_one(conn, "SELECT relreplident FROM pg_class WHERE oid = %s", (oid,))),
        select=privs[0], insert=privs[1],
        columns=tuple(c for c, _ in cols), large=tuple(c for c, big in cols if big))


def apply(conn: psycopg.Connection[Any], fixes: Iterable[Fix]) -> list[str]:
    """Run the applicable fixes in order; stop at the first failure with what to do."""
    done: list[str] = []
    for fix in fixes:
        if not fix.applicable:
            continue
        try:
            conn.execute(fix.sql.encode())
        except psycopg.errors.InsufficientPrivilege as ex:
            raise SourceError(
                f"permission denied for {fix.sql} ({_first_line(ex)}); applied before it: {len(done)}. "
                "Run the check as a superuser or the tables' owner (--dsn) and name the connector's role "
                "with --role") from ex
        except psycopg.Error as ex:
            raise SourceError(f"{fix.sql} failed: {_first_line(ex)}; applied before it: {len(done)}") from ex
        done.append(fix.sql)
    return done
