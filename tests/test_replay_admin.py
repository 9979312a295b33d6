"""The admin endpoint's door: off without a token, 401 with a wrong one, the token never logged."""

from __future__ import annotations

import logging

import falcon
import falcon.testing
import pytest

from api.admin import add_admin

TOKEN = "s3cret-" + "x" * 33


def client(token: str) -> falcon.testing.TestClient:
    app = falcon.App()
    add_admin(app, None, token)  # the door is checked before the service is used
    return falcon.testing.TestClient(app)


def test_no_token_configured_means_no_endpoint() -> None:
    c = client("")
    assert c.simulate_get("/admin/offsets", headers={"Authorization": "Bearer anything"}).status_code == 404
    assert c.simulate_post("/admin/replay", json={"offsets": []}).status_code == 404


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"])
def test_wrong_or_missing_token_is_401_and_not_logged(header: str | None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    headers = {"Authorization": header} if header else {}
    resp = client(TOKEN).simulate_post("/admin/replay", json={"offsets": [["t", 0, 0]]}, headers=headers)
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert TOKEN not in caplog.text and "wrong" not in caplog.text
