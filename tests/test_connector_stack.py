"""The generated connector config, judged by Debezium itself and then run end to end.

``validate`` is the connector's own ``PostgresConnector.validate`` (what Kafka Connect's
validate endpoint calls) in a child JVM. The end-to-end test is the operator's path:
``source check --apply``, ``connector-config``, the connector streaming, ``feedstore
serve`` pulling a window with the right rows.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from deploy.localstack.connect import start_engine, validate_all
from deploy.localstack.procs import free_port, port_open, spawn, stop, wait_until
from deploy.localstack.stack import LocalStack
from feedstore.cli import main
from tests.fix_onboard import REFERENCE, Source, players_mapping
from tests.fix_stack import Served

pytestmark = pytest.mark.stack
PROJECT = Path(__file__).resolve().parents[1]


def generated(tmp_path: Path, *args: str) -> dict[str, str]:
    out = tmp_path / f"connector-{uuid.uuid4().hex[:6]}.json"
    assert main(["connector-config", "-o", str(out), *args]) == 0
    config: dict[str, str] = json.loads(out.read_text())["config"]
    return config


def test_debezium_accepts_the_generated_config(stack: LocalStack, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("unused-with-trust-auth\n")
    dsn = f"postgresql://postgres@127.0.0.1:{stack.postgres.port}/{stack.postgres.dbname}"
    config = generated(tmp_path, "--mapping", str(REFERENCE), "--dsn", dsn, "--password-ref",
                       f"${{dir:{tmp_path}:pw}}")
    valid, bad_value, bad_user = validate_all([config, config | {"decimal.handling.mode": "exact"},
                                               config | {"database.user": "nobody"}])
    assert valid == {}
    # the validation is real: a value Debezium does not know is named, with its reason
    assert list(bad_value) == ["decimal.handling.mode"] and "precise" in bad_value["decimal.handling.mode"][0]
    # and it connects as the config says
    assert 'role "nobody" does not exist' in " ".join(bad_user["database.hostname"])


def test_cli_validate_reports_the_connectors_verdict(stack: LocalStack, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{stack.postgres.port}/{stack.postgres.dbname}"
    (tmp_path / "pw").write_text("x")
    ref = f"${{dir:{tmp_path}:pw}}"
    assert main(["connector-config", "--mapping", str(REFERENCE), "--dsn", dsn, "--password-ref", ref,
                 "--validate"]) == 0
    assert "connector config is valid" in capsys.readouterr().out
    assert main(["connector-config", "--mapping", str(REFERENCE), "--dsn", dsn, "--password-ref", ref,
                 "--set", "snapshot.mode=sometimes", "--validate"]) == 2
    err = capsys.readouterr().err
    assert "snapshot.mode:" in err and "feedstore: Debezium rejects the connector config (1 properties)" in err


def serve(tmp_path: Path, mapping: Path, bootstrap: str) -> Served:
    port = free_port()
    env = dict(os.environ, FEEDSTORE_DB=str(tmp_path / "fs.duckdb"), FEEDSTORE_MAPPING=str(mapping),
               FEEDSTORE_KAFKA_BOOTSTRAP=bootstrap, FEEDSTORE_BIND=f"127.0.0.1:{port}",
               FEEDSTORE_LOG_FORMAT="json", PYTHONPATH=str(PROJECT))
    log = tmp_path / "serve.log"
    proc = spawn([sys.executable, "-m", "feedstore.cli", "serve"], log=log, env=env, death_signal=signal.SIGTERM)
    wait_until(lambda: port_open(port), timeout=60, what="feedstore serve", log=log, proc=proc)
    return Served(f"http://127.0.0.1:{port}", proc, log)


def test_operator_path_from_an_empty_database_to_a_pulled_window(source: Source, tmp_path: Path) -> None:
    mapping = players_mapping(tmp_path, source, prefix=f"onb{source.tag}")
    assert main(["source", "check", *source.args(mapping), "--role", source.role, "--apply", "--yes"]) == 0
    # rows from before the connector existed arrive through its snapshot, later ones through the stream
    source.sql("INSERT INTO users (user_id, fname, lname, sex, country_name, city, lang, tz, state) VALUES "
               "(1, 'Ada', 'Lovelace', 'F', 'Malta', 'Valletta', 'en-GB', 'Europe/Malta', 0), "
               "(2, 'Bob', 'Borg', 'M', 'Malta', 'Mdina', 'mt', 'Europe/Malta', 1)")
    (tmp_path / "secret").write_text("")
    config = generated(tmp_path, *source.args(mapping, source.dsn(source.role)),
                       "--password-ref", f"${{dir:{tmp_path}:secret}}")
    assert config["database.user"] == source.role
    start = datetime.now(UTC).replace(tzinfo=None, microsecond=0) - timedelta(seconds=1)
    engine = start_engine(config, source.stack.bootstrap, tmp_path / "engine")
    served = None
    try:
        source.sql("INSERT INTO users (user_id, fname, lname, sex, country_name, state) "
                   "VALUES (3, 'Cy', 'Grech', 'M', 'Malta', 0)")
        source.sql("UPDATE users SET city = 'Sliema' WHERE user_id = 1")
        source.sql("DELETE FROM users WHERE user_id = 2")
        served = serve(tmp_path, mapping, source.stack.bootstrap)
        end = start + timedelta(hours=1)

        def settled() -> bool:
            rows = {r["id"]: r for r in served.pull("players", start, end)}
            return rows.keys() == {"1", "2", "3"} and rows["1"]["city"] == "Sliema" and \
                rows["2"]["status"] == "Deleted"

        served.wait_for(settled, timeout=60)
        rows = {r["id"]: r for r in served.pull("players", start, end)}
        assert (rows["1"]["first_name"], rows["1"]["gender"], rows["1"]["locale"]) == ("Ada", "female", "en_GB")
        assert (rows["3"]["last_name"], rows["3"]["gender"], rows["3"]["status"]) == ("Grech", "male", "Normal")
        assert rows["2"]["is_blocked"] is True
    finally:
        if served is not None:
            stop(served.proc, signal.SIGTERM, timeout=20)
        engine.stop()
    assert "Traceback" not in (tmp_path / "serve.log").read_text()
    assert "is already up to date with desired tables" in engine.log.read_text()  # no ALTER by Debezium
