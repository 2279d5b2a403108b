"""Fault tests over 2 and 3 plexes: failures leave the set, reads heal, opening rules hold.

Each test builds a small volume on image files (``make_bed``), closes it, and
reopens its plexes through ``FaultyPlex`` wrappers (``Bed.attach``) or from
the volume file. What every scenario must show (DESIGN.md, "Plex failure and
resync bases", "Reads, checksums, scrub"; issue 3):

* a plex that fails any step of a CP (a write, the flush, the superblock
  write, or the whole device) leaves the in-sync set; the CP commits on the
  others; the survivors' next superblock records the plex as failed with its
  last CP, and they hold a ``resync-base`` snapshot whose GUID is the CP id
  the failed plex holds;
* nothing committed is lost: every file reads back, and after a resync every
  plex opened alone and read-only passes fsck and holds every file;
* a bad copy (a silent bit flip, a damaged image) is read from another plex
  and rewritten; a block bad everywhere is a ``CorruptBlock`` naming the
  object and the offset;
* the opening rules of issue 3, item 4, and its three acceptance scenarios.

Expected warnings are declared with ``expect_log``; any other fails the test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from mirrorfs.errors import CorruptBlock, FsError, MirrorfsError, PlexError, PlexIOError, ReadOnly
from mirrorfs.fs import fsck, scrub
from mirrorfs.mirror import MirrorSet
from mirrorfs.ondisk import PlexState, SnapKind, slot_offsets
from mirrorfs.plex import Buffer, FilePlex
from mirrorfs.resync import Examination, PlexReport, examine
from mirrorfs.store import _planes as planes
from mirrorfs.testing import FaultyPlex
from mirrorfs.volume import Volume

SIZE = 32 << 20  # bytes per plex: small, so every image is cheap to create and hash
BIG = 64 << 20  # bytes per plex for the acceptance scenarios (8 MiB of writes)
BS = 4096
LEAVES = "leaves the in-sync set"  # the warning MirrorSet.fail logs
BAD_COPY = "checksum or I/O error"  # the warning a verified read logs before it heals

Files = dict[str, bytes]
NPLEXES = pytest.mark.parametrize("nplexes", [2, 3])


@dataclasses.dataclass
class Bed:
    """A closed volume on image files and the files it must hold."""

    vf: Path
    paths: list[str]
    files: Files
    rng: random.Random

    def attach(self) -> tuple[Volume, list[FaultyPlex]]:
        """Open every plex through a FaultyPlex (no faults armed yet)."""
        fps = [FaultyPlex(FilePlex(p)) for p in self.paths]
        return Volume.attach(fps, cp_interval=None), fps

    def open(self, **kwargs: object) -> Volume:
        return Volume.open(self.vf, cp_interval=None, **kwargs)  # type: ignore[arg-type]

    def write(self, vol: Volume, path: str, nbytes: int) -> None:
        """Write a new file of random bytes and note it in the model."""
        data = self.rng.randbytes(nbytes)
        vol.write_bytes(path, data)
        self.files[path] = data


def make_bed(tmp_path: Path, nplexes: int, size: int = SIZE, min_plexes: int = 1) -> Bed:
    """A volume with a directory, small and 1 MiB files, a snapshot, then more files."""
    paths = [str(tmp_path / f"p{i}.img") for i in range(nplexes)]
    bed = Bed(tmp_path / "v.toml", paths, {}, random.Random(nplexes * 1000 + min_plexes))
    vol = Volume.create(paths, size, volume_file=bed.vf, cp_interval=None,
                        min_plexes=min_plexes)
    try:
        vol.mkdir("/d")
        bed.write(vol, "/small", 10_000)
        bed.write(vol, "/d/one-mib", 1 << 20)
        vol.snapshot("s1")
        bed.write(vol, "/d/later", 70_000)
        vol.sync()
    finally:
        vol.close()
    return bed


def check_files(vol: Volume, files: Files, exact: bool = True) -> None:
    """Every file of the model reads back identical and, if ``exact``, no other file exists."""
    for path, data in files.items():
        assert vol.read_bytes(path) == data, path
    if not exact:
        return
    names = {p for p in files if p.count("/") == 1}
    assert set(vol.listdir("/")) - {".snapshot", "d"} == {p[1:] for p in names}


def each_plex_alone(bed: Bed) -> None:
    """Every plex opened alone and read-only holds every file and passes fsck."""
    for p in bed.paths:
        vol = bed.open(only=[p], read_only=True)
        try:
            check_files(vol, bed.files)
            report = fsck(vol.store)
            assert report.clean, (p, [str(f) for f in report.findings])
        finally:
            vol.close()


def resync_and_check(bed: Bed) -> None:
    """Reopen with every plex, resync, then every plex alone is complete and at one CP."""
    vol = bed.open()
    try:
        check_files(vol, bed.files)
        vol.resync()
        assert all(s.state == PlexState.IN_SYNC for s in vol.mirror.slots)
    finally:
        vol.close()
    ex = examine(bed.paths)
    assert not ex.split_brain
    assert len({(r.cp, r.sb.cp_id if r.sb else None) for r in ex.plexes}) == 1
    assert all(r.state == "in-sync" for r in ex.plexes)
    each_plex_alone(bed)


def report_of(ex: Examination, spec: str) -> PlexReport:
    return next(r for r in ex.plexes if r.spec == spec)


def bases(rep: PlexReport) -> dict[uuid.UUID, int]:
    """The resync-base snapshots a plex holds: GUID -> CP."""
    return {r.guid: r.cp for r in rep.snapshots if r.kind == SnapKind.RESYNC_BASE}


def check_departed(bed: Bed, failed: str, held_cp: int, last_cp: Sequence[int]) -> None:
    """After a failure: the survivors record ``failed`` as failed and pin what it holds."""
    ex = examine(bed.paths)
    gone = report_of(ex, failed)
    assert gone.sb is not None
    assert gone.cp == held_cp, f"the failed plex holds CP {gone.cp}, expected {held_cp}"
    assert gone.state == "stale" and gone.recorded == "failed"
    survivors = [r for r in ex.plexes if r.spec != failed]
    assert len({(r.cp, r.sb.cp_id if r.sb else None) for r in survivors}) == 1
    for rep in survivors:
        assert rep.sb is not None and rep.state == "in-sync" and rep.cp > held_cp
        m = rep.sb.member(gone.sb.plex_uuid)
        assert m is not None and m.state == PlexState.FAILED, rep.spec
        assert m.last_cp in last_cp, f"{rep.spec} records last CP {m.last_cp}"
        pinned = bases(rep)
        assert pinned.get(gone.sb.cp_id) == gone.cp, (
            f"{rep.spec}: no resync base with the failed plex's CP id {gone.sb.cp_id}")


def image_digests(paths: Sequence[str]) -> list[str]:
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


def data_block(vol: Volume, path: str, leaf: int) -> int:
    """The volume block holding leaf ``leaf`` of a file."""
    tree = vol.store.objects.tree(vol.stat(path).ino)
    return int(tree.leaf_ptrs(leaf, leaf + 1)["blk"][0])


def read_until_repaired(vol: Volume, path: str, leaf: int, data: bytes, bad: int) -> None:
    """Read a file whole, then its leaf ``leaf`` with each plex in turn serving it first.

    Every read must return ``data``. Which plex serves a block first depends on
    its region (``MirrorSet.reader_for``); turning ``read_shift`` through every
    plex makes plex ``bad`` serve it once, which must repair it.
    """
    slot = vol.mirror.slots[bad]
    assert vol.read_bytes(path) == data
    ptrs = vol.store.objects.tree(vol.stat(path).ino).leaf_ptrs(leaf, leaf + 1)
    for shift in range(len(vol.mirror.slots)):
        if slot.repaired:
            break
        vol.mirror.read_shift = shift
        got = vol.mirror.read_verified(ptrs, path)
        assert [bytes(g) for g in got] == [data[leaf * BS : (leaf + 1) * BS]]
    vol.mirror.read_shift = 0
    assert vol.read_bytes(path) == data


def read_block(path: str, blk: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(blk * BS)
        return f.read(BS)


def write_block(path: str, blk: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(blk * BS)
        f.write(data)


class SlotFaultyPlex(FaultyPlex):
    """A FaultyPlex that fails inside step 4 of a CP: a superblock slot write or its flush.

    ``fail_slot`` = 0 fails the next ring A slot write, 1 lets ring A through and
    fails ring B; ``fail_slot_flush`` fails the flush that follows the slots.
    """

    def __init__(self, inner: FilePlex, volume_bytes: int) -> None:
        super().__init__(inner)
        self.slots = frozenset(slot_offsets(volume_bytes))
        self.fail_slot: int | None = None
        self.fail_slot_flush = False
        self._slot_writes = 0
        self._after_slot = False

    def writev(self, offset: int, bufs: Sequence[Buffer]) -> None:
        if offset in self.slots:
            self._after_slot = True
            if self.fail_slot is not None:
                if self._slot_writes == self.fail_slot:
                    self.fail_slot = None
                    raise PlexIOError(self.spec, f"slot write at {offset}: injected I/O error")
                self._slot_writes += 1
        super().writev(offset, bufs)

    def flush(self) -> None:
        if self._after_slot and self.fail_slot_flush:
            self.fail_slot_flush = False
            raise PlexIOError(self.spec, "flush after the slots: injected I/O error")
        self._after_slot = False
        super().flush()


# -- a plex fails during a CP ---------------------------------------------------------


@NPLEXES
def test_a_write_error_mid_cp_drops_the_plex_and_the_cp_commits_on_the_others(
        tmp_path: Path, expect_log: Callable[[str], None], nplexes: int) -> None:
    """The last plex fails its second write of a CP: it leaves, the CP commits without it,
    the survivors record it failed at CP n and pin CP n (its CP id) as a resync base."""
    expect_log(LEAVES)
    bed = make_bed(tmp_path, nplexes)
    vol, fps = bed.attach()
    try:
        n = vol.store.cp
        bed.write(vol, "/during", 6 << 20)  # more than one run of 4 MiB: several writes
        fps[-1].fail_after_writes = fps[-1].writes + 1
        assert vol.sync()
        assert fps[-1].writes >= 2, "the fault must hit after a write of the CP went through"
        states = [s.state for s in vol.mirror.slots]
        assert states == [PlexState.IN_SYNC] * (nplexes - 1) + [PlexState.FAILED]
        assert vol.store.cp > n
        check_files(vol, bed.files)
        bed.write(vol, "/after", 300_000)
        vol.sync()
    finally:
        vol.close()
    check_departed(bed, bed.paths[-1], n, [n])
    resync_and_check(bed)


@NPLEXES
def test_a_flush_error_drops_the_plex_at_cp_n(
        tmp_path: Path, expect_log: Callable[[str], None], nplexes: int) -> None:
    """A plex whose flush (step 3) fails never gets slot n+1: it holds CP n, which is pinned."""
    expect_log(LEAVES)
    bed = make_bed(tmp_path, nplexes)
    vol, fps = bed.attach()
    try:
        n = vol.store.cp
        bed.write(vol, "/during", 200_000)
        fps[0].fail_flush = True
        assert vol.sync()
        assert vol.mirror.slots[0].state == PlexState.FAILED
        assert all(s.state == PlexState.IN_SYNC for s in vol.mirror.slots[1:])
        bed.write(vol, "/after", 5000)
    finally:
        vol.close()
    check_departed(bed, bed.paths[0], n, [n])
    resync_and_check(bed)


@NPLEXES
@pytest.mark.parametrize(("fault", "holds"), [("ring-a", 0), ("ring-b", 1), ("flush", 1)])
def test_a_superblock_write_error_pins_both_cps_the_plex_may_hold(
        tmp_path: Path, expect_log: Callable[[str], None], nplexes: int, fault: str,
        holds: int) -> None:
    """Failing in step 4 the plex may hold CP n or n+1: both are pinned on the survivors,
    and the one it really holds (n if ring A failed, else n+1) is among them."""
    expect_log(LEAVES)
    bed = make_bed(tmp_path, nplexes)
    sps = [SlotFaultyPlex(FilePlex(p), SIZE) for p in bed.paths]
    vol = Volume.attach(sps, cp_interval=None)
    try:
        n = vol.store.cp
        bed.write(vol, "/during", 100_000)
        if fault == "flush":
            sps[-1].fail_slot_flush = True
        else:
            sps[-1].fail_slot = 0 if fault == "ring-a" else 1
        assert vol.sync()
        assert vol.mirror.slots[-1].state == PlexState.FAILED
        pinned = {r.cp for r in vol.snapshots() if r.kind == SnapKind.RESYNC_BASE}
        assert pinned == {n, n + 1}
        bed.write(vol, "/after", 20_000)
    finally:
        vol.close()
    check_departed(bed, bed.paths[-1], n + holds, [n, n + 1])
    ex = examine(bed.paths)
    for rep in ex.plexes[:-1]:
        assert sorted(bases(rep).values()) == [n, n + 1]
    resync_and_check(bed)


@NPLEXES
def test_a_vanished_plex_leaves_and_may_stay_away_without_degraded(
        tmp_path: Path, expect_log: Callable[[str], None], nplexes: int) -> None:
    """A plex whose device vanishes fails on its next read or write; the volume goes on.
    Recorded failed, it may be missing at the next open without --degraded; when it comes
    back, a resync brings it in sync."""
    expect_log(LEAVES)
    expect_log(BAD_COPY)
    bed = make_bed(tmp_path, nplexes)
    vol, fps = bed.attach()
    try:
        n = vol.store.cp
        fps[1].vanished = True
        check_files(vol, bed.files)  # reads that pick the vanished plex heal from another
        bed.write(vol, "/during", 400_000)
        assert vol.sync()
        assert vol.mirror.slots[1].state == PlexState.FAILED
        check_files(vol, bed.files)
    finally:
        vol.close()
    check_departed(bed, bed.paths[1], n, [n])
    away = bed.paths[1] + ".away"
    os.rename(bed.paths[1], away)
    vol = bed.open()  # recorded failed: no --degraded needed
    try:
        assert [s.spec for s in vol.mirror.slots] == [p for p in bed.paths if p != bed.paths[1]]
        check_files(vol, bed.files)
        bed.write(vol, "/while-away", 30_000)
    finally:
        vol.close()
    os.rename(away, bed.paths[1])
    resync_and_check(bed)


# -- verified reads --------------------------------------------------------------------


@NPLEXES
def test_a_silent_bit_flip_on_read_is_served_from_another_plex_and_rewritten(
        tmp_path: Path, expect_log: Callable[[str], None], nplexes: int) -> None:
    """A bit that flips on its way from a plex fails the checksum: the read returns the bytes
    of another plex and rewrites them onto the flipping one; the plex stays in sync."""
    expect_log(BAD_COPY)
    bed = make_bed(tmp_path, nplexes)
    vol, fps = bed.attach()
    try:
        blk = data_block(vol, "/d/one-mib", 100)
        bad = nplexes - 1
        fps[bad].flip_on_read.add(blk * BS + 1234)
        slot = vol.mirror.slots[bad]
        writes = fps[bad].writes
        read_until_repaired(vol, "/d/one-mib", 100, bed.files["/d/one-mib"], nplexes - 1)
        # the flip stays armed: every read that starts on the bad plex heals it again
        assert slot.repaired >= 1 and fps[bad].writes == writes + slot.repaired
        assert all(s.state == PlexState.IN_SYNC for s in vol.mirror.slots)
        fps[bad].flip_on_read.clear()
        good = nplexes - 2
        assert read_block(bed.paths[bad], blk) == read_block(bed.paths[good], blk)
    finally:
        vol.close()


@NPLEXES
def test_a_damaged_block_on_one_image_is_read_from_another_and_repaired_on_disk(
        tmp_path: Path, expect_log: Callable[[str], None], nplexes: int) -> None:
    """Garbage written into one image's data block: reads return the right bytes, and the
    image file holds the good plex's block afterwards."""
    expect_log(BAD_COPY)
    bed = make_bed(tmp_path, nplexes)
    vol = bed.open(read_only=True)
    try:
        blk = data_block(vol, "/d/one-mib", 17)
    finally:
        vol.close()
    good = read_block(bed.paths[0], blk)
    bad = nplexes - 1
    write_block(bed.paths[bad], blk, os.urandom(BS))
    vol = bed.open()
    try:
        slot = vol.mirror.slots[bad]
        read_until_repaired(vol, "/d/one-mib", 17, bed.files["/d/one-mib"], bad)
        assert slot.repaired == 1
    finally:
        vol.close()
    assert read_block(bed.paths[bad], blk) == good
    each_plex_alone(bed)


