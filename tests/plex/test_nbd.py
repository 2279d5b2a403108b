"""NbdPlex against real nbdkit servers on loopback: round trips, request sizes, vanished servers."""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

nbd = pytest.importorskip("nbd", reason="this machine lacks python3-libnbd (module nbd)")
if shutil.which("nbdkit") is None:
    pytest.skip("this machine lacks nbdkit (Debian package nbdkit)", allow_module_level=True)

from mirrorfs.errors import PlexError, PlexIOError  # noqa: E402
from mirrorfs.plex import Buffer, Plex, _nbd, open_plex  # noqa: E402
from mirrorfs.plex._nbd import MAX_REQUEST, NbdPlex, parse_nbd_spec  # noqa: E402
from mirrorfs.testing import NbdkitServer, free_port  # noqa: E402

MiB = 1024 * 1024


Server = NbdkitServer
Start = Callable[..., Server]


@pytest.fixture
def memory(nbdkit: Start) -> Server:
    return nbdkit("memory", "64M")


def pattern(n: int, seed: int) -> bytes:
    """``n`` bytes that differ at every 4-byte word and from seed to seed."""
    words = np.arange((n + 3) // 4, dtype="<u4") + np.uint32(seed * 1_000_003 % 2**32)
    return words.tobytes()[:n]


def test_parse_nbd_spec() -> None:
    assert parse_nbd_spec("nbd://host/export") == ("host", 10809, "export")
    assert parse_nbd_spec("nbd://host:10900/a%20b") == ("host", 10900, "a b")
    assert parse_nbd_spec("nbd://host") == ("host", 10809, "")
    assert parse_nbd_spec("nbd://[::1]:10900/x") == ("::1", 10900, "x")
    for bad in ["nbd://", "nbd://host:port/x", "http://host/x", "nbd://host/x?tls=on"]:
        with pytest.raises(PlexError):
            parse_nbd_spec(bad)


def test_round_trip_and_the_data_outlives_the_connection(memory: Server) -> None:
    plex = open_plex(memory.spec)
    assert isinstance(plex, NbdPlex)
    assert isinstance(plex, Plex)
    assert plex.size == 64 * MiB
    assert plex.read(0, 4096) == bytes(4096)
    bufs: list[Buffer] = [b"A" * 4096, bytearray(b"B" * 8192), memoryview(b"xxC" * 4096)[2:4098]]
    plex.writev(MiB, bufs)
    plex.writev(3, [b"head"])
    expect = b"".join(bytes(b) for b in bufs)
    got = plex.read(MiB, len(expect))
    assert type(got) is bytes
    assert got == expect
    assert plex.read(0, 8) == b"\0\0\0head\0"
    plex.flush()
    plex.close()

    again = NbdPlex(memory.spec, read_only=True)
    try:
        assert again.read(MiB, len(expect)) == expect
        assert again.read(64 * MiB - 4096, 4096) == bytes(4096)
    finally:
        again.close()


def test_writes_and_reads_larger_than_one_request(nbdkit: Start, tmp_path: Path) -> None:
    log = tmp_path / "requests.log"
    server = nbdkit("--filter=log", "memory", "64M", f"logfile={log}")
    plex = NbdPlex(server.spec)
    try:
        big = pattern(MAX_REQUEST + 8 * MiB + 12345, seed=1)
        plex.writev(MiB + 7, [big])  # one buffer, cut into requests
        assert plex.read(MiB + 7, len(big)) == big
        # Many buffers whose request boundaries fall inside buffers.
        bufs = [pattern(5 * MiB + 1, seed=s) for s in range(2, 10)]
        plex.writev(3, bufs)
        plex.flush()
        assert plex.read(3, sum(map(len, bufs))) == b"".join(bufs)
        assert plex.read(0, 3) == bytes(3)
    finally:
        plex.close()

    requests = re.findall(
        r" (Write|Read|Flush) id=\d+(?: offset=0x(\w+) count=0x(\w+))?", log.read_text()
    )
    writes = [(int(o, 16), int(c, 16)) for kind, o, c in requests if kind == "Write"]
    reads = [(int(o, 16), int(c, 16)) for kind, o, c in requests if kind == "Read"]
    assert max(c for _, c in writes + reads) == MAX_REQUEST  # full-size requests, none larger
    many = sum(map(len, bufs))

    def cut(offset: int, length: int) -> list[tuple[int, int]]:
        """Full-size requests from ``offset``, then the rest."""
        return [(offset + a, min(MAX_REQUEST, length - a)) for a in range(0, length, MAX_REQUEST)]

    expect = cut(MiB + 7, len(big)) + cut(3, many)
    assert sorted(writes) == sorted(expect)  # the server may log requests in flight in any order
    assert [kind for kind, _, _ in requests].count("Flush") == 1


def test_requests_respect_the_servers_maximum(nbdkit: Start) -> None:
    server = nbdkit(
        "--filter=blocksize-policy",
        "memory",
        "16M",
        "blocksize-maximum=1M",
        "blocksize-error-policy=error",
    )
    raw = nbd.NBD()
    raw.connect_uri(server.spec)
    with pytest.raises(nbd.Error):  # the server really refuses a 2 MiB request
        raw.pwrite(bytes(2 * MiB), 0)
    raw.shutdown()

    plex = NbdPlex(server.spec)
    try:
        data = pattern(5 * MiB + 4096, seed=3)
        plex.writev(4096, [data[:MiB], data[MiB:]])
        assert plex.read(4096, len(data)) == data
    finally:
        plex.close()


def test_a_killed_server_gives_plex_io_error(memory: Server) -> None:
    plex = NbdPlex(memory.spec)
    plex.writev(0, [b"x" * 4096])
    plex.flush()
    memory.kill()
    with pytest.raises(PlexIOError) as info:
        plex.read(0, 4096)
    assert memory.spec in str(info.value)
    with pytest.raises(PlexIOError, match="closed the connection"):
        plex.read(0, 4096)
    with pytest.raises(PlexIOError):
        plex.writev(0, [b"y" * 4096])
    with pytest.raises(PlexIOError):
        plex.flush()
    plex.close()


def test_a_server_killed_during_a_large_write_gives_plex_io_error(memory: Server) -> None:
    plex = NbdPlex(memory.spec)
    data = pattern(60 * MiB, seed=4)
    killer = threading.Timer(0.01, memory.kill)
    killer.start()
    try:
        with pytest.raises(PlexIOError):
            for _ in range(50):  # until the kill lands in the middle of one
                plex.writev(0, [data])
    finally:
        killer.join()
        plex.close()


def test_a_hung_server_gives_plex_io_error_after_the_timeout(
    memory: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_nbd, "IO_TIMEOUT_S", 0.5)
    plex = NbdPlex(memory.spec)
    try:
        os.kill(memory.proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(PlexIOError, match="no reply"):
            plex.read(0, 4096)
        assert time.monotonic() - t0 < 5
        with pytest.raises(PlexIOError, match="no reply"):  # the plex stays gone
            plex.writev(0, [b"z"])
    finally:
        os.kill(memory.proc.pid, signal.SIGCONT)
        plex.close()


def test_a_failed_request_leaves_the_connection_usable(nbdkit: Start) -> None:
    server = nbdkit("--filter=error", "memory", "64M", "error-pwrite=EIO", "error-pwrite-rate=100%")
    plex = NbdPlex(server.spec)
    try:
        with pytest.raises(PlexIOError, match="writing 4096 bytes at 0"):
            plex.writev(0, [b"w" * 4096])
        with pytest.raises(PlexIOError):  # several requests in flight, all failing
            plex.writev(0, [bytes(MAX_REQUEST * 2 + 1)])
        assert plex.read(0, 4096) == bytes(4096)
        plex.flush()
    finally:
        plex.close()


def test_no_server_gives_plex_error() -> None:
    spec = f"nbd://127.0.0.1:{free_port()}/x"
    with pytest.raises(PlexError, match="cannot connect to nbd://") as info:
        NbdPlex(spec)
    assert spec in str(info.value)


def test_a_read_only_export(nbdkit: Start) -> None:
    server = nbdkit("-r", "memory", "1M")
    with pytest.raises(PlexError, match="read-only"):
        NbdPlex(server.spec)
    plex = NbdPlex(server.spec, read_only=True)
    try:
        assert plex.read(0, 4096) == bytes(4096)
        with pytest.raises(PlexIOError, match="read-only"):
            plex.writev(0, [b"x"])
        plex.flush()
    finally:
        plex.close()


def test_out_of_bounds_and_closed(memory: Server) -> None:
    plex = NbdPlex(memory.spec)
    with pytest.raises(PlexIOError, match="past the end"):
        plex.read(plex.size - 4096, 8192)
    with pytest.raises(PlexIOError, match="past the end"):
        plex.writev(plex.size - 4096, [bytes(4096), b"x"])
    assert plex.read(4096, 0) == b""
    plex.writev(4096, [])
    plex.close()
    with pytest.raises(PlexIOError, match="closed"):
        plex.read(0, 4096)
    plex.close()  # closing twice is harmless


def test_threads_share_one_plex(memory: Server) -> None:
    plex = NbdPlex(memory.spec)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(20):
                data = pattern(256 * 1024, seed=k * 100 + i)
                plex.writev(k * MiB, [data[:4096], data[4096:]])
                assert plex.read(k * MiB, len(data)) == data
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    plex.close()
    assert errors == []


@given(st.lists(st.integers(min_value=0, max_value=5000), max_size=40),
       st.integers(min_value=1, max_value=9000), st.sampled_from([bytes, bytearray, memoryview]))
def test_requests_cut_any_buffers_into_full_requests(sizes: list[int], limit: int,
                                                     kind: type) -> None:
    """Requests hold the buffers' bytes in order, each of ``limit`` bytes but the last."""
    bufs = [kind(pattern(n, seed=i)) for i, n in enumerate(sizes)]
    reqs = [b"".join(group) for group in _nbd._requests(bufs, limit)]
    assert b"".join(reqs) == b"".join(bytes(b) for b in bufs)
    assert all(len(r) == limit for r in reqs[:-1])
    assert all(0 < len(r) <= limit for r in reqs)
