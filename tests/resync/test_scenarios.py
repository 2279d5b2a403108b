"""Outage scenarios over 2 and 3 plexes: a plex comes back by copying only what it missed.

Each scenario builds a 64 MiB volume on image files with 8 MiB of data,
takes plexes away in one way (offline on purpose, left out of an open,
failed during a CP, added new, or split and used apart), writes while they
are away, brings them back with one resync and then checks:

* every plex opened alone and read-only passes fsck and shows the same
  image: the file tree with its bytes, equal to the model the test keeps,
  and the same snapshots (name, GUID, CP and tree; user snapshots equal the
  model too); ``examine`` reports every plex in sync and no split brain;
* every target copied exactly its plan (``blocks_copied == plan.blocks``);
* for outages, the data changed while away <= plan bytes <= 1.10 x the data
  changed + META_BLOCKS blocks of metadata.

Data changed. Writes are CHUNK-sized at CHUNK-aligned places drawn without
replacement from all places of all files, so no byte is written twice and
the bytes written while a plex was away are exactly the data it misses.

Metadata allowance. What a plan copies beyond the data is the metadata of
the newest image and of the snapshots taken while away: leaves and nodes of
each touched file's tree, object-table and directory leaves, plane leaves,
snapshot-table leaves and the tree nodes above them. Measured over these
scenarios it is 7 to 23 blocks (the most with four CPs, or two snapshots,
while away); META_BLOCKS = 32 leaves room for that and still catches a full
copy, which would move more than 2048 blocks (the 8 MiB of data) where the
bound allows at most 1.10 x 96 + 32 = 138 (the largest change is 96 blocks),
and it catches the re-copy of one CP's change the plex already held (a
plex that failed in its ring-B superblock write used to get its last CP's
older versions again: 48 data blocks + 43).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from mirrorfs.errors import PlexError, PlexIOError
from mirrorfs.fs import fsck
from mirrorfs.ondisk import RING_BYTES, SnapKind
from mirrorfs.plex import Buffer, FilePlex, Plex
from mirrorfs.resync import NotEnoughSpace, SplitBrain, examine
from mirrorfs.resync import ResyncReport as Report
from mirrorfs.testing import FaultyPlex
from mirrorfs.volume import Volume, read_label

BS = 4096
VOLUME_BYTES = 64 << 20
FILES = 16
FILE_BYTES = 512 << 10  # 16 files of 512 KiB: 8 MiB of data, 2048 blocks
CHUNK = 16 << 10  # bytes of one scattered write
CHUNKS_PER_CP = 6  # 96 KiB written per CP while a plex is away
META_BLOCKS = 32  # metadata a plan may copy beyond 1.10 x the data changed (see above)

Tree = dict[str, bytes | None]  # path -> bytes of a file, None for a directory


@dataclasses.dataclass(frozen=True)
class Image:
    """What one plex shows: its file tree and its snapshots with their trees."""

    tree: Tree
    snapshots: dict[str, tuple[str, int, str, Tree]]  # name -> (GUID, CP, kind, tree)


def walk(vol: Volume, top: str = "/") -> Tree:
    """Every file and directory under ``top`` (paths relative to it), with file bytes."""
    base = top.rstrip("/")
    out: Tree = {}
    todo = [""]
    while todo:
        rel = todo.pop()
        for name, attr in vol.scandir(base + rel or "/"):
            if not base and not rel and name == ".snapshot":
                continue
            path = f"{rel}/{name}"
            if stat.S_ISDIR(attr.mode):
                out[path] = None
                todo.append(path)
            else:
                out[path] = vol.fs.read(attr.ino, 0, attr.size)  # one call: fast
    return out


def image_of(vol: Volume) -> Image:
    snaps = {r.name: (str(r.guid), r.cp, r.kind.label, walk(vol, f"/.snapshot/{r.name}"))
             for r in vol.snapshots()}
    return Image(walk(vol), snaps)


def image_digest(paths: list[str]) -> list[str]:
    """SHA-256 of each image file: proves that nothing at all was written."""
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


class Bed:
    """A volume on image files in ``tmp`` and the model of what it must hold."""

    def __init__(self, tmp: Path, nplexes: int, seed: int = 0) -> None:
        self.vf = tmp / "v.toml"
        self.specs = [str(tmp / f"p{i}.img") for i in range(nplexes)]
        self.rng = random.Random(seed * 100 + nplexes)
        self.model: dict[str, bytearray] = {}
        self.user_snaps: dict[str, Tree] = {}
        places = [(f, c) for f in range(FILES) for c in range(FILE_BYTES // CHUNK)]
        self.rng.shuffle(places)
        self.places = places  # CHUNK-aligned places never written since the files were made

    def create(self, nplexes: int | None = None) -> Volume:
        """Create the volume on the first ``nplexes`` plexes and write the files."""
        vol = Volume.create(self.specs[:nplexes], VOLUME_BYTES, volume_file=self.vf,
                            cp_interval=None)
        vol.mkdir("/data")
        for f in range(FILES):
            data = self.rng.randbytes(FILE_BYTES)
            vol.write_bytes(self.path(f), data)
            self.model[self.path(f)] = bytearray(data)
        vol.sync()
        return vol

    def open(self, only: list[str] | None = None, *, read_only: bool = False,
             degraded: bool = False, prefer: str | None = None,
             split_ok: bool = False) -> Volume:
        return Volume.open(self.vf, only=only, read_only=read_only, degraded=degraded,
                           prefer=prefer, split_ok=split_ok, cp_interval=None)

    @staticmethod
    def path(f: int) -> str:
        return f"/data/f{f:02d}"

    def write(self, vol: Volume, chunks: int = CHUNKS_PER_CP, sync: bool = True) -> int:
        """Overwrite ``chunks`` never-written places; commit a CP; return the bytes written."""
        for _ in range(chunks):
            f, c = self.places.pop()
            data = self.rng.randbytes(CHUNK)
            with vol.open_file(self.path(f), "r+b") as fh:
                fh.seek(c * CHUNK)
                fh.write(data)
            self.model[self.path(f)][c * CHUNK : (c + 1) * CHUNK] = data
        if sync:
            assert vol.sync()
        return chunks * CHUNK

    def snapshot(self, vol: Volume, name: str) -> None:
        vol.snapshot(name)
        self.user_snaps[name] = self.tree()

    def delete_snapshot(self, vol: Volume, name: str) -> None:
        vol.delete_snapshot(name)
        del self.user_snaps[name]

    def tree(self) -> Tree:
        out: Tree = {"/data": None}
        out.update({p: bytes(b) for p, b in self.model.items()})
        return out


def check_plexes_alone(bed: Bed, specs: list[str] | None = None) -> Image:
    """Every plex alone, read-only: fsck clean, one identical image, equal to the model."""
    specs = specs or bed.specs
    exam = examine(specs)
    assert not exam.split_brain
    assert [p.state for p in exam.plexes] == ["in-sync"] * len(specs), exam.as_dict()
    images = []
    for spec in specs:
        vol = bed.open(only=[spec], read_only=True)
        try:
            report = fsck(vol.store)
            assert report.clean, (spec, [str(f) for f in report.findings])
            images.append(image_of(vol))
        finally:
            vol.close()
    first = images[0]
    for spec, img in zip(specs[1:], images[1:], strict=True):
        assert img.tree == first.tree, f"{spec} differs from {specs[0]}"
        assert img.snapshots == first.snapshots, f"{spec}: snapshots differ from {specs[0]}"
    assert first.tree == bed.tree()
    for name, tree in bed.user_snaps.items():
        assert first.snapshots[name][3] == tree, f"snapshot {name} differs from the model"
    assert not [n for n, s in first.snapshots.items() if s[2] == "resync-base"], \
        "a resync base outlived the resync it served"
    return first


def check_copy(report: Report, changed: dict[str, int] | None = None) -> None:
    """Each target copied exactly its plan; with ``changed``, the plan follows the change."""
    assert len(report.results) == len(report.plans) > 0
    for plan, res in zip(report.plans, report.results, strict=True):
        assert res.error is None, res.error
        assert res.target == plan.target
        assert res.blocks_copied == plan.blocks, (res, plan.as_dict())
        assert res.bytes_copied == plan.bytes
        if changed is not None:
            want = changed[plan.target]
            assert not plan.full and plan.base is not None, plan.as_dict()
            assert want <= plan.bytes <= 1.10 * want + META_BLOCKS * BS, (
                f"{plan.target}: plan {plan.bytes} bytes for {want} bytes changed")


PLEXES = pytest.mark.parametrize("nplexes", [2, 3])


# -- (a) one plex away for k CPs ------------------------------------------------------------


@PLEXES
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("how", ["offline", "offline-online", "left-out"])
def test_one_plex_away_for_k_cps_copies_only_what_it_missed(
        tmp_path: Path, nplexes: int, k: int, how: str) -> None:
    """A plex away (offline, or left out of a degraded open) for k CPs catches up exactly.

    "offline-online" brings it back as stale with ``plex_online`` first.

    Its plan starts from the resync base pinned when it left, copies what
    the k CPs wrote (plus their metadata), and afterwards every plex alone
    shows the same image. With k = 3 the copy is verified by read-back.
    """
    bed = Bed(tmp_path, nplexes)
    vol = bed.create()
    away = bed.specs[-1]
    if how.startswith("offline"):
        vol.plex_offline(away)
    else:
        vol.close()
        vol = bed.open(only=bed.specs[:-1], degraded=True)
    changed = sum(bed.write(vol) for _ in range(k))
    if how == "offline-online":
        assert vol.plex_online(away).state.label == "stale"
    if how == "left-out":
        vol.close()
        vol = bed.open()
    try:
        report = vol.resync(verify=k == 3)
    finally:
        vol.close()
    assert [p.target for p in report.plans] == [away]
    assert report.results[0].verified == (k == 3)
    assert report.plans[0].base is not None
    assert report.plans[0].base.kind == SnapKind.RESYNC_BASE
    check_copy(report, {away: changed})
    check_plexes_alone(bed)


def test_second_outage_starts_from_the_post_resync_snapshot(tmp_path: Path) -> None:
    """After a resync, the next outage of the same plex again copies only its own change.

    The first resync released its base; the post-resync snapshot and the
    base pinned at the second departure are what the two plexes share, so
    the second plan follows the second change alone.
    """
    bed = Bed(tmp_path, 2)
    vol = bed.create()
    away = bed.specs[1]
    try:
        for _ in range(2):
            vol.plex_offline(away)
            changed = bed.write(vol) + bed.write(vol)
            report = vol.resync()
            check_copy(report, {away: changed})
            assert not [r for r in vol.snapshots() if r.kind == SnapKind.RESYNC_BASE]
    finally:
        vol.close()
    check_plexes_alone(bed)


def test_plex_one_cp_behind_after_a_cut_between_superblock_writes(tmp_path: Path) -> None:
    """A power cut after p1's superblock but before p2's leaves p2 one CP behind, unrecorded.

    p1's label still lists p2 in sync; at open p2 is stale one CP behind,
    and the CP it holds (still in p1's ring) is pinned as its base, so the
    resync copies only that last CP.
    """
    bed = Bed(tmp_path, 2)
    vol = bed.create()
    lagging = bed.specs[1]
    bed.write(vol)
    vol.close()
    held = Path(lagging).read_bytes()
    vol = bed.open()
    changed = bed.write(vol)
    vol.close()
    Path(lagging).write_bytes(held)  # p2 never saw the last CP, p1 did
    vol = bed.open()
    try:
        assert vol.mirror.slot(lagging).state.label == "stale"
        report = vol.resync()
    finally:
        vol.close()
    assert report.plans[0].base is not None
    check_copy(report, {lagging: changed})
    check_plexes_alone(bed)


# -- (b) two plexes away at different times ------------------------------------------------


@pytest.mark.parametrize("how", ["offline", "left-out"])
def test_two_plexes_away_at_different_times_resync_in_one_run(tmp_path: Path, how: str) -> None:
    """p3 leaves, writes, p2 leaves too, writes, both return: one resync, two bases.

    Each target's plan starts from the base pinned when it left, so p3
    copies both rounds of writes and p2 only the second.
    """
    bed = Bed(tmp_path, 3)
    p1, p2, p3 = bed.specs
    vol = bed.create()
    if how == "offline":
        vol.plex_offline(p3)
    else:
        vol.close()
        vol = bed.open(only=[p1, p2], degraded=True)
    first = bed.write(vol) + bed.write(vol)
    if how == "offline":
        vol.plex_offline(p2)
    else:
        vol.close()
        vol = bed.open(only=[p1], degraded=True)
    second = bed.write(vol) + bed.write(vol)
    if how == "left-out":
        vol.close()
        vol = bed.open()
    try:
        report = vol.resync()
    finally:
        vol.close()
    assert sorted(p.target for p in report.plans) == [p2, p3]
    bases = {p.target: p.base for p in report.plans}
    assert bases[p2] is not None and bases[p3] is not None
    assert bases[p3].cp < bases[p2].cp
    check_copy(report, {p3: first + second, p2: second})
    check_plexes_alone(bed)


# -- (c) snapshots created and deleted while a plex is away --------------------------------


@PLEXES
def test_plex_away_while_snapshots_are_created_and_deleted(tmp_path: Path, nplexes: int) -> None:
    """Snapshots made, kept and deleted while a plex is away all arrive right.

    A snapshot both sides held is deleted while the plex is away (it is no
    longer common, the base still is); s1 is created and deleted again; s2
    is created and kept, holding older bytes of places written after it.
    The returning plex gets s2 with its own bytes and no trace of the
    deleted ones, and the plan still follows the change.
    """
    bed = Bed(tmp_path, nplexes)
    vol = bed.create()
    bed.snapshot(vol, "before")
    away = bed.specs[-1]
    vol.plex_offline(away)
    changed = bed.write(vol)
    bed.snapshot(vol, "s1")
    changed += bed.write(vol)
    bed.snapshot(vol, "s2")
    changed += bed.write(vol)
    bed.delete_snapshot(vol, "s1")
    bed.delete_snapshot(vol, "before")
    changed += bed.write(vol)
    try:
        report = vol.resync()
    finally:
        vol.close()
    base = report.plans[0].base
    assert base is not None
    assert [r.name for r in report.plans[0].common] == [base.name]
    check_copy(report, {away: changed})
    img = check_plexes_alone(bed)
    assert "s1" not in img.snapshots and "before" not in img.snapshots
    assert img.snapshots["s2"][3] != img.tree  # s2 really holds older bytes


def test_a_user_snapshot_and_the_base_both_count_as_common(tmp_path: Path) -> None:
    """Every snapshot both plexes hold is common, and the newest one is the base.

    With two common points (a user snapshot from before and the resync base
    pinned at departure) the plan uses both: what either holds is not copied.
    """
    bed = Bed(tmp_path, 2)
    vol = bed.create()
    bed.snapshot(vol, "before")
    bed.write(vol)
    vol.plex_offline(bed.specs[1])
    changed = bed.write(vol)
    try:
        report = vol.resync()
    finally:
        vol.close()
    plan = report.plans[0]
    assert plan.base is not None and plan.base.kind == SnapKind.RESYNC_BASE
    assert {r.name for r in plan.common} == {"before", plan.base.name}
    check_copy(report, {bed.specs[1]: changed})
    check_plexes_alone(bed)


# -- (d) a new plex: no common snapshot, a full copy ---------------------------------------


@pytest.mark.parametrize("nplexes", [1, 2])
def test_added_plex_gets_a_full_copy_of_the_blocks_in_use(tmp_path: Path, nplexes: int) -> None:
    """``plex_add`` shares no snapshot: the plan says full, copies every block in use, no more.

    The volume's used blocks (allocated blocks minus the superblock rings,
    which every plex writes for itself) are exactly what the plan copies.
    """
    bed = Bed(tmp_path, nplexes + 1)
    vol = bed.create(nplexes)
    bed.snapshot(vol, "s1")
    bed.write(vol)
    new = bed.specs[-1]
    slot = vol.plex_add(new)
    assert slot.spec == new
    st = vol.store
    in_use = st.nblocks - st.alloc.free_blocks() - len(st.reserved)
    try:
        report = vol.resync()
    finally:
        vol.close()
    plan = report.plans[0]
    assert plan.target == new and plan.full and plan.base is None and plan.common == []
    assert "full copy" in plan.note
    assert plan.blocks == in_use
    assert plan.bytes >= FILES * FILE_BYTES
    check_copy(report)
    check_plexes_alone(bed)


# -- (e) a plex that fails during a CP -----------------------------------------------------


class RingBFails(FaultyPlex):
    """Fails writes into ring B when armed: a CP whose ring A slot is written, B not."""

    def __init__(self, inner: Plex, volume_bytes: int) -> None:
        super().__init__(inner)
        self.ring_b = volume_bytes - RING_BYTES
        self.fail_ring_b = False

    def writev(self, offset: int, bufs: Sequence[Buffer]) -> None:
        if self.fail_ring_b and offset >= self.ring_b:
            raise PlexIOError(self.spec, f"write at {offset}: injected I/O error in ring B")
        super().writev(offset, bufs)


@PLEXES
@pytest.mark.parametrize("fault", ["data-write", "flush", "superblock"])
@pytest.mark.parametrize("back", ["reopen", "online"])
def test_plex_failed_during_a_cp_copies_only_what_it_missed(
        tmp_path: Path, nplexes: int, fault: str, back: str,
        expect_log: Callable[[str], None]) -> None:
    """A plex failing in a CP leaves the in-sync set, and its base makes the resync small.

    It fails writing data or flushing (it holds CP n: base n) or after its
    ring A slot of CP n+1 reached it (it holds n+1: base n+1, pinned too).
    Either way the resync copies only the CPs it missed (plus metadata),
    whether it comes back by reopening the volume or online once the fault
    is gone.
    """
    expect_log("failed and leaves the in-sync set")
    bed = Bed(tmp_path, nplexes)
    bed.create().close()
    plexes = [RingBFails(FilePlex(s), VOLUME_BYTES) for s in bed.specs]
    vol = Volume.attach(plexes, cp_interval=None)
    bad = plexes[-1]
    bed.write(vol)
    cp = vol.store.cp
    changed = bed.write(vol, sync=False)
    if fault == "data-write":
        bad.fail_writes = True
    elif fault == "flush":
        bad.fail_flush = True
    else:
        bad.fail_ring_b = True
    assert vol.sync()
    assert vol.mirror.slots[-1].state.label == "failed"
    label = read_label(bad)  # what the plex holds on disk (reads still pass)
    assert label is not None
    assert label.cp == (cp + 1 if fault == "superblock" else cp)
    pinned = {r.cp for r in vol.snapshots() if r.kind == SnapKind.RESYNC_BASE}
    assert label.cp in pinned
    # Online, the volume knows only that the plex failed in CP n+1, so it plans from CP n.
    held = label.cp if back == "reopen" else cp
    after = sum(bed.write(vol) for _ in range(2))
    bad.fail_writes = bad.fail_flush = bad.fail_ring_b = False
    if back == "reopen":
        vol.close()
        vol = bed.open()
    try:
        report = vol.resync()
    finally:
        vol.close()
    plan = report.plans[0]
    assert plan.target == bed.specs[-1]
    assert plan.base is not None and plan.base.cp == held
    if held > cp:  # at CP n+1 it holds CP n too: both pinned bases are common
        assert {r.cp for r in plan.common} == {cp, cp + 1}
    missed = after + (0 if held > cp else changed)
    check_copy(report, {bed.specs[-1]: missed})
    check_plexes_alone(bed)


# -- (f) split brain -----------------------------------------------------------------------


@dataclasses.dataclass
class Split:
    """A split brain: p1 and p2 each opened alone and written; p3 (if any) left behind."""

    bed: Bed
    trees: dict[str, Tree]  # each diverged plex's file tree
    snap_trees: dict[str, Tree]  # each diverged plex's own snapshot "side-<i>", its tree
    changed: dict[str, int]  # bytes each diverged plex wrote alone


def make_split(tmp_path: Path, nplexes: int, drop_base: bool = False) -> Split:
    """Each of p1, p2 alone: new files, a snapshot of its own, overwrites, a deletion.

    With ``drop_base`` p2 also deletes the resync base it pinned at the
    split and writes on, so the two sides keep no snapshot in common.
    """
    bed = Bed(tmp_path, nplexes)
    bed.create().close()
    split = Split(bed, {}, {}, {})
    for i, spec in enumerate(bed.specs[:2]):
        vol = bed.open(only=[spec], degraded=True)
        try:
            n = 0
            for j in range(3):
                data = bed.rng.randbytes(20000 + 7 * j)
                vol.write_bytes(f"/new-{i}-{j}", data)
                n += len(data)
            vol.snapshot(f"side-{i}")
            split.snap_trees[spec] = walk(vol)
            n += bed.write(vol, sync=False)  # each side overwrites places
            vol.unlink(Bed.path(i))  # and deletes a file the other keeps
            if drop_base and i == 1:
                (base,) = [r.name for r in vol.snapshots() if r.kind == SnapKind.RESYNC_BASE]
                vol.delete_snapshot(base)
                n += bed.write(vol)  # may reuse blocks the base held
            vol.sync()
            split.trees[spec] = walk(vol)
            split.changed[spec] = n
        finally:
            vol.close()
    return split


@PLEXES
def test_split_brain_is_examined_and_refused_without_a_choice(
        tmp_path: Path, nplexes: int) -> None:
    """Both sides advanced alone: examine says so, and resync refuses, writing nothing.

    A writable open without a choice refuses; opened anyway (``split_ok``,
    or with either side preferred at open), resync without ``prefer``
    refuses naming both plexes and the common snapshot, and a dry run
    reports the split. Not one byte of any image changes (SHA-256 of every
    image before and after each attempt).
    """
    split = make_split(tmp_path, nplexes)
    bed = split.bed
    p1, p2 = bed.specs[:2]
    exam = examine(bed.specs)
    assert exam.split_brain
    assert exam.forks == [(p1, p2)]
    assert {p.spec: p.state for p in exam.plexes}[p2] == "diverged"
    before = image_digest(bed.specs)
    with pytest.raises(PlexError, match="split brain"):
        bed.open()  # a writable open without a choice refuses
    assert image_digest(bed.specs) == before
    for prefer in (None, p1, p2):
        vol = bed.open(prefer=prefer, split_ok=prefer is None)
        try:
            with pytest.raises(SplitBrain) as err:
                vol.resync()
            dry = vol.resync(dry_run=True)
        finally:
            vol.close()
        assert p1 in str(err.value) and p2 in str(err.value)
        assert "resync-base-cp" in str(err.value) and "--prefer" in str(err.value)
        assert dry.split_brain and dry.dry_run and not dry.results
        assert image_digest(bed.specs) == before, prefer


@PLEXES
@pytest.mark.parametrize("survivor", [0, 1])
@pytest.mark.parametrize("discard", [False, True])
def test_split_brain_resolved_with_prefer_keeps_the_loser_as_a_snapshot(
        tmp_path: Path, nplexes: int, survivor: int, discard: bool) -> None:
    """``prefer`` makes every plex equal to the survivor; the loser's images are kept.

    Without ``discard_divergent`` the loser's whole file tree (its new
    files, its overwrites, its deletion) is readable with exact bytes under
    ``/.snapshot/diverged-<plex>-cp<N>/``, and the snapshot it took alone
    under ``diverged-<plex>-cp<N>-side-<i>``; the survivor's own snapshot is
    an ordinary one. With ``discard_divergent`` no diverged snapshot
    exists. A third plex that stayed behind is brought in sync too.
    """
    split = make_split(tmp_path, nplexes)
    report, img = resolve(split, survivor, discard)
    diverged = {n: s for n, s in img.snapshots.items() if s[2] == "diverged"}
    if discard:
        assert diverged == {}
        assert report.rescued == []
        return
    check_rescued(split, survivor, img, report)


def test_split_brain_with_no_common_snapshot_is_resolved_by_full_copies(tmp_path: Path) -> None:
    """The loser dropped the common base and wrote on: nothing is shared, nothing is lost.

    Its blocks may now hold other bytes than the base had, so the plan is a
    full copy, and the rescue copies the loser's whole image: both are still
    exact.
    """
    split = make_split(tmp_path, 2, drop_base=True)
    report, img = resolve(split, 0, False)
    assert all(p.full for p in report.plans)
    check_rescued(split, 0, img, report)


def resolve(split: Split, survivor: int, discard: bool) -> tuple[Report, Image]:
    """Resync with ``prefer`` the survivor; check the copy and every plex alone."""
    bed = split.bed
    win = bed.specs[survivor]
    vol = bed.open(prefer=win)
    try:
        report = vol.resync(prefer=win, discard_divergent=discard)
    finally:
        vol.close()
    assert report.split_brain
    assert sorted(p.target for p in report.plans) == sorted(s for s in bed.specs if s != win)
    check_copy(report)
    if not any(p.full for p in report.plans):
        for plan in report.plans:  # survivor's change, loser's rescued images, metadata
            bound = 1.10 * sum(split.changed.values()) + 2 * META_BLOCKS * BS
            assert plan.bytes <= bound, plan.as_dict()
    # the model is the survivor's side
    bed.model = {p: bytearray(b) for p, b in split.trees[win].items() if b is not None}
    bed.user_snaps = {f"side-{survivor}": split.snap_trees[win]}
    img = check_plexes_alone(bed)
    assert img.tree == split.trees[win]
    return report, img


def check_rescued(split: Split, survivor: int, img: Image, report: Report) -> None:
    """The loser's active tree and its own snapshot, exact, as diverged snapshots."""
    lose = split.bed.specs[1 - survivor]
    diverged = {n: s for n, s in img.snapshots.items() if s[2] == "diverged"}
    prefix = f"diverged-{Path(lose).name}-cp"
    assert all(n.startswith(prefix) for n in diverged), diverged.keys()
    (active,) = [n for n in diverged if not n.endswith(f"-side-{1 - survivor}")]
    (own,) = [n for n in diverged if n.endswith(f"-side-{1 - survivor}")]
    assert diverged[active][3] == split.trees[lose]
    assert diverged[own][3] == split.snap_trees[lose]
    assert sorted(r.snapshot for r in report.rescued) == sorted(diverged)
    assert f"side-{1 - survivor}" not in img.snapshots


