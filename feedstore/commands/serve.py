"""``feedstore serve``: the API and the materializer in one gunicorn worker."""

from __future__ import annotations

import argparse

from feedstore.config import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the API and run the materializer (one process owns the DuckDB file)")
    p.add_argument("--bind", help="host:port to listen on (default FEEDSTORE_BIND or 127.0.0.1:8000)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