@NPLEXES
def test_a_block_bad_on_every_plex_raises_corrupt_block_naming_the_object_and_offset(
        tmp_path: Path, expect_log: Callable[[str], None], nplexes: int) -> None:
    """The same data block damaged on every plex: the read fails with CorruptBlock naming the
    file's object (inode), the block and the offset in the file; scrub lists it as
    unrecoverable with its path; the plexes stay in sync."""
    expect_log(BAD_COPY)
    bed = make_bed(tmp_path, nplexes)
    leaf = 33
    vol = bed.open(read_only=True)
    try:
        blk = data_block(vol, "/d/one-mib", leaf)
        ino = vol.stat("/d/one-mib").ino
    finally:
        vol.close()
    for p in bed.paths:
        write_block(p, blk, os.urandom(BS))
    vol = bed.open()
    try:
        with pytest.raises(CorruptBlock) as info:
            vol.read_bytes("/d/one-mib")
        msg = str(info.value)
        assert f"inode {ino}" in msg and f"block {blk}" in msg, msg
        assert f"offset {leaf * BS}" in msg, msg
        assert all(s.state == PlexState.IN_SYNC for s in vol.mirror.slots)
        report = scrub(vol.store).as_scrub_dict()
        assert report["repaired"] == 0
        lost = report["unrecoverable"]
        assert isinstance(lost, list) and len(lost) == 1
        assert lost[0]["path"] == "/d/one-mib" and lost[0]["block"] == blk
        assert f"offset {leaf * BS}" in lost[0]["detail"]
        assert report["errors"] == dict.fromkeys(bed.paths, 1)
        assert vol.read_bytes("/small") == bed.files["/small"]
    finally:
        vol.close()


