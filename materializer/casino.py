"""Casino game activity: game actions stored one row each, sessions kept aggregated.

The spec's three steps (ARCHITECTURE.md decision 7), as tables:

- ``fs_casino_actions`` holds one row per action key: its session, its contribution
  (bets, wins, amounts), its own time, the descriptive columns, the source position of
  the last applied event (decision 3, so replays are skipped) and the stamp of its last
  change. A deleted action stays as a tombstone (``deleted``, contributing nothing) that
  keeps its position, so an older event replayed after the delete cannot revive it.
- ``fs_casino_touches`` logs (stamp, session) for every batch in which an action of the
  session entered the store or changed: an insert, an update that changed what the
  feed sees, a delete. Append-only, so it is in stamp order and a window's scan of it
  skips everything outside the window (DuckDB's zone maps).
- ``feed_casino_activity`` (the feed's own table) holds one row per session, aggregated
  over all its actions. Each batch recomputes only the sessions it touched, from the
  actions table, set-based; ``modified_at`` is the latest stamp among its actions.

A pull of ``[from, to)`` returns the session rows with a touch stamped in ``[from, to)``
(step 1), each aggregated over all its actions known now (steps 2 and 3). Not "session
stamp in window": a session whose last action came after ``to`` must still appear in
every window in which one of its actions landed, and it keeps appearing there when the
window is pulled again later.

Why maintained per batch and not aggregated per pull: docs/casino.md has the
measurement (bench/casino.py). Both lookups a batch needs (its action keys among all
actions, and all actions of its sessions) are hash joins on 64-bit hashes of the keys,
so a batch scans two integer columns of the actions table, never its strings.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from datetime import datetime

import duckdb

from materializer.casino_mapping import FEED, INPUTS, ActionsMapping
from materializer.mapping import Mapping
from materializer.store import POS, Store, q, scalar, table_name
from materializer.validate import STORE_TYPES, check, lit, vocab_lookups
from schemas import Feed, Field

log = logging.getLogger("feedstore.materializer.casino")

ACTIONS = "fs_casino_actions"
TOUCHES = "fs_casino_touches"

# Per-action columns besides the descriptive feed fields (in their order after these).
_CORE = (("kh", "UBIGINT NOT NULL"), ("action_key", "VARCHAR NOT NULL"), ("sh", "UBIGINT NOT NULL"),
         ("session_id", "VARCHAR NOT NULL"), ("stamp", "TIMESTAMP NOT NULL"), (POS, "BIGINT"),
         ("deleted", "BOOLEAN NOT NULL"), ("bets", "BIGINT NOT NULL"), ("wins", "BIGINT NOT NULL"),
         ("bet_amount", "DECIMAL(38,8) NOT NULL"), ("win_amount", "DECIMAL(38,8) NOT NULL"),
         ("acted_at", "TIMESTAMP NOT NULL"))
# What an action's content is: a change to any of these re-stamps it (decision 3).
_CONTENT = ("session_id", "bets", "wins", "bet_amount", "win_amount", "acted_at")
_I, _OP, _POS = "__fs_i", "__fs_op", "__fs_pos"
# The session columns that are sums over its actions; with the times, its numbers.
_SUMS = ("bet_count", "win_count", "bet_amount", "win_amount")
_NUMERIC = (*_SUMS, "created_at", "updated_at")
_EXAMPLE_CHARS = 200
# The casino writer's own columns on the session table (after the store's): the session
# key's hash, what a batch finds its sessions by; and a lower bound of its actions'
# stamps (the first batch's), which limits the scan for all of a session's actions to
# the row groups since then (the actions table is in stamp order).
SH, FIRST = "_fs_sh", "_fs_first"


def key_hash(sql: str) -> str:
    """The 64-bit lookup value of an action key: the number itself for keys that are
    decimal integers (ids from a sequence, the usual case), else a hash with the top
    bit set, so the two kinds never meet.

    Why not always a hash: ids grow with time and the table is in stamp order, so the
    lookup of a batch's keys, mostly new or recent, is pruned by DuckDB's zone maps to
    the table's last row groups instead of scanning every row.
    """
    return (f"CASE WHEN length({sql}) BETWEEN 1 AND 18 AND regexp_full_match({sql}, '[0-9]+') "
            f"THEN CAST({sql} AS UBIGINT) ELSE hash({sql}) | CAST(9223372036854775808 AS UBIGINT) END")


def actions_mapping(mapping: Mapping) -> ActionsMapping | None:
    found = [fm for fm in mapping.feeds.values() if isinstance(fm, ActionsMapping)]
    return found[0] if found else None


def _extra(am: ActionsMapping) -> list[Field]:
    """Descriptive fields other than the session key, stored per action."""
    return [f for f in am.descriptive if f.name != "session_id"]


def _columns(am: ActionsMapping) -> list[str]:
    return [name for name, _ in _CORE] + [f.name for f in _extra(am)]


def ensure_schema(store: Store) -> None:
    """Create the actions table when the mapping has a casino feed (idempotent).

    The session table is the feed's own table, which the store creates.
    """
    am = actions_mapping(store.mapping)
    if am is None:
        return
    cols = [f"{q(n)} {t}" for n, t in _CORE] + [f"{q(f.name)} {STORE_TYPES[f.type]}" for f in _extra(am)]
    t = table_name(am.feed)
    with store.writer() as cur:
        cur.execute(f"CREATE TABLE IF NOT EXISTS {ACTIONS} ({', '.join(cols)})")
        cur.execute(f"CREATE TABLE IF NOT EXISTS {TOUCHES} (stamp TIMESTAMP NOT NULL, session_id VARCHAR NOT NULL)")
        cur.execute(f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {SH} UBIGINT")
        cur.execute(f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {FIRST} TIMESTAMP")
        cur.execute(f"UPDATE {t} SET {SH} = hash(session_id) WHERE {SH} IS NULL")


def window_filter(alias: str) -> str:
    """Step 1 for a pull: the session rows (``alias`` names the feed table) with at least
    one action stamped in ``[$start, $end)``."""
    return (f"{alias}.session_id IN (SELECT session_id FROM {TOUCHES} "
            f"WHERE stamp >= $start AND stamp < $end)")


def window_select(feed: Feed, select: str, alias: str) -> str:
    """``select`` (over the feed table as ``alias``) for the window's sessions, oldest
    change first, as the other feeds are ordered."""
    order = ", ".join(f"{alias}.{q(c)}" for c in (feed.stamp, *feed.key))
    return f"SELECT {select} FROM {table_name(feed)} {alias} WHERE {window_filter(alias)} ORDER BY {order}"


#: The export's plan of runs for this feed: one run, the window itself. Its rows are not
#: a stamp range of the session table (a session's modified_at may lie after ``to``),
#: so the window is sorted whole: ~60 bytes per session, a few MB for an hour.
RUNS_SQL = "SELECT CAST($start AS TIMESTAMP), CAST($end AS TIMESTAMP) WHERE $rows > 0"


def carry_stamps(cur: duckdb.DuckDBPyConnection, mapping: Mapping, fresh: datetime, live: str = "live") -> None:
    """``feedstore rebuild``'s last step for this feed (materializer/rebuild.py; the new
    file is ``main``, the live one attached as ``live``): the windows a session appears in
    come from its touches, so those are carried like the other feeds' stamps."""
    am = actions_mapping(mapping)
    if am is None or not final_touches(cur, mapping, fresh, live=live, rebuilt="main"):
        return
    t = table_name(am.feed)
    cur.execute(f"UPDATE {t} SET {FIRST} = s.first FROM (SELECT l.session_id, l.{FIRST} AS first "
                f"FROM {live}.{t} l JOIN fs_cas_same USING (session_id)) s WHERE {t}.session_id = s.session_id")
    install_touches(cur)


