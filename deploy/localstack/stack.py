"""The whole local stack: Postgres -> real Debezium -> tansu, on loopback, no Docker.

Used by the tests (``tests/fix_stack.py``) and by ``make demo``. Starts in seconds
(Postgres ~1 s, broker <1 s, Debezium's JVM ~3 s) and stops every child it started.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import TracebackType

import psycopg

from deploy.localstack.broker import Broker
from deploy.localstack.debezium import Debezium, connector_properties
from deploy.localstack.postgres import Postgres

log = logging.getLogger("feedstore.localstack")


def legacy_schema() -> str:
    return resources.files("deploy.localstack").joinpath("legacy.sql").read_text()


@dataclass
class LocalStack:
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="feedstore-stack-")))
    prefix: str = "spacevegas"
    schemas: bool = True
    unwrap: bool = False
    keep_workdir: bool = False
    postgres: Postgres = field(init=False)
    broker: Broker = field(init=False)
    debezium: Debezium | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.postgres = Postgres(self.workdir / "pgdata")
        self.broker = Broker(self.workdir)

    @property
    def dsn(self) -> str:
        return self.postgres.dsn

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def start(self, schema_sql: str | None = None, *, debezium: bool = True) -> LocalStack:
        """Start Postgres and the broker, create the legacy schema, then start Debezium
        (``debezium=False``: an operator database not yet set up for CDC, as in the quickstart)."""
        try:
            self.postgres.start()
            self.broker.start()
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute(schema_sql if schema_sql is not None else legacy_schema())
            if debezium:
                self.start_debezium()
        except BaseException:
            self.stop()
            raise
        log.info("local stack up", extra={"dsn": self.dsn, "bootstrap": self.bootstrap})
        return self

    def start_debezium(self, *, prefix: str | None = None, slot: str = "feedstore",
                       schemas: bool | None = None, unwrap: bool | None = None) -> Debezium:
        workdir = self.workdir / f"debezium-{slot}"
        workdir.mkdir(exist_ok=True)
        props = connector_properties(
            dsn_host="127.0.0.1", port=self.postgres.port, dbname=self.postgres.dbname,
            prefix=prefix or self.prefix, workdir=workdir, slot=slot,
            schemas=self.schemas if schemas is None else schemas,
            unwrap=self.unwrap if unwrap is None else unwrap)
        dbz = Debezium(workdir, props, self.bootstrap).start(self.dsn)
        if self.debezium is None:
            self.debezium = dbz
        return dbz

    def stop(self) -> None:
        for part in (self.debezium, self.broker, self.postgres):
            if part is not None:
                try:
                    part.stop()
                except Exception:
                    log.exception("stopping %s failed", type(part).__name__)
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
