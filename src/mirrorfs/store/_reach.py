"""Reachability: which blocks an image of the file system uses, found by walking its trees.

Owns nothing; pure walks. Keeps: the walk visits each block pointer once per
image, reads tree nodes but never data leaves, and reports the blocks as an
array, so the cost follows the metadata, not the data.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from ..ondisk import INODE_SIZE, Inode, PtrArray
from ._objects import ObjectView, ptr_of
from ._tree import Tree

U64 = npt.NDArray[np.uint64]


def tree_blocks(tree: Tree) -> U64:
    """Every block of a tree: nodes and leaves."""
    parts = [np.asarray(p["blk"], dtype=np.uint64) for _, p in tree.walk_ptrs()]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def inodes(view: ObjectView) -> Iterator[tuple[int, Inode]]:
    """Every used inode of an image, in inode order (reads the object table's leaves)."""
    tab = view.objtab
    nleaves = -(-view.next_ino // view.per_leaf)
    step = 256
    for a in range(0, nleaves, step):
        b = min(nleaves, a + step)
        for i, leaf in enumerate(tab.read_leaves(a, b)):
            if leaf is None:
                continue
            mv = memoryview(leaf)
            for j in range(view.per_leaf):
                rec = mv[j * INODE_SIZE : (j + 1) * INODE_SIZE]
                if not any(rec[:4]):
                    continue
                yield (a + i) * view.per_leaf + j, Inode.decode(rec)


def image_blocks(view: ObjectView) -> U64:
    """Every block reachable from an image's object table: its tree and every object's tree."""
    parts = [tree_blocks(view.objtab)]
    for ino, ind in inodes(view):
        if int.from_bytes(ind.root[:8], "little"):
            parts.append(tree_blocks(Tree(view.src, ptr_of(ind.root), ind.height,
                                          f"{view.name} inode {ino}")))
    return np.concatenate(parts)


def leaf_ptrs_of(tree: Tree) -> PtrArray:
    """The leaf-level pointers of a tree (non-null)."""
    for level, ptrs in tree.walk_ptrs():
        if level == 0:
            return ptrs
    return np.zeros(0, dtype=tree.root.dtype)