def test_split_brain_without_room_for_the_loser_is_refused_and_changes_nothing(
        tmp_path: Path) -> None:
    """Keeping the loser's state needs free space; without it, a clear refusal.

    The loser wrote more than the survivor has free: ``NotEnoughSpace``
    names the plex, and no image changes. ``discard_divergent`` then
    resolves the split.
    """
    bed = Bed(tmp_path, 2)
    bed.create().close()
    p1, p2 = bed.specs
    fill = {p1: 40 << 20, p2: 30 << 20}  # 8 MiB of files each, on a 64 MiB volume
    for spec in bed.specs:
        vol = bed.open(only=[spec], degraded=True)
        try:
            vol.write_bytes("/big", bed.rng.randbytes(fill[spec]))
        finally:
            vol.close()
    before = image_digest(bed.specs)
    vol = bed.open(prefer=p1)
    try:
        with pytest.raises(NotEnoughSpace, match="discard-divergent") as err:
            vol.resync(prefer=p1)
        assert p2 in str(err.value)
    finally:
        vol.close()
    assert image_digest(bed.specs) == before
    vol = bed.open(prefer=p1)
    try:
        report = vol.resync(prefer=p1, discard_divergent=True)
        big = vol.read_bytes("/big")
    finally:
        vol.close()
    check_copy(report)
    bed.model["/big"] = bytearray(big)
    assert len(big) == fill[p1]
    check_plexes_alone(bed)
