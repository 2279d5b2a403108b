"""A resync killed or cut off at any moment: the target is never trusted early, and resumes.

Killed at every extent. The resync runs in a forked child that dies with
``os._exit`` (no cleanup, no final CP) right after extent N is copied, for
every N of a plan of 10-32 extents (24 with today's allocator). The test
then reopens the volume: the target is a resync target (``examine`` says
resyncing and never chooses it, it cannot be opened alone, it is not in
the in-sync set), and resuming
copies exactly the changed blocks above the cursor its superblock recorded
(``resumed_from`` > 0, as the target received every CP since), no more than
the first run had left; afterwards every plex alone is fsck clean and
holds the model's files. A target that missed a CP since the kill starts
over from 0, still copying only the changed set.

Power cut at every write. A resync's writes to the target are recorded
(``RecordingPlex``); for every prefix of them, and for each write torn
after its first sector, the target image is rebuilt from its bytes before
the resync while the source stays as it was at the end. The target must
then be its old self (its old label and its old files), a resync target,
or in sync at a CP of the resync (with the final files); it is never
chosen as the source; and a resync brings the volume to one image, fsck
clean, with the model's files on every plex.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mirrorfs.errors import MirrorfsError
from mirrorfs.fs import fsck
from mirrorfs.ondisk import SLOT_SIZE, Superblock
from mirrorfs.plex import FilePlex
from mirrorfs.resync import _copy as copy_mod
from mirrorfs.resync import examine
from mirrorfs.store import _planes as planes
from mirrorfs.testing import Op, RecordingPlex, apply_ops
from mirrorfs.volume import Volume, read_label

BS = 4096
VOLUME_BYTES = 32 << 20
SMALL = 32 << 10  # bytes of each small file
SECTOR = 512  # a torn write keeps this many bytes
KILLED = 77  # exit code of a child killed on purpose

Tree = dict[str, bytes | None]  # path -> bytes of a file, None for a directory


def walk(vol: Volume) -> Tree:
    """The active file tree with every file's bytes (``/.snapshot`` left out)."""
    out: Tree = {}
    todo = [""]
    while todo:
        rel = todo.pop()
        for name, attr in vol.scandir(rel or "/"):
            if not rel and name == ".snapshot":
                continue
            path = f"{rel}/{name}"
            if stat.S_ISDIR(attr.mode):
                out[path] = None
                todo.append(path)
            else:
                out[path] = vol.fs.read(attr.ino, 0, attr.size)
    return out


def alone(vf: Path, spec: str) -> tuple[Tree, list[tuple[str, str, int]]]:
    """One plex opened alone and read-only: fsck clean; its files and its snapshots."""
    vol = Volume.open(vf, only=[spec], read_only=True, cp_interval=None)
    try:
        report = fsck(vol.store)
        assert report.clean, (spec, [str(f) for f in report.findings])
        return walk(vol), [(r.name, str(r.guid), r.cp) for r in vol.snapshots()]
    finally:
        vol.close()


def check_in_sync(vf: Path, specs: list[str], model: Tree) -> None:
    """Examine says all in sync; each plex alone is clean and holds the model, same snapshots."""
    exam = examine(specs)
    assert not exam.split_brain
    assert [p.state for p in exam.plexes] == ["in-sync"] * len(specs), exam.as_dict()
    seen = [alone(vf, s) for s in specs]
    for spec, (tree, snaps) in zip(specs, seen, strict=True):
        assert tree == model, f"{spec}: files differ from the model"
        assert snaps == seen[0][1], f"{spec}: snapshots differ from {specs[0]}"


def label_of(spec: str) -> Superblock:
    plex = FilePlex(spec, read_only=True)
    try:
        sb = read_label(plex)
    finally:
        plex.close()
    assert sb is not None
    return sb


