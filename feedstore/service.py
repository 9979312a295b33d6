"""The running service: store, materializer and consumer thread in one process.

``feedstore serve`` (gunicorn, one worker) loads the API through ``api.app.get_app``,
which starts this service in the worker; the consumer runs in a daemon thread next to
the request threads, and all of them share the one DuckDB connection (decision 5).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from cdc.consumer import BatchPolicy, Consumer, Offsets, kafka_consumer
from cdc.records import Record
from feedstore import logs
from feedstore.config import Settings
from materializer.apply import Materializer
from materializer.mapping import load_mapping
from materializer.stamp import Clock, utc_now
from materializer.store import Store

log = logging.getLogger("feedstore.service")


@dataclass
class Service:
    settings: Settings
    store: Store
    consumer: Consumer | None = None
    thread: threading.Thread | None = None
    events: int = field(default=0)

    @classmethod
    def from_env(cls) -> Service:
        settings = Settings.from_env()
        logs.setup(settings.log_level, settings.log_format)
        return cls.open(settings)

    @classmethod
    def open(cls, settings: Settings, *, clock: Clock = utc_now) -> Service:
        mapping = load_mapping(settings.mapping_path)
        return cls(settings, Store(settings.db_path, mapping, clock=clock))

    def start(self) -> None:
        materializer = Materializer(self.store)

        def sink(records: Sequence[Record], offsets: Offsets) -> None:
            started = time.perf_counter()
            result = materializer.apply(records, offsets)
            self.events += len(records)
            log.info("batch", extra={"events": len(records), "changed": dict(result.changed),
                                     "quarantined": result.quarantined,
                                     "ms": round((time.perf_counter() - started) * 1000, 1)})

        client = kafka_consumer(self.settings.kafka_bootstrap, self.settings.group_id)
        self.consumer = Consumer(client, self.store.mapping.topics, self.store.offsets(), sink,
                                 BatchPolicy(self.settings.batch_max_events, self.settings.batch_max_wait_ms))
        self.thread = threading.Thread(target=self._run, name="feedstore-consumer", daemon=True)
        self.thread.start()
        log.info("service started", extra={"db": str(self.settings.db_path), "topics": self.store.mapping.topics})

    def _run(self) -> None:
        assert self.consumer is not None
        try:
            self.consumer.run()
        except Exception:
            log.exception("consumer stopped")
            raise

    def stop(self) -> None:
        if self.consumer is not None:
            self.consumer.stop()
        if self.thread is not None:
            self.thread.join(10)
        if self.consumer is not None:
            self.consumer.client.close()
        self.store.close()
