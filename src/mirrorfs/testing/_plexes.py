"""Plex wrappers for tests: a recorder of every write and flush, a counter of what is
read and written, and a fault injector.

Owns nothing on disk. Keeps: a wrapped plex behaves exactly like the inner one
unless a fault is armed, so a test that passes through them tests real I/O.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Sequence

from ..errors import PlexIOError
from ..plex import Buffer, Plex, read_by_readinto
from ..plex._file import IOV_MAX


@dataclasses.dataclass(frozen=True)
class Op:
    """One recorded operation: a write of ``data`` at ``offset``, or a flush (data None)."""

    offset: int
    data: bytes | None

    @property
    def is_flush(self) -> bool:
        return self.data is None


class CountingPlex:
    """Passes everything through and counts it: bytes read, writes, flushes.

    Shows how reads spread over plexes (bench/mirror.py) and that a step reads
    only what it should and writes nothing (tests of examine and plan).
    """

    def __init__(self, inner: Plex, read_ahead: bool | None = None) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.read_ahead = inner.read_ahead if read_ahead is None else read_ahead
        self.read_bytes = 0
        self.writes = 0
        self.flushes = 0
        self._count = threading.Lock()  # read-ahead threads read at once

    @property
    def size(self) -> int:
        return self.inner.size

    def read(self, offset: int, length: int) -> bytes:
        with self._count:
            self.read_bytes += length
        return self.inner.read(offset, length)

    def readinto(self, offset: int, buf: memoryview) -> None:
        with self._count:
            self.read_bytes += len(buf)
        self.inner.readinto(offset, buf)

    def writev(self, offset: int, bufs: Sequence[Buffer]) -> None:
        self.writes += 1
        self.inner.writev(offset, bufs)

    def flush(self) -> None:
        self.flushes += 1
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()


class RecordingPlex:
    """Passes everything through and records each write and flush, in order.

    With ``apply_ops`` a test rebuilds what a power cut after any operation
    could leave: the image before recording with the first k writes applied,
    the last one possibly torn.
    """

    def __init__(self, inner: Plex) -> None:
        self.inner = inner
        self.read_ahead = inner.read_ahead
        self.spec = inner.spec
        self.ops: list[Op] = []
        self.recording = True

    @property
    def size(self) -> int:
        return self.inner.size

    def read(self, offset: int, length: int) -> bytes:
        return self.inner.read(offset, length)

    def readinto(self, offset: int, buf: memoryview) -> None:
        self.inner.readinto(offset, buf)

    def writev(self, offset: int, bufs: Sequence[Buffer]) -> None:
        if self.recording:  # one op per system call a FilePlex makes (IOV_MAX buffers)
            pos = offset
            for i in range(0, len(bufs), IOV_MAX):
                data = b"".join(bytes(b) for b in bufs[i : i + IOV_MAX])
                self.ops.append(Op(pos, data))
                pos += len(data)
        self.inner.writev(offset, bufs)

    def flush(self) -> None:
        if self.recording:
            self.ops.append(Op(0, None))
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()

    def writes(self) -> list[int]:
        """Indices into ``ops`` of the writes."""
        return [i for i, op in enumerate(self.ops) if not op.is_flush]


def apply_ops(image: bytearray, ops: Sequence[Op], torn_last: int | None = None) -> None:
    """Apply the writes of ``ops`` to an image; the last keeps only ``torn_last`` bytes if given."""
    writes = [op for op in ops if op.data is not None]
    for k, op in enumerate(writes):
        assert op.data is not None
        data = op.data
        if torn_last is not None and k == len(writes) - 1:
            data = data[:torn_last]
        image[op.offset : op.offset + len(data)] = data


class FaultyPlex:
    """A plex that fails on demand: I/O errors, a vanished device, silent bit flips."""

    def __init__(self, inner: Plex, seed: int = 0, read_ahead: bool | None = None) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.read_ahead = inner.read_ahead if read_ahead is None else read_ahead
        self.fail_reads = False
        self.fail_writes = False
        self.fail_flush = False
        self.vanished = False
        self.flip_on_read: set[int] = set()  # byte offsets whose low bit flips when read
        self.fail_after_writes: int | None = None
        self.writes = 0
        self._rng = random.Random(seed)

    @property
    def size(self) -> int:
        return self.inner.size

    def _gone(self, what: str) -> None:
        if self.vanished:
            raise PlexIOError(self.spec, f"{what}: device vanished")

    def read(self, offset: int, length: int) -> bytes:
        return read_by_readinto(self, offset, length)

    def readinto(self, offset: int, buf: memoryview) -> None:
        self._gone("read")
        if self.fail_reads:
            raise PlexIOError(self.spec, f"read at {offset}: injected I/O error")
        self.inner.readinto(offset, buf)
        for o in self.flip_on_read:
            if offset <= o < offset + len(buf):
                buf[o - offset] ^= 0x01

    def writev(self, offset: int, bufs: Sequence[Buffer]) -> None:
        self._gone("write")
        self.writes += 1
        if self.fail_writes or (self.fail_after_writes is not None
                                and self.writes > self.fail_after_writes):
            raise PlexIOError(self.spec, f"write at {offset}: injected I/O error")
        self.inner.writev(offset, bufs)

    def flush(self) -> None:
        self._gone("flush")
        if self.fail_flush:
            raise PlexIOError(self.spec, "flush: injected I/O error")
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()
