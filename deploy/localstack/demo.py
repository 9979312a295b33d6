"""``make demo``: the whole pipeline on this machine, with rows changing while you watch.

Postgres (legacy SpaceVegas schema, no modified_at anywhere) -> real Debezium -> tansu
-> ``feedstore serve`` -> http://127.0.0.1:8000. A workload registers and edits users;
every few seconds the demo pulls the last minute's window and prints what changed.
Ctrl-C stops everything it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

from deploy.localstack.procs import port_open, spawn, stop, wait_until
from deploy.localstack.stack import LocalStack
from deploy.localstack.workload import Workload
from materializer.stamp import utc_now

PROJECT = Path(__file__).resolve().parents[2]
MAPPING = PROJECT / "deploy" / "mappings" / "spacevegas.yaml"


def serve_process(stack: LocalStack, port: int, db: Path, *, log_format: str = "text") -> subprocess.Popen[bytes]:
    """``feedstore serve`` as a child process wired to the local stack."""
    env = dict(os.environ)
    env.update({
        "FEEDSTORE_DB": str(db), "FEEDSTORE_MAPPING": str(MAPPING),
        "FEEDSTORE_KAFKA_BOOTSTRAP": stack.bootstrap, "FEEDSTORE_BIND": f"127.0.0.1:{port}",
        "FEEDSTORE_LOG_FORMAT": log_format, "PYTHONPATH": str(PROJECT),
    })
    return spawn([sys.executable, "-m", "feedstore.cli", "serve"], log=db.parent / "serve.log", env=env,
                 death_signal=signal.SIGTERM)


def _fmt(t: object) -> str:
    return str(t)[:19].replace(" ", "+")


def run_demo(port: int = 8000, rate: float = 20.0) -> int:
    if port_open(port):
        print(f"port {port} is in use; stop what runs there or pass --port", file=sys.stderr)
        return 2
    print("starting Postgres, tansu and Debezium ...", flush=True)
    stack = LocalStack(keep_workdir=False)
    stop_event = threading.Event()
    server = None
    try:
        stack.start()
        server = serve_process(stack, port, stack.workdir / "feedstore.duckdb")
        wait_until(lambda: port_open(port), timeout=60, what="feedstore serve",
                   log=stack.workdir / "serve.log", proc=server)
        workload = Workload(stack.dsn, rate=rate)
        threading.Thread(target=workload.run, args=(stop_event,), daemon=True).start()
        now = utc_now()
        base = f"http://127.0.0.1:{port}/api/players"
        print(f"""
Feedstore demo is running (workdir {stack.workdir}).
  Postgres (legacy schema): {stack.dsn}
  Kafka bootstrap:          {stack.bootstrap}
  API:                      http://127.0.0.1:{port}   (no credentials in the demo)

Try:
  curl '{base}?from={_fmt(now - timedelta(hours=1))}&to={_fmt(now + timedelta(hours=1))}'
  curl '{base}?from={_fmt(now - timedelta(hours=1))}&to={_fmt(now + timedelta(hours=1))}&format=json'

Every 5 s the demo pulls the previous minute like InTarget would. Ctrl-C stops everything.
""", flush=True)
        while True:
            time.sleep(5)
            end = utc_now().replace(microsecond=0)
            url = f"{base}?from={_fmt(end - timedelta(minutes=1))}&to={_fmt(end)}"
            try:
                with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback URL we built
                    lines = resp.read().decode().splitlines()
            except urllib.error.HTTPError as err:
                if err.code != 503:
                    raise
                # A batch stamped inside the window is still being written (a busy machine):
                # what InTarget does too, retry after Retry-After.
                print(f"{end:%H:%M:%S}  503: {err.read().decode(errors='replace')[:100]} (retrying)", flush=True)
                continue
            print(f"{end:%H:%M:%S}  players changed in the last minute: {len(lines) - 1:4d}"
                  f"   e.g. {lines[-1][:100] if len(lines) > 1 else '-'}", flush=True)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    finally:
        stop_event.set()
        stop(server, signal.SIGTERM, timeout=20)
        stack.stop()


def run_stack(debezium: bool = True) -> int:
    stack = LocalStack(keep_workdir=True).start(debezium=debezium)
    try:
        from deploy.localstack.postgres import _binaries

        print(f"FEEDSTORE_KAFKA_BOOTSTRAP={stack.bootstrap}\nDSN={stack.dsn}\nworkdir={stack.workdir}\n"
              f"PSQL={_binaries() / 'psql'}\n"
              + ("" if debezium else "Debezium is not running: set up the source, then run your connector config "
                 "(feedstore connector-config --run-local BOOTSTRAP).\n")
              + "Ctrl-C stops the stack.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    finally:
        stack.stop()
    return 0
