"""Request ids, structured request logs, /metrics and /ready, against the real app and store.

The live counterparts (real consumer lag, gunicorn's JSON access log) are in
test_security_serve.py, which runs ``feedstore serve``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import falcon.testing
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.resources import lag_check
from feedstore.config import Settings
from feedstore.metrics import Metrics
from feedstore.service import Service
from materializer.apply import Materializer
from materializer.stamp import utc_now
from materializer.store import Store
from tests.fix_store import Events, ManualClock

WINDOW = "from=2025-03-01+11:00:00&to=2025-03-01+13:00:00"


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def client(store: Store, metrics: Metrics) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_app(store, barrier_timeout=0.2, metrics=metrics))


def scrape(client: falcon.testing.TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = client.simulate_get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(resp.text) for s in fam.samples}


def request_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "feedstore.api" and r.getMessage() == "request"]


def test_request_ids_are_echoed_or_made(client) -> None:
    given = client.simulate_get("/health", headers={"X-Request-Id": "intarget-42.a:b"})
    made = client.simulate_get("/health")
    insane = client.simulate_get("/health", headers={"X-Request-Id": "a b\r\nX-Evil: 1"})
    too_long = client.simulate_get("/health", headers={"X-Request-Id": "x" * 129})
    assert given.headers["x-request-id"] == "intarget-42.a:b"
    assert len(made.headers["x-request-id"]) == 32
    assert insane.headers["x-request-id"] != "a b\r\nX-Evil: 1"
    assert len(too_long.headers["x-request-id"]) == 32
    assert made.headers["x-request-id"] != client.simulate_get("/health").headers["x-request-id"]


def test_errors_carry_the_request_id_too(client) -> None:
    bad = client.simulate_get("/api/players", query_string="from=x&to=y", headers={"X-Request-Id": "r-400"})
    assert bad.status_code == 400
    assert bad.headers["x-request-id"] == "r-400"


def test_one_structured_log_line_per_pull_after_the_last_byte(client, materializer, events, caplog) -> None:
    caplog.set_level(logging.INFO, logger="feedstore.api")
    materializer.apply([events.record("c", None, events.user(1)), events.record("c", None, events.user(2))], {})
    resp = client.simulate_get("/api/players", query_string=WINDOW, headers={"X-Request-Id": "pull-1"})
    client.simulate_get("/api/players", query_string="from=nope", headers={"X-Request-Id": "pull-2"})
    pull, bad = request_logs(caplog)
    assert (pull.request_id, pull.status, pull.feed, pull.format, pull.outcome) == (  # type: ignore[attr-defined]
        "pull-1", 200, "players", "csv", "complete")
    assert pull.bytes == len(resp.content)  # type: ignore[attr-defined]
    assert pull.query == WINDOW  # type: ignore[attr-defined]
    assert (bad.request_id, bad.status) == ("pull-2", 400)  # type: ignore[attr-defined]
    assert not hasattr(bad, "feed")


def test_a_client_that_leaves_mid_stream_is_logged_as_such(store, materializer, events, caplog) -> None:
    caplog.set_level(logging.INFO, logger="feedstore.api")
    materializer.apply([events.record("c", None, events.user(i)) for i in range(50)], {})
    app = create_app(store)
    env = falcon.testing.create_environ("/api/players", query_string=WINDOW)
    body = app(env, lambda status, headers: None)
    next(iter(body))  # the header line, then the client hangs up
    body.close()  # type: ignore[attr-defined]
    [line] = request_logs(caplog)
    assert line.outcome == "client_closed"  # type: ignore[attr-defined]
    with store.cursor() as cur:  # the pull's read transaction ended with it: the store still writes
        cur.execute("SELECT 1")
    materializer.apply([events.record("u", None, events.user(1, city="Mosta"))], {})


def test_pull_metrics_per_feed(client, materializer, events) -> None:
    materializer.apply([events.record("c", None, events.user(1))], {})
    csv_body = client.simulate_get("/api/players", query_string=WINDOW).content
    json_body = client.simulate_get("/api/players", query_string=WINDOW + "&format=json").content
    client.simulate_get("/api/contacts", query_string=WINDOW)
    m = scrape(client)
    assert m[("feedstore_pull_seconds_count", (("feed", "players"), ("format", "csv")))] == 1
    assert m[("feedstore_pull_seconds_count", (("feed", "players"), ("format", "json")))] == 1
    assert m[("feedstore_pull_seconds_count", (("feed", "contacts"), ("format", "csv")))] == 1
    assert m[("feedstore_pull_bytes_total", (("feed", "players"), ("format", "csv")))] == len(csv_body)
    assert m[("feedstore_pull_bytes_total", (("feed", "players"), ("format", "json")))] == len(json_body)
    assert m[("feedstore_http_requests_total", (("route", "/api/{feed}"), ("status", "200")))] == 3


def test_unknown_feed_names_do_not_become_labels(client) -> None:
    for name in ("a", "b", "c"):
        client.simulate_get(f"/api/{name}", query_string=WINDOW)
    m = scrape(client)
    assert m[("feedstore_http_requests_total", (("route", "/api/{feed}"), ("status", "404")))] == 3
    assert not any(("feed", "a") in labels for _, labels in m)


def test_store_facts_at_scrape_time(client, store, materializer, events, clock: ManualClock) -> None:
    materializer.apply([events.record("c", None, events.user(i)) for i in range(1, 4)], {})
    bad = events.record("c", None, events.user(9, dob="yesterday"))
    materializer.apply([bad], {})
    before = utc_now()
    m = scrape(client)
    after = utc_now()
    assert m[("feedstore_feed_rows", (("feed", "players"),))] == 3
    assert m[("feedstore_feed_rows", (("feed", "transactions"),))] == 0
    assert sum(v for (name, _), v in m.items() if name == "feedstore_quarantine_rows") == 1
    age = m[("feedstore_newest_stamp_age_seconds", ())]
    assert (before - clock.now).total_seconds() <= age <= (after - clock.now).total_seconds()


def test_batches_are_counted_and_timed(store: Store, tmp_path: Path, events: Events) -> None:
    metrics = Metrics()
    service = Service(Settings(db_path=tmp_path / "unused.duckdb"), store, materializer=Materializer(store),
                      metrics=metrics)
    good = [events.record("c", None, events.user(i)) for i in range(1, 6)]
    service.apply(good, {})
    service.apply([events.record("c", None, events.user(9, dob="yesterday"))], {})
    values = {s.name: s.value for fam in metrics.registry.collect() for s in fam.samples}
    assert values["feedstore_events_total"] == 6
    assert values["feedstore_quarantined_events_total"] == 1
    assert values["feedstore_batch_commit_seconds_count"] == 2
    assert values["feedstore_batch_commit_seconds_sum"] > 0


def test_each_app_has_its_own_registry(store) -> None:
    one, two = Metrics(), Metrics()
    falcon.testing.TestClient(create_app(store, metrics=one)).simulate_get("/health")
    assert two.render().count(b"feedstore_http_requests_total{") == 0
    assert one.render().count(b"feedstore_http_requests_total{") == 1


# ----------------------------------------------------------------------------- readiness

LAG_OK = {("spacevegas.public.users", 0): 3, ("spacevegas.public.users", 1): 0}


@pytest.mark.parametrize(("lag", "ok", "why"), [
    (LAG_OK, True, None),
    ({}, False, "no partition assigned"),
    ({**LAG_OK, ("spacevegas.public.users", 2): None}, False, "not known yet"),
    ({("t", 0): 6, ("t", 1): 5}, False, "11 events behind"),
])
def test_lag_check(lag, ok: bool, why: str | None) -> None:
    got = lag_check(lag, max_lag=10)
    assert got["ok"] is ok
    assert (got["error"] is None) if why is None else (why in got["error"])


def test_ready_combines_service_status_and_lag(store) -> None:
    state = {"ready": True, "lag": LAG_OK}
    app = create_app(store, status=lambda: {"ready": state["ready"], "consumer": {"ok": state["ready"]}},
                     lag=lambda: state["lag"], max_lag=10)
    client = falcon.testing.TestClient(app)
    ready = client.simulate_get("/ready")
    assert ready.status_code == 200
    assert ready.json["lag"]["total"] == 3
    state["lag"] = {("t", 0): 50}
    behind = client.simulate_get("/ready")
    assert behind.status_code == 503
    assert behind.headers["retry-after"] == "5"
    assert "50 events behind" in behind.json["lag"]["error"]
    state["lag"], state["ready"] = LAG_OK, False
    assert client.simulate_get("/ready").status_code == 503


def test_ready_without_a_service_checks_the_store(store) -> None:
    client = falcon.testing.TestClient(create_app(store))
    assert client.simulate_get("/ready").json == {"ready": True, "store": {"ok": True, "error": None}}
    store.close()
    down = client.simulate_get("/ready")
    assert down.status_code == 503
    assert down.json["store"]["ok"] is False


def test_health_is_always_cheap_and_public(client) -> None:
    assert client.simulate_get("/health").json == {"status": "ok"}

