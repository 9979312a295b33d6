"""Who is asking: HTTP Basic or an HMAC signature, then the credential's address allowlist.

Falcon middleware; resources marked ``public = True`` (health, readiness, the OpenAPI
document) skip it, every other path (unknown ones too) needs credentials, so an
anonymous client learns nothing about which feeds exist.

Status codes: no, malformed or wrong credentials, an expired or replayed signature
are 401 with ``WWW-Authenticate``; valid credentials from an address outside the
credential's ``allow_from`` are 403 (and so is a feed outside its permissions, which
the resource checks). An unknown user and a wrong password get the same body and cost
the same KDF work, so neither the answer nor its timing tells whether a name exists.
Secrets never reach a log line or an error message: failures are logged with the
reason and the client address only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import falcon

from api.credentials import Credential
from api.passwords import DUMMY, verify_password
from api.replay import ReplayCache, ReplayCacheFullError
from api.signing import SCHEME, SignatureFormatError, parse_authorization, signature
from feedstore.metrics import Metrics

log = logging.getLogger("feedstore.auth")

CHALLENGES = ['Basic realm="feedstore", charset="UTF-8"', f'{SCHEME} realm="feedstore"']
INVALID = "The credentials are not valid. Send HTTP Basic or a FEEDSTORE-HMAC-SHA256 signature (docs/api.md)."
MISSING = "This endpoint needs credentials: HTTP Basic or a FEEDSTORE-HMAC-SHA256 signature (docs/api.md)."
BASIC_CACHE_S = 300.0  # a verified Basic credential skips the KDF for this long


class Authenticator:
    def __init__(self, credentials: Mapping[str, Credential], *, max_skew_s: int = 300,
                 clock: Callable[[], float] = time.time, replay: ReplayCache | None = None,
                 metrics: Metrics | None = None, verify: Callable[[str, str], bool] = verify_password) -> None:
        self.credentials = dict(credentials)
        self.verify = verify
        self.max_skew_s = max_skew_s
        self.clock = clock
        self.replay = replay if replay is not None else ReplayCache()
        self.metrics = metrics
        self._dummy_secret = secrets.token_bytes(32)
        self._cache_key = secrets.token_bytes(32)
        self._verified: dict[bytes, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         params: dict[str, Any]) -> None:
        if getattr(resource, "public", False):
            return
        header = req.get_header("Authorization")
        if not header:
            self._refuse(req, "missing", MISSING)
        scheme, _, rest = header.strip().partition(" ")
        if scheme.lower() == "basic":
            cred = self._basic(req, rest.strip())
        elif scheme.upper() == SCHEME:
            cred = self._signed(req, rest.strip())
        else:
            self._refuse(req, "scheme", f"Unsupported Authorization scheme; use Basic or {SCHEME}.")
        address = req.context.get("client")
        if not cred.allows(address):
            self._count("address")
            log.warning("refused: address not allowed", extra=self._where(req, credential=cred.name))
            raise falcon.HTTPForbidden(title="Forbidden",
                                       description=f"This credential may not be used from {address or 'your address'}.")
        req.context.credential = cred

    def _basic(self, req: falcon.Request, token: str) -> Credential:
        try:
            user, sep, password = base64.b64decode(token, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            user, sep, password = "", "", ""
        if not sep or not user:
            self._refuse(req, "malformed", "Malformed Basic credentials: send base64 of 'user:password'.")
        key = hmac.new(self._cache_key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        now = time.monotonic()
        with self._lock:
            hit = self._verified.get(key)
        if hit is not None and hit[1] > now:
            return self.credentials[hit[0]]
        cred = self.credentials.get(user)
        stored = cred.password_hash if cred is not None else None
        # Same KDF work whether or not the user exists or may use Basic at all.
        ok = self.verify(password, stored or DUMMY) and stored is not None
        if not ok or cred is None:
            self._refuse(req, "invalid", INVALID)
        with self._lock:
            if len(self._verified) >= 1024:
                self._verified = {k: v for k, v in self._verified.items() if v[1] > now}
            if len(self._verified) < 1024:
                self._verified[key] = (cred.name, now + BASIC_CACHE_S)
        return cred

    def _signed(self, req: falcon.Request, value: str) -> Credential:
        try:
            signed = parse_authorization(value)
        except SignatureFormatError as ex:
            self._refuse(req, "malformed", str(ex))
        now = self.clock()
        if abs(now - signed.ts) > self.max_skew_s:  # checked before the key is looked up
            self._refuse(req, "expired", f"The signature's ts is more than {self.max_skew_s} s away from the "
                         "server's clock; sign with the current Unix time.")
        cred = self.credentials.get(signed.key)
        secret = cred.hmac_secret if cred is not None else None
        expected = signature(secret or self._dummy_secret, req.method, req.path, req.query_string or "",
                             signed.ts, signed.nonce)
        if not hmac.compare_digest(expected, signed.sig) or secret is None or cred is None:
            self._refuse(req, "invalid", INVALID)
        try:
            first = self.replay.first_use(signed.sig, signed.ts + self.max_skew_s, now)
        except ReplayCacheFullError:
            self._count("replay_cache_full")
            log.error("refused: replay cache full", extra=self._where(req, credential=cred.name))
            raise falcon.HTTPTooManyRequests(description="Too many signed requests in the last minutes; "
                                             "retry shortly.", retry_after=30) from None
        if not first:
            self._refuse(req, "replayed", "This signature was used before; sign every request with a fresh nonce.")
        return cred

    def _refuse(self, req: falcon.Request, reason: str, description: str) -> NoReturn:
        self._count(reason)
        log.warning("refused: %s", reason, extra=self._where(req))
        raise falcon.HTTPUnauthorized(title="Unauthorized", description=description, challenges=CHALLENGES)

    def _count(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.auth_failures.labels(reason).inc()

    @staticmethod
    def _where(req: falcon.Request, **extra: str) -> dict[str, Any]:
        client = req.context.get("client")
        return {"request_id": req.context.get("request_id"), "client": str(client) if client else None,
                "method": req.method, "path": req.path, **extra}
