"""Directories: hashed buckets of entries, one bucket per leaf of the directory's tree.

Owns the decoded buckets of one directory. Keeps: every entry lives in the
bucket its hash's top bits name (``ondisk.bucket_of``), so a lookup reads
one leaf and a directory of 100,000 entries needs no linear scan; a bucket
that overflows doubles the directory, which moves every entry once
(amortized O(1) per insert).
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Iterator

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


class Directory:
    """The entries of one directory object in one image."""

    def __init__(self, view: ObjectView, ino: int) -> None:
        self.view = view
        self.ino = ino
        self._buckets: dict[int, list[Entry]] = {}

    @property
    def depth(self) -> int:
        return self.view.inode(self.ino).dir_depth

    def _bucket(self, b: int) -> list[Entry]:
        got = self._buckets.get(b)
        if got is None:
            leaf = self.view.leaf(self.ino, b)
            got = decode_bucket(leaf) if leaf is not None else []
            self._buckets[b] = got
        return got

    def lookup(self, name: bytes) -> tuple[int, int] | None:
        """(inode, type) of ``name``, or None."""
        h = name_hash(name)
        for eh, ino, typ, n in self._bucket(bucket_of(h, self.depth)):
            if eh == h and n == name:
                return ino, typ
        return None

    def entries(self, after: int = 0) -> Iterator[Entry]:
        """Entries in hash order, starting after cookie ``after`` (a hash)."""
        depth = self.depth
        first = bucket_of(after, depth) if after else 0
        for b in range(first, 1 << depth):
            for e in self._bucket(b):
                if e[0] > after:
                    yield e

    def is_empty(self) -> bool:
        return self.view.inode(self.ino).size == 0

    # -- changes (active image only) ----------------------------------------

    def _table(self) -> ObjectTable:
        assert isinstance(self.view, ObjectTable)
        return self.view

    def _store_bucket(self, b: int) -> None:
        entries = self._buckets[b]
        bs = self.view.block_size
        self._table().tree(self.ino).write_leaf(b, encode_bucket(entries, bs) if entries else None)

    def add(self, name: bytes, ino: int, typ: int) -> None:
        h = name_hash(name)
        cap = bucket_capacity(self.view.block_size)
        while True:
            depth = self.depth
            b = bucket_of(h, depth)
            bucket = self._bucket(b)
            used = sum(entry_size(e[3]) for e in bucket)
            if used + entry_size(name) <= cap:
                bucket.append((h, ino, typ, name))
                bucket.sort()
                self._store_bucket(b)
                break
            self._double()
        table = self._table()
        ind = table.inode(self.ino)
        table.set_inode(self.ino, dataclasses.replace(ind, size=ind.size + 1))

    def remove(self, name: bytes) -> tuple[int, int]:
        h = name_hash(name)
        b = bucket_of(h, self.depth)
        bucket = self._bucket(b)
        for i, (eh, ino, typ, n) in enumerate(bucket):
            if eh == h and n == name:
                del bucket[i]
                self._store_bucket(b)
                table = self._table()
                ind = table.inode(self.ino)
                table.set_inode(self.ino, dataclasses.replace(ind, size=max(0, ind.size - 1)))
                return ino, typ
        raise FsError(errno.ENOENT, name.decode(errors="replace"))

    def replace(self, name: bytes, ino: int, typ: int) -> None:
        """Point an existing entry at another inode (rename over an existing name)."""
        h = name_hash(name)
        b = bucket_of(h, self.depth)
        bucket = self._bucket(b)
        for i, (eh, _, _, n) in enumerate(bucket):
            if eh == h and n == name:
                bucket[i] = (h, ino, typ, name)
                self._store_bucket(b)
                return
        raise FsError(errno.ENOENT, name.decode(errors="replace"))

    def _double(self) -> None:
        depth = self.depth
        if depth >= MAX_DEPTH:
            raise FsError(errno.ENOSPC, "", "directory hash buckets exhausted")
        everything = [e for b in range(1 << depth) for e in self._bucket(b)]
        new_depth = depth + 1
        self._buckets = {b: [] for b in range(1 << new_depth)}
        for e in everything:
            self._buckets[bucket_of(e[0], new_depth)].append(e)
        table = self._table()
        table.set_inode(self.ino, dataclasses.replace(table.inode(self.ino), dir_depth=new_depth))
        for b in range(1 << new_depth):
            self._buckets[b].sort()
            self._store_bucket(b)
