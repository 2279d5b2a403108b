"""Plan: the blocks changed between the up-to-date plex and a stale one.

The second comparison element of the method.

Owns the choice of common snapshots and the changed set. Keeps: the changed
set is every block the source uses (active file system and all snapshots)
that no common snapshot holds, minus the superblock rings, so copying it
(plus a superblock) makes the target identical to the source in every block
that matters (DESIGN.md, "Why a common snapshot makes the copy exact").

Common. A snapshot is held in common when the target holds the same GUID
(in its snapshot table, or as its own current CP, whose id is the GUID of a
resync base) with the same CP value and root checksums. A target that is an
unfinished resync target holds only the base its resync record names: its
own tables may already be overwritten.

Cost. Planes are copy-on-write trees, so planes that did not change share
leaf blocks. The plan compares leaf pointers (block and checksum) of every
source plane against the common planes, vectorized, and reads only leaves
whose pointers differ: its cost follows the change, not the volume size.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt

from ..errors import MirrorfsError
from ..mirror import PlexSlot
from ..ondisk import PtrArray, SnapshotRecord, Superblock, ptr_words
from ..store import Store, Tree
from ..store import _planes as planes
from ..store._objects import ptr_of
from ._examine import read_plex_snapshots

EST_BYTES_PER_S = 200e6  # rough copy rate used for the time estimate of a plan
EST_SECONDS_PER_EXTENT = 0.0002  # rough cost of one extra extent (a seek, two syscalls)


@dataclasses.dataclass
class Plan:
    """What a resync of one target copies, and from which common point."""

    target: str
    source: str
    base: SnapshotRecord | None
    common: list[SnapshotRecord]
    changed: npt.NDArray[np.uint64]  # bit plane of the blocks to copy
    blocks: int
    extents: int
    block_size: int
    full: bool
    note: str = ""

    @property
    def bytes(self) -> int:
        return self.blocks * self.block_size

    def estimate_seconds(self, rate: float | None = None) -> float:
        return self.bytes / (rate or EST_BYTES_PER_S) + self.extents * EST_SECONDS_PER_EXTENT

    def as_dict(self) -> dict[str, object]:
        b = self.base
        return {"target": self.target, "source": self.source,
                "base": {"name": b.name, "guid": str(b.guid), "cp": b.cp} if b else None,
                "common": [r.name for r in self.common], "full_copy": self.full,
                "blocks": self.blocks, "bytes": self.bytes, "extents": self.extents,
                "estimated_seconds": round(self.estimate_seconds(), 3), "note": self.note}


def _held_by_target(store: Store, slot: PlexSlot) -> tuple[list[SnapshotRecord], str]:
    """The source's snapshots that the target provably holds, and a note on how."""
    sb = slot.sb
    by_guid = {r.guid: r for r in store.snapshots}
    if sb is None:
        return [], "the target has no label"
    if slot.resync is not None or sb.resync is not None:
        rec = slot.resync or sb.resync
        assert rec is not None
        base = by_guid.get(rec.base_guid)
        if base is not None and base.cp == rec.base_cp:
            return [base], "resuming: the target holds the base its resync record names"
        return [], "resuming, but the base of the interrupted resync is gone"
    held: list[SnapshotRecord] = []
    cur = by_guid.get(sb.cp_id)
    if cur is not None and _same_roots(cur, sb):
        held.append(cur)
        # CP n+1 never overwrites a block of CP n: a plex at n+1 holds n too (a plex that
        # failed writing its n+1 superblock has both pinned for it).
        prev = by_guid.get(sb.prev_cp_id)
        if prev is not None and prev.cp == sb.cp - 1 and prev not in held:
            held.append(prev)
    try:
        theirs = read_plex_snapshots(slot.plex, sb)
    except MirrorfsError:
        theirs = []
    for t in theirs:
        mine = by_guid.get(t.guid)
        if (mine is not None and mine.cp == t.cp and mine.root_checksums == t.root_checksums
                and mine not in held):
            held.append(mine)
    return held, ""


