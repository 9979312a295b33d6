"""Strict parsing of the pull window: the client learns exactly which parameter is wrong."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import falcon

ALLOWED = frozenset({"from", "to", "format"})
FORMATS = ("csv", "json")
_STAMP = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}")


@dataclass(frozen=True)
class Pull:
    start: datetime
    end: datetime
    format: str


def parse_pull(req: falcon.Request) -> Pull:
    params = req.params
    for name, value in params.items():
        if name not in ALLOWED:
            raise falcon.HTTPInvalidParam(
                f"Unknown parameter; send only {', '.join(sorted(ALLOWED))}.", name)
        if isinstance(value, list):
            raise falcon.HTTPInvalidParam("Send this parameter once.", name)
    start = _stamp(params, "from")
    end = _stamp(params, "to")
    if start >= end:
        raise falcon.HTTPInvalidParam("'from' must be earlier than 'to': the window is [from, to).", "from")
    fmt = params.get("format")
    if fmt is None:
        fmt = "json" if req.client_prefers(("text/csv", "application/json")) == "application/json" else "csv"
    elif fmt not in FORMATS:
        raise falcon.HTTPInvalidParam("Send format=csv or format=json.", "format")
    return Pull(start, end, fmt)


def _stamp(params: Mapping[str, object], name: str) -> datetime:
    raw = params.get(name)
    if raw is None or raw == "":
        raise falcon.HTTPMissingParam(name)
    text = str(raw)
    if not _STAMP.fullmatch(text):
        raise falcon.HTTPInvalidParam(
            "Send a UTC time as YYYY-MM-DD HH:MM:SS (the space as + or %20).", name)
    try:
        return datetime.fromisoformat(text.replace("T", " "))
    except ValueError:
        raise falcon.HTTPInvalidParam("Not a real calendar date and time; send YYYY-MM-DD HH:MM:SS.",
                                      name) from None


def accepts_gzip(req: falcon.Request) -> bool:
    """True when ``Accept-Encoding`` lists gzip (or ``*``) with a non-zero q value."""
    header = req.get_header("Accept-Encoding") or ""
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        return q > 0
    return False
