"""The copy-on-write store of one volume: objects, block-map planes, snapshots, CPs.

Owns the CP counter, the planes, the snapshot table and the order of a
commit. Keeps: after a crash at any moment, every plex opens at CP n or
CP n+1, complete and consistent.

Order of a CP (DESIGN.md, "Consistency points"):

1. Place every dirty block: new blocks for dirty leaves and the nodes above
   them, children before parents; the object table after the objects; the
   snapshot table; the active plane last, repeated until the plane's own
   blocks are in it (the fixpoint).
2. Write the blocks to every writable plex, sorted and coalesced.
3. Flush every plex.
4. Write superblock slot n+1 on every plex (both rings); flush.
5. Only now may blocks freed by CP n+1 be reused (``Allocator.commit``).

Crash argument. Until step 4 reaches a plex, that plex's newest valid slot is
CP n, and no block CP n references was written (step 1 never hands one out).
A torn slot n+1 fails its checksum and is skipped. After step 4, slot n+1
names blocks flushed in step 3.

Planes. The active plane is the set of blocks the active image uses,
including the blocks of the plane tree itself and the reserved superblock
rings. A snapshot's plane is the active plane of its CP, shared, not copied.
A block is free when no plane holds it and the last CP does not hold it.

Pipelining. Step 1 runs under the lock; steps 2-4 (``_fly``) may run in a
thread of their own while writers fill the next CP: a CP started by the
dirty limit or the timer is *in flight* until ``_land`` finishes it under
the lock. At most one CP is in flight. The next one may be placed and
sealed while it flies (so the plexes are not idle while a writer seals), and
its blocks written at once (step 2, ``_prewrite``: the disk does not wait
between CPs), but its flush and superblocks come only after the flying one
lands, so step 5 holds as before: that placement holds the flying CP's plane
from allocation (``Allocator.hold``), ``committed`` becomes its plane only
when it lands, and nothing it freed is reused before its superblocks are on
the plexes. A crash while both are written finds CP n or n+1 intact, since
CP n+2's blocks are free in both. Everything the
flying CP writes is captured when it is placed (blocks, bytes, roots,
counts, its plane), so later changes in memory cannot leak into it; reads of
its blocks before they reach the plexes are served from those bytes
(``MirrorSource.pending``). Operations that need the plexes quiet (fsck,
scrub, resync, plex changes) call ``drain`` or ``commit``, which land the
flight first. A flight that fails marks the store broken, and the error
reaches the next caller that lands it. While a flight runs, the
interpreter switches threads every millisecond (``_quick_switch``), so the
flight gets the GIL back promptly after each system call.

Lock. ``Store.lock`` (an RLock) guards everything here; the file system takes
it for each operation and the CP timer for each commit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import threading
import uuid
from collections.abc import Callable, Iterator

import numpy as np

from ..errors import FormatError, NoSpace, ReadOnly, SnapshotError
from ..mirror import MirrorSet, PlexSlot
from ..ondisk import (
    MAX_SNAPSHOT_NAME,
    MAX_SNAPSHOTS,
    RING_BYTES,
    SNAP_SIZE,
    Member,
    PlexState,
    SnapKind,
    SnapshotRecord,
    Superblock,
    Where,
    null_ptrs,
    ptr_bytes,
)
from ..plex import Buffer
from . import _planes as planes
from ._alloc import Allocator
from ._clock import Clock, SystemClock
from ._diff import Diff, diff_images
from ._objects import ObjectTable, ObjectView, ptr_of
from ._reach import image_blocks, tree_blocks
from ._source import MirrorSource
from ._tree import DEFERRED, Tree

log = logging.getLogger(__name__)

DIRTY_LIMIT_BYTES = 32 << 20  # dirty data at which a write starts a CP, if none flies
# dirty data at which a write waits for the CP in flight. 128 MiB, not 256: half the
# memory a stream touches, and through the API 1 GiB wrote at 309-369 MB/s against
# 296-325 (one plex; 197-213 against 185-187 on two; /var/tmp/s4/wr_ab.py, session 4)
DIRTY_MAX_BYTES = 128 << 20
SPACE_MARGIN = 1.02  # metadata allowance per dirty leaf when checking free space
SPACE_SLACK_BLOCKS = 256  # blocks kept back for the metadata of the last CP
NIL_ID = uuid.UUID(int=0)  # the CP id before the first CP


@dataclasses.dataclass(frozen=True)
class CpState:
    """The roots of one committed CP: what a resync-base snapshot of it records."""

    cp: int
    cp_id: uuid.UUID
    objtab_root: bytes
    objtab_height: int
    plane_root: bytes
    plane_height: int
    next_ino: int


@dataclasses.dataclass(eq=False)
class Frozen:
    """A committed CP of a store, read-only, with what fsck reads of a store (``freeze``)."""

    store: Store
    hold: np.ndarray
    nblocks: int
    plane_words: int
    reserved: np.ndarray
    src: MirrorSource
    mirror: MirrorSet
    objects: ObjectView
    snapshots: list[SnapshotRecord]
    snap_tree: Tree
    plane_tree: Tree

    def view(self, rec: SnapshotRecord) -> ObjectView:
        return self.store.view(rec)

    def snapshot_plane(self, rec: SnapshotRecord) -> np.ndarray:
        return self.store.snapshot_plane(rec)


@dataclasses.dataclass(eq=False)
class _Flight:
    """A CP placed and sealed, on its way to the plexes (steps 2-4), and what it captured."""

    cp: int
    cp_id: uuid.UUID
    now_ns: int
    blks: np.ndarray  # sorted
    datas: list[Buffer]  # in the order of blks
    plane: np.ndarray  # the CP's active plane: ``committed`` once it lands
    state: CpState
    n_snapshots: int
    snaptab_root: bytes
    snaptab_height: int
    # set when it starts, after the CP before it has landed (``Store._start``):
    prev_cp_id: uuid.UUID = NIL_ID
    before: set[int] = dataclasses.field(default_factory=set)  # ids of the in-sync plexes
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    members: tuple[Member, ...] = ()
    before_sb: set[int] = dataclasses.field(default_factory=set)
    after: set[int] = dataclasses.field(default_factory=set)
    error: Exception | None = None
    prewrite: threading.Thread | None = None  # its blocks, written while the CP before flies
    prewrite_error: Exception | None = None


FLIGHT_SWITCH_INTERVAL = 0.001  # seconds: the interpreter's thread switch interval in a flight
_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.0


@contextlib.contextmanager
def _quick_switch() -> Iterator[None]:
    """Switch threads every millisecond, not every 5, while a CP is in flight.

    Why: each pwritev, hint and flush of the flight releases the GIL, and
    taking it back waits for the writer thread to yield it, which CPython
    forces only once per switch interval. At the default 5 ms, with a writer
    busy in Python, the flight spent more time waiting for the GIL than
    writing: 1 GiB through the API, 257-312 MB/s at 5 ms, 258-341 at 1 ms
    (``/var/tmp/s4/wr_ab.py``, alternating runs). The interval is process-wide, so it is
    lowered only while some flight runs (counted across stores) and put back
    after the last one, unless someone else changed it in the meantime.
    """
    global _switch_users, _switch_saved
    with _switch_lock:
        if _switch_users == 0:
            _switch_saved = sys.getswitchinterval()
            if _switch_saved > FLIGHT_SWITCH_INTERVAL:
                sys.setswitchinterval(FLIGHT_SWITCH_INTERVAL)
        _switch_users += 1
    try:
        yield
    finally:
        with _switch_lock:
            _switch_users -= 1
            if _switch_users == 0 and sys.getswitchinterval() == min(
                    _switch_saved, FLIGHT_SWITCH_INTERVAL):
                sys.setswitchinterval(_switch_saved)


@dataclasses.dataclass(frozen=True)
class StoreStats:
    cp: int
    total_blocks: int
    free_blocks: int
    snapshots: int
    dirty_leaves: int


def plane_from_tree(tree: Tree, words: int) -> np.ndarray:
    """Read a plane tree into a words array (holes are zero words)."""
    out = np.zeros(words, dtype=np.uint64)
    per = tree.src.block_size // 8
    nleaves = words // per
    step = 1024
    for a in range(0, nleaves, step):
        b = min(nleaves, a + step)
        for i, leaf in enumerate(tree.read_leaves(a, b)):
            if leaf is not None:
                out[(a + i) * per : (a + i + 1) * per] = np.frombuffer(leaf, dtype="<u8")
    return out


def load_snapshot_table(tree: Tree, n: int, plexes: str = "?") -> list[SnapshotRecord]:
    """The ``n`` records of a snapshot table tree, in table order (``plexes`` for errors)."""
    per = tree.src.block_size // SNAP_SIZE
    nleaves = -(-n // per)
    out: list[SnapshotRecord] = []
    blks = tree.leaf_ptrs(0, nleaves)["blk"]
    for i, leaf in enumerate(tree.read_leaves(0, nleaves)):
        where = Where(plexes, f"{int(blks[i])} (snapshot table)")
        if leaf is None:
            raise FormatError(str(where), f"the superblock counts {n} snapshots, the table "
                                          f"holds fewer")
        mv = memoryview(leaf)
        for j in range(per):
            if len(out) == n:
                break
            out.append(SnapshotRecord.decode(mv[j * SNAP_SIZE : (j + 1) * SNAP_SIZE], where))
    return out


def reserved_blocks(nblocks: int, block_size: int) -> np.ndarray:
    """Blocks of the two superblock rings: never allocated, always in the active plane."""
    ring = -(-RING_BYTES // block_size)
    return np.concatenate((np.arange(0, ring, dtype=np.uint64),
                           np.arange(nblocks - ring, nblocks, dtype=np.uint64)))


def check_snapshot_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise SnapshotError(name or "''", "a name must be non-empty, without '/', not . or ..")
    if len(name.encode()) > MAX_SNAPSHOT_NAME:
        raise SnapshotError(name, f"name longer than {MAX_SNAPSHOT_NAME} bytes")


class Store:
    """Objects, planes, snapshots and the CP engine over one MirrorSet."""

    def __init__(self, mirror: MirrorSet, sb: Superblock, *, read_only: bool = False,
                 clock: Clock | None = None) -> None:
        self.mirror = mirror
        self.clock: Clock = clock or SystemClock()
        self.src = MirrorSource(mirror)
        self.lock = threading.RLock()
        self.block_size = mirror.block_size
        self.nblocks = mirror.nblocks
        self.read_only = read_only
        self.volume_uuid = sb.volume_uuid
        self.cp = sb.cp
        self.cp_id = sb.cp_id
        self.prev_cp_id = sb.prev_cp_id
        self.min_plexes = sb.min_plexes
        self.members = {m.plex_uuid: m for m in sb.members}
        self.leaf_words = self.block_size // 8
        self.plane_words = len(planes.new_plane(self.nblocks, self.leaf_words))
        self.objects = ObjectTable(self.src, sb.root("objtab"), sb.objtab_height, sb.next_ino,
                                   read_only)
        self.plane_tree = Tree(self.src, sb.root("plane"), sb.plane_height, "block-map plane")
        self.snap_tree = Tree(self.src, sb.root("snaptab"), sb.snaptab_height, "snapshot table")
        self.snapshots: list[SnapshotRecord] = self._load_snapshots(sb.n_snapshots)
        self.reserved = reserved_blocks(self.nblocks, self.block_size)
        active = plane_from_tree(self.plane_tree, self.plane_words)
        self.alloc = Allocator(active, self._snap_union(), self.nblocks, self.reserved)
        planes.set_bits(active, self.reserved)  # after: the first CP must persist them
        self._snaptab_dirty = False
        self.last_commit = self.clock.monotonic()
        self.broken: Exception | None = None
        self.committed = self._cp_state()
        self._in_set = set(map(id, self.mirror.in_sync()))
        self._flight: _Flight | None = None
        self.pre_commit: list[Callable[[], None]] = []  # e.g. directories encode buckets

    # -- loading ------------------------------------------------------------

    def _load_snapshots(self, n: int) -> list[SnapshotRecord]:
        specs = ", ".join(s.spec for s in self.mirror.readable())
        return load_snapshot_table(self.snap_tree, n, specs)

    def snapshot_plane(self, rec: SnapshotRecord) -> np.ndarray:
        tree = Tree(self.src, ptr_of(rec.plane_root), rec.plane_height,
                    f"plane of snapshot {rec.name}")
        return plane_from_tree(tree, self.plane_words)

    def _snap_union(self) -> np.ndarray:
        union = np.zeros(self.plane_words, dtype=np.uint64)
        for rec in self.snapshots:
            union |= self.snapshot_plane(rec)
        return union

    # -- state --------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        return self.objects.dirty or self._snaptab_dirty

    def statistics(self) -> StoreStats:
        usable = self.nblocks - len(self.reserved)
        return StoreStats(self.cp, usable, self.alloc.free_blocks(), len(self.snapshots),
                          self.objects.dirty_leaves)

    def _writable(self) -> None:
        if self.broken is not None:
            raise ReadOnly(f"an earlier commit failed ({self.broken})")
        if self.read_only:
            raise ReadOnly("writes are refused")

    def check_space(self, new_leaves: int) -> None:
        """Refuse a write that the next CP could not place (ENOSPC before, not during, a CP)."""
        need = int((self.objects.dirty_leaves + new_leaves) * SPACE_MARGIN) + SPACE_SLACK_BLOCKS
        free = self.alloc.free_blocks()
        if need > free:
            raise NoSpace(need, free)

    def write(self, ino: int, offset: int, data: bytes | bytearray | memoryview,
              **changes: int) -> int:
        """Write object data (and inode ``changes``, such as times); at the dirty limit,
        start a CP and go on (it flies meanwhile)."""
        with self.lock:
            self._writable()
            self.check_space(len(data) // self.block_size + 2)
            n = self.objects.write(ino, offset, data, **changes)
            dirty = self.objects.dirty_leaves * self.block_size
            if dirty >= DIRTY_LIMIT_BYTES:
                fl = self._flight
                if fl is None or fl.done.is_set() or dirty >= DIRTY_MAX_BYTES:
                    self.commit(wait=False)
            return n

    def truncate(self, ino: int, size: int) -> None:
        with self.lock:
            self._writable()
            self.objects.truncate(ino, size)

    # -- the CP -------------------------------------------------------------

    def commit(self, force: bool = False, wait: bool = True) -> bool:
        """Commit everything dirty as CP n+1; returns False when there was nothing to do.

        With ``wait`` (the default) the CP is on the plexes when this returns;
        without, it may still be in flight (see the module docstring): the
        caller goes on, and the next commit or ``drain`` lands it. When a CP
        is in flight, CP n+1 is placed and sealed before that one is waited
        for, so the plexes keep working while this thread seals (an fsync
        during a long write waits for the plexes only).
        """
        with self.lock:
            if not self._can_place(force):
                self._land()
                return False
            self._advance(background=not wait)
            if wait:
                self._land()
            return True

    def _can_place(self, force: bool) -> bool:
        if self.read_only or self.broken is not None:
            return False
        self._run_hooks()
        return force or self.dirty

    def _advance(self, background: bool) -> None:
        """Place the next CP (while the one in flight, if any, still flies), land that
        one, then start this one behind it: here, or in a thread (``background``).

        When one flies, this CP's blocks are written at once, while that one
        still flushes and writes its superblocks (``_prewrite``), so the disk
        never waits between CPs.
        """
        try:
            fl = self._place()
        except Exception as e:
            self.broken = e
            raise
        if self._flight is not None:
            self._prewrite(fl)
        try:
            bases = self._land(defer_bases=True)  # its failure marks the store broken
        except BaseException:
            if fl.prewrite is not None:
                fl.prewrite.join()  # no write may outlive the store's plexes
            raise
        try:
            self._start(fl, background)
            if bases:  # record the resync bases now, not whenever the next CP comes
                self._land()
                self._commit()
        except Exception as e:
            self.broken = e
            raise

    def drain(self) -> None:
        """Land the CP in flight, if any (its error, if it failed, is raised here)."""
        with self.lock:
            self._land()

    def settle(self) -> None:
        """Wait for the CP in flight without holding the lock, then land it.

        For the CP timer: writers keep the lock while the plexes work.
        """
        fl = self._flight
        if fl is not None:
            fl.done.wait()
        self.drain()

    def _run_hooks(self) -> None:
        """Bring in-memory caches into the objects (directories encode their buckets)."""
        for hook in self.pre_commit:
            hook()

    def _cp_state(self) -> CpState:
        return CpState(self.cp, self.cp_id, ptr_bytes(self.objects.objtab.root),
                       self.objects.objtab.height, ptr_bytes(self.plane_tree.root),
                       self.plane_tree.height, self.objects.next_ino)

    def _commit(self) -> None:
        """One CP, on the plexes when this returns (from ``_land``: the resync bases)."""
        self._run_hooks()
        self._start(self._place(), background=False)
        self._land()

    def _place(self) -> _Flight:
        """Step 1: place and seal CP n+1 and capture all it writes (nothing is written yet).

        When a CP is in flight, this one follows it: its blocks must not
        take any of the flying CP's, which are not ``committed`` until it lands.
        """
        prev = self._flight
        cp = (prev.cp if prev is not None else self.cp) + 1
        alloc = self.alloc
        if prev is not None:
            alloc.hold(prev.plane)
        try:
            blks, datas = self.objects.place_and_seal(alloc, cp)
            if self._snaptab_dirty:
                b, d = self._place_snaptab(cp)
                blks += b
                datas += d
                self._snaptab_dirty = False
            b, d = self._place_plane(cp)
            blks += b
            datas += d
        finally:
            if prev is not None:
                alloc.release(prev.plane)
        arr = np.array(blks, dtype=np.uint64)
        order = np.argsort(arr, kind="stable")
        self.last_commit = self.clock.monotonic()
        return _Flight(
            cp=cp, cp_id=uuid.uuid4(), now_ns=self.clock.time_ns(),
            blks=arr[order], datas=[datas[i] for i in order.tolist()],
            plane=alloc.active.copy(), state=dataclasses.replace(self._cp_state(), cp=cp),
            n_snapshots=len(self.snapshots), snaptab_root=ptr_bytes(self.snap_tree.root),
            snaptab_height=self.snap_tree.height)

    def _prewrite(self, fl: _Flight) -> None:
        """Step 2 of a CP placed while the one before it flies, in a thread of its own.

        Safe before that one lands: its blocks are free in the last committed
        CP and in the flying one (``_place`` holds the flying plane), so a
        crash now still finds either CP intact; its superblocks come only
        after its own flush (``_fly``), which is after the flying CP's.
        """
        def write() -> None:
            try:
                self.mirror.write_blocks(fl.blks, fl.datas)
            except Exception as e:
                fl.prewrite_error = e

        fl.prewrite = threading.Thread(target=write, name=f"cp-{fl.cp}-blocks", daemon=True)
        fl.prewrite.start()

    @staticmethod
    def _join_prewrite(fl: _Flight) -> bool:
        """Wait for ``fl``'s early block writes, if any; whether there were."""
        if fl.prewrite is None:
            return False
        fl.prewrite.join()
        if fl.prewrite_error is not None:
            raise fl.prewrite_error
        return True

    def _start(self, fl: _Flight, background: bool) -> None:
        """Steps 2-4 of a placed CP, once the CP before it has landed."""
        assert self._flight is None and fl.cp == self.cp + 1
        fl.prev_cp_id = self.cp_id
        fl.before = self._in_set  # plexes that read errors dropped since then left at CP n
        self._flight = fl
        self.src.set_pending(fl.blks, fl.datas)
        if background:
            threading.Thread(target=self._fly, args=(fl,), name=f"cp-{fl.cp}",
                             daemon=True).start()
        else:
            self._fly(fl)

    def _fly(self, fl: _Flight) -> None:
        """Steps 2-4: blocks, flush, superblocks. Touches only ``fl`` and the mirror."""
        try:
            with _quick_switch():
                if not self._join_prewrite(fl):
                    self.mirror.write_blocks(fl.blks, fl.datas)
                self.mirror.flush()
                fl.before_sb = set(map(id, self.mirror.in_sync()))
                fl.members = self._members(fl.cp)
                self.mirror.write_superblocks(lambda slot: self._superblock(slot, fl))
            fl.after = set(map(id, self.mirror.in_sync()))
        except Exception as e:
            fl.error = e
        except BaseException as e:  # e.g. KeyboardInterrupt when run in the caller's thread
            fl.error = RuntimeError(f"CP {fl.cp} interrupted: {e!r}")
            raise
        finally:
            fl.done.set()

    def _land(self, defer_bases: bool = False) -> bool:
        """Finish the CP in flight: step 5, and resync bases for plexes that left in it.

        A plex that fails before its superblock write holds CP n; one that fails
        during it may hold CP n+1 too. Both CPs are pinned as resync-base
        snapshots (DESIGN.md, "Plex failure and resync bases"), in the next CP:
        committed here, or with ``defer_bases`` by the caller (which has the
        next CP placed already); returns whether that CP is still owed.
        """
        fl = self._flight
        if fl is None:
            return False
        fl.done.wait()
        self._flight = None
        if fl.error is not None:
            self.broken = fl.error
            raise fl.error
        self.src.clear_pending()
        self.members = {m.plex_uuid: m for m in fl.members}
        departed = bool(fl.before - fl.after)
        prev_state, prev_plane = self.committed, None
        if departed:
            prev_plane = self.alloc.committed.copy()
        self.prev_cp_id, self.cp_id, self.cp = self.cp_id, fl.cp_id, fl.cp
        self.alloc.commit(fl.plane)
        self.committed = dataclasses.replace(fl.state, cp_id=fl.cp_id)
        self._in_set = fl.after
        if departed:
            assert prev_plane is not None
            self._pin_base(prev_state, prev_plane)
            if fl.before_sb - fl.after:
                self._pin_base(self.committed, fl.plane.copy())
            if self._snaptab_dirty:
                if defer_bases:
                    return True
                self._commit()  # record the bases now, not whenever the next CP comes
        return False

    def _pin_base(self, state: CpState, plane: np.ndarray) -> None:
        """Keep CP ``state`` as a resync-base snapshot whose GUID is its CP id.

        Its blocks join the snapshot union at once, before any allocation, so
        nothing CP ``state`` holds can be reused; the record itself reaches the
        plexes with the next CP.
        """
        if any(r.guid == state.cp_id for r in self.snapshots):
            return
        if len(self.snapshots) >= MAX_SNAPSHOTS:
            log.warning("no room to pin CP %d as a resync base; a later resync copies more",
                        state.cp)
            return
        name = f"resync-base-cp{state.cp}"
        self.snapshots.append(SnapshotRecord(
            name=name, guid=state.cp_id, cp=state.cp, ctime_ns=self.clock.time_ns(),
            kind=SnapKind.RESYNC_BASE, objtab_root=state.objtab_root,
            plane_root=state.plane_root, objtab_height=state.objtab_height,
            plane_height=state.plane_height, next_ino=state.next_ino))
        self.alloc.snap_union |= plane
        self._snaptab_dirty = True
        log.info("pinned CP %d as snapshot %s for the resync of departed plexes", state.cp, name)

    def pin_slot(self, sb: Superblock) -> None:
        """Pin an older CP of this plex's ring (only safe while nothing reused its blocks)."""
        with self.lock:
            tree = Tree(self.src, sb.root("plane"), sb.plane_height, f"plane of CP {sb.cp}")
            plane = plane_from_tree(tree, self.plane_words)
            self._pin_base(CpState(sb.cp, sb.cp_id, sb.objtab_root, sb.objtab_height,
                                   sb.plane_root, sb.plane_height, sb.next_ino), plane)

    def pin_current(self) -> None:
        """Pin the last committed CP as a resync base (a plex leaves while it holds it)."""
        with self.lock:
            self._pin_base(self.committed, self.alloc.committed.copy())

    def _place_snaptab(self, cp: int) -> tuple[list[int], list[Buffer]]:
        per = self.block_size // SNAP_SIZE
        recs = [r.encode() for r in self.snapshots]
        nleaves = -(-len(recs) // per)
        for i in range(nleaves):
            chunk = b"".join(recs[i * per : (i + 1) * per])
            self.snap_tree.write_leaf(i, chunk + bytes(self.block_size - len(chunk)))
        for i in self.snap_tree.nonnull_leaves(nleaves, 1 << 62).tolist():
            self.snap_tree.write_leaf(i, None)
        self.snap_tree.place(self.alloc, cp)
        return self.snap_tree.seal()

    def _place_plane(self, cp: int) -> tuple[list[int], list[Buffer]]:
        """Place the plane's changed leaves until the plane holds its own blocks."""
        alloc = self.alloc
        w = self.leaf_words
        placed = np.zeros(self.plane_words // w, dtype=bool)
        while True:
            changed = np.any((alloc.active != alloc.committed).reshape(-1, w), axis=1)
            new = np.flatnonzero(changed & ~placed)
            if len(new) == 0:
                break
            for i in new.tolist():
                self.plane_tree.write_leaf(i, DEFERRED)
            placed[new] = True
            self.plane_tree.place(alloc, cp)
        active = alloc.active
        return self.plane_tree.seal(lambda i: active[i * w : (i + 1) * w].tobytes())

    def _superblock(self, slot: PlexSlot, fl: _Flight) -> Superblock:
        st = fl.state
        return Superblock(
            block_size=self.block_size, volume_uuid=self.volume_uuid, plex_uuid=slot.plex_uuid,
            plex_ordinal=slot.ordinal, nblocks=self.nblocks, cp=fl.cp, cp_id=fl.cp_id,
            prev_cp_id=fl.prev_cp_id, timestamp_ns=fl.now_ns, next_ino=st.next_ino,
            min_plexes=self.min_plexes, objtab_root=st.objtab_root,
            plane_root=st.plane_root, snaptab_root=fl.snaptab_root,
            objtab_height=st.objtab_height, plane_height=st.plane_height,
            snaptab_height=fl.snaptab_height, n_snapshots=fl.n_snapshots,
            members=fl.members,
            resync=slot.resync if slot.state == PlexState.RESYNCING else None,
        )

    def _members(self, cp: int) -> tuple[Member, ...]:
        """Members as CP ``cp`` records them (they become ``members`` when it lands).

        Writable plexes completed ``cp``; the others keep the last CP they
        completed. A member that is not open at all (missing, or left out with
        ``--plex``) stays listed: once in sync, now missing.
        """
        out = []
        opened = set()
        for s in self.mirror.slots:
            opened.add(s.plex_uuid)
            prev = self.members.get(s.plex_uuid)
            if s.state == PlexState.IN_SYNC:
                out.append(Member(s.plex_uuid, s.ordinal, s.state, cp))
            else:
                last = prev.last_cp if prev else 0
                out.append(Member(s.plex_uuid, s.ordinal, s.state, last))
        for m in self.members.values():
            if m.plex_uuid not in opened:
                state = PlexState.MISSING if m.state == PlexState.IN_SYNC else m.state
                out.append(Member(m.plex_uuid, m.ordinal, state, m.last_cp))
        out.sort(key=lambda m: m.ordinal)
        return tuple(out)

    def set_member(self, member: Member | None, plex_uuid: uuid.UUID) -> None:
        """Record a member's new state (or drop it with None) in the next CP."""
        with self.lock:
            self._land()
            if member is None:
                self.members.pop(plex_uuid, None)
            else:
                self.members[plex_uuid] = member

    # -- snapshots ----------------------------------------------------------

    def mark_snapshots_dirty(self) -> None:
        """The snapshot table changed in memory; the next CP writes it."""
        self._snaptab_dirty = True

    def find_snapshot(self, name: str) -> SnapshotRecord:
        for r in self.snapshots:
            if r.name == name:
                return r
        raise SnapshotError(name, "no such snapshot (see `mirrorfs snapshot list`)")

    def create_snapshot(self, name: str, kind: SnapKind = SnapKind.USER,
                        guid: uuid.UUID | None = None) -> SnapshotRecord:
        """Pin the state of a new CP as a snapshot: O(1) in the data, a pointer copy."""
        with self.lock:
            self._writable()
            check_snapshot_name(name)
            if any(r.name == name for r in self.snapshots):
                raise SnapshotError(name, "a snapshot of that name exists")
            if len(self.snapshots) >= MAX_SNAPSHOTS:
                raise SnapshotError(name, f"the volume holds {MAX_SNAPSHOTS} snapshots already")
            self.commit()  # a clean volume's last CP is the snapshot: one CP, not two
            rec = SnapshotRecord(
                name=name, guid=guid or uuid.uuid4(), cp=self.cp,
                ctime_ns=self.clock.time_ns(), kind=kind,
                objtab_root=ptr_bytes(self.objects.objtab.root),
                plane_root=ptr_bytes(self.plane_tree.root),
                objtab_height=self.objects.objtab.height, plane_height=self.plane_tree.height,
                next_ino=self.objects.next_ino)
            self.snapshots.append(rec)
            self.alloc.snap_union |= self.alloc.committed
            self._snaptab_dirty = True
            self.commit()
            return rec

    def delete_snapshot(self, name: str) -> None:
        """Drop a snapshot; blocks no other plane holds become free once the CP commits."""
        with self.lock:
            self._writable()
            rec = self.find_snapshot(name)
            self.snapshots.remove(rec)
            self._snaptab_dirty = True
            self.commit()
            self.alloc.snap_union = self._snap_union()
            self.alloc.begin_cp()

    def rollback(self, name: str) -> None:
        """Make the active file system equal to a snapshot; every snapshot is kept."""
        with self.lock:
            self._writable()
            rec = self.find_snapshot(name)
            self.commit()
            next_ino = max(self.objects.next_ino, rec.next_ino)
            self.objects = ObjectTable(self.src, ptr_of(rec.objtab_root), rec.objtab_height,
                                       next_ino)
            active = np.zeros(self.plane_words, dtype=np.uint64)
            planes.set_bits(active, self.reserved)
            planes.set_bits(active, image_blocks(self.objects))
            planes.set_bits(active, tree_blocks(self.snap_tree))
            planes.set_bits(active, tree_blocks(self.plane_tree))
            np.copyto(self.alloc.active, active)
            self.alloc.begin_cp()
            self.commit(force=True)

    def freeze(self) -> Frozen:
        """The last committed CP as a read-only image, its blocks held until ``thaw``.

        For walks that must not hold the lock (an online scrub): call with the
        lock held, after a commit; every block the image or a snapshot reaches
        stays where it is until ``thaw``, whatever CPs, deletions and
        rollbacks happen meanwhile, so repairing a copy in place stays safe.
        """
        with self.lock:
            self._land()
            c = self.committed
            plane = self.alloc.committed | self.alloc.snap_union
            self.alloc.hold(plane)
            return Frozen(
                store=self, hold=plane, nblocks=self.nblocks, plane_words=self.plane_words,
                reserved=self.reserved, src=self.src, mirror=self.mirror,
                objects=ObjectView(self.src, ptr_of(c.objtab_root), c.objtab_height, c.next_ino),
                snapshots=list(self.snapshots),
                snap_tree=Tree(self.src, self.snap_tree.root, self.snap_tree.height,
                               "snapshot table"),
                plane_tree=Tree(self.src, ptr_of(c.plane_root), c.plane_height,
                                "block-map plane"))

    def thaw(self, frozen: Frozen) -> None:
        with self.lock:
            self.alloc.release(frozen.hold)

    def view(self, rec: SnapshotRecord) -> ObjectView:
        """A read-only view of the objects of a snapshot."""
        return ObjectView(self.src, ptr_of(rec.objtab_root), rec.objtab_height, rec.next_ino,
                          name=f"snapshot {rec.name}")

    def diff(self, old: str, new: str | None = None) -> Diff:
        """Changed files and blocks from snapshot ``old`` to snapshot ``new`` (or the active)."""
        with self.lock:
            a = self.find_snapshot(old)
            if new is None:
                self.commit()
                nview: ObjectView = self.objects
                nplane = self.alloc.active.copy()
            else:
                b = self.find_snapshot(new)
                nview, nplane = self.view(b), self.snapshot_plane(b)
            return diff_images(self.view(a), nview, self.snapshot_plane(a), nplane, old,
                               new or "active")

    def active_blocks(self) -> np.ndarray:
        """The blocks the active image reaches (for fsck): objects, tables, plane, rings."""
        parts = [image_blocks(self.objects), tree_blocks(self.snap_tree),
                 tree_blocks(self.plane_tree), self.reserved]
        return np.concatenate(parts)


def empty_superblock(block_size: int, nblocks: int, volume_uuid: uuid.UUID, cp_id: uuid.UUID,
                     slot: PlexSlot, members: tuple[Member, ...], min_plexes: int,
                     now_ns: int) -> Superblock:
    """CP 0 of a new volume: empty trees; the file system's first CP adds the root."""
    null = ptr_bytes(null_ptrs(1))
    return Superblock(
        block_size=block_size, volume_uuid=volume_uuid, plex_uuid=slot.plex_uuid,
        plex_ordinal=slot.ordinal, nblocks=nblocks, cp=0, cp_id=cp_id,
        prev_cp_id=NIL_ID, timestamp_ns=now_ns, next_ino=1, min_plexes=min_plexes,
        objtab_root=null, plane_root=null, snaptab_root=null, objtab_height=0,
        plane_height=0, snaptab_height=0, n_snapshots=0, members=members)