def final_touches(cur: duckdb.DuckDBPyConnection, mapping: Mapping, stamp: datetime, *, live: str,
                  rebuilt: str) -> bool:
    """For installing a rebuilt store (schemas ``live`` and ``rebuilt``): the touches it
    must have, into temp table ``fs_cas_touches``. Sessions whose rebuilt row equals the
    live one keep their live touches, so they stay in the windows they were in; every
    other session gets one touch at ``stamp``, the stamp its rebuilt row gets, so
    exactly what the rebuild changed reaches the CRM's next window. False: no casino feed."""
    am = actions_mapping(mapping)
    if am is None:
        return False
    t = table_name(am.feed)
    same = " AND ".join(f"l.{q(f.name)} IS NOT DISTINCT FROM r.{q(f.name)}"
                        for f in am.feed.fields if f.name != am.feed.stamp)
    cur.execute(f"CREATE OR REPLACE TEMP TABLE fs_cas_same AS SELECT r.session_id FROM {rebuilt}.{t} r "
                f"JOIN {live}.{t} l USING (session_id) WHERE {same}")
    cur.execute(f"CREATE OR REPLACE TEMP TABLE fs_cas_touches AS SELECT stamp, session_id FROM {live}.{TOUCHES} "
                "WHERE session_id IN (SELECT session_id FROM fs_cas_same) UNION ALL "
                f"SELECT $stamp, session_id FROM {rebuilt}.{t} WHERE session_id NOT IN "
                "(SELECT session_id FROM fs_cas_same)", {"stamp": stamp})
    return True


