"""Verified block reads for trees, with a cache of decoded nodes.

Owns the node cache and the pending blocks. Keeps: a cached node is the
exact, verified content of a committed block; since committed blocks are
never rewritten while referenced, the cache needs no invalidation on write,
only eviction. Pending blocks are those of the CP in flight (``Store``):
placed, in the trees, maybe not yet on any plex, so reads of them are served
from the bytes the CP writes, until it lands.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import numpy as np
import numpy.typing as npt

from ..errors import CorruptBlock
from ..mirror import MirrorSet
from ..ondisk import PTR_DTYPE, PtrArray
from ..plex import Buffer

NODE_CACHE_NODES = 65536  # most decoded nodes kept (256 MiB at 4 KiB blocks)


class MirrorSource:
    """Reads tree blocks through the mirror and remembers decoded nodes."""

    def __init__(self, mirror: MirrorSet, cache_nodes: int = NODE_CACHE_NODES) -> None:
        self.mirror = mirror
        self.block_size = mirror.block_size
        self._cache: OrderedDict[bytes, PtrArray] = OrderedDict()
        self._limit = cache_nodes
        # pending blocks (sorted) and their bytes, in one attribute: swapped whole
        self._pending_set: tuple[npt.NDArray[np.uint64], list[Buffer]] = (
            np.zeros(0, dtype=np.uint64), [])

    def set_pending(self, blks: npt.NDArray[np.uint64], datas: list[Buffer]) -> None:
        """The CP in flight writes ``datas[i]`` to ``blks[i]`` (sorted): read them from here."""
        self._pending_set = (blks, datas)

    def clear_pending(self) -> None:
        self._pending_set = (np.zeros(0, dtype=np.uint64), [])

    def _pending(self, ptrs: PtrArray
                 ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], list[Buffer]]:
        """(indices into ptrs, indices into the pending bytes, those bytes) of pending blocks."""
        pb, pdata = self._pending_set
        if len(pb) == 0 or len(ptrs) == 0:
            empty = np.zeros(0, dtype=np.intp)
            return empty, empty, pdata
        blks = np.asarray(ptrs["blk"], dtype=np.uint64)
        at = np.minimum(np.searchsorted(pb, blks), len(pb) - 1)
        hit = np.flatnonzero(pb[at] == blks)
        return hit, at[hit], pdata

    def read_nodes(self, ptrs: PtrArray, what: str, ahead: PtrArray | None = None
                   ) -> list[PtrArray]:
        """Decoded nodes, from the cache or the plexes; on a miss, ``ahead`` is read too.

        ``ahead`` (siblings placed next to the wanted nodes) is read in the same
        batch, so a sequential walk pays one read per batch of nodes, and a
        walk that hits the cache pays nothing for read-ahead. A bad block among
        ``ahead`` is left for whoever needs it to meet.
        """
        size = PTR_DTYPE.itemsize
        raw = np.ascontiguousarray(ptrs).tobytes()
        keys = [raw[i * size : (i + 1) * size] for i in range(len(ptrs))]
        out = self._lookup(keys)
        missing = [i for i, node in enumerate(out) if node is None]
        if missing and ahead is not None and len(ahead):
            with contextlib.suppress(CorruptBlock):
                self.read_nodes(ahead, what)
            out = self._lookup(keys)
            missing = [i for i, node in enumerate(out) if node is None]
        if missing:
            datas = self.read_leaves(ptrs[missing], what)
            for i, data in zip(missing, datas, strict=True):
                node = np.frombuffer(data, dtype=PTR_DTYPE).copy()  # not a view of the run
                node.flags.writeable = False
                out[i] = node
                self._remember(keys[i], node)
        return [n for n in out if n is not None]

    def _lookup(self, keys: list[bytes]) -> list[PtrArray | None]:
        """Cached nodes by key (None where missing); hits become the most recent."""
        cache = self._cache
        out = [cache.get(k) for k in keys]
        for k, node in zip(keys, out, strict=True):
            if node is not None:
                with contextlib.suppress(KeyError):  # evicted meanwhile by another thread
                    cache.move_to_end(k)
        return out

    def read_leaves(self, ptrs: PtrArray, what: str) -> list[bytes | memoryview]:
        hit, at, pdata = self._pending(ptrs)
        if len(hit) == 0:
            return self.mirror.read_verified(ptrs, what)
        out: list[bytes | memoryview] = [b""] * len(ptrs)
        for i, j in zip(hit.tolist(), at.tolist(), strict=True):
            out[i] = memoryview(pdata[j])
        rest = np.setdiff1d(np.arange(len(ptrs)), hit)
        if len(rest):
            for i, d in zip(rest.tolist(), self.mirror.read_verified(ptrs[rest], what),
                            strict=True):
                out[i] = d
        return out

    def read_leaves_into(self, ptrs: PtrArray, out: memoryview, pos: npt.NDArray[np.int64],
                         what: str, stream: int | None = None) -> None:
        hit, at, pdata = self._pending(ptrs)
        if len(hit) == 0:
            self.mirror.read_into(ptrs, out, pos, what, stream)
            return
        bs = self.block_size
        for i, j in zip(hit.tolist(), at.tolist(), strict=True):
            p = int(pos[i])
            out[p * bs : (p + 1) * bs] = pdata[j]
        rest = np.setdiff1d(np.arange(len(ptrs)), hit)
        if len(rest):
            self.mirror.read_into(ptrs[rest], out, pos[rest], what, stream)

    @property
    def reads_ahead(self) -> bool:
        return self.mirror.reads_ahead

    def prefetch(self, ptrs: PtrArray) -> None:
        """Have the mirror read these blocks ahead, except those of the CP in flight."""
        hit, _, _ = self._pending(ptrs)
        blks = np.asarray(ptrs["blk"], dtype=np.uint64)
        if len(hit):
            blks = np.delete(blks, hit)
        self.mirror.prefetch(np.unique(blks))

    def cache_node(self, ptr: bytes, node: PtrArray) -> None:
        """Remember a node just written, under the pointer its parent holds."""
        frozen = node.copy()
        frozen.flags.writeable = False
        self._remember(ptr, frozen)

    def _remember(self, key: bytes, node: PtrArray) -> None:
        self._cache[key] = node
        if len(self._cache) > self._limit:
            with contextlib.suppress(KeyError):  # emptied meanwhile by another thread
                self._cache.popitem(last=False)

    def clear(self) -> None:
        self._cache.clear()
