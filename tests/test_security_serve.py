"""The real ``feedstore serve`` over HTTPS with credentials, against the local stack.

TLS from gunicorn with a throwaway CA (trustme); the copy-paste examples of
docs/api.md run as written (curl and Python, Basic and HMAC); /ready and /metrics see
the real consumer's partitions and lag; the app log and gunicorn's access log are JSON,
carry request ids and hold no secret. Also: what ``feedstore serve`` refuses to start.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen

import psycopg
import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from api import signing
from api.passwords import hash_password
from deploy.localstack.procs import free_port, port_open, spawn, stop, wait_until
from deploy.localstack.stack import LocalStack

PROJECT = Path(__file__).resolve().parents[1]
MAPPING = PROJECT / "deploy" / "mappings" / "spacevegas.yaml"
DOC = PROJECT / "docs" / "api.md"
USER, PASSWORD = "intarget", "tls-test-password-" + secrets.token_hex(4)
SECRET = secrets.token_hex(32)
EXAMPLE = re.compile(r"<!-- example: (\S+) -->\n```(\w+)\n(.*?)```", re.S)


def doc_examples() -> dict[str, tuple[str, str]]:
    return {name: (lang, code) for name, lang, code in EXAMPLE.findall(DOC.read_text())}


@dataclass
class Served:
    url: str
    ca: Path
    proc: Popen[bytes]
    log: Path
    access_log: Path

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30, context=self.context()) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()


def basic(user: str = USER, password: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture(scope="module")
def tls_served(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp / "key.pem"))
    (tmp / "credentials.yaml").write_text(
        f"credentials:\n  {USER}:\n    password_hash: '{hash_password(PASSWORD)}'\n"
        f"    hmac_secret_env: FEEDSTORE_TEST_HMAC\n    feeds: '*'\n    metrics: true\n")
    port = free_port()
    env = dict(os.environ)
    env.update({
        "FEEDSTORE_DB": str(tmp / "feedstore.duckdb"), "FEEDSTORE_MAPPING": str(MAPPING),
        "FEEDSTORE_KAFKA_BOOTSTRAP": stack.bootstrap, "FEEDSTORE_BIND": f"127.0.0.1:{port}",
        "FEEDSTORE_GROUP_ID": f"tls-{uuid.uuid4().hex[:8]}", "FEEDSTORE_LOG_FORMAT": "json",
        "FEEDSTORE_CREDENTIALS": str(tmp / "credentials.yaml"), "FEEDSTORE_TEST_HMAC": SECRET,
        "FEEDSTORE_TLS_CERT": str(tmp / "cert.pem"), "FEEDSTORE_TLS_KEY": str(tmp / "key.pem"),
        "FEEDSTORE_ACCESS_LOG": str(tmp / "access.log"), "PYTHONPATH": str(PROJECT),
    })
    log = tmp / "serve.log"
    proc = spawn([sys.executable, "-m", "feedstore.cli", "serve"], log=log, env=env)
    wait_until(lambda: port_open(port), timeout=60, what="feedstore serve (TLS)", log=log, proc=proc)
    served = Served(f"https://127.0.0.1:{port}", tmp / "ca.pem", proc, log, tmp / "access.log")
    yield served
    stop(proc, signal.SIGTERM, timeout=20)
    text = log.read_text() + (served.access_log.read_text() if served.access_log.exists() else "")
    assert "Traceback" not in text, text[-3000:]
    for secret in (PASSWORD, SECRET, basic()["Authorization"][6:]):
        assert secret not in text


def test_basic_over_tls(tls_served: Served) -> None:
    window = "/api/players?from=2020-10-10+07:00:00&to=2020-10-10+08:00:00"
    status, _, body = tls_served.get(window, basic())
    assert status == 200
    assert body.startswith(b"id,first_name,")
    assert tls_served.get(window, basic(password="wrong"))[0] == 401
    assert tls_served.get(window)[0] == 401
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(tls_served.url.replace("https:", "http:") + window, timeout=5)


@pytest.mark.parametrize("name", ["basic-curl", "basic-python", "hmac-curl", "hmac-python"])
def test_the_docs_examples_work_as_written(tls_served: Served, tmp_path: Path, name: str) -> None:
    lang, code = doc_examples()[name]
    tools = ["curl", "openssl", "bash"] if lang == "sh" else []
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not on this machine")
    env = {**os.environ, "FEEDSTORE_URL": tls_served.url, "FEEDSTORE_USER": USER, "FEEDSTORE_PASSWORD": PASSWORD,
           "FEEDSTORE_KEY": USER, "FEEDSTORE_SECRET": SECRET,
           "CURL_CA_BUNDLE": str(tls_served.ca), "SSL_CERT_FILE": str(tls_served.ca)}
    if lang == "sh":
        argv = ["bash", "-euo", "pipefail", "-c", code]
    else:
        (tmp_path / "example.py").write_text(code)
        argv = [sys.executable, str(tmp_path / "example.py")]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "players.csv").read_text().startswith("id,first_name,")


def test_the_docs_python_signer_is_the_servers_recipe() -> None:
    namespace: dict[str, object] = {}
    exec(doc_examples()["hmac-python"][1], namespace)  # our own docs' snippet, run as a client would
    sign = namespace["feedstore_authorization"]
    for query in ("from=2020-10-10+07:00:00&to=2020-10-10+08:00:00", "to=a%20b&from=%3A&format=csv", ""):
        header = sign(USER, SECRET, "get", "/api/players", query)  # type: ignore[operator]
        scheme, _, rest = header.partition(" ")
        parsed = signing.parse_authorization(rest)
        assert scheme == signing.SCHEME
        assert parsed.sig == signing.signature(SECRET.encode(), "GET", "/api/players", query, parsed.ts, parsed.nonce)


def test_ready_and_metrics_see_the_real_consumer(tls_served: Served, stack: LocalStack) -> None:
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO users (fname, lname, sex, country_name, city, lang, tz, dob, created, state) "
                     "VALUES ('Tess', 'Lane', 'F', 'Malta', 'Rabat', 'en-GB', 'Europe/Malta', '1990-01-01', "
                     "'2024-07-01 10:00:00', 0)")
    deadline = time.monotonic() + 60
    while True:
        status, _, body = tls_served.get("/ready")
        ready = json.loads(body)
        if status == 200 and ready["lag"]["partitions"]:
            break
        assert time.monotonic() < deadline, f"not ready after 60 s: {ready}"
        time.sleep(0.5)
    users = {k for k in ready["lag"]["partitions"] if k.startswith("spacevegas.public.users[")}
    assert len(users) >= 1
    assert ready["lag"]["total"] <= ready["lag"]["max"]
    assert tls_served.get("/metrics")[0] == 401

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, _, body = tls_served.get("/metrics", basic())
        assert status == 200
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}

    samples = scrape()
    while samples[("feedstore_events_total", ())] < 1:  # the insert above is on its way through Debezium
        assert time.monotonic() < deadline + 30, "no event stored in 90 s"
        time.sleep(0.5)
        samples = scrape()
    lag = {labels: v for (name, labels), v in samples.items() if name == "feedstore_consumer_lag"}
    assert {dict(labels)["topic"] for labels in lag} >= {"spacevegas.public.users"}
    assert all(v >= 0 for v in lag.values())
    assert samples[("feedstore_events_total", ())] >= 1
    assert samples[("feedstore_feed_rows", (("feed", "players"),))] >= 1
    assert ("feedstore_newest_stamp_age_seconds", ()) in samples


def test_logs_are_json_with_request_ids(tls_served: Served) -> None:
    rid = f"it-{uuid.uuid4().hex[:8]}"
    tls_served.get("/api/players?from=2020-10-10+07:00:00&to=2020-10-10+08:00:00",
                   {**basic(), "X-Request-Id": rid, "User-Agent": 'quote" in UA'})
    tls_served.get("/api/players?from=2020-10-10+07:00:00&to=2020-10-10+08:00:00", basic(password="nope"))
    deadline = time.monotonic() + 10
    while rid not in tls_served.access_log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    access = [json.loads(line) for line in tls_served.access_log.read_text().splitlines()]
    mine = [a for a in access if a.get("request_id") == rid]
    assert mine and mine[0]["status"] == 200 and mine[0]["user_agent"] == 'quote" in UA'
    app_lines = [json.loads(line) for line in tls_served.log.read_text().splitlines() if line.startswith("{")]
    requests = [a for a in app_lines if a.get("message") == "request" and a.get("request_id") == rid]
    assert requests and requests[0]["credential"] == USER and requests[0]["feed"] == "players"
    assert any(a.get("message") == "refused: invalid" for a in app_lines)


def run_serve(env_extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEEDSTORE_")}
    env.update({"FEEDSTORE_MAPPING": str(MAPPING), "PYTHONPATH": str(PROJECT), **env_extra})
    return subprocess.run([sys.executable, "-m", "feedstore.cli", "serve", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_serve_refuses_an_open_api_on_all_interfaces() -> None:
    done = run_serve({}, "--bind", f"0.0.0.0:{free_port()}")
    assert done.returncode == 2
    assert "FEEDSTORE_CREDENTIALS" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_refuses_an_unusable_tls_pair(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    done = run_serve({"FEEDSTORE_TLS_CERT": str(tmp_path / "cert.pem"), "FEEDSTORE_TLS_KEY": str(tmp_path / "k")})
    assert done.returncode == 2
    assert "FEEDSTORE_TLS_CERT" in done.stderr
    only_one = run_serve({"FEEDSTORE_TLS_CERT": str(tmp_path / "cert.pem")})
    assert only_one.returncode == 2 and "both" in only_one.stderr


def test_serve_refuses_a_broken_credentials_file(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("credentials:\n  intarget:\n    hmac_secret_env: NOT_SET\n    feeds: '*'\n")
    done = run_serve({"FEEDSTORE_CREDENTIALS": str(tmp_path / "c.yaml")})
    assert done.returncode == 2
    assert "NOT_SET is not set" in done.stderr and "intarget" in done.stderr
