"""Differences between two images of the file system: which blocks and which files changed.

Owns nothing; reads only. Keeps: two objects whose tree root pointers are
equal hold identical bytes (the pointer carries the checksum of the whole
tree), so equal roots are never read further.
"""

from __future__ import annotations

import dataclasses
import stat
from collections.abc import Iterator

import numpy as np

from ..ondisk import ROOT_INO, decode_bucket
from . import _planes as planes
from ._objects import ObjectView


@dataclasses.dataclass(frozen=True)
class FileState:
    ino: int
    mode: int
    size: int
    root: bytes
    mtime_ns: int


@dataclasses.dataclass
class Diff:
    """What changed from ``old`` to ``new``: paths and block counts."""

    old: str
    new: str
    added: list[str] = dataclasses.field(default_factory=list)
    removed: list[str] = dataclasses.field(default_factory=list)
    modified: list[str] = dataclasses.field(default_factory=list)
    blocks_new: int = 0  # blocks the new image holds that the old one does not
    blocks_freed: int = 0  # blocks the old image holds that the new one does not
    block_size: int = 4096

    def as_dict(self) -> dict[str, object]:
        return {"old": self.old, "new": self.new, "added": self.added,
                "removed": self.removed, "modified": self.modified,
                "changed_blocks": self.blocks_new, "changed_bytes": self.blocks_new *
                self.block_size, "freed_blocks": self.blocks_freed}


def walk(view: ObjectView) -> Iterator[tuple[str, FileState]]:
    """Every path of an image with the state that decides whether it changed."""
    stack = [("/", ROOT_INO)]
    while stack:
        path, ino = stack.pop()
        ind = view.inode(ino)
        yield path, FileState(ino, ind.mode, ind.size, ind.root, ind.mtime_ns)
        if not stat.S_ISDIR(ind.mode):
            continue
        tree = view.tree(ino)
        for i in tree.nonnull_leaves(0, 1 << ind.dir_depth).tolist():
            leaf = tree.read_leaf(i)
            if leaf is None:
                continue
            for _h, child, _t, name in decode_bucket(leaf):
                stack.append((path.rstrip("/") + "/" + name.decode(errors="replace"), child))


def diff_images(old: ObjectView, new: ObjectView, old_plane: np.ndarray,
                new_plane: np.ndarray, old_name: str, new_name: str) -> Diff:
    d = Diff(old_name, new_name, block_size=old.block_size)
    before = dict(walk(old))
    after = dict(walk(new))
    for path, st in after.items():
        prev = before.get(path)
        if prev is None:
            d.added.append(path)
        elif (prev.root != st.root or prev.size != st.size or prev.mode != st.mode) and (
                not stat.S_ISDIR(st.mode) or prev.mode != st.mode):
            d.modified.append(path)
    d.removed = sorted(p for p in before if p not in after)
    d.added.sort()
    d.modified.sort()
    d.blocks_new = planes.count(new_plane & ~old_plane)
    d.blocks_freed = planes.count(old_plane & ~new_plane)
    return d
