"""Allocator: where the next CP's blocks go.

Owns the active plane being built, the committed plane and the union of the
snapshot planes. Keeps: a block is handed out only if no plane holds it, the
last committed CP does not hold it, and it was not freed in the CP being
built (freed blocks stay in ``committed`` until the CP commits), so a crash
at any moment finds every block of CP n intact.

Holds. ``hold`` keeps a plane's blocks from reuse while something reads
them without the store lock (an online scrub walks the last CP and repairs
its blocks in place): freed meanwhile, they stay held until ``release``.

Next fit. Free blocks are taken from a window ahead of a cursor, in
ascending order, so the blocks of one CP land in long runs and their writes
coalesce. The window's free list stays valid for a whole CP: nothing becomes
free before the CP commits, and what this CP allocates is cut from it.
"""

from __future__ import annotations

import numpy as np

from ..errors import NoSpace
from . import _planes as planes
from ._planes import Blocks, Words

MIN_WINDOW_WORDS = 1 << 10  # fewest words scanned per refill step (64 Ki blocks)


class Allocator:
    """Free-space accounting over bit planes for one volume."""

    def __init__(self, active: Words, snap_union: Words, nblocks: int,
                 reserved: Blocks) -> None:
        self.active = active
        self.committed = active.copy()
        self.snap_union = snap_union
        self.nblocks = nblocks
        self.reserved = reserved
        self._cursor = 0  # in words
        self._free: Blocks = np.zeros(0, dtype=np.uint64)
        self._scanned = 0
        self._held_cache: int | None = None
        self.holds: list[Words] = []  # planes kept from reuse for a while (an online scrub)

    def begin_cp(self) -> None:
        """Forget the free list: blocks freed by the last CP are free now.

        The cursor goes back to the first free block the last window did not
        hand out: a window is scanned at twice the demand, and leaving the
        cursor at its end skipped the other half, so consecutive CPs left a
        hole as large as themselves between them (a 1 GiB file lay in runs of
        130 MiB every 256 MiB of the image, and the kernel's read-ahead of
        the image read into the holes).
        """
        if len(self._free):
            self._cursor = int(self._free[0]) // 64
        self._free = np.zeros(0, dtype=np.uint64)
        self._scanned = 0
        self._held_cache = None

    def commit(self, plane: Words) -> None:
        """A CP committed with ``plane``: the blocks the next CP must not overwrite.

        ``plane`` is the active plane as the CP was placed, not ``active`` now:
        blocks freed since (while the CP was in flight) are still the CP's.
        """
        np.copyto(self.committed, plane)
        self.begin_cp()

    def held(self) -> Words:
        """Blocks no allocation may take."""
        out = self.active | self.committed | self.snap_union
        for h in self.holds:
            out |= h
        return out

    def hold(self, plane: Words) -> None:
        """Keep the blocks of ``plane`` from reuse until ``release``."""
        self.holds.append(plane)
        self._held_cache = None

    def release(self, plane: Words) -> None:
        self.holds = [h for h in self.holds if h is not plane]
        self._held_cache = None

    def free_blocks(self) -> int:
        if self._held_cache is None:
            self._held_cache = planes.count(self.held())
        return max(0, self.nblocks - self._held_cache)

    def _refill(self, want: int) -> None:
        """Scan ahead of the cursor, in steps sized to the demand, until ``want`` are free.

        The cost follows the blocks asked for, not the volume: a small CP
        scans a small window, however large and empty the volume is.
        """
        nwords = len(self.active)
        got = [self._free]
        have = len(self._free)
        while have < want and self._scanned < nwords:
            w0 = self._cursor
            step = max(MIN_WINDOW_WORDS, 2 * -(-(want - have) // 64))
            w1 = min(nwords, w0 + step)
            held = self.active[w0:w1] | self.committed[w0:w1] | self.snap_union[w0:w1]
            for h in self.holds:
                held |= h[w0:w1]
            free_words = ~held
            blks = planes.to_blocks(free_words, 0, None) + np.uint64(w0 * 64)
            blks = blks[blks < np.uint64(self.nblocks)]
            got.append(blks)
            have += len(blks)
            self._scanned += w1 - w0
            self._cursor = 0 if w1 >= nwords else w1
        self._free = np.concatenate(got) if len(got) > 1 else got[0]

    def allocate(self, n: int) -> Blocks:
        """``n`` free blocks, ascending within each window; raises NoSpace."""
        if n == 0:
            return np.zeros(0, dtype=np.uint64)
        if len(self._free) < n:
            self._refill(n)
        if len(self._free) < n:
            raise NoSpace(n, len(self._free))
        out, self._free = self._free[:n], self._free[n:]
        planes.set_bits(self.active, out)
        if self._held_cache is not None:
            self._held_cache += n
        return out

    def allocate_pinned(self, n: int) -> Blocks:
        """``n`` free blocks that belong to a snapshot being built, not to the active image."""
        out = self.allocate(n)
        planes.clear_bits(self.active, out)
        planes.set_bits(self.snap_union, out)
        return out

    def free(self, blks: Blocks) -> None:
        """Drop blocks from the active plane; they become reusable after the CP commits."""
        if len(blks):
            planes.clear_bits(self.active, blks)
            self._held_cache = None
