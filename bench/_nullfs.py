"""A do-nothing FUSE file system: the ceiling that Python and FUSE allow, for bench/mount.py.

Usage::

    python bench/_nullfs.py BACKING MOUNTPOINT [--size BYTES] [--state FILE]

Serves MOUNTPOINT in the foreground until it is unmounted (``fusermount3
-u``, ``umount``) or gets SIGTERM/SIGINT/SIGHUP, then fdatasyncs BACKING,
writes its state and exits 0.

What it is. The same binding and the same request model as mirrorfs's
daemon (``pyfuse3`` low-level ``Operations`` under trio, every handler
answering synchronously on the trio thread), with no file system behind it:
inodes and directories live in Python dicts, and file data lives in ONE
preallocated backing file, ``os.pread``/``os.pwrite`` at offsets a bump
allocator hands out. No copy-on-write, no checksums, no mirroring, no
commit: ``fsync`` and ``fsyncdir`` are one ``os.fdatasync`` of the backing
file. What a request costs here is what Python, pyfuse3 and the kernel's
FUSE layer cost on the machine, plus the disk's cost of the data.

Space. Each file owns a list of extents of the backing file; a write past
its capacity asks the bump allocator for more, at least doubling the
capacity (up to 64 MiB a step), and extends the file's last extent in place
when that extent ends where the free space starts, so a file written alone
is one contiguous run. Nothing is ever freed (unlink and truncate leak their
space): a benchmark run never fills a backing file sized for it. A
truncation cuts the extents behind the new size and zeroes the rest of its
last block, so regrown files read zeros.

Restart. The inode table is pickled to ``--state`` at a clean exit and read
back at start when the file exists, so a benchmark can stop the daemon,
drop caches and start it again over the same data (a cold read).

Fair comparison. The mount options, the entry/attribute/negative timeouts,
the writeback-cache and dot-lookup flags are taken from mirrorfs's daemon at
start (``fuse_settings``), so both file systems ask the kernel for the same
things; so are the daemon's process- and mount-level tweaks when the
measured mirrorfs has them: ``tune_malloc`` (glibc thresholds, so 1 MiB
request buffers are not mmapped afresh) is called the same way, and
``READAHEAD_KIB`` (the read-ahead window mirrorfs gives its mount) is
written to this mount's bdi once the kernel has applied FUSE's INIT reply
(which sets it), and the page-cache recycling of mirrorfs's file plexes
(``plex._file.ReadRuns``: a run of reads of READ_STREAM_MIN or more is
dropped from the page cache every READ_DROP_BYTES, and when a read leaves
the run) is done by the same code on the backing file. Without it this ceiling kept every
page it read, and on a VM that hands freed guest memory back to its host
(free page reporting) its cold reads ran at half speed in most rounds
while mirrorfs's, recycling its pages, did not: a ratio over 1 that said
which file system met the VM's slow phase, not what either can do.
``fuse_settings`` says which were found. ``pyfuse3.main()``
runs with its defaults, as mirrorfs's does, and ``open`` answers a
``FileInfo`` with pyfuse3's defaults, as mirrorfs's does. Extended
attributes answer ENOSYS, as mirrorfs's do. A read is answered from one
buffer kept for all reads (``os.preadv`` into it), the cheapest reply
Python can give.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import errno
import logging
import os
import pickle
import signal
import stat
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyfuse3
import trio

log = logging.getLogger("nullfs")

ROOT = pyfuse3.ROOT_INODE
BLOCK = 4096
MAX_GROW = 64 << 20  # most bytes a file's capacity grows by in one step
NAME_MAX = 255
FSTYPE = "fuse.nullfs"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
DEFAULT_SIZE = 8 << 30


# -- settings shared with mirrorfs -------------------------------------------------


def fuse_settings(backing: str) -> dict[str, Any]:
    """What mirrorfs's daemon gives FUSE (options, timeouts, flags), for nullfs to copy.

    Read from ``mirrorfs.daemon`` at run time, so the ceiling follows the
    daemon when it changes; ``source`` says whether that worked or the
    defaults below (libfuse/pyfuse3 behaviour mirrorfs had when this was
    written) were used.
    """
    out: dict[str, Any] = {
        "options": sorted({"fsname=nullfs", "subtype=nullfs"}),
        "entry_timeout": 1.0, "attr_timeout": 1.0, "negative_timeout": 1.0,
        "enable_writeback_cache": False, "supports_dot_lookup": True,
        "enable_acl": False, "tune_malloc": False, "read_ahead_kib": None,
        "read_stream_min": None, "source": "defaults"}
    try:
        from mirrorfs.daemon import _fuse, _mount
        from mirrorfs.plex import _file

        opts = set(_mount.MountOptions().for_fuse(Path(backing)))
        opts = {o for o in opts if not o.startswith(("subtype=", "fsname="))}
        opts |= {"fsname=nullfs", "subtype=nullfs"}
        ops = _fuse.FuseOperations
        out.update(
            options=sorted(opts),
            entry_timeout=float(_fuse.ENTRY_TIMEOUT_S),
            attr_timeout=float(_fuse.ATTR_TIMEOUT_S),
            negative_timeout=float(getattr(_fuse, "NEGATIVE_TIMEOUT_S", 0.0)),
            enable_writeback_cache=bool(getattr(ops, "enable_writeback_cache", False)),
            supports_dot_lookup=bool(getattr(ops, "supports_dot_lookup", True)),
            enable_acl=bool(getattr(ops, "enable_acl", False)),
            tune_malloc=callable(getattr(_mount, "tune_malloc", None)),
            read_ahead_kib=getattr(_mount, "READAHEAD_KIB", None),
            read_stream_min=(getattr(_file, "READ_STREAM_MIN", None)
                             if hasattr(_file, "ReadRuns") else None),
            source="mirrorfs.daemon")
    except Exception as e:  # mirrorfs mid-edit or absent: keep the defaults, say so
        out["source"] = f"defaults ({type(e).__name__}: {e})"
    return out


# -- the inode table ----------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Node:
    """One inode: attributes, and a directory's entries or a file's extents."""

    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    nlink: int = 1
    rdev: int = 0
    size: int = 0
    parent: int = ROOT
    children: dict[bytes, int] | None = None
    target: bytes = b""
    ext_log: list[int] = dataclasses.field(default_factory=list)  # file offset of each extent
    ext_phys: list[int] = dataclasses.field(default_factory=list)  # backing offset
    ext_len: list[int] = dataclasses.field(default_factory=list)
    cap: int = 0  # bytes the extents cover
    opens: int = 0


class Backing:
    """The one backing file and its bump allocator."""

    def __init__(self, path: str, size: int, top: int) -> None:
        fresh = not os.path.exists(path)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if fresh or os.fstat(self.fd).st_size < size:
            os.posix_fallocate(self.fd, 0, size)
        self.size = os.fstat(self.fd).st_size
        self.top = top

    def alloc(self, n: int) -> int:
        if self.top + n > self.size:
            raise pyfuse3.FUSEError(errno.ENOSPC)
        off = self.top
        self.top += n
        return off

    def close(self) -> None:
        os.fdatasync(self.fd)
        os.close(self.fd)


def _round_up(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


class NullOps(pyfuse3.Operations):
    """pyfuse3 handlers over the dicts and the backing file (see the module docstring)."""

    def __init__(self, backing: Backing, settings: dict[str, Any],
                 nodes: dict[int, Node] | None = None, next_ino: int = ROOT + 1) -> None:
        super().__init__()
        self.supports_dot_lookup = settings["supports_dot_lookup"]
        self.enable_writeback_cache = settings["enable_writeback_cache"]
        self.enable_acl = settings["enable_acl"]
        self.entry_timeout = settings["entry_timeout"]
        self.attr_timeout = settings["attr_timeout"]
        self.negative_timeout = settings["negative_timeout"]
        self.b = backing
        self.fd = backing.fd
        if nodes is None:
            now = time.time_ns()
            nodes = {ROOT: Node(stat.S_IFDIR | 0o755, 0, 0, now, now, now, nlink=2,
                                children={})}
        self.nodes = nodes
        self.next_ino = next_ino
        self.files: dict[int, int] = {}  # file handle -> inode
        self.rbuf = bytearray(1 << 20)  # the reply buffer of every read
        self.read_stream_min = settings["read_stream_min"]  # None: no page-cache drops
        self.read_runs = None
        if self.read_stream_min is not None:
            from mirrorfs.plex._file import ReadRuns

            self.read_runs = ReadRuns(self.fd)
        self.dirs: dict[int, tuple[int, list[tuple[bytes, int]]]] = {}  # handle -> listing
        self.next_fh = 1

    # -- helpers ------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {"nodes": self.nodes, "next_ino": self.next_ino, "top": self.b.top}

    def _node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _dir(self, ino: int) -> Node:
        n = self._node(ino)
        if n.children is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return n

    def _entry(self, ino: int, n: Node) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.generation = 0
        e.entry_timeout = self.entry_timeout
        e.attr_timeout = self.attr_timeout
        e.st_mode = n.mode
        e.st_nlink = n.nlink
        e.st_uid = n.uid
        e.st_gid = n.gid
        e.st_rdev = n.rdev
        e.st_size = BLOCK if n.children is not None else n.size
        e.st_blksize = BLOCK
        e.st_blocks = _round_up(n.size) // 512
        e.st_atime_ns = n.atime_ns
        e.st_mtime_ns = n.mtime_ns
        e.st_ctime_ns = n.ctime_ns
        return e

    def _new(self, parent: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext,
             **kw: Any) -> tuple[int, Node]:
        p = self._dir(parent)
        assert p.children is not None
        if not name or b"/" in name or name in (b".", b".."):
            raise pyfuse3.FUSEError(errno.EINVAL)
        if len(name) > NAME_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        if name in p.children:
            raise pyfuse3.FUSEError(errno.EEXIST)
        now = time.time_ns()
        if not stat.S_ISLNK(mode):
            mode &= ~(ctx.umask & 0o777)
        n = Node(mode, ctx.uid, ctx.gid, now, now, now, parent=parent, **kw)
        ino = self.next_ino
        self.next_ino += 1
        self.nodes[ino] = n
        p.children[name] = ino
        p.mtime_ns = p.ctime_ns = now
        if n.children is not None:
            p.nlink += 1
        return ino, n

    def _drop_link(self, ino: int, n: Node) -> None:
        n.nlink -= 1
        n.ctime_ns = time.time_ns()
        if n.nlink <= 0 and n.opens <= 0:
            del self.nodes[ino]

    def _pieces(self, n: Node, off: int, length: int) -> Iterator[tuple[int, int]]:
        """(backing offset, bytes) runs covering [off, off+length), all within ``n.cap``."""
        i = bisect.bisect_right(n.ext_log, off) - 1
        while length > 0:
            within = off - n.ext_log[i]
            k = min(length, n.ext_len[i] - within)
            yield n.ext_phys[i] + within, k
            off += k
            length -= k
            i += 1

    def _grow(self, n: Node, end: int) -> None:
        """Extend the file's extents to cover [0, end)."""
        need = end - n.cap
        if need <= 0:
            return
        step = _round_up(max(need, min(max(n.cap, BLOCK), MAX_GROW)))
        if self.b.top + step > self.b.size:
            step = _round_up(need)
        if n.ext_len and n.ext_phys[-1] + n.ext_len[-1] == self.b.top:
            self.b.alloc(step)
            n.ext_len[-1] += step
        else:
            n.ext_log.append(n.cap)
            n.ext_phys.append(self.b.alloc(step))
            n.ext_len.append(step)
        n.cap += step

    def _truncate(self, n: Node, size: int) -> None:
        if size < n.size and size < n.cap:
            keep = _round_up(size)
            while n.ext_len and n.ext_log[-1] >= keep:
                n.ext_log.pop()
                n.ext_phys.pop()
                n.ext_len.pop()
            if n.ext_len:
                n.ext_len[-1] = keep - n.ext_log[-1]
            n.cap = keep
            if keep > size:  # the rest of the last block must read as zeros if regrown
                for phys, k in self._pieces(n, size, keep - size):
                    os.pwrite(self.fd, bytes(k), phys)
        n.size = size

    # -- names --------------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> pyfuse3.EntryAttributes:
        p = self._dir(parent_inode)
        assert p.children is not None
        if name == b".":
            ino: int | None = parent_inode
        elif name == b"..":
            ino = p.parent
        else:
            ino = p.children.get(name)
        if ino is None:
            neg = pyfuse3.EntryAttributes()
            neg.st_ino = 0
            neg.entry_timeout = self.negative_timeout
            return neg
        return self._entry(ino, self._node(ino))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """Nothing: inode numbers are never reused (as in mirrorfs)."""

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext
                      ) -> pyfuse3.EntryAttributes:
        return self._entry(inode, self._node(inode))

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        n = self._node(inode)
        now = time.time_ns()
        if fields.update_size:
            if n.children is not None:
                raise pyfuse3.FUSEError(errno.EISDIR)
            self._truncate(n, attr.st_size)
            n.mtime_ns = now
        if fields.update_mode:
            n.mode = stat.S_IFMT(n.mode) | (attr.st_mode & 0o7777)
        if fields.update_uid:
            n.uid = attr.st_uid
        if fields.update_gid:
            n.gid = attr.st_gid
        if fields.update_atime:
            n.atime_ns = attr.st_atime_ns
        if fields.update_mtime:
            n.mtime_ns = attr.st_mtime_ns
        n.ctime_ns = now
        return self._entry(inode, n)

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        n = self._node(inode)
        if not stat.S_ISLNK(n.mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return n.target

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if stat.S_IFMT(mode) == 0:
            mode |= stat.S_IFREG
        ino, n = self._new(parent_inode, name, mode, ctx, rdev=rdev)
        return self._entry(ino, n)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        ino, n = self._new(parent_inode, name, stat.S_IFDIR | (mode & 0o7777), ctx,
                           nlink=2, children={})
        return self._entry(ino, n)

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        ino, n = self._new(parent_inode, name, stat.S_IFLNK | 0o777, ctx, target=target)
        n.size = len(target)
        return self._entry(ino, n)

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        n = self._node(inode)
        if n.children is not None:
            raise pyfuse3.FUSEError(errno.EPERM)
        p = self._dir(new_parent_inode)
        assert p.children is not None
        if new_name in p.children:
            raise pyfuse3.FUSEError(errno.EEXIST)
        p.children[new_name] = inode
        n.nlink += 1
        p.mtime_ns = p.ctime_ns = n.ctime_ns = time.time_ns()
        return self._entry(inode, n)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> None:
        p = self._dir(parent_inode)
        assert p.children is not None
        ino = p.children.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        n = self._node(ino)
        if n.children is not None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        del p.children[name]
        p.mtime_ns = p.ctime_ns = time.time_ns()
        self._drop_link(ino, n)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                    ) -> None:
        p = self._dir(parent_inode)
        assert p.children is not None
        ino = p.children.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        n = self._dir(ino)
        if n.children:
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        del p.children[name]
        p.nlink -= 1
        p.mtime_ns = p.ctime_ns = time.time_ns()
        del self.nodes[ino]

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        if flags & ~pyfuse3.RENAME_NOREPLACE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        po, pn = self._dir(parent_inode_old), self._dir(parent_inode_new)
        assert po.children is not None and pn.children is not None
        ino = po.children.get(name_old)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        n = self._node(ino)
        old = pn.children.get(name_new)
        if old == ino:
            return
        if old is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            on = self._node(old)
            if on.children is not None:
                if n.children is None:
                    raise pyfuse3.FUSEError(errno.EISDIR)
                if on.children:
                    raise pyfuse3.FUSEError(errno.ENOTEMPTY)
                del self.nodes[old]
                pn.nlink -= 1
            else:
                if n.children is not None:
                    raise pyfuse3.FUSEError(errno.ENOTDIR)
                self._drop_link(old, on)
        del po.children[name_old]
        pn.children[name_new] = ino
        if n.children is not None and parent_inode_old != parent_inode_new:
            n.parent = parent_inode_new
            po.nlink -= 1
            pn.nlink += 1
        now = time.time_ns()
        n.ctime_ns = po.mtime_ns = po.ctime_ns = pn.mtime_ns = pn.ctime_ns = now

    # -- files --------------------------------------------------------------------

    def _open(self, ino: int, n: Node) -> pyfuse3.FileInfo:
        n.opens += 1
        fh = self.next_fh
        self.next_fh += 1
        self.files[fh] = ino
        return pyfuse3.FileInfo(fh=fh)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext
                   ) -> pyfuse3.FileInfo:
        n = self._node(inode)
        if n.children is not None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_TRUNC and stat.S_ISREG(n.mode):
            self._truncate(n, 0)
            n.mtime_ns = n.ctime_ns = time.time_ns()
        return self._open(inode, n)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        ino, n = self._new(parent_inode, name, mode, ctx)
        return self._open(ino, n), self._entry(ino, n)

    async def read(  # type: ignore[override]  # pyfuse3 takes any buffer
            self, fh: int, off: int, size: int) -> memoryview | bytes:
        """Into one buffer kept for all reads: pyfuse3 copies the reply out on return."""
        n = self._node(self.files[fh])
        size = min(size, n.size - off)
        if size <= 0:
            return b""
        if len(self.rbuf) < size:
            self.rbuf = bytearray(size)
        mv = memoryview(self.rbuf)
        have = max(0, min(size, n.cap - off))  # past the extents: a hole, zeros
        pos = 0
        for phys, k in self._pieces(n, off, have):
            pos += os.preadv(self.fd, [mv[pos:pos + k]], phys)
            if self.read_runs is not None and size >= self.read_stream_min:
                self.read_runs.read(phys, k)
        if pos < size:
            mv[pos:size] = bytes(size - pos)
        return mv[:size]

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        n = self._node(self.files[fh])
        end = off + len(buf)
        self._grow(n, end)
        mv = memoryview(buf)
        pos = 0
        for phys, k in self._pieces(n, off, len(buf)):
            os.pwrite(self.fd, mv[pos:pos + k], phys)
            pos += k
        if end > n.size:
            n.size = end
        n.mtime_ns = n.ctime_ns = time.time_ns()
        return len(buf)

    async def flush(self, fh: int) -> None:
        pass

    async def release(self, fh: int) -> None:
        ino = self.files.pop(fh, None)
        if ino is None:
            return
        n = self.nodes.get(ino)
        if n is not None:
            n.opens -= 1
            if n.nlink <= 0 and n.opens <= 0:
                del self.nodes[ino]

    async def fsync(self, fh: int, datasync: bool) -> None:
        os.fdatasync(self.fd)

    # -- directories ----------------------------------------------------------------

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self._dir(inode)
        fh = self.next_fh
        self.next_fh += 1
        self.dirs[fh] = (inode, [])
        return fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        ino, listing = self.dirs[fh]
        if start_id == 0:  # a pass starts: take its listing (served by cookie = index + 1)
            d = self._dir(ino)
            assert d.children is not None
            listing = list(d.children.items())
            self.dirs[fh] = (ino, listing)
        for i in range(start_id, len(listing)):
            name, child = listing[i]
            n = self.nodes.get(child)
            if n is None:  # removed since the pass started
                continue
            if not pyfuse3.readdir_reply(token, name, self._entry(child, n), i + 1):
                break

    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        os.fdatasync(self.fd)

    # -- the volume -------------------------------------------------------------------

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        out = pyfuse3.StatvfsData()
        out.f_bsize = out.f_frsize = BLOCK
        out.f_blocks = self.b.size // BLOCK
        out.f_bfree = out.f_bavail = (self.b.size - self.b.top) // BLOCK
        out.f_files = 1 << 32
        out.f_ffree = out.f_favail = (1 << 32) - len(self.nodes)
        out.f_namemax = NAME_MAX
        return out

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        self._node(inode)
        return True

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


