"""``feedstore source check``: is the operator's Postgres ready for Debezium? If not, the SQL.

``--apply`` runs the fixes after asking (``--yes`` for scripts). Fixes that need a
server restart (``wal_level``) or a decision (a primary key) are printed, not applied.
Exit status: 0 ready, 2 something to fix or the database cannot be reached.
"""

from __future__ import annotations

import argparse

from feedstore.commands.connector_config import add_source_names, mapping_path, source_names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("source", help="check (and fix) the operator's Postgres for Debezium",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", required=True)
    c = actions.add_parser("check", help="wal_level, role, privileges, publication, keys, replica identity",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--dsn", default="", help="postgresql://USER@HOST:PORT/DBNAME to check with (default: libpq's "
                                             "PGHOST, PGUSER, ... variables); a superuser can apply every fix")
    c.add_argument("--role", help="the role the connector will log in as (default: the --dsn user)")
    add_source_names(c)
    c.add_argument("--apply", action="store_true", help="run the fixes (asks first)")
    c.add_argument("--yes", action="store_true", help="with --apply: do not ask")
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from feedstore import sourcecheck as sc
    from feedstore import sourcedb as db
    from materializer.mapping import load_mapping

    mapping = load_mapping(mapping_path(args))
    names = source_names(args)
    with db.connect(args.dsn) as conn:
        facts = db.gather(conn, mapping, names, args.role)
        header = (f"feedstore source check: {db.describe(args.dsn)}, connector role {facts.role}, "
                  f"mapping {mapping.path}")
        checks = sc.plan(facts, mapping, names)
        print(sc.render(checks, header))
        todo = [f for f in sc.fixes_of(checks) if f.applicable]
        if not sc.failed(checks):
            print("\nReady: the connector can stream every mapped table.")
            return 0
        if not args.apply:
            if todo:
                print(f"\nRun again with --apply to run the {len(todo)} statement(s) that can be applied.")
            return 2
        if not todo:
            print("\nNothing --apply can do: the remaining fixes need a restart or your decision.")
            return 2
        if not args.yes and not _confirm(f"\nApply {len(todo)} statement(s) to {facts.database} as {facts.user}?"):
            print("Nothing applied.")
            return 2
        done = db.apply(conn, todo)
        print(f"Applied {len(done)} statement(s). Checking again:\n")
        checks = sc.plan(db.gather(conn, mapping, names, args.role), mapping, names)
        print(sc.render(checks, header))
        if sc.failed(checks):
            return 2
        print("\nReady: the connector can stream every mapped table.")
        return 0


def _confirm(question: str) -> bool:
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False
