"""Pure parts of the API's security: hashes, signing, the replay cache, client addresses,
the credentials file and the rule for running without one. No services."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from pathlib import Path

import pytest

from api import signing
from api.clientip import client_address, parse_address
from api.credentials import CredentialsError, check_feeds, parse_credentials
from api.passwords import PasswordHashError, check_hash, hash_password, verify_password
from api.replay import ReplayCache, ReplayCacheFullError
from api.security import authenticator, loopback_bind
from feedstore.config import ConfigError, Settings

SECRET = "s" * 40


# ----------------------------------------------------------------------------- passwords

def test_scrypt_hash_round_trip_and_salting() -> None:
    one, two = hash_password("hunter2-hunter2"), hash_password("hunter2-hunter2")
    assert one != two  # salted
    assert "hunter2" not in one
    assert verify_password("hunter2-hunter2", one)
    assert not verify_password("hunter2-hunter3", one)


def test_pbkdf2_hashes_in_djangos_notation_are_accepted() -> None:
    digest = hashlib.pbkdf2_hmac("sha256", b"pw-from-django", b"somesalt", 1000)
    stored = f"pbkdf2_sha256$1000$somesalt${base64.b64encode(digest).decode()}"
    assert verify_password("pw-from-django", stored)
    assert not verify_password("pw-from-djang0", stored)


@pytest.mark.parametrize("bad", ["plaintext", "scrypt$1$2", "md5$abc$def", "scrypt$a$b$c$d$e", "pbkdf2_sha256$x$s$h"])
def test_unknown_hash_formats_are_refused_with_the_expected_form(bad: str) -> None:
    with pytest.raises(PasswordHashError, match="scrypt"):
        check_hash(bad)


# ----------------------------------------------------------------------------- signing

def test_canonical_query_ignores_spelling_and_order() -> None:
    spellings = ["from=2020-10-10+07:00:00&to=2020-10-10+08:00:00",
                 "to=2020-10-10%2008:00:00&from=2020-10-10%2007%3A00%3A00",
                 "from=2020-10-10%2007:00:00&&to=2020-10-10+08:00:00"]
    canon = {signing.canonical_query(q) for q in spellings}
    assert canon == {"from=2020-10-10%2007%3A00%3A00&to=2020-10-10%2008%3A00%3A00"}


def test_canonical_query_keeps_distinct_queries_distinct() -> None:
    assert signing.canonical_query("a=1&b=2") != signing.canonical_query("a=1%26b%3D2")
    assert signing.canonical_query("a=1+2") != signing.canonical_query("a=1%2B2")


def test_signature_covers_every_part() -> None:
    base = dict(method="GET", path="/api/players", query_string="from=x&to=y", ts=100, nonce="n" * 16)
    sig = signing.signature(b"k" * 32, **base)  # type: ignore[arg-type]
    for part, other in [("method", "POST"), ("path", "/api/contacts"), ("query_string", "from=x&to=z"),
                        ("ts", 101), ("nonce", "m" * 16)]:
        assert signing.signature(b"k" * 32, **{**base, part: other}) != sig  # type: ignore[arg-type]


def test_authorization_header_parses_back() -> None:
    value = signing.authorization("intarget", b"k" * 32, "GET", "/api/players", "a=1", 1700000000, "N" * 20)
    scheme, _, rest = value.partition(" ")
    parsed = signing.parse_authorization(rest)
    assert scheme == signing.SCHEME
    assert (parsed.key, parsed.ts, parsed.nonce) == ("intarget", 1700000000, "N" * 20)


@pytest.mark.parametrize("rest", [
    "", "key=a", "key=a, ts=1, nonce=short, sig=" + "0" * 64, "key=a, ts=1, nonce=" + "n" * 16 + ", sig=XYZ",
    "key=a, key=b, ts=1, nonce=" + "n" * 16 + ", sig=" + "0" * 64,
    "key=a b, ts=1, nonce=" + "n" * 16 + ", sig=" + "0" * 64,
])
def test_malformed_signature_headers(rest: str) -> None:
    with pytest.raises(signing.SignatureFormatError, match="Authorization"):
        signing.parse_authorization(rest)


# ----------------------------------------------------------------------------- replay cache

def test_replay_cache_refuses_seen_signatures_until_they_expire() -> None:
    cache = ReplayCache(max_entries=10)
    assert cache.first_use("a", expires_at=110, now=100)
    assert not cache.first_use("a", expires_at=110, now=105)
    assert cache.first_use("b", expires_at=120, now=111)  # purges "a" on the way
    assert len(cache) == 1


def test_replay_cache_never_evicts_live_entries() -> None:
    cache = ReplayCache(max_entries=2)
    cache.first_use("a", expires_at=200, now=100)
    cache.first_use("b", expires_at=200, now=100)
    with pytest.raises(ReplayCacheFullError):
        cache.first_use("c", expires_at=200, now=150)
    assert not cache.first_use("a", expires_at=200, now=150)


# ----------------------------------------------------------------------------- client address

PROXIES = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]


@pytest.mark.parametrize(("peer", "xff", "trusted", "expected"), [
    ("198.51.100.1", "203.0.113.5", PROXIES, "198.51.100.1"),  # not from a proxy: header ignored
    ("10.0.0.2", "203.0.113.5", PROXIES, "203.0.113.5"),
    ("10.0.0.2", "1.2.3.4, 203.0.113.5, 10.0.0.9", PROXIES, "203.0.113.5"),  # leftmost entries are the client's claim
    ("10.0.0.2", None, PROXIES, "10.0.0.2"),
    ("10.0.0.2", "203.0.113.5", [], "10.0.0.2"),  # no proxies configured: never believed
    ("10.0.0.2", "10.0.0.7, 10.0.0.8", PROXIES, "10.0.0.7"),
    ("10.0.0.2", "garbage", PROXIES, None),
    ("::ffff:198.51.100.1", None, PROXIES, "198.51.100.1"),
    ("fd00::1", "[2001:db8::5]:4711", PROXIES, "2001:db8::5"),
])
def test_client_address(peer: str, xff: str | None, trusted: list, expected: str | None) -> None:
    got = client_address(peer, xff, trusted)
    assert (str(got) if got else None) == expected


def test_parse_address_forms() -> None:
    assert str(parse_address("203.0.113.5:443")) == "203.0.113.5"
    assert parse_address("") is None
    assert parse_address("not-an-ip") is None


# ----------------------------------------------------------------------------- credentials file

def parse(doc: dict, env: dict[str, str] | None = None) -> dict:
    return parse_credentials(doc, "creds.yaml", env or {})


def test_a_full_credential() -> None:
    creds = parse({"credentials": {"intarget": {"password_hash": hash_password("p" * 12), "hmac_secret_env": "S",
                                                "allow_from": ["203.0.113.0/24"], "feeds": ["players"],
                                                "metrics": True}}}, {"S": SECRET})
    cred = creds["intarget"]
    assert cred.hmac_secret == SECRET.encode()
    assert cred.may_read("players") and not cred.may_read("contacts")
    assert cred.allows(ipaddress.ip_address("203.0.113.200")) and not cred.allows(ipaddress.ip_address("1.1.1.1"))
    assert cred.metrics
    assert SECRET not in repr(cred)


def test_secret_from_a_file_is_stripped(tmp_path: Path) -> None:
    (tmp_path / "s").write_text(SECRET + "\n")
    cred = parse({"credentials": {"x": {"hmac_secret_file": str(tmp_path / "s"), "feeds": "*"}}})["x"]
    assert cred.hmac_secret == SECRET.encode()
    assert cred.may_read("anything")
    assert cred.allows(None)  # no allowlist: any address


@pytest.mark.parametrize(("spec", "message"), [
    ({"hmac_secret": SECRET, "feeds": "*"}, "do not write an HMAC secret"),
    ({"hmac_secret_env": "MISSING", "feeds": "*"}, "MISSING is not set"),
    ({"hmac_secret_env": "SHORT", "feeds": "*"}, "at least 32"),
    ({"password_hash": "plain", "feeds": "*"}, "scrypt"),
    ({"feeds": "*"}, "give password_hash"),
    ({"hmac_secret_env": "S"}, "'feeds' must be"),
    ({"hmac_secret_env": "S", "feeds": "*", "allow_from": ["10.0.0.1/8"]}, "not an address or CIDR"),
    ({"hmac_secret_env": "S", "feeds": "*", "allow_from": "10.0.0.0/8"}, "must be a list"),
    ({"hmac_secret_env": "S", "hmac_secret_file": "/x", "feeds": "*"}, "only one of"),
    ({"hmac_secret_env": "S", "feeds": "*", "passwd": "x"}, "unknown keys"),
    ({"hmac_secret_env": "S", "feeds": "*", "metrics": "yes"}, "true or false"),
])
def test_credential_mistakes_name_the_file_the_credential_and_the_fix(spec: dict, message: str) -> None:
    with pytest.raises(CredentialsError, match=message) as info:
        parse({"credentials": {"intarget": spec}}, {"S": SECRET, "SHORT": "short"})
    assert "creds.yaml" in str(info.value) and "intarget" in str(info.value)


def test_credential_feeds_must_be_served_here() -> None:
    creds = parse({"credentials": {"x": {"hmac_secret_env": "S", "feeds": ["players", "playrs"]}}}, {"S": SECRET})
    with pytest.raises(CredentialsError, match="playrs"):
        check_feeds(creds, ["players", "contacts"], "creds.yaml")


# ----------------------------------------------------------------------------- exposure rule

@pytest.mark.parametrize(("bind", "loopback"), [
    ("127.0.0.1:8000", True), ("127.0.0.2:80", True), ("[::1]:8000", True), ("localhost:8000", True),
    ("0.0.0.0:8000", False), ("[::]:8000", False), ("192.0.2.4:443", False), ("unix:/run/feedstore.sock", False),
    ("example.com:80", False),
])
def test_loopback_bind(bind: str, loopback: bool) -> None:
    assert loopback_bind(bind) is loopback


def test_without_credentials_only_a_loopback_bind_without_a_proxy_may_serve() -> None:
    assert authenticator(Settings(bind="127.0.0.1:8000"), ["players"], {}) is None
    with pytest.raises(ConfigError, match="FEEDSTORE_CREDENTIALS"):
        authenticator(Settings(bind="0.0.0.0:8000"), ["players"], {})
    with pytest.raises(ConfigError, match="FEEDSTORE_TRUSTED_PROXIES"):
        authenticator(Settings(bind="127.0.0.1:8000", trusted_proxies="10.0.0.0/8"), ["players"], {})


def test_settings_with_a_credentials_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("credentials:\n  intarget:\n    hmac_secret_env: S\n    feeds: [players]\n")
    auth = authenticator(Settings(bind="0.0.0.0:8000", credentials_path=str(path)), ["players"], {"S": SECRET})
    assert auth is not None and list(auth.credentials) == ["intarget"]
    with pytest.raises(CredentialsError, match="not served here"):
        authenticator(Settings(bind="0.0.0.0:8000", credentials_path=str(path)), ["contacts"], {"S": SECRET})
    with pytest.raises(ConfigError, match="FEEDSTORE_TRUSTED_PROXIES"):
        authenticator(Settings(trusted_proxies="10.0.0.0/33", credentials_path=str(path)), ["players"], {"S": SECRET})
