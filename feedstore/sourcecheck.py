"""Is the operator's Postgres ready for Debezium and Feedstore? What SQL makes it so?

Onboarding stalls on the same handful of database settings every time: logical
decoding is off, the connector's role cannot replicate or read a table, the
publication misses a table, a table has no primary key, deletes carry too little of
the old row. ``feedstore source check`` reads all of them in one pass (``gather``),
judges them against the mapping (``plan``, pure, so every verdict is unit-tested
without a server) and prints each fix as SQL; ``--apply`` runs the fixes it can run
safely. Settings that need a server restart and decisions only the operator can make
(which columns form a primary key) are printed, never applied.

psycopg errors are translated once, here, into :class:`SourceError` with what to do.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from feedstore.config import ConfigError
from feedstore.connector import SourceNames, source_tables
from materializer.mapping import Mapping, referenced_columns

SIGNAL_COLUMNS = ("id", "type", "data")
_PUBLISH = ("insert", "update", "delete")


class SourceError(ConfigError):
    """The source database cannot be checked or fixed; the message says what to do."""


@dataclass(frozen=True)
class Fix:
    """One statement. ``restart``: takes effect after a server restart, so it is printed
    with instructions and never applied. ``manual``: needs the operator's decision."""

    sql: str
    restart: bool = False
    manual: bool = False

    @property
    def applicable(self) -> bool:
        return not (self.restart or self.manual)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fixes: tuple[Fix, ...] = ()
    warn: bool = False  # advice that does not fail the check

    @property
    def state(self) -> str:
        return "fix" if not self.ok else "warn" if self.warn else "ok"


@dataclass(frozen=True)
class TableFacts:
    name: str  # schema.table
    exists: bool
    key: tuple[str, ...] = ()
    unique_index: str | None = None  # a unique index on NOT NULL columns, if there is no key
    identity: str = "d"  # pg_class.relreplident: d default, f full, n nothing, i index
    usage: bool = False  # the role's USAGE on the schema
    select: bool = False
    insert: bool = False
    columns: tuple[str, ...] = ()
    large: tuple[str, ...] = ()  # unbounded TOAST-able columns (text, jsonb, bytea, ...)


@dataclass(frozen=True)
class SlotFacts:
    plugin: str | None
    database: str | None
    active_pid: int | None
    retained_bytes: int | None


@dataclass(frozen=True)
class PublicationFacts:
    all_tables: bool
    tables: frozenset[str]
    publish: frozenset[str]


@dataclass(frozen=True)
class Facts:
    version: int  # server_version_num
    database: str
    user: str  # the connecting role
    role: str  # the role the connector will use
    wal_level: str
    max_replication_slots: int
    slots_used: int
    max_wal_senders: int
    senders_used: int
    role_exists: bool
    role_login: bool = False
    role_replication: bool = False  # REPLICATION, superuser, or rds_replication member
    rds: bool = False  # Amazon RDS/Aurora: replication is granted through rds_replication
    connect: bool = False
    slot: SlotFacts | None = None
    publication: PublicationFacts | None = None
    tables: dict[str, TableFacts] = field(default_factory=dict)
    signal: TableFacts | None = None


# --------------------------------------------------------------------------- what the mapping needs

@dataclass(frozen=True)
class IdentityNeed:
    full: bool
    reason: str


