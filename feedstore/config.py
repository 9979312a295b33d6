"""One typed settings object; the environment is read here and nowhere else.

Every setting has an environment variable (``FEEDSTORE_*``) and a default that works
for the local stack, so ``feedstore serve`` runs with no flags during development and
is fully driven by the environment under systemd or compose.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
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
    batch_max_events: int = 20_000
    batch_max_wait_ms: int = 100
    barrier_timeout_s: float = 2.0
    log_level: str = "INFO"
    log_format: str = "json"

    _ENV = {
        "db_path": "FEEDSTORE_DB",
        "mapping_path": "FEEDSTORE_MAPPING",
        "kafka_bootstrap": "FEEDSTORE_KAFKA_BOOTSTRAP",
        "group_id": "FEEDSTORE_GROUP_ID",
        "bind": "FEEDSTORE_BIND",
        "threads": "FEEDSTORE_THREADS",
        "batch_max_events": "FEEDSTORE_BATCH_MAX_EVENTS",
        "batch_max_wait_ms": "FEEDSTORE_BATCH_MAX_WAIT_MS",
        "barrier_timeout_s": "FEEDSTORE_BARRIER_TIMEOUT_S",
        "log_level": "FEEDSTORE_LOG_LEVEL",
        "log_format": "FEEDSTORE_LOG_FORMAT",
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
