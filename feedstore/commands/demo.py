"""``feedstore demo``: the whole pipeline on the local stack with a live workload."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="local stack + legacy workload + API at http://127.0.0.1:8000")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--rate", type=float, default=20.0, help="source changes per second")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from deploy.localstack.demo import run_demo

    return run_demo(port=args.port, rate=args.rate)
