"""The running service: store, materializer and consumer thread in one process.

``feedstore serve`` (gunicorn, one worker) loads the API through ``api.app.get_app``,
which starts this service in the worker; the consumer runs in a daemon thread next to
the request threads, and all of them share the one DuckDB connection (decision 5).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from cdc.consumer import BatchPolicy, Consumer, Offsets, kafka_consumer
from cdc.records import Record
from feedstore import logs
from feedstore.config import Settings
from feedstore.metrics import Metrics
from materializer import StoreError, quarantine
from materializer.apply import Decoded, Materializer
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
    materializer: Materializer | None = None
    metrics: Metrics | None = None  # set by api.app.get_app; batches are counted and timed into it

    @classmethod
    def from_env(cls) -> Service:
        settings = Settings.from_env()
        logs.setup(settings.log_level, settings.log_format)
        return cls.open(settings)

    @classmethod
    def open(cls, settings: Settings, *, clock: Clock = utc_now) -> Service:
        mapping = load_mapping(settings.mapping_path)
        store = Store(settings.db_path, mapping, clock=clock, threads=settings.duckdb_threads)
        return cls(settings, store, materializer=Materializer(store, max_event_bytes=settings.max_event_bytes))

    def prepare(self, records: Sequence[Record]) -> Callable[[Offsets], None]:
        """The consumer's decode stage: decode ``records`` (no store needed) while the
        batch before is stored; returns what stores them."""
        assert self.materializer is not None
        decoded = self.materializer.decode(records)
        return lambda offsets: self.apply(records, offsets, decoded)

    def apply(self, records: Sequence[Record], offsets: Offsets, decoded: Decoded | None = None) -> None:
        """The consumer's sink: one batch, rows and offsets in one transaction.

        When the write fails the exception goes back to the consumer, which keeps the
        batch and retries it, so the offsets stay where the data is. If DuckDB
        invalidated the database on the way (a failed checkpoint on a full disk), the
        file is reopened first; until that works every retry fails the same way.
        """
        assert self.materializer is not None
        started = time.perf_counter()
        try:
            result = self.materializer.apply(records, offsets, decoded=decoded)
        except (StoreError, duckdb.Error):
            try:
                self.store.recover()
            except StoreError as ex:
                log.error("reopening the store failed; will retry", extra={"error": str(ex)})
            raise
        if self.metrics is not None:
            self.metrics.batch_stored(len(records), result.quarantined, time.perf_counter() - started)
        log.info("batch", extra={"events": len(records), "changed": dict(result.changed),
                                 "quarantined": result.quarantined,
                                 "ms": round((time.perf_counter() - started) * 1000, 1)})

    def start(self) -> None:
        _ignore_file_size_signal()
        client = kafka_consumer(self.settings.kafka_bootstrap, self.settings.group_id)
        self.consumer = Consumer(client, self.store.mapping.topics, self.store.offsets(), self.apply,
                                 BatchPolicy(self.settings.batch_max_events, self.settings.batch_max_wait_ms),
                                 prepare=self.prepare)
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

    def status(self) -> dict[str, Any]:
        """Readiness for /ready: the consumer loop runs, its last batch or poll worked, the file answers.

        ``ready`` is False while batches fail (the offsets then stand still), with the
        error in ``consumer.last_error``; it turns True again by itself once a batch is
        stored.
        """
        consumer = self.consumer.status() if self.consumer is not None else {"ok": False, "last_error": "not started"}
        running = self.thread is not None and self.thread.is_alive()
        if not running and self.consumer is not None:
            consumer = {**consumer, "ok": False, "last_error": consumer.get("last_error") or "consumer thread ended"}
        store_error = self.store.healthy()
        return {
            "ready": bool(consumer["ok"]) and running and store_error is None,
            "consumer": consumer,
            "store": {"ok": store_error is None, "error": store_error, "reopened": self.store.reopened,
                      "path": str(self.settings.db_path)},
            # Set aside, never dropped: not a readiness failure, but what an operator looks at next.
            "quarantine": {"pending": self._pending()},
        }

    def _pending(self) -> dict[str, int] | None:
        try:
            with self.store.cursor() as cur:
                return quarantine.counts(cur)
        except (StoreError, duckdb.Error):
            return None

    def stop(self) -> None:
        if self.consumer is not None:
            self.consumer.stop()
        if self.thread is not None:
            self.thread.join(10)
        if self.consumer is not None:
            self.consumer.client.close()
        self.store.close()


def _ignore_file_size_signal() -> None:
    """A file-size limit (ulimit -f, RLIMIT_FSIZE) must fail the write (EFBIG), which the
    consumer reports and retries, instead of killing the worker with SIGXFSZ."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
