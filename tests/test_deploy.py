"""deploy/: what can be validated without a Docker engine or a systemd host.

Every file is parsed, and the places where one file names another's service, port,
path, setting or secret are checked against each other, so a rename in one place
fails here instead of at an operator's first ``docker compose up``. Commands the
compose file runs are parsed by feedstore's own argument parser.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from feedstore.cli import parser
from feedstore.commands.connector_config import build
from feedstore.commands.serve import gunicorn_options
from feedstore.config import Settings

PROJECT = Path(__file__).resolve().parents[1]
DEPLOY = PROJECT / "deploy"
ENV_VARS = set(Settings._ENV.values())
LONG_RUNNING = {"postgres", "kafka", "connect", "feedstore", "proxy"}
ONE_SHOTS = {"source-setup", "register-connector"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return doc


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = compose["services"]
    return out


def env_of(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def feedstore_args(service: dict[str, Any]) -> list[str]:
    """The feedstore arguments a compose service runs (command, or the `exec feedstore` in sh -c)."""
    if "entrypoint" in service:
        words = shlex.split(service["entrypoint"][-1].replace("$$", "$"))
        return words[words.index("feedstore") + 1:]
    return list(service["command"])


# --------------------------------------------------------------------------- compose.yaml

def test_compose_has_the_production_shape(compose: dict[str, Any]) -> None:
    svc = services(compose)
    assert set(svc) == LONG_RUNNING | ONE_SHOTS
    for name in LONG_RUNNING:
        assert svc[name].get("restart") == "unless-stopped", name
        assert "healthcheck" in svc[name] or name == "proxy", name
    for name in ONE_SHOTS:
        assert svc[name]["restart"] == "no", name
    for name, s in svc.items():
        image = s["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image ({image})"


def test_compose_references_resolve(compose: dict[str, Any]) -> None:
    svc = services(compose)
    declared_volumes, declared_secrets = set(compose["volumes"]), set(compose["secrets"])
    used_volumes: set[str] = set()
    for name, s in svc.items():
        for target, dep in (s.get("depends_on") or {}).items():
            assert target in svc, f"{name} depends on unknown {target}"
            assert dep["condition"] in {"service_started", "service_healthy", "service_completed_successfully"}
            if dep["condition"] == "service_healthy":
                assert "healthcheck" in svc[target], f"{name} waits for {target}'s health, which has no check"
            if dep["condition"] == "service_completed_successfully":
                assert target in ONE_SHOTS
        for secret in s.get("secrets") or []:
            assert secret in declared_secrets, f"{name}: secret {secret} is not declared"
        for volume in s.get("volumes") or []:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared_volumes, f"{name}: volume {source} is not declared"
                used_volumes.add(source)
        if "build" in s:
            assert (DEPLOY / s["build"]["context"] / s["build"]["dockerfile"]).is_file()
        for net in s.get("networks") or []:
            assert net in compose["networks"]
    assert used_volumes == declared_volumes
    for secret in compose["secrets"].values():
        assert secret["file"].startswith("./secrets/")  # created by the operator, never committed


def test_compose_postgres_and_kafka(compose: dict[str, Any]) -> None:
    svc = services(compose)
    assert "wal_level=logical" in svc["postgres"]["command"]
    kafka = env_of(svc["kafka"])
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}  # KRaft, no ZooKeeper
    assert len(base64.urlsafe_b64decode(kafka["CLUSTER_ID"] + "==")) == 16
    bootstrap = kafka["KAFKA_ADVERTISED_LISTENERS"].split("://")[1]
    assert bootstrap.split(":")[0] == "kafka"
    assert env_of(svc["connect"])["BOOTSTRAP_SERVERS"] == bootstrap
    assert env_of(svc["feedstore"])["FEEDSTORE_KAFKA_BOOTSTRAP"] == bootstrap


def test_compose_feedstore_settings_are_real_settings(compose: dict[str, Any]) -> None:
    svc = services(compose)
    env = env_of(svc["feedstore"])
    unknown = {k for k in env if k.startswith("FEEDSTORE_")} - ENV_VARS
    assert not unknown, f"not Feedstore settings (typo?): {unknown}"
    settings = Settings.from_env(env)
    mapping_mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["feedstore"]["volumes"]}
    assert (DEPLOY / mapping_mounts[str(settings.mapping_path)]).is_file()
    assert str(settings.db_path).startswith(next(v.split(":")[1] for v in svc["feedstore"]["volumes"]
                                                 if not v.startswith(".")))
    assert settings.credentials_path == "/run/secrets/credentials.yaml" and "credentials.yaml" in svc[
        "feedstore"]["secrets"]
    # the proxy is the one trusted hop, and it sits in the network's subnet
    proxy_ip = svc["proxy"]["networks"]["feeds"]["ipv4_address"]
    subnet = ipaddress.ip_network(compose["networks"]["feeds"]["ipam"]["config"][0]["subnet"])
    assert ipaddress.ip_address(proxy_ip) in subnet
    assert ipaddress.ip_address(proxy_ip) in ipaddress.ip_network(settings.trusted_proxies)


def test_compose_one_shots_are_valid_feedstore_commands(compose: dict[str, Any]) -> None:
    svc = services(compose)
    setup = parser().parse_args(feedstore_args(svc["source-setup"]))
    assert (setup.command, setup.action, setup.apply, setup.yes) == ("source", "check", True, True)
    register = parser().parse_args(feedstore_args(svc["register-connector"]))
    assert register.command == "connector-config"
    url = register.register.split("://")[1]
    assert url == "connect:8083" and "8083:8083" in svc["connect"]["ports"][0]
    # both one-shots read the mapping the server reads
    for name in ONE_SHOTS:
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc[name]["volumes"]}
        assert mounts["/etc/feedstore/mapping.yaml"] == "./mappings/spacevegas.yaml"
    register.mapping = DEPLOY / "mappings" / "spacevegas.yaml"  # the mount's source on this side
    connector = build(register)
    cfg = connector["config"]
    assert isinstance(cfg, dict)
    assert cfg["database.hostname"] == "postgres" and cfg["database.user"] == setup.role == "debezium"
    role_script = (DEPLOY / "postgres" / "20-debezium-role.sh").read_text()
    assert f"CREATE ROLE {setup.role} " in role_script
    # the password reference points at the secret Connect has, through a provider Connect enables
    ref = re.fullmatch(r"\$\{(\w+):([^:]+):(\w+)\}", cfg["database.password"])
    assert ref is not None
    connect = env_of(svc["connect"])
    assert ref.group(1) in connect["CONNECT_CONFIG_PROVIDERS"].split(",")
    assert ref.group(2) == f"/run/secrets/{next(iter(svc['connect']['secrets']))}"
    assert "password=" in role_script  # the role script reads the same properties file


def test_connector_example_is_what_the_command_generates(compose: dict[str, Any]) -> None:
    register = parser().parse_args(feedstore_args(services(compose)["register-connector"]))
    register.mapping = DEPLOY / "mappings" / "spacevegas.yaml"
    example = json.loads((DEPLOY / "connect" / "spacevegas-connector.json").read_text())
    assert example == build(register), "regenerate it: see deploy/connect/README.md"


def test_compose_config_with_the_docker_cli_when_it_has_compose(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker CLI with its compose plugin is not installed here; structure checked above")
    done = subprocess.run([docker, "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- Dockerfile

def test_dockerfile_copies_what_exists_and_runs_feedstore() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert (PROJECT / src).exists(), src
    assert 'ENTRYPOINT ["feedstore"]' in text and 'CMD ["serve"]' in text
    pyproject = (PROJECT / "pyproject.toml").read_text()
    assert 'feedstore = "feedstore.cli:main"' in pyproject
    env = dict(re.findall(r"(FEEDSTORE_\w+)=(\S+)", text))
    assert set(env) <= ENV_VARS
    port = Settings.from_env(env).bind.rsplit(":", 1)[1]
    assert f"EXPOSE {port}" in text and f"127.0.0.1:{port}/health" in text
    assert "USER feedstore" in text


# --------------------------------------------------------------------------- gunicorn.conf.py

_PROBE = """
import json, sys
from gunicorn.app.base import Application

