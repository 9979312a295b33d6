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

import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from cdc.consumer import BatchPolicy, Consumer
from materializer.apply import Materializer
from materializer.stamp import TICK, utc_now
from materializer.store import POS, q, table_name

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
