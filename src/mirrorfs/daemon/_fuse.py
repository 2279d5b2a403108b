"""FUSE requests over a FileSystem: the pyfuse3 ``Operations`` of a mounted volume.

Owns the open file and directory handles of one mount. Keeps two promises:

* Every request ends in a reply. An ``FsError`` becomes its errno; ``NoSpace``
  ENOSPC; ``ReadOnly`` EROFS; any other error EIO, logged with its stack.
  pyfuse3 lets only ``FUSEError`` out of a handler and ends its main loop
  (the whole daemon) on anything else, so every handler goes through
  ``_replies`` and nothing else escapes.
* An inode stays readable and writable while any handle to it is open, even
  after unlink or a rename over it: ``open``/``create`` call
  ``FileSystem.opened`` and ``release`` calls ``FileSystem.released``, and
  the file system frees an inode only when both its links and its opens are
  gone. ``close_all`` releases the handles the kernel never released (a lazy
  or forced unmount), so the final CP holds no orphan.

Lookup counts. The kernel's lookup counts (``forget``) are not tracked:
inode numbers are never reused (``ObjectTable.new_ino`` only counts up), so
a stale kernel inode can only meet ENOENT, never another file; and the
open counts above already keep every inode a process can still reach.

Concurrency. Handlers run on the trio thread and call the file system
synchronously; each one finishes before the next starts. The CP timer
thread takes the same store lock, so a CP holds requests back briefly.

Kernel behaviour this relies on (libfuse 3 defaults): the kernel applies
the umask unless asked not to (we apply ``ctx.umask`` again, which is
idempotent); it passes O_TRUNC to ``open`` (ATOMIC_O_TRUNC) instead of a
separate truncate; O_APPEND offsets come from the kernel's i_size, exact
here since every write passes through this mount and there is no writeback
cache; O_EXCL is a lookup followed by ``create``, which refuses an existing
name with EEXIST. Extended attributes are not stored: the xattr handlers
answer ENOSYS once and the kernel then answers EOPNOTSUPP by itself (which
also spares a getxattr("security.capability") round trip on every write).
"""

from __future__ import annotations

import bisect
import dataclasses
import errno
import functools
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import pyfuse3

from ..errors import FsError, MirrorfsError, NoSpace, ReadOnly
from ..fs import SNAP_BASE, Attr, FileSystem

log = logging.getLogger("mirrorfs.daemon")

ENTRY_TIMEOUT_S = 1.0  # seconds the kernel may cache a name -> inode answer
ATTR_TIMEOUT_S = 1.0  # seconds the kernel may cache an inode's attributes
NEGATIVE_TIMEOUT_S = 1.0  # seconds the kernel may cache "no such name" (not in .snapshot)

_H = TypeVar("_H", bound=Callable[..., Awaitable[Any]])


def errno_of(exc: BaseException) -> int:
    """The errno a request that met ``exc`` returns (logging what nobody expected)."""
    if isinstance(exc, FsError):
        return exc.errno
    if isinstance(exc, NoSpace):
        return errno.ENOSPC
    if isinstance(exc, ReadOnly):
        return errno.EROFS
    if isinstance(exc, MirrorfsError):
        log.error("%s", exc, exc_info=exc if exc.traceback else None)
        return errno.EIO
    log.error("unexpected error in a request handler (this is a bug): %r", exc, exc_info=exc)
    return errno.EIO


def _sup_groups(pid: int) -> set[int]:
    """The caller's supplementary groups; none if it has exited meanwhile."""
    try:
        return set(pyfuse3.get_sup_groups(pid))
    except OSError:
        return set()


