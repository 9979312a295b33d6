"""The WSGI application: a pure factory plus an environment-reading entry point.

``create_app(store)`` is what tests use; ``get_app()`` is what gunicorn loads: it reads
the settings, opens the store and starts the materializer in this same process, since
one process owns the DuckDB file (ARCHITECTURE.md decision 5).
"""

from __future__ import annotations

import falcon

from api.resources import Feeds, Health
from materializer.store import Store


def create_app(store: Store, *, barrier_timeout: float = 2.0) -> falcon.App:
    app = falcon.App()
    app.req_options.keep_blank_qs_values = True
    app.req_options.auto_parse_qs_csv = False
    app.add_route("/api/{feed}", Feeds(store, barrier_timeout=barrier_timeout))
    app.add_route("/health", Health())
    return app


def get_app() -> falcon.App:
    from feedstore.service import Service

    service = Service.from_env()
    service.start()
    return create_app(service.store, barrier_timeout=service.settings.barrier_timeout_s)
