"""POSIX behaviour of the file system through the Volume path API and its file objects.

Each test states one property a POSIX program relies on: sparse files and
their block counts, truncation, huge logical sizes on a small volume, large
directories whose lookups do not scan, symlinks, hard links, rename, the
errno of every refused operation, attributes, statfs, and the file object
(seek, tell, append, text mode). Errors are ``FsError`` with the errno
Linux gives for the same call.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import random
import stat
from collections.abc import Callable
from typing import Any

import pytest

from mirrorfs.errors import FsError
from mirrorfs.fs import fsck
from mirrorfs.ondisk import ROOT_INO
from mirrorfs.volume import Volume

BS = 4096
GIB = 1 << 30
TIB = 1 << 40
SECTORS_PER_BLOCK = BS // 512


def raises_errno(err: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> FsError:
    """Call ``fn``; it must raise FsError carrying ``err``."""
    with pytest.raises(FsError) as info:
        fn(*args, **kwargs)
    assert info.value.errno == err, (errno.errorcode.get(info.value.errno), str(info.value))
    return info.value


def assert_clean(vol: Volume) -> None:
    vol.sync()
    report = fsck(vol.store)
    assert report.clean, [str(f) for f in report.findings]


def reopen(vol: Volume) -> Volume:
    vf = vol.volume_file
    assert vf is not None
    vol.close()
    return Volume.open(vf.path, cp_interval=None)


# -- sparse files, truncation, huge sizes ---------------------------------------


def test_sparse_file_reads_zeros_and_uses_only_written_blocks(volume: Volume) -> None:
    """A write at 1 GiB makes a 1 GiB file that reads zeros before the write, and after the
    CP it holds one data block: ``st_blocks`` is one block and statfs lost a handful of
    blocks (the leaf and its tree path), not 1 GiB."""
    volume.write_bytes("/sparse", b"")
    volume.sync()
    free0 = volume.statfs().free
    with volume.open_file("/sparse", "r+b") as f:
        f.seek(GIB)
        f.write(b"tail")
    assert volume.stat("/sparse").size == GIB + 4
    ino = volume.stat("/sparse").ino
    assert volume.fs.read(ino, 0, 3 * BS) == bytes(3 * BS)
    assert volume.fs.read(ino, GIB // 2 + 123, 5000) == bytes(5000)
    assert volume.fs.read(ino, GIB - 10, 100) == bytes(10) + b"tail"
    volume.sync()
    assert volume.stat("/sparse").blocks == SECTORS_PER_BLOCK
    used = free0 - volume.statfs().free
    assert 1 <= used <= 8, used  # leaf, three tree nodes, inode table and plane leaves
    assert_clean(volume)


def test_readinto_at_every_alignment_over_holes_dirty_and_committed_blocks(
        volume: Volume) -> None:
    """``readinto`` reads whole blocks straight into the caller's buffer and partial ones
    through a bounce block: every (offset, length) around block edges must return the
    same bytes as the model, over committed blocks, a hole, dirty blocks and the end of
    file, and must never write past the count it returns."""
    rng = random.Random(5)
    model = bytearray(rng.randbytes(6 * BS + 123))
    model[2 * BS : 3 * BS] = bytes(BS)  # a hole: never written
    volume.write_bytes("/f", b"")
    with volume.open_file("/f", "r+b") as f:
        for lb in (0, 1, 3, 4, 5, 6):
            f.seek(lb * BS)
            f.write(model[lb * BS : (lb + 1) * BS])
    volume.sync()
    patch = rng.randbytes(BS + 77)  # dirty, unaligned, over committed blocks
    model[4 * BS - 50 : 5 * BS + 27] = patch
    with volume.open_file("/f", "r+b") as f:
        f.seek(4 * BS - 50)
        f.write(patch)
    ino = volume.stat("/f").ino
    edges = [0, 1, BS - 1, BS, BS + 1, 2 * BS + 7, 4 * BS - 50, 5 * BS, 6 * BS + 100]
    for off in edges:
        for length in (1, 99, BS, BS + 1, 3 * BS - 5, 8 * BS):
            buf = bytearray(b"\xee" * (length + 16))
            n = volume.fs.readinto(ino, off, memoryview(buf)[:length])
            want = bytes(model[off : off + length])
            assert n == len(want), (off, length)
            assert buf[:n] == want, (off, length)
            assert buf[n:] == b"\xee" * (length + 16 - n), (off, length)


def test_blocks_count_written_blocks_only(volume: Volume) -> None:
    """``st_blocks`` counts the blocks written (in 512-byte units), whatever the size says:
    two separate writes in a 100-block file give two blocks, and rewriting them keeps two."""
    with volume.open_file("/f", "wb") as f:
        f.write(b"a")
        f.seek(99 * BS)
        f.write(b"b")
    volume.sync()
    assert volume.stat("/f").size == 99 * BS + 1
    assert volume.stat("/f").blocks == 2 * SECTORS_PER_BLOCK
    with volume.open_file("/f", "r+b") as f:
        f.write(b"c")
        f.seek(99 * BS)
        f.write(b"d")
    volume.sync()
    assert volume.stat("/f").blocks == 2 * SECTORS_PER_BLOCK
    volume.write_bytes("/g", b"x")
    volume.sync()
    volume.write_bytes("/g", b"y")  # overwrite of a one-block file keeps one block
    volume.sync()
    assert volume.stat("/g").blocks == SECTORS_PER_BLOCK


def test_truncate_down_then_up_reads_zeros(volume: Volume) -> None:
    """Truncating drops the bytes past the new size: growing the file again reads zeros
    there, not the old data, before and after a CP."""
    data = os.urandom(3 * BS + 100)
    volume.write_bytes("/t", data)
    volume.truncate("/t", 5000)
    assert volume.read_bytes("/t") == data[:5000]
    volume.truncate("/t", 4 * BS)
    assert volume.read_bytes("/t") == data[:5000] + bytes(4 * BS - 5000)
    volume.sync()
    assert volume.read_bytes("/t") == data[:5000] + bytes(4 * BS - 5000)
    assert volume.stat("/t").blocks == 2 * SECTORS_PER_BLOCK  # growing allocates nothing
    volume.truncate("/t", 10)
    volume.sync()
    volume.truncate("/t", BS + 1)
    assert volume.read_bytes("/t") == data[:10] + bytes(BS + 1 - 10)
    with volume.open_file("/t", "r+b") as f:
        f.seek(3)
        assert f.truncate() == 3
    assert volume.read_bytes("/t") == data[:3]
    volume.truncate("/t", 0)
    volume.sync()
    assert volume.stat("/t").size == 0
    assert volume.stat("/t").blocks == 0
    assert_clean(volume)


def test_one_tib_file_on_a_small_volume(volume: Volume) -> None:
    """A file of 1 TiB logical size fits a 256 MiB volume: bytes written at 1 TiB - 10 read
    back, everything else reads zeros, and truncating it to 0 gives back every block (statfs
    free is what it was before the write, after a CP)."""
    volume.write_bytes("/huge", b"")
    volume.sync()
    free0 = volume.statfs().free
    with volume.open_file("/huge", "r+b") as f:
        f.seek(TIB - 10)
        f.write(b"0123456789")
    volume.sync()
    st = volume.stat("/huge")
    assert st.size == TIB
    assert st.blocks == SECTORS_PER_BLOCK
    assert volume.statfs().free < free0
    vol = reopen(volume)
    try:
        ino = vol.stat("/huge").ino
        assert vol.fs.read(ino, TIB - 10, 100) == b"0123456789"
        assert vol.fs.read(ino, TIB - BS - 10, BS) == bytes(BS)
        assert vol.fs.read(ino, 0, BS) == bytes(BS)
        assert vol.fs.read(ino, TIB // 3, 777) == bytes(777)
        with vol.open_file("/huge", "rb") as f:
            assert f.seek(-4, io.SEEK_END) == TIB - 4
            assert f.read() == b"6789"
        vol.truncate("/huge", 0)
        vol.sync()
        assert vol.statfs().free == free0
        assert vol.stat("/huge").blocks == 0
        assert_clean(vol)
    finally:
        vol.close()


# -- large directories -------------------------------------------------------------


def _fill(vol: Volume, path: str, n: int) -> list[bytes]:
    vol.mkdir(path)
    dino = vol.stat(path).ino
    names = [b"entry-%07d" % i for i in range(n)]
    for name in names:
        vol.fs.create(dino, name)
    return names


def _reads_per_lookup(vol: Volume, path: str, names: list[bytes], k: int
                      ) -> tuple[list[int], list[int]]:
    """Plex reads and blocks read by each of ``k`` random lookups (and a failing one)."""
    fs = vol.fs
    dino = fs.resolve(path)
    rng = random.Random(path)
    reads, blocks = [], []

    def measure(name: bytes, found: bool) -> None:
        st0 = vol.mirror.statistics()
        if found:
            assert fs.lookup(dino, name) > ROOT_INO
        else:
            raises_errno(errno.ENOENT, fs.lookup, dino, name)
        st1 = vol.mirror.statistics()
        reads.append(st1.reads - st0.reads)
        blocks.append((st1.read_bytes - st0.read_bytes) // BS)

    for name in rng.sample(names, k):
        measure(name, True)
    measure(b"no-such-entry", False)
    return reads, blocks


def test_directory_of_100k_entries_lookup_reads_constant_blocks(volume: Volume) -> None:
    """A directory of 100,000 entries lists every name, and after a reopen (cold caches) a
    lookup reads a bounded number of blocks, the same as in a directory of 1,000: the
    lookup goes to one hash bucket instead of scanning the hundreds the directory has."""
    small = _fill(volume, "/small", 1_000)
    big = _fill(volume, "/big", 100_000)
    vol = reopen(volume)
    try:
        depth = vol.fs.objects.inode(vol.stat("/big").ino).dir_depth
        assert 1 << depth >= 256  # a scan would read at least this many buckets
        vol.fs.lookup(ROOT_INO, b"big")  # load the root, the object table and its nodes
        vol.fs.lookup(ROOT_INO, b"small")
        per_small, _ = _reads_per_lookup(vol, "/small", small, 200)
        per_big, blocks_big = _reads_per_lookup(vol, "/big", big, 200)
        # a bucket leaf plus at most the directory tree's nodes on the way to it
        height = vol.fs.objects.inode(vol.stat("/big").ino).height
        assert max(per_big) <= height + 1, per_big
        assert max(per_big) <= max(per_small) + 2, (per_small, per_big)
        assert sum(per_big) <= 2 * len(per_big)
        # in blocks too: a few nodes (with their read-ahead) and one leaf, never the buckets
        assert max(blocks_big) <= 40 < 1 << depth, blocks_big
        listed = vol.listdir("/big")
        assert len(listed) == 100_000
        assert sorted(n.encode() for n in listed) == big
        assert sorted(n.encode() for n in vol.listdir("/small")) == small
    finally:
        vol.close()


def test_removing_a_directory_emptied_in_the_same_cp_frees_its_blocks(volume: Volume) -> None:
    """A directory whose last entry is removed and which is then removed itself, all within
    one CP, gives back its bucket block: nothing leaks, and free space is what it was
    before the directory was made."""
    volume.sync()
    free0 = volume.statfs().free
    volume.mkdir("/a")
    volume.mkdir("/a/b")
    volume.write_bytes("/a/f", b"x")
    volume.sync()
    volume.rmdir("/a/b")
    volume.unlink("/a/f")
    volume.rmdir("/a")
    assert_clean(volume)
    assert volume.statfs().free == free0


# -- symlinks and hard links -------------------------------------------------------


def test_symlinks_relative_absolute_and_dangling(volume: Volume) -> None:
    """Symlinks keep their target text; stat and file access follow them (relative targets
    from the link's directory, absolute from the root, through directory links too);
    lstat and readlink do not; a dangling link exists only for lstat; a loop is ELOOP."""
    volume.mkdir("/d")
    volume.write_bytes("/d/file", b"content")
    volume.symlink("file", "/d/rel")
    volume.symlink("/d/file", "/abs")
    volume.symlink("../d/file", "/d/up")
    volume.symlink("d", "/dirlink")
    volume.symlink("/nowhere/at/all", "/dangling")
    volume.symlink("/loop2", "/loop1")
    volume.symlink("/loop1", "/loop2")
    for link in ("/d/rel", "/abs", "/d/up", "/dirlink/file", "/dirlink/rel"):
        assert volume.read_bytes(link) == b"content", link
        assert volume.stat(link).ino == volume.stat("/d/file").ino
    assert volume.readlink("/d/rel") == "file"
    assert volume.readlink("/abs") == "/d/file"
    assert volume.readlink("/dangling") == "/nowhere/at/all"
    lst = volume.lstat("/abs")
    assert stat.S_ISLNK(lst.mode)
    assert lst.size == len("/d/file")
    assert stat.S_ISDIR(volume.stat("/dirlink").mode)
    assert sorted(volume.listdir("/dirlink")) == ["file", "rel", "up"]
    assert stat.S_ISLNK(volume.lstat("/dangling").mode)
    assert not volume.exists("/dangling")
    raises_errno(errno.ENOENT, volume.stat, "/dangling")
    raises_errno(errno.ENOENT, volume.read_bytes, "/dangling")
    raises_errno(errno.ELOOP, volume.stat, "/loop1")
    raises_errno(errno.EINVAL, volume.readlink, "/d/file")
    raises_errno(errno.EEXIST, volume.symlink, "x", "/abs")
    raises_errno(errno.ENAMETOOLONG, volume.symlink, "t" * 4096, "/toolong")
    volume.symlink("t" * 4095, "/longest")
    assert volume.readlink("/longest") == "t" * 4095
    volume.unlink("/abs")  # removes the link, not its target
    assert volume.read_bytes("/d/file") == b"content"
    vol = reopen(volume)
    try:
        assert vol.readlink("/d/rel") == "file"
        assert vol.read_bytes("/d/up") == b"content"
        assert_clean(vol)
    finally:
        vol.close()


def test_hard_links_share_content_and_count(volume: Volume) -> None:
    """Hard links name one inode: nlink counts the names, a write through one name shows
    through the others, and unlinking a name keeps the inode while another name is left."""
    volume.mkdir("/d")
    volume.write_bytes("/a", b"shared")
    volume.link("/a", "/b")
    volume.link("/b", "/d/c")
    ino = volume.stat("/a").ino
    assert {volume.stat(p).ino for p in ("/a", "/b", "/d/c")} == {ino}
    assert volume.stat("/a").nlink == 3
    with volume.open_file("/d/c", "ab") as f:
        f.write(b"+more")
    assert volume.read_bytes("/a") == b"shared+more"
    volume.unlink("/a")
    assert volume.stat("/b").nlink == 2
    assert volume.read_bytes("/b") == b"shared+more"
    volume.unlink("/b")
    assert volume.stat("/d/c").nlink == 1
    assert volume.read_bytes("/d/c") == b"shared+more"
    raises_errno(errno.EPERM, volume.link, "/d", "/d2")
    raises_errno(errno.EEXIST, volume.link, "/d/c", "/d")
    raises_errno(errno.ENOENT, volume.link, "/missing", "/x")
    assert_clean(volume)


def test_unlinked_open_file_lives_until_closed(volume: Volume) -> None:
    """A file unlinked while open stays readable and writable through the open file; its
    blocks are freed when the last handle closes."""
    volume.write_bytes("/keep", b"")
    volume.sync()
    free0 = volume.statfs().free
    data = os.urandom(10 * BS)
    volume.write_bytes("/tmpfile", data)
    volume.sync()
    f = volume.open_file("/tmpfile", "r+b")
    volume.unlink("/tmpfile")
    assert not volume.exists("/tmpfile")
    assert f.read() == data
    f.seek(0)
    f.write(b"new")
    f.flush()
    f.seek(0)
    assert f.read(3) == b"new"
    volume.sync()
    f.close()
    volume.sync()
    assert volume.statfs().free == free0
    assert_clean(volume)


def test_fsck_is_clean_with_an_unlinked_open_file(volume: Volume) -> None:
    """An unlinked file that is still open is a valid state (POSIX keeps it until the last
    close), so fsck after a CP finds nothing wrong while it is open."""
    volume.write_bytes("/f", os.urandom(3 * BS))
    with volume.open_file("/f", "rb"):
        volume.unlink("/f")
        volume.sync()
        report = fsck(volume.store)
        assert report.clean, [str(f) for f in report.findings]


def test_orphan_left_at_close_is_reclaimed_on_open(volume: Volume) -> None:
    """A file unlinked while open, when the volume closes (or the power fails) before the
    file does, is freed when the volume opens again: free space returns and fsck is clean."""
    volume.write_bytes("/keep", b"")
    volume.sync()
    free0 = volume.statfs().free
    volume.write_bytes("/f", os.urandom(3 * BS))
    f = volume.open_file("/f", "rb")
    volume.unlink("/f")
    vol = reopen(volume)  # the file is still open in the old handle
    try:
        vol.sync()
        report = fsck(vol.store)
        assert report.clean, [str(x) for x in report.findings]
        assert vol.statfs().free == free0
    finally:
        vol.close()
        with contextlib.suppress(Exception):  # a handle of the closed volume: nothing to save
            f.close()


# -- rename ----------------------------------------------------------------------


def test_rename_replaces_files_and_empty_dirs_atomically(volume: Volume) -> None:
    """rename replaces an existing file (the old one's inode is freed) and an empty
    directory; it moves directories between parents (fixing '..' and the parents' link
    counts); renaming onto a hard link of itself changes nothing."""
    volume.write_bytes("/src", b"new")
    volume.write_bytes("/dst", b"old")
    volume.link("/src", "/src2")
    old_ino = volume.stat("/dst").ino
    volume.rename("/src", "/dst")
    assert volume.read_bytes("/dst") == b"new"
    assert not volume.exists("/src")
    assert volume.stat("/dst").nlink == 2
    volume.sync()
    assert volume.fs.objects.inode(old_ino).free
    volume.rename("/dst", "/src2")  # same inode: nothing happens
    assert volume.exists("/dst") and volume.exists("/src2")
    assert volume.stat("/dst").nlink == 2

    volume.mkdir("/p1")
    volume.mkdir("/p2")
    volume.mkdir("/p1/moving")
    volume.write_bytes("/p1/moving/inner", b"i")
    volume.mkdir("/p2/empty")
    root_nlink = volume.stat("/").nlink
    volume.rename("/p1/moving", "/p2/empty")
    assert volume.listdir("/p1") == []
    assert volume.listdir("/p2") == ["empty"]
    assert volume.read_bytes("/p2/empty/inner") == b"i"
    assert volume.stat("/p1").nlink == 2
    assert volume.stat("/p2").nlink == 3
    assert volume.stat("/p2/empty/..").ino == volume.stat("/p2").ino
    assert volume.stat("/").nlink == root_nlink
    volume.rename("/p2/empty", "/top")
    assert volume.stat("/").nlink == root_nlink + 1
    assert volume.stat("/top/..").ino == ROOT_INO
    assert_clean(volume)


def test_rename_errors(volume: Volume) -> None:
    """rename refuses with Linux's errno: a directory into itself (EINVAL), onto a non-empty
    directory (ENOTEMPTY), a file onto a directory (EISDIR), a directory onto a file
    (ENOTDIR), a missing source (ENOENT), an existing target without replace (EEXIST), and
    leaves both names as they were."""
    volume.mkdir("/a")
    volume.mkdir("/a/b")
    volume.mkdir("/full")
    volume.write_bytes("/full/x", b"x")
    volume.write_bytes("/f", b"f")
    raises_errno(errno.EINVAL, volume.rename, "/a", "/a/b/c")
    raises_errno(errno.EINVAL, volume.rename, "/a", "/a/c")
    raises_errno(errno.ENOTEMPTY, volume.rename, "/a", "/full")
    raises_errno(errno.EISDIR, volume.rename, "/f", "/a")
    raises_errno(errno.ENOTDIR, volume.rename, "/a", "/f")
    raises_errno(errno.ENOENT, volume.rename, "/missing", "/z")
    raises_errno(errno.EEXIST, volume.rename, "/f", "/full/x", replace=False)
    raises_errno(errno.ENOTDIR, volume.rename, "/f", "/f/x")
    raises_errno(errno.ENAMETOOLONG, volume.rename, "/f", "/" + "n" * 256)
    assert sorted(volume.listdir("/")) == [".snapshot", "a", "f", "full"]
    assert volume.listdir("/a") == ["b"]
    assert volume.read_bytes("/full/x") == b"x"
    assert_clean(volume)


# -- errno of refused operations ----------------------------------------------------


def test_errnos_of_refused_operations(volume: Volume) -> None:
    """Each refused operation raises FsError with the errno Linux gives, and changes
    nothing."""
    volume.mkdir("/d")
    volume.write_bytes("/d/f", b"x")
    volume.write_bytes("/file", b"y")
    raises_errno(errno.ENOTEMPTY, volume.rmdir, "/d")
    raises_errno(errno.EISDIR, volume.unlink, "/d")
    raises_errno(errno.EISDIR, volume.read_bytes, "/d")
    raises_errno(errno.EISDIR, volume.write_bytes, "/d", b"")
    raises_errno(errno.EISDIR, volume.truncate, "/d", 0)
    raises_errno(errno.ENOTDIR, volume.rmdir, "/file")
    raises_errno(errno.ENOTDIR, volume.listdir, "/file")
    raises_errno(errno.ENOTDIR, volume.stat, "/file/x")
    raises_errno(errno.ENOTDIR, volume.mkdir, "/file/x")
    raises_errno(errno.ENOTDIR, volume.write_bytes, "/file/x", b"")
    raises_errno(errno.EEXIST, volume.mkdir, "/d")
    raises_errno(errno.EEXIST, volume.mkdir, "/file")
    raises_errno(errno.EEXIST, volume.open_file, "/file", "xb")
    raises_errno(errno.EEXIST, volume.mkdir, "/.snapshot")
    raises_errno(errno.ENOENT, volume.stat, "/missing")
    raises_errno(errno.ENOENT, volume.unlink, "/missing")
    raises_errno(errno.ENOENT, volume.rmdir, "/missing")
    raises_errno(errno.ENOENT, volume.open_file, "/missing", "rb")
    raises_errno(errno.ENOENT, volume.write_bytes, "/missing/x", b"")
    raises_errno(errno.ENAMETOOLONG, volume.write_bytes, "/" + "n" * 256, b"")
    raises_errno(errno.ENAMETOOLONG, volume.mkdir, "/d/" + "n" * 256)
    volume.write_bytes("/" + "n" * 255, b"max")  # NAME_MAX itself is fine
    assert volume.read_bytes("/" + "n" * 255) == b"max"
    raises_errno(errno.EINVAL, volume.truncate, "/file", -1)
    raises_errno(errno.EINVAL, volume.fs.create, ROOT_INO, b"..")
    raises_errno(errno.EINVAL, volume.fs.mkdir, ROOT_INO, b".")
    raises_errno(errno.EINVAL, volume.fs.create, ROOT_INO, b"a/b")
    raises_errno(errno.EINVAL, volume.rmdir, "/d/.")
    assert volume.read_bytes("/d/f") == b"x"
    assert sorted(volume.listdir("/")) == sorted([".snapshot", "d", "file", "n" * 255])
    assert_clean(volume)


def test_snapshot_tree_is_read_only(volume: Volume) -> None:
    """Every change under /.snapshot fails with EROFS, and the snapshot stays as taken."""
    volume.mkdir("/d")
    volume.write_bytes("/d/f", b"x")
    volume.snapshot("s")
    s = "/.snapshot/s"
    raises_errno(errno.EROFS, volume.write_bytes, f"{s}/d/f", b"new")
    raises_errno(errno.EROFS, volume.write_bytes, f"{s}/d/new", b"new")
    raises_errno(errno.EROFS, volume.mkdir, f"{s}/d/new")
    raises_errno(errno.EROFS, volume.mkdir, "/.snapshot/new")
    raises_errno(errno.EROFS, volume.unlink, f"{s}/d/f")
    raises_errno(errno.EROFS, volume.rmdir, f"{s}/d")
    raises_errno(errno.EROFS, volume.rmdir, s)
    raises_errno(errno.EROFS, volume.rmdir, "/.snapshot")
    raises_errno(errno.EROFS, volume.rename, f"{s}/d/f", f"{s}/d/g")
    raises_errno(errno.EROFS, volume.rename, f"{s}/d/f", "/g")
    raises_errno(errno.EROFS, volume.rename, "/d/f", f"{s}/g")
    raises_errno(errno.EROFS, volume.link, f"{s}/d/f", "/h")
    raises_errno(errno.EROFS, volume.link, "/d/f", f"{s}/h")
    raises_errno(errno.EROFS, volume.symlink, "t", f"{s}/l")
    raises_errno(errno.EROFS, volume.chmod, f"{s}/d/f", 0o600)
    raises_errno(errno.EROFS, volume.chown, f"{s}/d/f", 1, 1)
    raises_errno(errno.EROFS, volume.utime, f"{s}/d/f", 1, 1)
    raises_errno(errno.EROFS, volume.truncate, f"{s}/d/f", 0)
    fs = volume.fs
    raises_errno(errno.EROFS, fs.write, volume.stat(f"{s}/d/f").ino, 0, b"z")
    assert volume.read_bytes(f"{s}/d/f") == b"x"
    assert volume.listdir(f"{s}/d") == ["f"]
    assert_clean(volume)


def test_opening_a_snapshot_file_for_writing_is_erofs(volume: Volume) -> None:
    """open() for writing (r+, a, w) of a file under /.snapshot fails at open with EROFS,
    as open(2) does on a read-only file system, instead of failing later at flush."""
    volume.write_bytes("/f", b"")
    volume.snapshot("s")
    for mode in ("r+b", "ab", "wb", "a"):
        raises_errno(errno.EROFS, volume.open_file, "/.snapshot/s/f", mode)


def test_read_only_volume_refuses_writes(volume: Volume) -> None:
    """A volume opened read-only serves reads and refuses every change with EROFS."""
    volume.write_bytes("/f", b"data")
    vf = volume.volume_file
    assert vf is not None
    volume.close()
    vol = Volume.open(vf.path, read_only=True, cp_interval=None)
    try:
        assert vol.read_bytes("/f") == b"data"
        raises_errno(errno.EROFS, vol.write_bytes, "/f", b"x")
        raises_errno(errno.EROFS, vol.open_file, "/f", "ab")
        raises_errno(errno.EROFS, vol.write_bytes, "/new", b"x")
        raises_errno(errno.EROFS, vol.mkdir, "/d")
        raises_errno(errno.EROFS, vol.unlink, "/f")
        raises_errno(errno.EROFS, vol.chmod, "/f", 0o600)
        raises_errno(errno.EROFS, vol.truncate, "/f", 0)
        assert vol.read_bytes("/f") == b"data"
    finally:
        vol.close()


def test_out_of_range_arguments_are_refused_up_front(volume: Volume) -> None:
    """Offsets, sizes, owners and times that the on-disk inode cannot hold are refused by
    the call itself (EINVAL, or EFBIG past the largest file size) instead of being accepted
    and then failing the next CP, which would turn the volume read-only."""
    volume.write_bytes("/f", b"abc")
    ino = volume.stat("/f").ino
    fs = volume.fs
    raises_errno(errno.EINVAL, fs.write, ino, -5, b"x")
    raises_errno(errno.EINVAL, fs.read, ino, -1, 10)
    raises_errno(errno.EFBIG, fs.write, ino, 1 << 64, b"x")
    raises_errno(errno.EFBIG, fs.write, ino, (1 << 63) - 1, b"xy")
    raises_errno(errno.EFBIG, volume.truncate, "/f", 1 << 64)
    raises_errno(errno.EINVAL, volume.chown, "/f", 1 << 32, 0)
    raises_errno(errno.EINVAL, volume.chown, "/f", 0, -2)
    raises_errno(errno.EINVAL, volume.utime, "/f", 1 << 63, 0)
    raises_errno(errno.EINVAL, volume.utime, "/f", 0, -(1 << 63) - 1)
    fs.write(ino, (1 << 63) - 2, b"z")  # the last byte a file can hold
    assert volume.stat("/f").size == (1 << 63) - 1
    volume.sync()
    assert volume.store.broken is None
    volume.write_bytes("/g", b"still writable")
    assert fs.read(ino, (1 << 63) - 2, 10) == b"z"
    assert volume.read_bytes("/g") == b"still writable"
    volume.truncate("/f", 3)
    assert volume.read_bytes("/f") == b"abc"
    assert_clean(volume)


def test_undecodable_names_round_trip(volume: Volume) -> None:
    """A name that is not UTF-8 (made through the inode API, as a FUSE client may) is listed
    with surrogate escapes, and that listed name works with every path call."""
    volume.fs.create(ROOT_INO, b"caf\xe9")
    (name,) = [n for n in volume.listdir("/") if n != ".snapshot"]
    assert name == "caf\udce9"
    assert stat.S_ISREG(volume.stat("/" + name).mode)
    volume.write_bytes("/" + name, b"bytes")
    assert volume.read_bytes("/" + name) == b"bytes"
    volume.rename("/" + name, "/caf\u00e9")
    assert sorted(volume.listdir("/")) == [".snapshot", "caf\u00e9"]
    assert_clean(volume)


# -- attributes and statfs ---------------------------------------------------------


def test_chmod_chown_utime_show_in_stat(volume: Volume) -> None:
    """chmod changes only the permission bits, chown the owner and group (-1 keeps one),
    utime sets exact nanosecond times; each change updates ctime and survives a reopen."""
    volume.write_bytes("/f", b"x")
    volume.mkdir("/d")
    before = volume.stat("/f")
    volume.chmod("/f", 0o4751)
    st = volume.stat("/f")
    assert stat.S_ISREG(st.mode)
    assert stat.S_IMODE(st.mode) == 0o4751
    assert st.ctime_ns >= before.ctime_ns
    volume.chmod("/d", 0o700)
    assert volume.stat("/d").mode == stat.S_IFDIR | 0o700
    volume.chown("/f", 1234, 5678)
    assert (volume.stat("/f").uid, volume.stat("/f").gid) == (1234, 5678)
    volume.chown("/f", -1, 42)
    assert (volume.stat("/f").uid, volume.stat("/f").gid) == (1234, 42)
    volume.utime("/f", 1_000_000_001, 2_000_000_002)
    st = volume.stat("/f")
    assert (st.atime_ns, st.mtime_ns) == (1_000_000_001, 2_000_000_002)
    vol = reopen(volume)
    try:
        st = vol.stat("/f")
        assert stat.S_IMODE(st.mode) == 0o4751
        assert (st.uid, st.gid) == (1234, 42)
        assert st.mtime_ns == 2_000_000_002
        assert st.nlink == 1 and st.size == 1
    finally:
        vol.close()


def test_statfs_numbers_are_plausible(volume: Volume) -> None:
    """statfs reports the block size, the usable blocks of 256 MiB (less the superblock
    rings), free blocks that drop by the data written and come back when it is deleted,
    and the name limit."""
    st0 = volume.statfs()
    assert st0.block_size == BS
    assert st0.blocks == (256 << 20) // BS - 16
    assert st0.blocks - 32 <= st0.free <= st0.blocks
    assert st0.name_max == 255
    assert st0.files_free > 0
    volume.write_bytes("/keep", b"")
    volume.sync()
    free1 = volume.statfs().free
    volume.write_bytes("/data", os.urandom(1 << 20))
    volume.sync()
    free2 = volume.statfs().free
    assert 256 <= free1 - free2 <= 256 + 8
    volume.unlink("/data")
    volume.sync()
    assert volume.statfs().free == free1


# -- the file object ---------------------------------------------------------------


def test_file_object_seek_tell_read_write(volume: Volume) -> None:
    """The binary file object seeks (SET, CUR, END), tells, reads short at EOF, overwrites
    in place with r+, creates with x, and its raw reads fill buffers."""
    with volume.open_file("/f", "xb") as f:
        assert f.write(b"0123456789") == 10
        assert f.tell() == 10
    with volume.open_file("/f", "r+b") as f:
        assert f.read(3) == b"012"
        assert f.tell() == 3
        assert f.seek(2, io.SEEK_CUR) == 5
        f.write(b"ab")
        assert f.tell() == 7
        assert f.seek(-1, io.SEEK_END) == 9
        assert f.read() == b"9"
        assert f.read() == b""
        f.seek(12)
        f.write(b"Z")
    assert volume.read_bytes("/f") == b"01234ab789\0\0Z"
    with volume.open_file("/f", "rb") as f:
        buf = bytearray(4)
        assert f.readinto(buf) == 4
        assert bytes(buf) == b"0123"
        with pytest.raises(OSError):
            f.seek(-1)
        assert not f.writable()
        with pytest.raises(io.UnsupportedOperation):
            f.write(b"x")
    with volume.open_file("/f", "wb") as f:  # w truncates
        assert f.tell() == 0
    assert volume.read_bytes("/f") == b""


def test_file_object_append_mode(volume: Volume) -> None:
    """Append mode writes at the end of the file whatever the position, and a+ reads too."""
    volume.write_bytes("/log", b"one\n")
    with volume.open_file("/log", "ab") as f:
        assert f.tell() == 4
        f.write(b"two\n")
        f.seek(0)
        f.write(b"three\n")
    assert volume.read_bytes("/log") == b"one\ntwo\nthree\n"
    with volume.open_file("/log", "a+b") as f:
        f.seek(0)
        assert f.read(4) == b"one\n"
        f.write(b"four\n")
        f.flush()  # (before a flush, CPython's buffer shows the write at the read position)
        assert f.tell() == len(b"one\ntwo\nthree\nfour\n")
        f.seek(0)
        assert f.read() == b"one\ntwo\nthree\nfour\n"
    with volume.open_file("/new", "ab") as f:  # a creates
        f.write(b"x")
    assert volume.read_bytes("/new") == b"x"


def test_file_object_text_mode(volume: Volume) -> None:
    """Text mode writes str and reads lines back, with universal newlines and seek/tell
    cookies that round-trip."""
    with volume.open_file("/t.txt", "w") as f:
        f.write("alpha\nbeta\r\ngamma")
    assert volume.read_bytes("/t.txt") == b"alpha\nbeta\r\ngamma"
    with volume.open_file("/t.txt", "r") as f:
        assert f.readline() == "alpha\n"
        pos = f.tell()
        assert list(f) == ["beta\n", "gamma"]
        f.seek(pos)
        assert f.read() == "beta\ngamma"
    with volume.open_file("/t.txt", "a") as f:
        f.write("\ndelta\n")
    with volume.open_file("/t.txt", "rt") as f:
        assert f.read().splitlines() == ["alpha", "beta", "gamma", "delta"]


def test_big_write_through_the_file_object(volume: Volume) -> None:
    """A multi-megabyte write and unaligned reads through the buffered file object return
    exactly the bytes written, before and after a reopen."""
    data = os.urandom((5 << 20) + 123)
    with volume.open_file("/big", "wb") as f:
        for i in range(0, len(data), 70_001):
            f.write(data[i : i + 70_001])
    with volume.open_file("/big", "rb") as f:
        f.seek(4097)
        assert f.read(1 << 20) == data[4097 : 4097 + (1 << 20)]
    vol = reopen(volume)
    try:
        assert vol.read_bytes("/big") == data
        assert_clean(vol)
    finally:
        vol.close()
