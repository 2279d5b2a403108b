"""FilePlex on real image files: round trips, sizes, and every failure as PlexError/PlexIOError."""

from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mirrorfs.errors import PlexError, PlexIOError
from mirrorfs.plex import Buffer, FilePlex, Plex, _file, open_plex
from mirrorfs.plex._file import IOV_MAX

MiB = 1024 * 1024


@pytest.fixture
def image(tmp_path: Path) -> Iterator[FilePlex]:
    plex = FilePlex.create(str(tmp_path / "a.img"), 4 * MiB)
    yield plex
    plex.close()


def test_create_makes_an_image_of_the_size_asked_that_reads_as_zeros(tmp_path: Path) -> None:
    path = tmp_path / "a.img"
    plex = FilePlex.create(str(path), 3 * MiB + 4096)
    try:
        assert isinstance(plex, Plex)
        assert plex.spec == str(path)
        assert plex.size == 3 * MiB + 4096
        assert path.stat().st_size == 3 * MiB + 4096
        assert plex.read(0, 8192) == bytes(8192)
        assert plex.read(plex.size - 4096, 4096) == bytes(4096)
    finally:
        plex.close()


def test_create_truncates_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "a.img"
    path.write_bytes(b"\xff" * 8192)
    plex = FilePlex.create(str(path), MiB)
    try:
        assert plex.size == MiB
        assert plex.read(0, 8192) == bytes(8192)
    finally:
        plex.close()


def test_writev_of_mixed_buffers_reads_back_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "a.img"
    plex = FilePlex.create(str(path), 4 * MiB)
    bufs: list[Buffer] = [b"A" * 4096, bytearray(b"B" * 8192), memoryview(b"xxC" * 4096)[2:4098]]
    plex.writev(MiB, bufs)
    plex.writev(3, [b"head"])
    expect = b"A" * 4096 + b"B" * 8192 + bytes(memoryview(b"xxC" * 4096)[2:4098])
    assert plex.read(MiB, len(expect)) == expect
    assert plex.read(0, 8) == b"\0\0\0head\0"
    plex.flush()
    plex.close()

    raw = path.read_bytes()
    assert raw[MiB : MiB + len(expect)] == expect
    again = open_plex(str(path))
    try:
        assert isinstance(again, FilePlex)
        assert again.size == 4 * MiB
        assert again.read(MiB, len(expect)) == expect
    finally:
        again.close()


def test_writev_of_more_buffers_than_iov_max(image: FilePlex) -> None:
    bufs = [bytes([i % 251]) * 512 for i in range(IOV_MAX * 3 + 17)]
    image.writev(4096, bufs)
    assert image.read(4096, 512 * len(bufs)) == b"".join(bufs)


def test_read_only_plex_refuses_writes_and_leaves_the_image_alone(tmp_path: Path) -> None:
    path = tmp_path / "a.img"
    FilePlex.create(str(path), MiB).close()
    plex = FilePlex(str(path), read_only=True)
    try:
        with pytest.raises(PlexIOError, match="read-only"):
            plex.writev(0, [b"x" * 4096])
        plex.flush()  # nothing to make durable: no error
        assert plex.read(0, 4096) == bytes(4096)
    finally:
        plex.close()
    assert path.read_bytes() == bytes(MiB)


@pytest.mark.parametrize(
    ("what", "why"),
    [("missing", "no such file"), ("directory", "is a directory"), ("chardev", "neither")],
)
def test_opening_what_is_not_a_plex_gives_plex_error(tmp_path: Path, what: str, why: str) -> None:
    path = {
        "missing": str(tmp_path / "nope.img"),
        "directory": str(tmp_path),
        "chardev": "/dev/null",
    }[what]
    with pytest.raises(PlexError, match=why) as info:
        FilePlex(path)
    assert path in str(info.value)
    assert info.value.exit_code == 2


def test_read_past_the_end_gives_plex_io_error(image: FilePlex) -> None:
    with pytest.raises(PlexIOError, match="past the end"):
        image.read(image.size - 4096, 8192)


def test_read_after_close_gives_plex_io_error(image: FilePlex) -> None:
    image.close()
    with pytest.raises(PlexIOError):
        image.read(0, 4096)
    image.close()  # closing twice is harmless


def test_write_past_the_end_gives_plex_io_error(image: FilePlex) -> None:
    with pytest.raises(PlexIOError):
        image.writev(image.size - 4096, [bytes(8192)])


