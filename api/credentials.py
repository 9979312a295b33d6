"""The credentials file: who may pull, how they prove it, from where, and which feeds.

YAML, its path in ``FEEDSTORE_CREDENTIALS``::

    credentials:
      intarget:                                   # Basic user name and HMAC key id
        password_hash: scrypt$16384$8$1$...        # Basic; or password_hash_env / password_hash_file
        hmac_secret_env: FEEDSTORE_HMAC_INTARGET   # HMAC; or hmac_secret_file: /run/secrets/...
        allow_from: [203.0.113.0/24, 2001:db8::/48]   # optional; default: any address
        feeds: [players, contacts]                # or "*" (all mapped feeds), or [] (none)
        metrics: false                            # may read /metrics (default false)

Only hashes may be written inline; an HMAC secret (which the server must know in
clear) comes from an environment variable or a file, never from this file, so the
file can be reviewed and versioned. Every mistake is reported with the file and the
credential named, at start-up, not at the first request.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from api.passwords import PasswordHashError, check_hash
from feedstore.config import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_KEYS = {"password_hash", "password_hash_env", "password_hash_file", "hmac_secret_env", "hmac_secret_file",
         "allow_from", "feeds", "metrics"}
MIN_SECRET_BYTES = 32


class CredentialsError(ConfigError):
    """The credentials file cannot be used; the message names the file and the credential."""


@dataclass(frozen=True)
class Credential:
    name: str
    password_hash: str | None
    hmac_secret: bytes | None
    allow_from: tuple[IPNetwork, ...]  # empty: any address
    feeds: frozenset[str] | None  # None: every feed
    metrics: bool = False

    def __repr__(self) -> str:  # never print a secret, even in a debugger or a traceback
        return f"Credential({self.name!r}, basic={self.password_hash is not None}, hmac={self.hmac_secret is not None})"

    def may_read(self, feed: str) -> bool:
        return self.feeds is None or feed in self.feeds

    def allows(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        if not self.allow_from:
            return True
        return address is not None and any(address in net for net in self.allow_from)


def load_credentials(path: Path, env: Mapping[str, str]) -> dict[str, Credential]:
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as ex:
        raise CredentialsError(f"{path}: cannot read the credentials file ({ex.strerror}); "
                               "check FEEDSTORE_CREDENTIALS") from ex
    except yaml.YAMLError as ex:
        raise CredentialsError(f"{path}: not valid YAML: {ex}") from ex
    return parse_credentials(doc, str(path), env)


def parse_credentials(doc: Any, where: str, env: Mapping[str, str]) -> dict[str, Credential]:
    if not isinstance(doc, dict) or not isinstance(doc.get("credentials"), dict) or not doc["credentials"]:
        raise CredentialsError(f"{where}: expected 'credentials:' mapping names to their settings")
    out = {}
    for name, spec in doc["credentials"].items():
        ctx = f"{where}: credential {name!r}"
        if not isinstance(name, str) or not name or any(ch in name for ch in ":, \t"):
            raise CredentialsError(f"{ctx}: a name must be non-empty without ':', ',' or blanks")
        if not isinstance(spec, dict):
            raise CredentialsError(f"{ctx}: expected a mapping (password_hash, hmac_secret_env, feeds, ...)")
        if "hmac_secret" in spec:
            raise CredentialsError(f"{ctx}: do not write an HMAC secret into this file; use hmac_secret_env or "
                                   "hmac_secret_file")
        unknown = set(spec) - _KEYS
        if unknown:
            raise CredentialsError(f"{ctx}: unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS)}")
        out[name] = _credential(name, spec, ctx, env)
    return out


def _credential(name: str, spec: dict[str, Any], ctx: str, env: Mapping[str, str]) -> Credential:
    pw = _one_of(spec, "password_hash", ctx, env, inline=True)
    if pw is not None:
        try:
            check_hash(pw)
        except PasswordHashError as ex:
            raise CredentialsError(f"{ctx}: password_hash: {ex}") from None
    secret_text = _one_of(spec, "hmac_secret", ctx, env, inline=False)
    secret = secret_text.encode() if secret_text is not None else None
    if secret is not None and len(secret) < MIN_SECRET_BYTES:
        raise CredentialsError(f"{ctx}: the HMAC secret has {len(secret)} bytes; use at least "
                               f"{MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)")
    if pw is None and secret is None:
        raise CredentialsError(f"{ctx}: give password_hash (Basic) and/or hmac_secret_env/_file (HMAC)")
    feeds = spec.get("feeds")
    if feeds == "*":
        allowed = None
    elif isinstance(feeds, list) and all(isinstance(f, str) for f in feeds):
        allowed = frozenset(feeds)  # may be empty: a credential for /metrics only
    else:
        raise CredentialsError(f"{ctx}: 'feeds' must be \"*\" or a list of feed names ([] for none)")
    metrics = spec.get("metrics", False)
    if not isinstance(metrics, bool):
        raise CredentialsError(f"{ctx}: 'metrics' must be true or false")
    return Credential(name, pw, secret, _networks(spec.get("allow_from", []), ctx), allowed, metrics)


def _one_of(spec: dict[str, Any], base: str, ctx: str, env: Mapping[str, str], *, inline: bool) -> str | None:
    """The value of ``base`` given inline, as ``base_env`` or as ``base_file`` (at most one)."""
    given = [k for k in ((base,) if inline else ()) + (f"{base}_env", f"{base}_file") if k in spec]
    if len(given) > 1:
        raise CredentialsError(f"{ctx}: give only one of {', '.join(given)}")
    if not given:
        return None
    key = given[0]
    ref = spec[key]
    if not isinstance(ref, str) or not ref:
        raise CredentialsError(f"{ctx}: '{key}' must be a non-empty string")
    if key.endswith("_env"):
        if ref not in env or not env[ref].strip():
            raise CredentialsError(f"{ctx}: {key}: the environment variable {ref} is not set")
        return env[ref].strip()
    if key.endswith("_file"):
        try:
            text = Path(ref).read_text().strip()
        except OSError as ex:
            raise CredentialsError(f"{ctx}: {key}: cannot read {ref} ({ex.strerror})") from ex
        if not text:
            raise CredentialsError(f"{ctx}: {key}: {ref} is empty")
        return text
    return ref


def _networks(raw: Any, ctx: str) -> tuple[IPNetwork, ...]:
    if not isinstance(raw, list):
        raise CredentialsError(f"{ctx}: 'allow_from' must be a list of addresses or CIDR networks")
    return tuple(parse_network(str(item), f"{ctx}: allow_from") for item in raw)


def parse_network(text: str, ctx: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as ex:
        raise CredentialsError(f"{ctx}: {text!r} is not an address or CIDR network ({ex})") from None


def check_feeds(credentials: Mapping[str, Credential], feeds: Iterable[str], where: str) -> None:
    """Every feed a credential names must be one this instance serves (catches typos)."""
    known = set(feeds)
    for cred in credentials.values():
        missing = sorted((cred.feeds or frozenset()) - known)
        if missing:
            raise CredentialsError(f"{where}: credential {cred.name!r}: feeds {missing} are not served here; "
                                   f"the feeds are {', '.join(sorted(known))}")
