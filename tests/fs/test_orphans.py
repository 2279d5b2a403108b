"""Orphans: files unlinked while open, kept until the last close, freed after a crash.

Each test states one property of the orphan directory (fs/_fs.py, "Orphans"):
an open, unlinked file stays readable and fsck finds nothing wrong; the last
close frees it and the orphan directory goes with its last entry; a close or a
power cut that leaves an orphan behind is repaired by the next writable open
(free space returns) and left alone by a read-only one; snapshots and
rollback carry the orphan directory without showing it; and reclaiming reads
only what the orphan directory lists, never the whole object table.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

import pytest

from mirrorfs.errors import FsError
from mirrorfs.fs import fsck
from mirrorfs.ondisk import ORPHAN_INO, ROOT_INO, Inode
from mirrorfs.plex import FilePlex
from mirrorfs.store import ObjectView
from mirrorfs.testing import RecordingPlex, apply_ops
from mirrorfs.volume import Volume

BS = 4096
SMALL = 16 << 20  # the smallest volume: the crash test rebuilds one image per write


def assert_clean(vol: Volume) -> None:
    vol.sync()
    report = fsck(vol.store)
    assert report.clean, [str(f) for f in report.findings]


def open_unlinked(vol: Volume, path: str) -> int:
    """Open ``path`` (as a mount's open does) and unlink it; ``fs.released`` closes it.

    No file object: one left open when its volume closes would touch the closed plexes
    when it is collected.
    """
    ino = vol.stat(path).ino
    vol.fs.opened(ino)
    vol.unlink(path)
    return ino


def test_an_unlinked_open_file_is_listed_readable_and_hidden_until_its_last_close(
        volume: Volume) -> None:
    """While open, the unlinked file reads its bytes, has nlink 0, is listed as an orphan and
    shows nowhere (no name, no inode 0); fsck is clean. The last close frees it, and the CP
    after drops the empty orphan directory: the volume is again one with no inode 0."""
    data = os.urandom(3 * BS + 5)
    volume.write_bytes("/keep", b"")
    volume.sync()
    free0 = volume.statfs().free
    volume.write_bytes("/f", data)
    ino = volume.stat("/f").ino
    with volume.open_file("/f", "rb") as f:
        volume.unlink("/f")
        assert volume.fs.orphans() == [ino]
        assert volume.fs.getattr(ino).nlink == 0
        assert f.read() == data
        assert volume.listdir("/") == [".snapshot", "keep"]
        with pytest.raises(FsError) as info:
            volume.fs.getattr(ORPHAN_INO)
        assert info.value.errno == errno.ENOENT
        with pytest.raises(FsError) as info:
            volume.fs.lookup(ROOT_INO, str(ino).encode())
        assert info.value.errno == errno.ENOENT
        assert_clean(volume)
        assert not volume.fs.objects.inode(ORPHAN_INO).free
    assert volume.fs.orphans() == []
    assert_clean(volume)
    assert volume.fs.objects.inode(ORPHAN_INO).free
    assert volume.fs.objects.inode(ino).free
    assert volume.statfs().free == free0


def test_renaming_over_an_open_file_makes_it_an_orphan(volume: Volume) -> None:
    """rename over a name whose file is open keeps that file (an orphan) until it closes."""
    volume.write_bytes("/a", b"new")
    volume.write_bytes("/b", b"old")
    old = volume.stat("/b").ino
    with volume.open_file("/b", "rb") as f:
        volume.rename("/a", "/b")
        assert volume.fs.orphans() == [old]
        assert f.read() == b"old"
        assert volume.read_bytes("/b") == b"new"
        assert_clean(volume)
    assert_clean(volume)
    assert volume.fs.orphans() == []
    assert volume.fs.objects.inode(old).free


def test_a_link_to_an_unlinked_open_file_is_refused_with_enoent(volume: Volume) -> None:
    """As on Linux, an open file whose last name went cannot get a new one: it stays an
    orphan, and the orphan directory never lists a file that has links."""
    volume.write_bytes("/f", b"x")
    ino = open_unlinked(volume, "/f")
    with pytest.raises(FsError) as info:
        volume.fs.link(ino, ROOT_INO, b"back")
    assert info.value.errno == errno.ENOENT
    assert volume.fs.orphans() == [ino]
    volume.fs.released(ino)
    assert_clean(volume)


def test_an_inode_without_links_that_no_orphan_entry_lists_is_an_fsck_finding(
        volume: Volume) -> None:
    """Only listed orphans are reachable without a name: an unnamed inode with nlink 0 and
    no orphan entry (what a volume leaked before orphans were listed) is still reported."""
    objs = volume.fs.objects
    lost = objs.new_ino()
    objs.set_inode(lost, Inode(mode=stat.S_IFREG | 0o644, nlink=0))
    volume.sync()
    report = fsck(volume.store)
    assert [f.detail for f in report.findings] == [
        f"inode {lost} is used but no directory names it and the orphan directory does not "
        "list it"]


def test_orphans_of_a_copy_are_freed_by_a_writable_open_and_kept_by_a_read_only_one(
        volume: Volume, tmp_path: Path) -> None:
    """The image copied while an unlinked file is open (after a CP) is what a power cut
    leaves. Opened read-only it keeps the orphan (readable by inode, fsck clean, free space
    unchanged); opened writable it frees it in one CP: free space returns, fsck is clean
    and the orphan directory is gone."""
    data = os.urandom(5 * BS)
    volume.write_bytes("/keep", b"k")
    volume.sync()
    free0 = volume.statfs().free
    volume.write_bytes("/f", data)
    ino = open_unlinked(volume, "/f")
    volume.sync()
    free_open = volume.statfs().free
    copy = tmp_path / "copy.img"
    shutil.copyfile(tmp_path / "p0.img", copy)
    cp = volume.store.cp
    volume.fs.released(ino)
    with Volume.open([str(copy)], read_only=True, cp_interval=None) as ro:
        assert ro.store.cp == cp
        assert ro.fs.orphans() == [ino]
        assert ro.fs.read(ino, 0, len(data) + 1) == data
        assert ro.statfs().free == free_open
        report = fsck(ro.store)
        assert report.clean, [str(x) for x in report.findings]
    with Volume.open([str(copy)], cp_interval=None) as rw:
        assert rw.store.cp == cp + 1  # one CP frees them all
        assert rw.fs.orphans() == []
        assert rw.fs.objects.inode(ino).free
        assert rw.fs.objects.inode(ORPHAN_INO).free
        assert rw.statfs().free == free0
        assert rw.read_bytes("/keep") == b"k"
        assert_clean(rw)
        cp = rw.store.cp
    with Volume.open([str(copy)], cp_interval=None) as again:  # nothing left: no CP at open
        assert again.store.cp == cp


def test_orphans_left_by_a_close_are_all_freed_at_the_next_open(volume: Volume) -> None:
    """Hundreds of orphans (the orphan directory grows past one bucket) left by closing the
    volume are freed by the next writable open, all in one CP."""
    fs = volume.fs
    inos = []
    for i in range(300):
        name = f"f{i:03d}".encode()
        ino = fs.create(ROOT_INO, name)
        fs.write(ino, 0, b"x" * (i % 3) * BS)
        fs.opened(ino)
        fs.unlink(ROOT_INO, name)
        inos.append(ino)
    volume.sync()
    assert fs.orphans() == inos
    assert fs.objects.inode(ORPHAN_INO).dir_depth >= 1
    assert_clean(volume)
    free_held = volume.statfs().free
    vf = volume.volume_file
    assert vf is not None
    volume.close()
    with Volume.open(vf.path, cp_interval=None) as vol:
        assert vol.fs.orphans() == []
        assert vol.fs.objects.inode(ORPHAN_INO).free
        # their 300 data blocks and the orphan directory's buckets came back; the records
        # stay in object-table leaves, as every freed inode's do (numbers are not reused)
        assert vol.statfs().free > free_held + 300
        assert vol.listdir("/") == [".snapshot"]
        assert_clean(vol)


def test_reclaiming_at_open_reads_only_the_inodes_the_orphan_directory_lists(
        volume: Volume, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cost of reclaiming follows the orphans, not the volume: with thousands of inodes
    and one orphan, opening reads the records of inode 0 and of the orphan only."""
    fs = volume.fs
    for i in range(3000):
        fs.create(ROOT_INO, f"n{i}".encode())
    volume.write_bytes("/f", b"x")
    ino = open_unlinked(volume, "/f")
    vf = volume.volume_file
    assert vf is not None
    volume.close()
    per_leaf = BS // 128
    leaves: set[int] = set()
    real = ObjectView.inode

    def spy(self: ObjectView, n: int) -> Inode:
        leaves.add(n // per_leaf)
        return real(self, n)

    monkeypatch.setattr(ObjectView, "inode", spy)
    with Volume.open(vf.path, cp_interval=None) as vol:
        assert vol.fs.objects.inode(ino).free
        assert leaves == {ORPHAN_INO // per_leaf, ino // per_leaf}, sorted(leaves)
        monkeypatch.undo()
        assert_clean(vol)


def test_a_snapshot_taken_with_an_orphan_holds_it_reachable_and_hidden(
        volume: Volume) -> None:
    """A snapshot of a CP with an orphan holds the orphan directory: its view shows only
    names, its fsck counts the orphan as reachable. A rollback to it while the file is
    still open keeps the orphan until the close; a rollback when nobody holds the file any
    more frees it at once."""
    volume.write_bytes("/a", b"a")
    volume.write_bytes("/f", b"orphan bytes")
    ino = open_unlinked(volume, "/f")
    try:
        volume.snapshot("s")
        assert volume.listdir("/.snapshot/s") == ["a"]
        top = volume.stat("/.snapshot/s").ino
        with pytest.raises(FsError) as info:
            volume.fs.getattr(top - ROOT_INO + ORPHAN_INO)
        assert info.value.errno == errno.ENOENT
        with pytest.raises(FsError):
            volume.fs.lookup(top, str(ino).encode())
        assert_clean(volume)
        volume.write_bytes("/b", b"b")
        volume.rollback("s")
        assert volume.fs.orphans() == [ino]  # still open here
        assert volume.listdir("/") == [".snapshot", "a"]
        assert volume.fs.read(ino, 0, 100) == b"orphan bytes"
    finally:
        volume.fs.released(ino)
    assert volume.fs.orphans() == []
    assert_clean(volume)
    volume.rollback("s")  # the snapshot's orphan: nobody holds it now
    assert volume.fs.orphans() == []
    assert volume.fs.objects.inode(ino).free
    assert_clean(volume)
    volume.delete_snapshot("s")
    assert_clean(volume)
    assert volume.fs.objects.inode(ORPHAN_INO).free


def test_a_power_cut_in_the_cp_that_lists_an_orphan_opens_clean_either_way(
        tmp_path: Path) -> None:
    """Power cut after any write of the CP that unlinks an open file: the image opens at
    CP n (the file still named) or at CP n+1 (the file listed as an orphan, which a
    read-only open keeps and a writable open frees), and fsck is clean every time."""
    path = tmp_path / "p0.img"
    data = os.urandom(3 * BS)
    vol = Volume.format([FilePlex.create(str(path), SMALL)], SMALL, cp_interval=None)
    vol.write_bytes("/keep", b"k")
    vol.write_bytes("/f", data)
    vol.close()
    base = path.read_bytes()
    plex = RecordingPlex(FilePlex(str(path)))
    vol = Volume.attach([plex], cp_interval=None)
    cp = vol.store.cp
    try:
        first = len(plex.ops)
        ino = open_unlinked(vol, "/f")
        vol.sync()
        ops = plex.ops[first:]
        plex.recording = False
        vol.fs.released(ino)  # in a later CP, not recorded
    finally:
        vol.close()
    writes = [op for op in ops if not op.is_flush]
    assert writes
    img = tmp_path / "cut.img"
    seen: set[int] = set()
    free_named: int | None = None
    for k in range(len(writes) + 1):
        image = bytearray(base)
        apply_ops(image, writes[:k])
        img.write_bytes(image)
        with Volume.open([str(img)], read_only=True, cp_interval=None) as ro:
            at = ro.store.cp
            assert at in (cp, cp + 1), k
            seen.add(at)
            assert ro.fs.orphans() == ([ino] if at == cp + 1 else []), k
            assert ro.exists("/f") == (at == cp), k
            report = fsck(ro.store)
            assert report.clean, (k, [str(x) for x in report.findings])
        with Volume.open([str(img)], cp_interval=None) as rw:
            assert rw.fs.orphans() == [], k
            if at == cp:
                assert rw.read_bytes("/f") == data
                free_named = rw.statfs().free
            else:
                assert free_named is not None
                assert rw.statfs().free >= free_named + 3, k  # the file's blocks came back
                assert rw.fs.objects.inode(ino).free
            assert rw.read_bytes("/keep") == b"k"
            assert_clean(rw)
    assert seen == {cp, cp + 1}
