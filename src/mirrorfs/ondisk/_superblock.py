"""Superblock slots and the choice of the live slot.

Owns the slot layout and ``pick_slot``. Keeps: a slot is trusted only if its
magic, version, checksum and bounds all hold; the live state of a plex is the
valid slot with the highest CP value, so a torn slot write falls back to CP n.

Rings. Each plex carries two rings of ``RING_SLOTS`` slots: ring A at byte 0,
ring B in the last ``RING_BYTES`` of the volume region. CP n goes to slot
n mod RING_SLOTS of both rings (A first, then B), so a torn write can spoil at
most one copy of one CP.

Slot layout (SLOT_SIZE = 4096 bytes, little-endian; bytes past 1024 are zero)::

    off  size field
    0    8    magic "MIRRFSSB"
    8    4    format version
    12   4    block size
    16   16   volume UUID
    32   16   plex UUID
    48   4    plex ordinal
    52   4    flags (bit 0: plex is an unfinished resync target)
    56   8    volume size in blocks
    64   8    CP value
    72   16   CP id (random, new every CP)
    88   16   previous CP id
    104  8    timestamp (ns since the epoch)
    112  8    next inode number
    120  4    min_plexes
    124  4    member count
    128  32   object table root pointer
    160  32   block-map plane root pointer
    192  32   snapshot table root pointer
    224  1    object table height
    225  1    plane height
    226  1    snapshot table height
    227  1    reserved
    228  4    snapshot count
    232  8    reserved
    240  512  members: 16 x (plex UUID 16, ordinal 4, state 1, pad 3, last CP 8)
    752  96   resync record (see ResyncRecord)
    848  160  reserved (zero)
    1008 16   xxh3-128 of bytes 0..1008
"""

from __future__ import annotations

import dataclasses
import enum
import struct
import uuid
from collections.abc import Sequence

import numpy as np

from ._common import FORMAT_VERSION, SUPPORTED_VERSIONS, Where, check_block_size, fail
from ._ptr import PTR_DTYPE, PTR_SIZE, checksum

MAGIC = b"MIRRFSSB"
SLOT_SIZE = 4096
RING_SLOTS = 8
RING_BYTES = SLOT_SIZE * RING_SLOTS
MAX_PLEXES = 16
SB_BODY = 1008
SB_SIZE = 1024
MAX_HEIGHT = 12
MAX_INODES = 1 << 40  # inode numbers above it name snapshot inodes (fs/_fs.py SNAP_SHIFT)
MAX_SNAPSHOTS = 1024  # most snapshot records a volume holds (the table is read at open)

_HEAD = struct.Struct("<8sII16s16sIIQQ16s16sQQII32s32s32sBBBxI8x")
_MEMBER = struct.Struct("<16sIB3xQ")
_RESYNC = struct.Struct("<I4x16s16sQQ16sQQ8x")
assert _HEAD.size == 240
assert _MEMBER.size == 32
assert _RESYNC.size == 96
_MEMBERS_OFF = 240
_RESYNC_OFF = _MEMBERS_OFF + MAX_PLEXES * _MEMBER.size
assert _RESYNC_OFF == 752
assert _RESYNC_OFF + _RESYNC.size <= SB_BODY

FLAG_RESYNC_TARGET = 1


class PlexState(enum.IntEnum):
    """What a superblock records about a member plex."""

    IN_SYNC = 1
    STALE = 2
    RESYNCING = 3
    OFFLINE = 4
    FAILED = 5
    MISSING = 6

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


@dataclasses.dataclass(frozen=True, slots=True)
class Member:
    """One plex as a superblock sees it: identity, state, last CP it completed."""

    plex_uuid: uuid.UUID
    ordinal: int
    state: PlexState
    last_cp: int


@dataclasses.dataclass(frozen=True, slots=True)
class ResyncRecord:
    """Progress of a resync that targets this plex; a crash resumes from ``cursor``.

    ``source`` copies to this plex the blocks of ``target_cp`` not in the base
    snapshot ``base_guid``; ``cursor`` is a block number: every changed block
    below it is copied (the copy goes in block order). ``total`` is the plan's
    block count.
    """

    source: uuid.UUID
    base_guid: uuid.UUID
    base_cp: int
    target_cp: int
    target_cp_id: uuid.UUID
    cursor: int
    total: int