@pytest.fixture
def tiny_tmpfs() -> Iterator[Path]:
    """A 1 MiB tmpfs, so that writes run into ENOSPC."""
    if os.geteuid() != 0:
        pytest.skip("this machine lacks root for the test: mounting a 1 MiB tmpfs to "
                    "provoke ENOSPC needs it")
    where = Path(tempfile.mkdtemp(prefix="mirrorfs-enospc-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        where.rmdir()
        pytest.skip(f"this machine lacks a mountable tmpfs: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)
        where.rmdir()


def test_a_full_file_system_gives_plex_io_error(tiny_tmpfs: Path) -> None:
    plex = FilePlex.create(str(tiny_tmpfs / "a.img"), 8 * MiB)  # sparse: fits
    try:
        with pytest.raises(PlexIOError, match=r"full|No space left") as info:
            plex.writev(0, [b"\xaa" * MiB, b"\xbb" * MiB])
        assert str(tiny_tmpfs / "a.img") in str(info.value)
    finally:
        plex.close()


def test_a_file_size_limit_gives_plex_io_error(tmp_path: Path) -> None:
    """EFBIG from RLIMIT_FSIZE, in a child so the limit cannot touch this process."""
    script = f"""
import resource, signal
from mirrorfs.errors import PlexIOError
from mirrorfs.plex import FilePlex
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
plex = FilePlex.create({str(tmp_path / "a.img")!r}, 8 * 1024 * 1024)
resource.setrlimit(resource.RLIMIT_FSIZE, (1024 * 1024, resource.RLIM_INFINITY))
plex.writev(0, [b"ok" * 1024])
try:
    plex.writev(2 * 1024 * 1024, [b"x" * 4096])
except PlexIOError as e:
    print("PlexIOError:", e)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("PlexIOError:"), done.stdout
    assert "too large" in done.stdout


def test_large_writes_start_writeback_early_and_read_back(tmp_path: Path) -> None:
    """Writes of WRITEBACK_MIN or more ask the kernel for writeback of their range
    (glibc has sync_file_range: the hint must be found, or the disk idles until
    the CP's flush); the hint changes no byte, on ext4 and on tmpfs alike."""
    assert _file._sync_file_range is not None, "libc's sync_file_range was not found"
    rng = np.random.default_rng(5)
    blocks = [rng.bytes(4096) for _ in range(2 * _file.WRITEBACK_MIN // 4096 + IOV_MAX)]
    for where in (tmp_path, Path("/dev/shm")):
        path = where / f"mirrorfs-writeback-{os.getpid()}.img"
        plex = FilePlex.create(str(path), 16 * MiB)
        try:
            plex.writev(4096, blocks)
            plex.writev(0, [b"\x01" * 1024])  # small: no hint
            plex.flush()
            assert plex.read(4096, len(blocks) * 4096) == b"".join(blocks)
            assert plex.read(0, 1024) == b"\x01" * 1024
        finally:
            plex.close()
            path.unlink()


def _resident(path: Path, offset: int, length: int) -> int:
    """Pages of ``path`` in [offset, offset + length) that are in the page cache (mincore)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    page = mmap.PAGESIZE
    with path.open("r+b") as f:
        mm = mmap.mmap(f.fileno(), offset + length)
        try:
            anchor = ctypes.c_char.from_buffer(mm)
            vec = (ctypes.c_ubyte * (-(-length // page)))()
            rc = libc.mincore(ctypes.c_void_p(ctypes.addressof(anchor) + offset), length, vec)
            del anchor
            assert rc == 0, os.strerror(ctypes.get_errno())
            return sum(v & 1 for v in vec)
        finally:
            mm.close()


def test_a_flush_drops_streamed_writes_from_the_page_cache_and_keeps_small_ones(
        tmp_path: Path) -> None:
    """A large write leaves the page cache once a flush made it durable (the next CP's
    copy reuses those pages); a small one (metadata, a small file) stays cached, and
    every byte reads back from the disk unchanged."""
    rng = np.random.default_rng(6)
    big = [rng.bytes(4096) for _ in range(3 * IOV_MAX)]  # 12 MiB, several system calls
    small = rng.bytes(8192)
    path = tmp_path / "cache.img"
    plex = FilePlex.create(str(path), 16 * MiB)
    try:
        plex.writev(MiB, big)
        plex.writev(0, [small])
        assert _resident(path, MiB, len(big) * 4096) == len(big)  # written, not flushed
        plex.flush()
        assert _resident(path, MiB, len(big) * 4096) == 0
        assert _resident(path, 0, 8192) == 2
        assert plex.read(MiB, len(big) * 4096) == b"".join(big)
        assert plex.read(0, 8192) == small
    finally:
        plex.close()


def test_large_reads_leave_the_page_cache_and_small_ones_stay(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run of reads of READ_STREAM_MIN or more is dropped once read, a batch of
    READ_DROP_BYTES at a time or when a read leaves the run (streaming reads recycle
    pages); smaller reads (nodes, small files) stay cached."""
    monkeypatch.setattr(_file, "READ_DROP_BYTES", 2 * MiB)
    rng = np.random.default_rng(7)
    data = rng.bytes(12 * MiB)
    path = tmp_path / "read.img"
    with path.open("wb") as f:  # on the disk and out of the cache: the reads bring it in
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    assert _resident(path, 0, len(data)) == 0
    plex = FilePlex(str(path))
    big = _file.READ_STREAM_MIN * 4  # 512 KiB

    def read(offset: int, length: int) -> None:
        buf = bytearray(length)
        plex.readinto(offset, memoryview(buf))
        assert bytes(buf) == data[offset : offset + length]

    try:
        read(0, 8192)
        read(MiB, big)  # a run starts: kept until the batch is full
        assert _resident(path, MiB, big) == big // 4096
        read(MiB + big, big)
        read(MiB + 2 * big, big)
        read(MiB + 3 * big, big)  # 2 MiB read in the run: one batch, dropped
        assert _resident(path, MiB, 2 * MiB) == 0
        read(MiB + 4 * big, big)  # the next batch begins
        assert _resident(path, 3 * MiB, big) == big // 4096
        read(8 * MiB, big)  # a read elsewhere ends the run: its rest is dropped
        assert _resident(path, 3 * MiB, big) == 0
        assert _resident(path, 0, 8192) == 2
    finally:
        plex.close()
