"""``feedstore rebuild``: a new DuckDB file from the beginning of the topics (docs/operations.md).

Two steps, so the live file keeps serving while the long part runs:

1. ``feedstore rebuild`` (service running or not) reads every mapped topic from its
   beginning into ``<db>.rebuild``, up to the current end, with a progress bar. It never
   opens the live file. Run it again to catch up further; Ctrl-C stops after a batch.
2. ``feedstore rebuild --swap`` (service stopped, for seconds): catches ``<db>.rebuild``
   up to the end, gives every row whose content equals the live row the live
   ``modified_at`` (so the CRM receives only the rows that really differ), carries the
   served-window fence, then renames it over ``<db>`` atomically; the old file stays as
   ``<db>.before-rebuild``. Start the service again.

Or, with no stop at all, ``feedstore rebuild --online``: the running service builds the
file in a thread and installs its rows between two batches (docs/operations.md).

Exit status: 0 done, 2 the files or the broker cannot be used (nothing swapped).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

from cdc.replay import ReplayError
from feedstore.config import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rebuild", help="build a new DuckDB file from the beginning of the topics; --swap installs it",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", type=Path, help="the live DuckDB file (default FEEDSTORE_DB)")
    p.add_argument("--mapping", type=Path, help="the mapping file (default FEEDSTORE_MAPPING)")
    p.add_argument("--swap", action="store_true", help="service stopped: catch up, carry stamps, swap the files")
    p.add_argument("--online", action="store_true", help="the running service builds and installs it, no stop")
    p.add_argument("--url", help="the service's base URL (default FEEDSTORE_ADMIN_URL or http://FEEDSTORE_BIND)")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(func=run_rebuild)


def run_rebuild(args: argparse.Namespace) -> int:
    import duckdb

    from cdc import replay as rp
    from feedstore.commands.replay import _bar, _kafka, _kafka_reader, _main_thread
    from materializer import StoreError
    from materializer.apply import Materializer
    from materializer.mapping import load_mapping
    from materializer.rebuild import carry_stamps, catch_up
    from materializer.store import Store

    settings = Settings.from_env()
    if args.online:
        return _online(settings, args)
    mapping = load_mapping(args.mapping or settings.mapping_path)
    live = args.db or settings.db_path
    new = live.with_name(live.name + ".rebuild")
    if args.swap:
        if not live.exists():
            raise ReplayError(f"{live} does not exist; nothing to swap (a new service just reads {new}: rename it)")
        try:  # the live file must be free (service stopped); its WAL is folded in, so none is left behind
            with duckdb.connect(str(live)) as conn:
                conn.execute("CHECKPOINT")
        except duckdb.Error as ex:
            raise ReplayError(f"cannot open {live}: {str(ex).strip().splitlines()[0]}. Stop `feedstore serve` for "
                              "the swap (the long build ran without stopping it)") from ex
    client = _kafka(settings)
    try:
        ends = {tp: b.end for tp, b in rp.gather(client, mapping.topics).items()}
    finally:
        client.close()
    try:
        store = Store(new, mapping)
    except StoreError as ex:
        raise ReplayError(str(ex)) from ex
    out: dict[str, Any] = {"file": str(new)}
    stop = threading.Event()
    old_handler = signal.signal(signal.SIGINT, lambda *_: stop.set()) if _main_thread() else None
    reader = _kafka_reader(settings)
    try:
        mat = Materializer(store, max_event_bytes=settings.max_event_bytes)
        have = store.offsets()
        with _bar(sum(max(0, e - have.get(tp, 0)) for tp, e in ends.items()), args) as bar:
            out["read"] = catch_up(mat, reader, mapping.topics, ends, progress=bar.update, stop=stop)
        out["rows"] = store.row_counts()
        out["interrupted"] = stop.is_set()
        if args.swap and not stop.is_set():
            out["carried"] = carry_stamps(mat, live)
            with store.writer() as cur:
                cur.execute("CHECKPOINT")
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
        reader.close()
        store.close()
    if args.swap and not stop.is_set():
        backup = live.with_name(live.name + ".before-rebuild")
        backup.unlink(missing_ok=True)
        os.link(live, backup)
        os.replace(new, live)  # atomic: the service starts on either the old or the new file, never half
        out["swapped"] = str(live)
        out["backup"] = str(backup)
    if args.json:
        print(json.dumps(out))
    elif stop.is_set():
        print(f"interrupted after {out['read']:,} event(s); {new} is consistent: run `feedstore rebuild` again")
    elif args.swap:
        print(f"swapped: {live} is the rebuilt store ({out['rows']}); the old one is {out['backup']}; "
              "start the service")
    else:
        print(f"{new} holds {out['rows']} after {out['read']:,} event(s); stop the service and run "
              "`feedstore rebuild --swap` to install it")
    return 0


def _online(settings: Settings, args: argparse.Namespace) -> int:
    """Start the rebuild in the service and follow it until it is installed."""
    import time

    from feedstore.commands.replay import _Admin, _bar

    if args.swap:
        raise ReplayError("--online installs the rebuild by itself; --swap is for the offline way")
    admin = _Admin(args.url or settings.admin_url or f"http://{settings.bind}", settings.admin_token)
    status = admin.call("POST", "/admin/rebuild", {})
    seen = 0
    with _bar(0, args) as bar:
        while status["state"] in ("building", "swapping"):
            time.sleep(0.5)
            status = admin.call("GET", "/admin/rebuild")
            bar.total = max(status["total"], status["read"])
            bar.update(status["read"] - seen)
            seen = status["read"]
    if args.json:
        print(json.dumps(status))
    elif status["state"] == "done":
        print(f"rebuilt from {status['read']:,} event(s) and installed; rows re-stamped because they differ: "
              f"{status['restamped']}")
    if status["state"] != "done":
        raise ReplayError(f"the rebuild {status['state']}: {status['error']}; the live store is unchanged")
    return 0
