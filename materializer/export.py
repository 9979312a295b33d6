"""Stream a feed window out of DuckDB as CSV or JSON, in bounded memory, at DuckDB's speed.

DuckDB writes each whole output line itself: the CSV line (RFC 4180 quoting done in
SQL) or the JSON object, ending in its separator. Those lines arrive as Arrow string
batches whose data buffer *is* the response body for that batch, so Python never
touches a row: it slices one buffer per batch and hands it to the socket. That keeps a
pull near DuckDB's own ``COPY ... TO`` rate (ARCHITECTURE.md: ~1M rows/s, where
``fetchmany`` + ``csv.writer`` manage ~0.18M), and it leaves the formatting decisions in
one place: the spec's text forms (UTC ``YYYY-MM-DD HH:MM:SS``, dates, amounts without
trailing zeros) are rendered by :func:`render`.

Rows come oldest change first (``modified_at``, then the key). Sorting a whole window
at once would cost memory in proportion to the window (a 1M-row players window: ~0.4 GB
in DuckDB's sort), so a window is cut into runs of whole stamps of about
:data:`CHUNK_ROWS` rows, planned from the stamps alone, and each run is sorted and
streamed in turn, all inside one read transaction so the runs see one snapshot. Memory
is then bounded by the run size, whatever the window (a single stamp is one batch, so
it is bounded by the batch size), at the price of one scan of the stamp column per run.

CSV choices, byte for byte those of DuckDB's own ``COPY ... TO`` (a test holds them
equal): a header row; lines end in ``\\n``; a field is quoted when it contains a comma,
a double quote, CR, LF or ``#`` (a comment mark to some readers), with inner quotes
doubled (RFC 4180 section 2); an empty string is written ``""`` and NULL as nothing, so
the two stay distinguishable; booleans are ``true``/``false``; arrays are joined with
``", "``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime

import pyarrow as pa

from materializer import casino
from materializer.store import Store, arrow_reader, q, table_name
from schemas import Feed, Field

#: Rows per Arrow batch: ~2 MB of players CSV (~5 MB of JSON), large enough that the
#: per-batch Python is invisible, small enough that concurrent pulls stay far from the
#: RSS budget.
BATCH_ROWS = 8 * 1024
#: Rows sorted at once (see the module docstring): ~9 MB of players CSV lines, ~19 MB
#: of JSON. Measured on a 1M-row window: the same CPU as 64K-row runs, ~70 MB less peak
#: RSS for JSON; 16K-row runs cost ~15% more CPU (one scan of the stamp column each).
CHUNK_ROWS = 32 * 1024
#: zlib level for ``Content-Encoding: gzip``: level 1 compresses CSV ~5x at ~3x the
#: speed of the default level 6; the network, not the ratio, is what a pull waits on.
GZIP_LEVEL = 1

Gate = AbstractContextManager[object]  # e.g. a threading.BoundedSemaphore shared by the pulls

_T = "t"  # the feed table's alias, so ORDER BY/WHERE bind to stored columns, not rendered ones
_TEXT = frozenset({"string", "array"})


def render(field: Field, *, for_json: bool) -> str:
    """SQL that turns a stored column into the spec's textual form."""
    col = f"{_T}.{q(field.name)}"
    if field.type == "timestamp":
        return f"strftime({col}, '%Y-%m-%d %H:%M:%S')"
    if field.type == "date":
        return f"strftime({col}, '%Y-%m-%d')"
    if field.type == "decimal":
        text = f"CAST({col} AS VARCHAR)"
        trimmed = f"CASE WHEN contains({text}, '.') THEN rtrim(rtrim({text}, '0'), '.') ELSE {text} END"
        return f"CAST({trimmed} AS JSON)" if for_json else trimmed
    if field.type == "array" and not for_json:
        return f"array_to_string({col}, ', ')"
    return col


def csv_cell(field: Field) -> str:
    """SQL for one field's CSV text (RFC 4180): never NULL, quoted only when it must be."""
    value = render(field, for_json=False)
    if field.type not in _TEXT:  # numbers, booleans, dates: never contain , " CR LF
        return f"coalesce(CAST({value} AS VARCHAR), '')"
    special = " OR ".join(f"contains({value}, {ch})" for ch in ("','", "'\"'", "chr(10)", "chr(13)", "'#'"))
    return (f"CASE WHEN {value} IS NULL THEN '' "
            f"WHEN {value} = '' OR {special} THEN '\"' || replace({value}, '\"', '\"\"') || '\"' "
            f"ELSE {value} END")


def _select(feed: Feed, select: str, *, last: str = "<") -> str:
    """``select`` over the rows stamped in [$start, $end) (or [$start, $end] with ``last="<="``)."""
    if feed.name == casino.FEED:  # the spec's session window, not a stamp range (materializer/casino.py)
        return casino.window_select(feed, select, _T)
    stamp = f"{_T}.{q(feed.stamp)}"
    order = ", ".join([stamp, *(f"{_T}.{q(k)}" for k in feed.key)])
    return (f"SELECT {select} FROM {table_name(feed)} {_T} WHERE {stamp} >= $start AND {stamp} {last} $end "
            f"ORDER BY {order}")


def window_sql(feed: Feed, *, for_json: bool = False) -> str:
    """The window as rendered columns in one sorted query: what DuckDB's own COPY would write."""
    return _select(feed, ", ".join(f"{render(f, for_json=for_json)} AS {q(f.name)}" for f in feed.fields))


