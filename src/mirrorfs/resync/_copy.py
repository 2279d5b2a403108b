"""Copy and commit: bring stale plexes in sync by copying their plans, resumably.

Owns the resync of a set of targets against an open volume. Keeps: a target
is never taken as a source before it is complete (its slots carry a resync
record from before the first copied byte until its final superblock), a
killed resync resumes from its cursor, and a copy never puts older bytes
over newer ones.

Order for each target T (DESIGN.md, "Copy and commit"):

1. T becomes a resync target: a CP writes T a slot with the resync record
   (source, base, target CP, cursor 0), then every other slot of T is
   invalidated and T flushed. Before this, T is untouched; after it, T opens
   only as a resync target, whatever CP values its old lineage had.
2. The changed extents are copied in block order, one read from the source,
   written to every target that needs them. Each extent is copied under the
   store lock, so no CP interleaves with it: a CP that later reuses a block
   writes its new bytes to T too, and a copy after that CP reads the new
   bytes from the source. The cursor (blocks below it are copied) reaches
   T's slots with the CPs taken every PROGRESS_BYTES.
3. T is flushed, joins the in-sync set, and a CP writes it a normal slot:
   T is in sync. The resync bases it no longer needs are released and a
   post-resync snapshot becomes the next common point.

A crash anywhere before step 3's slot leaves T a resync target; resuming
restarts from the cursor when T received every CP since, else from 0 (still
only the changed set).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import MirrorfsError, PlexIOError
from ..mirror import MAX_RUN_BLOCKS, PlexSlot
from ..ondisk import SLOT_SIZE, PlexState, ResyncRecord, SnapKind, cp_offsets, slot_offsets
from ..store import Store
from ..store import _planes as planes
from ._plan import Plan

log = logging.getLogger(__name__)

PROGRESS_BYTES = 64 << 20  # bytes copied between two CPs that record the cursor


class ResyncFailed(MirrorfsError):
    """resync of {0} failed: {1}"""

    exit_code = 1


@dataclasses.dataclass
class TargetResult:
    target: str
    source: str
    base: str | None
    blocks_planned: int
    blocks_copied: int = 0
    bytes_copied: int = 0
    seconds: float = 0.0
    verified: bool = False
    resumed_from: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class Throttle:
    """Keeps a copy at or below ``rate`` bytes per second (None: no limit)."""

    def __init__(self, rate: float | None, sleep: Callable[[float], None] = time.sleep,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.sleep = sleep
        self.now = now
        self.start = now()
        self.done = 0

    def account(self, nbytes: int) -> None:
        self.done += nbytes
        if not self.rate:
            return
        ahead = self.done / self.rate - (self.now() - self.start)
        if ahead > 0:
            self.sleep(ahead)


def _invalidate_other_slots(slot: PlexSlot, volume_bytes: int, cp: int) -> None:
    keep = set(cp_offsets(volume_bytes, cp))
    zero = bytes(SLOT_SIZE)
    for off in slot_offsets(volume_bytes):
        if off not in keep:
            slot.plex.writev(off, [zero])
    slot.plex.flush()


class Resync:
    """One resync run: several targets, one source image, one pass over the changed blocks."""

    def __init__(self, store: Store, plans: Sequence[tuple[PlexSlot, Plan]], *,
                 verify: bool = False, rate: float | None = None,
                 progress: Callable[[int], None] | None = None,
                 throttle: Throttle | None = None) -> None:
        self.store = store
        self.plans = list(plans)
        self.verify = verify
        self.progress = progress
        self.throttle = throttle or Throttle(rate)
        self.results = {id(s): TargetResult(s.spec, p.source, p.base.name if p.base else None,
                                            p.blocks) for s, p in self.plans}

    # -- steps ----------------------------------------------------------------

    def begin(self) -> dict[int, int]:
        """Step 1: make every target a resync target; returns each one's start cursor.

        Call it under the store lock that computed the plans, with nothing
        committed in between: a CP between plan and here would reach the
        source only, and its blocks are in no plan.
        """
        st = self.store
        starts: dict[int, int] = {}
        with st.lock:
            source = st.mirror.in_sync()[0]
            for slot, plan in self.plans:
                old = slot.resync
                cursor = 0
                same_base = old is not None and plan.base is not None and (
                    old.base_guid == plan.base.guid)
                if same_base and slot.sb is not None and slot.sb.cp == st.cp and (
                        slot.sb.cp_id == st.cp_id) and old is not None:
                    cursor = old.cursor  # T received every CP since: the cursor holds
                starts[id(slot)] = cursor
                self.results[id(slot)].resumed_from = cursor
                base = plan.base
                slot.state = PlexState.RESYNCING
                slot.resync = ResyncRecord(
                    source.plex_uuid, base.guid if base else uuid.UUID(int=0),
                    base.cp if base else 0, st.cp, st.cp_id, cursor, plan.blocks)
            st.commit(force=True)
            for slot, _ in self.plans:
                try:
                    _invalidate_other_slots(slot, st.mirror.volume_bytes, st.cp)
                except PlexIOError as e:
                    st.mirror.fail(slot, e)
                    self.results[id(slot)].error = str(e)
        return starts

    def _copy(self, starts: dict[int, int]) -> None:
        """Step 2: one read per extent, written to every target whose plan has it."""
        st = self.store
        bs = st.block_size
        live = [(s, p) for s, p in self.plans if self.results[id(s)].error is None]
        if not live:
            return
        union = np.zeros(st.plane_words, dtype=np.uint64)
        for _, p in live:
            union |= p.changed
        ustarts, ulens = planes.extents(union)
        since_cp = 0
        t0 = time.perf_counter()
        for a0, n0 in zip(ustarts.tolist(), ulens.tolist(), strict=True):
            for a in range(a0, a0 + n0, MAX_RUN_BLOCKS):
                b = min(a0 + n0, a + MAX_RUN_BLOCKS)
                blks = np.arange(a, b, dtype=np.uint64)
                wanted = [(s, p) for s, p in live if self.results[id(s)].error is None
                          and b > starts[id(s)]]
                if not wanted:
                    continue
                with st.lock:
                    # No CP may fly while an extent is copied: a flying CP writes blocks
                    # to the targets outside the lock, and one it reuses from this extent
                    # could land before a stale copy of it read here. Under the lock no
                    # new CP starts; this lands the one in flight, if any.
                    st.drain()
                    sources = st.mirror.in_sync()
                    if not sources:
                        raise ResyncFailed("all targets", "no in-sync plex left to copy from")
                    data = memoryview(self._read(sources, a, b - a))
                    for slot, plan in wanted:
                        mask = planes.test_bits(plan.changed, blks) & (blks >= starts[id(slot)])
                        n = self._write(slot, a, data, mask)
                        res = self.results[id(slot)]
                        res.blocks_copied += n
                        res.bytes_copied += n * bs
                        if slot.resync is not None:
                            slot.resync = dataclasses.replace(slot.resync, cursor=b)
                    since_cp += (b - a) * bs
                    if since_cp >= PROGRESS_BYTES:
                        st.commit(force=True)  # flushes the targets, then records the cursor
                        since_cp = 0
                self.throttle.account((b - a) * bs)
                if self.progress:
                    self.progress(b - a)
        for slot, _ in live:
            self.results[id(slot)].seconds = time.perf_counter() - t0

    def _read(self, sources: list[PlexSlot], blk: int, n: int) -> bytes:
        last: Exception | None = None
        for src in sources:
            try:
                return self.store.mirror.read_raw(src, blk, n)
            except PlexIOError as e:
                self.store.mirror.fail(src, e)
                last = e
        raise ResyncFailed("all targets", f"cannot read the source: {last}")

    def _write(self, slot: PlexSlot, blk: int, data: memoryview, mask: np.ndarray) -> int:
        """Write the masked blocks of one extent to one target; verify if asked."""
        if not mask.any() or self.results[id(slot)].error is not None:
            return 0
        bs = self.store.block_size
        idx = np.flatnonzero(mask)
        breaks = np.flatnonzero(np.diff(idx) != 1) + 1
        try:
            for run in np.split(idx, breaks):
                i, j = int(run[0]), int(run[-1]) + 1
                chunk = data[i * bs : j * bs]
                slot.plex.writev((blk + i) * bs, [chunk])
                if self.verify:
                    back = slot.plex.read((blk + i) * bs, (j - i) * bs)
                    if back != chunk:
                        raise PlexIOError(slot.spec, f"read-back of blocks {blk + i}..{blk + j} "
                                                     "differs from what was written")
        except PlexIOError as e:
            self.store.mirror.fail(slot, e)
            self.results[id(slot)].error = str(e)
            slot.resync = None
            return 0
        return len(idx)

    def _finish(self) -> None:
        """Step 3: targets join the in-sync set; bases released; a post-resync snapshot."""
        st = self.store
        with st.lock:
            done = [s for s, _ in self.plans if self.results[id(s)].error is None]
            for slot in done:
                slot.plex.flush()
            for slot in done:
                slot.state = PlexState.IN_SYNC
                slot.resync = None
                self.results[id(slot)].verified = self.verify
            st.commit(force=True)
            if done:
                release_bases(st)
                st.create_snapshot(f"post-resync-cp{st.cp + 1}", SnapKind.POST_RESYNC)
                prune_post_resync(st)

    def run(self, starts: dict[int, int] | None = None) -> list[TargetResult]:
        if starts is None:  # dirty data goes out with begin's CP, which reaches the targets
            starts = self.begin()
        self._copy(starts)
        self._finish()
        return [self.results[id(s)] for s, _ in self.plans]


def _waiting(store: Store) -> list[int]:
    """Last CPs of members that are still out of sync (they may need those bases)."""
    return [m.last_cp for m in store.members.values() if m.state != PlexState.IN_SYNC]


def release_bases(store: Store) -> None:
    """Delete resync-base snapshots no out-of-sync member can still be at."""
    waiting = _waiting(store)
    for rec in list(store.snapshots):
        if rec.kind != SnapKind.RESYNC_BASE:
            continue
        if any(cp in (rec.cp, rec.cp + 1) for cp in waiting):
            continue
        store.delete_snapshot(rec.name)


def prune_post_resync(store: Store) -> None:
    """Keep the newest post-resync snapshot, and older ones an absent member may hold."""
    posts = sorted((r for r in store.snapshots if r.kind == SnapKind.POST_RESYNC),
                   key=lambda r: r.cp)
    waiting = _waiting(store)
    for rec in posts[:-1]:
        if any(cp >= rec.cp for cp in waiting):
            continue
        store.delete_snapshot(rec.name)