def test_fsck_tells_a_plex_that_cannot_read_from_a_copy_that_is_wrong(
        tmp_path: Path, expect_log: Callable[[str], None]) -> None:
    """A flipped byte on plex 0 is a "checksum mismatch" there; every block of a plex whose
    reads fail is a "read error", not a mismatch (the operator replaces a disk for one and
    scrubs for the other)."""
    expect_log(LEAVES)
    bed = make_bed(tmp_path, 3)
    vol = bed.open(read_only=True)
    try:
        blk = data_block(vol, "/d/one-mib", 5)
    finally:
        vol.close()
    with open(bed.paths[0], "r+b") as img:
        img.seek(blk * BS + 100)
        old = img.read(1)
        img.seek(blk * BS + 100)
        img.write(bytes([old[0] ^ 1]))
    vol, fps = bed.attach()
    try:
        fps[2].fail_reads = True
        found = [f for f in fsck(vol.store).findings if f.check == "checksums"]
    finally:
        vol.close()
    by_plex: dict[str | None, set[str]] = {}
    for f in found:
        by_plex.setdefault(f.plex, set()).add(f.detail.split(" in ")[0])
    assert by_plex[bed.paths[0]] == {"checksum mismatch"}, found
    assert by_plex[fps[2].spec] == {"read error"}, found
    assert bed.paths[1] not in by_plex, found


