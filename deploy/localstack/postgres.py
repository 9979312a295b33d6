"""A throw-away PostgreSQL with logical decoding, from the ``pgserver`` wheel's binaries.

We run ``postgres`` ourselves instead of ``pgserver.get_server`` because the stack needs
TCP on a chosen loopback port, ``wal_level=logical`` and a child process that dies with
its parent; ``pgserver`` gives us the binaries and the privilege helpers for root.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from deploy.localstack.procs import StackError, free_port, spawn, stop, wait_until

_PG_USER = "pgserver"  # the OS account Postgres runs as when we are root


def _binaries() -> Path:
    """Postgres binaries: the pgserver wheel's, else the machine's (``FEEDSTORE_PG_BIN``)."""
    override = os.environ.get("FEEDSTORE_PG_BIN")
    if override:
        return Path(override)
    try:
        with warnings.catch_warnings():  # platformdirs complains about XDG_RUNTIME_DIR on import
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH
    except ImportError as ex:
        found = shutil.which("pg_ctl")
        if found is None:
            raise StackError("no PostgreSQL binaries: `pip install pgserver` or set FEEDSTORE_PG_BIN") from ex
        return Path(found).parent
    return Path(POSTGRES_BIN_PATH)


@dataclass
class Postgres:
    """One Postgres cluster in ``datadir`` listening on 127.0.0.1:``port``."""

    datadir: Path
    port: int = field(default_factory=free_port)
    dbname: str = "operator"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.dbname}"

    @property
    def log(self) -> Path:
        return self.datadir.parent / "postgres.log"

    def _owner(self) -> tuple[int | None, int | None]:
        if os.geteuid() != 0:
            return None, None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pgserver.utils import ensure_user_exists

        entry = ensure_user_exists(_PG_USER)
        assert entry is not None
        return entry.pw_uid, entry.pw_gid

    def start(self) -> Postgres:
        bin_dir = _binaries()
        uid, gid = self._owner()
        self.datadir.mkdir(parents=True, exist_ok=True)
        if uid is not None:
            _open_path_for(self.datadir, bin_dir)
            for path in (self.datadir, self.datadir.parent):
                os.chown(path, uid, gid if gid is not None else -1)
        if not (self.datadir / "PG_VERSION").exists():
            subprocess.run(
                [str(bin_dir / "initdb"), "-D", str(self.datadir), "-U", "postgres", "--auth=trust",
                 "--encoding=UTF8", "--no-sync"],
                check=True, capture_output=True, user=uid, group=gid,
            )
        sockdir = self.datadir / "sock"
        sockdir.mkdir(exist_ok=True)
        if uid is not None:
            os.chown(sockdir, uid, gid if gid is not None else -1)
        settings = {
            "listen_addresses": "127.0.0.1", "port": str(self.port), "unix_socket_directories": str(sockdir),
            "wal_level": "logical", "max_wal_senders": "10", "max_replication_slots": "10",
            "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
            "shared_buffers": "128MB", "max_connections": "100",
        }
        argv = [str(bin_dir / "postgres"), "-D", str(self.datadir)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        # SIGINT is Postgres' "fast shutdown": what we want if our parent dies.
        self.proc = spawn(argv, log=self.log, death_signal=signal.SIGINT, uid=uid, gid=gid)
        wait_until(self._accepting, timeout=30, what="postgres", log=self.log, proc=self.proc)
        self._ensure_database()
        return self

    def _accepting(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def _ensure_database(self) -> None:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.dbname,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.dbname}"')

    def stop(self) -> None:
        stop(self.proc, signal.SIGINT, timeout=30)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def _open_path_for(datadir: Path, bin_dir: Path) -> None:
    """Let the unprivileged postgres account reach its data dir and the wheel's binaries."""
    from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions

    ensure_prefix_permissions(datadir)
    ensure_prefix_permissions(bin_dir)
    read = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(bin_dir, read | stat.S_IXGRP | stat.S_IXOTH)
    lib = bin_dir.parent / "lib"
    if lib.exists():
        ensure_folder_permissions(lib, read)
    share = bin_dir.parent / "share"
    if share.exists():
        ensure_folder_permissions(share, read)
