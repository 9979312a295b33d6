"""``make bench`` / ``make bench QUICK=1``: run the suite, print a summary, write docs/benchmarks.md.

    python -m bench [--quick] [--only ingest,peer] [--skip casino] [--no-doc]

Modules run in the order below, each once, sharing one local stack (Postgres +
tansu; Debezium engines only while a benchmark needs them). A module that is missing
(another engineer's, not merged yet) or fails is reported as such, and the suite
goes on: one broken benchmark must not hide the others' figures.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    CACHE,
    PROJECT,
    SUMMARY_HEADER,
    Context,
    failed,
    machine,
    now_utc,
    render_markdown,
    say,
    summary_rows,
    text_table,
    versions,
    workdir,
)

# (module, why it is in this place): stack-only benchmarks first, the ones that start
# a Debezium engine or a long-running server last, so none streams another's writes.
SUITE = ["ingest", "scale", "peer", "export", "concurrency", "casino", "freshness"]
DOC = PROJECT / "docs" / "benchmarks.md"


def run_one(name: str, ctx: Context, *, load: Callable[[str], Any] = importlib.import_module) -> dict[str, Any]:
    """Run ``bench.<name>`` and return its record, or a record saying why it did not run."""
    try:
        module = load(f"bench.{name}")
    except ModuleNotFoundError as ex:
        if ex.name == f"bench.{name}":
            return failed(name, f"bench/{name}.py is not there yet; skipped")
        return failed(name, f"import failed: {ex}")
    runner = getattr(module, "run", None)
    if runner is None:
        return failed(name, f"bench/{name}.py has no run(quick) function; skipped")
    started = time.monotonic()
    load_before = machine()["load_avg"]
    say(f"== {name} ({'quick' if ctx.quick else 'full'})")
    try:
        params = inspect.signature(runner).parameters
        result = runner(ctx.quick, ctx) if len(params) >= 2 else runner(ctx.quick)
    except Exception as ex:  # noqa: BLE001 - one failing benchmark must not sink the suite
        say(f"!! {name} failed: {ex}")
        return failed(name, f"{type(ex).__name__}: {ex}\n{traceback.format_exc()}")
    if not isinstance(result, dict):
        return failed(name, f"run() returned {type(result).__name__}, not a dict")
    result.setdefault("name", name)
    result.setdefault("title", name)
    secs = time.monotonic() - started
    result.setdefault("notes", [])
    result["notes"].append(f"Took {secs:.0f} s including setup; load average {load_before} before, "
                           f"{machine()['load_avg']} after (1/5/15 min, {os.cpu_count()} cores).")
    say(f"== {name} done in {secs:.0f}s")
    return result


def busy(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """A warning for the report when other work shared the machine with the suite."""
    cores = before["cores"] or 1
    loads = [float(before["load_avg"].split(" / ")[0]), float(after["load_avg"].split(" / ")[0])]
    if max(loads) <= cores:
        return []
    return [f"The machine was busy during this run (1-minute load average up to {max(loads):.1f} on {cores} "
            "cores, other work included): absolute figures are lower and noisier than on an idle machine; "
            "the ratios, whose two sides ran minutes apart, are the figures to compare."]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the ~2-minute version (smaller sizes, one run each)")
    ap.add_argument("--only", help="comma-separated benchmarks to run (default: all)")
    ap.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    ap.add_argument("--no-doc", action="store_true", help=f"do not rewrite {DOC.relative_to(PROJECT)}")
    ap.add_argument("--doc", type=Path, default=DOC, help="where to write the report")
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else list(SUITE)
    names = [n for n in names if n and n not in set(args.skip.split(","))]
    unknown = [n for n in names if n not in SUITE]
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; the suite is {', '.join(SUITE)}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.chdir(PROJECT)
    before = machine()
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    with workdir() as work:
        ctx = Context(quick=args.quick, work=work)
        try:
            for name in names:
                results.append(run_one(name, ctx))
            pg = ctx.postgres_version()
        finally:
            ctx.close()
    elapsed = time.monotonic() - started
    after = machine()
    meta = {
        "quick": args.quick, "date": now_utc(), "elapsed_s": elapsed, "machine": before,
        "versions": versions({"postgres": pg}), "load_before": before["load_avg"], "load_after": after["load_avg"],
        "notes": ([f"Only these benchmarks ran: {', '.join(names)}."] if names != SUITE else []) + busy(before, after)
        + ["Ingest, scale and freshness use real Debezium events: captured once through the embedded engine "
           f"into {CACHE.relative_to(PROJECT)}/ (gitignored; delete it to capture again) and re-produced into "
           "fresh topics for each measurement."],
    }
    print("\n" + text_table(SUMMARY_HEADER, summary_rows(results)), flush=True)
    print(f"\n{len(results)} benchmark(s) in {elapsed:.0f} s; load average {before['load_avg']} -> "
          f"{after['load_avg']} on {before['cores']} cores", flush=True)
    if not args.no_doc:
        args.doc.parent.mkdir(parents=True, exist_ok=True)
        args.doc.write_text(render_markdown(results, meta))
        print(f"wrote {args.doc}", flush=True)
    return 1 if any("error" in r and "not there yet" not in r["error"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
