"""Read the topics into a store up to a given end, offline: ``replay --run-now`` and ``rebuild``.

Each batch goes through the real :class:`Materializer`, one transaction with its
offsets, so stopping between two batches (Ctrl-C sets ``stop``) always leaves a
consistent store that the service, or the next run, continues from.

``carry_stamps`` is what makes a rebuilt file a drop-in for the live one: every row
whose feed content is the same in both keeps the live ``modified_at``, so the CRM
sees only the rows that really differ (a fixed mapping's corrections), not the whole
store again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from cdc.consumer import BatchPolicy, Consumer
from materializer import StoreError, casino
from materializer.apply import Materializer
from materializer.stamp import TICK, utc_now
from materializer.store import POS, Store, q, table_name

log = logging.getLogger("feedstore.rebuild")

TP = tuple[str, int]


def catch_up(materializer: Materializer, client: Any, topics: Iterable[str], ends: Mapping[TP, int], *,
             progress: Callable[[int], None] = lambda n: None, stop: threading.Event | None = None,
             policy: BatchPolicy | None = None) -> int:
    """Apply batches until every partition in ``ends`` is stored at least that far; the events read."""
    store = materializer.store
    consumer = Consumer(client, list(topics), store.offsets(), lambda recs, offs: None, policy)
    consumer.discover()
    read = 0
    stop = stop or threading.Event()
    while not stop.is_set() and any(consumer.stored.get(tp, 0) < end for tp, end in ends.items()):
        records = consumer.poll_batch()
        if not records:
            continue
        offsets: dict[TP, int] = {}
        for r in records:
            offsets[(r.topic, r.partition)] = r.offset + 1
        materializer.apply(records, offsets)
        consumer.stored.update(offsets)
        read += len(records)
        progress(len(records))
    return read


def carry_stamps(materializer: Materializer, live: Path) -> dict[str, int]:
    """Give rows whose content equals the live file's row the live stamp; rows carried per feed.

    Every other row (new, or different: what the rebuild corrected) gets one fresh stamp
    after everything the live file may have served (its ``closed_until`` and last stamp),
    so the CRM's next window has it; a rebuild stamp from while the live file kept serving
    could fall into a window that was already pulled.
    """
    store = materializer.store
    carried: dict[str, int] = {}
    with store.writer() as cur:
        cur.execute(f"ATTACH {_lit(str(live))} AS live (READ_ONLY)")
        try:
            served = [datetime.fromisoformat(v) for _, v in cur.execute(
                "SELECT name, value FROM live.fs_meta WHERE name IN ('closed_until', 'last_stamp') UNION ALL "
                "SELECT name, value FROM fs_meta WHERE name = 'last_stamp'").fetchall()]
            fresh = max([utc_now(), *(t + TICK for t in served)])
            cur.begin()
            for name, fm in store.mapping.feeds.items():
                feed, t = fm.feed, table_name(fm.feed)
                on = " AND ".join(f"l.{q(k)} = {t}.{q(k)}" for k in feed.key)
                same = " AND ".join(f"l.{q(f.name)} IS NOT DISTINCT FROM {t}.{q(f.name)}"
                                    for f in feed.fields if f.name != feed.stamp)
                cur.execute(f"UPDATE {t} SET {q(feed.stamp)} = $fresh WHERE NOT EXISTS "
                            f"(SELECT 1 FROM live.{t} l WHERE {on} AND {same})", {"fresh": fresh}).fetchall()
                n = cur.execute(
                    f"UPDATE {t} SET {q(feed.stamp)} = l.{q(feed.stamp)} FROM live.{t} l WHERE {on} AND {same}"
                ).fetchall()
                carried[name] = int(n[0][0]) if n else 0
            casino.carry_stamps(cur, store.mapping, fresh)  # its windows come from its touches, carried too
            cur.execute("INSERT OR REPLACE INTO fs_meta VALUES ('last_stamp', ?)", [fresh.isoformat()])
            # The live file's fence: no stamp may land in a window it already served.
            cur.execute("INSERT OR REPLACE INTO fs_meta SELECT name, value FROM live.fs_meta "
                        "WHERE name = 'closed_until'")
            cur.commit()
        finally:
            cur.execute("DETACH live")
    return carried


def feed_rows(cur: Any, table: str) -> list[tuple[Any, ...]]:
    """A feed table's rows in key order without the source position, for comparisons."""
    cols = [r[0] for r in cur.execute(f"DESCRIBE {table}").fetchall() if r[0] != POS]
    return cur.execute(f"SELECT {', '.join(q(c) for c in cols)} FROM {table} ORDER BY ALL").fetchall()


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# --------------------------------------------------------------------------- online (inside `serve`)

KEEP = {"fs_meta", "fs_quarantine", "fs_field_errors"}  # the live file's history, not replaced by a rebuild


