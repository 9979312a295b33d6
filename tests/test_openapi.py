"""The contract: /openapi.json is generated from the mapped feeds and the live app keeps it.

Schemathesis generates requests from the served document (valid and invalid windows,
formats, unknown parameters, missing credentials) and checks every response against
it: status codes, content types, headers, JSON row schemas, and that invalid input is
refused. It drives the real WSGI app over a real store with rows in it, with HTTP
Basic on, bounded to a few examples per operation so it takes seconds.
"""

from __future__ import annotations

import base64
from datetime import datetime

import falcon
import falcon.testing
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import positive_data_acceptance

from api.app import create_app
from api.auth import Authenticator
from api.credentials import parse_credentials
from api.passwords import hash_password
from materializer.apply import Materializer
from materializer.store import Store
from schemas.openapi import openapi_document
from tests.fix_store import Events, ManualClock

PASSWORD = "schemathesis-password-1"
HASH = hash_password(PASSWORD)
# identity: schemathesis' in-process WSGI transport sends requests' default Accept-Encoding
# (gzip) but does not decode the body; gzip is covered in test_api.py and test_export.py.
AUTH = {"Authorization": "Basic " + base64.b64encode(f"intarget:{PASSWORD}".encode()).decode(),
        "Accept-Encoding": "identity"}


@pytest.fixture
def live_app(store: Store, materializer: Materializer, events: Events, clock: ManualClock) -> falcon.App:
    # Rows in the documented example window (2020-10-10 07:00 to 08:00), and in 2000 and
    # 2030, so generated windows (any year) find some and miss others.
    for at, ids in ((datetime(2000, 6, 1), range(1, 4)), (datetime(2020, 10, 10, 7, 30), range(4, 7)),
                    (datetime(2030, 6, 1), range(7, 9))):
        clock.now = at
        materializer.apply([events.record("c", None, events.user(i, fname=f'N"{i},\n')) for i in ids], {})
    creds = parse_credentials({"credentials": {"intarget": {"password_hash": HASH, "feeds": "*", "metrics": True}}},
                              "test", {})
    return create_app(store, barrier_timeout=0.2, auth=Authenticator(creds))


def test_the_live_api_keeps_its_contract(live_app: falcon.App) -> None:
    # schemathesis.pytest.from_fixture does not run under pytest 9 (it sets a private node
    # id), so the cases are drawn with Hypothesis here, one operation at a time.
    api = schemathesis.openapi.from_wsgi("/openapi.json", live_app)
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.path for op in operations} >= {"/api/players", "/api/casino_activity", "/ready", "/metrics"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            # "Schema-valid data is accepted" cannot hold: a pattern cannot say that
            # 2025-02-30 is not a date or that `from` must be before `to`; the API
            # answers those with the documented 400, which the other checks verify.
            case.call_and_validate(headers=AUTH, excluded_checks=[positive_data_acceptance])

        check()
        if operation.path.startswith("/api/"):  # the documented window, rows in it, each format
            for fmt in ("csv", "json"):
                case = operation.Case(query={"from": "2020-10-10 07:00:00", "to": "2020-10-10 08:00:00",
                                             "format": fmt})
                resp = case.call_and_validate(headers=AUTH, excluded_checks=[positive_data_acceptance])
                assert resp.status_code == 200
                if operation.path == "/api/players":
                    rows = resp.json() if fmt == "json" else resp.text.splitlines()[1:]
                    assert len(rows) >= 3


def test_served_document_is_generated_from_the_mapped_feeds(store: Store) -> None:
    client = falcon.testing.TestClient(create_app(store))
    doc = client.simulate_get("/openapi.json").json
    mapped = {name: fm.feed for name, fm in store.mapping.feeds.items()}
    assert doc == openapi_document(mapped)
    assert {f"/api/{name}" for name in mapped} <= set(doc["paths"])
    players = doc["components"]["schemas"]["PlayersRow"]["properties"]
    assert list(players) == list(mapped["players"].field_names)  # custom fields from the mapping included
    for path in ("/health", "/ready", "/openapi.json"):
        assert doc["paths"][path]["get"]["security"] == []  # public, as the app serves them


def test_feed_operations_document_every_error_the_api_returns(store: Store) -> None:
    doc = falcon.testing.TestClient(create_app(store)).simulate_get("/openapi.json").json
    responses = doc["paths"]["/api/players"]["get"]["responses"]
    assert {"200", "400", "401", "403", "404", "429", "503"} <= set(responses)
    assert "WWW-Authenticate" in responses["401"]["headers"]
    assert "Retry-After" in responses["503"]["headers"]