@pytest.fixture
def image_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for images rebuilt dozens of times: on tmpfs when there is one.

    The images are real files either way; tmpfs only spares the disk the
    rewrites and the fdatasyncs of every rebuilt case.
    """
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="mirrorfs-test-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- killed at every extent ----------------------------------------------------------------


@dataclasses.dataclass
class Outage:
    """p1 away while small files were written into holes: a plan of many small extents."""

    vf: Path
    specs: list[str]
    model: Tree
    saved: Path  # pristine copies of the images, to restart from


def make_outage(tmp: Path) -> Outage:
    """40 small files, every other one deleted (holes), p1 offline, 16 new files fill holes."""
    rng = random.Random(5)
    vf = tmp / "v.toml"
    specs = [str(tmp / "p0.img"), str(tmp / "p1.img")]
    vol = Volume.create(specs, VOLUME_BYTES, volume_file=vf, cp_interval=None)
    model: Tree = {}
    for i in range(40):
        data = rng.randbytes(SMALL)
        vol.write_bytes(f"/f{i:02d}", data)
        model[f"/f{i:02d}"] = data
    vol.sync()
    for i in range(0, 40, 2):
        vol.unlink(f"/f{i:02d}")
        del model[f"/f{i:02d}"]
    vol.sync()
    vol.plex_offline(specs[1])
    for i in range(16):
        data = rng.randbytes(SMALL)
        vol.write_bytes(f"/g{i:02d}", data)
        model[f"/g{i:02d}"] = data
    vol.close()
    saved = tmp / "saved"
    saved.mkdir()
    for s in specs:
        shutil.copyfile(s, saved / Path(s).name)
    return Outage(vf, specs, model, saved)


def restore(out: Outage) -> None:
    for s in out.specs:
        shutil.copyfile(out.saved / Path(s).name, s)


def killed_resync(vf: Path, kill_after: int) -> int:
    """Run a resync in a child killed right after extent ``kill_after``; its exit code."""
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            calls = 0

            def progress(_blocks: int) -> None:
                nonlocal calls
                calls += 1
                if calls == kill_after:
                    os._exit(KILLED)  # no cleanup, no last CP: like kill -9

            vol = Volume.open(vf, cp_interval=None)
            vol.resync(progress=progress)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.fixture
def cursor_every_extent(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CP after every extent copied, so the target's cursor follows the copy closely."""
    monkeypatch.setattr(copy_mod, "PROGRESS_BYTES", BS)


def first_plan(out: Outage) -> tuple[int, int, Callable[[int], int]]:
    """The plan of the outage: extents (= progress calls), blocks, blocks at or above a block."""
    vol = Volume.open(out.vf, read_only=True, cp_interval=None)
    try:
        (plan,) = vol.resync(dry_run=True).plans
    finally:
        vol.close()
    assert 10 <= plan.extents <= 32, plan.as_dict()  # many, but few enough to kill at each
    blks = planes.to_blocks(plan.changed)

    def above(cursor: int) -> int:
        return int((blks >= cursor).sum())

    return plan.extents, plan.blocks, above


def test_killed_resync_resumes_from_its_cursor_at_every_extent(
        image_dir: Path, cursor_every_extent: None) -> None:
    """Killed after any extent, the target stays a resync target and resumes where it stopped.

    For every extent N: the child dies after copying it; the target is
    ``resyncing`` and never up to date, cannot be opened alone, and joins
    the volume outside the in-sync set; the resumed run starts at the
    recorded cursor (> 0), copies exactly the changed blocks above it (no
    more than the first run had left), and the volume ends in sync.
    """
    out = make_outage(image_dir)
    p0, p1 = out.specs
    extents, blocks, above = first_plan(out)
    for n in range(1, extents + 1):
        restore(out)
        assert killed_resync(out.vf, n) == KILLED, n
        exam = examine(out.specs)
        assert exam.up_to_date is not None and exam.up_to_date.spec == p0, n
        assert [p.state for p in exam.plexes] == ["in-sync", "resyncing"], (n, exam.as_dict())
        rec = label_of(p1).resync
        assert rec is not None and 0 < rec.cursor <= VOLUME_BYTES // BS, n
        with pytest.raises(MirrorfsError):
            Volume.open(out.vf, only=[p1], read_only=True, cp_interval=None)
        vol = Volume.open(out.vf, cp_interval=None)
        try:
            assert [s.spec for s in vol.mirror.in_sync()] == [p0], n
            assert vol.mirror.slot(p1).state.label == "resyncing"
            report = vol.resync()
        finally:
            vol.close()
        (plan,) = report.plans
        (res,) = report.results
        assert res.error is None
        assert res.resumed_from == rec.cursor, n
        left = above(rec.cursor)
        assert res.blocks_copied <= left, (n, res.blocks_copied, left)
        assert res.blocks_copied == int((planes.to_blocks(plan.changed) >= rec.cursor).sum())
        assert res.blocks_copied < blocks
        check_in_sync(out.vf, out.specs, out.model)


