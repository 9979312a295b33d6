"""Concurrency: 20 clients pulling every mapped feed while ingest runs at full speed.

A topic is pre-loaded with real Debezium events (captured once through the real
engine, ``bench/capture.py``). The real ``feedstore serve`` (HTTP Basic, its consumer on
that topic, a fresh DuckDB file) ingests them from the start of the topic; its ingest
rate is read from its own ``/metrics`` (``feedstore_events_total``, sampled every
100 ms) from the first stored event to the last.

Baseline, same run: the same ingest with no client. Measured: the same ingest while 20
client threads pull the feeds in turn, as InTarget would: half the pulls ask for the
last full minute (a closed window, so the server's completeness barrier is in play),
half for everything since the run started up to a minute ahead (an open window that
grows to tens of thousands of rows), alternating CSV, CSV+gzip and JSON. Every
response must be a 200 read to the end; anything else counts as a failed request.
"""

from __future__ import annotations

import base64
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench import capture
from bench.common import Context, PeakRss, Report, percentile, ratio, say
from bench.export import PASSWORD, USER, Server, credentials_file, serve_env
from bench.ingest import mapping_for
from materializer.stamp import utc_now

TARGET_RATIO = 2 / 3  # ingest may drop by less than a third
CLIENTS = 20
FORMATS = [("csv", {}), ("csv", {"Accept-Encoding": "gzip"}), ("json", {})]


def sizes(quick: bool) -> tuple[int, int]:
    """(events in the topic, measurement pairs)."""
    return (20_000, 1) if quick else (100_000, 2)


@dataclass
class Pulls:
    """What the clients saw; shared by the client threads (appends are atomic)."""

    ok: list[float] = field(default_factory=list)  # seconds per successful pull
    bytes: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def client(base: str, feeds: list[str], start: datetime, stop: threading.Event, pulls: Pulls, n: int) -> None:
    """Pull feed after feed until ``stop``; client ``n`` starts at feed ``n`` so all are pulled at once."""
    auth = basic_auth()
    i = n
    while not stop.is_set():
        feed = feeds[i % len(feeds)]
        fmt, headers = FORMATS[i % len(FORMATS)]
        now = utc_now().replace(microsecond=0)
        if i % 2:
            end = now.replace(second=0)
            window = (end - timedelta(minutes=1), end)
        else:
            window = (start.replace(microsecond=0), now + timedelta(minutes=1))
        query = urllib.parse.urlencode({"from": f"{window[0]:%Y-%m-%d %H:%M:%S}",
                                        "to": f"{window[1]:%Y-%m-%d %H:%M:%S}", "format": fmt})
        req = urllib.request.Request(f"{base}/api/{feed}?{query}", headers={"Authorization": auth, **headers})
        began = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:  # loopback URL we built
                size = 0
                while chunk := resp.read(1 << 20):
                    size += len(chunk)
            pulls.ok.append(time.perf_counter() - began)
            pulls.bytes.append(size)
        except urllib.error.HTTPError as err:
            pulls.failures.append(f"{feed}: HTTP {err.code} {err.read()[:200]!r}")
        except Exception as ex:  # noqa: BLE001 - every failure is counted and reported
            pulls.failures.append(f"{feed}: {type(ex).__name__}: {ex}")
        i += 1


def basic_auth() -> str:
    return "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def events_stored(base: str) -> float:
    req = urllib.request.Request(f"{base}/metrics", headers={"Authorization": basic_auth()})
    with urllib.request.urlopen(req, timeout=10) as resp:  # loopback URL we built
        text = resp.read().decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "feedstore_events_total":
                return s.value
    return 0.0


def ingest(ctx: Context, work: Path, mapping: Path, events: int, *, clients: int, tag: str) -> dict[str, Any]:
    """One ``feedstore serve`` from an empty store to every event stored; ``clients`` pull meanwhile."""
    from deploy.localstack.procs import free_port

    db = work / f"concurrency-{tag}.duckdb"
    server = Server(serve_env(work, db, mapping, credentials_file(work), ctx.stack().bootstrap, free_port()),
                    work / f"serve-{tag}.log")
    pulls, stop, threads = Pulls(), threading.Event(), []
    try:
        worker = server.wait()
        feeds = _feeds(mapping)
        start = utc_now()
        for n in range(clients):
            t = threading.Thread(target=client, args=(server.url, feeds, start, stop, pulls, n), daemon=True)
            t.start()
            threads.append(t)
        samples: list[tuple[float, float]] = []
        proc = psutil.Process(worker)
        cpu0, wall0 = sum(proc.cpu_times()[:2]), time.perf_counter()
        deadline = time.monotonic() + 900
        with PeakRss(worker, children=False) as rss:
            while True:
                n_stored = events_stored(server.url)
                samples.append((time.perf_counter(), n_stored))
                if n_stored >= events:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{tag}: {n_stored:.0f} of {events} events stored after 900 s")
                time.sleep(0.1)
        cores = (sum(proc.cpu_times()[:2]) - cpu0) / (time.perf_counter() - wall0)
        stop.set()
        for t in threads:
            t.join(180)
    finally:
        stop.set()
        server.stop()
        db.unlink(missing_ok=True)
    moving = [(t, n) for t, n in samples if n > 0]
    (t0, n0), (t1, n1) = moving[0], moving[-1]
    return {"rate": (n1 - n0) / (t1 - t0) if t1 > t0 else float("nan"), "secs": t1 - t0, "pulls": pulls,
            "rss_mb": rss.mb, "cores": cores}


