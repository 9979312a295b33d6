"""The pull API over a real DuckDB store, driven with synthetic Debezium events.

No services: the clock is injected so stamps land exactly where a test needs them.
"""

from __future__ import annotations

import csv
import gzip
import io
from datetime import datetime

import falcon.testing
import orjson
import pytest

from api.app import create_app
from materializer.apply import Materializer
from materializer.store import Store
from tests.fix_store import Events, ManualClock

T0 = datetime(2025, 3, 1, 12, 0, 0)


@pytest.fixture
def client(store: Store) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_app(store, barrier_timeout=0.2))


def pull(client: falcon.testing.TestClient, start: str, end: str, **extra: str) -> falcon.testing.Result:
    return client.simulate_get("/api/players", query_string=f"from={start}&to={end}"
                               + "".join(f"&{k}={v}" for k, v in extra.items()))


def test_half_open_bounds_are_exact(client, materializer: Materializer, events: Events, clock: ManualClock) -> None:
    clock.now = datetime(2025, 3, 1, 12, 0, 0)  # exactly `from`: inside
    materializer.apply([events.record("c", None, events.user(1))], {})
    clock.now = datetime(2025, 3, 1, 12, 59, 59, 999999)  # just before `to`: inside
    materializer.apply([events.record("c", None, events.user(2))], {})
    clock.now = datetime(2025, 3, 1, 13, 0, 0)  # exactly `to`: next window
    materializer.apply([events.record("c", None, events.user(3))], {})
    clock.now = datetime(2025, 3, 1, 14)

    inside = orjson.loads(pull(client, "2025-03-01+12:00:00", "2025-03-01%2013:00:00", format="json").content)
    after = orjson.loads(pull(client, "2025-03-01+13:00:00", "2025-03-01+14:00:00", format="json").content)
    assert [r["id"] for r in inside] == ["1", "2"]
    assert [r["id"] for r in after] == ["3"]
    assert inside[1]["modified_at"] == "2025-03-01 12:59:59"


def test_csv_is_the_default_with_spec_header_and_values(client, materializer, events, clock) -> None:
    user = events.user(7, fname='Zoë "Z", Jr.', city="São\nPaulo", state=1, sex="M")
    materializer.apply([events.record("c", None, user)], {})
    resp = pull(client, "2025-03-01+11:00:00", "2025-03-01+13:00:00")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert list(rows[0]) == [f.name for f in materializer.store.feed("players").fields]
    row = rows[0]
    assert row["first_name"] == 'Zoë "Z", Jr.'
    assert row["city"] == "São\nPaulo"
    assert row["gender"] == "male"
    assert row["locale"] == "en_US"
    assert row["is_blocked"] == "true"
    assert row["status"] == "Blocked"
    assert row["birthday"] == "1989-03-02"  # 7000 days after 1970-01-01
    # 2024-01-02 03:04:05 Malta wall clock (UTC+1 in winter) is 02:04:05 UTC
    assert row["registered_at"] == "2024-01-02 02:04:05"
    assert row["modified_at"] == "2025-03-01 12:00:00"


def test_json_by_accept_header(client, materializer, events) -> None:
    materializer.apply([events.record("c", None, events.user(1))], {})
    resp = client.simulate_get("/api/players", query_string="from=2025-03-01+11:00:00&to=2025-03-01+13:00:00",
                               headers={"Accept": "application/json"})
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json[0]["id"] == "1"
    assert resp.json[0]["is_blocked"] is False


def test_empty_window_has_header_or_empty_array(client, store: Store) -> None:
    csv_resp = pull(client, "2025-03-01+11:00:00", "2025-03-01+13:00:00")
    assert csv_resp.text.splitlines() == [",".join(store.feed("players").field_names)]
    assert pull(client, "2025-03-01+11:00:00", "2025-03-01+13:00:00", format="json").json == []


def test_unchanged_content_does_not_move_the_row(client, materializer, events, clock) -> None:
    materializer.apply([events.record("c", None, events.user(1))], {})
    clock.advance(minutes=10)
    # login_count is not in the feed: the row must stay in the first window only
    materializer.apply([events.record("u", None, events.user(1, login_count=5))], {})
    clock.advance(minutes=10)
    materializer.apply([events.record("u", None, events.user(1, city="Sliema"))], {})
    rows = pull(client, "2025-03-01+12:00:00", "2025-03-01+13:00:00", format="json").json
    assert [(r["city"], r["modified_at"]) for r in rows] == [("Sliema", "2025-03-01 12:20:00")]
    assert pull(client, "2025-03-01+12:00:00", "2025-03-01+12:19:00", format="json").json == []


def test_older_and_replayed_events_are_skipped(client, materializer, events, clock) -> None:
    new = events.record("u", None, events.user(1, city="Mdina"), lsn=5000)
    old = events.record("u", None, events.user(1, city="Rabat"), lsn=4000)
    materializer.apply([new], {})
    clock.advance(minutes=1)
    materializer.apply([old, new], {})
    rows = pull(client, "2025-03-01+11:00:00", "2025-03-01+13:00:00", format="json").json
    assert [(r["city"], r["modified_at"]) for r in rows] == [("Mdina", "2025-03-01 12:00:00")]