def runs_sql(feed: Feed) -> str:
    """The window cut into runs of whole stamps of about $rows rows: (first, last) stamp each."""
    if feed.name == casino.FEED:
        return casino.RUNS_SQL
    stamp = f"{_T}.{q(feed.stamp)}"
    per_stamp = (f"SELECT {stamp} AS s, count(*) AS n FROM {table_name(feed)} {_T} "
                 f"WHERE {stamp} >= $start AND {stamp} < $end GROUP BY s")
    return (f"SELECT min(s), max(s) FROM (SELECT s, sum(n) OVER (ORDER BY s) AS upto FROM ({per_stamp})) "
            f"GROUP BY (upto - 1) // $rows ORDER BY 1")


def csv_sql(feed: Feed) -> str:
    """One run ([$start, $end], inclusive) as one VARCHAR column of complete CSV lines."""
    cells = ", ',', ".join(csv_cell(f) for f in feed.fields)
    return _select(feed, f"concat({cells}, chr(10)) AS line", last="<=")


def json_sql(feed: Feed) -> str:
    """One run as one VARCHAR column of JSON objects, each preceded by ``,\\n``."""
    pairs = ", ".join(f"'{f.name}', {render(f, for_json=True)}" for f in feed.fields)
    return _select(feed, f"',' || chr(10) || CAST(json_object({pairs}) AS VARCHAR) AS line", last="<=")


def csv_header(feed: Feed) -> bytes:
    return (",".join(_quote(name) for name in feed.field_names) + "\n").encode()


def csv_chunks(store: Store, feed: Feed, start: datetime, end: datetime, *, run_rows: int = CHUNK_ROWS,
               batch_rows: int = BATCH_ROWS, gate: Gate | None = None) -> Iterator[bytes]:
    """The header, then one chunk per Arrow batch; the header alone for an empty window."""
    yield csv_header(feed)
    yield from _lines(store, feed, csv_sql(feed), start, end, run_rows, batch_rows, gate or nullcontext())


def json_chunks(store: Store, feed: Feed, start: datetime, end: datetime, *, run_rows: int = CHUNK_ROWS,
                batch_rows: int = BATCH_ROWS, gate: Gate | None = None) -> Iterator[bytes]:
    """A JSON array, one object per line; ``[]`` for an empty window."""
    first = True
    for chunk in _lines(store, feed, json_sql(feed), start, end, run_rows, batch_rows, gate or nullcontext()):
        if first:  # the first object's leading comma becomes the array's bracket
            yield b"[" + chunk[1:]
            first = False
        else:
            yield chunk
    yield b"[]" if first else b"\n]"


def gzipped(chunks: Iterable[bytes], level: int = GZIP_LEVEL) -> Iterator[bytes]:
    """``chunks`` as one gzip member, compressed as they stream (bounded memory)."""
    packer = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    source = iter(chunks)
    try:
        for chunk in source:
            out = packer.compress(chunk)
            if out:
                yield out
        yield packer.flush()
    finally:  # a client that leaves early closes us; close the source so its cursor goes too
        close = getattr(source, "close", None)
        if close is not None:
            close()


def _lines(store: Store, feed: Feed, sql: str, start: datetime, end: datetime, run_rows: int,
           batch_rows: int, gate: Gate) -> Iterator[bytes]:
    """The window's lines, batch by batch. DuckDB works only inside ``gate`` (the plan,
    each batch), so concurrent pulls take turns on the CPU while their clients read."""
    with store.cursor() as cur:
        cur.begin()  # one snapshot for the plan and every run: no row seen twice or missed
        try:
            with gate:
                runs = cur.execute(runs_sql(feed), {"start": start, "end": end, "rows": run_rows}).fetchall()
            for first, last in runs:
                with gate:
                    batches = iter(arrow_reader(cur, sql, {"start": first, "end": last}, batch_rows))
                while True:
                    with gate:
                        batch = next(batches, None)
                        chunk = text_buffer(batch.column(0)) if batch is not None and batch.num_rows else b""
                    if batch is None:
                        break
                    if chunk:
                        yield chunk
        finally:
            cur.rollback()  # read only; also ends the transaction when the client left early


def text_buffer(col: pa.Array) -> bytes:
    """The concatenated values of a string array: its data buffer between the first and
    last offset, one copy, no per-value Python."""
    if pa.types.is_string(col.type) or pa.types.is_binary(col.type):
        offsets = memoryview(col.buffers()[1]).cast("i")  # type: ignore[arg-type]
    elif pa.types.is_large_string(col.type) or pa.types.is_large_binary(col.type):
        offsets = memoryview(col.buffers()[1]).cast("q")  # type: ignore[arg-type]
    else:  # string_view and friends: let Arrow lay it out contiguously first
        return text_buffer(col.cast(pa.large_string()))
    buffers = col.buffers()
    lo, hi = offsets[col.offset], offsets[col.offset + len(col)]
    data = buffers[2]
    return b"" if data is None else data.slice(lo, hi - lo).to_pybytes()


def _quote(text: str) -> str:
    if text == "" or any(ch in text for ch in ',"\r\n#'):
        return '"' + text.replace('"', '""') + '"'
    return text


__all__ = ["csv_chunks", "csv_header", "csv_sql", "gzipped", "json_chunks", "json_sql", "render",
           "runs_sql", "text_buffer", "window_sql"]
