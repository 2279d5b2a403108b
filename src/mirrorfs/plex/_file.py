"""FilePlex: a plex on an image file or a block device.

Owns the file descriptor. Keeps: every write is issued as large pwritev
calls, flush is one fdatasync, and any OS error becomes PlexIOError naming
the plex, so the mirror can drop the plex instead of crashing.

Early writeback. A CP's blocks reach the page cache and then wait for the
CP's fdatasync; meanwhile the disk sat idle, because the kernel starts
writeback only past its dirty thresholds (gigabytes here). Each large write
now asks for writeback of its range at once (sync_file_range WRITE, a hint
that waits for nothing): the disk works while the rest of the CP is copied,
and the fdatasync finds little left. Measured on this VM (1 GiB, CPs of
256 MiB): 231-287 MB/s without the hint, 399-413 MB/s with it, dd 401-459.
O_DIRECT was tried instead: half the CPU, but 239-272 MB/s. Tried again
in session 6, when this disk took O_DIRECT writes of 8 MiB at 1.5-2.1
GB/s: our buffers are not aligned, so the blocks went through two aligned
staging buffers (a memfd filled by pwritev, which copies without the GIL;
one buffer written by a thread while the other filled). 1 GiB through the
API (/var/tmp/s5/wprof.py, three alternating pairs): 715-769 MB/s and
1.33-1.45 s of CPU, against 706-991 MB/s and 1.38-1.88 s buffered; a
first version that copied into the staging buffer in Python, holding the
GIL, spent 0.48 s copying and 0.85 s waiting on the disk per GiB, one after
the other. Slower, and the CPU saved is within the noise: not kept.

Streaming I/O leaves the page cache. Once a flush has made them durable,
the ranges of large writes are dropped from the page cache (fadvise
DONTNEED), as ``dd oflag=nocache`` does; so are large reads into a
caller's buffer (``readinto``, the file data path) once read, in batches:
a run of reads each starting where the last ended is dropped every
READ_DROP_BYTES, and when a read leaves the run. One drop per 128 KiB FUSE
read cost more than it saved: reading 1 GiB through a 2-plex mount
(/var/tmp/s5/mrd.sh, three alternating rounds) ran at 891-981 MB/s with
0.81-0.90 s of daemon CPU dropping every read, 976-998 MB/s and 0.80-0.82 s
dropping nothing, 1.0 GB/s and 0.76-0.79 s dropping in 32 MiB batches.
Why: the copy into the page cache was the largest CPU cost of a write
(copy_folio_from_iter_atomic, a third of all samples), and it runs several
times slower into pages the kernel has not used lately; pages given back
after each CP are the ones the next CP's copy gets, and pages given back
after each read are the ones the read-ahead fills next. Dropping only
writes made later cold reads slower, since their pages then came from
memory freed long before. Streaming also no longer pushes the working set
(nodes, small files) out of the cache, and a mounted file's data is not
cached twice (the kernel caches the mounted file's pages too). Small reads
and writes (metadata, small files) stay cached; a large range read again
comes from the disk. Measured by a raw pwritev loop (1 GiB in CPs of
256 MiB, the hint per 4 MiB; session 4's /var/tmp/s4/raw8.py): the copy
took 0.44-0.77 s of system time with the drop, 0.62-2.25 s without. Through
a 2-plex mount (/var/tmp/s4/mr.sh, dd of 1 GiB, then a cold read), with
no drop, drops on writes only, and drops on both: writes 160-212,
191-244, 170-247 MB/s; cold reads 874-1100, 489-819, 719-919 MB/s.

Two threads may write at once: a CP's early block writes and the flush of
the CP before it (``store._store``). The list of streamed ranges is only a
hint: a range that misses a flush's drop merely stays cached. Their system
calls take turns on a lock of ours: ext4 lets one buffered writer of a file
in at a time, and the other spun for the inode lock in the kernel (6% of a
1 GiB API write's CPU samples, rwsem_spin_on_owner), burning the core the
writer's Python needed; waiting on our lock sleeps. /var/tmp/s5/wprof.py,
1 GiB on one plex, three alternating pairs: 832-946 MB/s and 1.37-1.64 s of
CPU with the lock, 646-680 MB/s and 2.28-2.37 s without.

O_DIRECT reads were tried too (session 6): file plexes asking the mirror
for read-ahead, pieces in page-aligned buffers read around the page cache.
Where the VM had just taken freed memory back, reads through the page cache
slowed and the pieces won (1 GiB cold through a 2-plex mount,
/var/tmp/s5/mrd.sh, four alternating pairs: 903-958 MB/s and 1.11-1.17 s of
daemon CPU against 677-740 MB/s and 1.28-1.45 s). With memory warm, as
bench/mount.py runs it (two runs each, --only mirrorfs,nullfs,seq_write,
seq_read_cold), they lost: 971-1013 MB/s and 1.99-2.13 s of CPU per 2 GiB
against 1070-1102 MB/s and 1.55-1.68 s; perf put the difference in waking
and switching the read-ahead threads on two cores and in FUSE's reply copy
spinning on its lock meanwhile. Not kept: a machine without this VM's
memory reporting is always in the warm case.

Few system calls. Each call gives up the GIL and must take it back, which
waits while a writer thread runs Python (see ``store._store._quick_switch``),
so a long write is hinted once per HINT_BYTES, not once per pwritev.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
import threading
from collections.abc import Callable, Sequence

from ..errors import PlexBusy, PlexError, PlexIOError
from ._base import Buffer, check_read

IOV_MAX = 1024  # most buffers per pwritev call (Linux's IOV_MAX)
WRITEBACK_MIN = 256 << 10  # smallest write whose range gets an early-writeback hint
READ_STREAM_MIN = 128 << 10  # smallest read dropped from the page cache (FUSE's read size)
READ_DROP_BYTES = 32 << 20  # a run of large reads is dropped in batches of this many bytes
HINT_BYTES = 16 << 20  # a long write gets its hint every this many bytes, not per pwritev
SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writeback of dirty pages, wait for nothing


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range(2) (the os module has none), or None where it is missing."""
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name, use_errno=True).sync_file_range
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()


