"""The issue's security acceptance, against the real app, store and credentials file.

401 for no, wrong, expired or replayed credentials; 403 for the right credentials from a
disallowed address or for a feed outside the credential's permissions; 400 for
injection-looking parameters; none of them tells whether a user exists, and no secret
reaches a log line. Falcon's test client drives the real WSGI app (no server needed);
the TLS and real-process checks are in test_security_serve.py.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import falcon.testing
import pytest
from pythonjsonlogger.json import JsonFormatter

from api import signing
from api.app import create_app
from api.auth import Authenticator
from api.credentials import load_credentials
from api.passwords import hash_password, verify_password
from api.replay import ReplayCache
from feedstore.metrics import Metrics
from materializer.store import Store

PASSWORD = "correct horse battery staple"
PARTNER_PASSWORD = "partner-password-0001"
SECRET = secrets.token_hex(32)  # what an operator puts in the environment
FILE_SECRET = secrets.token_hex(32)
NOW = 1_750_000_000.0
HASHES = {PASSWORD: hash_password(PASSWORD), PARTNER_PASSWORD: hash_password(PARTNER_PASSWORD)}  # once: scrypt is slow
WINDOW = "from=2025-03-01+11:00:00&to=2025-03-01+13:00:00"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class Api:
    client: falcon.testing.TestClient
    clock: Clock
    verified: list[str]  # user names the password KDF ran for (real verify_password underneath)
    metrics: Metrics

    def get(self, path: str, query: str = WINDOW, **kw: object) -> falcon.testing.Result:
        return self.client.simulate_get(path, query_string=query, **kw)  # type: ignore[arg-type]


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def signed(key: str, secret: str, path: str = "/api/players", query: str = WINDOW, *, ts: float = NOW,
           nonce: str | None = None, method: str = "GET") -> dict[str, str]:
    nonce = nonce or secrets.token_urlsafe(16)
    return {"Authorization": signing.authorization(key, secret.encode(), method, path, query, int(ts), nonce)}


@pytest.fixture
def creds_file(tmp_path: Path) -> Path:
    (tmp_path / "hmac.secret").write_text(FILE_SECRET + "\n")
    path = tmp_path / "credentials.yaml"
    path.write_text(f"""
credentials:
  intarget:
    password_hash: "{HASHES[PASSWORD]}"
    hmac_secret_env: INTARGET_SECRET
    feeds: "*"
    metrics: true
  partner:
    password_hash: "{HASHES[PARTNER_PASSWORD]}"
    feeds: [players]
    allow_from: [203.0.113.0/24, "2001:db8::/32"]
  signer:
    hmac_secret_file: {tmp_path / "hmac.secret"}
    feeds: [players, contacts]
