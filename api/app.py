"""The WSGI application: a pure factory plus an environment-reading entry point.

``create_app(store, ...)`` is what tests use: everything it needs is passed in (the
authenticator, the metrics registry, the readiness callables). ``get_app()`` is what
gunicorn loads: it reads the settings, opens the store and starts the materializer in
this same process, since one process owns the DuckDB file (ARCHITECTURE.md decision 5).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import falcon

from api.auth import Authenticator
from api.credentials import IPNetwork
from api.gate import PullGate
from api.observe import Observe
from api.resources import Feeds, Health, MetricsPage, OpenApi, Ready
from feedstore.metrics import Lag, Metrics, Sources, store_sources
from materializer import StoreError
from materializer.store import Store
from schemas.openapi import openapi_document


def create_app(store: Store, *, barrier_timeout: float = 2.0,
               status: Callable[[], dict[str, Any]] | None = None,
               auth: Authenticator | None = None, metrics: Metrics | None = None,
               trusted_proxies: Sequence[IPNetwork] = (), lag: Callable[[], Lag] | None = None,
               max_lag: int = 10_000, pull_concurrency: int = 0, pull_share: float = 1.0) -> falcon.App:
    """The app over ``store``. ``pull_concurrency`` > 0 puts pulls behind a
    :class:`PullGate` (that many at once; ``pull_share`` of the time while ``lag`` shows
    a backlog), so pulls cannot starve the materializer; 0 leaves them unbounded."""
    metrics = metrics if metrics is not None else Metrics()
    metrics.watch(store_sources(store))
    middleware: list[Any] = [Observe(metrics, trusted_proxies)]
    if auth is not None:
        middleware.append(auth)
    app = falcon.App(middleware=middleware)
    app.req_options.keep_blank_qs_values = True
    app.req_options.auto_parse_qs_csv = False
    gate = PullGate(pull_concurrency, pull_share, busy=_backlog(lag)) if pull_concurrency > 0 else None
    app.add_route("/api/{feed}", Feeds(store, barrier_timeout=barrier_timeout, gate=gate))
    app.add_route("/health", Health())
    app.add_route("/ready", Ready(status or _store_status(store), lag, max_lag))
    app.add_route("/metrics", MetricsPage(metrics))
    feeds = {name: fm.feed for name, fm in store.mapping.feeds.items()}
    app.add_route("/openapi.json", OpenApi(openapi_document(feeds)))
    app.add_error_handler(StoreError, _store_unavailable)
    return app


#: Events waiting in Kafka above which ingest counts as saturated and pulls yield to it;
#: below it (the trickle of a live source between two polls) pulls run at full speed.
BACKLOG_EVENTS = 1_000


def _backlog(lag: Callable[[], Lag] | None) -> Callable[[], bool]:
    if lag is None:
        return lambda: False
    return lambda: sum(n or 0 for n in lag().values()) > BACKLOG_EVENTS


def _store_status(store: Store) -> Callable[[], dict[str, Any]]:
    def status() -> dict[str, Any]:
        error = store.healthy()
        return {"ready": error is None, "store": {"ok": error is None, "error": error}}

    return status


def _store_unavailable(req: falcon.Request, resp: falcon.Response, ex: StoreError, params: dict[str, Any]) -> None:
    """The store is being reopened or cannot be read: a retryable 503, not a 500."""
    raise falcon.HTTPServiceUnavailable(description=str(ex), retry_after=2) from ex


def get_app() -> falcon.App:
    from api.security import authenticator, trusted_proxies
    from feedstore.config import environment
    from feedstore.service import Service

    service = Service.from_env()
    settings = service.settings
    metrics = Metrics()
    auth = authenticator(settings, service.store.mapping.feeds, environment(), metrics)
    service.metrics = metrics
    service.start()

    def lag() -> Lag:
        return service.consumer.lag() if service.consumer is not None else {}

    metrics.watch(Sources(lag=lag))
    app = create_app(service.store, barrier_timeout=settings.barrier_timeout_s, status=service.status,
                     auth=auth, metrics=metrics, trusted_proxies=trusted_proxies(settings), lag=lag,
                     max_lag=settings.ready_max_lag, pull_concurrency=settings.pull_concurrency,
                     pull_share=settings.pull_share)
    from api.admin import add_admin  # `feedstore replay --online` (docs/operations.md)

    add_admin(app, service, settings.admin_token)
    return app
