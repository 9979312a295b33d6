"""Request ids, one structured log line per request, and request metrics.

The request id comes from the client's (or the proxy's) ``X-Request-Id`` when it is a
sane token, else a fresh one; it is echoed in the response and carried by every log
line about the request, so an InTarget engineer can quote it and ops can find the pull.
A feed pull is streamed after the resource returns, so its log line and latency are
recorded when the last byte has gone (or the client left), not when the headers did.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import falcon

from api.clientip import client_address
from api.credentials import IPNetwork
from feedstore.metrics import Metrics

log = logging.getLogger("feedstore.api")

REQUEST_ID = "X-Request-Id"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class Observe:
    def __init__(self, metrics: Metrics | None = None, trusted_proxies: Sequence[IPNetwork] = ()) -> None:
        self.metrics = metrics
        self.trusted_proxies = tuple(trusted_proxies)

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        given = req.get_header(REQUEST_ID)
        req.context.request_id = given if given and _SANE_ID.fullmatch(given) else uuid.uuid4().hex
        req.context.started = time.perf_counter()
        req.context.client = client_address(req.remote_addr, req.get_header("X-Forwarded-For"),
                                            self.trusted_proxies)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        resp.set_header(REQUEST_ID, req.context.request_id)
        stream = resp.stream
        if stream is not None and not hasattr(stream, "read") and req.context.get("feed") is not None:
            resp.stream = _finally(stream, lambda sent, outcome: self._done(req, resp, sent, outcome))
        else:
            self._done(req, resp, None, "complete")

    def _done(self, req: falcon.Request, resp: falcon.Response, sent: int | None, outcome: str) -> None:
        seconds = time.perf_counter() - req.context.started
        status = resp.status_code
        route = req.uri_template or "unrouted"
        feed, fmt = req.context.get("feed"), req.context.get("format")
        cred = req.context.get("credential")
        if self.metrics is not None:
            self.metrics.requests.labels(route, str(status)).inc()
            if feed is not None and status == 200:
                self.metrics.pull_seconds.labels(feed, fmt).observe(seconds)
                self.metrics.pull_bytes.labels(feed, fmt).inc(sent or 0)
        fields: dict[str, Any] = {
            "request_id": req.context.request_id, "method": req.method, "path": req.path,
            "query": req.query_string, "status": status, "ms": round(seconds * 1000, 1),
            "client": str(req.context.client) if req.context.client else None,
            "credential": cred.name if cred is not None else None, "feed": feed, "format": fmt,
            "bytes": sent, "outcome": outcome,
        }
        level = logging.WARNING if outcome == "error" or status >= 500 else logging.INFO
        log.log(level, "request", extra={k: v for k, v in fields.items() if v is not None})


def _finally(chunks: Iterable[bytes], done: Callable[[int, str], None]) -> Iterator[bytes]:
    """``chunks`` passed through, counting bytes; ``done`` once, however the stream ends."""
    sent, outcome = 0, "complete"
    source = iter(chunks)
    try:
        for chunk in source:
            sent += len(chunk)
            yield chunk
    except GeneratorExit:
        outcome = "client_closed"
        raise
    except Exception:
        outcome = "error"  # the status line has gone; the client sees a truncated body
        raise
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
        done(sent, outcome)