def drop_pages(fd: int, pos: int, length: int) -> None:
    """Give a range's pages back to the kernel (a hint: its errors change nothing)."""
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, pos, length, os.POSIX_FADV_DONTNEED)


class ReadRuns:
    """The page-cache drops of one file's large reads: a run at a time, in batches.

    ``read`` is told of each large read once its bytes are the caller's. A
    read that starts where the last ended continues the run, which is dropped
    every READ_DROP_BYTES; any other read drops the run and starts another.
    The run is a hint (two readers at once may end each other's runs; a range
    that misses its drop stays cached). ``bench/_nullfs.py`` uses this too,
    so that the ceiling recycles its pages as a file plex does.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._run = (0, 0)  # [start, end) read, not yet dropped

    def read(self, offset: int, length: int) -> None:
        a, b = self._run
        if offset != b:  # not the run's next read: drop the run, start another
            if b > a:
                drop_pages(self.fd, a, b - a)
            a = offset
        b = offset + length
        if b - a >= READ_DROP_BYTES:
            drop_pages(self.fd, a, b - a)
            a = b
        self._run = (a, b)


class FilePlex:
    """A plex on a regular file (an image, created sparse) or a block device."""

    read_ahead = False  # the kernel's read-ahead serves it (``Plex.read_ahead``)

    def __init__(self, path: str, *, read_only: bool = False) -> None:
        self.spec = path
        self.read_only = read_only
        flags = os.O_RDONLY if read_only else os.O_RDWR
        try:
            self._fd = os.open(path, flags | os.O_CLOEXEC)
        except FileNotFoundError:
            raise PlexError(path, "no such file or device") from None
        except IsADirectoryError:
            raise PlexError(path, "is a directory, not an image file or block device") from None
        except PermissionError:
            raise PlexError(path, "permission denied") from None
        except OSError as e:
            raise PlexError(path, e.strerror or str(e)) from None
        self._lock(path)
        self._streamed: list[tuple[int, int]] = []  # large written ranges not yet flushed
        self._read_runs = ReadRuns(self._fd)  # drops of large reads (see "Streaming I/O")
        self._write_lock = threading.Lock()  # one pwritev at a time (see "Two threads")
        st = os.fstat(self._fd)
        if stat.S_ISBLK(st.st_mode):
            self._size = os.lseek(self._fd, 0, os.SEEK_END)
        elif stat.S_ISREG(st.st_mode):
            self._size = st.st_size
        else:
            os.close(self._fd)
            raise PlexError(path, "is neither a regular file nor a block device")

    def _lock(self, path: str) -> None:
        """Exclusive use: writers lock the plex exclusively, readers shared.

        A mounted volume's daemon holds its plexes' locks, so no second
        process opens them behind its back (issue "Mount it": exclusive use).
        """
        try:
            fcntl.flock(self._fd, (fcntl.LOCK_SH if self.read_only else fcntl.LOCK_EX)
                        | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = -1
            raise PlexBusy(path) from None

    @classmethod
    def create(cls, path: str, size: int) -> FilePlex:
        """Create a sparse image file of ``size`` bytes (or use an existing block device)."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISBLK(st.st_mode):
            plex = cls(path)
            if plex.size < size:
                plex.close()
                raise PlexError(path, f"device holds {plex.size} bytes, the volume needs {size}")
            return plex
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise PlexError(path, f"cannot create: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PlexBusy(path) from None
        try:
            os.ftruncate(fd, 0)
            os.ftruncate(fd, size)
        except OSError as e:
            raise PlexError(path, f"cannot size to {size} bytes: {e.strerror}") from None
        finally:
            os.close(fd)
        return cls(path)

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        """One pread into a fresh bytes object: the scrub and resync path (one copy)."""
        check_read(self.spec, offset, length, self._size)
        try:
            data = os.pread(self._fd, length, offset)
        except OSError as e:
            raise PlexIOError(self.spec,
                              f"reading {length} bytes at {offset}: {e.strerror}") from None
        if len(data) < length:
            data += bytes(length - len(data))  # a sparse tail reads as zeros
        return data

    def readinto(self, offset: int, buf: memoryview) -> None:
        length = len(buf)
        check_read(self.spec, offset, length, self._size)
        got = 0
        while got < length:
            try:
                n = os.preadv(self._fd, [buf[got:]], offset + got)
            except OSError as e:
                raise PlexIOError(self.spec, f"reading {length} bytes at {offset}: "
                                             f"{e.strerror}") from None
            if n == 0:  # past the end of a sparse image file: zeros
                buf[got:] = bytes(length - got)
                break
            got += n
        if length >= READ_STREAM_MIN:
            # the bytes are the caller's now (and, under a mount, in the kernel's cache
            # of the mounted file): drop them, a batch at a time
            self._read_runs.read(offset, length)

    def writev(self, offset: int, bufs: Sequence[Buffer]) -> None:
        if self.read_only:
            raise PlexIOError(self.spec, "write to a plex opened read-only")
        total = sum(len(b) for b in bufs)
        if offset < 0 or offset + total > self._size:
            raise PlexIOError(self.spec, f"write of {total} bytes at {offset} past the end "
                                         f"({self._size} bytes)")
        pos = hinted = offset
        for i in range(0, len(bufs), IOV_MAX):
            chunk = list(bufs[i : i + IOV_MAX])
            want = sum(len(b) for b in chunk)
            try:
                with self._write_lock:
                    done = os.pwritev(self._fd, chunk, pos)
            except OSError as e:
                what = "the plex is full" if e.errno == errno.ENOSPC else e.strerror
                raise PlexIOError(self.spec, f"writing {want} bytes at {pos}: {what}") from None
            if done != want:  # rare: finish the short write byte-exactly
                rest = b"".join(bytes(b) for b in chunk)[done:]
                self._write_all(pos + done, rest)
            pos += want
            if pos - hinted >= HINT_BYTES:
                self._stream(hinted, pos - hinted)
                hinted = pos
        if pos - hinted >= WRITEBACK_MIN:
            self._stream(hinted, pos - hinted)

    def _stream(self, pos: int, length: int) -> None:
        """Start writeback of a large write now; drop its pages after the next flush."""
        if _sync_file_range is not None:
            # a hint: its errors change nothing, the flush makes the data durable
            _sync_file_range(self._fd, pos, length, SYNC_FILE_RANGE_WRITE)
        ranges = self._streamed
        if ranges and ranges[-1][0] + ranges[-1][1] == pos:
            ranges[-1] = (ranges[-1][0], ranges[-1][1] + length)
        else:
            ranges.append((pos, length))

    def _write_all(self, pos: int, data: bytes) -> None:
        mv = memoryview(data)
        while mv:
            try:
                n = os.pwrite(self._fd, mv, pos)
            except OSError as e:
                raise PlexIOError(self.spec, f"writing at {pos}: {e.strerror}") from None
            if n == 0:
                raise PlexIOError(self.spec, f"writing at {pos}: no progress (plex full?)")
            mv = mv[n:]
            pos += n

    def flush(self) -> None:
        if self.read_only:
            return
        ranges, self._streamed = self._streamed, []
        try:
            os.fdatasync(self._fd)
        except OSError as e:
            raise PlexIOError(self.spec, f"flush: {e.strerror}") from None
        for pos, length in ranges:  # clean now, so dropping them loses nothing
            drop_pages(self._fd, pos, length)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __repr__(self) -> str:
        return f"FilePlex({self.spec!r})"
