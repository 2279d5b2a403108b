"""Shared pieces of every layout: versions, the plex-and-block context of errors.

Owns FORMAT_VERSION. Keeps: writers emit only FORMAT_VERSION; readers accept
SUPPORTED_VERSIONS and reject everything else by name.
"""

from __future__ import annotations

from ..errors import FormatError

# Version 1 gained the orphan directory (inode 0, _inode.py ORPHAN_INO) without a bump:
# a volume without orphans is unchanged, and an older reader of one with orphans only
# sees unnamed inodes (docs/format.md, section 11, "Changes within version 1").
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
MIN_BLOCK_SIZE = 4096
MAX_BLOCK_SIZE = 65536


class Where:
    """Where bytes came from, for error messages: a plex spec and a block number."""

    __slots__ = ("blk", "plex")

    def __init__(self, plex: str = "?", blk: int | str = "?") -> None:
        self.plex = plex
        self.blk = blk

    def __str__(self) -> str:
        return f"plex {self.plex}, block {self.blk}"


def fail(where: Where | None, what: str) -> FormatError:
    """A FormatError that names the plex and block (or just the problem, for a bad value)."""
    if where is None:
        return FormatError("invalid value", what)
    return FormatError(str(where), what)


def check_block_size(block_size: int, where: Where | None = None) -> None:
    ok = MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE and block_size & (block_size - 1) == 0
    if not ok:
        raise fail(where, f"block size {block_size} is not a power of two in "
                          f"[{MIN_BLOCK_SIZE}, {MAX_BLOCK_SIZE}]")
