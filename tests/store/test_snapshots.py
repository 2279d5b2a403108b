"""Snapshots: create, list, delete, rollback, names, persistence, and many of them.

Space is checked against the planes themselves: a block is free when no
plane on disk (the active plane or a snapshot's) holds it, so deleting a
snapshot must free exactly the blocks only its plane held, and nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mirrorfs.errors import SnapshotError
from mirrorfs.fs import fsck
from mirrorfs.ondisk import MAX_SNAPSHOT_NAME, SnapKind
from mirrorfs.store import _planes as planes
from mirrorfs.store import image_blocks, plane_from_tree, tree_blocks
from mirrorfs.volume import Volume

BS = 4096


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Volume]:
    """A 64 MiB volume: one plane leaf, so many snapshots stay cheap."""
    vol = Volume.create([str(tmp_path / "p0.img")], 64 << 20, volume_file=tmp_path / "v.toml",
                        cp_interval=None)
    try:
        yield vol
    finally:
        vol.close()


def reopen(vol: Volume, read_only: bool = False) -> Volume:
    vf = vol.volume_file
    assert vf is not None
    vol.close()
    return Volume.open(vf.path, read_only=read_only, cp_interval=None)


def assert_clean(vol: Volume) -> None:
    report = fsck(vol.store)
    assert report.clean, [str(f) for f in report.findings]


def active_plane(vol: Volume) -> np.ndarray:
    store = vol.store
    return plane_from_tree(store.plane_tree, store.plane_words)


def snap_planes(vol: Volume) -> dict[str, np.ndarray]:
    return {r.name: vol.store.snapshot_plane(r) for r in vol.snapshots()}


def free_from_planes(vol: Volume) -> int:
    """Free blocks as the planes on disk define them (valid right after a CP)."""
    held = active_plane(vol)
    for p in snap_planes(vol).values():
        held |= p
    return vol.store.nblocks - planes.count(held)


def test_create_list_delete(volume: Volume) -> None:
    """Snapshots are listed in creation order with their name, kind, a fresh GUID and the
    CP they pin; they show under /.snapshot; deleting one removes exactly it."""
    volume.write_bytes("/f", b"1")
    a = volume.snapshot("a")
    volume.write_bytes("/f", b"2")
    b = volume.snapshot("b", SnapKind.SCHEDULED)
    c = volume.snapshot("c")
    recs = volume.snapshots()
    assert [r.name for r in recs] == ["a", "b", "c"]
    assert [r.kind for r in recs] == [SnapKind.USER, SnapKind.SCHEDULED, SnapKind.USER]
    assert len({r.guid for r in recs}) == 3
    assert a.cp < b.cp < c.cp <= volume.store.cp
    assert sorted(volume.listdir("/.snapshot")) == ["a", "b", "c"]
    assert volume.read_bytes("/.snapshot/a/f") == b"1"
    assert volume.read_bytes("/.snapshot/b/f") == b"2"
    volume.delete_snapshot("b")
    assert [r.name for r in volume.snapshots()] == ["a", "c"]
    assert sorted(volume.listdir("/.snapshot")) == ["a", "c"]
    assert not volume.exists("/.snapshot/b")
    assert volume.read_bytes("/.snapshot/a/f") == b"1"
    assert volume.read_bytes("/.snapshot/c/f") == b"2"
    assert_clean(volume)


def table_blocks(vol: Volume) -> int:
    """Blocks of the snapshot table and the plane tree: metadata a delete may resize."""
    return len(tree_blocks(vol.store.snap_tree)) + len(tree_blocks(vol.store.plane_tree))


def file_blocks(vol: Volume) -> np.ndarray:
    """Blocks of the active image's objects, without the object table (atime moves it)."""
    objs = vol.store.objects
    tab = tree_blocks(objs.objtab)
    return np.sort(np.setdiff1d(image_blocks(objs), tab))