def install_touches(cur: duckdb.DuckDBPyConnection) -> None:
    """Replace the store's touches with ``fs_cas_touches`` (see :func:`final_touches`)."""
    cur.execute(f"DELETE FROM main.{TOUCHES}")
    cur.execute(f"INSERT INTO main.{TOUCHES} SELECT stamp, session_id FROM fs_cas_touches ORDER BY stamp")


# --------------------------------------------------------------------------- one batch

def apply_actions(cur: duckdb.DuckDBPyConnection, am: ActionsMapping, stamp: datetime,
                  changed: MutableMapping[str, int], invalid: MutableMapping[str, int],
                  resend: bool = False) -> list[tuple[int, str]]:
    """Apply the staged events (``fs_stage``) of the actions table; returns rejects as
    (event index, reason). Runs inside the batch's transaction, with its stamp.

    ``resend`` (``feedstore replay --resend``): table ``fs_resend`` lists the events whose
    sessions must reach the CRM again, changed or not.
    """
    feed = am.feed.name
    cur.execute(f"CREATE OR REPLACE TEMP TABLE fs_cas_m AS {_map_sql(am)}")
    rejects = [(i, f"feed {feed}: {reason}") for i, reason in cur.execute(
        f"SELECT {_I}, __fs_missing FROM fs_cas_m WHERE __fs_missing IS NOT NULL ORDER BY {_I}").fetchall()]
    ops = "" if am.on_delete == "remove" else f"AND {_OP} <> 'd'"
    cols = _columns(am)
    new = {c: f"m.{q(c)}" for c in cols} | {"stamp": "$stamp", POS: f"m.{_POS}", "deleted": "FALSE"}
    gone = {c: f"o.{q(c)}" for c in cols} | {"stamp": "$stamp", POS: f"m.{_POS}", "deleted": "TRUE"}
    differs = " OR ".join(f"m.{q(c)} IS DISTINCT FROM o.{q(c)}" for c in [*_CONTENT, *(f.name for f in _extra(am))])

    def select(values: dict[str, str]) -> str:
        return ", ".join(f"{values[c]} AS {q(c)}" for c in cols)

    # The stored rows of the batch's keys (looked up for every event: a superset does
    # no harm), the newest valid event per key, and what each key's row becomes.
    _fetch(cur, "fs_cas_old", "kh", "fs_cas_m", "action_key")
    _count_invalid(cur, am, stamp, invalid)
    moved = scalar(  # CREATE TABLE AS answers its row count
        cur,
        "CREATE OR REPLACE TEMP TABLE fs_cas_new AS "
        f"WITH latest AS (SELECT * FROM fs_cas_m WHERE {_I} IN (SELECT arg_max({_I}, ({_POS}::HUGEINT << 32) + {_I}) "
        f"FROM fs_cas_m WHERE __fs_missing IS NULL {ops} GROUP BY action_key)), old AS (SELECT * FROM fs_cas_old) "
        f"SELECT o.__fs_rid, o.session_id AS __fs_old_session, {select(new)} "
        "FROM latest m LEFT JOIN old o ON o.action_key = m.action_key "
        f"WHERE m.{_OP} <> 'd' AND (o.__fs_rid IS NULL OR (m.{_POS} >= o.{POS} AND (o.deleted OR {differs}))) "
        "UNION ALL "
        f"SELECT o.__fs_rid, o.session_id, {select(gone)} "
        "FROM latest m JOIN old o ON o.action_key = m.action_key "
        f"WHERE m.{_OP} = 'd' AND m.{_POS} >= o.{POS} AND NOT o.deleted",
        {"stamp": stamp})
    if moved:
        # Delete and re-append rather than update in place: the table stays in stamp
        # order, so a window's scan of the stamp column skips old row groups.
        cur.execute(f"DELETE FROM {ACTIONS} WHERE rowid IN "
                    "(SELECT __fs_rid FROM fs_cas_new WHERE __fs_rid IS NOT NULL)")
        names = ", ".join(q(c) for c in cols)
        cur.execute(f"INSERT INTO {ACTIONS} ({names}) SELECT {names} FROM fs_cas_new")
        cur.execute(
            "CREATE OR REPLACE TEMP TABLE fs_cas_touched AS SELECT session_id, hash(session_id) AS sh FROM ("
            "SELECT session_id FROM fs_cas_new UNION "
            "SELECT __fs_old_session FROM fs_cas_new WHERE __fs_old_session IS NOT NULL)")
        changed[feed] += _update_sessions(cur, am.feed)
        cur.execute(f"INSERT INTO {TOUCHES} SELECT $stamp, session_id FROM fs_cas_touched", {"stamp": stamp})
    if resend:
        changed[feed] += _resend(cur, am.feed, stamp, bool(moved))
    return rejects


