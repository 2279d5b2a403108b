"""Directories: hashed buckets of entries, one bucket per leaf of the directory's tree.

Owns the decoded buckets of one directory. Keeps: every entry lives in the
bucket its hash's top bits name (``ondisk.bucket_of``), so a lookup reads
one leaf and a directory of 100,000 entries needs no linear scan; a bucket
that overflows doubles the directory, which moves every entry once
(amortized O(1) per insert).
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator

from ..errors import FsError
from ..ondisk import (
    Entry,
    bucket_capacity,
    bucket_of,
    decode_bucket,
    encode_bucket,
    entry_size,
    name_hash,
)
from ..store import ObjectTable, ObjectView

MAX_DEPTH = 40


Bucket = dict[bytes, tuple[int, int, int]]  # name -> (hash, inode, DT type)


class Directory:
    """The entries of one directory object in one image.

    Buckets are decoded on first use and kept as dicts (O(1) lookups); a
    change marks its bucket dirty and ``flush`` encodes dirty buckets into
    the directory's tree once per CP, not once per change.
    """

    def __init__(self, view: ObjectView, ino: int) -> None:
        self.view = view
        self.ino = ino
        self._buckets: dict[int, Bucket] = {}
        self._used: dict[int, int] = {}
        self.dirty: set[int] = set()
        self.on_dirty: Callable[[int, Directory], None] | None = None  # told once per change

    def _changed(self, b: int) -> None:
        self.dirty.add(b)
        if self.on_dirty is not None:
            self.on_dirty(self.ino, self)

    @property
    def depth(self) -> int:
        return self.view.inode(self.ino).dir_depth

    def _bucket(self, b: int) -> Bucket:
        got = self._buckets.get(b)
        if got is None:
            leaf = self.view.leaf(self.ino, b)
            entries = decode_bucket(leaf) if leaf is not None else []
            got = {name: (h, ino, typ) for h, ino, typ, name in entries}
            self._buckets[b] = got
            self._used[b] = sum(entry_size(name) for name in got)
        return got

    def lookup(self, name: bytes) -> tuple[int, int] | None:
        """(inode, type) of ``name``, or None."""
        got = self._bucket(bucket_of(name_hash(name), self.depth)).get(name)
        return (got[1], got[2]) if got is not None else None

    def entries(self, after: int = 0) -> Iterator[Entry]:
        """Entries in hash order, starting after cookie ``after`` (a hash)."""
        depth = self.depth
        first = bucket_of(after, depth) if after else 0
        for b in range(first, 1 << depth):
            bucket = self._bucket(b)
            for h, ino, typ, name in sorted((h, i, t, n) for n, (h, i, t) in bucket.items()):
                if h > after:
                    yield h, ino, typ, name

    def is_empty(self) -> bool:
        return self.view.inode(self.ino).size == 0

    # -- changes (active image only) ----------------------------------------

    def _table(self) -> ObjectTable:
        assert isinstance(self.view, ObjectTable)
        return self.view

    def flush(self) -> None:
        """Encode the dirty buckets into the directory's tree (before a CP)."""
        if not self.dirty:
            return
        bs = self.view.block_size
        tree = self._table().tree(self.ino)
        for b in sorted(self.dirty):
            bucket = self._buckets[b]
            entries = [(h, ino, typ, name) for name, (h, ino, typ) in bucket.items()]
            tree.write_leaf(b, encode_bucket(entries, bs) if entries else None)
        self.dirty.clear()

    def _resize(self, delta: int) -> None:
        table = self._table()
        ind = table.inode(self.ino)
        table.set_inode(self.ino, ind.replace(size=max(0, ind.size + delta)))

    def add(self, name: bytes, ino: int, typ: int) -> None:
        h = name_hash(name)
        cap = bucket_capacity(self.view.block_size)
        size = entry_size(name)
        while True:
            b = bucket_of(h, self.depth)
            bucket = self._bucket(b)
            if self._used[b] + size <= cap:
                bucket[name] = (h, ino, typ)
                self._used[b] += size
                self._changed(b)
                break
            self._double()
        self._resize(+1)

    def remove(self, name: bytes) -> tuple[int, int]:
        b = bucket_of(name_hash(name), self.depth)
        bucket = self._bucket(b)
        got = bucket.pop(name, None)
        if got is None:
            raise FsError(errno.ENOENT, name.decode(errors="replace"))
        self._used[b] -= entry_size(name)
        self._changed(b)
        self._resize(-1)
        return got[1], got[2]

    def replace(self, name: bytes, ino: int, typ: int) -> None:
        """Point an existing entry at another inode (rename over an existing name)."""
        b = bucket_of(name_hash(name), self.depth)
        bucket = self._bucket(b)
        got = bucket.get(name)
        if got is None:
            raise FsError(errno.ENOENT, name.decode(errors="replace"))
        bucket[name] = (got[0], ino, typ)
        self._changed(b)

    def _double(self) -> None:
        depth = self.depth
        if depth >= MAX_DEPTH:
            raise FsError(errno.ENOSPC, "", "directory hash buckets exhausted")
        old = [self._bucket(b) for b in range(1 << depth)]
        new_depth = depth + 1
        self._buckets = {b: {} for b in range(1 << new_depth)}
        self._used = dict.fromkeys(range(1 << new_depth), 0)
        for bucket in old:
            for name, (h, ino, typ) in bucket.items():
                b = bucket_of(h, new_depth)
                self._buckets[b][name] = (h, ino, typ)
                self._used[b] += entry_size(name)
        table = self._table()
        table.set_inode(self.ino, table.inode(self.ino).replace(dir_depth=new_depth))
        self.dirty.update(range(1 << new_depth))
        self._changed(0)