def identity_needs(mapping: Mapping, keys: dict[str, tuple[str, ...]]) -> dict[str, IdentityNeed]:
    """The REPLICA IDENTITY each mapped table needs for its feeds' delete policies.

    A Postgres delete carries the old row's key columns only, unless the table is
    REPLICA IDENTITY FULL. Deletes that are ignored, or that set constants on the row
    found by its key, need nothing more; an ``on_delete`` expression (or a feed key)
    that reads a non-key column needs the whole old row.
    """
    needs: dict[str, IdentityNeed] = {}
    for fm in mapping.feeds.values():
        table = fm.source.name
        need = needs.get(table, IdentityNeed(False, "deletes are ignored"))
        if fm.delete_set is not None and not need.full:
            exprs = [fm.exprs[k] for k in fm.feed.key if k in fm.exprs] + list(fm.delete_set.values())
            read = sorted(set().union(*(referenced_columns(e) for e in exprs)) - set(keys.get(table, ())))
            if read:
                need = IdentityNeed(True, f"the {fm.feed.name} feed's on_delete needs {', '.join(read)} of the "
                                          "deleted row (its key or set values read them), which a delete only "
                                          "carries with REPLICA IDENTITY FULL")
            else:
                need = IdentityNeed(False, f"the {fm.feed.name} feed's on_delete needs only the key")
        needs[table] = need
    return needs


# --------------------------------------------------------------------------- verdicts (pure)

def _ident(name: str) -> sql.Composable:
    return sql.Identifier(*name.split("."))


def _text(stmt: sql.Composable) -> str:
    return stmt.as_string(None) + ";"


def plan(facts: Facts, mapping: Mapping, names: SourceNames | None = None) -> list[Check]:
    """Every check, in the order its fixes must run (role, grants, tables, publication)."""
    names = names or SourceNames()
    checks = [_version(facts), _wal_level(facts), *_capacity(facts, names), *_role(facts)]
    needs = identity_needs(mapping, {n: t.key for n, t in facts.tables.items()})
    for name in source_tables(mapping):
        read = frozenset().union(*(fm.columns for fm in mapping.feeds.values() if fm.source.name == name))
        checks += _table(facts, facts.tables.get(name, TableFacts(name, exists=False)), needs[name], read)
    checks += _signal(facts, names)
    checks.append(_publication(facts, mapping, names))
    return checks


def _version(f: Facts) -> Check:
    major = f.version // 10000
    if major < 10:
        return Check("server version", False, f"PostgreSQL {major} has no pgoutput; Debezium needs 10 or newer",
                     (Fix("-- upgrade PostgreSQL", manual=True),))
    return Check("server version", True, f"PostgreSQL {major}")


def _wal_level(f: Facts) -> Check:
    if f.wal_level == "logical":
        return Check("wal_level", True, "logical")
    how = ("on Amazon RDS/Aurora set rds.logical_replication = 1 in the parameter group and reboot"
           if f.rds else "then restart PostgreSQL")
    return Check("wal_level", False, f"is {f.wal_level}; logical decoding needs logical ({how})",
                 (Fix("ALTER SYSTEM SET wal_level = logical;", restart=True),))


def _capacity(f: Facts, names: SourceNames) -> list[Check]:
    out = []
    need = 0 if f.slot is not None else 1
    if f.slots_used + need <= f.max_replication_slots:
        out.append(Check("max_replication_slots", True, f"{f.slots_used} of {f.max_replication_slots} in use"))
    else:
        out.append(Check("max_replication_slots", False,
                         f"all {f.max_replication_slots} slots are in use; the connector needs one more",
                         (Fix(f"ALTER SYSTEM SET max_replication_slots = {f.slots_used + 4};", restart=True),)))
    if f.senders_used < f.max_wal_senders:
        out.append(Check("max_wal_senders", True, f"{f.senders_used} of {f.max_wal_senders} in use"))
    else:
        out.append(Check("max_wal_senders", False,
                         f"all {f.max_wal_senders} WAL senders are in use; the connector needs one more",
                         (Fix(f"ALTER SYSTEM SET max_wal_senders = {f.senders_used + 4};", restart=True),)))
    out.append(_slot(f, names))
    return out


