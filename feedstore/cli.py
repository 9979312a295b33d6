"""``feedstore``: the one command operators and developers type.

Subcommands: ``serve`` (API + materializer under gunicorn), ``demo`` (the whole local
stack with a live workload), ``stack`` (just the local stack, for development).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from feedstore.config import ConfigError, Settings
from materializer import MaterializerError


def _serve(args: argparse.Namespace) -> int:
    from gunicorn.app.base import BaseApplication

    settings = Settings.from_env(bind=args.bind)

    class Gunicorn(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            # One worker: it owns the DuckDB file (decision 5); threads serve the pulls.
            self.cfg.set("bind", settings.bind)
            self.cfg.set("workers", 1)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", settings.threads)
            self.cfg.set("timeout", 300)
            self.cfg.set("graceful_timeout", 20)
            self.cfg.set("proc_name", "feedstore")

        def load(self) -> object:
            from api.app import get_app

            return get_app()

    Gunicorn().run()
    return 0


def _demo(args: argparse.Namespace) -> int:
    from deploy.localstack.demo import run_demo

    return run_demo(port=args.port, rate=args.rate)


def _stack(args: argparse.Namespace) -> int:
    from deploy.localstack.demo import run_stack

    return run_stack()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="feedstore", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="serve the API and run the materializer (one process owns the DuckDB file)")
    p.add_argument("--bind", help="host:port to listen on (default FEEDSTORE_BIND or 127.0.0.1:8000)")
    p.set_defaults(func=_serve)
    p = sub.add_parser("demo", help="local stack + legacy workload + API at http://127.0.0.1:8000")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--rate", type=float, default=20.0, help="source changes per second")
    p.set_defaults(func=_demo)
    p = sub.add_parser("stack", help="start only Postgres, Debezium and the broker; print how to reach them")
    p.set_defaults(func=_stack)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, MaterializerError) as ex:
        print(f"feedstore: {ex}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