class Probe(Application):
    def load_config(self):
        self.load_config_from_module_name_or_filename(sys.argv[1])

    def load(self):
        raise AssertionError("not loaded in this probe")

cfg = Probe().cfg
print(json.dumps({name: repr(s.get()) for name, s in cfg.settings.items()}))
"""


def gunicorn_conf(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """gunicorn's own config loader reading deploy/gunicorn.conf.py in a process with ``env``."""
    full = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PROJECT),
            "FEEDSTORE_MAPPING": str(DEPLOY / "mappings" / "spacevegas.yaml")} | env
    return subprocess.run([sys.executable, "-c", _PROBE, str(DEPLOY / "gunicorn.conf.py")], env=full,
                          capture_output=True, text=True, timeout=60, cwd=PROJECT)


@pytest.mark.parametrize("env", [
    {},
    {"FEEDSTORE_BIND": "127.0.0.1:8123", "FEEDSTORE_THREADS": "3", "FEEDSTORE_ACCESS_LOG": ""},
])
def test_gunicorn_conf_gives_the_same_server_as_feedstore_serve(env: dict[str, str]) -> None:
    done = gunicorn_conf(env)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    expected = gunicorn_options(Settings.from_env({"FEEDSTORE_MAPPING": "x"} | env))
    assert expected["workers"] == 1
    for name, value in expected.items():
        want = [value] if name == "bind" else value
        assert loaded[name] == repr(want), name
    assert loaded["wsgi_app"] == repr("api.app:get_app()")


