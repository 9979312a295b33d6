"""One resource per route, as in Falcon's own examples."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import falcon

from api.params import accepts_gzip, parse_pull
from feedstore.metrics import Lag, Metrics
from materializer.casino import ensure_schema
from materializer.export import Gate, csv_chunks, gzipped, json_chunks
from materializer.store import Store


class Feeds:
    """``GET /api/{feed}``: every row whose stamp is in ``[from, to)``."""

    def __init__(self, store: Store, *, barrier_timeout: float, gate: Gate | None = None) -> None:
        self.store = store
        self.barrier_timeout = barrier_timeout
        self.gate = gate
        ensure_schema(store)  # casino_activity reads the actions table even before any action arrived

    def on_get(self, req: falcon.Request, resp: falcon.Response, feed: str) -> None:
        cred = req.context.get("credential")
        readable = sorted(f for f in self.store.mapping.feeds if cred is None or cred.may_read(f))
        mapped = self.store.mapping.feeds.get(feed)
        if mapped is None:
            raise falcon.HTTPNotFound(
                title="Unknown feed",
                description=f"There is no feed {feed!r} here; the feeds are {', '.join(readable)}.")
        if cred is not None and not cred.may_read(feed):
            raise falcon.HTTPForbidden(
                title="Forbidden",
                description=f"This credential may not read the {feed} feed; it may read: "
                            f"{', '.join(readable) or 'none'}.")
        pull = parse_pull(req)
        req.context.feed, req.context.format = feed, pull.format
        # Decision 2: a closed window must not miss a batch that holds an earlier stamp
        # but has not committed yet, nor get one later if the clock steps back
        # (Store.close_window fences it). A window reaching into the future gets what is there.
        if not self.store.close_window(pull.end, self.barrier_timeout):
            raise falcon.HTTPServiceUnavailable(
                description="A batch with changes inside this window is still being written; retry shortly.",
                retry_after=1)
        if pull.format == "json":
            resp.content_type = falcon.MEDIA_JSON
            stream = json_chunks(self.store, mapped.feed, pull.start, pull.end, gate=self.gate)
        else:
            resp.content_type = "text/csv; charset=utf-8"
            stream = csv_chunks(self.store, mapped.feed, pull.start, pull.end, gate=self.gate)
        resp.set_header("Cache-Control", "no-store")  # personal data: no shared caches
        resp.append_header("Vary", "Accept, Accept-Encoding")
        if accepts_gzip(req):
            resp.set_header("Content-Encoding", "gzip")
            stream = gzipped(stream)
        resp.stream = stream


class Ready:
    """``GET /ready``: 200 while batches are being stored and the consumer keeps up, 503
    with the reason when not (a full disk, a broker that does not answer, an invalidated
    store, no partition assigned, lag above the threshold)."""

    public = True

    def __init__(self, status: Callable[[], dict[str, Any]], lag: Callable[[], Lag] | None = None,
                 max_lag: int = 10_000) -> None:
        self.status = status
        self.lag = lag
        self.max_lag = max_lag

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        status = self.status()
        if self.lag is not None:
            status["lag"] = lag = lag_check(self.lag(), self.max_lag)
            status["ready"] = bool(status.get("ready")) and lag["ok"]
        resp.media = status
        resp.status = falcon.HTTP_200 if status.get("ready") else falcon.HTTP_503
        if not status.get("ready"):
            resp.set_header("Retry-After", "5")


def lag_check(lag: Lag, max_lag: int) -> dict[str, Any]:
    """Partitions assigned, every high-water mark known, total lag within ``max_lag``."""
    known = {f"{t}[{p}]": n for (t, p), n in sorted(lag.items()) if n is not None}
    unknown = sorted(f"{t}[{p}]" for (t, p), n in lag.items() if n is None)
    total = sum(known.values())
    if not lag:
        error: str | None = "no partition assigned yet (do the mapped topics exist?)"
    elif unknown:
        error = f"high-water mark not known yet for {', '.join(unknown)}"
    elif total > max_lag:
        error = f"{total} events behind (threshold {max_lag})"
    else:
        error = None
    return {"ok": error is None, "error": error, "total": total, "max": max_lag, "partitions": known}


class Health:
    """``GET /health``: the process is up and answering."""

    public = True

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class MetricsPage:
    """``GET /metrics``: Prometheus text format; needs a credential with ``metrics: true``."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        cred = req.context.get("credential")
        if cred is not None and not cred.metrics:
            raise falcon.HTTPForbidden(title="Forbidden", description="This credential may not read /metrics.")
        resp.content_type = self.metrics.content_type
        resp.data = self.metrics.render()


class OpenApi:
    """``GET /openapi.json``: the contract, generated from the feeds this instance serves."""

    public = True

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.document
