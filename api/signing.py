"""HMAC-signed requests: the one definition of what a client signs and how.

A signed request carries::

    Authorization: FEEDSTORE-HMAC-SHA256 key=<credential>, ts=<unix seconds>, nonce=<random>, sig=<hex>

where ``sig`` is HMAC-SHA256 over the shared secret of :func:`string_to_sign`: the
scheme name, the method, the path, the canonical query, the timestamp and the nonce,
one per line. The canonical query is every ``name=value`` pair percent-decoded (``+``
and ``%20`` both mean a space), sorted, and re-encoded with RFC 3986 escapes (space as
``%20``, ``:`` as ``%3A``), so the client may send its query in any spelling. The
timestamp bounds the signature's life (the server allows a few minutes of clock skew)
and the nonce makes every request's signature unique, so the server can refuse a
signature it has seen before without refusing a legitimate retry.

docs/api.md shows the same recipe for clients; tests/test_auth_docs.py runs the
doc's copy against this module.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote_plus

SCHEME = "FEEDSTORE-HMAC-SHA256"
_FIELD = re.compile(r"\s*(key|ts|nonce|sig)=([^,\s]*)\s*")
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_KEY = re.compile(r"[A-Za-z0-9._@-]{1,128}")


class SignatureFormatError(ValueError):
    """The Authorization header is not a well-formed signature; the message shows the form."""


@dataclass(frozen=True)
class Signed:
    key: str
    ts: int
    nonce: str
    sig: str


def canonical_query(query_string: str) -> str:
    pairs = []
    for part in query_string.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((unquote_plus(name), unquote_plus(value)))
    return "&".join(f"{quote(n, safe='-_.~')}={quote(v, safe='-_.~')}" for n, v in sorted(pairs))


def string_to_sign(method: str, path: str, query_string: str, ts: int, nonce: str) -> str:
    return "\n".join([SCHEME, method.upper(), path, canonical_query(query_string), str(ts), nonce])


def signature(secret: bytes, method: str, path: str, query_string: str, ts: int, nonce: str) -> str:
    message = string_to_sign(method, path, query_string, ts, nonce).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def authorization(key: str, secret: bytes, method: str, path: str, query_string: str, ts: int,
                  nonce: str) -> str:
    """The header value a client sends (what docs/api.md's snippet produces)."""
    sig = signature(secret, method, path, query_string, ts, nonce)
    return f"{SCHEME} key={key}, ts={ts}, nonce={nonce}, sig={sig}"


def parse_authorization(value: str) -> Signed:
    """The fields of a ``FEEDSTORE-HMAC-SHA256`` header value (after the scheme name)."""
    fields: dict[str, str] = {}
    for part in value.split(","):
        m = _FIELD.fullmatch(part)
        if m is None or m.group(1) in fields:
            raise SignatureFormatError(_FORM)
        fields[m.group(1)] = m.group(2)
    if set(fields) != {"key", "ts", "nonce", "sig"}:
        raise SignatureFormatError(_FORM)
    if (not _KEY.fullmatch(fields["key"]) or not fields["ts"].isdigit() or len(fields["ts"]) > 12
            or not _NONCE.fullmatch(fields["nonce"]) or not re.fullmatch(r"[0-9a-f]{64}", fields["sig"])):
        raise SignatureFormatError(_FORM)
    return Signed(fields["key"], int(fields["ts"]), fields["nonce"], fields["sig"])


_FORM = (f"Send 'Authorization: {SCHEME} key=<name>, ts=<unix seconds>, nonce=<16-128 of A-Z a-z 0-9 _ ->, "
         "sig=<64 lowercase hex>' (see docs/api.md).")
