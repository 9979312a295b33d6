"""``feedstore quarantine list|retry``: see the events the line set aside, and re-apply them.

Both work on the DuckDB file offline (one process owns it, ARCHITECTURE.md decision 5):
stop ``feedstore serve`` for that file, fix the mapping (or raise
FEEDSTORE_MAX_EVENT_BYTES), run ``retry``, start the service again. While the service
holds the file the commands say so and change nothing.

Exit status: 0 done, 1 ``retry`` left events that still fail (they have fresh
entries with the new reason), 2 the file or the mapping cannot be used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from feedstore.config import Settings

REASON_WIDTH = 90


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quarantine", help="list or re-apply quarantined events (offline, service stopped)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", required=True)
    ls = actions.add_parser("list", help="pending quarantined events, newest last")
    _common(ls)
    ls.add_argument("--all", action="store_true", help="include entries already retried")
    ls.add_argument("--limit", type=int, default=None, help="show at most N entries")
    ls.add_argument("--json", action="store_true", help="one JSON object per entry, with key and value previews")
    ls.set_defaults(func=run_list)
    rt = actions.add_parser("retry", help="re-apply pending entries with the current mapping")
    _common(rt)
    rt.add_argument("--id", dest="ids", type=int, action="append", default=[], help="only this entry (repeatable)")
    rt.add_argument("--mapping", type=Path, help="the fixed mapping file (default FEEDSTORE_MAPPING)")
    rt.add_argument("--max-event-bytes", type=int, help="size limit for this retry (default FEEDSTORE_MAX_EVENT_BYTES)")
    rt.add_argument("--json", action="store_true", help="print the outcome as JSON")
    rt.set_defaults(func=run_retry)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=Path, help="the DuckDB file (default FEEDSTORE_DB)")
    p.add_argument("--feed", help="only entries of this feed")
    p.add_argument("--topic", help="only entries of this Kafka topic")


def run_list(args: argparse.Namespace) -> int:
    from materializer import quarantine as qm

    path = args.db or Settings.from_env().db_path
    with qm.open_read_only(path) as conn:
        cur = conn.cursor()
        found = qm.entries(cur, qm.Filter(args.feed, args.topic, include_retried=args.all), args.limit)
        pending = qm.counts(cur)
    if args.json:
        for e in found:
            print(json.dumps(e.as_json(), ensure_ascii=False))
        return 0
    rows = [[str(e.id), f"{e.quarantined_at:%Y-%m-%d %H:%M:%S}", e.where, e.feed or "-",
             _size(e.value), "retried" if e.retried_at else "pending", _clip(e.reason)] for e in found]
    print(_table(["id", "quarantined_at", "event", "feed", "size", "state", "reason"], rows))
    total = sum(pending.values())
    by_feed = ", ".join(f"{feed} {n}" for feed, n in pending.items())
    print(f"\n{total} pending in {path}" + (f" ({by_feed})" if total else "")
          + ("; `feedstore quarantine retry` re-applies them once the cause is fixed" if total else ""))
    return 0


def run_retry(args: argparse.Namespace) -> int:
    from materializer import StoreError
    from materializer import quarantine as qm
    from materializer.apply import Materializer
    from materializer.mapping import load_mapping
    from materializer.store import Store

    settings = Settings.from_env()
    path = args.db or settings.db_path
    if not path.exists():
        raise StoreError(f"{path} does not exist; set FEEDSTORE_DB or pass --db")
    mapping = load_mapping(args.mapping or settings.mapping_path)
    try:
        store = Store(path, mapping)
    except StoreError as ex:
        raise StoreError(qm.busy(path, ex.__cause__ or ex)) from ex
    try:
        limit = args.max_event_bytes if args.max_event_bytes is not None else settings.max_event_bytes
        result = qm.retry(Materializer(store, max_event_bytes=limit),
                          qm.Filter(args.feed, args.topic, tuple(args.ids)))
    finally:
        store.close()
    outcome: dict[str, Any] = {"events": result.events, "applied": result.applied,
                               "still_failing": result.still_failing, "entries_retried": result.entries,
                               "rows_changed": result.changed}
    if args.json:
        print(json.dumps(outcome))
    elif result.events == 0:
        print("nothing pending matches; `feedstore quarantine list --all` shows what was retried before")
    else:
        changed = ", ".join(f"{feed} {n}" for feed, n in sorted(result.changed.items())) or "none"
        print(f"re-applied {result.events} event(s) with {mapping.path}: {result.applied} accepted "
              f"(rows changed: {changed}), {result.still_failing} still failing")
        if result.still_failing:
            print("the ones still failing have new entries with the new reason: `feedstore quarantine list`",
                  file=sys.stderr)
    return 1 if result.still_failing else 0


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _clip(text: str) -> str:
    one = " ".join(text.split())
    return one if len(one) <= REASON_WIDTH else one[:REASON_WIDTH - 1] + "…"


def _size(value: bytes | None) -> str:
    if value is None:
        return "null"
    n = float(len(value))
    for unit in ("B", "KB", "MB"):
        if n < 1024 or unit == "MB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} MB"
