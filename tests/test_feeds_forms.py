"""Reading the API's CSV and JSON back into typed values, for the feed tests to compare.

The stack tests (test_e2e_feeds, test_roundtrip) compare what the API serves with what
the test put into Postgres, so they need the response parsed back exactly: a strict RFC
4180 reader that keeps NULL (nothing) apart from the empty string (``""``), and per spec
type the text form the contract fixes. The small tests below hold this reader to the
real export.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from schemas import Feed, Field


def read_csv(text: str) -> list[list[str | None]]:
    """RFC 4180 rows; an unquoted empty field is None, a quoted one ``""``."""
    rows: list[list[str | None]] = []
    row: list[str | None] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == '"':
            j, buf = i + 1, []
            while True:
                k = text.index('"', j)
                buf.append(text[j:k])
                if k + 1 < n and text[k + 1] == '"':
                    buf.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            row.append("".join(buf))
        else:
            k = i
            while k < n and text[k] not in ",\n":
                k += 1
            cell = text[i:k]
            assert '"' not in cell and "\r" not in cell, f"unquoted special character in {cell!r}"
            row.append(cell or None)
            i = k
        if i >= n or text[i] == "\n":
            rows.append(row)
            row = []
            i += 1
            continue
        assert text[i] == ",", f"expected a separator at {i}: {text[i:i + 20]!r}"
        i += 1
        if i == n:  # the text ends in a separator: one last empty field
            rows.append([*row, None])
    return rows


def csv_records(feed: Feed, body: bytes) -> list[dict[str, Any]]:
    """The API's CSV body as typed rows; the header must be the feed's fields in order."""
    header, *lines = read_csv(body.decode())
    assert header == list(feed.field_names)
    return [{f.name: from_csv(f, v) for f, v in zip(feed.fields, line, strict=True)} for line in lines]


def json_records(feed: Feed, body: bytes) -> list[dict[str, Any]]:
    """The API's JSON body as typed rows (numbers parsed as Decimal, so nothing is lost)."""
    rows = json.loads(body, parse_float=Decimal)
    assert all(list(r) == list(feed.field_names) for r in rows)
    return [{f.name: from_json(f, r[f.name]) for f in feed.fields} for r in rows]


def from_csv(field: Field, text: str | None) -> Any:
    if text is None:
        return None
    kind = field.type
    if kind == "boolean":
        assert text in ("true", "false"), text
        return text == "true"
    if kind in ("integer", "flag"):
        return int(text)
    if kind == "decimal":
        return Decimal(text)
    if kind == "float":
        return float(text)
    if kind == "timestamp":
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
    if kind == "date":
        return date.fromisoformat(text)
    return text  # string; array: "a, b" as the contract writes it


def from_json(field: Field, value: Any) -> Any:
    if value is None:
        return None
    kind = field.type
    if kind == "boolean":
        assert isinstance(value, bool)
        return value
    if kind in ("integer", "flag"):
        assert isinstance(value, int) and not isinstance(value, bool)
        return value
    if kind == "decimal":
        assert isinstance(value, int | Decimal)
        return Decimal(value)
    if kind == "float":
        assert isinstance(value, int | Decimal)
        return float(value)
    if kind == "timestamp":
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
    if kind == "date":
        return date.fromisoformat(value)
    if kind == "array":
        assert isinstance(value, list)
        return ", ".join(value)  # compared in the CSV form
    assert isinstance(value, str)
    return value


def typed(field: Field, value: Any) -> Any:
    """An expected value in the form from_csv/from_json return."""
    if value is None:
        return None
    if field.type == "array":
        return ", ".join(value)
    if field.type == "decimal":
        return Decimal(value)
    if field.type == "timestamp":
        return value.replace(microsecond=0)
    return value


# --------------------------------------------------------------------------- the reader's own tests

def test_read_csv_keeps_null_apart_from_empty_and_unquotes() -> None:
    text = 'a,b,c\n1,"",\n"x, ""y""\nz",,"\r"\n'
    assert read_csv(text) == [["a", "b", "c"], ["1", "", None], ['x, "y"\nz', None, "\r"]]


def test_export_round_trips_through_the_reader(tmp_path, events, clock) -> None:
    from materializer.apply import Materializer
    from materializer.export import csv_chunks, json_chunks
    from materializer.mapping import load_mapping
    from materializer.store import Store
    from tests.fix_store import MAPPING

    store = Store(tmp_path / "f.duckdb", load_mapping(MAPPING), clock=clock)
    try:
        user = events.user(9, fname='Zoë "Z", Jr.', lname="", city="São\r\nPaulo", segments=["a", "b, c"],
                           lifetime_value="0.10")
        Materializer(store).apply([events.record("c", None, user)], {})
        feed = store.feed("players")
        start, end = datetime(2000, 1, 1), datetime(2100, 1, 1)
        (by_csv,) = csv_records(feed, b"".join(csv_chunks(store, feed, start, end)))
        (by_json,) = json_records(feed, b"".join(json_chunks(store, feed, start, end)))
    finally:
        store.close()
    assert by_csv == by_json
    assert (by_csv["first_name"], by_csv["last_name"], by_csv["city"]) == ('Zoë "Z", Jr.', "", "São\r\nPaulo")
    assert (by_csv["ref_code"], by_csv["segments"], by_csv["lifetime_value"]) == (None, "a, b, c", Decimal("0.1"))
    assert by_csv["birthday"] == date(1989, 3, 2) and by_csv["is_blocked"] is False
