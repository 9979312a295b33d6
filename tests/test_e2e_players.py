"""End to end through real parts: legacy Postgres -> Debezium -> tansu -> feedstore serve -> HTTP."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from materializer.stamp import utc_now
from tests.fix_stack import Served

pytestmark = pytest.mark.stack


def find(rows: list[dict[str, Any]], player_id: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["id"] == str(player_id)), None)


def test_insert_update_flow_to_api_with_monotonic_stamps(pg: psycopg.Connection[Any], served: Served) -> None:
    start = utc_now().replace(microsecond=0) - timedelta(seconds=1)
    far = start + timedelta(hours=1)
    uid = pg.execute(
        "INSERT INTO users (fname, lname, sex, country_name, city, lang, tz, dob, created, state, email) "
        "VALUES ('Örjan', 'O''Brien, \"Jr\"', 'M', 'Malta', 'Valletta', 'en-GB', 'Europe/Malta', '1985-07-10', "
        "'2024-07-01 10:00:00', 0, 'o@example.com') RETURNING user_id").fetchone()[0]

    served.wait_for(lambda: find(served.pull("players", start, far), uid) is not None)
    first = find(served.pull("players", start, far), uid)
    assert first is not None
    assert first["first_name"] == "Örjan"
    assert first["last_name"] == 'O\'Brien, "Jr"'
    assert first["gender"] == "male"
    assert first["locale"] == "en_GB"
    assert first["birthday"] == "1985-07-10"
    assert first["registered_at"] == "2024-07-01 08:00:00"  # Malta summer time is UTC+2
    assert first["is_blocked"] is False

    pg.execute("UPDATE users SET login_count = login_count + 1 WHERE user_id = %s", (uid,))  # not feed-visible
    pg.execute("UPDATE users SET city = 'Sliema', state = 1 WHERE user_id = %s", (uid,))
    served.wait_for(lambda: (find(served.pull("players", start, far), uid) or {}).get("city") == "Sliema")
    second = find(served.pull("players", start, far), uid)
    assert second is not None
    assert second["is_blocked"] is True
    assert second["status"] == "Blocked"
    assert second["modified_at"] >= first["modified_at"]

    # Half-open bounds on the real stamp: [M, M+1s) has the row, [M-1s, M) does not.
    stamp = datetime.fromisoformat(second["modified_at"])
    assert find(served.pull("players", stamp, stamp + timedelta(seconds=1)), uid) is not None
    assert find(served.pull("players", stamp - timedelta(seconds=1), stamp), uid) is None

    status, headers, body = served.get("/api/players", **{"from": f"{start:%Y-%m-%d %H:%M:%S}",
                                                          "to": f"{far:%Y-%m-%d %H:%M:%S}"})
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    row = next(r for r in csv.DictReader(io.StringIO(body.decode())) if r["id"] == str(uid))
    assert row["last_name"] == 'O\'Brien, "Jr"'
    assert row["city"] == "Sliema"


def test_closed_window_pull_sees_each_change_once(pg: psycopg.Connection[Any], served: Served) -> None:
    """Pull consecutive closed windows while changes happen; every change lands in exactly one."""
    start = utc_now().replace(microsecond=0) + timedelta(seconds=1)
    ids = [pg.execute("INSERT INTO users (fname, created) VALUES (%s, now()) RETURNING user_id",
                      (f"w{i}",)).fetchone()[0] for i in range(20)]
    served.wait_for(lambda: all(find(served.pull("players", start - timedelta(seconds=5),
                                                 start + timedelta(hours=1)), i) for i in ids))
    end = utc_now().replace(microsecond=0) + timedelta(seconds=1)
    windows = []
    t = start - timedelta(seconds=5)
    while t < end:
        windows.append(served.pull("players", t, t + timedelta(seconds=1)))
        t += timedelta(seconds=1)
    seen = [r["id"] for w in windows for r in w if int(r["id"]) in ids]
    assert sorted(seen, key=int) == [str(i) for i in ids]  # each exactly once across windows


def test_bad_requests_over_http(served: Served) -> None:
    status, headers, body = served.get("/api/players", **{"from": "2025-01-01 00:00:00"})
    assert status == 400 and b"to" in body and headers["Content-Type"].startswith("application/json")
    status, _, body = served.get("/api/nope", **{"from": "2025-01-01 00:00:00", "to": "2025-01-02 00:00:00"})
    assert status == 404 and b"nope" in body
