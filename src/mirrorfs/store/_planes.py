"""Bit planes: one bit per block, held as uint64 words.

Owns the bit-level helpers. Keeps: bit ``b`` of a plane is bit ``b % 64``
of word ``b // 64``, little-endian, on disk and in memory alike, so a plane
leaf block is just ``words[i*W:(i+1)*W].tobytes()``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Words = npt.NDArray[np.uint64]
Blocks = npt.NDArray[np.uint64]
ONE = np.uint64(1)


def new_plane(nblocks: int, leaf_words: int) -> Words:
    """An all-zero plane for ``nblocks`` blocks, padded to whole leaf blocks."""
    words = -(-nblocks // 64)
    words = -(-words // leaf_words) * leaf_words
    return np.zeros(words, dtype=np.uint64)


def set_bits(plane: Words, blks: Blocks) -> None:
    if len(blks):
        b = np.asarray(blks, dtype=np.uint64)
        np.bitwise_or.at(plane, (b >> np.uint64(6)).astype(np.intp), ONE << (b & np.uint64(63)))


def clear_bits(plane: Words, blks: Blocks) -> None:
    if len(blks):
        b = np.asarray(blks, dtype=np.uint64)
        np.bitwise_and.at(plane, (b >> np.uint64(6)).astype(np.intp), ~(ONE << (b & np.uint64(63))))


def set_range(plane: Words, start: int, end: int) -> None:
    """Set bits [start, end)."""
    set_bits(plane, np.arange(start, end, dtype=np.uint64))


def test_bits(plane: Words, blks: Blocks) -> npt.NDArray[np.bool_]:
    b = np.asarray(blks, dtype=np.uint64)
    w = plane[(b >> np.uint64(6)).astype(np.intp)]
    return ((w >> (b & np.uint64(63))) & ONE).astype(bool)


def to_blocks(plane: Words, start_word: int = 0, end_word: int | None = None) -> Blocks:
    """Block numbers of the set bits in words [start_word, end_word), ascending."""
    seg = plane[start_word:end_word]
    nz = np.flatnonzero(seg)
    if len(nz) == 0:
        return np.zeros(0, dtype=np.uint64)
    bits = np.unpackbits(seg[nz].view(np.uint8), bitorder="little").reshape(len(nz), 64)
    rows, cols = np.nonzero(bits)
    return ((nz[rows].astype(np.uint64) + np.uint64(start_word)) << np.uint64(6)) + cols.astype(
        np.uint64)


def count(plane: Words) -> int:
    return int(np.bitwise_count(plane).sum())


def extents(plane: Words) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Runs of set bits as (starts, lengths), looping over extents, never blocks."""
    blks = to_blocks(plane).astype(np.int64)
    if len(blks) == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e
    breaks = np.flatnonzero(np.diff(blks) != 1) + 1
    starts_i = np.concatenate(([0], breaks))
    ends_i = np.concatenate((breaks, [len(blks)]))
    return blks[starts_i], ends_i - starts_i
