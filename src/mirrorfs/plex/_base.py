"""The one small interface every plex offers: read, write, flush, size, close.

Owns nothing but the contract. Keeps: a write that returns has reached the
plex's cache; only ``flush`` makes it durable, so callers order their
flushes (DESIGN.md, "Consistency points").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ..errors import PlexIOError

Buffer = bytes | bytearray | memoryview


@runtime_checkable
class Plex(Protocol):
    """Block-addressed storage holding one complete copy of a volume."""

    spec: str

    @property
    def size(self) -> int:
        """Bytes the plex can hold."""
        ...

    @property
    def read_ahead(self) -> bool:
        """Whether the mirror should read this plex ahead of a streaming reader.

        True where nothing below the client does it: each read of an NBD
        export is a round trip, so pieces fetched in background threads let
        independent plexes stream at once. False for a file plex: the kernel
        already reads ahead into the page cache, and a copy through a
        read-ahead buffer cost more CPU than it saved (a 1 GiB cold read
        through the API: 1107-1184 MB/s with it, 1396-1436 without).
        """
        ...

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; raises PlexIOError on failure."""
        ...

    def readinto(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with the bytes at ``offset`` (no allocation: the hot read path)."""
        ...

    def writev(self, offset: int, bufs: Sequence[Buffer]) -> None:
        """Write the concatenation of ``bufs`` at ``offset``."""
        ...

    def flush(self) -> None:
        """Make every returned write durable."""
        ...

    def close(self) -> None:
        ...


def read_by_readinto(plex: Plex, offset: int, length: int) -> bytes:
    """``Plex.read`` for a plex whose primitive is ``readinto``."""
    out = bytearray(length)
    plex.readinto(offset, memoryview(out))
    return bytes(out)


def check_read(spec: str, offset: int, length: int, size: int) -> None:
    """Refuse a read outside ``[0, size)`` with the plex named."""
    if offset < 0 or offset + length > size:
        raise PlexIOError(spec, f"read past the end ({offset + length} > {size})")
