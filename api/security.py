"""From settings to an :class:`Authenticator`, and the rule for running without one.

Without a credentials file the API is open, which is right for ``make demo`` and wrong
anywhere else, so it is allowed only when nobody but this machine can connect: the
bind address is loopback and no reverse proxy is configured in front (a proxy would
make a loopback bind public). Anything else refuses to start and says what to set.
Plain-HTTP Basic off loopback is allowed (TLS may end at the proxy) but logged as a
warning.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from api.auth import Authenticator
from api.credentials import IPNetwork, check_feeds, load_credentials, parse_network
from feedstore.config import ConfigError, Settings
from feedstore.metrics import Metrics

log = logging.getLogger("feedstore.api")


def trusted_proxies(settings: Settings) -> tuple[IPNetwork, ...]:
    var = Settings.env_var("trusted_proxies")
    return tuple(parse_network(item, var) for item in settings.trusted_proxies.split(",") if item.strip())


def loopback_bind(bind: str) -> bool:
    """True for ``127.x.x.x:port``, ``[::1]:port`` and ``localhost:port``; False for the rest
    (``0.0.0.0``, a public address, a unix socket a proxy may serve)."""
    if bind.startswith("unix:"):
        return False
    host = bind.rsplit(":", 1)[0] if bind.count(":") == 1 or bind.startswith("[") else bind
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def authenticator(settings: Settings, feeds: Iterable[str], env: Mapping[str, str],
                  metrics: Metrics | None = None) -> Authenticator | None:
    """The configured authenticator; None for the open loopback API. Raises ConfigError
    (or CredentialsError) with the fix when the settings cannot be served safely."""
    proxies = trusted_proxies(settings)
    if not settings.credentials_path:
        if loopback_bind(settings.bind) and not proxies:
            log.warning("no credentials configured: the API is open, served on loopback only",
                        extra={"bind": settings.bind})
            return None
        raise ConfigError(
            f"{Settings.env_var('bind')}={settings.bind}"
            + (f" behind {Settings.env_var('trusted_proxies')}" if proxies else "")
            + f" would serve the feeds to anyone: set {Settings.env_var('credentials_path')} to a credentials "
            "file (docs/api.md), or bind to 127.0.0.1 for a local demo")
    path = Path(settings.credentials_path)
    credentials = load_credentials(path, env)
    check_feeds(credentials, feeds, str(path))
    plain = not settings.tls_cert and not loopback_bind(settings.bind) and not proxies
    if plain and any(c.password_hash for c in credentials.values()):
        log.warning("HTTP Basic without TLS: passwords cross the network in clear unless a TLS proxy is in "
                    "front; set FEEDSTORE_TLS_CERT/FEEDSTORE_TLS_KEY or FEEDSTORE_TRUSTED_PROXIES",
                    extra={"bind": settings.bind})
    log.info("credentials loaded", extra={"credentials": sorted(credentials), "file": str(path)})
    return Authenticator(credentials, max_skew_s=settings.signature_max_skew_s, metrics=metrics)
