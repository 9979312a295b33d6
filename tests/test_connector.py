"""The connector JSON, derived from the mapping: pure checks, no services."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.localstack.connect import resolve
from deploy.localstack.procs import StackError
from feedstore.cli import main
from feedstore.connector import (
    HEARTBEAT_PREFIX,
    ConnectorError,
    Database,
    SourceNames,
    connector_config,
    include_list,
    register,
    source_tables,
)
from materializer.mapping import Mapping, load_mapping, parse_mapping

PROJECT = Path(__file__).resolve().parents[1]
REFERENCE = PROJECT / "deploy" / "mappings" / "spacevegas.yaml"


@pytest.fixture(scope="module")
def mapping() -> Mapping:
    return load_mapping(REFERENCE)


def players_only(prefix: str = "acme", **players: Any) -> Mapping:
    """The reference players mapping, re-homed under another prefix (tests that need one table)."""
    doc = yaml.safe_load(REFERENCE.read_text())
    feed = doc["feeds"]["players"] | players
    tables = {k: v for k, v in (doc.get("tables") or {}).items() if k == feed["source"]}
    return parse_mapping({"topic_prefix": prefix, "source_zone": doc.get("source_zone", "UTC"),
                          "tables": tables, "feeds": {"players": feed}}, Path("test.yaml"))


DB = Database(hostname="db.internal", dbname="casino")


def test_config_is_what_kafka_connect_accepts(mapping: Mapping) -> None:
    out = connector_config(mapping, DB)
    assert set(out) == {"name", "config"}
    cfg = out["config"]
    assert cfg["name"] == out["name"] == f"{mapping.topic_prefix}-feedstore"
    # Connect's REST API takes a flat map of strings.
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in cfg.items())
    json.loads(json.dumps(out))
    assert cfg["connector.class"] == "io.debezium.connector.postgresql.PostgresConnector"
    assert cfg["topic.prefix"] == mapping.topic_prefix
    assert cfg["plugin.name"] == "pgoutput"
    assert cfg["publication.autocreate.mode"] == "filtered"
    assert (cfg["slot.name"], cfg["publication.name"]) == ("feedstore", "feedstore_publication")
    assert cfg["tasks.max"] == "1"


def test_captures_exactly_the_mapped_tables_and_the_signal_table(mapping: Mapping) -> None:
    cfg = connector_config(mapping, DB, SourceNames(signal_table="ops.signals"))["config"]
    entries = cfg["table.include.list"].split(",")
    mapped = sorted({fm.source.name for fm in mapping.feeds.values()})
    # Debezium matches each entry as an anchored regex against schema.table.
    for table in [*mapped, "ops.signals"]:
        assert sum(bool(re.fullmatch(e, table)) for e in entries) == 1, table
    assert not any(re.fullmatch(e, "publicxusers") for e in entries)
    assert len(entries) == len(mapped) + 1
    assert cfg["signal.data.collection"] == "ops.signals"
    # topics for every mapped table are the ones the consumer subscribes to
    assert {f"{cfg['topic.prefix']}.{t}" for t in mapped} == set(mapping.topics)


def test_encodings_are_the_ones_the_decoder_reads_losslessly(mapping: Mapping) -> None:
    cfg = connector_config(mapping, DB)["config"]
    assert cfg["decimal.handling.mode"] == "precise"  # base64 + scale -> exact Decimal
    assert cfg["time.precision.mode"] == "adaptive_time_microseconds"  # 'time' columns as MicroTime
    assert cfg["value.converter"] == cfg["key.converter"] == "org.apache.kafka.connect.json.JsonConverter"
    assert cfg["value.converter.schemas.enable"] == cfg["key.converter.schemas.enable"] == "true"
    assert cfg["topic.heartbeat.prefix"] == HEARTBEAT_PREFIX == "__debezium-heartbeat"
    assert int(cfg["heartbeat.interval.ms"]) > 0
    assert cfg["tombstones.on.delete"] == "true"


def test_password_is_a_provider_reference_never_the_secret() -> None:
    db = Database.from_options("postgresql://debezium:s3cret@db.internal:6432/casino")
    assert (db.hostname, db.port, db.user, db.dbname) == ("db.internal", 6432, "debezium", "casino")
    cfg = connector_config(players_only(), db)["config"]
    assert "s3cret" not in json.dumps(cfg)
    assert cfg["database.password"].startswith("${file:")
    with pytest.raises(ConnectorError, match="config-provider reference"):
        Database(hostname="h", dbname="d", password_ref="s3cret")
    with pytest.raises(ConnectorError, match="password"):
        connector_config(players_only(), db, extra={"database.password": "s3cret"})
    ok = Database(hostname="h", dbname="d", password_ref="${env:SOURCE_DB_PASSWORD}")
    assert connector_config(players_only(), ok)["config"]["database.password"] == "${env:SOURCE_DB_PASSWORD}"


def test_database_options_override_the_dsn_and_missing_parts_are_named() -> None:
    db = Database.from_options("postgresql://a@h1/d1", hostname="h2", port="7000")
    assert (db.hostname, db.port, db.user, db.dbname) == ("h2", 7000, "a", "d1")
    with pytest.raises(ConnectorError, match="hostname and dbname"):
        Database.from_options(None)
    with pytest.raises(ConnectorError, match="not a number"):
        Database.from_options("postgresql://a@h/d", port="x")


def test_names_are_checked() -> None:
    with pytest.raises(ConnectorError, match="lower-case"):
        SourceNames(slot="Feed-Store")
    with pytest.raises(ConnectorError, match="schema.table"):
        SourceNames(signal_table="signals")
    with pytest.raises(ConnectorError, match="filtered"):
        SourceNames(publication_mode="some")


def test_a_topic_override_the_connector_cannot_produce_is_refused() -> None:
    doc = yaml.safe_load(REFERENCE.read_text())
    feed = doc["feeds"]["players"]
    m = parse_mapping({"topic_prefix": "acme", "tables": {feed["source"]: {"topic": "legacy.users"}},
                       "feeds": {"players": feed}}, Path("t.yaml"))
    with pytest.raises(ConnectorError, match="legacy.users"):
        connector_config(m, DB)


def test_include_list_escapes_regex_characters() -> None:
    assert include_list(["public.users", "s.t$x"]) == r"public\.users,s\.t\$x"
    assert source_tables(players_only()) == [players_only().feeds["players"].source.name]


def test_cli_prints_the_json_and_extra_properties(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["connector-config", "--mapping", str(REFERENCE), "--dsn", "postgresql://dbz@db/casino",
                 "--name", "sv", "--set", "snapshot.fetch.size=20000", "--slot", "sv_slot"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["name"] == "sv" and out["config"]["database.user"] == "dbz"
    assert out["config"]["snapshot.fetch.size"] == "20000" and out["config"]["slot.name"] == "sv_slot"
    target = tmp_path / "c.json"
    assert main(["connector-config", "--mapping", str(REFERENCE), "--dsn", "postgresql://dbz@db/casino",
                 "-o", str(target)]) == 0
    assert json.loads(target.read_text())["config"]["database.dbname"] == "casino"


def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["connector-config", "--mapping", str(REFERENCE), "--set", "novalue"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("feedstore: ") and err.count("\n") == 1


# --------------------------------------------------------------------------- config providers

def test_resolve_reads_env_file_and_dir_providers(tmp_path: Path) -> None:
    (tmp_path / "db.properties").write_text("# secrets\nuser = dbz\npassword=p=w:1\n")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pw").write_text("from-dir\n")
    cfg = {"a": "${env:PW}", "b": f"${{file:{tmp_path}/db.properties:password}}",
           "c": f"${{dir:{tmp_path}/secrets:pw}}", "d": "plain ${not:a-provider}"}
    assert resolve(cfg, {"PW": "from-env"}) == {"a": "from-env", "b": "p=w:1", "c": "from-dir",
                                                "d": "plain ${not:a-provider}"}
    with pytest.raises(StackError, match="not set"):
        resolve({"a": "${env:NOPE}"}, {})
    with pytest.raises(StackError, match="no key 'pass'"):
        resolve({"a": f"${{file:{tmp_path}/db.properties:pass}}"}, {})
    with pytest.raises(StackError, match="cannot read"):
        resolve({"a": "${file:/nonexistent/x.properties:password}"}, {})


# --------------------------------------------------------------------------- registration

class _Connect(BaseHTTPRequestHandler):
    """Answers like Kafka Connect's REST API does for PUT .../config and GET .../status."""

    seen: list[tuple[str, str, Any]] = []
    status: dict[str, Any] = {}
    refuse: str | None = None

    def do_PUT(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(("PUT", self.path, body))
        if self.refuse:
            self._send(400, {"error_code": 400, "message": self.refuse})
        else:
            self._send(201, {"name": body["name"], "config": body})

    def do_GET(self) -> None:
        type(self).seen.append(("GET", self.path, None))
        self._send(200, type(self).status)

    def _send(self, code: int, doc: Any) -> None:
        raw = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def connect_api() -> Iterator[tuple[str, type[_Connect]]]:
    handler = type("Connect", (_Connect,), {"seen": [], "status": {}, "refuse": None})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", handler
    server.shutdown()
    server.server_close()


def test_register_puts_the_config_and_waits_for_running(connect_api: tuple[str, type[_Connect]]) -> None:
    url, api = connect_api
    connector = connector_config(players_only(), DB, name="acme")
    api.status = {"connector": {"state": "RUNNING"}, "tasks": [{"id": 0, "state": "RUNNING"}]}
    assert "created and RUNNING" in register(connector, url + "/")
    method, path, body = api.seen[0]
    assert (method, path) == ("PUT", "/connectors/acme/config")
    assert body == connector["config"]


def test_register_reports_connects_refusal_and_a_failed_task(connect_api: tuple[str, type[_Connect]]) -> None:
    url, api = connect_api
    connector = connector_config(players_only(), DB, name="acme")
    api.refuse = "Connector configuration is invalid and contains 1 error(s)"
    with pytest.raises(ConnectorError, match="refused connector acme .400.: Connector configuration is invalid"):
        register(connector, url)
    api.refuse = None
    api.status = {"connector": {"state": "RUNNING"},
                  "tasks": [{"id": 0, "state": "FAILED", "trace": "io.debezium.DebeziumException: no slot\n\tat x"}]}
    with pytest.raises(ConnectorError, match="failed: io.debezium.DebeziumException: no slot;"):
        register(connector, url)


def test_register_names_an_unreachable_worker() -> None:
    with pytest.raises(ConnectorError, match="not reachable at http://127.0.0.1:9"):
        register(connector_config(players_only(), DB), "http://127.0.0.1:9")
