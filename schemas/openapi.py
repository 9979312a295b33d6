"""The OpenAPI 3.0.3 description of the feed endpoints, generated from the definitions.

Generated rather than written so that it cannot drift from what the API serves: the
row schemas, column order, enumerations and required columns all come from
``feeds.yaml``. The document is what we hand the CRM as "a description of how we can
authorize" and what the endpoints return, and what clients can generate code from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas import Feed, Field
from schemas.vocab import CRYPTOCURRENCIES

#: Accepted spelling of the window bounds (a '+' in the query string decodes to ' ').
WINDOW_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[ T]([01]\d|2[0-3]):[0-5]\d:[0-5]\d$"
TIMESTAMP_PATTERN = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$"
DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"

_TYPES: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "integer": {"type": "integer", "format": "int64"},
    "decimal": {"type": "number", "format": "decimal"},
    "float": {"type": "number", "format": "double"},
    "boolean": {"type": "boolean"},
    "flag": {"type": "integer", "enum": [0, 1]},
    "timestamp": {"type": "string", "pattern": TIMESTAMP_PATTERN, "example": "2023-07-20 17:15:38"},
    "date": {"type": "string", "format": "date", "pattern": DATE_PATTERN, "example": "1974-10-17"},
    "array": {"type": "array", "items": {"type": "string"}},  # players' custom array fields (tags)
}
_FORMATS: dict[str, dict[str, Any]] = {
    "currency": {
        "pattern": r"^[A-Z]{3,5}$",
        "x-vocabulary": "ISO 4217 alphabetic code or one of: " + ", ".join(CRYPTOCURRENCIES),
    },
    "locale": {"pattern": r"^[a-z]{2,3}(_[A-Z]{2})?$",
               "x-vocabulary": "ISO 639 language, optional _ISO 3166-1 alpha-2 country"},
    "timezone": {"x-vocabulary": "IANA Time Zone Database name"},
    "ip": {"x-vocabulary": "IPv4 or IPv6 address"},
}
_ERRORS = {
    "400": "The request is malformed (a missing, repeated, unknown or invalid parameter); the body names it.",
    "401": "No or invalid credentials, or an expired or already used signature.",
    "403": "The credentials are valid but not allowed from this address or for this feed.",
    "404": "No such feed.",
    "429": "Too many signed requests within the signature lifetime; retry after the Retry-After header's seconds.",
    "503": "The window is not complete yet (a batch stamped before `to` is still being "
    "written), or the service is not ready. Retry after the Retry-After header's seconds.",
}


def openapi_document(feeds: Mapping[str, Feed], base_path: str = "/api") -> dict[str, Any]:
    """An OpenAPI 3.0.3 document (plain JSON-able dict) for ``feeds`` under ``base_path``."""
    base = "/" + base_path.strip("/") if base_path.strip("/") else ""
    paths: dict[str, Any] = {f"{base}/{feed.name}": _feed_path(feed) for feed in feeds.values()}
    paths["/health"] = _probe("Liveness: the process is up.", ready=False)
    paths["/ready"] = _probe("Readiness: the store answers, the consumer is assigned and stores batches, "
                             "and its lag is below the threshold.", ready=True)
    paths["/metrics"] = _metrics()
    paths["/openapi.json"] = _self()
    schemas: dict[str, Any] = {_row_name(feed): _row_schema(feed) for feed in feeds.values()}
    schemas["Error"] = {
        "type": "object",
        "required": ["title", "description"],
        "properties": {"title": {"type": "string"}, "description": {"type": "string"}},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Feedstore: InTarget data feeds",
            "version": "1",
            "description": "Rows whose last-modified column is in [from, to), UTC. "
            "CSV is the preferred format; JSON is also served.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "basicAuth": {"type": "http", "scheme": "basic"},
                "hmac": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "Authorization: FEEDSTORE-HMAC-SHA256 key=<name>, ts=<unix seconds>, "
                    "nonce=<random>, sig=<hex HMAC-SHA256 of: FEEDSTORE-HMAC-SHA256, method, path, "
                    "canonical query, ts, nonce, joined by newlines>. The canonical query is the "
                    "decoded pairs sorted and RFC 3986-encoded. docs/api.md has a reference signer.",
                },
            },
        },
        "security": [{"basicAuth": []}, {"hmac": []}],
    }


def _row_name(feed: Feed) -> str:
    return "".join(part.capitalize() for part in feed.name.split("_")) + "Row"


def _feed_path(feed: Feed) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {
            "description": f"The {feed.title} rows of the window, one per "
            f"{' + '.join(feed.key)}. CSV columns, in order: {', '.join(feed.field_names)}.",
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/json": {
                    "schema": {"type": "array", "items": {"$ref": f"#/components/schemas/{_row_name(feed)}"}}
                },
            },
        }
    }
    responses.update({code: _error(code, text) for code, text in _ERRORS.items()})
    return {
        "get": {
            "operationId": f"get_{feed.name}",
            "summary": f"{feed.title}: rows with {feed.stamp} in [from, to)",
            "tags": ["feeds"],
            "parameters": [_bound("from", "inclusive"), _bound("to", "exclusive"), _format_param()],
            "responses": responses,
        }
    }


def _bound(name: str, kind: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": True,
        "description": f"Window bound ({kind}), UTC, 'YYYY-MM-DD HH:MM:SS' (space as '+' or "
        "'%20'). The window is half-open: [from, to).",
        "schema": {"type": "string", "pattern": WINDOW_PATTERN,
                   "example": "2020-10-10 07:00:00" if name == "from" else "2020-10-10 08:00:00"},
    }


def _format_param() -> dict[str, Any]:
    return {
        "name": "format",
        "in": "query",
        "required": False,
        "description": "Response format; without it, the Accept header decides, else CSV.",
        "schema": {"type": "string", "enum": ["csv", "json"]},
    }


def _error(code: str, text: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": text,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if code in ("503", "429"):
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds."}}
    if code == "401":
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return response


def _metrics() -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {"description": "Prometheus text exposition format.",
                "content": {"text/plain": {"schema": {"type": "string"}}}},
    }
    responses.update({code: _error(code, _ERRORS[code]) for code in ("401", "403", "429")})
    return {"get": {"summary": "Prometheus metrics; needs a credential with metrics: true.", "tags": ["ops"],
                    "responses": responses}}


def _self() -> dict[str, Any]:
    body = {"application/json": {"schema": {"type": "object"}}}
    return {"get": {"summary": "This document.", "tags": ["ops"], "security": [],
                    "responses": {"200": {"description": "OpenAPI 3.0.3", "content": body}}}}


def _probe(summary: str, ready: bool) -> dict[str, Any]:
    body = {"application/json": {"schema": {"type": "object"}}}
    responses: dict[str, Any] = {"200": {"description": "OK", "content": body}}
    if ready:
        responses["503"] = {"description": "Not ready; the body says why.", "content": body}
    return {"get": {"summary": summary, "tags": ["ops"], "security": [], "responses": responses}}


def _row_schema(feed: Feed) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "description": f"One {feed.title} row; key: {', '.join(feed.key)}; last modified: {feed.stamp}.",
        "required": [f.name for f in feed.fields if f.required],
        "properties": {f.name: _property(f) for f in feed.fields},
    }
    if feed.custom_field_types:
        schema["additionalProperties"] = {
            "description": "Operator-defined custom fields of types: " + ", ".join(feed.custom_field_types),
            # OpenAPI 3.0: `nullable` only counts next to a `type`, so it goes in each branch.
            "anyOf": [
                {"type": "integer", "nullable": True},
                {"type": "number", "nullable": True},
                {"type": "string", "nullable": True},
                {"type": "array", "items": {"type": "string"}, "nullable": True},
            ],
        }
    return schema


def _property(f: Field) -> dict[str, Any]:
    prop: dict[str, Any] = dict(_TYPES[f.type])
    if f.format:
        prop.update(_FORMATS[f.format])
    if f.type == "decimal":
        prop["x-scale"] = f.scale
    description = f.description
    if f.allowed is not None:
        prop["enum"] = list(f.allowed)
        if f.aliases:
            pairs = ", ".join(f"{a} -> {c}" for a, c in sorted(f.aliases.items()))
            description += f" (input aliases: {pairs})"
    if not f.required:
        prop["nullable"] = True
        if "enum" in prop:  # OpenAPI 3.0.3: a nullable enum must list null itself
            prop["enum"] = [*prop["enum"], None]
    prop["description"] = description
    return prop
