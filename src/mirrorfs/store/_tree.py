"""Copy-on-write block trees: the shape of every object on disk.

Owns one tree's root pointer, height, dirty leaves and the placement of a
CP. Keeps: a committed block is never written again; a CP gives every dirty
leaf and every node above it a new block, frees the blocks they replace,
and only then computes checksums bottom-up, so the root pointer covers the
exact bytes below it.

Shape. A tree of height h has nodes at levels 1..h holding ``F = B / 32``
block pointers each, and leaves at level 0. Leaf ``i`` hangs under node
``i // F**l`` of level l, at position ``(i // F**(l-1)) % F``. Height 0
means the root points at leaf 0 directly. A null pointer is a hole: a leaf
that reads as zeros, or a subtree of holes.

A CP in two phases. ``place`` assigns blocks: it may run several times in
one CP (the block-map plane must place the blocks that hold its own bits
until nothing changes), and a node placed once keeps its block. ``seal``
then fills checksums from the leaves up and returns the blocks to write.

Concurrency. A tree is used under the store lock only.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from ..errors import CorruptBlock
from ..ondisk import PTR_DTYPE, PtrArray, null_ptrs
from ..ondisk._ptr import checksums
from ..plex import Buffer

NODE_READAHEAD = 32  # extra sibling nodes fetched with the ones a read needs
STREAM_NODES_AHEAD = 127  # the same for a stream's reads: the rest of the parent node
L1_KEEP = 128  # most level-1 nodes a tree keeps from its last walk (64 MiB of leaves)
READ_AHEAD_MIN = 1 << 20  # bytes fetched ahead once a read continues the one before it
READ_AHEAD_MAX = 16 << 20  # most bytes fetched ahead of a sequential reader
DEFERRED = bytes(1)  # a dirty leaf whose bytes are given at seal time (the plane), by identity
_CLEAN = object()
_STREAMS = itertools.count(1)  # stream numbers, unique in the process
Leaf = bytes | bytearray | memoryview | None
I64 = npt.NDArray[np.int64]


class BlockSource(Protocol):
    """What a tree needs from below: verified block reads and a node cache."""

    block_size: int

    def read_nodes(self, ptrs: PtrArray, what: str, ahead: PtrArray | None = None
                   ) -> list[PtrArray]: ...

    def read_leaves(self, ptrs: PtrArray, what: str) -> list[bytes | memoryview]: ...

    def read_leaves_into(self, ptrs: PtrArray, out: memoryview, pos: npt.NDArray[np.int64],
                         what: str, stream: int | None = None) -> None: ...

    def cache_node(self, ptr: bytes, node: PtrArray) -> None: ...

    @property
    def reads_ahead(self) -> bool: ...

    def prefetch(self, ptrs: PtrArray) -> None: ...


class Space(Protocol):
    def allocate(self, n: int) -> npt.NDArray[np.uint64]: ...

    def free(self, blks: npt.NDArray[np.uint64]) -> None: ...


class Tree:
    """One object's block tree, with the dirty leaves of the CP being built."""

    __slots__ = ("_base", "_cp_leaves", "_cp_nodes", "_cp_placed", "_l1", "_leaf_placed",
                 "_ra", "_seq", "_stream", "dirty", "fanout", "height", "leaf_delta", "root",
                 "src", "what")

    def __init__(self, src: BlockSource, root: PtrArray, height: int, what: str) -> None:
        self.src = src
        self.root = root.copy()
        self.height = height
        self.what = what
        self.fanout = src.block_size // PTR_DTYPE.itemsize
        self.dirty: dict[int, Leaf] = {}
        self.leaf_delta = 0
        self._cp_nodes: dict[tuple[int, int], PtrArray] = {}
        self._cp_placed: set[tuple[int, int]] = set()  # nodes (level >= 1) placed this CP
        self._leaf_placed: set[int] = set()  # leaves placed this CP
        self._cp_leaves: dict[int, Leaf] = {}
        self._base: tuple[PtrArray, int] | None = None  # committed root and height, during a CP
        self._ra = (-2, 0, 0)  # read-ahead: next leaf expected, leaves fetched up to, window
        self._stream = next(_STREAMS)  # the number of the stream of reads now going on
        self._seq = False  # whether the read under way continues the one before it
        # level-1 nodes met by the last walk, by index, and the root they hang from
        self._l1: tuple[bytes, dict[int, PtrArray]] = (b"", {})

    # -- reading ------------------------------------------------------------

    def capacity(self, height: int | None = None) -> int:
        """Leaves addressable at ``height``."""
        return int(self.fanout ** (self.height if height is None else height))

    def _node(self, ptr: PtrArray) -> PtrArray:
        return self.src.read_nodes(ptr.reshape(1), self.what)[0]

    def leaf_ptrs(self, a: int, b: int) -> PtrArray:
        """Committed pointers of leaves [a, b) (null for holes), vectorized per node.

        The level-1 nodes the last walk met are kept with the root they hang
        from: a read that continues the last one (four FUSE reads share a
        node) takes its pointers from them without a walk. Equal root bytes
        mean an equal tree (the root holds the checksum of all below), so no
        other invalidation is needed.
        """
        out = null_ptrs(max(0, b - a))
        b = min(b, self.capacity())
        if a >= b or self.root["blk"][0] == 0:
            return out
        if self.height == 0:
            out[0] = self.root[0]
            return out
        f = self.fanout
        key = self.root.tobytes()
        known, nodes = self._l1
        if known == key and all(i in nodes for i in range(a // f, (b - 1) // f + 1)):
            for i in range(a // f, (b - 1) // f + 1):
                lo, hi = max(a, i * f), min(b, (i + 1) * f)
                out[lo - a : hi - a] = nodes[i][lo - i * f : hi - i * f]
            return out
        met: dict[int, PtrArray] = {}
        self._collect(self._node(self.root), self.height, 0, a, b, out, a, met)
        self._l1 = (key, met) if len(met) <= L1_KEEP else (b"", {})
        return out

    def _collect(self, node: PtrArray, level: int, first: int, a: int, b: int,
                 out: PtrArray, base: int, met: dict[int, PtrArray]) -> None:
        span = self.fanout ** (level - 1)
        lo, hi = max(a, first), min(b, first + span * self.fanout)
        i0 = (lo - first) // span
        i1 = (hi - 1 - first) // span + 1
        if level == 1:
            out[first + i0 - base : first + i1 - base] = node[i0:i1]
            met[first // self.fanout] = node
            return
        want = np.flatnonzero(node["blk"][i0:i1]) + i0
        if not len(want):
            return
        # Children missing from the cache are read in one batch with some ahead: they
        # were placed together, so it is one coalesced read, and the next sequential
        # reads find theirs in the cache.
        if level == 2 and self._seq:
            # A stream's level-1 nodes: the rest of the parent's in one call (one read
            # where they are not cached), kept for the reads that follow, so those take
            # their pointers without a walk. A bad one among them is for whoever reads
            # under it to meet. Other reads take just theirs (and read fewer ahead).
            ahead = np.flatnonzero(node["blk"][i0 : min(self.fanout, i1 + STREAM_NODES_AHEAD)])
            ahead += i0
            try:
                got = dict(zip(ahead.tolist(), self.src.read_nodes(node[ahead], self.what),
                               strict=True))
            except CorruptBlock:
                got = {}
            if got:
                for i, kid in got.items():
                    met[first // self.fanout + i] = kid
                for i in want.tolist():
                    self._collect(got[i], 1, first + i * span, a, b, out, base, met)
                return
        ahead = np.flatnonzero(node["blk"][i0 : min(self.fanout, i1 + NODE_READAHEAD)]) + i0
        kids = self.src.read_nodes(node[want], self.what, node[ahead])
        for i, kid in zip(want.tolist(), kids, strict=True):
            self._collect(kid, level - 1, first + i * span, a, b, out, base, met)

    def nonnull_leaves(self, a: int, b: int) -> I64:
        """Indices of committed non-hole leaves in [a, b), skipping hole subtrees."""
        found: list[I64] = []
        b = min(b, self.capacity())
        if a >= b or self.root["blk"][0] == 0:
            return np.zeros(0, dtype=np.int64)
        if self.height == 0:
            return np.zeros(1 if a == 0 else 0, dtype=np.int64)
        self._walk_nonnull(self.root[0], self.height, 0, a, b, found)
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)

    def _walk_nonnull(self, ptr: np.void, level: int, first: int, a: int, b: int,
                      found: list[I64]) -> None:
        node = self._node(np.asarray(ptr).reshape(1))
        span = self.fanout ** (level - 1)
        lo, hi = max(a, first), min(b, first + span * self.fanout)
        i0 = (lo - first) // span
        i1 = (hi - 1 - first) // span + 1
        nz = np.flatnonzero(node["blk"][i0:i1]) + i0
        if level == 1:
            found.append((nz + first).astype(np.int64))
            return
        for i in nz.tolist():
            self._walk_nonnull(node[i], level - 1, first + i * span, a, b, found)

    def read_ahead(self, a: int, b: int, limit: int) -> None:
        """Leaves [a, b) are about to be read: if that continues a stream, fetch what follows.

        A read that does not continue one starts a new stream (a new number,
        which ``read_leaves_into`` hands the mirror, so it keeps a stream on
        one plex).

        A read that starts where the last one ended (or in its last leaf, for
        reads that do not end on a leaf) continues a stream (a first read,
        even at 0, does not: reading a file's head says little); the window ahead
        doubles with each such read, from READ_AHEAD_MIN to READ_AHEAD_MAX,
        never past leaf ``limit`` (the object's end). The next part is asked
        for once half the window is used, so the plexes work while the reader
        does: the mirror reads it in the background (``MirrorSet.prefetch``).
        Any other read starts over.
        """
        nxt, until, win = self._ra
        self._seq = a in (nxt, nxt - 1)
        if not self._seq:
            self._ra = (b, b, 0)
            self._stream = next(_STREAMS)
            return
        if not self.src.reads_ahead:
            self._ra = (b, b, 0)
            return
        bs = self.src.block_size
        win = min(max(2 * win, 2 * (b - a), READ_AHEAD_MIN // bs), READ_AHEAD_MAX // bs)
        until = max(until, b)
        end = min(b + win, limit)
        if end > until and until - b < win // 2:
            try:
                ptrs = self.leaf_ptrs(until, end)
            except CorruptBlock:
                ptrs = null_ptrs(0)  # a bad node is for whoever reads under it to meet
            keep = ptrs["blk"] != 0
            if self.dirty:
                for lb in self.dirty:
                    if until <= lb < end:
                        keep[lb - until] = False
            if keep.any():
                self.src.prefetch(ptrs[keep])
            until = end
        self._ra = (b, until, win)

    def read_leaves_into(self, a: int, b: int, out: memoryview) -> None:
        """Leaves [a, b) into ``out`` ((b - a) blocks): dirty bytes, committed ones, zeros.

        The reads are of this tree's current stream (``read_ahead``): the
        mirror keeps a stream on the plex that served its first read.
        """
        bs = self.src.block_size
        ptrs = self.leaf_ptrs(a, b)
        present = ptrs["blk"] != 0
        if self.dirty:
            dirty = self.dirty
            near = dirty if len(dirty) < b - a else range(a, b)
            for lb in near:
                if a <= lb < b and lb in dirty:
                    present[lb - a] = False
        if present.all():  # the common case: every leaf committed, none dirty
            want = np.arange(b - a, dtype=np.int64)
            some = ptrs
        else:
            want = np.flatnonzero(present)
            some = ptrs[want]
        if len(want):
            try:
                self.src.read_leaves_into(some, out, want, self.what, self._stream)
            except CorruptBlock as e:
                raise self._at_offset(e, ptrs, a) from None
        if len(want) < b - a:
            for i in np.flatnonzero(~present).tolist():
                d = self.dirty.get(a + i) if self.dirty else None
                if d is None:
                    out[i * bs : (i + 1) * bs] = bytes(bs)
                else:
                    out[i * bs : (i + 1) * bs] = d

    def read_leaves(self, a: int, b: int) -> list[bytes | bytearray | memoryview | None]:
        """Leaves [a, b): dirty bytes first, then committed ones (None for holes)."""
        ptrs = self.leaf_ptrs(a, b)
        out: list[bytes | bytearray | memoryview | None] = [None] * (b - a)
        want = np.flatnonzero(ptrs["blk"])
        if self.dirty:
            want = np.array([i for i in want.tolist() if (a + i) not in self.dirty],
                            dtype=np.int64)
        if len(want):
            try:
                datas = self.src.read_leaves(ptrs[want], self.what)
            except CorruptBlock as e:
                raise self._at_offset(e, ptrs, a) from None
            for i, data in zip(want.tolist(), datas, strict=True):
                out[i] = data
        if self.dirty:
            for i in range(b - a):
                d = self.dirty.get(a + i, _CLEAN)
                if d is not _CLEAN:
                    out[i] = d  # type: ignore[call-overload]
        return out

    def _at_offset(self, err: CorruptBlock, ptrs: PtrArray, a: int) -> CorruptBlock:
        """``err`` naming the byte offset of the bad leaf in this tree's object too.

        The mirror knows only the block; a reader needs the place in the file.
        """
        if len(err.args_) != 3 or not isinstance(err.args_[1], int):
            return err
        hit = np.flatnonzero(ptrs["blk"] == err.args_[1])
        if len(hit) == 0:
            return err
        return err.at(str(err.args_[0]), (a + int(hit[0])) * self.src.block_size)

    @property
    def committed(self) -> bool:
        """Whether any committed block hangs from this tree (False for a new object)."""
        return self._base is not None or bool(self.root["blk"][0] != 0)

    def read_leaf(self, i: int) -> bytes | bytearray | memoryview | None:
        if not self.committed:  # a new object: only its dirty leaves exist
            return self.dirty.get(i)
        return self.read_leaves(i, i + 1)[0]

    def walk_ptrs(self) -> Iterator[tuple[int, PtrArray]]:
        """Every committed pointer by level (root level first): ``(level, ptrs)``.

        Level 0 pointers are leaves. Used by fsck, scrub and reachability.
        """
        if self.root["blk"][0] == 0:
            return
        yield self.height, self.root
        level_ptrs = self.root
        for level in range(self.height, 0, -1):
            nodes = self.src.read_nodes(level_ptrs, self.what)
            if not nodes:
                return
            children = np.concatenate(nodes)
            children = children[children["blk"] != 0]
            yield level - 1, children
            level_ptrs = children

    # -- writing ------------------------------------------------------------

    def write_leaf(self, i: int, data: Leaf) -> None:
        """Make leaf ``i`` dirty with new bytes (a full block), or a hole (None)."""
        self.dirty[i] = data

    @property
    def is_dirty(self) -> bool:
        return bool(self.dirty)

    def _old_node(self, level: int, index: int) -> PtrArray:
        """The committed pointer to node (level, index), or a null pointer."""
        root, height = self._base if self._base is not None else (self.root, self.height)
        if level > height or index >= self.fanout ** (height - level):
            return null_ptrs(1)
        ptr = root
        for lv in range(height, level, -1):
            if ptr["blk"][0] == 0:
                return null_ptrs(1)
            node = self._node(ptr)
            pos = (index // self.fanout ** (lv - 1 - level)) % self.fanout
            ptr = node[pos : pos + 1]
        return ptr

    def _node_for_cp(self, level: int, index: int, space: Space) -> PtrArray:
        key = (level, index)
        node = self._cp_nodes.get(key)
        if node is None:
            old = self._old_node(level, index)
            node = self._node(old).copy() if old["blk"][0] != 0 else null_ptrs(self.fanout)
            if old["blk"][0] != 0:
                space.free(old["blk"])
            self._cp_nodes[key] = node
        return node

    def _grow(self, need_leaves: int, space: Space, cp: int) -> None:
        while self.capacity() < need_leaves:
            old_root = self.root.copy()
            self.height += 1
            node = null_ptrs(self.fanout)
            node[0] = old_root[0]
            below = self._cp_nodes.get((self.height - 1, 0))
            if old_root["blk"][0] == 0 and below is not None and below["blk"].any():
                # growth by several levels: the node grown just below hangs only from
                # here, and no dirty leaf need pass through it, so place it now (an
                # all-hole node gets no block: seal writes only nodes that hold something)
                node["blk"][0] = space.allocate(1)[0]
                node["birth"][0] = cp
                self._cp_placed.add((self.height - 1, 0))
            if old_root["blk"][0] != 0 or (self.height - 1, 0) in self._cp_nodes:
                self._cp_nodes[(self.height, 0)] = node
                self._cp_placed.discard((self.height, 0))
            self.root = null_ptrs(1)

    def place(self, space: Space, cp: int) -> None:
        """Give every dirty leaf, and every node above one, a block for CP ``cp``."""
        if not self.dirty:
            return
        if self._base is None:
            self._base = (self.root.copy(), self.height)
        order = sorted(self.dirty)
        idx = np.array(order, dtype=np.int64)
        leaves = [self.dirty[i] for i in order]
        self.dirty = {}
        self._grow(int(idx[-1]) + 1, space, cp)
        n = len(order)
        has = np.fromiter((d is not None for d in leaves), dtype=bool, count=n)
        child = null_ptrs(n)
        if self._leaf_placed:  # a later pass of this CP (the plane): placed leaves keep blocks
            again = np.fromiter((i in self._leaf_placed for i in order), dtype=bool, count=n)
            fresh = has & ~again
            keep = has & again
            child["blk"][keep] = self._placed_leaf_blocks(idx)[keep]
        else:
            fresh = has
        child["blk"][fresh] = space.allocate(int(fresh.sum()))
        child["birth"][has] = cp
        self._cp_leaves.update(zip(order, leaves, strict=True))
        self._leaf_placed.update(itertools.compress(order, has.tolist()))
        if not has.all():
            self._leaf_placed.difference_update(itertools.compress(order, (~has).tolist()))
        self._propagate(idx, child, space, cp, leaf_level=True)

    @property
    def small_placeable(self) -> bool:
        """Placeable by ``place_and_seal_small``: a one-block tree whose leaf 0 is rewritten,
        or a new tree (no committed block) whose dirty leaves all hang from one node."""
        if self.height != 0 or not self.dirty or self._base is not None or self._cp_leaves:
            return False
        if len(self.dirty) == 1 and self.dirty.get(0) is not None:
            return True
        return bool(self.root["blk"][0] == 0) and max(self.dirty) < self.fanout and any(
            d is not None for d in self.dirty.values())

    @staticmethod
    def place_and_seal_small(trees: Sequence[Tree], space: Space, cp: int
                             ) -> tuple[list[int], list[Buffer]]:
        """``place`` + ``seal`` of many ``small_placeable`` trees at once.

        A CP after many small files are written (an untar, a build) holds
        thousands of trees of one leaf, or of a few leaves under one node; one
        allocation and one checksum pass for the leaves of all of them, and one
        for their nodes, cost what the per-tree path costs for a handful.
        """
        if not trees:
            return [], []
        leaf_idx: list[list[int]] = []
        datas: list[Buffer] = []
        for t in trees:
            keys = sorted(i for i, d in t.dirty.items() if d is not None)
            leaf_idx.append(keys)
            for i in keys:
                d = t.dirty[i]
                assert d is not None and d is not DEFERRED
                datas.append(d)
        has_node = [max(t.dirty) > 0 for t in trees]  # else a one-block tree: root = leaf
        noded = [k for k, yes in enumerate(has_node) if yes]
        leaf_blks = space.allocate(len(datas))
        node_blks = space.allocate(len(noded)).tolist()
        olds = np.array([t.root["blk"][0] for t in trees], dtype=np.uint64)
        space.free(olds[olds != 0])  # only rewritten one-block trees have one
        cks = checksums(datas)
        nodes: list[PtrArray] = []
        pos = 0
        for k, t in enumerate(trees):
            keys = leaf_idx[k]
            span = slice(pos, pos + len(keys))
            pos += len(keys)
            t.leaf_delta += len(keys) - int(olds[k] != 0)
            t.dirty = {}
            if not has_node[k]:
                root = null_ptrs(1)
                root["blk"][0], root["birth"][0] = leaf_blks[span][0], cp
                root["ck"][0] = cks[span][0]
                t.root = root
                continue
            node = null_ptrs(t.fanout)
            node["blk"][keys] = leaf_blks[span]
            node["birth"][keys] = cp
            node["ck"][keys] = cks[span]
            nodes.append(node)
        raw = [n.tobytes() for n in nodes]
        ncks = checksums(raw) if raw else np.zeros((0, 2), dtype=np.uint64)
        for j, k in enumerate(noded):
            t = trees[k]
            root = null_ptrs(1)
            root["blk"][0], root["birth"][0], root["ck"][0] = node_blks[j], cp, ncks[j]
            t.root, t.height = root, 1
            t.src.cache_node(bytes(root[0].tobytes()), nodes[j])
        return leaf_blks.tolist() + node_blks, datas + raw

    def _placed_leaf_blocks(self, idx: I64) -> npt.NDArray[np.uint64]:
        out = np.zeros(len(idx), dtype=np.uint64)
        if self.height == 0:
            if len(idx) and 0 in self._leaf_placed:
                out[0] = self.root["blk"][0]
            return out
        for j, i in enumerate(idx.tolist()):
            if i in self._leaf_placed:
                node = self._cp_nodes.get((1, i // self.fanout))
                if node is not None:
                    out[j] = node["blk"][i % self.fanout]
        return out

    def _propagate(self, idx: I64, child: PtrArray, space: Space, cp: int,
                   leaf_level: bool) -> None:
        level = 1
        while True:
            if level > self.height:  # the changed children hang from the root itself
                assert len(idx) == 1 and idx[0] == 0
                old = self.root
                if leaf_level and self.height == 0:
                    self.leaf_delta += int(child["blk"][0] != 0) - int(old["blk"][0] != 0)
                if old["blk"][0] != 0 and old["blk"][0] != child["blk"][0]:
                    space.free(old["blk"])
                self.root = child[:1].copy()
                return
            parents = idx // self.fanout
            uniq, starts = np.unique(parents, return_index=True)
            ends = np.append(starts[1:], len(idx))
            new_child = null_ptrs(len(uniq))
            fresh_keys: list[int] = []
            for j, (p, s, e) in enumerate(zip(uniq.tolist(), starts.tolist(), ends.tolist(),
                                              strict=True)):
                node = self._node_for_cp(level, p, space)
                pos = idx[s:e] % self.fanout
                olds = node["blk"][pos]
                news = child["blk"][s:e]
                gone = olds[(olds != 0) & (olds != news)]
                if len(gone):
                    space.free(gone)
                if leaf_level and level == 1:
                    self.leaf_delta += int(np.count_nonzero(news)) - int(np.count_nonzero(olds))
                node[pos] = child[s:e]
                if not node["blk"].any():
                    if (level, p) in self._cp_placed:
                        space.free(np.array([self._placed_blk(level, p)], dtype=np.uint64))
                        self._cp_placed.discard((level, p))
                    continue
                if (level, p) in self._cp_placed:
                    new_child["blk"][j] = self._placed_blk(level, p)
                else:
                    fresh_keys.append(j)
                new_child["birth"][j] = cp
            if fresh_keys:
                blks = space.allocate(len(fresh_keys))
                for j, blk in zip(fresh_keys, blks.tolist(), strict=True):
                    new_child["blk"][j] = blk
                    self._cp_placed.add((level, int(uniq[j])))
            idx, child = uniq.astype(np.int64), new_child
            leaf_level = False
            level += 1

    def _placed_ptr(self, level: int, index: int) -> bytes:
        """The sealed pointer to node (level, index): in its parent, or the root."""
        if level == self.height:
            return bytes(self.root[0].tobytes())
        parent = self._cp_nodes[(level + 1, index // self.fanout)]
        return bytes(parent[index % self.fanout].tobytes())

    def _placed_blk(self, level: int, index: int) -> int:
        if level == self.height:
            return int(self.root["blk"][0])
        parent = self._cp_nodes[(level + 1, index // self.fanout)]
        return int(parent["blk"][index % self.fanout])

    def seal(self, content: Callable[[int], bytes] | None = None
             ) -> tuple[list[int], list[Buffer]]:
        """Fill checksums bottom-up; return (blocks, bytes) to write for this CP."""
        out_blks: list[int] = []
        out_data: list[Buffer] = []
        if not self._cp_leaves and not self._cp_nodes:
            self._base = None
            return out_blks, out_data
        idx = np.array(sorted(i for i, d in self._cp_leaves.items() if d is not None),
                       dtype=np.int64)
        datas: list[Buffer] = []
        for i in idx.tolist():
            d = self._cp_leaves[i]
            assert d is not None
            datas.append(content(i) if d is DEFERRED and content is not None else d)
        cks = checksums(datas) if datas else np.zeros((0, 2), dtype=np.uint64)
        self._fill(0, idx, cks, out_blks, out_data, datas)
        for level in range(1, self.height + 1):
            keys = sorted(p for (lv, p) in self._cp_nodes if lv == level)
            live = [p for p in keys if self._cp_nodes[(level, p)]["blk"].any()]
            nodes = [self._cp_nodes[(level, p)] for p in live]
            raw = [n.tobytes() for n in nodes]
            ncks = checksums(raw) if raw else np.zeros((0, 2), dtype=np.uint64)
            self._fill(level, np.array(live, dtype=np.int64), ncks, out_blks, out_data, raw)
            for p, n in zip(live, nodes, strict=True):
                self.src.cache_node(self._placed_ptr(level, p), n)
        self._cp_nodes = {}
        self._cp_placed = set()
        self._leaf_placed = set()
        self._cp_leaves = {}
        self._base = None
        return out_blks, out_data

    def _fill(self, level: int, idx: I64, cks: npt.NDArray[np.uint64], out_blks: list[int],
              out_data: list[Buffer], datas: list[bytes] | list[Buffer]
              ) -> None:
        """Put checksums of level-``level`` blocks into their parents and queue the writes."""
        if len(idx) == 0:
            return
        if level == self.height:
            assert len(idx) == 1
            self.root["ck"][0] = cks[0]
            out_blks.append(int(self.root["blk"][0]))
            out_data.append(datas[0])
            return
        parents = idx // self.fanout
        uniq, starts = np.unique(parents, return_index=True)
        ends = np.append(starts[1:], len(idx))
        for p, s, e in zip(uniq.tolist(), starts.tolist(), ends.tolist(), strict=True):
            node = self._cp_nodes[(level + 1, p)]  # vectorized per parent node
            pos = idx[s:e] % self.fanout
            node["ck"][pos] = cks[s:e]
            out_blks.extend(node["blk"][pos].tolist())
        out_data.extend(datas)
