"""nbdkit servers on loopback for tests and benchmarks: start, name, kill.

Owns the server processes it starts. Keeps: a server listens on 127.0.0.1
only, on a port that was free, and dies with the process that started it
(``--exit-with-parent``) if nobody kills it first.
"""

from __future__ import annotations

import dataclasses
import signal
import socket
import subprocess
import time
from pathlib import Path

START_TIMEOUT_S = 15.0  # most seconds for a server to start listening


class NbdkitFailed(RuntimeError):
    """nbdkit did not start; the message holds its output."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclasses.dataclass
class NbdkitServer:
    """One nbdkit process serving one export on loopback."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def spec(self) -> str:
        """The plex name of its export: ``nbd://127.0.0.1:PORT/``."""
        return f"nbd://127.0.0.1:{self.port}/"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test stopped it
            self.proc.kill()
        self.proc.wait(timeout=10)


def start_nbdkit(workdir: Path, *args: str) -> NbdkitServer:
    """``nbdkit ARGS`` (plugin, filters, parameters) on a free loopback port, once listening.

    Its pid file and log go to ``workdir``; NbdkitFailed with the log if it
    exits or does not listen within START_TIMEOUT_S.
    """
    port = free_port()
    pidfile = workdir / f"nbdkit-{port}.pid"
    logfile = workdir / f"nbdkit-{port}.log"
    cmd = ["nbdkit", "--exit-with-parent", "-f", "-i", "127.0.0.1", "-p", str(port),
           "-P", str(pidfile), *args]
    with open(logfile, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    server = NbdkitServer(proc, port, logfile)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not pidfile.exists():  # nbdkit writes it once it listens
        if proc.poll() is not None or time.monotonic() > deadline:
            server.kill()
            out = logfile.read_text(errors="replace")
            raise NbdkitFailed(f"nbdkit {' '.join(args)} did not start: {out}")
        time.sleep(0.02)
    return server