# -- running it -------------------------------------------------------------------------


def set_readahead(mountpoint: str, kib: int) -> None:
    """Write ``kib`` to the read-ahead window of the mount's bdi (/sys/class/bdi/MAJ:MIN)."""
    bdi = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4] == mountpoint:
                bdi = fields[2]
    try:
        if bdi is None:
            raise OSError(errno.ENOENT, "not in /proc/self/mountinfo")
        Path(f"/sys/class/bdi/{bdi}/read_ahead_kb").write_text(f"{kib}\n")
        log.info("read-ahead of %s (bdi %s): %d KiB", mountpoint, bdi, kib)
    except OSError as e:
        log.warning("read-ahead of %s stays at the kernel's default: %s", mountpoint, e)


async def _main_loop(mountpoint: str, read_ahead_kib: int | None) -> None:
    """pyfuse3's loop, ended by an unmount or by the first stop signal (as mirrorfs's)."""

    async def on_signal(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            task_status.started()
            async for signum in signals:
                log.info("%s: unmounting", signal.Signals(signum).name)
                pyfuse3.terminate()
                return

    async def after_init() -> None:
        """A stat is answered only after INIT, by this loop: so from a thread, then set."""
        assert read_ahead_kib is not None
        with contextlib.suppress(OSError):
            await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
            set_readahead(mountpoint, read_ahead_kib)

    async with trio.open_nursery() as nursery:
        await nursery.start(on_signal)
        if read_ahead_kib:
            nursery.start_soon(after_init)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def serve(backing_path: str, mountpoint: str, size: int, state_path: str | None) -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    settings = fuse_settings(backing_path)
    nodes: dict[int, Node] | None = None
    next_ino, top = ROOT + 1, 0
    if state_path and os.path.exists(state_path):
        with open(state_path, "rb") as f:
            st = pickle.load(f)
        nodes, next_ino, top = st["nodes"], st["next_ino"], st["top"]
        for n in nodes.values():
            n.opens = 0
    backing = Backing(backing_path, size, top)
    ops = NullOps(backing, settings, nodes, next_ino)
    if settings["tune_malloc"]:
        from mirrorfs.daemon import _mount

        _mount.tune_malloc()
    pyfuse3.init(ops, mountpoint, set(settings["options"]))
    log.info("mounted on %s with %s", mountpoint, settings)
    try:
        trio.run(_main_loop, os.path.abspath(mountpoint), settings["read_ahead_kib"])
    finally:
        pyfuse3.close(unmount=True)
        backing.close()
        if state_path:
            tmp = state_path + ".tmp"
            with open(tmp, "wb") as f:
                pickle.dump(ops.state(), f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, state_path)
        log.info("closed: %d inodes, %d bytes of the backing file used", len(ops.nodes),
                 backing.top)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    ap.add_argument("backing", help="the backing file (created and preallocated if absent)")
    ap.add_argument("mountpoint")
    ap.add_argument("--size", type=int, default=DEFAULT_SIZE,
                    help=f"bytes to preallocate (default {DEFAULT_SIZE})")
    ap.add_argument("--state", default=None,
                    help="pickle of the inode table: read at start if present, written at exit")
    args = ap.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s nullfs[%(process)d] %(levelname)s: %(message)s")
    return serve(args.backing, args.mountpoint, args.size, args.state)


if __name__ == "__main__":
    sys.exit(main())
