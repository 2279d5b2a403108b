"""Inode records: the fixed-size entries of the object table.

Owns the inode layout. Keeps: an inode's root pointer and height describe a
block tree whose leaves are the object's bytes (files, symlink targets) or
its hash buckets (directories).

Reserved numbers. Inode 1 (ROOT_INO) is the root directory. Inode 0
(ORPHAN_INO) is never handed out by the object table (its counter starts at
1); it names the hidden orphan directory, which lists the inodes whose last
link went while they were still open (fs/_fs.py, "Orphans"). It exists only
while it lists something, so a volume without orphans has no inode 0.

Layout (INODE_SIZE = 128 bytes, little-endian)::

    off size field
    0   4    mode (S_IFMT bits and permissions; 0 = free record)
    4   4    uid
    8   4    gid
    12  4    nlink
    16  8    size in bytes (directories: entry count)
    24  8    atime (ns)
    32  8    mtime (ns)
    40  8    ctime (ns)
    48  8    rdev
    56  32   root pointer of the data tree
    88  1    tree height
    89  1    directory depth (log2 of the bucket count)
    90  2    flags (reserved, zero)
    92  4    reserved
    96  8    data blocks held (for st_blocks)
    104 8    parent directory (directories only)
    112 16   reserved (zero)
"""

from __future__ import annotations

import dataclasses
import struct

from ._common import Where, fail
from ._ptr import PTR_SIZE
from ._superblock import MAX_HEIGHT

INODE_SIZE = 128
_INODE = struct.Struct("<IIIIQqqqQ32sBBHIQQ16x")
assert _INODE.size == INODE_SIZE
ZERO_PTR = bytes(PTR_SIZE)
ROOT_INO = 1
ORPHAN_INO = 0  # the hidden orphan directory; never returned by ObjectTable.new_ino


@dataclasses.dataclass(frozen=True, slots=True)
class Inode:
    """One object's attributes and the root of its data tree."""

    mode: int = 0
    uid: int = 0
    gid: int = 0
    nlink: int = 0
    size: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    rdev: int = 0
    root: bytes = ZERO_PTR
    height: int = 0
    dir_depth: int = 0
    blocks: int = 0
    parent: int = 0

    @property
    def free(self) -> bool:
        return self.mode == 0

    def replace(self, **changes: int | bytes) -> Inode:
        """``dataclasses.replace``, at half its cost: an inode changes on every write
        and setattr, and the generic version inspects the class on each call."""
        new = object.__new__(Inode)
        put = object.__setattr__
        for name in _FIELDS:
            put(new, name, changes.pop(name) if name in changes else getattr(self, name))
        if changes:
            raise TypeError(f"Inode has no field {next(iter(changes))!r}")
        return new

    def encode(self) -> bytes:
        return _INODE.pack(self.mode, self.uid, self.gid, self.nlink, self.size, self.atime_ns,
                           self.mtime_ns, self.ctime_ns, self.rdev, self.root, self.height,
                           self.dir_depth, 0, 0, self.blocks, self.parent)

    @classmethod
    def decode(cls, data: bytes | memoryview, where: Where | None = None) -> Inode:
        if len(data) != INODE_SIZE:
            raise fail(where, f"inode record is {len(data)} bytes, expected {INODE_SIZE}")
        (mode, uid, gid, nlink, size, at, mt, ct, rdev, root, height, depth, _flags, _r,
         blocks, parent) = _INODE.unpack(data)
        if height > MAX_HEIGHT or depth > 40:
            raise fail(where, f"inode with tree height {height} / depth {depth} out of bounds")
        return cls(mode, uid, gid, nlink, size, at, mt, ct, rdev, root, height, depth, blocks,
                   parent)


_FIELDS = tuple(f.name for f in dataclasses.fields(Inode))
