"""Child-process plumbing shared by the local stack's services.

Every service of the local stack is a direct child of the process that started it
and dies with it (Linux ``PR_SET_PDEATHSIG``), so a test run or a demo killed with
``kill -9`` leaves no orphan Postgres, broker or JVM behind holding ports.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class StackError(RuntimeError):
    """A local-stack service failed to start or stop; the message says which and why."""


def free_port() -> int:
    """A loopback TCP port that is free now (the OS picks it, so parallel runs don't clash)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _die_with_parent(sig: int, uid: int | None, gid: int | None) -> Callable[[], None]:
    def preexec() -> None:
        if gid is not None:
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
        # After the user switch: Linux clears the parent-death signal on a change of credentials.
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig)

    return preexec


def spawn(
    argv: Sequence[str],
    *,
    log: Path,
    env: dict[str, str] | None = None,
    death_signal: int = signal.SIGTERM,
    uid: int | None = None,
    gid: int | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child that is terminated with ``death_signal`` if this process dies."""
    out = open(log, "ab")  # noqa: SIM115 - handed to the child, closed by the OS
    try:
        return subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            preexec_fn=_die_with_parent(death_signal, uid, gid),
        )
    finally:
        out.close()


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, log: Path | None = None,
               proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``check`` until true; fail with the service's log tail if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{what} exited with code {proc.returncode}{_tail(log)}")
        if check():
            return
        time.sleep(0.05)
    raise StackError(f"{what} not ready after {timeout:.0f}s{_tail(log)}")


def stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    """Signal a child and reap it; escalate to SIGKILL so nothing outlives the stack."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _tail(log: Path | None, lines: int = 30) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"; last lines of {log}:\n" + "\n".join(text)