@dataclasses.dataclass(frozen=True, slots=True)
class Superblock:
    """One superblock slot: the commit record of one CP on one plex."""

    block_size: int
    volume_uuid: uuid.UUID
    plex_uuid: uuid.UUID
    plex_ordinal: int
    nblocks: int
    cp: int
    cp_id: uuid.UUID
    prev_cp_id: uuid.UUID
    timestamp_ns: int
    next_ino: int
    min_plexes: int
    objtab_root: bytes
    plane_root: bytes
    snaptab_root: bytes
    objtab_height: int
    plane_height: int
    snaptab_height: int
    n_snapshots: int
    members: tuple[Member, ...]
    resync: ResyncRecord | None = None
    version: int = FORMAT_VERSION

    def encode(self) -> bytes:
        """The full SLOT_SIZE bytes of this slot, checksum included."""
        flags = FLAG_RESYNC_TARGET if self.resync else 0
        head = _HEAD.pack(
            MAGIC, FORMAT_VERSION, self.block_size, self.volume_uuid.bytes,
            self.plex_uuid.bytes, self.plex_ordinal, flags, self.nblocks, self.cp,
            self.cp_id.bytes, self.prev_cp_id.bytes, self.timestamp_ns, self.next_ino,
            self.min_plexes, len(self.members), self.objtab_root, self.plane_root,
            self.snaptab_root, self.objtab_height, self.plane_height, self.snaptab_height,
            self.n_snapshots,
        )
        buf = bytearray(SLOT_SIZE)
        buf[: _HEAD.size] = head
        for i, m in enumerate(self.members):
            _MEMBER.pack_into(buf, _MEMBERS_OFF + i * _MEMBER.size, m.plex_uuid.bytes,
                              m.ordinal, int(m.state), m.last_cp)
        if self.resync:
            r = self.resync
            _RESYNC.pack_into(buf, _RESYNC_OFF, 1, r.source.bytes, r.base_guid.bytes,
                              r.base_cp, r.target_cp, r.target_cp_id.bytes, r.cursor, r.total)
        buf[SB_BODY:SB_SIZE] = checksum(bytes(buf[:SB_BODY]))
        return bytes(buf)

    @classmethod
    def decode(cls, data: bytes, where: Where | None = None) -> Superblock:
        """Validate and decode one slot: length, magic, version, checksum, bounds."""
        if len(data) < SB_SIZE:
            raise fail(where, f"superblock slot is {len(data)} bytes, expected {SB_SIZE}")
        if data[:8] != MAGIC:
            raise fail(where, f"no mirrorfs superblock (magic {data[:8]!r}, expected {MAGIC!r})")
        (_, version, block_size, vol, plex, ordinal, flags, nblocks, cp, cp_id, prev, ts,
         next_ino, min_plexes, n_members, objtab, plane, snaptab, oh, ph, sh,
         n_snaps) = _HEAD.unpack_from(data)
        if version not in SUPPORTED_VERSIONS:
            raise fail(where, f"format version {version} is not supported "
                              f"(this mirrorfs reads {sorted(SUPPORTED_VERSIONS)})")
        if checksum(data[:SB_BODY]) != data[SB_BODY:SB_SIZE]:
            raise fail(where, "superblock checksum mismatch (torn or corrupt slot)")
        check_block_size(block_size, where)
        if nblocks * block_size <= 2 * RING_BYTES:
            raise fail(where, f"volume of {nblocks} blocks leaves no room beside the rings")
        if n_members > MAX_PLEXES or n_members < 1:
            raise fail(where, f"member count {n_members} outside 1..{MAX_PLEXES}")
        if max(oh, ph, sh) > MAX_HEIGHT:
            raise fail(where, f"tree height above {MAX_HEIGHT}")
        if n_snaps > MAX_SNAPSHOTS:
            raise fail(where, f"snapshot count {n_snaps} above {MAX_SNAPSHOTS}")
        if not 1 <= next_ino <= MAX_INODES:
            raise fail(where, f"next inode number {next_ino} outside 1..{MAX_INODES}")
        for name, raw in (("object table", objtab), ("plane", plane), ("snapshot table", snaptab)):
            blk = int.from_bytes(raw[:8], "little")
            if blk >= nblocks:
                raise fail(where, f"{name} root points at block {blk} beyond {nblocks}")
        members = []
        for i in range(n_members):
            pu, po, ps, plc = _MEMBER.unpack_from(data, _MEMBERS_OFF + i * _MEMBER.size)
            try:
                state = PlexState(ps)
            except ValueError:
                raise fail(where, f"member {i} has unknown state {ps}") from None
            members.append(Member(uuid.UUID(bytes=pu), po, state, plc))
        resync = None
        if flags & FLAG_RESYNC_TARGET:
            (_, src, base, base_cp, tcp, tcpid, cursor, total) = _RESYNC.unpack_from(
                data, _RESYNC_OFF)
            resync = ResyncRecord(uuid.UUID(bytes=src), uuid.UUID(bytes=base), base_cp, tcp,
                                  uuid.UUID(bytes=tcpid), cursor, total)
        return cls(block_size, uuid.UUID(bytes=vol), uuid.UUID(bytes=plex), ordinal, nblocks,
                   cp, uuid.UUID(bytes=cp_id), uuid.UUID(bytes=prev), ts, next_ino, min_plexes,
                   objtab, plane, snaptab, oh, ph, sh, n_snaps, tuple(members), resync, version)

    def root(self, which: str) -> np.ndarray:
        """A root pointer as a one-element pointer array."""
        raw: bytes = getattr(self, f"{which}_root")
        return np.frombuffer(raw, dtype=PTR_DTYPE).copy()

    def member(self, plex_uuid: uuid.UUID) -> Member | None:
        for m in self.members:
            if m.plex_uuid == plex_uuid:
                return m
        return None


def ptr_bytes(ptr: np.ndarray) -> bytes:
    """A one-element pointer array as the 32 bytes a superblock stores."""
    raw = np.ascontiguousarray(ptr, dtype=PTR_DTYPE).tobytes()
    assert len(raw) == PTR_SIZE
    return raw


def slot_offsets(volume_bytes: int) -> list[int]:
    """Byte offsets of every slot: ring A then ring B, slot order within each."""
    ring_b = volume_bytes - RING_BYTES
    return [i * SLOT_SIZE for i in range(RING_SLOTS)] + [
        ring_b + i * SLOT_SIZE for i in range(RING_SLOTS)
    ]


def cp_offsets(volume_bytes: int, cp: int) -> tuple[int, int]:
    """Where CP ``cp`` is written: its slot in ring A and in ring B."""
    i = cp % RING_SLOTS
    return i * SLOT_SIZE, volume_bytes - RING_BYTES + i * SLOT_SIZE


def pick_slot(slots: Sequence[Superblock | None]) -> Superblock | None:
    """The live slot: the valid one with the highest CP value (ring A wins ties).

    Invalid slots are passed as None and never trusted. Slots of one CP in
    both rings are identical by construction (one CP writes both, then
    flushes), so which of the two wins a tie does not matter.
    """
    best: Superblock | None = None
    for sb in slots:
        if sb is not None and (best is None or sb.cp > best.cp):
            best = sb
    return best
