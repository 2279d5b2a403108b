"""Block pointers and block checksums: the edges of the Merkle tree.

Owns the pointer layout and the checksum function. Keeps: a pointer names a
block and the xxh3-128 of its exact bytes, so every block reached from a
valid superblock is verified on read.

Layout of one pointer (32 bytes, little-endian), drawn like OpenZFS's blkptr::

    offset size field
    0      8    blk    block number on every plex (0 = hole: reads as zeros)
    8      8    birth  CP value in which the block was written
    16     16   ck     xxh3-128 digest of the block, canonical byte order

Block 0 holds superblock slot 0 and is never a data block, so ``blk == 0``
can mean "no block" without a flag.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
import xxhash

PTR_SIZE = 32
PTR_DTYPE = np.dtype([("blk", "<u8"), ("birth", "<u8"), ("ck", "<u8", (2,))])
assert PTR_DTYPE.itemsize == PTR_SIZE

PtrArray = npt.NDArray[np.void]


def checksum(block: bytes | bytearray | memoryview) -> bytes:
    """The 16-byte checksum a pointer stores for ``block``."""
    return xxhash.xxh3_128_digest(block)


def checksums(blocks: Iterable[bytes | bytearray | memoryview]) -> npt.NDArray[np.uint64]:
    """Checksums of many blocks as an (n, 2) uint64 array, ready for ``ptrs["ck"]``.

    One digest call per block is unavoidable; everything around it is one join
    and one frombuffer, so no Python object outlives the call.
    """
    joined = b"".join([xxhash.xxh3_128_digest(b) for b in blocks])
    return np.frombuffer(joined, dtype="<u8").reshape(-1, 2)


_SLICES: dict[int, list[slice]] = {}  # per block size: the slice of each block of a run


def digests_of_run(buf: bytes | bytearray | memoryview, block_size: int) -> bytes:
    """The 16-byte checksums of the consecutive blocks of one buffer, joined.

    The hot read path's check: one bytes compare with the pointers' ``ck``
    when all is well. Slices of a run come from a list made once per block
    size, which spares a read of 1 MiB a quarter of its hashing time.
    """
    mv = memoryview(buf)
    n = len(mv) // block_size
    sl = _SLICES.get(block_size)
    if sl is None or len(sl) < n:
        sl = _SLICES[block_size] = [slice(i * block_size, (i + 1) * block_size)
                                    for i in range(max(n, 1024))]
    digest = xxhash.xxh3_128_digest
    return b"".join([digest(mv[s]) for s in sl[:n]])


def null_ptrs(n: int) -> PtrArray:
    """``n`` hole pointers."""
    return np.zeros(n, dtype=PTR_DTYPE)


def ptrs_from_bytes(data: bytes | bytearray | memoryview) -> PtrArray:
    """Decode a pointer block (a writable copy, so CoW edits never touch a cached block)."""
    return np.frombuffer(bytes(data), dtype=PTR_DTYPE).copy()


def ptr_words(ptrs: PtrArray) -> npt.NDArray[np.uint64]:
    """Pointers as an (n, 4) uint64 view, for whole-pointer comparisons."""
    return np.ascontiguousarray(ptrs).view("<u8").reshape(-1, 4)


def ptr_equal(a: PtrArray, b: PtrArray) -> npt.NDArray[np.bool_]:
    """Element-wise equality of two pointer arrays (block, birth and checksum)."""
    out: npt.NDArray[np.bool_] = np.all(ptr_words(a) == ptr_words(b), axis=1)
    return out


def ck_of(ptr: np.void) -> bytes:
    """The checksum bytes held by one pointer."""
    return bytes(np.asarray(ptr["ck"], dtype="<u8").tobytes())


def verify(blocks: Sequence[bytes | bytearray | memoryview],
           ptrs: PtrArray) -> npt.NDArray[np.bool_]:
    """Which of ``blocks`` match the checksums of ``ptrs`` (same order)."""
    got = checksums(blocks)
    want = np.asarray(ptrs["ck"]).reshape(-1, 2)
    out: npt.NDArray[np.bool_] = np.all(got == want, axis=1)
    return out