# -- min_plexes --------------------------------------------------------------------------


def test_min_plexes_two_of_two_turns_read_only_and_loses_nothing_committed(
        tmp_path: Path, expect_log: Callable[[str], None]) -> None:
    """With min_plexes=2 and one of two plexes failing, the CP does not commit: the sync raises
    NoWritablePlex, later writes raise ReadOnly (EROFS), every committed file still reads,
    and reopening with --degraded reads everything committed."""
    expect_log(LEAVES)
    bed = make_bed(tmp_path, 2, min_plexes=2)
    vol, fps = bed.attach()
    try:
        assert vol.mirror.min_plexes == 2
        n = vol.store.cp
        vol.write_bytes("/lost", b"never committed" * 100)
        fps[1].fail_writes = True
        with pytest.raises(MirrorSet.NoWritablePlex, match="fewer than 2 plexes"):
            vol.sync()
        assert vol.store.cp == n
        with pytest.raises(ReadOnly, match="earlier commit failed"):
            vol.store.write(vol.stat("/small").ino, 0, b"x")
        with pytest.raises(FsError, match="read-only"):
            vol.write_bytes("/more", b"y")
        check_files(vol, bed.files, exact=False)  # "/lost" is still in memory
    finally:
        vol.close()
    ex = examine(bed.paths)
    assert {r.cp for r in ex.plexes} == {n}
    vol = bed.open(degraded=True)
    try:
        check_files(vol, bed.files)
        assert not vol.exists("/lost")
    finally:
        vol.close()
    with pytest.raises(MirrorfsError, match="fewer than 2 plexes"):
        bed.open(only=[bed.paths[0]], degraded=True)  # one plex cannot satisfy min_plexes
    each_plex_alone(bed)