def _replies(fn: _H) -> _H:
    """Make a handler turn every exception into a FUSEError for its request."""

    @functools.wraps(fn)
    async def handler(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception as e:
            raise pyfuse3.FUSEError(errno_of(e)) from None

    return cast(_H, handler)


@dataclasses.dataclass
class _OpenDir:
    """One open directory: its inode and the listing of the current readdir pass.

    The listing is taken when a pass starts (offset 0) and served from by
    cookie, so a directory of n entries lists in O(n), not O(n^2). Entries
    removed since are skipped; entries added since may be missed (POSIX
    allows both).
    """

    ino: int
    entries: list[tuple[bytes, int, int, int]] | None = None
    cookies: list[int] = dataclasses.field(default_factory=list)


class FuseOperations(pyfuse3.Operations):
    """pyfuse3 request handlers over one FileSystem (see the module docstring)."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fs: FileSystem) -> None:
        super().__init__()
        self.fs = fs
        self._files: dict[int, int] = {}  # file handle -> inode
        self._writers: set[int] = set()  # file handles open for writing
        self._dirs: dict[int, _OpenDir] = {}  # directory handle -> its state
        self._next_fh = 1
        self._rbuf = bytearray(1 << 20)  # the reply buffer of every read (see read)

    # -- helpers ------------------------------------------------------------

    def _entry(self, a: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = a.ino
        e.generation = 0
        e.entry_timeout = ENTRY_TIMEOUT_S
        e.attr_timeout = ATTR_TIMEOUT_S
        e.st_mode = a.mode
        e.st_nlink = a.nlink
        e.st_uid = a.uid
        e.st_gid = a.gid
        e.st_rdev = a.rdev
        e.st_size = a.size
        e.st_blksize = a.blksize
        e.st_blocks = a.blocks
        e.st_atime_ns = a.atime_ns
        e.st_mtime_ns = a.mtime_ns
        e.st_ctime_ns = a.ctime_ns
        return e

    def _attr_entry(self, ino: int) -> pyfuse3.EntryAttributes:
        return self._entry(self.fs.getattr(ino))

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _owner(self, parent: int, mode: int, ctx: pyfuse3.RequestContext
               ) -> tuple[int, int, int]:
        """(mode, uid, gid) of a new inode: the caller's ids and umask, BSD group rule.

        A directory with the set-group-ID bit gives new entries its group,
        and new subdirectories the bit itself (as ext4 and XFS do).
        """
        mode = mode & ~(ctx.umask & 0o777)
        gid = ctx.gid
        pattr = self.fs.getattr(parent)
        if pattr.mode & stat.S_ISGID:
            gid = pattr.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        return mode, ctx.uid, gid

    def _writable_ino(self, ino: int) -> None:
        st = self.fs.store
        if ino >= SNAP_BASE or st.read_only or st.broken is not None:
            raise pyfuse3.FUSEError(errno.EROFS)

    def _durable(self) -> None:
        """Commit a CP now; EIO if the volume can no longer commit."""
        st = self.fs.store
        if st.broken is not None:
            raise pyfuse3.FUSEError(errno.EIO)
        st.commit()

    def close_all(self) -> None:
        """Release every handle the kernel left open (after the session ended)."""
        for ino in list(self._files.values()):
            try:
                self.fs.released(ino)
            except Exception as e:  # the final CP must still run
                errno_of(e)
        self._files.clear()
        self._writers.clear()
        self._dirs.clear()

    # -- names ----------------------------------------------------------------

    @_replies
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> pyfuse3.EntryAttributes:
        try:
            ino = self.fs.lookup(parent_inode, name)
        except FsError as e:
            if e.errno != errno.ENOENT or parent_inode >= SNAP_BASE:
                raise
            # a cached negative answer; .snapshot (its names change without us) is never cached
            neg = pyfuse3.EntryAttributes()
            neg.st_ino = 0
            neg.entry_timeout = NEGATIVE_TIMEOUT_S
            return neg
        return self._attr_entry(ino)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """Nothing to do: lookup counts are not tracked (module docstring)."""

    @_replies
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext
                      ) -> pyfuse3.EntryAttributes:
        return self._attr_entry(inode)

    @_replies
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        kw: dict[str, int] = {}
        if fields.update_mode:
            kw["mode"] = attr.st_mode
        if fields.update_uid:
            kw["uid"] = attr.st_uid
        if fields.update_gid:
            kw["gid"] = attr.st_gid
        if fields.update_size:
            kw["size"] = attr.st_size
        if fields.update_atime:
            kw["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            kw["mtime_ns"] = attr.st_mtime_ns
        if ("uid" in kw or "gid" in kw) and "mode" not in kw:
            # chown clears set-user-ID, and set-group-ID with group execute (chown(2));
            # libfuse 3 asks the file system to do it (HANDLE_KILLPRIV)
            old = self.fs.getattr(inode)
            if stat.S_ISREG(old.mode):
                kill = stat.S_ISUID
                if old.mode & stat.S_IXGRP:
                    kill |= stat.S_ISGID
                if old.mode & kill:
                    kw["mode"] = old.mode & ~kill
        return self._entry(self.fs.setattr(inode, **kw))

    @_replies
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self.fs.readlink(inode)

    @_replies
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        mode, uid, gid = self._owner(parent_inode, mode, ctx)
        if stat.S_IFMT(mode) == 0:
            mode |= stat.S_IFREG
        ino = self.fs.mknod(parent_inode, name, mode, rdev, uid, gid)
        return self._attr_entry(ino)

    @_replies
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        mode, uid, gid = self._owner(parent_inode, stat.S_IFDIR | (mode & 0o7777), ctx)
        ino = self.fs.mkdir(parent_inode, name, mode, uid, gid)
        return self._attr_entry(ino)

    @_replies
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> None:
        self.fs.unlink(parent_inode, name)

    @_replies
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                    ) -> None:
        self.fs.rmdir(parent_inode, name)

    @_replies
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        _, uid, gid = self._owner(parent_inode, stat.S_IFLNK | 0o777, ctx)
        ino = self.fs.symlink(parent_inode, name, target, uid, gid)
        return self._attr_entry(ino)

    @_replies
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        if flags & ~pyfuse3.RENAME_NOREPLACE:  # RENAME_EXCHANGE, RENAME_WHITEOUT
            raise pyfuse3.FUSEError(errno.EINVAL)
        self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new,
                       noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE))

    @_replies
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self.fs.link(inode, new_parent_inode, new_name)
        return self._attr_entry(inode)

    # -- files ----------------------------------------------------------------

    @_replies
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext
                   ) -> pyfuse3.FileInfo:
        a = self.fs.getattr(inode)
        if stat.S_ISDIR(a.mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        writes = flags & os.O_ACCMODE != os.O_RDONLY
        if writes or flags & os.O_TRUNC:
            self._writable_ino(inode)
        if flags & os.O_TRUNC and stat.S_ISREG(a.mode):
            self.fs.setattr(inode, size=0)
        self.fs.opened(inode)
        fh = self._new_fh()
        self._files[fh] = inode
        if writes:
            self._writers.add(fh)
        return pyfuse3.FileInfo(fh=fh)

    @_replies
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        mode, uid, gid = self._owner(parent_inode, mode, ctx)
        ino = self.fs.create(parent_inode, name, mode, uid, gid)
        self.fs.opened(ino)
        fh = self._new_fh()
        self._files[fh] = ino
        if flags & os.O_ACCMODE != os.O_RDONLY:
            self._writers.add(fh)
        return pyfuse3.FileInfo(fh=fh), self._attr_entry(ino)

    @_replies
    async def read(  # type: ignore[override]  # pyfuse3 takes any buffer (PyObject_GetBuffer)
            self, fh: int, off: int, size: int) -> memoryview:
        """Read into one buffer kept for all reads: no allocation per request.

        pyfuse3 copies the reply out as soon as this coroutine returns, and
        no handler awaits, so one read finishes before the next begins and
        the buffer is free again.
        """
        if len(self._rbuf) < size:
            self._rbuf = bytearray(size)
        n = self.fs.readinto(self._files[fh], off, memoryview(self._rbuf)[:size])
        return memoryview(self._rbuf)[:n]

    @_replies
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return self.fs.write(self._files[fh], off, buf)

    @_replies
    async def flush(self, fh: int) -> None:
        """close(2): data is already in the store; tell a writer if it can no longer commit."""
        if fh in self._writers and self.fs.store.broken is not None:
            raise pyfuse3.FUSEError(errno.EIO)

    @_replies
    async def release(self, fh: int) -> None:
        ino = self._files.pop(fh, None)
        self._writers.discard(fh)
        if ino is not None:
            self.fs.released(ino)

    @_replies
    async def fsync(self, fh: int, datasync: bool) -> None:
        """fsync and fdatasync: durable on return, by committing a CP."""
        self._durable()

    # -- directories ------------------------------------------------------------

    @_replies
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if not stat.S_ISDIR(self.fs.getattr(inode).mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self._new_fh()
        self._dirs[fh] = _OpenDir(inode)
        return fh

    @_replies
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        d = self._dirs[fh]
        if start_id == 0 or d.entries is None:
            d.entries = list(self.fs.readdir(d.ino, start_id))
            d.cookies = [c for _, _, _, c in d.entries]
        i = bisect.bisect_right(d.cookies, start_id)
        for name, child, _typ, cookie in d.entries[i:]:
            try:
                entry = self._attr_entry(child)
            except FsError as e:
                if e.errno == errno.ENOENT:  # removed since the pass started
                    continue
                raise
            if not pyfuse3.readdir_reply(token, name, entry, cookie):
                break

    @_replies
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @_replies
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        self._durable()

    # -- the volume -------------------------------------------------------------

    @_replies
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = self.fs.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = s.block_size
        out.f_frsize = s.block_size
        out.f_blocks = s.blocks
        out.f_bfree = s.free
        out.f_bavail = s.free
        out.f_files = s.files
        out.f_ffree = s.files_free
        out.f_favail = s.files_free
        out.f_namemax = s.name_max
        return out

    @_replies
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        """access(2) without default_permissions: mode bits against the caller's ids."""
        a = self.fs.getattr(inode)
        if mode & os.W_OK:
            self._writable_ino(inode)
        if mode == os.F_OK:
            return True
        if ctx.uid == 0:
            # root may read and write anything, and execute what anyone may execute
            return not (mode & os.X_OK) or stat.S_ISDIR(a.mode) or bool(a.mode & 0o111)
        if ctx.uid == a.uid:
            bits = (a.mode >> 6) & 7
        elif ctx.gid == a.gid or a.gid in _sup_groups(ctx.pid):
            bits = (a.mode >> 3) & 7
        else:
            bits = a.mode & 7
        return mode & bits == mode

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext
                          ) -> None:
        raise pyfuse3.FUSEError(errno.ENOSYS)
