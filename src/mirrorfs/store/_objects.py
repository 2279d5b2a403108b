"""Objects: numbered byte streams with attributes, read from one image of the file system.

Owns the inode cache, the per-object trees and the dirty state of the active
image. Keeps: an object's bytes beyond its size read as zeros, and a write
never touches a committed block (it goes to a dirty leaf of the object's
tree), so snapshots and the last CP stay intact until the CP commits.

``ObjectView`` reads any image (the active one or a snapshot);
``ObjectTable`` adds writes to the active image.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..errors import NoSpace, ReadOnly
from ..ondisk import INODE_SIZE, PTR_DTYPE, Inode, PtrArray, ptr_bytes
from ..plex import Buffer
from ._tree import BlockSource, Space, Tree

INODE_CACHE = 1 << 17  # most clean inodes kept decoded


def split_blocks(offset: int, end: int, bs: int) -> tuple[int, int, list[int]]:
    """The whole blocks [fa, fb) inside bytes [offset, end), and the partial ones at its edges.

    Reads and writes move whole blocks without a bounce buffer; only the
    partial blocks (at most two; all of them when no whole block is inside)
    need a read-modify-write or a copy through a one-block buffer.
    """
    fa, fb = -(-offset // bs), end // bs
    if fa >= fb:
        return fa, fa, list(range(offset // bs, (end - 1) // bs + 1))
    edges = [lb for lb in (offset // bs, fb)
             if lb * bs < end and (lb * bs < offset or (lb + 1) * bs > end)]
    return fa, fb, edges


def ptr_of(raw: bytes) -> PtrArray:
    return np.frombuffer(raw, dtype=PTR_DTYPE).copy()


class ObjectView:
    """Read-only access to the objects of one image of the file system."""

    def __init__(self, src: BlockSource, objtab_root: PtrArray, objtab_height: int,
                 next_ino: int, name: str = "active") -> None:
        self.src = src
        self.block_size = src.block_size
        self.per_leaf = self.block_size // INODE_SIZE
        self.objtab = Tree(src, objtab_root, objtab_height, f"{name} object table")
        self.next_ino = next_ino
        self.name = name
        self._inodes: dict[int, Inode] = {}
        self._trees: dict[int, Tree] = {}

    @property
    def read_only(self) -> bool:
        return True

    def inode(self, ino: int) -> Inode:
        """The inode record of ``ino`` (a free record if it was never used)."""
        got = self._inodes.get(ino)
        if got is not None:
            return got
        leaf = self.objtab.read_leaf(ino // self.per_leaf)
        if len(self._inodes) > INODE_CACHE:
            self._evict()
        if leaf is None:
            return Inode()
        base = ino - ino % self.per_leaf
        mv = memoryview(leaf)
        for j in range(self.per_leaf):
            n = base + j
            if n not in self._inodes:
                self._inodes[n] = Inode.decode(mv[j * INODE_SIZE : (j + 1) * INODE_SIZE])
        return self._inodes[ino]

    def _evict(self) -> None:
        self._inodes.clear()

    def tree(self, ino: int) -> Tree:
        t = self._trees.get(ino)
        if t is None:
            ind = self.inode(ino)
            t = Tree(self.src, ptr_of(ind.root), ind.height, f"{self.name} inode {ino}")
            self._trees[ino] = t
        return t

    def read(self, ino: int, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``, holes as zeros, short at end of object."""
        ind = self.inode(ino)
        n = max(0, min(ind.size, offset + size) - offset)
        buf = bytearray(n)
        got = self.readinto(ino, offset, memoryview(buf))
        return bytes(memoryview(buf)[:got])

    def readinto(self, ino: int, offset: int, buf: memoryview) -> int:
        """Read into ``buf`` at most ``len(buf)`` bytes at ``offset``; returns the count.

        Whole blocks go straight from the plex into ``buf``; only a partial
        first or last block passes through a one-block buffer.
        """
        ind = self.inode(ino)
        end = min(ind.size, offset + len(buf))
        if offset >= end:
            return 0
        bs = self.block_size
        tree = self.tree(ino)
        tree.read_ahead(offset // bs, -(-end // bs), -(-ind.size // bs))
        fa, fb, edges = split_blocks(offset, end, bs)
        if fa < fb:
            tree.read_leaves_into(fa, fb, buf[fa * bs - offset : fb * bs - offset])
        for lb in edges:
            lo, hi = max(offset, lb * bs), min(end, (lb + 1) * bs)
            tmp = bytearray(bs)
            tree.read_leaves_into(lb, lb + 1, memoryview(tmp))
            buf[lo - offset : hi - offset] = tmp[lo - lb * bs : hi - lb * bs]
        return end - offset

    def leaf(self, ino: int, i: int) -> bytes | bytearray | memoryview | None:
        return self.tree(ino).read_leaf(i)

    def tree_ptrs(self, ino: int) -> Iterable[tuple[int, PtrArray]]:
        return self.tree(ino).walk_ptrs()


class ObjectTable(ObjectView):
    """The active image: reads, and writes that become dirty leaves until the next CP."""

    def __init__(self, src: BlockSource, objtab_root: PtrArray, objtab_height: int,
                 next_ino: int, read_only: bool = False) -> None:
        super().__init__(src, objtab_root, objtab_height, next_ino)
        self._ro = read_only
        self._dirty_inodes: set[int] = set()
        self._freed: set[int] = set()
        self.dirty_leaves = 0

    @property
    def read_only(self) -> bool:
        return self._ro

    def _check(self) -> None:
        if self._ro:
            raise ReadOnly("writes are refused")

    def _evict(self) -> None:
        for ino in [i for i in self._inodes if i not in self._dirty_inodes]:
            del self._inodes[ino]

    # -- inodes -------------------------------------------------------------

    def set_inode(self, ino: int, inode: Inode) -> None:
        self._check()
        self._inodes[ino] = inode
        self._dirty_inodes.add(ino)

    def update(self, ino: int, **changes: int) -> Inode:
        new = self.inode(ino).replace(**changes)
        self.set_inode(ino, new)
        return new

    def new_ino(self) -> int:
        self._check()
        from ..ondisk._superblock import MAX_INODES

        if self.next_ino >= MAX_INODES:
            raise NoSpace(1, 0)
        ino = self.next_ino
        self.next_ino += 1
        return ino

    @property
    def dirty(self) -> bool:
        return bool(self._dirty_inodes) or any(t.is_dirty for t in self._trees.values())

    # -- data ---------------------------------------------------------------

    def write(self, ino: int, offset: int, data: bytes | bytearray | memoryview,
              **changes: int) -> int:
        """Write ``data`` at ``offset``; grows the object; returns bytes written.

        ``changes`` go into the inode with the new size (a file system's mtime
        and ctime): one new inode record per write, not two.
        """
        self._check()
        n = len(data)
        if n == 0:
            return 0
        bs = self.block_size
        tree = self.tree(ino)
        # Whole blocks of an immutable bytes object are kept as views of it, with no
        # copy; of anything else (a bytearray, a view the caller may reuse), copied one
        # by one into bytes. The views are GC-tracked objects, but a 1 GiB write through
        # the API (/var/tmp/s5/wprof.py, seven alternating pairs) still took 1.21-1.46 s
        # of CPU with them against 1.33-1.94 s copying.
        mv = memoryview(data).cast("B")
        end = offset + n
        before = len(tree.dirty)
        fa, fb, edges = split_blocks(offset, end, bs)
        base = fa * bs - offset
        dirty = tree.dirty
        if isinstance(data, bytes):
            for k, lb in enumerate(range(fa, fb)):
                dirty[lb] = mv[base + k * bs : base + (k + 1) * bs]
        else:
            for k, lb in enumerate(range(fa, fb)):
                dirty[lb] = bytes(mv[base + k * bs : base + (k + 1) * bs])
        for lb in edges:  # partial blocks: read, modify, keep as a bytearray
            lo, hi = max(offset, lb * bs), min(end, (lb + 1) * bs)
            cur = dirty.get(lb)
            if not isinstance(cur, bytearray):
                old = cur if lb in dirty else tree.read_leaf(lb)  # a dirty hole: None
                cur = bytearray(old) if old is not None else bytearray(bs)
                dirty[lb] = cur
            cur[lo - lb * bs : hi - lb * bs] = mv[lo - offset : hi - offset]
        self.dirty_leaves += len(dirty) - before
        ind = self.inode(ino)
        if offset + n > ind.size:
            changes["size"] = offset + n
        if changes:
            self.set_inode(ino, ind.replace(**changes))
        else:
            self._dirty_inodes.add(ino)
        return n

    def truncate(self, ino: int, size: int) -> None:
        """Set the object's size; bytes past it are dropped (and read as zeros if regrown)."""
        self._check()
        ind = self.inode(ino)
        bs = self.block_size
        tree = self.tree(ino)
        if size < ind.size:
            keep = -(-size // bs)
            for lb in tree.nonnull_leaves(keep, -(-ind.size // bs)).tolist():
                tree.dirty[lb] = None
            for lb in [k for k in tree.dirty if k >= keep]:
                tree.dirty[lb] = None
            if size % bs:
                lb = size // bs
                old = tree.dirty[lb] if lb in tree.dirty else tree.read_leaf(lb)
                if old is not None:
                    cur = bytearray(old)
                    cur[size % bs :] = bytes(bs - size % bs)
                    tree.dirty[lb] = cur
        self.set_inode(ino, ind.replace(size=size))

    def release(self, ino: int) -> None:
        """Free an object: drop all its blocks and clear its record.

        Every leaf goes, whatever ``size`` says: a directory's size counts entries, not
        bytes, and an empty one may still hold a bucket leaf until the next CP.
        """
        self._check()
        tree = self.tree(ino)
        for lb in tree.nonnull_leaves(0, tree.capacity()).tolist() + list(tree.dirty):
            tree.dirty[lb] = None
        ind = self.inode(ino)
        self.set_inode(ino, Inode(root=ind.root, height=ind.height))
        self._freed.add(ino)

    # -- the CP -------------------------------------------------------------

    def place_and_seal(self, space: Space, cp: int) -> tuple[list[int], list[Buffer]]:
        """Commit every dirty object, then the object table itself; return the writes."""
        small = [(ino, t) for ino, t in self._trees.items() if t.small_placeable]
        blks, datas = Tree.place_and_seal_small([t for _, t in small], space, cp)
        rest = [(ino, t) for ino, t in self._trees.items() if t.is_dirty]
        for ino, tree in small + rest:
            if tree.is_dirty:
                tree.place(space, cp)
                b, d = tree.seal()
                blks += b
                datas += d
            ind = self.inode(ino)
            self.set_inode(ino, ind.replace(root=ptr_bytes(tree.root), height=tree.height,
                                            blocks=max(0, ind.blocks + tree.leaf_delta)))
            tree.leaf_delta = 0
        by_leaf: dict[int, list[int]] = {}
        for ino in self._dirty_inodes:
            by_leaf.setdefault(ino // self.per_leaf, []).append(ino)
        for leaf_no, inos in sorted(by_leaf.items()):
            old = self.objtab.read_leaf(leaf_no)
            buf = bytearray(old) if old is not None else bytearray(self.block_size)
            for ino in inos:
                j = (ino % self.per_leaf) * INODE_SIZE
                buf[j : j + INODE_SIZE] = self._inodes[ino].encode()
            self.objtab.write_leaf(leaf_no, None if not any(buf) else bytes(buf))
        self.objtab.place(space, cp)
        b, d = self.objtab.seal()
        blks += b
        datas += d
        self._dirty_inodes.clear()
        self.dirty_leaves = 0
        for ino in self._freed:
            self._trees.pop(ino, None)
        self._freed.clear()
        if len(self._trees) > 4096:
            self._trees = {k: t for k, t in self._trees.items() if t.is_dirty}
        return blks, datas