# -- opening rules ---------------------------------------------------------------------------


@NPLEXES
def test_a_missing_in_sync_plex_refuses_without_degraded_and_opens_with_it(
        tmp_path: Path, nplexes: int) -> None:
    """Acceptance (c): with the last plex's image moved away, opening fails with a PlexError
    naming it and --degraded; with degraded=True it opens, records the plex missing and pins
    its CP; moved back, a resync brings it in."""
    bed = make_bed(tmp_path, nplexes)
    gone = bed.paths[-1]
    held = report_of(examine(bed.paths), gone).sb
    assert held is not None
    os.rename(gone, gone + ".away")
    with pytest.raises(PlexError) as info:
        bed.open()
    assert gone in str(info.value) and "--degraded" in str(info.value)
    vol = bed.open(degraded=True)
    try:
        check_files(vol, bed.files)
        bed.write(vol, "/degraded", 50_000)
    finally:
        vol.close()
    ex = examine(bed.paths[:-1])
    for rep in ex.plexes:
        assert rep.sb is not None
        m = rep.sb.member(held.plex_uuid)
        assert m is not None and m.state == PlexState.MISSING and m.last_cp == held.cp
        assert bases(rep).get(held.cp_id) == held.cp
    os.rename(gone + ".away", gone)
    resync_and_check(bed)


