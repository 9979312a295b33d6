"""Prometheus metrics: one :class:`Metrics` per app, each with its own registry.

A registry per instance (not prometheus_client's global one) keeps tests isolated and
lets one process hold two apps. Counters and histograms are updated where things happen
(the consumer's sink, the API's middleware); values that are facts about the store or
the broker (rows per feed, lag, stamp age) are read when Prometheus scrapes, through
the callables given to :meth:`Metrics.watch`, so they cannot go stale.

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` units). Events/s
is ``rate(feedstore_events_total[1m])``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from materializer import quarantine
from materializer.stamp import utc_now
from materializer.store import Store

log = logging.getLogger("feedstore.metrics")

#: Batch commits take milliseconds to a few seconds (a 20k-event batch).
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Pulls range from an empty minute (ms) to a million-row hour (seconds).
PULL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

Lag = Mapping[tuple[str, int], int | None]  # (topic, partition) -> events behind; None: not known yet


@dataclass
class Sources:
    """Where the scrape-time values come from (all optional)."""

    rows: Callable[[], Mapping[str, int]] | None = None
    lag: Callable[[], Lag] | None = None
    newest_stamp: Callable[[], datetime | None] | None = None
    quarantine_rows: Callable[[], Mapping[str, int]] | None = None  # by feed
    now: Callable[[], datetime] | None = None


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter("feedstore_events", "Change events consumed and stored (rate() = events/s).",
                              registry=r)
        self.quarantined = Counter("feedstore_quarantined_events",
                                   "Events that could not be decoded or mapped and went to the quarantine.",
                                   registry=r)
        self.batch_seconds = Histogram("feedstore_batch_commit_seconds",
                                       "Time to map and commit one batch (rows, stamp and offsets).",
                                       buckets=BATCH_BUCKETS, registry=r)
        self.pull_seconds = Histogram("feedstore_pull_seconds",
                                      "Feed pulls from request to last byte, by feed and format.",
                                      ["feed", "format"], buckets=PULL_BUCKETS, registry=r)
        self.pull_bytes = Counter("feedstore_pull_bytes", "Response bytes of feed pulls (after gzip).",
                                  ["feed", "format"], registry=r)
        self.requests = Counter("feedstore_http_requests", "HTTP requests by route template and status.",
                                ["route", "status"], registry=r)
        self.auth_failures = Counter("feedstore_auth_failures", "Refused requests by reason.", ["reason"],
                                     registry=r)
        self.sources = Sources()
        r.register(_Scraped(self.sources))

    def watch(self, sources: Sources) -> None:
        """Read these values at scrape time (called once the store and consumer exist)."""
        self.sources.__dict__.update({k: v for k, v in vars(sources).items() if v is not None})

    def batch_stored(self, events: int, quarantined: int, seconds: float) -> None:
        self.events.inc(events)
        if quarantined:
            self.quarantined.inc(quarantined)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Scraped(Collector):
    """Gauges computed on scrape; a source that fails is skipped, not the whole scrape."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def describe(self) -> list[Metric]:
        return []  # values are dynamic; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        s = self.sources
        for name, make in (("rows", self._rows), ("lag", self._lag), ("newest_stamp", self._stamp),
                           ("quarantine_rows", self._quarantine)):
            if getattr(s, name) is None:
                continue
            try:
                yield from make()
            except Exception as ex:  # noqa: BLE001 - a scrape must not fail because one source did
                log.warning("metric source failed", extra={"source": name, "error": str(ex)})

    def _rows(self) -> Iterator[Metric]:
        assert self.sources.rows is not None
        g = GaugeMetricFamily("feedstore_feed_rows", "Rows stored per feed.", labels=["feed"])
        for feed, n in sorted(self.sources.rows().items()):
            g.add_metric([feed], n)
        yield g

    def _lag(self) -> Iterator[Metric]:
        assert self.sources.lag is not None
        g = GaugeMetricFamily("feedstore_consumer_lag",
                              "Events in the partition not yet stored (high-water mark minus stored offset).",
                              labels=["topic", "partition"])
        for (topic, partition), lag in sorted(self.sources.lag().items()):
            if lag is not None:
                g.add_metric([topic, str(partition)], lag)
        yield g

    def _stamp(self) -> Iterator[Metric]:
        assert self.sources.newest_stamp is not None
        newest = self.sources.newest_stamp()
        if newest is None:
            return
        now = (self.sources.now or utc_now)()
        yield GaugeMetricFamily("feedstore_newest_stamp_age_seconds",
                                "Seconds since the newest committed batch stamp (grows when ingest stalls).",
                                value=max(0.0, (now - newest).total_seconds()))

    def _quarantine(self) -> Iterator[Metric]:
        assert self.sources.quarantine_rows is not None
        g = GaugeMetricFamily("feedstore_quarantine_rows", "Events waiting in the quarantine table, by feed.",
                              labels=["feed"])
        for feed, n in sorted(self.sources.quarantine_rows().items()):
            g.add_metric([feed], n)
        yield g


def store_sources(store: Store) -> Sources:
    """The scrape-time values a store can answer: rows per feed, newest stamp, quarantine."""

    def newest() -> datetime | None:
        with store.cursor() as cur:
            row = cur.execute("SELECT value FROM fs_meta WHERE name = 'last_stamp'").fetchone()
        return datetime.fromisoformat(row[0]) if row else None

    def quarantined() -> Mapping[str, int]:
        with store.cursor() as cur:
            return quarantine.counts(cur)

    return Sources(rows=store.row_counts, newest_stamp=newest, quarantine_rows=quarantined)