def test_delete_frees_exactly_the_blocks_only_it_held(volume: Volume) -> None:
    """Deleting a snapshot frees the blocks that its plane alone holds (not the active
    image's, not another snapshot's): free space grows by exactly that count (plus what the
    shrinking snapshot table gives back), and every other image reads as before."""
    a1 = os.urandom(40 * BS)
    volume.write_bytes("/a", a1)
    volume.write_bytes("/shared", os.urandom(30 * BS))
    volume.snapshot("s1")
    a2 = os.urandom(20 * BS)
    with volume.open_file("/a", "r+b") as f:  # overwrite half of /a: s1 alone keeps the old half
        f.write(a2)
    b = os.urandom(10 * BS)
    volume.write_bytes("/b", b)
    volume.snapshot("s2")
    volume.unlink("/b")  # s2 alone keeps /b
    volume.write_bytes("/c", os.urandom(5 * BS))
    volume.sync()

    for victim, other in (("s1", "s2"), ("s2", None)):
        free_before = volume.statfs().free
        assert free_before == free_from_planes(volume)
        act = active_plane(volume)
        sp = snap_planes(volume)
        others = act | sp[other] if other else act
        only = planes.count(sp[victim] & ~others)
        assert only >= (20 if victim == "s1" else 10)  # old half of /a; /b
        data_blocks = file_blocks(volume)
        meta = table_blocks(volume)

        volume.delete_snapshot(victim)
        volume.sync()
        assert volume.statfs().free == free_from_planes(volume)
        assert volume.statfs().free - free_before == only + meta - table_blocks(volume)
        # the files kept their blocks (only the tables and the plane moved, copy-on-write)
        assert np.array_equal(file_blocks(volume), data_blocks)
        assert volume.read_bytes("/a") == a2 + a1[len(a2):]
        if other:
            assert volume.read_bytes(f"/.snapshot/{other}/a") == a2 + a1[len(a2):]
            assert volume.read_bytes(f"/.snapshot/{other}/b") == b
        assert_clean(volume)


def test_deleted_snapshot_blocks_are_reused(small_volume: Volume) -> None:
    """After a delete, the freed blocks serve new writes: a volume filled, snapshotted,
    emptied and unsnapshotted takes the same amount of data again."""
    vol = small_volume
    vol.write_bytes("/keep", b"")
    vol.sync()
    free0 = vol.statfs().free
    nfill = free0 * 3 // 5  # two fills do not fit at once
    size = nfill * BS
    vol.write_bytes("/fill", bytes(size))
    vol.snapshot("s")
    vol.unlink("/fill")
    vol.sync()
    assert vol.statfs().free <= free0 - nfill  # the snapshot still holds the data
    vol.delete_snapshot("s")
    vol.sync()
    assert vol.statfs().free == free0
    vol.write_bytes("/fill2", bytes(size))
    vol.sync()
    assert vol.statfs().free <= free0 - nfill
    assert_clean(vol)


def test_rollback_restores_content_and_keeps_snapshots(volume: Volume) -> None:
    """Rollback makes the active tree equal to the snapshot (changed, new and deleted
    files alike), keeps every snapshot, newer ones included, and the volume stays writable,
    consistent and so after a reopen."""
    volume.mkdir("/d")
    volume.write_bytes("/d/f", b"v1")
    volume.write_bytes("/gone", b"will be deleted")
    volume.snapshot("s1")
    volume.write_bytes("/d/f", b"v2")
    volume.write_bytes("/new", b"created after s1")
    volume.unlink("/gone")
    volume.snapshot("s2")
    volume.write_bytes("/d/f", b"v3")
    volume.mkdir("/later")

    volume.rollback("s1")
    assert volume.read_bytes("/d/f") == b"v1"
    assert volume.read_bytes("/gone") == b"will be deleted"
    assert not volume.exists("/new")
    assert not volume.exists("/later")
    assert [r.name for r in volume.snapshots()] == ["s1", "s2"]
    assert volume.read_bytes("/.snapshot/s2/d/f") == b"v2"
    assert volume.read_bytes("/.snapshot/s2/new") == b"created after s1"
    volume.write_bytes("/after", b"written after the rollback")
    volume.sync()
    assert_clean(volume)

    volume.rollback("s2")
    assert volume.read_bytes("/d/f") == b"v2"
    assert volume.read_bytes("/new") == b"created after s1"
    assert not volume.exists("/after")
    vol = reopen(volume)
    try:
        assert vol.read_bytes("/d/f") == b"v2"
        assert [r.name for r in vol.snapshots()] == ["s1", "s2"]
        assert vol.read_bytes("/.snapshot/s1/d/f") == b"v1"
        assert_clean(vol)
    finally:
        vol.close()