@NPLEXES
def test_a_plex_recorded_out_of_sync_may_be_missing_without_degraded(
        tmp_path: Path, nplexes: int) -> None:
    """A plex taken offline is recorded out of sync: its image may be absent at the next
    open, which needs no --degraded."""
    bed = make_bed(tmp_path, nplexes)
    vol = bed.open()
    try:
        vol.plex_offline(bed.paths[0])
    finally:
        vol.close()
    os.rename(bed.paths[0], bed.paths[0] + ".away")
    vol = bed.open()
    try:
        check_files(vol, bed.files)
        bed.write(vol, "/without-p0", 10_000)
    finally:
        vol.close()
    os.rename(bed.paths[0] + ".away", bed.paths[0])
    resync_and_check(bed)


@NPLEXES
def test_only_one_plex_read_only_writes_nothing_to_any_plex(
        tmp_path: Path, nplexes: int) -> None:
    """``only=[p]`` with read_only: reads and fsck work; no byte of any image changes."""
    bed = make_bed(tmp_path, nplexes)
    before = image_digests(bed.paths)
    for p in bed.paths:
        vol = bed.open(only=[p], read_only=True)
        try:
            assert [s.spec for s in vol.mirror.slots] == [p]
            check_files(vol, bed.files)
            assert fsck(vol.store).clean
            assert not vol.sync()
            with pytest.raises(FsError, match="read-only"):
                vol.write_bytes("/nope", b"x")
        finally:
            vol.close()
    assert image_digests(bed.paths) == before


@NPLEXES
def test_only_one_plex_without_degraded_or_read_only_is_refused(
        tmp_path: Path, nplexes: int) -> None:
    """Leaving in-sync plexes out of a writable open needs --degraded (no accidental split)."""
    bed = make_bed(tmp_path, nplexes)
    before = image_digests(bed.paths)
    with pytest.raises(MirrorfsError, match="--degraded"):
        bed.open(only=[bed.paths[0]])
    assert image_digests(bed.paths) == before


