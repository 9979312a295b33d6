"""One typed settings object; the environment is read here and nowhere else.

Every setting has an environment variable (``FEEDSTORE_*``) and a default that works
for the local stack, so ``feedstore serve`` runs with no flags during development and
is fully driven by the environment under systemd or compose.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    db_path: Path = Path("var/feedstore.duckdb")
    mapping_path: Path = Path("deploy/mappings/spacevegas.yaml")
    kafka_bootstrap: str = "127.0.0.1:9092"
    group_id: str = "feedstore"
    bind: str = "127.0.0.1:8000"
    threads: int = 8
    duckdb_threads: int = 0  # DuckDB's threads; 0: one per row group of the largest table, up to one per core
    batch_max_events: int = 20_000
    batch_max_wait_ms: int = 150  # why 150: cdc.consumer.BatchPolicy.max_wait_ms
    barrier_timeout_s: float = 2.0
    max_event_bytes: int = 1024 * 1024  # larger Kafka values are quarantined (docs/guarantees.md)
    log_level: str = "INFO"
    log_format: str = "json"
    # The API's security and operations (docs/api.md). Empty strings mean "not set".
    credentials_path: str = ""  # YAML; unset = open API, allowed only on a loopback bind
    trusted_proxies: str = ""  # comma-separated CIDRs whose X-Forwarded-For is believed
    signature_max_skew_s: int = 300  # HMAC timestamps this far from our clock are refused
    tls_cert: str = ""  # PEM certificate chain; with tls_key, gunicorn serves HTTPS
    tls_key: str = ""
    ready_max_lag: int = 10_000  # /ready is 503 while more events than this wait in Kafka
    access_log: str = "-"  # gunicorn's JSON access log: "-" stderr, a path, or "" for none
    pull_concurrency: int = 1  # pulls running DuckDB work at once (others take turns); 0: unbounded
    pull_share: float = 0.25  # while ingest has a backlog, pulls get at most this share of the time
    # `feedstore replay --online` (docs/operations.md): bearer token of /admin/*; empty = admin endpoint off.
    admin_token: str = field(default="", repr=False)  # a secret: never in a repr or a log line
    admin_url: str = ""  # where the CLI finds the running service; empty: http://<bind>

    _ENV = {
        "db_path": "FEEDSTORE_DB",
        "mapping_path": "FEEDSTORE_MAPPING",
        "kafka_bootstrap": "FEEDSTORE_KAFKA_BOOTSTRAP",
        "group_id": "FEEDSTORE_GROUP_ID",
        "bind": "FEEDSTORE_BIND",
        "threads": "FEEDSTORE_THREADS",
        "duckdb_threads": "FEEDSTORE_DUCKDB_THREADS",
        "batch_max_events": "FEEDSTORE_BATCH_MAX_EVENTS",
        "batch_max_wait_ms": "FEEDSTORE_BATCH_MAX_WAIT_MS",
        "barrier_timeout_s": "FEEDSTORE_BARRIER_TIMEOUT_S",
        "max_event_bytes": "FEEDSTORE_MAX_EVENT_BYTES",
        "log_level": "FEEDSTORE_LOG_LEVEL",
        "log_format": "FEEDSTORE_LOG_FORMAT",
        "credentials_path": "FEEDSTORE_CREDENTIALS",
        "trusted_proxies": "FEEDSTORE_TRUSTED_PROXIES",
        "signature_max_skew_s": "FEEDSTORE_SIGNATURE_MAX_SKEW_S",
        "tls_cert": "FEEDSTORE_TLS_CERT",
        "tls_key": "FEEDSTORE_TLS_KEY",
        "ready_max_lag": "FEEDSTORE_READY_MAX_LAG",
        "access_log": "FEEDSTORE_ACCESS_LOG",
        "pull_concurrency": "FEEDSTORE_PULL_CONCURRENCY",
        "pull_share": "FEEDSTORE_PULL_SHARE",
        "admin_token": "FEEDSTORE_ADMIN_TOKEN",
        "admin_url": "FEEDSTORE_ADMIN_URL",
    }

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name.startswith("_"):
                continue
            var = cls._ENV[f.name]
            if var not in env:
                continue
            raw = env[var]
            kind = type(getattr(cls, f.name))
            try:
                values[f.name] = kind(raw)
            except ValueError as ex:
                raise ConfigError(f"{var}={raw!r} is not a valid {kind.__name__}") from ex
        return replace(cls(**values), **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def env_var(cls, name: str) -> str:
        return cls._ENV[name]

    def as_env(self) -> dict[str, str]:
        """The settings as environment variables, to hand to a child process."""
        return {var: str(getattr(self, name)) for name, var in self._ENV.items()}


def environment() -> Mapping[str, str]:
    """The process environment, for settings that name other variables (a credential's
    ``hmac_secret_env``): still read here and nowhere else."""
    return os.environ