@pytest.mark.parametrize("bad", ["", "a/b", "/", ".", "..", "nul\0byte",
                                 "x" * (MAX_SNAPSHOT_NAME + 1),
                                 "é" * (MAX_SNAPSHOT_NAME // 2 + 1)])
def test_invalid_snapshot_names_are_refused(volume: Volume, bad: str) -> None:
    """Names that are empty, contain '/' or NUL, are '.' or '..', or are longer than the
    on-disk limit (in bytes) raise SnapshotError and create nothing."""
    cp = volume.store.cp
    with pytest.raises(SnapshotError):
        volume.snapshot(bad)
    assert volume.snapshots() == []
    assert volume.store.cp == cp


def test_snapshot_name_errors(volume: Volume) -> None:
    """A duplicate name, and deleting or rolling back to a missing snapshot, raise
    SnapshotError; a name of exactly the limit works."""
    volume.snapshot("x" * MAX_SNAPSHOT_NAME)
    volume.snapshot("s")
    with pytest.raises(SnapshotError):
        volume.snapshot("s")
    with pytest.raises(SnapshotError):
        volume.delete_snapshot("missing")
    with pytest.raises(SnapshotError):
        volume.rollback("missing")
    assert [r.name for r in volume.snapshots()] == ["x" * MAX_SNAPSHOT_NAME, "s"]
    assert volume.listdir("/.snapshot/" + "x" * MAX_SNAPSHOT_NAME) == []


def test_snapshot_survives_reopen(volume: Volume) -> None:
    """A snapshot's record (name, GUID, CP, kind) and its tree are the same after the
    volume is closed and opened again, read-write and read-only."""
    data = os.urandom(3 * BS + 7)
    volume.mkdir("/d")
    volume.write_bytes("/d/f", data)
    volume.symlink("d/f", "/link")
    rec = volume.snapshot("keep")
    volume.write_bytes("/d/f", b"changed")
    vol = reopen(volume)
    try:
        assert vol.snapshots() == [rec]
        assert vol.read_bytes("/.snapshot/keep/d/f") == data
        assert vol.readlink("/.snapshot/keep/link") == "d/f"
        assert vol.read_bytes("/d/f") == b"changed"
        assert_clean(vol)
        vol = reopen(vol, read_only=True)
        assert vol.snapshots() == [rec]
        assert vol.read_bytes("/.snapshot/keep/d/f") == data
    finally:
        vol.close()


def test_255_snapshots(small_volume: Volume) -> None:
    """A volume holds 255 snapshots: each lists and reads its own state, they all survive a
    reopen, and deleting them all leaves fsck clean and free space where it started."""
    vol = small_volume
    vol.write_bytes("/f", b"start")
    vol.sync()
    free0 = vol.statfs().free
    names = [f"snap-{i:03d}" for i in range(255)]
    for i, name in enumerate(names):
        vol.write_bytes("/f", b"v%03d" % i)
        vol.snapshot(name)
    assert [r.name for r in vol.snapshots()] == names
    vol = reopen(vol)
    try:
        assert [r.name for r in vol.snapshots()] == names
        assert sorted(vol.listdir("/.snapshot")) == names
        for i in (0, 1, 127, 254):
            assert vol.read_bytes(f"/.snapshot/{names[i]}/f") == b"v%03d" % i
        assert_clean(vol)
        vol.write_bytes("/f", b"start")
        for name in names[::2] + names[1::2]:
            vol.delete_snapshot(name)
        vol.sync()
        assert vol.snapshots() == []
        assert vol.listdir("/.snapshot") == []
        assert_clean(vol)
        assert vol.statfs().free == free0
        vol = reopen(vol)
        assert vol.statfs().free == free0
        assert vol.read_bytes("/f") == b"start"
    finally:
        vol.close()
