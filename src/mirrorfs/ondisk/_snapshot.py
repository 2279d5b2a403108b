"""Snapshot records: the entries of the snapshot table.

Owns the snapshot record layout and the snapshot kinds. Keeps: a snapshot is
identified across plexes by its GUID, and validated as common by equal CP
value and equal root checksums.

Layout (SNAP_SIZE = 256 bytes, little-endian)::

    off size field
    0   16   GUID
    16  8    CP value
    24  8    creation time (ns)
    32  1    kind (SnapKind)
    33  1    name length
    34  6    reserved
    40  32   object table root pointer at that CP
    72  32   plane root pointer at that CP
    104 1    object table height
    105 1    plane height
    106 6    reserved
    112 8    next inode number at that CP
    120 128  name (UTF-8)
    248 8    reserved
"""

from __future__ import annotations

import dataclasses
import enum
import struct
import uuid

from ._common import Where, fail
from ._superblock import MAX_HEIGHT
from ._superblock import MAX_SNAPSHOTS as MAX_SNAPSHOTS

SNAP_SIZE = 256
MAX_NAME = 128
MAX_SNAPSHOT_NAME = MAX_NAME
_SNAP = struct.Struct("<16sQqBB6x32s32sBB6xQ128s8x")
assert _SNAP.size == SNAP_SIZE


class SnapKind(enum.IntEnum):
    USER = 1
    SCHEDULED = 2
    RESYNC_BASE = 3
    POST_RESYNC = 4
    DIVERGED = 5

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def from_label(cls, label: str) -> SnapKind:
        return cls[label.upper().replace("-", "_")]


@dataclasses.dataclass(frozen=True, slots=True)
class SnapshotRecord:
    """A read-only image of the whole file system at one CP."""

    name: str
    guid: uuid.UUID
    cp: int
    ctime_ns: int
    kind: SnapKind
    objtab_root: bytes
    plane_root: bytes
    objtab_height: int
    plane_height: int
    next_ino: int

    def encode(self) -> bytes:
        name = self.name.encode()
        assert len(name) <= MAX_NAME
        return _SNAP.pack(self.guid.bytes, self.cp, self.ctime_ns, int(self.kind), len(name),
                          self.objtab_root, self.plane_root, self.objtab_height,
                          self.plane_height, self.next_ino, name)

    @classmethod
    def decode(cls, data: bytes | memoryview, where: Where | None = None) -> SnapshotRecord:
        if len(data) != SNAP_SIZE:
            raise fail(where, f"snapshot record is {len(data)} bytes, expected {SNAP_SIZE}")
        (guid, cp, ctime, kind, nlen, oroot, proot, oh, ph, next_ino,
         name) = _SNAP.unpack(data)
        try:
            k = SnapKind(kind)
        except ValueError:
            raise fail(where, f"snapshot record of unknown kind {kind}") from None
        if nlen > MAX_NAME or max(oh, ph) > MAX_HEIGHT:
            raise fail(where, "snapshot record out of bounds")
        try:
            text = name[:nlen].decode()
        except UnicodeDecodeError:
            raise fail(where, "snapshot name is not UTF-8") from None
        return cls(text, uuid.UUID(bytes=guid), cp, ctime, k, oroot, proot, oh, ph, next_ino)

    @property
    def root_checksums(self) -> bytes:
        """What two plexes compare to accept a snapshot as held in common."""
        return self.objtab_root[16:32] + self.plane_root[16:32]