def _resend(cur: duckdb.DuckDBPyConnection, feed: Feed, stamp: datetime, touched: bool) -> int:
    """Stamp the stored actions of the resent events and their sessions with this batch's
    stamp, so the sessions are in the next window; returns the sessions not already
    written by this batch."""
    cur.execute(f"CREATE OR REPLACE TEMP TABLE fs_cas_rkeys AS SELECT DISTINCT m.kh, m.action_key FROM fs_cas_m m "
                f"JOIN fs_resend r ON m.{_I} = r.{_I} WHERE m.__fs_missing IS NULL OR m.{_OP} = 'd'")
    _fetch(cur, "fs_cas_rs", "kh", "fs_cas_rkeys", "action_key")
    cur.execute(f"UPDATE {ACTIONS} SET stamp = $stamp WHERE rowid IN (SELECT __fs_rid FROM fs_cas_rs) "
                "AND stamp <> $stamp", {"stamp": stamp})
    done = "SELECT session_id FROM fs_cas_touched" if touched else "SELECT NULL WHERE FALSE"
    cur.execute("CREATE OR REPLACE TEMP TABLE fs_cas_again AS SELECT DISTINCT session_id, hash(session_id) AS sh "
                f"FROM fs_cas_rs WHERE session_id NOT IN ({done})")
    t = table_name(feed)
    n = int(scalar(cur, f"UPDATE {t} SET {q(feed.stamp)} = $stamp WHERE {SH} IN (SELECT sh FROM fs_cas_again) "
                        "AND session_id IN (SELECT session_id FROM fs_cas_again)", {"stamp": stamp}))
    cur.execute(f"INSERT INTO {TOUCHES} SELECT $stamp, session_id FROM fs_cas_again", {"stamp": stamp})
    return n