def _slot(f: Facts, names: SourceNames) -> Check:
    s, label = f.slot, f"slot {names.slot}"
    drop = Fix(_text(sql.SQL("SELECT pg_drop_replication_slot({})").format(names.slot)), manual=True)
    if s is None:
        return Check(label, True, "does not exist yet; the connector creates it on first start")
    if s.plugin != "pgoutput":
        return Check(label, False, f"exists with plugin {s.plugin}; the connector uses pgoutput: drop it "
                                   "(its position is lost) or choose another name with --slot", (drop,))
    if s.database != f.database:
        return Check(label, False, f"exists in database {s.database}; choose another name with --slot", (drop,))
    if s.active_pid is not None:
        return Check(label, False, f"is in use by backend pid {s.active_pid}; one slot serves one connector: "
                                   "stop the other reader or choose another name with --slot")
    kept = f"; it holds {s.retained_bytes / 2**20:.0f} MiB of WAL" if s.retained_bytes else ""
    return Check(label, True, f"exists, idle (the connector resumes from it){kept}")


def _role(f: Facts) -> list[Check]:
    role = sql.Identifier(f.role)
    if not f.role_exists:
        return [Check(f"role {f.role}", False,
                      "does not exist; create it, then give it a password (psql: \\password "
                      f"{f.role}) and put that in the connector's secret",
                      (Fix(_text(sql.SQL("CREATE ROLE {} WITH LOGIN REPLICATION").format(role))),
                       Fix(_text(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                           sql.Identifier(f.database), role)))))]
    out = []
    if f.role_login:
        out.append(Check(f"role {f.role}: login", True, "can log in"))
    else:
        out.append(Check(f"role {f.role}: login", False, "cannot log in",
                         (Fix(_text(sql.SQL("ALTER ROLE {} WITH LOGIN").format(role))),)))
    if f.role_replication:
        out.append(Check(f"role {f.role}: replication", True, "may stream changes"))
    else:
        stmt = (sql.SQL("GRANT rds_replication TO {}") if f.rds else sql.SQL("ALTER ROLE {} WITH REPLICATION"))
        out.append(Check(f"role {f.role}: replication", False,
                         "lacks the REPLICATION attribute a logical replication connection needs",
                         (Fix(_text(stmt.format(role))),)))
    if f.connect:
        out.append(Check(f"role {f.role}: connect", True, f"may connect to {f.database}"))
    else:
        out.append(Check(f"role {f.role}: connect", False, f"may not connect to database {f.database}",
                         (Fix(_text(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                             sql.Identifier(f.database), role))),)))
    return out


def _table(f: Facts, t: TableFacts, need: IdentityNeed, read: frozenset[str]) -> list[Check]:
    label, role, tbl = f"table {t.name}", sql.Identifier(f.role), _ident(t.name)
    if not t.exists:
        return [Check(label, False, f"does not exist in database {f.database}: check the mapping's "
                                    "'source' (schema.table) and the database in --dsn")]
    out = []
    if t.key:
        out.append(Check(f"{label}: primary key", True, ", ".join(t.key)))
    elif t.unique_index:
        out.append(Check(f"{label}: primary key", False,
                         f"has none; Debezium keys each change by it and Feedstore keeps one row per key. "
                         f"The unique index {t.unique_index} on NOT NULL columns can become the key",
                         (Fix(_text(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY USING INDEX {}").format(
                             tbl, sql.Identifier(t.unique_index))), manual=True),)))
    else:
        out.append(Check(f"{label}: primary key", False,
                         "has none; Debezium keys each change by it and Feedstore keeps one row per key. "
                         "Add one on the column(s) that identify a row",
                         (Fix(_text(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(
                             tbl, sql.SQL("<column>"))), manual=True),)))
    if not (f.role_exists and t.usage):  # a role created by --apply needs the grant too
        out.append(Check(f"{label}: schema usage", False, f"role {f.role} may not use schema {t.name.split('.')[0]}",
                         (Fix(_text(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                             sql.Identifier(t.name.split(".")[0]), role))),)))
    if t.select and f.role_exists:
        out.append(Check(f"{label}: select", True, f"{f.role} may read it (initial snapshot)"))
    else:
        out.append(Check(f"{label}: select", False, f"{f.role} may not read it; the initial snapshot needs SELECT",
                         (Fix(_text(sql.SQL("GRANT SELECT ON {} TO {}").format(tbl, role))),)))
    out.append(_identity(t, need, read))
    return out


