"""Rescue: keep a diverged plex's state as a snapshot of the survivor before a resync.

Owns the rewrite of a foreign image into the survivor's free space. Keeps:
nothing of the losing side is lost silently. Every block of its image that
no common snapshot holds is copied into free space of the survivor and the
tree above it is rewritten to point at the copy; blocks of common snapshots
are shared as they are (they hold the same bytes on both sides). The result
is an ordinary snapshot (kind ``diverged``), browsable under ``/.snapshot/``.

Blocks are written straight to the survivor's in-sync plexes and recorded
in the snapshot union at allocation, so no CP can reuse them; the snapshot
record reaches the plexes with the next CP. A crash before that CP leaves
the blocks unreferenced and free again: the rescue simply runs again.
"""

from __future__ import annotations

import dataclasses
import re
import uuid

import numpy as np
import numpy.typing as npt

from ..errors import MirrorfsError
from ..mirror import MirrorSet, PlexSlot
from ..ondisk import (
    INODE_SIZE,
    PTR_DTYPE,
    Inode,
    PlexState,
    PtrArray,
    SnapKind,
    SnapshotRecord,
    Superblock,
    checksum,
    null_ptrs,
    ptr_bytes,
)
from ..store import MirrorSource, Store, Tree, image_blocks
from ..store import _planes as planes
from ..store._objects import ObjectView, ptr_of
from ..store._tree import DEFERRED
from ._examine import read_plex_snapshots


class NotEnoughSpace(MirrorfsError):
    """not enough free space to keep the divergent state of {0}: {1} blocks needed, {2} free; free space on the survivor, or drop it with --discard-divergent"""  # noqa: E501

    exit_code = 1


@dataclasses.dataclass
class Rescued:
    snapshot: str
    source_image: str
    blocks_copied: int


def _label(slot: PlexSlot) -> str:
    base = slot.spec.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._-]", "_", base) or f"plex{slot.ordinal}"


