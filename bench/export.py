"""Export: a 1,000,000-row players window over HTTP, against DuckDB's own ``COPY ... TO``.

The store is generated in DuckDB with SQL (players-like values, quotes, commas,
newlines and non-ASCII in some rows, custom fields, stamps in batches of 2,000 over
one hour), then served by the real ``feedstore serve`` (gunicorn, Basic credentials,
its consumer idle on a topic prefix nobody writes). The whole window is fetched with
``curl -s -o /dev/null`` as CSV, CSV with ``Accept-Encoding: gzip`` and JSON, while
the server worker's resident set is sampled (and its kernel high-water mark read).

Baseline, same run, same file: DuckDB's ``COPY (<the window query>) TO 'file.csv'
(HEADER)``, in a fresh process, where the query is ``materializer.export.window_sql``:
the same columns, rendering and order the API serves. One CSV fetch is also saved and
compared with the COPY output byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from bench.common import MAPPING, PROJECT, Context, PeakRss, Report, in_child, ratio, say

TARGET_RATIO = 0.5
TARGET_RSS_MB = 500
START, END = datetime(2025, 1, 1), datetime(2025, 1, 1, 1)
USER, PASSWORD = "bench", "bench-password-0123456789"


def sizes(quick: bool) -> tuple[int, int]:
    """(rows in the window, fetches per format)."""
    return (200_000, 1) if quick else (1_000_000, 3)


def build_store(db: str, mapping: str, rows: int) -> dict[str, Any]:
    """The players table filled by SQL, as ``feedstore serve`` would find it (own process)."""
    from materializer.mapping import load_mapping
    from materializer.store import Store, table_name

    store = Store(Path(db), load_mapping(mapping))
    feed = store.feed("players")
    started = time.perf_counter()
    with store.writer() as cur:
        cur.execute(f"""
            INSERT INTO {table_name(feed)} BY NAME
            SELECT CAST(i AS VARCHAR) AS id,
                   (['Aniyah', 'Jonas', 'Zoë', 'Renée', 'Ahmed', 'Li'])[1 + i % 6] AS first_name,
                   CASE WHEN i % 50 = 0 THEN 'O''Brien, "Jr."' ELSE 'Shanahan' END AS last_name,
                   CASE WHEN i % 2 = 0 THEN 'male' ELSE 'female' END AS gender,
                   (['Malta', 'Germany', 'Brazil', 'Japan'])[1 + i % 4] AS country,
                   CASE WHEN i % 100 = 0 THEN 'São' || chr(10) || 'Paulo' ELSE 'Valletta' END AS city,
                   '10.' || (i % 256) || '.' || (i // 256 % 256) || '.' || (1 + i % 254) AS ip,
                   'en_US' AS locale, 'Europe/Malta' AS timezone,
                   DATE '1950-01-01' + CAST(i % 20000 AS INTEGER) AS birthday,
                   TIMESTAMP '2020-01-01' + to_seconds(i) AS registered_at,
                   CASE WHEN i % 3 = 0 THEN 'aff' || (i % 97) END AS ref_code,
                   'Google' AS traffic_source,
                   'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0' AS user_agent,
                   TIMESTAMP '{START}' + to_seconds(i // 2000 * 7) + to_microseconds(i // 2000) AS modified_at,
                   i % 13 = 0 AS is_blocked, 'Normal' AS status, i % 11 = 0 AS self_excluded,
                   i % 5 AS vip_level, CAST(i % 100000 AS DECIMAL(38,8)) / 100 AS lifetime_value,
                   'verified' AS kyc_status, TIMESTAMP '2024-06-01' + to_seconds(i) AS last_deposit_at,
                   CASE WHEN i % 4 = 0 THEN ['vip', 'sports'] ELSE [] END AS segments
            FROM range({rows}) r(i)""")
        last = cur.execute(f"SELECT max(modified_at) FROM {table_name(feed)}").fetchone()[0]  # type: ignore[index]
        cur.execute("INSERT OR REPLACE INTO fs_meta VALUES ('last_stamp', ?)", [last.isoformat()])
    secs = time.perf_counter() - started
    store.close()
    return {"secs": secs, "bytes": Path(db).stat().st_size}


def duckdb_copy(db: str, mapping: str, out: str, ordered: bool = True) -> dict[str, Any]:
    """The baseline (own process): DuckDB writes the same window query to a CSV file
    (``ordered=False``: without its ORDER BY, DuckDB's fastest CSV, for reference)."""
    import duckdb

    from materializer.export import window_sql
    from materializer.mapping import load_mapping

    feed = load_mapping(mapping).feeds["players"].feed
    sql = window_sql(feed) if ordered else window_sql(feed).rsplit(" ORDER BY ", 1)[0]
    conn = duckdb.connect(db, read_only=True)
    started = time.perf_counter()
    conn.execute(f"COPY ({sql}) TO '{out}' (HEADER)", {"start": START, "end": END})
    secs = time.perf_counter() - started
    conn.close()
    return {"secs": secs, "bytes": Path(out).stat().st_size}


def _mapping(work: Path) -> Path:
    """The reference mapping on a topic prefix nobody produces to: the consumer stays idle."""
    text = MAPPING.read_text().replace("topic_prefix: spacevegas", f"topic_prefix: benchexport{uuid.uuid4().hex[:6]}")
    path = work / "export-mapping.yaml"
    path.write_text(text)
    return path


def credentials_file(work: Path) -> Path:
    from api.passwords import hash_password

    path = work / "export-credentials.yaml"
    path.write_text(f"credentials:\n  {USER}:\n    password_hash: '{hash_password(PASSWORD)}'\n"
                    "    feeds: '*'\n    metrics: true\n")
    return path


class Server:
    """``feedstore serve`` as a child process, and its gunicorn worker's pid."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        from deploy.localstack.procs import spawn

        self.proc = spawn([sys.executable, "-m", "feedstore.cli", "serve"], log=log, env=env, cwd=PROJECT)
        self.log = log
        self.url = f"http://{env['FEEDSTORE_BIND']}"

    def wait(self, timeout: float = 90) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"feedstore serve exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            raise TimeoutError(f"feedstore serve did not answer in {timeout:.0f}s")
        children = psutil.Process(self.proc.pid).children()
        return children[0].pid if children else self.proc.pid

    def stop(self) -> None:
        from deploy.localstack.procs import stop

        stop(self.proc, signal.SIGTERM, timeout=20)


def serve_env(work: Path, db: Path, mapping: Path, creds: Path, bootstrap: str, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"FEEDSTORE_DB": str(db), "FEEDSTORE_MAPPING": str(mapping), "FEEDSTORE_KAFKA_BOOTSTRAP": bootstrap,
                "FEEDSTORE_BIND": f"127.0.0.1:{port}", "FEEDSTORE_CREDENTIALS": str(creds),
                "FEEDSTORE_GROUP_ID": f"bench-{uuid.uuid4().hex[:8]}", "FEEDSTORE_LOG_FORMAT": "json",
                "FEEDSTORE_ACCESS_LOG": str(work / "access.log"), "PYTHONPATH": str(PROJECT)})
    return env


def curl(url: str, *, out: str = "/dev/null", headers: tuple[str, ...] = ()) -> tuple[int, int, float]:
    """(status, bytes, seconds) as curl measures them."""
    argv = ["curl", "-s", "-o", out, "-u", f"{USER}:{PASSWORD}", "-w", "%{http_code} %{size_download} %{time_total}"]
    for h in headers:
        argv += ["-H", h]
    done = subprocess.run([*argv, url], capture_output=True, text=True, check=True, timeout=600)
    code, size, secs = done.stdout.split()
    return int(code), int(size), float(secs)


def vm_hwm_mb(pid: int) -> float:
    """The kernel's peak resident set of ``pid`` (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def measure(ctx: Context, rows: int, fetches: int) -> dict[str, Any]:
    from deploy.localstack.procs import free_port

    work = Path(tempfile.mkdtemp(prefix="export-", dir=ctx.work))
    db, base_csv, http_csv = work / "export.duckdb", work / "copy.csv", work / "http.csv"
    mapping, creds = _mapping(work), credentials_file(work)
    say(f"export: generating {rows:,} players rows in DuckDB ...")
    built, _ = in_child(build_store, str(db), str(mapping), rows)
    say(f"export: built in {built['secs']:.1f}s ({built['bytes'] / 2**20:.0f} MB file)")

    copies = []
    for i in range(fetches):
        say(f"export: DuckDB COPY baseline {i + 1}/{fetches}")
        copies.append(in_child(duckdb_copy, str(db), str(mapping), str(base_csv)))
    copy_secs = statistics.median(c[0]["secs"] for c in copies)
    copy_bytes = copies[0][0]["bytes"]
    copy_rss = max(c[1] for c in copies)
    unordered = statistics.median(in_child(duckdb_copy, str(db), str(mapping), str(work / "unordered.csv"),
                                           False)[0]["secs"] for _ in range(fetches))
    (work / "unordered.csv").unlink(missing_ok=True)

    port = free_port()
    server = Server(serve_env(work, db, mapping, creds, ctx.stack().bootstrap, port), work / "serve.log")
    try:
        worker = server.wait()
        url = f"{server.url}/api/players?from={START:%Y-%m-%d+%H:%M:%S}&to={END:%Y-%m-%d+%H:%M:%S}"
        results: dict[str, dict[str, Any]] = {}
        variants = {"csv": (url, ()), "csv+gzip": (url, ("Accept-Encoding: gzip",)), "json": (url + "&format=json", ())}
        # Not timed: one fetch saved to compare with COPY's file byte for byte.
        code, _, _ = curl(url, out=str(http_csv))
        same = code == 200 and _sha256(http_csv) == _sha256(base_csv)
        http_csv.unlink(missing_ok=True)
        for name, (u, headers) in variants.items():
            times, sizes_, rss = [], [], 0.0
            for i in range(fetches):
                say(f"export: HTTP {name} {i + 1}/{fetches}")
                with PeakRss(worker, interval=0.02, children=False) as peak:
                    code, size, secs = curl(u, headers=headers)
                if code != 200:
                    raise RuntimeError(f"{name}: HTTP {code}; see {server.log}")
                times.append(secs)
                sizes_.append(size)
                rss = max(rss, peak.mb)
            results[name] = {"secs": statistics.median(times), "bytes": sizes_[0], "rss_mb": rss}
        hwm = vm_hwm_mb(worker)
    finally:
        server.stop()
    base_csv.unlink(missing_ok=True)
    db.unlink(missing_ok=True)
    return {"copy": {"secs": copy_secs, "bytes": copy_bytes, "rss_mb": copy_rss, "unordered_secs": unordered},
            "http": results,
            "worker_hwm_mb": hwm, "identical": same, "build": built}


def run(quick: bool, ctx: Context | None = None) -> dict[str, Any]:
    own = ctx is None
    if ctx is None:
        ctx = Context(quick=quick, work=Path(tempfile.mkdtemp(prefix="feedstore-bench-export-")))
    rows, fetches = sizes(quick)
    rep = Report(
        "export", f"Export: a {rows:,}-row players window over HTTP",
        measures=f"curl -s -o /dev/null of GET /api/players for a window holding {rows:,} rows, served by "
                 "`feedstore serve` (gunicorn gthread worker, HTTP Basic): CSV, CSV with Accept-Encoding: gzip, "
                 "JSON; curl's time_total, median of "
                 f"{fetches}; peak RSS of the gunicorn worker sampled every 20 ms during the fetches.",
        baseline="DuckDB COPY (window query) TO 'file.csv' (HEADER) on the same file, same query (columns, spec "
                 "rendering, order), fresh process, median of the same number of runs.",
    )
    try:
        m = measure(ctx, rows, fetches)
    finally:
        if own:
            ctx.close()
            shutil.rmtree(ctx.work, ignore_errors=True)
    copy_rate = rows / m["copy"]["secs"]
    rep.sizes.update({"rows": rows, "CSV MB": round(m["copy"]["bytes"] / 2**20, 1)})
    for name, r in m["http"].items():
        rate = rows / r["secs"]
        if name == "csv":
            rep.ratio("HTTP CSV / DuckDB COPY rows/s", ratio(rate, copy_rate), "rows/s over rows/s",
                      target=TARGET_RATIO)
        rep.figure(f"HTTP {name}", rate, "rows/s")
        rep.figure(f"HTTP {name} bytes", r["bytes"] / 2**20, "MB")
        rep.figure(f"HTTP {name}: server worker peak RSS", r["rss_mb"], "MB",
                   target=f"< {TARGET_RSS_MB}", met=r["rss_mb"] < TARGET_RSS_MB)
    rep.figure("DuckDB COPY", copy_rate, "rows/s")
    unordered_rate = rows / m["copy"]["unordered_secs"]
    rep.ratio("HTTP CSV / DuckDB COPY without ORDER BY rows/s (reference)", ratio(rows / m["http"]["csv"]["secs"],
                                                                                 unordered_rate), "rows/s over rows/s")
    rep.figure("DuckDB COPY without ORDER BY (reference)", unordered_rate, "rows/s")
    rep.figure("DuckDB COPY bytes", m["copy"]["bytes"] / 2**20, "MB")
    rep.figure("DuckDB COPY process peak RSS", m["copy"]["rss_mb"], "MB")
    rep.figure("server worker VmHWM (whole life, incl. all fetches)", m["worker_hwm_mb"], "MB",
               target=f"< {TARGET_RSS_MB}", met=m["worker_hwm_mb"] < TARGET_RSS_MB)
    rep.note("The HTTP CSV body is byte-identical to DuckDB's COPY output." if m["identical"]
             else "WARNING: the HTTP CSV body differs from DuckDB's COPY output.")
    csv = m["http"]["csv"]
    summary = (f"HTTP CSV {rows / csv['secs']:,.0f} rows/s = {ratio(rows / csv['secs'], copy_rate):.2f}x DuckDB COPY "
               f"({copy_rate:,.0f} rows/s); worker peak RSS {max(r['rss_mb'] for r in m['http'].values()):.0f} MB")
    rep.note(summary)
    out = rep.as_dict()
    out["summary"] = summary
    return out


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    result = run(quick)
    for row in result["ratios"] + result["figures"]:
        print(f"{row['name']:55s} {row['value']:>14,.2f} {row.get('unit', '')}")
    print("\n".join(result["notes"]))