def _update_sessions(cur: duckdb.DuckDBPyConnection, feed: Feed) -> int:
    """Bring the session rows of this batch's actions (``fs_cas_new``) up to date.

    Most sessions only gain new actions that are later than everything they had, in own
    time and source position: their row is the stored row plus the batch's actions
    (counts and sums added, updated_at moved, descriptive columns taken from the newest
    action that has a value), which needs neither their older actions nor a rewrite of
    their text columns. Every other touched session (an action changed, deleted or
    moved; a late action; a session whose actions were all deleted) is recomputed from
    all its actions and replaced (delete + insert). Rows are updated by rowid, text
    columns only where a value changes: measured at 1M sessions, updating every column
    of 2,000 rows cost ~6x the CPU of replacing them, and updating the numbers of
    18,000 rows by rowid ~4x less than through a key lookup.
    Returns the number of session rows written.
    """
    t = table_name(feed)
    # The stored rows of the touched sessions, fetched in two passes as in _fetch.
    cur.execute(f"CREATE OR REPLACE TEMP TABLE fs_cas_srids AS SELECT rowid AS rid FROM {t} "
                f"WHERE {SH} IN (SELECT sh FROM fs_cas_touched)")
    cur.execute(f"CREATE OR REPLACE TEMP TABLE fs_cas_state AS SELECT f.rowid AS __fs_rid, f.* FROM {t} f "
                "WHERE f.rowid IN (SELECT rid FROM fs_cas_srids) "
                "AND f.session_id IN (SELECT session_id FROM fs_cas_touched)")
    text = [f.name for f in feed.fields if f.name not in feed.key and f.name not in _NUMERIC and f.name != feed.stamp]
    # Changed actions that leave everything but the numbers as they were (an amount
    # corrected, a bet cancelled by a status): same session, own time and text, text
    # that the session row already shows; they count as their difference.
    same = " AND ".join(f"o.{q(n)} IS NOT DISTINCT FROM n.{q(n)} AND (n.{q(n)} IS NULL OR n.{q(n)} = s.{q(n)})"
                        for n in text)
    cur.execute(
        "CREATE OR REPLACE TEMP TABLE fs_cas_inplace AS SELECT n.__fs_rid FROM fs_cas_new n "
        "JOIN fs_cas_old o ON o.__fs_rid = n.__fs_rid JOIN fs_cas_state s ON s.session_id = n.session_id "
        f"WHERE NOT n.deleted AND NOT o.deleted AND o.session_id = n.session_id AND o.acted_at = n.acted_at "
        f"AND s.{POS} IS NOT NULL AND {same}")
    # Every other change of a stored action, and new actions not later than all their
    # session had (_fs_pos of a session row: the latest position among its live
    # actions; NULL when it has none), make the session's row be recomputed.
    redo = scalar(  # CREATE TABLE AS answers its row count
        cur,
        "CREATE OR REPLACE TEMP TABLE fs_cas_redo AS SELECT session_id, hash(session_id) AS sh FROM ("
        "SELECT session_id FROM fs_cas_new WHERE __fs_rid IS NOT NULL "
        "AND __fs_rid NOT IN (SELECT __fs_rid FROM fs_cas_inplace) UNION "
        "SELECT __fs_old_session FROM fs_cas_new WHERE __fs_rid IS NOT NULL "
        "AND __fs_rid NOT IN (SELECT __fs_rid FROM fs_cas_inplace) UNION "
        "SELECT n.session_id FROM fs_cas_new n JOIN fs_cas_state s USING (session_id) WHERE n.__fs_rid IS NULL "
        f"AND (s.{POS} IS NULL OR n.acted_at < s.updated_at OR (n.acted_at = s.updated_at AND n.{POS} <= s.{POS})))")
    changes = ("(SELECT * FROM fs_cas_new UNION ALL BY NAME SELECT o.* REPLACE ("
               + ", ".join(f"-o.{c} AS {c}" for c in ("bets", "wins", "bet_amount", "win_amount"))
               + ") FROM fs_cas_old o WHERE o.__fs_rid IN (SELECT __fs_rid FROM fs_cas_inplace))")
    cur.execute(f"CREATE OR REPLACE TEMP TABLE fs_cas_delta AS {_aggregate_sql(feed, changes)} "
                "HAVING a.session_id NOT IN (SELECT session_id FROM fs_cas_redo)")
    # Sessions extended: numbers always; text columns only where the newest value differs.
    later = {n: f"s.{q(n)} + d.{q(n)}" for n in _SUMS} | {
        "updated_at": "greatest(s.updated_at, d.updated_at)", feed.stamp: f"d.{q(feed.stamp)}",
        POS: f"greatest(s.{POS}, d.{POS})"}
    both = "FROM fs_cas_delta d JOIN fs_cas_state s USING (session_id)"
    cur.execute(f"UPDATE {t} SET {', '.join(f'{q(n)} = c.{q(n)}' for n in later)} FROM (SELECT s.__fs_rid, "
                f"{', '.join(f'{v} AS {q(n)}' for n, v in later.items())} {both}) c WHERE {t}.rowid = c.__fs_rid")
    differs = " OR ".join(f"(d.{q(n)} IS NOT NULL AND d.{q(n)} IS DISTINCT FROM s.{q(n)})" for n in text)
    cur.execute(f"UPDATE {t} SET {', '.join(f'{q(n)} = c.{q(n)}' for n in text)} FROM (SELECT s.__fs_rid, "
                f"{', '.join(f'coalesce(d.{q(n)}, s.{q(n)}) AS {q(n)}' for n in text)} {both} WHERE {differs}) c "
                f"WHERE {t}.rowid = c.__fs_rid")
    cols = ", ".join(q(n) for n in [*(f.name for f in feed.fields), POS, SH, FIRST])
    written = int(scalar(cur, f"INSERT INTO {t} ({cols}) SELECT {cols} FROM fs_cas_delta "
                              "WHERE session_id NOT IN (SELECT session_id FROM fs_cas_state)"))
    written += int(scalar(cur, "SELECT count(*) FROM fs_cas_delta WHERE session_id IN "
                               "(SELECT session_id FROM fs_cas_state)"))
    if redo:
        written += refresh_sessions(cur, feed, "fs_cas_redo", state="fs_cas_state")
    return written