def test_delete_policy_sets_fields_and_bumps(client, materializer, events, clock) -> None:
    materializer.apply([events.record("c", None, events.user(1))], {})
    clock.advance(minutes=5)
    materializer.apply([events.record("d", {"user_id": 1}, None)], {})
    rows = pull(client, "2025-03-01+12:01:00", "2025-03-01+13:00:00", format="json").json
    assert rows[0]["status"] == "Deleted"
    assert rows[0]["is_blocked"] is True
    assert rows[0]["first_name"] == "Ann"  # the rest of the row is kept


def test_offsets_commit_with_the_rows(store, materializer, events) -> None:
    materializer.apply([events.record("c", None, events.user(1))], {("spacevegas.public.users", 0): 1})
    assert store.offsets() == {("spacevegas.public.users", 0): 1}


def test_bad_events_are_quarantined_and_the_rest_applied(store, materializer, events) -> None:
    good = events.record("c", None, events.user(1))
    no_json = events.record("c", None, events.user(2))
    no_json = type(no_json)(no_json.topic, 0, no_json.offset, no_json.key, b"\x00not json")
    no_reg = events.record("c", None, events.user(3, created=None))
    bad_dob = events.record("c", None, events.user(4, dob="yesterday"))
    result = materializer.apply([good, no_json, no_reg, bad_dob], {("spacevegas.public.users", 0): 4})
    assert result.changed["players"] == 1
    with store.cursor() as cur:
        rows = cur.execute("SELECT kafka_offset, feed, reason FROM fs_quarantine "
                           "ORDER BY kafka_offset, feed").fetchall()
    # One entry per event that failed, and per feed when it failed a feed's own rules
    # (users feeds players and contacts, and user 3 lacks what both require).
    assert result.quarantined == len(rows)
    assert sorted({r[0] for r in rows}) == [1, 2, 3]
    assert any(r[0] == 2 and r[1] == "players" and "registered_at" in r[2] for r in rows)
    assert store.offsets() == {("spacevegas.public.users", 0): 4}


@pytest.mark.parametrize(("query", "param"), [
    ("to=2025-03-01+13:00:00", "from"),
    ("from=2025-03-01+13:00:00", "to"),
    ("from=yesterday&to=2025-03-01+13:00:00", "from"),
    ("from=2025-02-30+10:00:00&to=2025-03-01+13:00:00", "from"),
    ("from=2025-03-01+13:00:00&to=2025-03-01+12:00:00", "from"),
    ("from=2025-03-01+13:00:00&to=2025-03-01+13:00:00", "from"),
    ("from=2025-03-01+12:00:00&to=2025-03-01+13:00:00&format=xml", "format"),
    ("from=2025-03-01+12:00:00&to=2025-03-01+13:00:00&limit=5", "limit"),
    ("from=2025-03-01+12:00:00&from=2025-03-01+12:00:00&to=2025-03-01+13:00:00", "from"),
    ("from=2025-03-01+12:00:00'%20OR%201=1--&to=2025-03-01+13:00:00", "from"),
])
def test_bad_requests_get_4xx_json_naming_the_parameter(client, query: str, param: str) -> None:
    resp = client.simulate_get("/api/players", query_string=query)
    assert resp.status_code == 400
    assert resp.headers["content-type"].startswith("application/json")
    assert param in resp.json["title"] + resp.json["description"]


def test_unknown_feed_is_404_json(client) -> None:
    resp = client.simulate_get("/api/gamblers", query_string="from=2025-03-01+12:00:00&to=2025-03-01+13:00:00")
    assert resp.status_code == 404
    assert "gamblers" in resp.json["description"]
    assert "players" in resp.json["description"]


@pytest.mark.parametrize(("accept", "gzipped"), [
    ("gzip", True), ("gzip, deflate, br", True), ("br;q=1.0, gzip;q=0.5", True), ("*", True),
    ("gzip;q=0", False), ("identity", False), ("", False), ("deflate", False),
])
def test_gzip_when_asked(client, materializer, events, accept: str, gzipped: bool) -> None:
    materializer.apply([events.record("c", None, events.user(i, city="Valletta " * 20)) for i in range(1, 40)], {})
    plain = pull(client, "2025-03-01+11:00:00", "2025-03-01+13:00:00").content
    resp = client.simulate_get("/api/players", query_string="from=2025-03-01+11:00:00&to=2025-03-01+13:00:00",
                               headers={"Accept-Encoding": accept})
    assert resp.status_code == 200
    assert "Accept-Encoding" in resp.headers["vary"]
    assert resp.headers["cache-control"] == "no-store"
    if gzipped:
        assert resp.headers["content-encoding"] == "gzip"
        assert gzip.decompress(resp.content) == plain
        assert len(resp.content) < len(plain)
    else:
        assert "content-encoding" not in resp.headers
        assert resp.content == plain
