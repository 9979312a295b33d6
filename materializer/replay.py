"""The store's side of a replay: rewind the stored offsets, and remember what to resend.

A replay is one transaction on ``fs_offsets`` (decision 4: the offsets live with the
rows), so the next batch, or the next start, reads from the new position; nothing else
changes, and the per-key source positions make the re-read events harmless (decision 3).

With ``--resend`` the replayed range must re-stamp every row its events touch, even
when nothing changed, so the CRM receives them again. The range is kept in ``fs_meta``
(``resend_until``: per partition, the offset the replay started from) in the same
transaction as the rewind; the materializer re-stamps rows touched by events below it
and shrinks it as the batches pass, in each batch's own transaction. A crash or a
restart in the middle therefore resumes the resend where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import duckdb

from materializer import StoreError
from materializer.store import Store, save_offsets

TP = tuple[str, int]
RESEND = "resend_until"


def rewind(store: Store, moves: Mapping[TP, int], until: Mapping[TP, int], *, resend: bool) -> None:
    """Move the stored offsets back to ``moves``; with ``resend``, mark ``[move, until)`` for re-stamping."""
    if not moves:
        return
    with store.writer() as cur:
        try:
            cur.begin()
            save_offsets(cur, dict(moves))
            if resend:
                merged = load_resend(cur)
                for tp, end in until.items():
                    merged[tp] = max(end, merged.get(tp, 0))
                save_resend(cur, merged)
            cur.commit()
        except duckdb.Error as ex:
            cur.rollback()
            raise StoreError(f"rewinding the offsets in {store.path} failed: {ex}; nothing was changed") from ex


def load_resend(cur: duckdb.DuckDBPyConnection) -> dict[TP, int]:
    rows = cur.execute("SELECT value FROM fs_meta WHERE name = ?", [RESEND]).fetchall()
    if not rows:
        return {}
    return {(t, int(p)): int(o) for t, p, o in json.loads(rows[0][0])}


def save_resend(cur: duckdb.DuckDBPyConnection, until: Mapping[TP, int]) -> None:
    if until:
        cur.execute("INSERT OR REPLACE INTO fs_meta VALUES (?, ?)",
                    [RESEND, json.dumps(sorted([t, p, o] for (t, p), o in until.items()))])
    else:
        cur.execute("DELETE FROM fs_meta WHERE name = ?", [RESEND])


def remaining(until: Mapping[TP, int], next_offsets: Mapping[TP, int]) -> dict[TP, int]:
    """What is still to resend once a batch has moved the offsets to ``next_offsets``."""
    return {tp: end for tp, end in until.items() if next_offsets.get(tp, -1) < end}


def read_resend(store: Store) -> dict[TP, int]:
    with store.cursor() as cur:
        return load_resend(cur)