""")
    return path


@pytest.fixture
def api(store: Store, creds_file: Path, caplog: pytest.LogCaptureFixture) -> Iterator[Api]:
    caplog.set_level(logging.DEBUG)
    clock, verified, metrics = Clock(), [], Metrics()

    def verify(password: str, stored: str) -> bool:
        verified.append(stored.split("$")[0])
        return verify_password(password, stored)

    credentials = load_credentials(creds_file, {"INTARGET_SECRET": SECRET})
    auth = Authenticator(credentials, max_skew_s=300, clock=clock, metrics=metrics, verify=verify)
    app = create_app(store, barrier_timeout=0.2, auth=auth, metrics=metrics,
                     trusted_proxies=[ipaddress.ip_network("10.9.0.0/16")])
    yield Api(falcon.testing.TestClient(app), clock, verified, metrics)
    # Whatever a test did: no secret in any log record, in text or in its JSON form.
    formatter = JsonFormatter("%(levelname)s %(name)s %(message)s")
    records = caplog.get_records("setup") + caplog.get_records("call")
    logged = "\n".join(formatter.format(r) + r.getMessage() for r in records)
    assert logged, "the requests were logged"
    for secret in (PASSWORD, PARTNER_PASSWORD, SECRET, FILE_SECRET, basic("intarget", PASSWORD)["Authorization"][6:],
                   base64.b64encode(b"intarget:wrong-password").decode()):
        assert secret not in logged


def test_no_credentials_is_401_with_challenges(api: Api) -> None:
    resp = api.get("/api/players")
    assert resp.status_code == 401
    assert "Basic" in resp.headers["www-authenticate"]
    assert signing.SCHEME in resp.headers["www-authenticate"]
    assert resp.json["title"] == "Unauthorized"


def test_basic_with_the_right_password_reads_the_feed(api: Api) -> None:
    resp = api.get("/api/players", headers=basic("intarget", PASSWORD))
    assert resp.status_code == 200
    assert resp.text.startswith("id,first_name")


@pytest.mark.parametrize("header", [
    {"Authorization": "Basic !!!not-base64"},
    {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
    {"Authorization": "Bearer abc"},
    {"Authorization": f"{signing.SCHEME} key=intarget, ts=1"},
    {"Authorization": f"{signing.SCHEME} key=intarget, ts=x, nonce=aaaaaaaaaaaaaaaa, sig={'0' * 64}"},
])
def test_malformed_credentials_are_401(api: Api, header: dict[str, str]) -> None:
    resp = api.get("/api/players", headers=header)
    assert resp.status_code == 401
    assert "www-authenticate" in resp.headers


def test_unknown_user_and_wrong_password_look_the_same(api: Api) -> None:
    wrong = api.get("/api/players", headers=basic("intarget", "wrong-password"))
    unknown = api.get("/api/players", headers=basic("nobody", "wrong-password"))
    hmac_only = api.get("/api/players", headers=basic("signer", "wrong-password"))  # no Basic for this one
    assert wrong.status_code == unknown.status_code == hmac_only.status_code == 401
    assert wrong.content == unknown.content == hmac_only.content
    strip = {"x-request-id"}
    assert ({k: v for k, v in wrong.headers.items() if k not in strip}
            == {k: v for k, v in unknown.headers.items() if k not in strip})
    # The same KDF work each time: the password was checked against a scrypt hash in all three cases.
    assert api.verified == ["scrypt", "scrypt", "scrypt"]


def test_a_verified_password_is_not_rehashed_for_every_pull(api: Api) -> None:
    for _ in range(3):
        assert api.get("/api/players", headers=basic("intarget", PASSWORD)).status_code == 200
    assert api.verified == ["scrypt"]
    assert api.get("/api/players", headers=basic("intarget", PASSWORD + "x")).status_code == 401


def test_right_credentials_from_a_disallowed_address_are_403(api: Api) -> None:
    ok = api.get("/api/players", headers=basic("partner", PARTNER_PASSWORD), remote_addr="203.0.113.9")
    v6 = api.get("/api/players", headers=basic("partner", PARTNER_PASSWORD), remote_addr="2001:db8::7")
    elsewhere = api.get("/api/players", headers=basic("partner", PARTNER_PASSWORD), remote_addr="198.51.100.1")
    wrong_pw = api.get("/api/players", headers=basic("partner", "nope"), remote_addr="198.51.100.1")
    assert (ok.status_code, v6.status_code, elsewhere.status_code, wrong_pw.status_code) == (200, 200, 403, 401)
    assert "198.51.100.1" in elsewhere.json["description"]


def test_forwarded_for_counts_only_from_a_trusted_proxy(api: Api) -> None:
    creds = basic("partner", PARTNER_PASSWORD)
    via_proxy = api.get("/api/players", headers={**creds, "X-Forwarded-For": "198.51.100.1, 203.0.113.5"},
                        remote_addr="10.9.0.2")
    spoofed_by_client = api.get("/api/players", headers={**creds, "X-Forwarded-For": "203.0.113.5"},
                                remote_addr="198.51.100.1")
    proxy_relaying_a_stranger = api.get("/api/players", headers={**creds, "X-Forwarded-For": "198.51.100.7"},
                                        remote_addr="10.9.0.2")
    assert via_proxy.status_code == 200  # the nearest untrusted hop is the client: allowed
    assert spoofed_by_client.status_code == 403  # the header is the client's own claim: ignored
    assert proxy_relaying_a_stranger.status_code == 403


def test_a_feed_outside_the_permissions_is_403_and_unknown_feeds_list_only_readable_ones(api: Api) -> None:
    creds = basic("partner", PARTNER_PASSWORD)
    forbidden = api.get("/api/contacts", headers=creds, remote_addr="203.0.113.9")
    unknown = api.get("/api/gamblers", headers=creds, remote_addr="203.0.113.9")
    assert forbidden.status_code == 403
    assert "contacts" in forbidden.json["description"]
    assert unknown.status_code == 404
    assert "players" in unknown.json["description"]
    assert "contacts" not in unknown.json["description"]


def test_anonymous_clients_learn_nothing_about_feeds(api: Api) -> None:
    real, unknown = api.get("/api/players"), api.get("/api/gamblers")
    assert real.status_code == unknown.status_code == 401
    assert real.content == unknown.content


def test_a_valid_signature_reads_the_feed_once(api: Api) -> None:
    headers = signed("intarget", SECRET)
    assert api.get("/api/players", headers=headers).status_code == 200
    replay = api.get("/api/players", headers=headers)
    assert replay.status_code == 401
    assert "used before" in replay.json["description"]


def test_the_canonical_query_accepts_any_spelling_of_the_same_query(api: Api) -> None:
    """Signed over '+', sent as '%20' and in another order: the same canonical query."""
    headers = signed("intarget", SECRET, query="to=2025-03-01+13:00:00&from=2025-03-01+11:00:00")
    resp = api.get("/api/players", query="from=2025-03-01%2011%3A00%3A00&to=2025-03-01%2013:00:00", headers=headers)
    assert resp.status_code == 200


@pytest.mark.parametrize(("tamper", "signed_over"), [
    ("query", {"query": "from=2025-03-01+11:00:00&to=2025-03-01+14:00:00"}),  # a wider window than sent
    ("path", {"path": "/api/contacts"}),
    ("method", {"method": "POST"}),
    ("secret", {}),
])
def test_a_signature_over_anything_else_is_401(api: Api, tamper: str, signed_over: dict[str, str]) -> None:
    headers = signed("intarget", "x" * 64 if tamper == "secret" else SECRET, **signed_over)
    resp = api.get("/api/players", headers=headers)
    assert resp.status_code == 401
    assert resp.json["description"].startswith("The credentials are not valid")


def test_expired_and_future_signatures_are_401(api: Api) -> None:
    old = api.get("/api/players", headers=signed("intarget", SECRET, ts=NOW - 301))
    future = api.get("/api/players", headers=signed("intarget", SECRET, ts=NOW + 301))
    edge = api.get("/api/players", headers=signed("intarget", SECRET, ts=NOW - 300))
    assert (old.status_code, future.status_code, edge.status_code) == (401, 401, 200)
    assert "300 s" in old.json["description"]


def test_a_replay_after_the_window_is_still_refused(api: Api) -> None:
    headers = signed("intarget", SECRET)
    assert api.get("/api/players", headers=headers).status_code == 200
    api.clock.now += 299
    assert api.get("/api/players", headers=headers).status_code == 401  # in the cache
    api.clock.now += 2
    assert api.get("/api/players", headers=headers).status_code == 401  # expired by then


def test_unknown_key_and_wrong_signature_look_the_same(api: Api) -> None:
    unknown = api.get("/api/players", headers=signed("nobody", SECRET))
    wrong = api.get("/api/players", headers=signed("intarget", "y" * 64))
    no_hmac = api.get("/api/players", headers=signed("partner", SECRET))  # Basic-only credential
    assert unknown.status_code == wrong.status_code == no_hmac.status_code == 401
    assert unknown.content == wrong.content == no_hmac.content


def test_secret_from_a_file_and_its_feed_permissions(api: Api) -> None:
    assert api.get("/api/contacts", headers=signed("signer", FILE_SECRET, "/api/contacts")).status_code == 200
    assert api.get("/api/logins", headers=signed("signer", FILE_SECRET, "/api/logins")).status_code == 403


@pytest.mark.parametrize("query", [
    "from=2025-03-01+12:00:00'%20OR%201=1--&to=2025-03-01+13:00:00",
    "from=2025-03-01+12:00:00&to=2025-03-01+13:00:00;DROP%20TABLE%20feed_players",
    "from=2025-03-01+12:00:00&to=2025-03-01+13:00:00&format=csv%27%29--",
    "from=2025-03-01+12:00:00&to=2025-03-01+13:00:00&feed=contacts",
    "from=../../etc/passwd&to=2025-03-01+13:00:00",
    "from=2025-03-01+12:00:00&to=2025-03-01+13:00:00%00",
])
def test_injection_looking_parameters_are_400_naming_the_parameter(api: Api, query: str) -> None:
    resp = api.get("/api/players", query=query, headers=basic("intarget", PASSWORD))
    assert resp.status_code == 400
    assert resp.json["title"] in ("Invalid parameter", "Missing parameter")
    assert any(name in resp.json["description"] + resp.json["title"] for name in ("from", "to", "format", "feed"))


def test_public_probes_and_protected_metrics(api: Api) -> None:
    assert api.get("/health", query="").status_code == 200
    assert api.get("/openapi.json", query="").status_code == 200
    assert api.get("/ready", query="").status_code == 200
    assert api.get("/metrics", query="").status_code == 401
    assert api.get("/metrics", query="", headers=basic("partner", PARTNER_PASSWORD),
                   remote_addr="203.0.113.9").status_code == 403
    page = api.get("/metrics", query="", headers=basic("intarget", PASSWORD))
    assert page.status_code == 200
    assert 'feedstore_auth_failures_total{reason="missing"}' in page.text


def test_refusals_are_counted_by_reason(api: Api) -> None:
    api.get("/api/players")
    api.get("/api/players", headers=basic("intarget", "wrong-password"))
    headers = signed("intarget", SECRET)
    api.get("/api/players", headers=headers)
    api.get("/api/players", headers=headers)
    counts = {s.labels["reason"]: s.value for m in api.metrics.registry.collect() if m.name == "feedstore_auth_failures"
              for s in m.samples if s.name.endswith("_total")}
    assert counts == {"missing": 1, "invalid": 1, "replayed": 1}


def test_a_full_replay_cache_refuses_instead_of_forgetting(store: Store, creds_file: Path) -> None:
    clock = Clock()
    auth = Authenticator(load_credentials(creds_file, {"INTARGET_SECRET": SECRET}), clock=clock,
                         replay=ReplayCache(max_entries=2))
    client = falcon.testing.TestClient(create_app(store, auth=auth))
    codes = [client.simulate_get("/api/players", query_string=WINDOW,
                                 headers=signed("intarget", SECRET)).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    clock.now += 301  # the first two signatures have expired: room again
    assert client.simulate_get("/api/players", query_string=WINDOW,
                               headers=signed("intarget", SECRET, ts=clock.now)).status_code == 200
