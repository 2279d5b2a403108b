"""MirrorSet: the plexes of one volume, write fan-out and verified reads.

Owns plex membership and states at run time. Keeps: every block a reader
gets matches the checksum its parent pointer holds; a plex that fails a write
or a flush leaves the set of writable plexes at once, and the volume goes on
while at least ``min_plexes`` remain.

Reads. A read goes to one in-sync plex: for a read of a stream (a run of
reads that continue each other, numbered by the caller), the plex that
served the stream's first read, so a stream keeps one plex's read-ahead
going wherever its blocks lie; for any other, the plex of the region of the
volume the blocks lie in (READ_REGION_BLOCKS), so different files and
readers spread over the plexes. A checksum mismatch or an I/O error retries
the block on the next in-sync plex and, on success, rewrites the good bytes
onto the plex that failed. Reads land directly in the caller's buffer
(``read_into``): no allocation per block or per run on the hot path.

Read-ahead. A reader that streams (``store`` detects it) names the blocks it
will want next with ``prefetch``; they are read in pieces of
PREFETCH_PIECE_BLOCKS by background threads, the pieces dealt round-robin
over the in-sync plexes, so independent plexes stream at once and the
reader's own work overlaps the I/O. Only plexes that ask for it
(``Plex.read_ahead``: NBD exports, not files, which the kernel reads ahead)
get pieces. ``read_into`` then copies a block from its piece instead of
reading it, and verifies it like any other: a piece is only a guess of the
plex's bytes. A piece that fails its checksum (a block rewritten since it
was fetched) is read again from its plex before anything counts as damage;
for a piece whose read failed, the reader reads the same blocks from that
plex itself, so errors take the one ordinary path (failover and repair).
Pieces are dropped when consumed, when written over, when the plex set
changes, and past PREFETCH_MAX_PIECES (oldest first).

Writes. ``write_blocks`` sorts and coalesces blocks into runs and issues one
``writev`` per run per plex; plexes are written in parallel threads (file
I/O releases the GIL).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

from .errors import CorruptBlock, MirrorfsError, PlexIOError
from .ondisk import (
    PlexState,
    PtrArray,
    ResyncRecord,
    Superblock,
    checksums,
    cp_offsets,
    digests_of_run,
)
from .plex import Buffer, Plex

log = logging.getLogger(__name__)

MAX_RUN_BLOCKS = 1024  # longest run read in one call, or copied by resync (4 MiB at 4 KiB)
# longest run of a CP handed to a plex in one writev (64 MiB at 4 KiB blocks): the plex
# splits it into system calls itself, and a file plex hints writeback per 16 MiB of it
WRITE_RUN_BLOCKS = 16384
CHECK_BATCH = 4096  # blocks verified at once per plex by check() (16 MiB at 4 KiB blocks)
READ_REGION_BLOCKS = 16384  # blocks read from one plex before the next region's (64 MiB)
STREAMS_KEPT = 1024  # most streams whose plex is remembered (oldest forgotten first)
PREFETCH_PIECE_BLOCKS = 256  # blocks per read-ahead read, and per plex in turn (1 MiB)
PREFETCH_MAX_PIECES = 64  # most read-ahead pieces held or in flight (64 MiB at 4 KiB)


@dataclasses.dataclass(eq=False)
class PlexSlot:
    """One member plex: its I/O, its identity, its run-time state."""

    plex: Plex
    plex_uuid: uuid.UUID
    ordinal: int
    state: PlexState
    sb: Superblock | None = None
    errors: int = 0
    repaired: int = 0
    resync: ResyncRecord | None = None  # set while the plex is a resync target

    @property
    def spec(self) -> str:
        return self.plex.spec

    @property
    def writable(self) -> bool:
        return self.state in (PlexState.IN_SYNC, PlexState.RESYNCING)

    @property
    def readable(self) -> bool:
        return self.state == PlexState.IN_SYNC


@dataclasses.dataclass(frozen=True)
class MirrorStats:
    reads: int
    read_bytes: int
    writes: int
    write_bytes: int
    repaired: int
    errors: int
    prefetched_pieces: int = 0  # read-ahead reads started
    prefetched_blocks_used: int = 0  # blocks a reader took from them
    prefetched_stale: int = 0  # blocks whose piece was out of date, read again


READ_ERROR = "read error"  # why a copy is bad (CheckResult.bad): the plex could not read it
CHECKSUM_MISMATCH = "checksum mismatch"  # it read, and its checksum is wrong


@dataclasses.dataclass
class CheckResult:
    """What ``MirrorSet.check`` found: per-plex bad copies, repairs, blocks bad everywhere.

    ``bad`` holds (plex spec, block, index into the checked pointers, why:
    READ_ERROR or CHECKSUM_MISMATCH); ``unrecoverable`` the indices of
    blocks bad on every readable plex.
    """

    checked: int = 0
    errors: dict[str, int] = dataclasses.field(default_factory=dict)
    bad: list[tuple[str, int, int, str]] = dataclasses.field(default_factory=list)
    repaired: int = 0
    unrecoverable: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(eq=False)
class _Piece:
    """Blocks [lo, hi) (one aligned piece) read ahead from one plex into ``buf``.

    ``fut`` is True once the read worked, False if it failed.
    """

    lo: int
    hi: int
    slot: PlexSlot
    buf: bytearray
    fut: Future[bool]


def runs(blks: npt.NDArray[np.uint64], limit: int = MAX_RUN_BLOCKS) -> list[tuple[int, int]]:
    """Split sorted block numbers into (start index, end index) runs of adjacent blocks."""
    if len(blks) == 0:
        return []
    breaks = np.flatnonzero(np.diff(blks.astype(np.int64)) != 1) + 1
    bounds = np.concatenate(([0], breaks, [len(blks)]))
    out: list[tuple[int, int]] = []
    for s, e in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        for a in range(s, e, limit):
            out.append((a, min(e, a + limit)))
    return out


def spans(blks: npt.NDArray[np.uint64], pos: npt.NDArray[np.int64],
          limit: int = MAX_RUN_BLOCKS) -> list[tuple[int, int]]:
    """(start, end) index runs where both the blocks and their buffer positions ascend by one."""
    n = len(blks)
    if n < 2:
        return [(0, n)] if n else []
    # a step down wraps: != 1 too (slices, not np.diff: a tenth of the cost at this size)
    brk = ((blks[1:] - blks[:-1]) != 1) | ((pos[1:] - pos[:-1]) != 1)
    if not brk.any():  # the common case: one run (a sequential read)
        return [(a, min(n, a + limit)) for a in range(0, n, limit)]
    bounds = np.concatenate(([0], np.flatnonzero(brk) + 1, [n])).tolist()
    out: list[tuple[int, int]] = []
    for s, e in itertools.pairwise(bounds):
        for a in range(s, e, limit):
            out.append((a, min(e, a + limit)))
    return out


class MirrorSet:
    """The plexes of one volume seen as one verified block device."""

    class NoWritablePlex(MirrorfsError):
        """fewer than {0} plexes could be written ({1}); the volume is now read-only"""

        exit_code = 1

    def __init__(self, slots: Sequence[PlexSlot], block_size: int, nblocks: int,
                 min_plexes: int = 1, read_only: bool = False) -> None:
        self.slots = list(slots)
        self.read_only = read_only
        self.block_size = block_size
        self.nblocks = nblocks
        self.volume_bytes = nblocks * block_size
        self.min_plexes = min_plexes
        self.read_shift = 0  # turns which plex serves which region (tests force a plex)
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.slots)),
                                        thread_name_prefix="plex")
        self._reads = self._read_bytes = self._writes = self._write_bytes = 0
        # read-ahead: pieces by index (blk // PREFETCH_PIECE_BLOCKS), oldest first; a leaf
        # lock, held for dict operations only, never across I/O or a wait
        self._pieces: dict[int, _Piece] = {}
        self._pieces_lock = threading.Lock()
        self._spare: list[bytearray] = []  # piece buffers to reuse
        self._fetched = self._fetch_used = self._fetch_stale = 0
        self._rpool: ThreadPoolExecutor | None = None  # made on the first prefetch
        self._streams: dict[int, PlexSlot] = {}  # the plex each stream (a number) reads from

    # -- membership ---------------------------------------------------------

    def writable(self) -> list[PlexSlot]:
        return [s for s in self.slots if s.writable]

    def readable(self) -> list[PlexSlot]:
        return [s for s in self.slots if s.readable]

    def in_sync(self) -> list[PlexSlot]:
        return [s for s in self.slots if s.state == PlexState.IN_SYNC]

    def fail(self, slot: PlexSlot, err: Exception) -> None:
        """Take a plex out of the in-sync set after an I/O error."""
        if slot.state != PlexState.FAILED:
            log.warning("plex %s failed and leaves the in-sync set: %s", slot.spec, err)
        slot.state = PlexState.FAILED
        slot.errors += 1
        self.drop_prefetched()

    def _check_writable(self, what: str) -> list[PlexSlot]:
        ws = self.writable()
        if len(ws) < self.min_plexes:
            raise MirrorSet.NoWritablePlex(self.min_plexes, what)
        return ws

    def _each(self, fn: Callable[[PlexSlot], None], what: str) -> None:
        """Run ``fn`` on every writable plex in parallel; failures drop the plex."""
        ws = self._check_writable(what)
        if len(ws) == 1:
            results: list[Exception | None] = []
            try:
                fn(ws[0])
                results.append(None)
            except PlexIOError as e:
                results.append(e)
        else:
            futs = [self._pool.submit(fn, s) for s in ws]
            results = []
            for f in futs:
                exc = f.exception()
                if exc is not None and not isinstance(exc, PlexIOError):
                    raise exc
                results.append(exc if isinstance(exc, Exception) else None)
        for s, err in zip(ws, results, strict=True):
            if err is not None:
                self.fail(s, err)
        self._check_writable(what)

    # -- reads --------------------------------------------------------------

    def read_raw(self, slot: PlexSlot, blk: int, count: int) -> bytes:
        """Unverified bytes of ``count`` blocks from one plex (for superblocks, scrub, resync)."""
        data = slot.plex.read(blk * self.block_size, count * self.block_size)
        self._reads += 1
        self._read_bytes += len(data)
        return data

    def read_raw_into(self, slot: PlexSlot, blk: int, dest: memoryview) -> None:
        """``read_raw`` into ``dest`` (whole blocks), which the caller reuses."""
        slot.plex.readinto(blk * self.block_size, dest)
        self._reads += 1
        self._read_bytes += len(dest)

    def reader_for(self, blk: int, readers: Sequence[PlexSlot], stream: int | None = None
                   ) -> PlexSlot:
        """The plex that serves block ``blk`` first.

        A read of ``stream`` (a number naming a run of reads that continue
        each other) stays on the plex that served its first read, whatever
        the blocks' addresses: the kernel's read-ahead of that image keeps
        going, where switching plexes at each region started a new one and
        made a 2-plex cold read 0.86 of a 1-plex one (two streams from one
        disk are no faster than one here: dd of two halves at once took as
        long as one dd of the whole). Any other read goes to the plex of its
        region, in turn, so different files and readers spread over plexes.
        """
        if stream is not None:
            slot = self._streams.get(stream)
            if slot is not None and slot in readers:
                return slot
        slot = readers[(blk // READ_REGION_BLOCKS + self.read_shift) % len(readers)]
        if stream is not None:
            self._streams[stream] = slot
            if len(self._streams) > STREAMS_KEPT:
                self._streams.pop(next(iter(self._streams)), None)
        return slot

    def read_verified(self, ptrs: PtrArray, what: str = "") -> list[bytes | memoryview]:
        """The blocks ``ptrs`` point at, each checked against its pointer's checksum.

        Adjacent blocks are read in one call. A block that fails on one plex is
        read from the next and repaired on the one that failed. A block bad on
        every in-sync plex raises CorruptBlock naming ``what`` and the block.
        """
        n = len(ptrs)
        if n == 0:
            return []
        bs = self.block_size
        order = np.argsort(np.asarray(ptrs["blk"]), kind="stable")
        buf = bytearray(n * bs)
        self.read_into(ptrs[order], memoryview(buf), np.arange(n, dtype=np.int64), what)
        mv = memoryview(buf)
        out: list[bytes | memoryview] = [b""] * n
        for k, i in enumerate(order.tolist()):
            out[i] = mv[k * bs : (k + 1) * bs]  # a view into one buffer: no copy per block
        return out

    def read_into(self, ptrs: PtrArray, out: memoryview, pos: npt.NDArray[np.int64],
                  what: str = "", stream: int | None = None) -> None:
        """Block ``ptrs[i]``, verified, into ``out`` at block position ``pos[i]``.

        Runs adjacent both on the volume and in ``out`` are one read straight
        into ``out``. ``stream`` numbers the run of reads this one belongs
        to (``reader_for``). Errors as ``read_verified``.
        """
        n = len(ptrs)
        if n == 0:
            return
        blks = np.asarray(ptrs["blk"], dtype=np.uint64)
        readers = self.readable()
        if not readers:
            raise MirrorSet.NoWritablePlex(1, "no in-sync plex to read from")
        bs = self.block_size
        cks = np.asarray(ptrs["ck"]).reshape(-1, 2)
        bad: list[tuple[int, PlexSlot]] = []
        for s, e in spans(blks, pos):
            b0 = int(blks[s])
            if b0 + e - s > self.nblocks:  # a verified parent holding a bad pointer
                raise CorruptBlock(what or "volume", b0 + e - s - 1,
                                   f"pointer beyond the volume's {self.nblocks} blocks")
            slot = self.reader_for(b0, readers, stream)
            p = int(pos[s])
            dest = out[p * bs : (p + e - s) * bs]
            parts = (self._from_pieces(b0, e - s, dest, slot) if self._pieces
                     else [(0, e - s, slot, False)])
            failed: list[tuple[int, int]] = []
            for a, b, src, copied in parts:
                if copied:
                    continue
                try:
                    src.plex.readinto((b0 + a) * bs, dest[a * bs : b * bs])
                except PlexIOError as err:
                    self.fail(src, err)
                    bad.extend((i + s, src) for i in range(a, b))
                    failed.append((a, b))
                    readers = self.readable() or readers
                    continue
                self._reads += 1
                self._read_bytes += (b - a) * bs
            got = digests_of_run(dest, bs)
            if got != cks[s:e].tobytes():  # one compare when all is well
                ok = np.all(np.frombuffer(got, dtype="<u8").reshape(-1, 2) == cks[s:e], axis=1)
                for i in np.flatnonzero(~ok).tolist():
                    if any(a <= i < b for a, b in failed):
                        continue  # already counted bad
                    _, _, src, copied = next(p for p in parts if p[0] <= i < p[1])
                    if copied and self._refetch(src, b0 + i, dest[i * bs : (i + 1) * bs],
                                                cks[s + i]):
                        continue
                    bad.append((i + s, src))
        for i, slot in bad:
            p = int(pos[i])
            out[p * bs : (p + 1) * bs] = self._recover(ptrs[i : i + 1], slot, what)

    def _recover(self, ptr: PtrArray, failed: PlexSlot, what: str) -> bytes:
        blk = int(ptr["blk"][0])
        want = bytes(np.asarray(ptr["ck"][0], dtype="<u8").tobytes())
        failed.errors += 1
        log.warning("checksum or I/O error on plex %s, block %d (%s)", failed.spec, blk, what)
        for slot in self.readable():
            if slot is failed:
                continue
            try:
                data = self.read_raw(slot, blk, 1)
            except PlexIOError as err:
                self.fail(slot, err)
                continue
            if checksums([data]).tobytes() == want:
                if failed.writable and not self.read_only:
                    try:
                        failed.plex.writev(blk * self.block_size, [data])
                        failed.repaired += 1
                    except PlexIOError as err:
                        self.fail(failed, err)
                return data
            slot.errors += 1
        raise CorruptBlock(what or "volume", blk, "checksum mismatch on every in-sync plex")

    # -- read-ahead ---------------------------------------------------------

    @property
    def reads_ahead(self) -> bool:
        """Whether any in-sync plex wants read-ahead (``Plex.read_ahead``)."""
        return any(s.plex.read_ahead for s in self.readable())

    def prefetch(self, blks: npt.NDArray[np.uint64]) -> None:
        """Start reading the pieces holding ``blks`` in the background; ``read_into`` uses them.

        A piece is the whole aligned run of PREFETCH_PIECE_BLOCKS around its
        blocks: one read however the blocks lie in it (a file's data is broken
        by the nodes placed between its runs), and any later wish for a block
        in it is already covered. Pieces held or in flight are not read again;
        a full store drops its oldest.
        """
        readers = [s for s in self.readable() if s.plex.read_ahead]
        if len(blks) == 0 or not readers:
            return
        if self._rpool is None:
            self._rpool = ThreadPoolExecutor(max_workers=max(2, len(self.slots)),
                                             thread_name_prefix="prefetch")
        pb = PREFETCH_PIECE_BLOCKS
        bs = self.block_size
        for k in np.unique(blks // np.uint64(pb)).tolist():
            lo, hi = k * pb, min((k + 1) * pb, self.nblocks)
            with self._pieces_lock:
                if k in self._pieces:
                    continue
                buf = self._spare.pop() if self._spare else bytearray(pb * bs)
                slot = readers[(k + self.read_shift) % len(readers)]
                fut: Future[bool] = Future()
                self._pieces[k] = _Piece(lo, hi, slot, buf, fut)
                while len(self._pieces) > PREFETCH_MAX_PIECES:
                    del self._pieces[next(iter(self._pieces))]
            self._fetched += 1
            self._rpool.submit(self._fetch, slot, lo, hi, buf, fut)

    def _fetch(self, slot: PlexSlot, lo: int, hi: int, buf: bytearray,
               fut: Future[bool]) -> None:
        """One piece, in a read-ahead thread; a failed read only makes the piece unusable."""
        bs = self.block_size
        try:
            slot.plex.readinto(lo * bs, memoryview(buf)[: (hi - lo) * bs])
            ok = True
        except PlexIOError:
            ok = False  # the reader meets the error again on its own read, and handles it
        except BaseException as e:  # a bug: let whoever waits on the piece see it
            fut.set_exception(e)
            raise
        fut.set_result(ok)

    def _from_pieces(self, b0: int, n: int, dest: memoryview, slot: PlexSlot
                     ) -> list[tuple[int, int, PlexSlot, bool]]:
        """Blocks [b0, b0 + n) from the pieces that hold them, into ``dest``.

        Returns (start, end, plex, copied) parts covering [0, n) in order: a
        part copied from a piece, or one still to read from ``plex``: the
        piece's own plex when its read failed (so the reader meets that
        plex's error itself), ``slot`` where no piece holds the blocks.
        Waits for a piece still in flight (its reader is ahead of this one).
        A piece this read finishes is dropped and its buffer kept for reuse.
        """
        bs = self.block_size
        pb = PREFETCH_PIECE_BLOCKS
        got: list[tuple[int, int, PlexSlot, bool]] = []
        at = 0
        for k in range(b0 // pb, (b0 + n - 1) // pb + 1):
            with self._pieces_lock:
                piece = self._pieces.get(k)
            if piece is None:
                continue
            a, b = max(b0, piece.lo) - b0, min(b0 + n, piece.hi) - b0
            if a >= b:
                continue
            if a > at:
                got.append((at, a, slot, False))
            at = b
            if not piece.fut.result():
                got.append((a, b, piece.slot, False))
                continue
            dest[a * bs : b * bs] = memoryview(piece.buf)[
                (a + b0 - piece.lo) * bs : (b + b0 - piece.lo) * bs]
            got.append((a, b, piece.slot, True))
            self._fetch_used += b - a
            if b + b0 == piece.hi:
                with self._pieces_lock:
                    if self._pieces.get(k) is piece:
                        del self._pieces[k]
                        if len(self._spare) < PREFETCH_MAX_PIECES // 4:
                            self._spare.append(piece.buf)
        if at < n:
            got.append((at, n, slot, False))
        return got

    def _refetch(self, slot: PlexSlot, blk: int, dest: memoryview, want: npt.NDArray[np.uint64]
                 ) -> bool:
        """A block from a piece of ``slot`` failed its checksum: read it again; True if good.

        A piece is a guess made before the read: its block may have been freed
        and written since. Only the plex's own bytes can count as damage, and
        they are read from the plex that gave the piece, so damage on it is
        charged and repaired there.
        """
        self.drop_prefetched(blk, blk + 1)
        try:
            slot.plex.readinto(blk * self.block_size, dest)
        except PlexIOError:
            return False  # left for the ordinary path: failover and repair
        if bool(np.all(checksums([dest])[0] == want)):
            self._fetch_stale += 1
            return True
        return False

    def drop_prefetched(self, lo: int = 0, hi: int | None = None) -> None:
        """Forget pieces overlapping blocks [lo, hi) (all by default)."""
        if not self._pieces:
            return
        pb = PREFETCH_PIECE_BLOCKS
        with self._pieces_lock:
            if hi is None:
                self._pieces.clear()
                return
            for k in [k for k in self._pieces if k * pb < hi and (k + 1) * pb > lo]:
                del self._pieces[k]

    # -- writes -------------------------------------------------------------

    def write_blocks(self, blks: npt.NDArray[np.uint64], bufs: Sequence[Buffer]) -> None:
        """Write ``bufs[i]`` to block ``blks[i]`` on every writable plex, coalesced.

        Sorted on the way unless already in ascending order (a CP's writes are).
        """
        if len(blks) == 0:
            return
        if len(blks) > 1 and not bool(np.all(blks[1:] > blks[:-1])):
            order = np.argsort(blks, kind="stable")
            blks, bufs = blks[order], [bufs[i] for i in order.tolist()]
        bs = self.block_size
        if self._pieces:
            self.drop_prefetched(int(blks[0]), int(blks[-1]) + 1)
        plan = [(int(blks[s]) * bs, bufs[s:e]) for s, e in runs(blks, WRITE_RUN_BLOCKS)]
        nbytes = len(blks) * bs

        def write(slot: PlexSlot) -> None:
            for off, chunk in plan:
                slot.plex.writev(off, chunk)

        self._each(write, "writing blocks")
        self._writes += len(plan)
        self._write_bytes += nbytes

    def flush(self) -> None:
        self._each(lambda s: s.plex.flush(), "flushing")

    def write_superblocks(self, make: Callable[[PlexSlot], Superblock]) -> None:
        """Write each writable plex's slot for the new CP (both rings), then flush.

        A plex that fails here leaves the set; the survivors' superblock of the
        *next* CP records that, since this one is already written.
        """
        def write(slot: PlexSlot) -> None:
            sb = make(slot)
            raw = sb.encode()
            a, b = cp_offsets(self.volume_bytes, sb.cp)
            slot.plex.writev(a, [raw])
            slot.plex.writev(b, [raw])
            slot.plex.flush()
            slot.sb = sb

        self._each(write, "writing superblocks")

    def check(self, ptrs: PtrArray, repair: bool = False) -> CheckResult:
        """Verify blocks on every readable plex; optionally rewrite bad copies from a good one.

        Unlike ``read_verified`` this reads every plex (in parallel, in batches
        of CHECK_BATCH blocks), so damage on a plex that reads would never
        touch is found too (fsck and scrub).
        """
        result = CheckResult()
        if len(ptrs) == 0:
            return result
        blks = np.asarray(ptrs["blk"], dtype=np.uint64)
        order = np.argsort(blks, kind="stable")
        readers = self.readable()
        result.checked = len(ptrs) * len(readers)
        # one buffer per plex, reused by every batch: reads land in memory already
        # touched, not in a fresh object per run (on this VM, a copy into pages never
        # touched, or handed back to the host, runs several times slower)
        bufs = [memoryview(bytearray(min(len(ptrs), CHECK_BATCH) * self.block_size))
                for _ in readers]
        for b0 in range(0, len(order), CHECK_BATCH):
            self._check_batch(ptrs, order[b0 : b0 + CHECK_BATCH], readers, bufs, repair,
                              result)
        return result

    def _check_batch(self, ptrs: PtrArray, order: npt.NDArray[np.intp],
                     readers: list[PlexSlot], bufs: list[memoryview], repair: bool,
                     result: CheckResult) -> None:
        sblks = np.asarray(ptrs["blk"], dtype=np.uint64)[order]
        want = np.asarray(ptrs["ck"]).reshape(-1, 2)[order]
        bs = self.block_size
        spans = runs(sblks)

        def scan(k: int) -> tuple[list[memoryview | None], set[int], set[int]]:
            """Plex k's copy of the batch (in ``bufs[k]``), its bad blocks, those unread."""
            slot = readers[k]
            copy: list[memoryview | None] = [None] * len(sblks)
            bad: set[int] = set()
            unread: set[int] = set()
            for s, e in spans:
                data = bufs[k][s * bs : e * bs]
                try:
                    self.read_raw_into(slot, int(sblks[s]), data)
                except PlexIOError as err:
                    self.fail(slot, err)
                    unread.update(range(s, e))
                    continue
                blocks = [data[i * bs : (i + 1) * bs] for i in range(e - s)]
                ok = np.all(checksums(blocks) == want[s:e], axis=1)
                copy[s:e] = blocks
                bad.update((np.flatnonzero(~ok) + s).tolist())
            return copy, bad | unread, unread

        one = len(readers) == 1
        scans = [scan(0)] if one else list(self._pool.map(scan, range(len(readers))))
        for k, (_, bad, unread) in enumerate(scans):
            slot = readers[k]
            slot.errors += len(bad)
            if bad:
                result.errors[slot.spec] = result.errors.get(slot.spec, 0) + len(bad)
            for i in sorted(bad):
                blk = int(sblks[i])
                why = READ_ERROR if i in unread else CHECKSUM_MISMATCH
                result.bad.append((slot.spec, blk, int(order[i]), why))
                donor = next((c[i] for c, b, _ in scans if i not in b and c[i] is not None),
                             None)
                if donor is None:
                    if int(order[i]) not in result.unrecoverable:
                        result.unrecoverable.append(int(order[i]))
                    continue
                if not repair or self.read_only or not slot.writable:
                    continue
                try:
                    slot.plex.writev(blk * bs, [donor])
                    slot.repaired += 1
                    result.repaired += 1
                except PlexIOError as err:
                    self.fail(slot, err)

    def add_slot(self, slot: PlexSlot) -> None:
        """A new member (added plexes start stale: only a resync fills them)."""
        self.slots.append(slot)
        self._resize_pool()

    def remove_slot(self, slot: PlexSlot) -> None:
        self.slots.remove(slot)
        self._resize_pool()

    def _resize_pool(self) -> None:
        self.drop_prefetched()
        old = self._pool
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.slots)),
                                        thread_name_prefix="plex")
        old.shutdown(wait=True)

    def slot(self, spec: str) -> PlexSlot:
        for s in self.slots:
            if s.spec == spec:
                return s
        raise KeyError(spec)

    def statistics(self) -> MirrorStats:
        return MirrorStats(self._reads, self._read_bytes, self._writes, self._write_bytes,
                           sum(s.repaired for s in self.slots), sum(s.errors for s in self.slots),
                           self._fetched, self._fetch_used, self._fetch_stale)

    def close(self) -> None:
        if self._rpool is not None:
            self._rpool.shutdown(wait=True)  # no read-ahead outlives the plexes
        self.drop_prefetched()
        self._pool.shutdown(wait=True)
        for s in self.slots:
            s.plex.close()
