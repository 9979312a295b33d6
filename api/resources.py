"""One resource per route, as in Falcon's own examples."""

from __future__ import annotations

import falcon

from api.params import parse_pull
from materializer.export import csv_chunks, json_chunks
from materializer.store import Store


class Feeds:
    """``GET /api/{feed}``: every row whose stamp is in ``[from, to)``."""

    def __init__(self, store: Store, *, barrier_timeout: float) -> None:
        self.store = store
        self.barrier_timeout = barrier_timeout

    def on_get(self, req: falcon.Request, resp: falcon.Response, feed: str) -> None:
        mapped = self.store.mapping.feeds.get(feed)
        if mapped is None:
            raise falcon.HTTPNotFound(
                title="Unknown feed",
                description=f"There is no feed {feed!r} here; the feeds are "
                            f"{', '.join(sorted(self.store.mapping.feeds))}.")
        pull = parse_pull(req)
        stamper = self.store.stamper
        # Decision 2: a closed window must not miss a batch that holds an earlier stamp
        # but has not committed yet. A window reaching into the future gets what is there.
        if pull.end <= stamper.floor() and not stamper.wait_closed(pull.end, self.barrier_timeout):
            raise falcon.HTTPServiceUnavailable(
                description="A batch with changes inside this window is still being written; retry shortly.",
                retry_after=1)
        if pull.format == "json":
            resp.content_type = falcon.MEDIA_JSON
            resp.stream = json_chunks(self.store, mapped.feed, pull.start, pull.end)
        else:
            resp.content_type = "text/csv; charset=utf-8"
            resp.stream = csv_chunks(self.store, mapped.feed, pull.start, pull.end)


class Health:
    """``GET /health``: the process is up and answering."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}