def adopt(store: Store, rebuilt: Path) -> dict[str, int]:
    """Make the live store's rows and offsets the rebuilt file's, in one transaction.

    Run in the writer's turn (the service's consumer thread, between batches): readers
    see the old rows or the new ones, never a mix. Rows whose content is unchanged keep
    their live stamp; the others get this batch's stamp, so exactly they reach the
    CRM's next window. Answers the rows re-stamped per feed.
    """
    feeds = {table_name(fm.feed): fm.feed for fm in store.mapping.feeds.values()}
    stamped: dict[str, int] = {}
    with store.writer() as cur, store.stamper.batch() as stamp:
        cur.execute(f"ATTACH {_lit(str(rebuilt))} AS nb (READ_ONLY)")
        try:
            tables = [r[0] for r in cur.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = 'nb' "
                                                "AND NOT temporary").fetchall()]
            cur.begin()
            touches = casino.final_touches(cur, store.mapping, stamp, live="main", rebuilt="nb")  # before the copy
            for t in tables:
                if t in KEEP:
                    continue
                feed = feeds.get(t)
                if feed is None:  # offsets, casino state: taken as rebuilt
                    cur.execute(f"DELETE FROM main.{q(t)}")
                    cur.execute(f"INSERT INTO main.{q(t)} BY NAME SELECT * FROM nb.{q(t)}")
                    continue
                on = " AND ".join(f"l.{q(k)} = n.{q(k)}" for k in feed.key)
                same = " AND ".join(f"l.{q(f.name)} IS NOT DISTINCT FROM n.{q(f.name)}"
                                    for f in feed.fields if f.name != feed.stamp)
                st = q(feed.stamp)
                cur.execute(
                    f"CREATE OR REPLACE TEMP TABLE fs_rebuilt AS SELECT n.* REPLACE (CASE WHEN l.{q(feed.key[0])} "
                    f"IS NOT NULL AND {same} THEN l.{st} ELSE $stamp END AS {st}) "
                    f"FROM nb.{t} n LEFT JOIN main.{t} l ON {on}", {"stamp": stamp})
                stamped[feed.name] = int(cur.execute(f"SELECT count(*) FROM fs_rebuilt WHERE {st} = $stamp",
                                                     {"stamp": stamp}).fetchall()[0][0])
                cur.execute(f"DELETE FROM main.{t}")
                cur.execute(f"INSERT INTO main.{t} BY NAME SELECT * FROM fs_rebuilt")
            cur.execute("DROP TABLE IF EXISTS fs_rebuilt")
            if touches:  # casino_activity's windows come from its touches: carried like the stamps
                casino.install_touches(cur)
            cur.execute("DELETE FROM fs_meta WHERE name = 'resend_until'")
            cur.execute("INSERT OR REPLACE INTO fs_meta VALUES ('last_stamp', ?)", [stamp.isoformat()])
            cur.commit()
        except duckdb.Error as ex:
            with suppress(duckdb.Error):
                cur.rollback()
            raise StoreError(f"installing the rebuilt rows from {rebuilt} failed: {ex}; the live rows are "
                             "unchanged") from ex
        finally:
            with suppress(duckdb.Error):
                cur.execute("DETACH nb")
    return stamped


class Rebuild:
    """``POST /admin/rebuild``: build ``<db>.rebuild`` in a thread of the serving process,
    then install it between two batches of the live consumer.

    The build has its own Store, Materializer and Kafka client and reads from the
    beginning until it is within ``swap_gap`` events of the live offsets; the live
    consumer then pauses for the swap (its last few events are read into the build,
    :func:`adopt` copies the rows over, the consumer continues from the build's offsets).
    """

    def __init__(self, live: Store, consumer: Consumer, materializer: Materializer, client: Callable[[], Any],
                 *, max_event_bytes: int | None = None, swap_gap: int = 1_000) -> None:
        self.live = live
        self.consumer = consumer
        self.materializer = materializer
        self.client = client
        self.max_event_bytes = max_event_bytes
        self.swap_gap = swap_gap
        self.path = live.path.with_name(live.path.name + ".rebuild")
        self.state = "building"
        self.read = 0
        self.total = 0
        self.error: str | None = None
        self.stamped: dict[str, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="feedstore-rebuild", daemon=True)

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "read": self.read, "total": self.total, "error": self.error,
                "restamped": self.stamped, "file": str(self.path)}

    def _progress(self, n: int) -> None:
        self.read += n

    def _run(self) -> None:
        for stale in (self.path, self.path.with_name(self.path.name + ".wal")):
            stale.unlink(missing_ok=True)
        mapping = self.live.mapping
        store: Store | None = None
        client = self.client()
        try:
            store = Store(self.path, mapping)
            mat = Materializer(store, max_event_bytes=self.max_event_bytes)
            while not self.stop.is_set():
                ends = dict(self.consumer.stored)
                have = store.offsets()
                gap = sum(max(0, e - have.get(tp, 0)) for tp, e in ends.items())
                self.total = self.read + gap
                if gap <= self.swap_gap:
                    break
                catch_up(mat, client, mapping.topics, ends, progress=self._progress, stop=self.stop)
            if self.stop.is_set():
                self.state = "stopped"
                return
            self.state = "swapping"
            built = store

            def swap() -> dict[TP, int]:  # in the live consumer's thread, between two batches
                catch_up(mat, client, mapping.topics, dict(self.consumer.stored), progress=self._progress)
                offsets = built.offsets()
                built.close()
                self.stamped = adopt(self.live, self.path)
                self.materializer.reload_resend()
                return offsets

            self.consumer.request_seek({}, swap).result()
            store = None
            self.state = "done"
            self.path.unlink(missing_ok=True)
            log.info("rebuild installed", extra={"events": self.read, "restamped": self.stamped})
        except Exception as ex:  # reported through GET /admin/rebuild; serving goes on
            self.state = "failed"
            self.error = str(ex)
            log.exception("rebuild failed; the live store is unchanged")
        finally:
            client.close()
            if store is not None:
                with suppress(Exception):
                    store.close()
