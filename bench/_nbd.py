"""Rate-limited NBD devices for the benchmarks: nbdkit RAM disks on loopback, and nbdcopy.

Owns the nbdkit processes it starts. Keeps: every server binds 127.0.0.1
only, on a port found free by binding port 0; it dies with this process
(``--exit-with-parent``) and is killed when its ``servers`` block ends, on an
error or Ctrl-C too.

The device. One nbdkit per plex, each a device of fixed bandwidth::

    nbdkit --exit-with-parent -f -i 127.0.0.1 -p PORT -P PIDFILE \\
        --filter=blocksize --filter=rate memory SIZE maxdata=1M rate=RATE burstiness=0.05

- memory plugin: the data lives in the server's RAM, with no cache in front
  of it, so a read is never "cold" and nothing touches the disk.
- rate filter: ``rate`` is in bits per second and nbdkit reads its suffixes
  as powers of 1024, so ``1000M`` is 1,048,576,000 bit/s = 131.1 MB/s (not
  125). Reads and writes have separate buckets, each shared by all the
  connections to one server.
- ``burstiness`` is the bucket's capacity in seconds at the rate. Buckets
  start full, and the default of 2 s lets 2 s of traffic through unthrottled
  (a 1 GiB write with NbdPlex ran at 172 MB/s for 131 configured); 0.05 s
  keeps that to 6.6 MB at 1000M.
- blocksize filter, in front of rate: between two requests the rate
  filter's bucket refills at most to its capacity, so a request larger than
  the capacity waits several times its share (with NbdPlex sending 32 MiB
  requests, as it did then, a 1 GiB write ran at 74.5 MB/s for 131
  configured, burstiness 0.05; it sends 8 MiB now, still over 6.6 MB).
  ``maxdata=1M`` cuts every request into pieces of at most 1 MiB before the
  rate filter sees them; the client still sends its own request sizes.

Measured with this setup at rate=1000M (131.1 MB/s), 1 GiB: NbdPlex writing
64 MiB ``writev`` calls 127 MB/s; nbdcopy writing 131.2 MB/s and reading
131.7 MB/s. Without the rate filter the same server takes 0.9-1.0 GB/s.

The peer. ``nbdcopy`` (Debian package libnbd-bin) copying a file held in RAM
to N such servers at once, N processes in parallel: the data rate a set of N
devices accepts when each must get every byte, i.e. what a perfect N-way
mirror could reach. nbdcopy's defaults (4 connections when the server allows
it, 64 requests of 256 KiB in flight) reach the rate too but cost the servers
twice the CPU, so it runs with ``NBDCOPY_OPTS``: 16 requests of 1 MiB in
flight on one connection, which keep a device busy all the time (130-131
MB/s of 131.1, also with 3 copies at once).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import proc_cpu_s

from mirrorfs.testing import NbdkitFailed, NbdkitServer, start_nbdkit

MB = 1_000_000
BURSTINESS_S = 0.05  # rate filter bucket capacity, seconds at the rate
MAXDATA = "1M"  # largest request the blocksize filter hands to the rate filter
# nbdcopy's requests: 16 of 1 MiB in flight on one connection. Its defaults (4
# connections, 64 requests of 256 KiB) reach the same rate but cost each server
# 2.2x the CPU (2.55 s against 1.15 s per GiB written: more of the rate filter's
# sleepers waking), which 3 servers at once on 2 cores cannot spare.
NBDCOPY_OPTS = ("--connections=1", "--requests=16", "--request-size=1048576")
_SUFFIX = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
           "p": 1 << 50, "e": 1 << 60}


def parse_rate(text: str) -> int:
    """Bits per second of an nbdkit rate string, suffixes in powers of 1024 (as nbdkit reads it).

    Raises ValueError for anything but digits and one optional suffix of
    bBkKmMgGtTpPeE, so a rate nbdkit would read differently is refused here.
    """
    m = re.fullmatch(r"\s*(\d+)\s*([bkmgtpe]?)\s*", text, re.IGNORECASE)
    if m is None or int(m.group(1)) <= 0:
        raise ValueError(f"not an nbdkit rate (a positive integer of bits/s, optional "
                         f"suffix K, M, G...): {text!r}")
    return int(m.group(1)) * _SUFFIX[m.group(2).lower()]


def rate_info(rate: str) -> dict[str, Any]:
    """The rate of one device, as passed to nbdkit and in bits/s and MB/s."""
    bits = parse_rate(rate)
    return {"rate": rate, "rate_bits_s": bits, "rate_mb_s": round(bits / 8 / MB, 1),
            "burstiness_s": BURSTINESS_S, "maxdata": MAXDATA}


def _version(tool: str) -> str | None:
    """The first line of ``TOOL --version``, or None where it cannot be run."""
    try:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out.strip() else None


def nbdkit_version() -> str | None:
    return _version("nbdkit")


def nbdcopy_version() -> str | None:
    return _version("nbdcopy")


def require(peer: bool) -> None:
    """Exit with what to install when nbdkit (or nbdcopy, for the peer) is missing."""
    if shutil.which("nbdkit") is None:
        raise SystemExit("the nbd placement needs nbdkit (Debian package nbdkit; make deps-system)")
    if peer and shutil.which("nbdcopy") is None:
        raise SystemExit("the nbd placement's peer needs nbdcopy (Debian package libnbd-bin; "
                         "make deps-system), or run with --no-dd")


def server_cpu_s(server: NbdkitServer) -> float:
    """CPU seconds this server has used so far (0.0 once it is gone)."""
    return proc_cpu_s(server.proc.pid) or 0.0


def _start(size: int, rate: str, logdir: Path) -> NbdkitServer:
    try:
        return start_nbdkit(logdir, "--filter=blocksize", "--filter=rate", "memory", str(size),
                            f"maxdata={MAXDATA}", f"rate={rate}", f"burstiness={BURSTINESS_S}")
    except NbdkitFailed as e:
        raise RuntimeError(str(e)) from None


@contextlib.contextmanager
def servers(n: int, size: int, rate: str, logdir: Path) -> Iterator[list[NbdkitServer]]:
    """``n`` fresh rate-limited RAM disks of ``size`` bytes; all killed when the block ends."""
    started: list[NbdkitServer] = []
    try:
        for _ in range(n):
            started.append(_start(size, rate, logdir))
        yield started
    finally:
        for s in started:
            s.kill()
        for s in started:
            s.log.unlink(missing_ok=True)


@contextlib.contextmanager
def ram_file(pattern: bytes, count: int, prefix: str = "mirrorfs-bench-") -> Iterator[Path]:
    """A file of ``pattern`` repeated ``count`` times in /dev/shm (RAM), removed afterwards."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".img", dir=base)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            for _ in range(count):
                f.write(pattern)
        yield path
    finally:
        path.unlink(missing_ok=True)


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _run_all(cmds: list[list[str]]) -> tuple[float, float]:
    """Run ``cmds`` at once; (wall s, CPU s of them). Raises RuntimeError if one fails."""
    c0 = _children_cpu_s()
    t0 = time.perf_counter()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for c in cmds:
            procs.append(subprocess.Popen(c, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        errs = [p.communicate()[1] for p in procs]
    except BaseException:
        for p in procs:
            p.kill()
            p.wait()
        raise
    dt = time.perf_counter() - t0
    cpu = _children_cpu_s() - c0
    bad = [(c, p.returncode, e) for c, p, e in zip(cmds, procs, errs, strict=True)
           if p.returncode]
    if bad:
        c, code, e = bad[0]
        raise RuntimeError(f"{' '.join(c)} exited with {code}: {e.decode(errors='replace')}")
    return dt, cpu


def nbdcopy_copies(src: Path, n: int, rate: str, logdir: Path, read_back: bool = False
                   ) -> dict[str, Any]:
    """``nbdcopy --flush SRC nbd://...`` to ``n`` fresh servers at once (timed together).

    With ``read_back``, one server's export is then read with
    ``nbdcopy nbd://... null:`` (timed): what one such device gives a reader.
    MB/s count the bytes of ``src`` once (data, as mirrorfs's figures do).
    """
    size = src.stat().st_size
    with servers(n, size, rate, logdir) as srv:
        cpu0 = [server_cpu_s(s) for s in srv]
        wall, cpu = _run_all([["nbdcopy", *NBDCOPY_OPTS, "--flush", str(src), s.spec]
                              for s in srv])
        server_cpu = sum(server_cpu_s(s) for s in srv) - sum(cpu0)
        mb_s = size / MB / wall
        out: dict[str, Any] = {
            "seconds": round(wall, 4), "bytes": size, "mb_s": round(mb_s, 1),
            "devices_mb_s": round(n * mb_s, 1), "nbdcopy_cpu_s": round(cpu, 4),
            "server_cpu_s": round(server_cpu, 4)}
        if read_back:
            c1 = server_cpu_s(srv[0])
            rwall, rcpu = _run_all([["nbdcopy", *NBDCOPY_OPTS, srv[0].spec, "null:"]])
            out["read"] = {"seconds": round(rwall, 4), "bytes": size,
                           "mb_s": round(size / MB / rwall, 1), "nbdcopy_cpu_s": round(rcpu, 4),
                           "server_cpu_s": round(server_cpu_s(srv[0]) - c1, 4)}
    return out