def test_gunicorn_conf_refuses_a_bad_setting_in_one_line() -> None:
    done = gunicorn_conf({"FEEDSTORE_THREADS": "many"})
    assert done.returncode == 2
    assert done.stderr.strip() == "feedstore: FEEDSTORE_THREADS='many' is not a valid int"


# --------------------------------------------------------------------------- systemd, proxies

def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (DEPLOY / "systemd" / "feedstore.service").read_text()
    exec_start = re.search(r"^ExecStart=(\S+) serve$", unit, re.M)
    assert exec_start is not None
    for key in ("Type=notify", "User=feedstore", "EnvironmentFile=/etc/feedstore/feedstore.env",
                "StateDirectory=feedstore", "Restart=on-failure", "RestartPreventExitStatus=2",
                "WantedBy=multi-user.target"):
        assert re.search(rf"^{re.escape(key)}$", unit, re.M), key
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed; the unit's keys were checked above")
    # the same unit, with the executable this checkout has instead of /opt/feedstore's
    local = tmp_path / "feedstore.service"
    local.write_text(unit.replace(exec_start.group(1), str(Path(sys.executable).parent / "feedstore")))
    done = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "feedstore.service:" not in done.stderr, done.stderr  # no warnings about our lines


def test_systemd_env_file_holds_valid_settings() -> None:
    pairs = dict(line.split("=", 1) for line in (DEPLOY / "systemd" / "feedstore.env").read_text().splitlines()
                 if line and not line.startswith("#"))
    assert set(pairs) <= ENV_VARS
    settings = Settings.from_env(pairs)
    nginx = (DEPLOY / "proxy" / "nginx.conf").read_text()
    assert f"server {settings.bind};" in nginx
    assert ipaddress.ip_address("127.0.0.1") in ipaddress.ip_network(settings.trusted_proxies)


def test_proxies_forward_to_feedstore(compose: dict[str, Any]) -> None:
    caddy = (DEPLOY / "proxy" / "Caddyfile").read_text()
    nginx = (DEPLOY / "proxy" / "nginx.conf").read_text()
    for text in (caddy, nginx):
        assert text.count("{") == text.count("}")
        for route in ("api/", "health", "ready"):
            assert route in text
        assert "metrics" not in text.replace("/metrics stays inside", "")  # /metrics is not exposed
    port = Settings.from_env(env_of(services(compose)["feedstore"])).bind.rsplit(":", 1)[1]
    assert f"reverse_proxy feedstore:{port}" in caddy
    assert "flush_interval -1" in caddy and "proxy_buffering off;" in nginx  # windows stream
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services(compose)["proxy"]["volumes"]}
    assert mounts["/etc/caddy/Caddyfile"] == "./proxy/Caddyfile"
