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
            for name, value in gunicorn_options(settings).items():
                self.cfg.set(name, value)

        def load(self) -> object:
            from api.app import get_app

            return get_app()

    Gunicorn().run()
    return 0


def gunicorn_options(settings: Settings) -> dict[str, object]:
    """Gunicorn's settings for ``serve``; deploy/gunicorn.conf.py reuses them, so running
    gunicorn directly gives the same server."""
    # One worker: it owns the DuckDB file (decision 5); threads serve the pulls.
    options: dict[str, object] = {
        "bind": settings.bind, "workers": 1, "worker_class": "gthread", "threads": settings.threads,
        "timeout": 300, "graceful_timeout": 20, "proc_name": "feedstore",
    }
    if settings.tls_cert:
        options |= {"certfile": settings.tls_cert, "keyfile": settings.tls_key}
    if settings.access_log:
        options |= {"accesslog": settings.access_log, "logger_class": "api.accesslog.JsonAccessLogger"}
    return options


def _preflight(settings: Settings) -> None:
    """Refuse to start, with one clear line, what the worker would refuse with a traceback:
    an unsafe exposure without credentials, a bad credentials file, an unusable TLS pair."""
    import ssl

    from api.security import authenticator
    from feedstore.config import ConfigError, environment
    from materializer.mapping import load_mapping

    if not 0 < settings.pull_share <= 1 or settings.pull_concurrency < 0:
        raise ConfigError("FEEDSTORE_PULL_SHARE must be in (0, 1] and FEEDSTORE_PULL_CONCURRENCY >= 0")
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("set both FEEDSTORE_TLS_CERT and FEEDSTORE_TLS_KEY (PEM files), or neither")
    if settings.tls_cert:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(settings.tls_cert, settings.tls_key)
        except (OSError, ssl.SSLError) as ex:
            raise ConfigError(f"FEEDSTORE_TLS_CERT/FEEDSTORE_TLS_KEY cannot be used: {ex}") from ex
    authenticator(settings, load_mapping(settings.mapping_path).feeds, environment())
