"""Verified block reads for trees, with a cache of decoded nodes.

Owns the node cache. Keeps: a cached node is the exact, verified content of
a committed block; since committed blocks are never rewritten while
referenced, the cache needs no invalidation on write, only eviction.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import numpy.typing as npt

from ..mirror import MirrorSet
from ..ondisk import PTR_DTYPE, PtrArray

NODE_CACHE_NODES = 65536  # most decoded nodes kept (256 MiB at 4 KiB blocks)


class MirrorSource:
    """Reads tree blocks through the mirror and remembers decoded nodes."""

    def __init__(self, mirror: MirrorSet, cache_nodes: int = NODE_CACHE_NODES) -> None:
        self.mirror = mirror
        self.block_size = mirror.block_size
        self._cache: OrderedDict[bytes, PtrArray] = OrderedDict()
        self._limit = cache_nodes

    @staticmethod
    def _key(ptr: np.void) -> bytes:
        return ptr.tobytes()  # block, birth and checksum: a rewritten block never matches

    def read_nodes(self, ptrs: PtrArray, what: str) -> list[PtrArray]:
        out: list[PtrArray | None] = []
        missing: list[int] = []
        for i in range(len(ptrs)):
            node = self._cache.get(self._key(ptrs[i]))
            if node is None:
                missing.append(i)
            else:
                self._cache.move_to_end(self._key(ptrs[i]))
            out.append(node)
        if missing:
            datas = self.mirror.read_verified(ptrs[missing], what)
            for i, data in zip(missing, datas, strict=True):
                node = np.frombuffer(data, dtype=PTR_DTYPE).copy()  # not a view of the run
                node.flags.writeable = False
                out[i] = node
                self._remember(self._key(ptrs[i]), node)
        return [n for n in out if n is not None]

    def read_leaves(self, ptrs: PtrArray, what: str) -> list[bytes | memoryview]:
        return self.mirror.read_verified(ptrs, what)

    def read_leaves_into(self, ptrs: PtrArray, out: memoryview, pos: npt.NDArray[np.int64],
                         what: str) -> None:
        self.mirror.read_into(ptrs, out, pos, what)

    def cache_node(self, ptr: bytes, node: PtrArray) -> None:
        """Remember a node just written, under the pointer its parent holds."""
        frozen = node.copy()
        frozen.flags.writeable = False
        self._remember(ptr, frozen)

    def _remember(self, key: bytes, node: PtrArray) -> None:
        self._cache[key] = node
        if len(self._cache) > self._limit:
            self._cache.popitem(last=False)

    def clear(self) -> None:
        self._cache.clear()
