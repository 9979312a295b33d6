"""The real local stack (Postgres -> Debezium -> tansu) and a real ``feedstore serve``.

The stack starts once per test session (~5 s); each test that needs the API gets its
own ``feedstore serve`` process with a fresh DuckDB file, reading the same topics.
"""

from __future__ import annotations

import signal
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from email.message import Message
from pathlib import Path
from subprocess import Popen
from typing import Any

import orjson
import psycopg
import pytest

from deploy.localstack.demo import serve_process
from deploy.localstack.procs import free_port, port_open, stop, wait_until
from deploy.localstack.stack import LocalStack


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    if request.config.getoption("--stack") == "containers":  # tests/fix_containers.py; skips without Docker
        yield request.getfixturevalue("containers_stack")
        return
    # Not under pytest's basetemp: a second pytest session resets that tree to mode 0700,
    # and the stack's Postgres runs as another OS user (as root) and would lose its files.
    s = LocalStack(workdir=Path(tempfile.mkdtemp(prefix="feedstore-test-stack-")))
    s.start()
    yield s
    s.stop()


@pytest.fixture
def pg(stack: LocalStack) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        yield conn


@dataclass
class Served:
    """A running ``feedstore serve`` and a client for it."""

    url: str
    proc: Popen[bytes]
    log: Path

    def get(self, path: str, **params: str) -> tuple[int, Message, bytes]:
        query = urllib.parse.urlencode(params, quote_via=urllib.parse.quote)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.headers, err.read()

    def pull(self, feed: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
        status, _, body = self.get(f"/api/{feed}", **{"from": f"{start:%Y-%m-%d %H:%M:%S}",
                                                      "to": f"{end:%Y-%m-%d %H:%M:%S}", "format": "json"})
        assert status == 200, body
        rows: list[dict[str, Any]] = orjson.loads(body)
        return rows

    def wait_for(self, check: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.2)
        raise AssertionError(f"condition not met in {timeout}s; serve log tail:\n"
                             + "\n".join(self.log.read_text().splitlines()[-20:]))


@pytest.fixture
def served(stack: LocalStack, tmp_path: Path) -> Iterator[Served]:
    port = free_port()
    proc = serve_process(stack, port, tmp_path / "feedstore.duckdb", log_format="json")
    log = tmp_path / "serve.log"
    wait_until(lambda: port_open(port), timeout=60, what="feedstore serve", log=log, proc=proc)
    yield Served(f"http://127.0.0.1:{port}", proc, log)
    stop(proc, signal.SIGTERM, timeout=20)
    text = log.read_text()
    assert "Traceback" not in text, f"serve logged a traceback:\n{text[-3000:]}"
