"""Is the operator's Postgres ready for Debezium and Feedstore? What SQL makes it so?

Onboarding stalls on the same handful of database settings every time: logical
decoding is off, the connector's role cannot replicate or read a table, the
publication misses a table, a table has no primary key, deletes carry too little of
the old row. ``feedstore source check`` reads all of them in one pass
(``feedstore.sourcedb.gather``), judges them here against the mapping (``plan``: pure,
so every verdict is unit-tested without a server) and prints each fix as SQL;
``--apply`` runs the fixes it can run safely. Settings that need a server restart and
decisions only the operator can make (which columns form a primary key) are printed,
never applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from psycopg import sql

from feedstore.connector import SourceNames, source_tables
from materializer.mapping import Mapping, referenced_columns

SIGNAL_COLUMNS = ("id", "type", "data")
PUBLISH = ("insert", "update", "delete")


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
    active_user: str | None = None  # the role of the backend reading it


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
    schemas: dict[str, bool] = field(default_factory=dict)  # existing schema -> the role has USAGE
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

def ident(name: str) -> sql.Composable:
    return sql.Identifier(*name.split("."))


def _text(stmt: sql.Composable) -> str:
    return stmt.as_string(None) + ";"


def plan(facts: Facts, mapping: Mapping, names: SourceNames | None = None) -> list[Check]:
    """Every check, in the order its fixes must run (role, grants, tables, publication)."""
    names = names or SourceNames()
    checks = [_version(facts), _wal_level(facts), *_capacity(facts, names), *_role(facts)]
    checks += _schemas(facts)
    needs = identity_needs(mapping, {n: t.key for n, t in facts.tables.items()})
    for name in source_tables(mapping):
        checks += _table(facts, facts.tables.get(name, TableFacts(name, exists=False)), needs[name])
    checks += _signal(facts, names)
    checks.append(_publication(facts, mapping, names))
    toast = _toast(facts, mapping)
    return checks + ([toast] if toast else [])


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
    if s.active_pid is not None and s.active_user == f.role:
        return Check(label, True, f"streaming to {f.role} (backend pid {s.active_pid}): the connector is running")
    if s.active_pid is not None:
        return Check(label, False, f"is in use by backend pid {s.active_pid} ({s.active_user}); one slot serves "
                                   "one connector: stop the other reader or choose another name with --slot")
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


def _schemas(f: Facts) -> list[Check]:
    out = []
    for schema, usage in sorted(f.schemas.items()):
        if usage and f.role_exists:
            continue  # the usual case: not worth a line per schema
        out.append(Check(f"schema {schema}: usage", False, f"role {f.role} may not use schema {schema}",
                         (Fix(_text(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                             sql.Identifier(schema), sql.Identifier(f.role)))),)))
    return out


def _table(f: Facts, t: TableFacts, need: IdentityNeed) -> list[Check]:
    label, role, tbl = f"table {t.name}", sql.Identifier(f.role), ident(t.name)
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
    if t.select and f.role_exists:
        out.append(Check(f"{label}: select", True, f"{f.role} may read it (initial snapshot)"))
    else:
        out.append(Check(f"{label}: select", False, f"{f.role} may not read it; the initial snapshot needs SELECT",
                         (Fix(_text(sql.SQL("GRANT SELECT ON {} TO {}").format(tbl, role))),)))
    out.append(_identity(t, need))
    return out


def _identity(t: TableFacts, need: IdentityNeed) -> Check:
    label, tbl = f"table {t.name}: replica identity", ident(t.name)
    names = {"d": "DEFAULT", "f": "FULL", "n": "NOTHING", "i": "USING INDEX"}
    have = names.get(t.identity, t.identity)
    full = Fix(_text(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(tbl)))
    if t.identity == "n":
        fix = full if need.full else Fix(_text(sql.SQL("ALTER TABLE {} REPLICA IDENTITY DEFAULT").format(tbl)))
        return Check(label, False, "NOTHING: Postgres refuses updates and deletes on a published table "
                                   f"without one ({need.reason})", (fix,))
    if need.full and t.identity != "f":
        return Check(label, False, f"{have}, needs FULL: {need.reason}", (full,))
    return Check(label, True, f"{have} ({need.reason})")


def _toast(f: Facts, mapping: Mapping) -> Check | None:
    """One note for the whole source: unchanged large values under REPLICA IDENTITY DEFAULT.

    Postgres stores values over ~2 kB out of line (TOAST) and, without FULL, does not
    repeat an unchanged one in an update's WAL; Debezium then sends its placeholder
    ``__debezium_unavailable_value``. Only unbounded, mapped, non-key columns can hit it.
    """
    hits = []
    for name in source_tables(mapping):
        t = f.tables.get(name)
        if t is None or not t.exists or t.identity == "f":
            continue
        read = frozenset().union(*(fm.columns for fm in mapping.feeds.values() if fm.source.name == name))
        cols = [c for c in t.large if c in read and c not in t.key]
        if cols:
            hits.append(f"{name} ({', '.join(cols)})")
    if not hits:
        return None
    return Check("large values", True, "with REPLICA IDENTITY DEFAULT, an update that leaves a value over ~2 kB "
                                       "unchanged sends Debezium's placeholder __debezium_unavailable_value for "
                                       "it. Unbounded mapped columns: " + "; ".join(hits) + ". If any can hold "
                                       "long values, make that table REPLICA IDENTITY FULL", warn=True)


def _signal(f: Facts, names: SourceNames) -> list[Check]:
    label, s, role = f"signal table {names.signal_table}", f.signal, sql.Identifier(f.role)
    tbl = ident(names.signal_table)
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
    tables = sql.SQL(", ").join(ident(t) for t in want)
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
                pub, sql.SQL(", ").join(ident(t) for t in missing)))))
        if missing:
            problems.append(f"misses {', '.join(missing)}")
        if extra:
            problems.append(f"also has {', '.join(extra)} (Debezium would reset it to the mapped tables, "
                            "which needs table ownership)")
    lacking = [op for op in PUBLISH if op not in p.publish]
    if lacking:
        problems.append(f"does not publish {', '.join(lacking)}")
        fixes.append(Fix(_text(sql.SQL("ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate')")
                               .format(pub))))
    if problems:
        return Check(label, False, "; ".join(problems), tuple(fixes))
    return Check(label, True, "all tables" if p.all_tables else f"publishes {', '.join(want)}")


# --------------------------------------------------------------------------- the report

def render(checks: Sequence[Check], header: str) -> str:
    width = max(len(c.name) for c in checks)
    lines = [header, f"  {'state':5}  {'check':{width}}  detail"]
    lines += [f"  {c.state:5}  {c.name:{width}}  {c.detail}" for c in checks]
    fixes = fixes_of(checks)
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
    """The failing checks' fixes in order, each statement once."""
    return list({f.sql: f for c in checks if not c.ok for f in c.fixes}.values())