def _same_roots(rec: SnapshotRecord, sb: Superblock) -> bool:
    return (rec.cp == sb.cp and rec.objtab_root[16:] == sb.objtab_root[16:]
            and rec.plane_root[16:] == sb.plane_root[16:])


def _leaf_keys(ptrs: PtrArray) -> npt.NDArray[np.uint64]:
    """(block, checksum) of each pointer: equal keys mean equal leaf bytes."""
    return ptr_words(ptrs)[:, [0, 2, 3]]


def changed_plane(store: Store, src_trees: list[Tree], common_trees: list[Tree]
                  ) -> npt.NDArray[np.uint64]:
    """OR of the source planes AND NOT OR of the common planes, reading only differing leaves."""
    words = store.leaf_words
    nleaves = store.plane_words // words
    src = [t.leaf_ptrs(0, nleaves) for t in src_trees]
    com = [t.leaf_ptrs(0, nleaves) for t in common_trees]
    ckeys = [_leaf_keys(c) for c in com]
    need = np.zeros(nleaves, dtype=bool)
    for s in src:
        k = _leaf_keys(s)
        covered = np.zeros(nleaves, dtype=bool)
        for ck in ckeys:
            covered |= np.all(k == ck, axis=1)
        need |= (s["blk"] != 0) & ~covered
    out = np.zeros(store.plane_words, dtype=np.uint64)
    idx = np.flatnonzero(need)
    if len(idx) == 0:
        return out
    cache: dict[int, npt.NDArray[np.uint64]] = {}

    def leaves(ptr_sets: list[PtrArray]) -> npt.NDArray[np.uint64]:
        acc = np.zeros((len(idx), words), dtype=np.uint64)
        for ptrs in ptr_sets:
            sel = ptrs[idx]
            want = [i for i in np.flatnonzero(sel["blk"]).tolist()
                    if int(sel["blk"][i]) not in cache]
            if want:
                datas = store.src.read_leaves(sel[want], "block-map plane")
                for i, d in zip(want, datas, strict=True):
                    cache[int(sel["blk"][i])] = np.frombuffer(d, dtype="<u8")
            for i in np.flatnonzero(sel["blk"]).tolist():
                acc[i] |= cache[int(sel["blk"][i])]
        return acc

    diff = leaves(src) & ~leaves(com)
    for j, li in enumerate(idx.tolist()):
        out[li * words : (li + 1) * words] = diff[j]
    return out


def plan_target(store: Store, slot: PlexSlot, source: str) -> Plan:
    """Plan the resync of ``slot`` from the store's committed state."""
    with store.lock:
        common, note = _held_by_target(store, slot)
        src_trees = [store.plane_tree] + [
            Tree(store.src, ptr_of(r.plane_root), r.plane_height, f"plane of {r.name}")
            for r in store.snapshots]
        com_trees = [Tree(store.src, ptr_of(r.plane_root), r.plane_height, f"plane of {r.name}")
                     for r in common]
        changed = changed_plane(store, src_trees, com_trees)
        planes.clear_bits(changed, store.reserved)
        starts, lengths = planes.extents(changed)
        base = max(common, key=lambda r: r.cp) if common else None
        full = base is None
        if full and not note:
            note = "no snapshot is held in common: a full copy of the blocks in use"
        return Plan(slot.spec, source, base, common, changed, int(lengths.sum()), len(starts),
                    store.block_size, full, note)


def target_slots(store: Store) -> list[PlexSlot]:
    """Plexes a resync brings in sync: every present plex that is not in sync.

    A plex taken offline on purpose is included: the resync is how it comes back.
    """
    from ..ondisk import PlexState

    return [s for s in store.mirror.slots if s.state in (
        PlexState.STALE, PlexState.RESYNCING, PlexState.FAILED, PlexState.OFFLINE)]


