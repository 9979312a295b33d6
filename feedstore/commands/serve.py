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
    _preflight(settings)

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
            if settings.tls_cert:
                self.cfg.set("certfile", settings.tls_cert)
                self.cfg.set("keyfile", settings.tls_key)
            if settings.access_log:
                self.cfg.set("accesslog", settings.access_log)
                self.cfg.set("logger_class", "api.accesslog.JsonAccessLogger")

        def load(self) -> object:
            from api.app import get_app

            return get_app()

    Gunicorn().run()
    return 0


def _preflight(settings: Settings) -> None:
    """Refuse to start, with one clear line, what the worker would refuse with a traceback:
    an unsafe exposure without credentials, a bad credentials file, an unusable TLS pair."""
    import ssl

    from api.security import authenticator
    from feedstore.config import ConfigError, environment
    from materializer.mapping import load_mapping

    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("set both FEEDSTORE_TLS_CERT and FEEDSTORE_TLS_KEY (PEM files), or neither")
    if settings.tls_cert:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(settings.tls_cert, settings.tls_key)
        except (OSError, ssl.SSLError) as ex:
            raise ConfigError(f"FEEDSTORE_TLS_CERT/FEEDSTORE_TLS_KEY cannot be used: {ex}") from ex
    authenticator(settings, load_mapping(settings.mapping_path).feeds, environment())