def _fetch(cur: duckdb.DuckDBPyConnection, into: str, hashed: str, probe: str, exact: str,
           since: datetime | None = None) -> None:
    """Stored actions whose ``hashed`` column matches table ``probe``'s and whose
    ``exact`` column then matches too, with their rowid, into temp table ``into``.

    Two passes, because DuckDB's scan decompresses every projected column of every row
    even when a pushed-down Bloom filter rejects most of them: first the rowids, from
    one 64-bit column (the probe must be a table, not a CTE, for the Bloom filter to be
    pushed at all), then only those rows, fetched by rowid. Measured at 10M actions:
    ~70 ms of CPU instead of ~500 ms for a batch's 20,000 keys. ``since``, a lower bound
    of the wanted rows' stamps, lets the zone maps skip the row groups before it.
    """
    cur.execute(f"CREATE OR REPLACE TEMP TABLE fs_cas_rids AS SELECT rowid AS rid FROM {ACTIONS} "
                f"WHERE {hashed} IN (SELECT {hashed} FROM {probe}) AND ($since IS NULL OR stamp >= $since)",
                {"since": since})
    cur.execute(f"CREATE OR REPLACE TEMP TABLE {into} AS SELECT a.rowid AS __fs_rid, a.* FROM {ACTIONS} a "
                f"WHERE a.rowid IN (SELECT rid FROM fs_cas_rids) AND a.{exact} IN (SELECT {exact} FROM {probe})")


def refresh_sessions(cur: duckdb.DuckDBPyConnection, feed: Feed, touched: str, *, state: str | None = None) -> int:
    """Recompute the session rows named in table ``touched`` (session_id, sh) from all
    their actions, replacing the stored rows (found by rowid in table ``state``, when
    given); sessions left with no action lose their row. Returns the rows written."""
    t = table_name(feed)
    since = None
    if state is not None:  # the stored sessions' actions are all stamped at or after their first
        since = scalar(cur, f"SELECT CASE WHEN count(*) = count(s.{FIRST}) THEN min(s.{FIRST}) END FROM {touched} r "
                            f"LEFT JOIN {state} s USING (session_id)")
    _fetch(cur, "fs_cas_acts", "sh", touched, "session_id", since)
    cur.execute(f"CREATE OR REPLACE TEMP TABLE fs_cas_agg AS {_aggregate_sql(feed, 'fs_cas_acts')}")
    if state is not None:
        cur.execute(f"DELETE FROM {t} WHERE rowid IN (SELECT __fs_rid FROM {state} "
                    f"WHERE session_id IN (SELECT session_id FROM {touched}))")
    else:
        cur.execute(f"DELETE FROM {t} WHERE session_id IN (SELECT session_id FROM {touched})")
    cols = ", ".join(q(n) for n in [*(f.name for f in feed.fields), POS, SH, FIRST])
    # In first-action order, as sessions arrive: recent sessions stay in the last row groups.
    return int(scalar(cur, f"INSERT INTO {t} ({cols}) SELECT {cols} FROM fs_cas_agg ORDER BY created_at"))