def test_killed_resync_whose_target_missed_a_cp_starts_over_with_the_changed_set(
        image_dir: Path, cursor_every_extent: None) -> None:
    """After the kill the volume runs without the target; its cursor no longer holds.

    The resume starts from 0 and copies the whole changed set (the plan,
    not a full copy), and the new file written meanwhile arrives too.
    """
    out = make_outage(image_dir)
    p0, p1 = out.specs
    extents, _, _ = first_plan(out)
    assert killed_resync(out.vf, extents // 2) == KILLED
    vol = Volume.open(out.vf, only=[p0], degraded=True, cp_interval=None)
    try:
        vol.write_bytes("/meanwhile", b"m" * 10000)
    finally:
        vol.close()
    out.model["/meanwhile"] = b"m" * 10000
    assert label_of(p1).resync is not None
    vol = Volume.open(out.vf, cp_interval=None)
    try:
        report = vol.resync()
    finally:
        vol.close()
    (plan,) = report.plans
    (res,) = report.results
    assert res.resumed_from == 0
    assert not plan.full and plan.base is not None
    assert res.blocks_copied == plan.blocks
    check_in_sync(out.vf, out.specs, out.model)


# -- power cut at every write of the resync --------------------------------------------------


@dataclasses.dataclass
class Recorded:
    """A resync recorded on its target: the images around it and the target's writes."""

    vf: Path
    specs: list[str]
    old_model: Tree  # the target's files before the resync
    model: Tree  # the files after it
    target_before: bytes = dataclasses.field(repr=False)
    source_after: bytes = dataclasses.field(repr=False)
    old_label: Superblock
    writes: list[Op] = dataclasses.field(repr=False)
    run_cps: dict[int, str]  # CP -> CP id of every superblock the run wrote to the target


def record_resync(tmp: Path) -> Recorded:
    """p1 away for a small change (a few extents); resync it with its writes recorded."""
    rng = random.Random(9)
    vf = tmp / "v.toml"
    specs = [str(tmp / "p0.img"), str(tmp / "p1.img")]
    vol = Volume.create(specs, VOLUME_BYTES, volume_file=vf, cp_interval=None)
    old: Tree = {}
    for i in range(4):
        data = rng.randbytes(64 << 10)
        vol.write_bytes(f"/f{i}", data)
        old[f"/f{i}"] = data
    vol.plex_offline(specs[1])
    new = dict(old)
    for i in (1, 3):
        buf = bytearray(new[f"/f{i}"] or b"")
        buf[8192:16384] = rng.randbytes(8192)
        with vol.open_file(f"/f{i}", "r+b") as fh:
            fh.seek(8192)
            fh.write(buf[8192:16384])
        new[f"/f{i}"] = bytes(buf)
    g = rng.randbytes(12000)
    vol.write_bytes("/g", g)
    new["/g"] = g
    vol.close()
    old_label = label_of(specs[1])
    target_before = Path(specs[1]).read_bytes()
    rec = RecordingPlex(FilePlex(specs[1]))
    vol = Volume.attach([FilePlex(specs[0]), rec], cp_interval=None)
    try:
        assert not rec.ops, "opening wrote to the target"
        report = vol.resync()
    finally:
        vol.close()
    (plan,) = report.plans
    assert plan.base is not None and plan.extents <= 6, plan.as_dict()
    writes = [op for op in rec.ops if not op.is_flush]
    run_cps: dict[int, str] = {}
    for op in writes:
        data = op.data or b""
        if op.offset % SLOT_SIZE == 0 and len(data) == SLOT_SIZE and data[:8] == b"MIRRFSSB":
            sb = Superblock.decode(data)
            run_cps[sb.cp] = str(sb.cp_id)
    return Recorded(vf, specs, old, new, target_before, Path(specs[0]).read_bytes(),
                    old_label, writes, run_cps)


def cut_images(r: Recorded) -> Iterator[tuple[str, bytes]]:
    """Target images a power cut could leave: every prefix, and each last write torn."""
    image = bytearray(r.target_before)
    yield "no write", bytes(image)
    for k, op in enumerate(r.writes):
        assert op.data is not None
        if len(op.data) > SECTOR:
            torn = bytearray(image)
            apply_ops(torn, [op], torn_last=SECTOR)
            yield f"write {k} torn", bytes(torn)
        apply_ops(image, [op])
        yield f"after write {k}", bytes(image)


def test_power_cut_at_every_write_of_the_resync(image_dir: Path) -> None:
    """After a cut at any write the target is old, resyncing or in sync; a resync finishes it.

    The source is as it was at the end of the resync; only the target is
    cut. The target is never the one chosen up to date. When its label is
    its old one it holds its old files; when it is a CP of the resync, it
    holds the final files; when it is a resync target it cannot be opened
    alone. Then a resync makes every plex alone hold the final files.
    """
    r = record_resync(image_dir)
    p0, p1 = r.specs
    assert len(r.writes) > 20
    seen: set[str] = set()
    for what, image in cut_images(r):
        Path(p0).write_bytes(r.source_after)
        Path(p1).write_bytes(image)
        exam = examine(r.specs)
        assert exam.up_to_date is not None and exam.up_to_date.spec == p0, what
        assert not exam.split_brain, what
        state = exam.plexes[1].state
        assert state in ("stale", "resyncing", "in-sync"), (what, state)
        label = label_of(p1)
        if state == "resyncing":
            assert label.resync is not None
            with pytest.raises(MirrorfsError):
                Volume.open(r.vf, only=[p1], read_only=True, cp_interval=None)
            seen.add("resyncing")
        elif label.cp_id == r.old_label.cp_id:
            assert label.cp == r.old_label.cp, what
            assert alone(r.vf, p1)[0] == r.old_model, what
            seen.add("old")
        else:
            assert r.run_cps.get(label.cp) == str(label.cp_id), (what, label.cp)
            assert alone(r.vf, p1)[0] == r.model, what
            seen.add("in sync")
        vol = Volume.open(r.vf, cp_interval=None)
        try:
            target = vol.mirror.slot(p1)
            if target.state.label == "in-sync":
                assert label.cp == vol.store.cp and label.cp_id == vol.store.cp_id, what
            vol.resync()
        finally:
            vol.close()
        check_in_sync(r.vf, r.specs, r.model)
    assert seen == {"old", "resyncing", "in sync"}


def test_examine_of_an_unfinished_resync_target_reads_none_of_its_tables(
        image_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A target cut off right after it became a resync target examines cleanly.

    Its label names the source's snapshot table, whose blocks it has not
    received yet: examine must not read them (no checksum warning, no
    error), only report it as resyncing. Regression: examine read them and
    logged "checksum or I/O error ... snapshot table".
    """
    r = record_resync(image_dir)
    first_slot = next(k for k, op in enumerate(r.writes)
                      if op.data is not None and op.data[:8] == b"MIRRFSSB")
    image = bytearray(r.target_before)
    apply_ops(image, r.writes[: first_slot + 1])
    Path(r.specs[0]).write_bytes(r.source_after)
    Path(r.specs[1]).write_bytes(bytes(image))
    caplog.clear()
    exam = examine(r.specs)
    target = exam.plexes[1]
    assert target.state == "resyncing" and target.error is None, target.as_dict()
    assert not [x for x in caplog.records if x.levelno >= logging.WARNING], caplog.text