class _Rewriter:
    """Copies the non-common blocks of trees read from the loser into the survivor."""

    def __init__(self, store: Store, loser: MirrorSource, common: npt.NDArray[np.uint64],
                 cp: int) -> None:
        self.store = store
        self.loser = loser
        self.common = common
        self.cp = cp
        self.memo: dict[int, np.void] = {}
        self.copied = 0
        self.fanout = store.block_size // PTR_DTYPE.itemsize

    def _in_common(self, blks: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        return planes.test_bits(self.common, blks)

    def _put(self, datas: list[bytes | memoryview]) -> npt.NDArray[np.uint64]:
        blks = self.store.alloc.allocate_pinned(len(datas))
        self.store.mirror.write_blocks(blks, datas)
        self.copied += len(datas)
        return blks

    def leaves(self, ptrs: PtrArray) -> PtrArray:
        """Copy data leaves not held in common; returns the rewritten pointers."""
        out = ptrs.copy()
        blks = np.asarray(ptrs["blk"], dtype=np.uint64)
        todo = [i for i in np.flatnonzero((blks != 0) & ~self._in_common(blks)).tolist()
                if int(blks[i]) not in self.memo]
        if todo:
            datas = self.loser.read_leaves(ptrs[todo], "diverged data")
            new = self._put(datas)
            for i, nb in zip(todo, new.tolist(), strict=True):
                p = ptrs[i].copy()
                p["blk"] = nb
                self.memo[int(blks[i])] = p
        for i in np.flatnonzero((blks != 0) & ~self._in_common(blks)).tolist():
            out[i] = self.memo[int(blks[i])]
        return out

    def tree(self, root: PtrArray, height: int, leaf_fn: object = None) -> PtrArray:
        """Rewrite one tree (root pointer array of one element); common subtrees stay."""
        blk = int(root["blk"][0])
        if blk == 0 or self._in_common(np.array([blk], dtype=np.uint64))[0]:
            return root
        if blk in self.memo:
            return np.asarray([self.memo[blk]], dtype=PTR_DTYPE)
        if height == 0:
            if leaf_fn is not None:
                return leaf_fn(root)  # type: ignore[operator, no-any-return]
            return self.leaves(root)
        node = self.loser.read_nodes(root, "diverged tree")[0].copy()
        if height == 1:
            if leaf_fn is not None:
                for i in np.flatnonzero(node["blk"]).tolist():
                    node[i : i + 1] = leaf_fn(node[i : i + 1])  # type: ignore[operator]
            else:
                node[:] = self.leaves(node)
        else:
            for i in np.flatnonzero(node["blk"]).tolist():
                node[i : i + 1] = self.tree(node[i : i + 1], height - 1, leaf_fn)
        return self._node(node, root, blk)

    def _node(self, node: PtrArray, old: PtrArray, old_blk: int) -> PtrArray:
        data = node.tobytes()
        (nb,) = self._put([data]).tolist()
        p = null_ptrs(1)
        p["blk"] = nb
        p["birth"] = old["birth"][0]
        p["ck"][0] = np.frombuffer(checksum(data), dtype="<u8")
        self.memo[old_blk] = p[0]
        return p

    def objtab_leaf(self, ptr: PtrArray) -> PtrArray:
        """Rewrite one object-table leaf: every inode's tree, then the leaf itself."""
        blk = int(ptr["blk"][0])
        if blk in self.memo:
            return np.asarray([self.memo[blk]], dtype=PTR_DTYPE)
        (raw,) = self.loser.read_leaves(ptr, "diverged object table")
        buf = bytearray(raw)
        for j in range(len(buf) // INODE_SIZE):
            rec = buf[j * INODE_SIZE : (j + 1) * INODE_SIZE]
            ind = Inode.decode(bytes(rec))
            if ind.free or not int.from_bytes(ind.root[:8], "little"):
                continue
            root = self.tree(ptr_of(ind.root), ind.height)
            buf[j * INODE_SIZE : (j + 1) * INODE_SIZE] = dataclasses.replace(
                ind, root=ptr_bytes(root)).encode()
        (nb,) = self._put([bytes(buf)]).tolist()
        p = ptr.copy()
        p["blk"] = nb
        p["ck"][0] = np.frombuffer(checksum(bytes(buf)), dtype="<u8")
        self.memo[blk] = p[0]
        return p


class _PinnedSpace:
    """Allocation for a snapshot's own plane tree: pinned blocks, also marked in its plane."""

    def __init__(self, store: Store, words: npt.NDArray[np.uint64]) -> None:
        self.store = store
        self.words = words

    def allocate(self, n: int) -> npt.NDArray[np.uint64]:
        blks = self.store.alloc.allocate_pinned(n)
        planes.set_bits(self.words, blks)
        return blks

    def free(self, blks: npt.NDArray[np.uint64]) -> None:
        planes.clear_bits(self.words, blks)


def _build_plane(store: Store, words: npt.NDArray[np.uint64], cp: int) -> Tree:
    """A plane tree for ``words`` that also marks its own blocks (the fixpoint)."""
    tree = Tree(store.src, null_ptrs(1), 0, "diverged plane")
    space = _PinnedSpace(store, words)
    w = store.leaf_words
    placed = np.zeros(store.plane_words // w, dtype=bool)
    while True:
        nonzero = np.any(words.reshape(-1, w) != 0, axis=1)
        new = np.flatnonzero(nonzero & ~placed)
        if len(new) == 0:
            break
        for i in new.tolist():
            tree.write_leaf(i, DEFERRED)
        placed[new] = True
        tree.place(space, cp)
    blks, datas = tree.seal(lambda i: words[i * w : (i + 1) * w].tobytes())
    store.mirror.write_blocks(np.array(blks, dtype=np.uint64), datas)
    return tree


def divergent_blocks(store: Store, slot: PlexSlot, common: npt.NDArray[np.uint64]) -> int:
    """Blocks of the loser's active image that no common snapshot holds (an upper bound)."""
    src = _loser_source(slot)
    sb = slot.sb
    assert sb is not None
    tree = Tree(src, sb.root("plane"), sb.plane_height, f"plane of {slot.spec}")
    from ..store import plane_from_tree

    theirs = plane_from_tree(tree, store.plane_words)
    return planes.count(theirs & ~common)


def _loser_source(slot: PlexSlot) -> MirrorSource:
    sb = slot.sb
    assert sb is not None
    alone = PlexSlot(slot.plex, sb.plex_uuid, sb.plex_ordinal, PlexState.IN_SYNC, sb)
    return MirrorSource(MirrorSet([alone], sb.block_size, sb.nblocks, read_only=True))


def rescue(store: Store, slot: PlexSlot, common: list[SnapshotRecord]) -> list[Rescued]:
    """Keep the loser's active image (and its snapshots not held in common) as snapshots."""
    sb: Superblock | None = slot.sb
    assert sb is not None
    with store.lock:
        store.commit()
        union = np.zeros(store.plane_words, dtype=np.uint64)
        for rec in common:
            union |= store.snapshot_plane(rec)
        need = divergent_blocks(store, slot, union)
        free = store.alloc.free_blocks()
        if need + 1024 > free:
            raise NotEnoughSpace(slot.spec, need, free)
        loser = _loser_source(slot)
        images: list[tuple[str, bytes, int, int]] = [
            (f"diverged-{_label(slot)}-cp{sb.cp}", sb.objtab_root, sb.objtab_height, sb.next_ino)]
        common_guids = {r.guid for r in common}
        try:
            theirs = read_plex_snapshots(slot.plex, sb)
        except MirrorfsError:
            theirs = []
        for r in theirs:
            if r.guid not in common_guids and r.kind != SnapKind.RESYNC_BASE:
                images.append((f"diverged-{_label(slot)}-cp{sb.cp}-{r.name}"[:120],
                               r.objtab_root, r.objtab_height, r.next_ino))
        rw = _Rewriter(store, loser, union, store.cp + 1)
        out: list[Rescued] = []
        for name, root_raw, height, next_ino in images:
            if any(r.name == name for r in store.snapshots):
                continue
            before = rw.copied
            root = rw.tree(ptr_of(root_raw), height, rw.objtab_leaf)
            view = ObjectView(store.src, root, height, next_ino, name=name)
            store.mirror.flush()
            words = np.zeros(store.plane_words, dtype=np.uint64)
            planes.set_bits(words, image_blocks(view))
            plane = _build_plane(store, words, store.cp + 1)
            planes.set_bits(store.alloc.snap_union, planes.to_blocks(words))
            store.snapshots.append(SnapshotRecord(
                name=name, guid=uuid.uuid4(), cp=store.cp, ctime_ns=store.clock.time_ns(),
                kind=SnapKind.DIVERGED, objtab_root=ptr_bytes(root),
                plane_root=ptr_bytes(plane.root), objtab_height=height,
                plane_height=plane.height, next_ino=next_ino))
            store.mark_snapshots_dirty()
            out.append(Rescued(name, "active" if len(out) == 0 else name,
                               rw.copied - before))
        store.mirror.flush()
        store.commit(force=True)
        return out