def _identity(t: TableFacts, need: IdentityNeed, read: frozenset[str]) -> Check:
    label, tbl = f"table {t.name}: replica identity", _ident(t.name)
    names = {"d": "DEFAULT", "f": "FULL", "n": "NOTHING", "i": "USING INDEX"}
    have = names.get(t.identity, t.identity)
    full = Fix(_text(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(tbl)))
    if t.identity == "n":
        fix = full if need.full else Fix(_text(sql.SQL("ALTER TABLE {} REPLICA IDENTITY DEFAULT").format(tbl)))
        return Check(label, False, "NOTHING: Postgres refuses updates and deletes on a published table "
                                   f"without one ({need.reason})", (fix,))
    if need.full and t.identity != "f":
        return Check(label, False, f"{have}, needs FULL: {need.reason}", (full,))
    large = [c for c in t.large if c in read]
    if t.identity != "f" and large:
        return Check(label, True, f"{have} is enough ({need.reason}). But if a value in {', '.join(large)} can "
                                  "exceed ~2 kB, an update that leaves it unchanged arrives as Debezium's "
                                  "__debezium_unavailable_value: then make it FULL", (full,), warn=True)
    return Check(label, True, f"{have} ({need.reason})")


def _signal(f: Facts, names: SourceNames) -> list[Check]:
    label, s, role = f"signal table {names.signal_table}", f.signal, sql.Identifier(f.role)
    tbl = _ident(names.signal_table)
    grant = Fix(_text(sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(tbl, role)))
    if s is None or not s.exists:
        create = Fix(_text(sql.SQL("CREATE TABLE {} (id varchar(42) PRIMARY KEY, type varchar(32) NOT NULL, "
                                   "data varchar(2048) NULL)").format(tbl)))
        return [Check(label, False, "missing; incremental snapshots (re-reading a table on demand) are "
                                    "requested by inserting into it", (create, grant))]
    if tuple(s.columns[:3]) != SIGNAL_COLUMNS:
        return [Check(label, False, f"has columns {', '.join(s.columns)}; Debezium needs (id, type, data) "
                                    "in that order: drop or rename it, or choose another with --signal-table")]
    if f.role_exists and s.select and s.insert:
        return [Check(label, True, f"{f.role} may read and insert (snapshot watermarks)")]
    return [Check(label, False, f"{f.role} needs SELECT and INSERT on it (Debezium writes snapshot watermarks)",
                  (grant,))]


