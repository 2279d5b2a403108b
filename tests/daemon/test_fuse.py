"""The FUSE request handlers in-process, without a mount: what each request answers.

Proves the promises of ``daemon/_fuse.py`` that a real mount cannot reach
on purpose: any exception a handler meets becomes an errno for that request
(never a dead daemon), ownership and umask of new inodes come from the
request, and open handles keep unlinked inodes alive until released.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

pyfuse3 = pytest.importorskip("pyfuse3", reason="this machine lacks pyfuse3 (pip extra "
                              "mirrorfs[fuse]; it needs libfuse3-dev to build)")
trio = pytest.importorskip("trio", reason="this machine lacks trio (pip extra mirrorfs[fuse])")

from mirrorfs.daemon._fuse import FuseOperations  # noqa: E402
from mirrorfs.errors import CorruptBlock, FsError, NoSpace, ReadOnly  # noqa: E402
from mirrorfs.ondisk import ROOT_INO  # noqa: E402
from mirrorfs.volume import Volume  # noqa: E402


@dataclasses.dataclass
class Ctx:
    """Stands in for pyfuse3.RequestContext (which only the C side can make)."""

    uid: int = 0
    gid: int = 0
    pid: int = 0
    umask: int = 0o022


def call(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    return trio.run(fn, *args)


def fuse_errno(fn: Callable[..., Awaitable[Any]], *args: Any) -> int:
    with pytest.raises(pyfuse3.FUSEError) as info:
        call(fn, *args)
    return int(info.value.errno)


@pytest.fixture
def ops(volume: Volume) -> FuseOperations:
    return FuseOperations(volume.fs)


def test_every_exception_becomes_an_errno(ops: FuseOperations, volume: Volume,
                                          monkeypatch: pytest.MonkeyPatch,
                                          expect_log: Any) -> None:
    fi, _ = call(ops.create, ROOT_INO, b"f", 0o100644, os.O_RDWR, Ctx())
    cases: list[tuple[Exception, int]] = [
        (FsError(errno.ENOTEMPTY, "x"), errno.ENOTEMPTY),
        (NoSpace(10, 1), errno.ENOSPC),
        (ReadOnly("test"), errno.EROFS),
        (CorruptBlock("plex p0", 7, "checksum mismatch"), errno.EIO),
        (RuntimeError("a bug"), errno.EIO),
        (KeyError(3), errno.EIO),
    ]
    expect_log(r"checksum mismatch")
    expect_log(r"unexpected error in a request handler")
    for exc, want in cases:
        def boom(*args: Any, _exc: Exception = exc) -> Any:
            raise _exc
        monkeypatch.setattr(volume.fs, "readinto", boom)
        assert fuse_errno(ops.read, fi.fh, 0, 10) == want, exc
    # an unknown handle is a bug too, and still only this request's EIO
    assert fuse_errno(ops.write, 12345, 0, b"x") == errno.EIO


def test_create_takes_owner_and_umask_from_the_request(ops: FuseOperations) -> None:
    ctx = Ctx(uid=1234, gid=4321, umask=0o027)
    fi, attr = call(ops.create, ROOT_INO, b"f", stat.S_IFREG | 0o666, os.O_WRONLY, ctx)
    assert (attr.st_uid, attr.st_gid, attr.st_mode) == (1234, 4321, stat.S_IFREG | 0o640)
    d = call(ops.mkdir, ROOT_INO, b"d", 0o777, ctx)
    assert (d.st_uid, d.st_gid, d.st_mode) == (1234, 4321, stat.S_IFDIR | 0o750)
    n = call(ops.mknod, ROOT_INO, b"p", stat.S_IFIFO | 0o666, 0, ctx)
    assert n.st_mode == stat.S_IFIFO | 0o640
    assert fuse_errno(ops.create, ROOT_INO, b"f", 0o100644, os.O_WRONLY, ctx) == errno.EEXIST
    call(ops.release, fi.fh)


def test_lookup_caches_misses_except_under_snapshot(ops: FuseOperations,
                                                    volume: Volume) -> None:
    miss = call(ops.lookup, ROOT_INO, b"nothing", Ctx())
    assert miss.st_ino == 0 and miss.entry_timeout > 0
    snapdir = call(ops.lookup, ROOT_INO, b".snapshot", Ctx())
    assert fuse_errno(ops.lookup, snapdir.st_ino, b"s9", Ctx()) == errno.ENOENT
    assert fuse_errno(ops.lookup, ROOT_INO, b"x" * 256, Ctx()) == errno.ENAMETOOLONG


def test_open_truncates_and_refuses_writes_to_snapshots(ops: FuseOperations,
                                                        volume: Volume) -> None:
    volume.write_bytes("/f", b"0123456789")
    volume.snapshot("s1")
    ino = volume.fs.resolve("/f")
    fi = call(ops.open, ino, os.O_WRONLY | os.O_TRUNC, Ctx())
    assert volume.fs.getattr(ino).size == 0
    call(ops.release, fi.fh)
    snap_f = volume.fs.resolve("/.snapshot/s1/f")
    assert fuse_errno(ops.open, snap_f, os.O_WRONLY, Ctx()) == errno.EROFS
    assert fuse_errno(ops.open, snap_f, os.O_RDONLY | os.O_TRUNC, Ctx()) == errno.EROFS
    fi = call(ops.open, snap_f, os.O_RDONLY, Ctx())
    assert call(ops.read, fi.fh, 0, 100) == b"0123456789"
    call(ops.release, fi.fh)
    assert fuse_errno(ops.access, snap_f, os.W_OK, Ctx()) == errno.EROFS


def test_rename_flags(ops: FuseOperations, volume: Volume) -> None:
    volume.write_bytes("/a", b"a")
    volume.write_bytes("/b", b"b")
    assert fuse_errno(ops.rename, ROOT_INO, b"a", ROOT_INO, b"b",
                      pyfuse3.RENAME_EXCHANGE, Ctx()) == errno.EINVAL
    assert fuse_errno(ops.rename, ROOT_INO, b"a", ROOT_INO, b"b",
                      pyfuse3.RENAME_NOREPLACE, Ctx()) == errno.EEXIST
    call(ops.rename, ROOT_INO, b"a", ROOT_INO, b"b", 0, Ctx())
    assert volume.read_bytes("/b") == b"a"


def test_open_handle_keeps_an_unlinked_inode_until_release(ops: FuseOperations,
                                                           volume: Volume) -> None:
    fi, attr = call(ops.create, ROOT_INO, b"f", 0o100644, os.O_RDWR, Ctx())
    call(ops.write, fi.fh, 0, b"payload")
    call(ops.unlink, ROOT_INO, b"f", Ctx())
    assert call(ops.getattr, attr.st_ino, Ctx()).st_nlink == 0
    assert call(ops.read, fi.fh, 0, 100) == b"payload"
    call(ops.release, fi.fh)
    assert fuse_errno(ops.getattr, attr.st_ino, Ctx()) == errno.ENOENT
    # close_all does the same for handles the kernel never released
    fi, attr = call(ops.create, ROOT_INO, b"g", 0o100644, os.O_RDWR, Ctx())
    call(ops.unlink, ROOT_INO, b"g", Ctx())
    ops.close_all()
    assert fuse_errno(ops.getattr, attr.st_ino, Ctx()) == errno.ENOENT


def test_fsync_commits_a_cp(ops: FuseOperations, volume: Volume) -> None:
    fi, _ = call(ops.create, ROOT_INO, b"f", 0o100644, os.O_RDWR, Ctx())
    call(ops.write, fi.fh, 0, b"x" * 10000)
    cp = volume.store.cp
    call(ops.fsync, fi.fh, True)
    assert volume.store.cp == cp + 1 and not volume.store.dirty
    call(ops.release, fi.fh)


def test_access_without_default_permissions(ops: FuseOperations, volume: Volume) -> None:
    volume.write_bytes("/secret", b"s")
    volume.chmod("/secret", 0o600)
    ino = volume.fs.resolve("/secret")
    assert call(ops.access, ino, os.R_OK, Ctx(uid=1000, gid=1000)) is False
    assert call(ops.access, ino, os.F_OK, Ctx(uid=1000, gid=1000)) is True
    assert call(ops.access, ino, os.R_OK | os.W_OK, Ctx()) is True
    assert call(ops.access, ino, os.X_OK, Ctx()) is False  # root: only if someone may
    volume.chown("/secret", 1000, 1000)
    assert call(ops.access, ino, os.R_OK | os.W_OK, Ctx(uid=1000, gid=1000)) is True