def _aggregate_sql(feed: Feed, actions: str) -> str:
    """Step 3 over table ``actions`` (all actions of some sessions): one row per session.

    Deleted actions count for nothing; times and descriptive columns come from the live
    actions (the latest action that has a value), or from the deleted ones when none is
    left, so a session whose every action was deleted still reports zeros.
    """
    sums = dict(zip(_SUMS, ("bets", "wins", "bet_amount", "win_amount"), strict=True))
    out = []
    for f in feed.fields:
        if f.name == "session_id":
            out.append("a.session_id")
        elif f.name in sums:
            out.append(f"coalesce(sum(a.{sums[f.name]}) FILTER (WHERE NOT a.deleted), 0) AS {f.name}")
        elif f.name in ("created_at", "updated_at"):
            agg = "min" if f.name == "created_at" else "max"
            out.append(f"coalesce({agg}(a.acted_at) FILTER (WHERE NOT a.deleted), {agg}(a.acted_at)) AS {f.name}")
        elif f.name == feed.stamp:
            out.append(f"max(a.stamp) AS {q(f.name)}")
        else:  # arg_max skips NULL values: the latest action that has one
            out.append(f"arg_max(a.{q(f.name)}, a.__fs_ord) AS {q(f.name)}")
    out.append(f"max(a.{POS}) FILTER (WHERE NOT a.deleted) AS {POS}")
    out += [f"hash(a.session_id) AS {SH}", f"min(a.stamp) AS {FIRST}"]
    # Live before deleted, then by own time, then by source position (below 2^60), as one
    # HUGEINT: arg_max over a struct key costs ~3x more. Products, not shifts, as DuckDB
    # refuses to shift the negative microseconds of times before 1970.
    order = (f"(CASE WHEN deleted THEN 0 ELSE 1 END)::HUGEINT * {2**125} "
             f"+ CAST(epoch_us(acted_at) AS HUGEINT) * {2**60} + coalesce({POS}, 0)")
    return f"SELECT {', '.join(out)} FROM (SELECT *, {order} AS __fs_ord FROM {actions}) a GROUP BY a.session_id"


# --------------------------------------------------------------------------- mapping SQL

def _map_sql(am: ActionsMapping) -> str:
    """Map and validate every staged event in one statement (the rules of validate.py).

    A delete's image holds only the key columns, so only the key is read for it.
    Required values (key, session, player, game name, currency, time) that are missing
    or invalid reject the event; so do bet/win counts and amounts that are given but
    invalid, since a wrong amount must not be summed silently. Optional descriptive
    values that are invalid are emitted empty and counted.
    """
    zone = am.source.zone.key
    acts = am.action
    values: list[tuple[str, Field, str]] = [("action_key", INPUTS["key"], acts["key"])]
    values += [(f.name, f, am.exprs[f.name]) for f in am.descriptive]
    values.append(("acted_at", INPUTS["time"], acts["time"]))
    values += [(f"__fs_in_{n}", INPUTS[n], acts[n]) for n in ("bet", "win", "amount", "bet_amount", "win_amount")
               if n in acts]
    raws = [f"__fs_r{n}" for n in range(len(values))]
    checks = [check(f, raw, zone) for (_, f, _), raw in zip(values, raws, strict=True)]
    meta = f"{_I}, {_OP}, {_POS}"
    raw_cols = ", ".join(
        f"({sql}) AS {raw}" if name == "action_key" else f"CASE WHEN {_OP} <> 'd' THEN ({sql}) END AS {raw}"
        for (name, _, sql), raw in zip(values, raws, strict=True))
    sqls, lookups, joins = vocab_lookups([f for _, f, _ in values], checks, raws, [None] * len(values), zone)
    checked = ", ".join(f"{v} AS {q(name)}" for (name, _, _), v in zip(values, sqls, strict=True))

    def problem(n: int) -> str:
        name, f, _ = values[n]
        label = f.name
        example = f"left(CAST({raws[n]} AS VARCHAR), {_EXAMPLE_CHARS})"
        bad = f"{lit(label + ': invalid value ')} || '''' || {example} || ''' (' || {lit(checks[n].reason)} || ')'"
        if f.required:
            return (f"CASE WHEN {q(name)} IS NULL THEN CASE WHEN {checks[n].present} THEN {bad} "
                    f"ELSE {lit(label + ': missing')} END END")
        return f"CASE WHEN {q(name)} IS NULL AND {checks[n].present} THEN {bad} END"

    must = [n for n, (name, f, _) in enumerate(values) if f.required or name.startswith("__fs_in_")]
    live = [problem(n) for n in must]
    missing = (f"CASE WHEN {_OP} = 'd' THEN CASE WHEN action_key IS NULL THEN 'delete event without its key: "
               "the actions key expression must read only primary-key columns (a delete carries only those, "
               "unless REPLICA IDENTITY FULL)' END "
               f"WHEN {' OR '.join(f'{q(values[n][0])} IS NULL' for n in must)} "  # the reasons only when one fails
               f"THEN 'required field(s) empty or invalid: ' || NULLIF(concat_ws('; ', {', '.join(live)}), '') END")
    optional = [n for n, (name, f, _) in enumerate(values)
                if not f.required and not name.startswith("__fs_in_") and checks[n].reason]
    emptied = [
        f"CASE WHEN {q(values[n][0])} IS NULL AND {checks[n].present} THEN struct_pack(field := "
        f"{lit(values[n][1].name)}, reason := {lit(checks[n].reason)}, "
        f"example := left(CAST({raws[n]} AS VARCHAR), {_EXAMPLE_CHARS})) END" for n in optional]
    # The list of emptied values only for the (rare) rows that have one.
    any_emptied = " OR ".join(f"({q(values[n][0])} IS NULL AND {checks[n].present})" for n in optional)

    def count(side: str) -> str:
        if side in acts:
            return f"coalesce(__fs_in_{side}, 0)"
        return f"CASE WHEN __fs_in_{side}_amount > 0 THEN 1 ELSE 0 END"

    def amount(side: str) -> str:
        if f"{side}_amount" in acts:
            return f"coalesce(__fs_in_{side}_amount, 0)"
        return f"coalesce({count(side)} * __fs_in_amount, 0)"

    descriptive = ", ".join(q(f.name) for f in am.descriptive)
    return (
        f"WITH r AS (SELECT {raw_cols}, {meta} FROM fs_stage), {lookups}"
        f"n AS (SELECT {checked}, {', '.join(f'r.{c}' for c in [*raws, _I, _OP, _POS])} FROM r{joins}) "
        f"SELECT {meta}, action_key, {key_hash('action_key')} AS kh, hash(session_id) AS sh, {descriptive}, acted_at, "
        f"CAST({count('bet')} AS BIGINT) AS bets, CAST({count('win')} AS BIGINT) AS wins, "
        f"CAST({amount('bet')} AS DECIMAL(38,8)) AS bet_amount, "
        f"CAST({amount('win')} AS DECIMAL(38,8)) AS win_amount, "
        f"{missing} AS __fs_missing, "
        f"{f'CASE WHEN {any_emptied} THEN [' + ', '.join(emptied) + '] END' if emptied else 'NULL'} AS __fs_invalid "
        "FROM n")