def _publication(f: Facts, mapping: Mapping, names: SourceNames) -> Check:
    label, pub = f"publication {names.publication}", sql.Identifier(names.publication)
    want = [*source_tables(mapping), names.signal_table]
    tables = sql.SQL(", ").join(_ident(t) for t in want)
    publish = sql.SQL("WITH (publish = 'insert, update, delete, truncate')")
    create = (sql.SQL("CREATE PUBLICATION {} FOR ALL TABLES {}").format(pub, publish)
              if names.publication_mode == "all_tables"
              else sql.SQL("CREATE PUBLICATION {} FOR TABLE {} {}").format(pub, tables, publish))
    p = f.publication
    if p is None:
        return Check(label, False, f"missing; it must publish {', '.join(want)}", (Fix(_text(create)),))
    if names.publication_mode == "filtered" and p.all_tables:
        return Check(label, False, "is FOR ALL TABLES, which Debezium's filtered publication mode refuses: "
                                   "recreate it for the mapped tables (or generate the connector config with "
                                   "--publication-mode all_tables)",
                     (Fix(_text(sql.SQL("DROP PUBLICATION {}").format(pub))), Fix(_text(create))))
    missing = [] if p.all_tables else [t for t in want if t not in p.tables]  # ALL TABLES covers new ones too
    extra = sorted(p.tables - set(want)) if names.publication_mode == "filtered" else []
    fixes: list[Fix] = []
    problems: list[str] = []
    if missing or extra:
        if names.publication_mode == "filtered":
            fixes.append(Fix(_text(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(pub, tables))))
        else:
            fixes.append(Fix(_text(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                pub, sql.SQL(", ").join(_ident(t) for t in missing)))))
        if missing:
            problems.append(f"misses {', '.join(missing)}")
        if extra:
            problems.append(f"also has {', '.join(extra)} (Debezium would reset it to the mapped tables, "
                            "which needs table ownership)")
    lacking = [op for op in _PUBLISH if op not in p.publish]
    if lacking:
        problems.append(f"does not publish {', '.join(lacking)}")
        fixes.append(Fix(_text(sql.SQL("ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate')")
                               .format(pub))))
    if problems:
        return Check(label, False, "; ".join(problems), tuple(fixes))
    return Check(label, True, "all tables" if p.all_tables else f"publishes {', '.join(want)}")


# --------------------------------------------------------------------------- the database (psycopg boundary)

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
        "SELECT plugin, database, active_pid, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint "
        "FROM pg_replication_slots WHERE slot_name = %s", (names.slot,)).fetchone()
    pub = None
    pub_row = conn.execute("SELECT puballtables, pubinsert, pubupdate, pubdelete FROM pg_publication "
                           "WHERE pubname = %s", (names.publication,)).fetchone()
    if pub_row is not None:
        tables = frozenset(f"{s}.{t}" for s, t in conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (names.publication,)))
        publish = frozenset(op for op, on in zip(_PUBLISH, pub_row[1:], strict=True) if on)
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
        tables={t: _table_facts(conn, t, role if r is not None else None) for t in source_tables(mapping)},
        signal=_table_facts(conn, names.signal_table, role if r is not None else None),
    )


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
    privs: tuple[bool, bool, bool] = (False, False, False)
    if role is not None:
        row = conn.execute(
            "SELECT has_schema_privilege(%s, n.nspname, 'USAGE'), has_table_privilege(%s, c.oid, 'SELECT'), "
            "has_table_privilege(%s, c.oid, 'INSERT') FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE c.oid = %s", (role, role, role, oid)).fetchone()
        privs = (bool(row[0]), bool(row[1]), bool(row[2])) if row else privs
    return TableFacts(
        name, exists=True, key=key, unique_index=unique,
        identity=str(_one(conn, "SELECT relreplident FROM pg_class WHERE oid = %s", (oid,))),
        usage=privs[0], select=privs[1], insert=privs[2],
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


# --------------------------------------------------------------------------- the report

def render(checks: Sequence[Check], header: str) -> str:
    width = max(len(c.name) for c in checks)
    lines = [header, f"  {'state':5}  {'check':{width}}  detail"]
    lines += [f"  {c.state:5}  {c.name:{width}}  {c.detail}" for c in checks]
    fixes = [f for c in checks if not c.ok for f in c.fixes]
    if fixes:
        lines += ["", "To fix, run as a superuser (or the tables' owner):"]
        for f in fixes:
            note = ("   -- needs a server restart: not applied by --apply" if f.restart
                    else "   -- your decision: not applied by --apply" if f.manual else "")
            lines.append(f"  {f.sql}{note}")
        if any(f.restart for f in fixes):
            lines.append("  Then restart PostgreSQL (e.g. systemctl restart postgresql) and run the check again.")
    return "\n".join(lines)


def failed(checks: Iterable[Check]) -> list[Check]:
    return [c for c in checks if not c.ok]


def fixes_of(checks: Iterable[Check]) -> list[Fix]:
    return [f for c in checks if not c.ok for f in c.fixes]
