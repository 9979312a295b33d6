"""``/admin/*``: what ``feedstore replay --online`` asks of the running service.

One process owns the DuckDB file (decision 5), so a replay against a running service
cannot write the file from outside: the CLI plans, then asks the service to rewind
its own consumer. The consumer does it between two batches (``Consumer.request_seek``):
the stored offsets (and the resend range) change in one transaction and the position
follows, so no batch straddles the replay.

Authentication is a bearer token of its own (``FEEDSTORE_ADMIN_TOKEN``), separate from
the feed credentials: an InTarget credential must never be able to move offsets. With
no token set the endpoints answer 404, as if they did not exist. The token is compared
in constant time and never logged.

- ``GET /admin/offsets``: stored offsets, high-water marks, the pending resend range.
- ``POST /admin/replay`` ``{"offsets": [[topic, partition, offset], ...], "resend": bool}``:
  rewind; answers the applied plan (from, to, events per partition).
- ``POST /admin/rebuild`` (202) starts ``materializer.rebuild.Rebuild`` in a thread;
  ``GET /admin/rebuild`` follows it (state, events read of the total, rows re-stamped).
"""

from __future__ import annotations

import hmac
import logging
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

import falcon

from cdc.consumer import Offsets
from materializer.replay import read_resend, rewind

if TYPE_CHECKING:
    from materializer.rebuild import Rebuild

log = logging.getLogger("feedstore.admin")

SEEK_TIMEOUT_S = 30.0


def _pairs(offsets: dict[tuple[str, int], int | None]) -> list[list[Any]]:
    return [[t, p, o] for (t, p), o in sorted(offsets.items())]


class Admin:
    public = True  # not the feed credentials: the admin token is checked here

    def __init__(self, service: Any, token: str) -> None:
        self.service = service
        self._token = token.encode()
        self.rebuild: Rebuild | None = None
        self._lock = threading.Lock()

    def _check(self, req: falcon.Request) -> None:
        if not self._token:
            raise falcon.HTTPNotFound()
        scheme, _, given = (req.get_header("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token):
            log.warning("admin refused", extra={"client": str(req.context.get("client")), "path": req.path})
            raise falcon.HTTPUnauthorized(title="Unauthorized", challenges=['Bearer realm="feedstore-admin"'],
                                          description="Send Authorization: Bearer <FEEDSTORE_ADMIN_TOKEN>.")

    def on_get_offsets(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._check(req)
        consumer = self.service.consumer
        stored = dict(consumer.stored) if consumer is not None else self.service.store.offsets()
        resp.media = {"stored": _pairs(stored), "highwater": _pairs(dict(consumer.highwater) if consumer else {}),
                      "resend": _pairs(dict(read_resend(self.service.store))),
                      "consumer": consumer.status() if consumer is not None else None}

    def on_post_replay(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._check(req)
        body = req.get_media(default_when_empty=None)
        try:
            moves: Offsets = {(str(t), int(p)): int(o) for t, p, o in body["offsets"]}
            resend = bool(body.get("resend", False))
        except (TypeError, KeyError, ValueError) as ex:
            raise falcon.HTTPBadRequest(description='expected {"offsets": [[topic, partition, offset], ...], '
                                                    '"resend": false}') from ex
        topics = set(self.service.store.mapping.topics)
        unknown = sorted({t for t, _ in moves} - topics)
        if unknown or any(o < 0 for o in moves.values()):
            raise falcon.HTTPBadRequest(description=f"not mapped topics {unknown}, or a negative offset")
        consumer = self.service.consumer
        if consumer is None:
            raise falcon.HTTPServiceUnavailable(description="the consumer is not running")
        applied: list[dict[str, Any]] = []

        def before() -> None:  # in the consumer's thread, between two batches
            was = consumer.stored
            ahead = [f"{t}[{p}]" for (t, p), o in moves.items() if o > was.get((t, p), 0)]
            if ahead:
                raise ValueError(f"target ahead of the stored offset in {', '.join(ahead)}: a replay only moves back")
            rewind(self.service.store, moves, {tp: was[tp] for tp in moves}, resend=resend)
            if resend and self.service.materializer is not None:
                self.service.materializer.reload_resend()
            applied.extend({"topic": t, "partition": p, "from": was[(t, p)], "to": o, "events": was[(t, p)] - o}
                           for (t, p), o in sorted(moves.items()))

        try:
            consumer.request_seek(moves, before).result(SEEK_TIMEOUT_S)
        except FutureTimeout as ex:
            raise falcon.HTTPServiceUnavailable(
                description=f"the consumer did not reach a batch boundary in {SEEK_TIMEOUT_S:.0f} s "
                            f"({consumer.last_error or 'busy'}); the replay is still queued and applies when it "
                            "does: check GET /admin/offsets") from ex
        except ValueError as ex:
            raise falcon.HTTPConflict(description=str(ex)) from ex
        log.info("replay applied", extra={"events": sum(a["events"] for a in applied), "resend": resend,
                                          "partitions": len(applied)})
        resp.media = {"applied": applied, "resend": resend, "events": sum(a["events"] for a in applied)}


    def on_get_rebuild(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._check(req)
        if self.rebuild is None:
            raise falcon.HTTPNotFound(description="no rebuild has run in this process; POST /admin/rebuild starts one")
        resp.media = self.rebuild.status()

    def on_post_rebuild(self, req: falcon.Request, resp: falcon.Response) -> None:
        from cdc.consumer import kafka_consumer
        from materializer.rebuild import Rebuild

        self._check(req)
        svc = self.service
        if svc.consumer is None or svc.materializer is None:
            raise falcon.HTTPServiceUnavailable(description="the consumer is not running")
        with self._lock:
            if self.rebuild is not None and self.rebuild.state in ("building", "swapping"):
                raise falcon.HTTPConflict(description="a rebuild is already running: GET /admin/rebuild")
            settings = svc.settings
            self.rebuild = Rebuild(svc.store, svc.consumer, svc.materializer,
                                   lambda: kafka_consumer(settings.kafka_bootstrap, f"{settings.group_id}-rebuild"),
                                   max_event_bytes=settings.max_event_bytes)
            self.rebuild.thread.start()
        log.info("rebuild started", extra={"file": str(self.rebuild.path)})
        resp.status = falcon.HTTP_202
        resp.media = self.rebuild.status()


def add_admin(app: falcon.App, service: Any, token: str) -> None:
    admin = Admin(service, token)
    app.add_route("/admin/offsets", admin, suffix="offsets")
    app.add_route("/admin/replay", admin, suffix="replay")
    app.add_route("/admin/rebuild", admin, suffix="rebuild")