def _feeds(mapping: Path) -> list[str]:
    from materializer.mapping import load_mapping

    return list(load_mapping(mapping).feeds)


def run(quick: bool, ctx: Context | None = None) -> dict[str, Any]:
    own = ctx is None
    if ctx is None:
        ctx = Context(quick=quick, work=Path(tempfile.mkdtemp(prefix="feedstore-bench-concurrency-")))
    events, pairs = sizes(quick)
    rep = Report(
        "concurrency", f"Concurrency: ingest while {CLIENTS} clients pull every feed",
        measures=f"Ingest events/s of `feedstore serve` (its own feedstore_events_total, first to last stored "
                 f"event) over {events:,} pre-loaded real Debezium events, while {CLIENTS} client threads pull all "
                 "mapped feeds in turn (last closed minute / everything so far; CSV, CSV+gzip, JSON) and read "
                 "every body to the end.",
        baseline="The same ingest (same topic, fresh store, same server settings) with no client, in the same run.",
    )
    try:
        fixture = capture.ensure(ctx, events)["schema"]
        table = capture.load(fixture, events)
        events = table.num_rows
        prefix = f"benchconc{uuid.uuid4().hex[:6]}"
        say(f"concurrency: producing {events:,} captured events into {prefix}.public.users")
        capture.produce(ctx.stack().bootstrap, f"{prefix}.public.users", table)
        del table
        work = Path(tempfile.mkdtemp(prefix="concurrency-", dir=ctx.work))
        mapping = mapping_for(prefix, work)
        alone, loaded = [], []
        for i in range(pairs):
            say(f"concurrency: ingest alone {i + 1}/{pairs}")
            alone.append(ingest(ctx, work, mapping, events, clients=0, tag=f"alone{i}"))
            say(f"concurrency: ingest with {CLIENTS} pulling clients {i + 1}/{pairs}")
            loaded.append(ingest(ctx, work, mapping, events, clients=CLIENTS, tag=f"loaded{i}"))
    finally:
        if own:
            ctx.close()
            shutil.rmtree(ctx.work, ignore_errors=True)
    best_alone = max(alone, key=lambda r: r["rate"])
    best_loaded = max(loaded, key=lambda r: r["rate"])
    pulls = Pulls()
    for r in loaded:
        pulls.ok += r["pulls"].ok
        pulls.bytes += r["pulls"].bytes
        pulls.failures += r["pulls"].failures
    r_ = ratio(best_loaded["rate"], best_alone["rate"])
    rep.ratio("ingest with pulls / ingest alone", r_, "events/s over events/s", target=TARGET_RATIO)
    rep.figure("ingest alone", best_alone["rate"], "events/s")
    rep.figure(f"ingest with {CLIENTS} pulling clients", best_loaded["rate"], "events/s")
    rep.figure("failed requests", len(pulls.failures), "requests", target="0", met=not pulls.failures)
    rep.figure("successful pulls", len(pulls.ok), "requests")
    rep.figure("pulled", sum(pulls.bytes) / 2**20, "MB")
    if pulls.ok:
        rep.figure("pull latency p50", statistics.median(pulls.ok) * 1000, "ms")
        rep.figure("pull latency p95", percentile(pulls.ok, 95) * 1000, "ms")
    rep.figure("server worker peak RSS, ingest alone", max(r["rss_mb"] for r in alone), "MB")
    rep.figure("server worker peak RSS under load", max(r["rss_mb"] for r in loaded), "MB")
    rep.figure("server CPU, ingest alone", best_alone["cores"], "cores")
    rep.figure("server CPU, with pulls", best_loaded["cores"], "cores")
    rep.sizes.update({"events": events, "clients": CLIENTS, "feeds": len(_feeds(mapping))})
    for failure in pulls.failures[:5]:
        rep.note(f"failed: {failure}")
    summary = (f"ingest {best_loaded['rate']:,.0f} ev/s with {CLIENTS} pulling clients vs {best_alone['rate']:,.0f} "
               f"alone ({r_:.2f}x); {len(pulls.ok)} pulls, {len(pulls.failures)} failed")
    rep.note(summary)
    out = rep.as_dict()
    out["summary"] = summary
    return out


if __name__ == "__main__":
    result = run("--quick" in sys.argv)
    for row in result["ratios"] + result["figures"]:
        print(f"{row['name']:45s} {row['value']:>14,.2f} {row.get('unit', '')}")
    print("\n".join(result["notes"]))