def _count_invalid(cur: duckdb.DuckDBPyConnection, am: ActionsMapping, stamp: datetime,
                   invalid: MutableMapping[str, int]) -> None:
    """Optional values given but invalid were emitted empty: count them in fs_field_errors,
    for the events newer than the stored action only (a replay must not count twice)."""
    counts = cur.execute(
        "SELECT e.field, e.reason, count(*), max(e.example) FROM (SELECT unnest(m.__fs_invalid) AS e FROM fs_cas_m m "
        f"LEFT JOIN fs_cas_old o ON o.action_key = m.action_key WHERE m.{_OP} <> 'd' AND m.__fs_missing IS NULL "
        f"AND m.__fs_invalid IS NOT NULL AND (o.__fs_rid IS NULL OR m.{_POS} > o.{POS})) WHERE e IS NOT NULL "
        "GROUP BY ALL ORDER BY ALL").fetchall()
    if not counts:
        return
    feed = am.feed.name
    cur.executemany(
        "INSERT INTO fs_field_errors VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (feed, field, reason) DO UPDATE "
        "SET count = count + excluded.count, example = coalesce(excluded.example, example), "
        "last_seen = excluded.last_seen",
        [(feed, name, reason, n, ex, stamp, stamp) for name, reason, n, ex in counts])
    for name, reason, n, _ in counts:
        invalid[feed] += n
        log.warning("invalid optional values emitted empty",
                    extra={"feed": feed, "field": name, "reason": reason, "count": n})


__all__ = ["ACTIONS", "FEED", "RUNS_SQL", "TOUCHES", "actions_mapping", "apply_actions", "carry_stamps",
           "ensure_schema", "final_touches", "install_touches", "key_hash", "refresh_sessions", "window_filter",
           "window_select"]
