"""``feedstore stack``: only Postgres, Debezium and the broker, for development."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stack", help="start only Postgres, Debezium and the broker; print how to reach them")
    p.add_argument("--no-debezium", dest="debezium", action="store_false",
                   help="start Postgres (legacy schema, no CDC set up) and the broker only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from deploy.localstack.demo import run_stack

    return run_stack(debezium=args.debezium)
