"""``feedstore replay``: re-read the topics from an earlier point (docs/operations.md).

Like ``kafka-consumer-groups --reset-offsets``: a target (``--to-datetime``,
``--by-duration``, ``--to-earliest``, ``--to-offset``, ``--shift-by``) for some topics
(``--topic name[:0,1]``, ``--feed``) or all mapped ones. It prints the plan (per
partition: current offset, target, events to re-read) and changes nothing unless
``--execute`` is given.

Offline (default; the service is stopped): the stored offsets are rewound in the
DuckDB file, in one transaction; ``serve`` re-reads from there when it starts, or
``--run-now`` re-reads right away with a progress bar (Ctrl-C stops after the current
batch; the store stays consistent and the rest is read by the next start).
Online (``--online``; the service runs): the plan goes to the service's admin endpoint
(FEEDSTORE_ADMIN_URL, FEEDSTORE_ADMIN_TOKEN), its consumer rewinds between two batches,
and the command follows the progress until the service is back where it was.

Replayed events that change nothing do not touch ``modified_at``; ``--resend``
re-stamps every row they touch, so the CRM receives those rows again in its next window.

Exit status: 0 done (or dry run), 2 the request cannot be honoured (nothing changed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cdc.replay import TP, Plan, ReplayError
from feedstore.config import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="re-read the topics from an earlier point (plan first; --execute applies)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    to = p.add_argument_group("target (exactly one)")
    to.add_argument("--to-datetime", metavar="'YYYY-MM-DD HH:MM:SS'", help="first event at or after this UTC time")
    to.add_argument("--by-duration", metavar="PnDTnHnM", help="back this long from now (ISO-8601, e.g. PT6H, P1D)")
    to.add_argument("--to-earliest", action="store_true", help="the oldest event the topics still hold")
    to.add_argument("--to-offset", type=int, metavar="N", help="this offset in every chosen partition")
    to.add_argument("--shift-by", type=int, metavar="-N", help="N events back from the stored offset")
    p.add_argument("--topic", action="append", default=[], metavar="name[:0,1,3]", help="repeatable; default all")
    p.add_argument("--feed", action="append", default=[], help="the topic feeding this feed (repeatable)")
    run = p.add_mutually_exclusive_group()
    run.add_argument("--dry-run", action="store_true", help="print the plan only (the default)")
    run.add_argument("--execute", action="store_true", help="apply the plan")
    p.add_argument("--resend", action="store_true", help="re-stamp every row the replayed events touch")
    p.add_argument("--run-now", action="store_true", help="offline: re-read at once, with a progress bar")
    p.add_argument("--online", action="store_true", help="ask the running service (its admin endpoint)")
    p.add_argument("--url", help="the service's base URL (default FEEDSTORE_ADMIN_URL or http://FEEDSTORE_BIND)")
    p.add_argument("--no-wait", action="store_true", help="online: return once the service has rewound")
    p.add_argument("--db", type=Path, help="the DuckDB file (default FEEDSTORE_DB)")
    p.add_argument("--mapping", type=Path, help="the mapping file (default FEEDSTORE_MAPPING)")
    p.add_argument("--json", action="store_true", help="print the plan and the outcome as JSON")
    p.set_defaults(func=run_replay)


def run_replay(args: argparse.Namespace) -> int:
    from cdc import replay as rp
    from materializer.mapping import load_mapping

    settings = Settings.from_env()
    mapping = load_mapping(args.mapping or settings.mapping_path)
    if args.run_now and (args.online or not args.execute):
        raise ReplayError("--run-now goes with --execute, offline (online the service re-reads by itself)")
    target = rp.target_from(to_datetime=args.to_datetime, by_duration=args.by_duration,
                            to_earliest=args.to_earliest, to_offset=args.to_offset, shift_by=args.shift_by,
                            now=datetime.now(UTC))
    feed_topics = {name: fm.source.topic for name, fm in mapping.feeds.items()}
    chosen = rp.select(mapping.topics, args.topic, args.feed, feed_topics)
    admin = _Admin(args.url or settings.admin_url or f"http://{settings.bind}", settings.admin_token)
    path = args.db or settings.db_path
    stored = admin.stored() if args.online else _stored_offline(path)
    client = _kafka(settings)
    try:
        bounds = rp.gather(client, mapping.topics, target.value if target.kind == "time" else None)
    finally:
        client.close()
    plan = rp.make_plan(target, chosen, stored, bounds, named=[rp.parse_topic(t)[0] for t in args.topic])
    _print_plan(plan, args)
    if not args.execute:
        _out(args, plan.as_json(), "\ndry run: nothing changed; add --execute to apply")
        return 0
    if not plan.moves:
        _out(args, {"plan": plan.as_json(), "applied": 0}, "nothing to re-read; nothing changed")
        return 0
    if args.online:
        return _online(admin, plan, args)
    return _offline(path, mapping, settings, plan, bounds, args)


def _kafka(settings: Settings) -> Any:
    from kafka.errors import KafkaError

    from cdc.consumer import kafka_consumer

    try:
        return kafka_consumer(settings.kafka_bootstrap, f"{settings.group_id}-replay-plan")
    except KafkaError as ex:
        raise ReplayError(f"cannot reach Kafka at {settings.kafka_bootstrap} ({ex}); set "
                          "FEEDSTORE_KAFKA_BOOTSTRAP") from ex


def _stored_offline(path: Path) -> dict[TP, int]:
    import duckdb

    if not path.exists():
        raise ReplayError(f"{path} does not exist; set FEEDSTORE_DB or pass --db")
    try:
        conn = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as ex:
        raise ReplayError(f"cannot open {path}: {str(ex).strip().splitlines()[0]}. If `feedstore serve` runs on it, "
                          "replay through the service: add --online (FEEDSTORE_ADMIN_TOKEN must be set for both)"
                          ) from ex
    try:
        rows = conn.execute("SELECT topic, kafka_partition, next_offset FROM fs_offsets").fetchall()
    finally:
        conn.close()
    return {(t, p): o for t, p, o in rows}


def _print_plan(plan: Plan, args: argparse.Namespace) -> None:
    if args.json:
        return
    print(f"replay to {plan.target.describe()}" + (" with --resend" if args.resend else ""))
    print(plan.table())
    print(f"\n{plan.events:,} event(s) to re-read in {len(plan.moves)} partition(s)")


def _out(args: argparse.Namespace, doc: dict[str, Any], text: str) -> None:
    print(json.dumps(doc) if args.json else text)


def _offline(path: Path, mapping: Any, settings: Settings, plan: Plan, bounds: Any, args: argparse.Namespace) -> int:
    from materializer import StoreError
    from materializer.apply import Materializer
    from materializer.rebuild import catch_up
    from materializer.replay import rewind
    from materializer.store import Store

    try:
        store = Store(path, mapping)
    except StoreError as ex:
        raise ReplayError(f"{ex}; while it runs, replay through it: add --online") from ex
    try:
        rewind(store, plan.moves, plan.until, resend=args.resend)
        doc: dict[str, Any] = {"plan": plan.as_json(), "applied": plan.events, "resend": args.resend}
        if not args.run_now:
            _out(args, doc, f"rewound {len(plan.moves)} partition(s); `feedstore serve` re-reads "
                            f"{plan.events:,} event(s) from there when it starts (or add --run-now)")
            return 0
        ends = {tp: b.end for tp, b in bounds.items()}
        client = _kafka_reader(settings)
        stop = threading.Event()
        old = signal.signal(signal.SIGINT, lambda *_: stop.set()) if _main_thread() else None
        try:
            with _bar(sum(max(0, e - store.offsets().get(tp, 0)) for tp, e in ends.items()), args) as bar:
                read = catch_up(Materializer(store, max_event_bytes=settings.max_event_bytes), client,
                                mapping.topics, ends, progress=bar.update, stop=stop)
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)
            client.close()
        doc["read"] = read
        doc["interrupted"] = stop.is_set()
        _out(args, doc, f"re-read {read:,} event(s)" + (
            "; interrupted: the store is consistent and `feedstore serve` reads the rest" if stop.is_set() else ""))
        return 0
    finally:
        store.close()


def _kafka_reader(settings: Settings) -> Any:
    from cdc.consumer import kafka_consumer

    return kafka_consumer(settings.kafka_bootstrap, f"{settings.group_id}-replay")


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _bar(total: int, args: argparse.Namespace) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="ev", unit_scale=True, disable=args.json or None, file=sys.stderr,
                desc="replay")


def _online(admin: _Admin, plan: Plan, args: argparse.Namespace) -> int:
    answer = admin.replay(plan.moves, args.resend)
    until = {(a["topic"], a["partition"]): a["from"] for a in answer["applied"]}
    doc = {"plan": plan.as_json(), "applied": answer["events"], "resend": args.resend, "partitions": answer["applied"]}
    if args.no_wait:
        _out(args, doc, f"the service rewound {len(until)} partition(s); {answer['events']:,} event(s) to re-read")
        return 0
    done_before = 0
    try:
        with _bar(answer["events"], args) as bar:
            while True:
                stored = admin.stored()
                left = sum(max(0, end - stored.get(tp, 0)) for tp, end in until.items())
                bar.update(answer["events"] - left - done_before)
                done_before = answer["events"] - left
                if left == 0:
                    break
                time.sleep(0.5)
    except KeyboardInterrupt:  # only the following stops; the service goes on re-reading
        print("stopped following; the service continues the replay (GET /admin/offsets shows where it is)",
              file=sys.stderr)
        return 130
    _out(args, doc, f"the service re-read {answer['events']:,} event(s)")
    return 0


class _Admin:
    """The running service's /admin endpoints (api/admin.py)."""

    def __init__(self, url: str, token: str) -> None:
        if not url.startswith(("http://", "https://")):
            raise ReplayError(f"admin URL {url!r}: expected http://host:port or https://host:port")
        self.url = url.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body: Any = None) -> Any:
        if not self.token:
            raise ReplayError("--online needs FEEDSTORE_ADMIN_TOKEN (the same value the service runs with)")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method,  # noqa: S310 - checked http(s)
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - http(s) only, see __init__
                return json.loads(resp.read())
        except urllib.error.HTTPError as ex:
            detail = ex.read().decode(errors="replace")
            with contextlib.suppress(ValueError, AttributeError):
                detail = json.loads(detail).get("description") or detail
            hint = " (check FEEDSTORE_ADMIN_TOKEN)" if ex.code == 401 else (
                " (the service has no FEEDSTORE_ADMIN_TOKEN: its admin endpoint is off)" if ex.code == 404 else "")
            raise ReplayError(f"{self.url}{path}: HTTP {ex.code}: {detail}{hint}") from ex
        except (urllib.error.URLError, OSError) as ex:
            raise ReplayError(f"cannot reach the service at {self.url} ({ex}); is `feedstore serve` running? "
                              "set FEEDSTORE_ADMIN_URL or --url") from ex

    def stored(self) -> dict[TP, int]:
        return {(t, p): o for t, p, o in self.call("GET", "/admin/offsets")["stored"]}

    def replay(self, moves: dict[TP, int], resend: bool) -> Any:
        return self.call("POST", "/admin/replay",
                          {"offsets": [[t, p, o] for (t, p), o in sorted(moves.items())], "resend": resend})
