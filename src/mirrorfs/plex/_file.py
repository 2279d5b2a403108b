"""FilePlex: a plex on an image file or a block device.

Owns the file descriptors. Keeps: every write is issued as large calls,
flush is one fdatasync, and any OS error becomes PlexIOError naming the
plex, so the mirror can drop the plex instead of crashing.

Direct writes. Block writes (aligned offset and length) go through a second
descriptor opened with O_DIRECT, from a reused staging buffer: the page
cache copy of a buffered write cost more CPU than anything else on a write
(measured: 2.0-2.4 s of kernel time per GiB through the page cache, 0.4 s
direct), and it was paid once per plex, for pages nobody reads again soon.
Reads stay buffered; the kernel keeps the two coherent (a direct write
drops the cached pages it overwrites). Where the file system refuses
O_DIRECT, writes stay buffered. Nothing changes for durability: a write is
durable only after ``flush``, as before.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import threading
from collections.abc import Sequence

from ..errors import PlexBusy, PlexError, PlexIOError
from ._base import Buffer, check_read

IOV_MAX = 1024  # most buffers per pwritev call (Linux's IOV_MAX)
DIRECT_ALIGN = 4096  # offset and length a direct write needs (the largest logical sector)
STAGE_BYTES = 4 << 20  # staging buffer of direct writes: one write call each


class FilePlex:
    """A plex on a regular file (an image, created sparse) or a block device."""

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
        st = os.fstat(self._fd)
        if stat.S_ISBLK(st.st_mode):
            self._size = os.lseek(self._fd, 0, os.SEEK_END)
        elif stat.S_ISREG(st.st_mode):
            self._size = st.st_size
        else:
            os.close(self._fd)
            raise PlexError(path, "is neither a regular file nor a block device")
        self._dfd = -1 if read_only else _open_direct(path)
        self._stage: mmap.mmap | None = None  # page-aligned, made at the first direct write
        self._stage_lock = threading.Lock()  # a scrub's repairs may write beside a CP

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
                return
            got += n

    def writev(self, offset: int, bufs: Sequence[Buffer]) -> None:
        if self.read_only:
            raise PlexIOError(self.spec, "write to a plex opened read-only")
        total = sum(len(b) for b in bufs)
        if offset < 0 or offset + total > self._size:
            raise PlexIOError(self.spec, f"write of {total} bytes at {offset} past the end "
                                         f"({self._size} bytes)")
        if self._dfd >= 0 and offset % DIRECT_ALIGN == 0 and total % DIRECT_ALIGN == 0:
            try:
                self._write_direct(offset, bufs)
                return
            except OSError as e:
                if e.errno != errno.EINVAL:
                    what = "the plex is full" if e.errno == errno.ENOSPC else e.strerror
                    raise PlexIOError(self.spec, f"writing {total} bytes at {offset}: "
                                                 f"{what}") from None
                self._no_direct()  # refused by the file system: buffered from now on
        pos = offset
        for i in range(0, len(bufs), IOV_MAX):
            chunk = list(bufs[i : i + IOV_MAX])
            want = sum(len(b) for b in chunk)
            try:
                done = os.pwritev(self._fd, chunk, pos)
            except OSError as e:
                what = "the plex is full" if e.errno == errno.ENOSPC else e.strerror
                raise PlexIOError(self.spec, f"writing {want} bytes at {pos}: {what}") from None
            if done != want:  # rare: finish the short write byte-exactly
                rest = b"".join(bytes(b) for b in chunk)[done:]
                self._write_all(pos + done, rest)
            pos += want

    def _write_direct(self, offset: int, bufs: Sequence[Buffer]) -> None:
        """Copy ``bufs`` into the staging buffer and write it, STAGE_BYTES at a time."""
        with self._stage_lock:
            if self._stage is None:
                self._stage = mmap.mmap(-1, STAGE_BYTES)
            view = memoryview(self._stage)
            err: OSError | None = None
            try:
                self._stage_and_write(view, offset, bufs)
            except OSError as e:  # a bare copy: the traceback's frames hold views of the stage
                err = OSError(e.errno, e.strerror)
            finally:
                view.release()
        if err is not None:
            raise err

    def _stage_and_write(self, view: memoryview, offset: int, bufs: Sequence[Buffer]) -> None:
        pos, fill = offset, 0
        for b in bufs:
            mv = memoryview(b).cast("B")
            while mv:
                n = min(len(mv), STAGE_BYTES - fill)
                view[fill : fill + n] = mv[:n]
                fill += n
                mv = mv[n:]
                if fill == STAGE_BYTES:
                    self._pwrite_all(self._dfd, view, pos)
                    pos, fill = pos + fill, 0
        if fill:
            self._pwrite_all(self._dfd, view[:fill], pos)

    @staticmethod
    def _pwrite_all(fd: int, data: memoryview, pos: int) -> None:
        while data:
            n = os.pwrite(fd, data, pos)
            if n <= 0 or n % DIRECT_ALIGN:
                raise OSError(errno.ENOSPC, "short direct write")
            data, pos = data[n:], pos + n

    def _no_direct(self) -> None:
        if self._dfd >= 0:
            os.close(self._dfd)
            self._dfd = -1

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
        try:
            os.fdatasync(self._fd)
        except OSError as e:
            raise PlexIOError(self.spec, f"flush: {e.strerror}") from None

    def close(self) -> None:
        self._no_direct()
        if self._stage is not None:
            self._stage.close()
            self._stage = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __repr__(self) -> str:
        return f"FilePlex({self.spec!r})"


def _open_direct(path: str) -> int:
    """A write-only O_DIRECT descriptor of ``path``, or -1 where there is none."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return -1
    try:
        return os.open(path, os.O_WRONLY | flag | os.O_CLOEXEC)
    except OSError:  # e.g. EINVAL: the file system has no direct I/O
        return -1