@NPLEXES
def test_only_one_plex_degraded_records_the_others_as_missing(
        tmp_path: Path, nplexes: int) -> None:
    """``only=[p1]`` with degraded may write; the plexes left out are recorded missing at
    their last CP, that CP is pinned as a resync base, and a resync brings them back."""
    bed = make_bed(tmp_path, nplexes)
    labels = {r.spec: r.sb for r in examine(bed.paths).plexes}
    vol = bed.open(only=[bed.paths[0]], degraded=True)
    try:
        bed.write(vol, "/alone", 123_456)
    finally:
        vol.close()
    ex = examine(bed.paths)
    alone = report_of(ex, bed.paths[0])
    assert alone.sb is not None and alone.state == "in-sync"
    for p in bed.paths[1:]:
        old = labels[p]
        assert old is not None
        m = alone.sb.member(old.plex_uuid)
        assert m is not None and m.state == PlexState.MISSING and m.last_cp == old.cp
        assert bases(alone).get(old.cp_id) == old.cp
        rep = report_of(ex, p)
        assert rep.state == "stale" and rep.recorded == "missing" and rep.cp == old.cp
    assert not ex.split_brain
    resync_and_check(bed)


# -- acceptance (a) and (b) ------------------------------------------------------------------


def test_acceptance_a_scrub_repairs_1_mib_overwritten_on_plex_2(tmp_path: Path) -> None:
    """Three plexes; 1 MiB in the middle of the used data of plex 2's image overwritten:
    scrub reports exactly the used blocks there as errors on plex 2, all repaired, none
    unrecoverable; then fsck of each plex alone is clean and every file reads identical."""
    bed = make_bed(tmp_path, 3, size=BIG)
    vol = bed.open()
    try:
        bed.write(vol, "/big", 4 << 20)
        vol.snapshot("s2")
        bed.write(vol, "/d/tail", 1 << 20)
        vol.sync()
        held = planes.to_blocks(vol.store.alloc.held())
        reserved = set(vol.store.reserved.tolist())
        used = [b for b in held.tolist() if b not in reserved]
    finally:
        vol.close()
    mid = used[len(used) // 2]
    damaged = [b for b in used if mid <= b < mid + (1 << 20) // BS]
    assert len(damaged) >= 200, "the 1 MiB must lie in the used data"
    with open(bed.paths[1], "r+b") as f:
        f.seek(mid * BS)
        f.write(random.Random(2).randbytes(1 << 20))
    vol = bed.open()
    try:
        report = scrub(vol.store).as_scrub_dict()
        assert vol.mirror.statistics().repaired == len(damaged)
    finally:
        vol.close()
    assert report["errors"] == {bed.paths[1]: len(damaged)}
    assert report["repaired"] == len(damaged)
    assert report["unrecoverable"] == [] and report["other_findings"] == []
    for blk in damaged:
        assert read_block(bed.paths[1], blk) == read_block(bed.paths[0], blk)
    each_plex_alone(bed)


def test_acceptance_b_offline_plex_3_is_stale_with_a_base_on_plexes_1_and_2(
        tmp_path: Path) -> None:
    """Plex 3 taken offline, 8 MiB written: examine shows plex 3 stale (recorded offline)
    with a lower CP than plexes 1 and 2, which hold a resync base whose GUID is plex 3's
    current CP id."""
    bed = make_bed(tmp_path, 3, size=BIG)
    vol = bed.open()
    try:
        vol.plex_offline(bed.paths[2])
        for i in range(8):
            bed.write(vol, f"/eight-{i}", 1 << 20)
        vol.sync()
    finally:
        vol.close()
    ex = examine(bed.paths)
    p1, p2, p3 = (report_of(ex, p) for p in bed.paths)
    assert p3.sb is not None and p3.state == "stale" and p3.recorded == "offline"
    for rep in (p1, p2):
        assert rep.state == "in-sync" and rep.cp > p3.cp
        assert bases(rep).get(p3.sb.cp_id) == p3.cp
        doc = rep.as_dict()
        assert str(p3.sb.cp_id) in {s["guid"] for s in doc["snapshots"]  # type: ignore[attr-defined]
                                    if s["kind"] == "resync-base"}
    assert not ex.split_brain
    resync_and_check(bed)
