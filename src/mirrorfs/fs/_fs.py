"""POSIX semantics over objects: names, directories, files, links, attributes, ``.snapshot``.

Owns the inode-number space seen by callers and the link counts. Keeps:
``nlink`` equals the number of directory entries naming an inode (plus 1
for "." and one per subdirectory's ".." on directories); a rename replaces
its target within one CP, so no crash shows both names or neither.

Inode numbers. The active image uses its own numbers (root = 1). The
virtual directory ``/.snapshot`` is SNAPDIR_INO, and inode ``i`` of the
snapshot with session id ``s`` is ``SNAP_BASE + (s << 40) + i``; every
such inode is read-only (EROFS).

Errors carry an errno (FsError); only ``daemon/`` turns them into FUSE
replies. Every public method takes the store lock.

Orphans (ext4's orphan list, as a directory). POSIX keeps a file whose
last link goes while it is open until its last close. Such an *orphan* has
``nlink`` 0 and no name, yet its blocks are in use, and if the volume
closes or the power fails before the last close nothing would ever free
it. So ``_drop_link`` lists it, in the same CP that drops its last link, in
the orphan directory: inode ORPHAN_INO (0, a number the object table never
hands out), a directory like any other (hashed buckets, ``Directory``) but
reachable from no root, shown by no readdir or lookup, holding one entry
per orphan named by its decimal inode number. Keeps: in every committed
image, an inode with ``nlink`` 0 is listed there, and everything listed
has ``nlink`` 0 (``link`` refuses an unlinked inode with ENOENT, as Linux
does). An entry goes only together with freeing its inode (or, if it names
a free or linked inode, as stale), in two places:

* ``released`` (the last close);
* ``reclaim_orphans``, at every writable open (``Volume.attach``) and
  after a rollback: it frees every listed inode nobody has open and
  commits. Its cost follows the number of orphans (one pass over the
  orphan directory), never the size of the object table. A read-only open
  leaves them listed, and fsck counts them as reachable (``_fsck.py``).

The orphan directory is created by the first orphan and released by the
CP that finds it empty (``_flush_dirs``), never in the same CP as it is
created, so a volume with no orphans is exactly a format-1 volume of
before (an older mirrorfs reads it unchanged) and a snapshot holds the
orphan directory only when it was taken while a file was open and
unlinked. Why a directory and not a list in the superblock: the slot has no
room to grow, the directory code already gives O(1) insert and removal in
one bucket leaf, and fsck and the resync already walk every object's tree,
so the list costs no new on-disk structure.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import stat
from collections.abc import Iterator

from ..errors import CorruptBlock, FormatError, FsError, NoSpace
from ..ondisk import MAX_NAME_LEN, ORPHAN_INO, ROOT_INO, Inode, SnapshotRecord
from ..store import ObjectTable, ObjectView, Store
from ._dir import Directory

SNAPDIR_NAME = b".snapshot"
SNAP_BASE = 1 << 62
SNAPDIR_INO = SNAP_BASE
SNAP_SHIFT = 40
LOCAL_MASK = (1 << SNAP_SHIFT) - 1
RELATIME_NS = 24 * 3600 * 10**9
BLOCK_UNITS = 512  # st_blocks counts 512-byte units
MAX_FILE_SIZE = (1 << 63) - 1  # bytes; Linux's MAX_LFS_FILESIZE, and fits the inode's u64

log = logging.getLogger(__name__)


def dtype_of(mode: int) -> int:
    """Directory entry type (DT_*) from a mode."""
    return stat.S_IFMT(mode) >> 12


@dataclasses.dataclass(frozen=True, slots=True)
class Attr:
    """What stat(2) reports for one inode."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int
    blksize: int


@dataclasses.dataclass(frozen=True, slots=True)
class StatFs:
    block_size: int
    blocks: int
    free: int
    files: int
    files_free: int
    name_max: int


def _check_name(name: bytes) -> None:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise FsError(errno.EINVAL, name.decode(errors="replace"), "invalid name")
    if len(name) > MAX_NAME_LEN:
        raise FsError(errno.ENAMETOOLONG, name[:40].decode(errors="replace") + "...")


class FileSystem:
    """POSIX operations on a Store, addressed by inode number (and by path, for the API)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.lock = store.lock
        self._dirs: dict[tuple[int, int], Directory] = {}
        self._snap_ids: dict[bytes, int] = {}  # snapshot GUID -> session id
        self._snap_by_id: dict[int, SnapshotRecord] = {}
        self._views: dict[int, ObjectView] = {}
        self.open_counts: dict[int, int] = {}
        self._dirty_dirs: dict[int, Directory] = {}
        self._orphans_shrunk = False  # an orphan entry went since the last CP
        store.pre_commit.append(self._flush_dirs)

    def _mark_dirty(self, ino: int, d: Directory) -> None:
        self._dirty_dirs[ino] = d

    def _flush_dirs(self) -> None:
        """Before each CP: directories encode the buckets they changed; an empty orphan
        directory goes (here, not when its last entry goes, so it is never released and
        created again within one CP)."""
        dirty, self._dirty_dirs = self._dirty_dirs, {}
        for d in dirty.values():
            if d.view is self.objects:
                d.flush()
        if self._orphans_shrunk:
            self._orphans_shrunk = False
            ind = self.objects.inode(ORPHAN_INO)
            if not ind.free and ind.size == 0:
                self._dirs.pop((id(self.objects), ORPHAN_INO), None)
                self.objects.release(ORPHAN_INO)

    # -- set-up -------------------------------------------------------------

    @staticmethod
    def format_root(store: Store, uid: int = 0, gid: int = 0, mode: int = 0o755) -> None:
        """Create the root directory of a new volume and commit it."""
        objs = store.objects
        ino = objs.new_ino()
        assert ino == ROOT_INO
        now = store.clock.time_ns()
        objs.set_inode(ino, Inode(mode=stat.S_IFDIR | mode, uid=uid, gid=gid, nlink=2,
                                  atime_ns=now, mtime_ns=now, ctime_ns=now, parent=ROOT_INO))
        store.commit(force=True)

    @property
    def objects(self) -> ObjectTable:
        return self.store.objects

    def _now(self) -> int:
        return self.store.clock.time_ns()

    def reset_caches(self) -> None:
        """Forget decoded directories (after a rollback replaced the active image)."""
        self._dirs.clear()
        self._dirty_dirs.clear()

    # -- images -------------------------------------------------------------

    def _image(self, ino: int) -> tuple[ObjectView, int]:
        """The image an inode number lives in, and its number there."""
        if ino < SNAP_BASE:
            return self.objects, ino
        sid = (ino - SNAP_BASE) >> SNAP_SHIFT
        rec = self._snap_by_id.get(sid)
        if rec is None or not any(r.guid == rec.guid for r in self.store.snapshots):
            raise FsError(errno.ENOENT, "", "snapshot no longer exists")
        view = self._views.get(sid)
        if view is None:
            view = self.store.view(rec)
            self._views[sid] = view
        return view, ino & LOCAL_MASK

    def _snap_id(self, rec: SnapshotRecord) -> int:
        sid = self._snap_ids.get(rec.guid.bytes)
        if sid is None:
            sid = len(self._snap_ids) + 1
            self._snap_ids[rec.guid.bytes] = sid
            self._snap_by_id[sid] = rec
        return sid

    def _global(self, ino: int, like: int) -> int:
        """Inode ``ino`` of the image that inode ``like`` belongs to, as a global number."""
        if like < SNAP_BASE:
            return ino
        return (like & ~LOCAL_MASK) | ino

    def _dir(self, ino: int) -> Directory:
        view, local = self._image(ino)
        key = (id(view), local)
        d = self._dirs.get(key)
        if d is None or d.view is not view:
            d = Directory(view, local)
            if ino < SNAP_BASE:
                d.on_dirty = self._mark_dirty
            self._dirs[key] = d
        return d

    def _writable(self, ino: int) -> None:
        if ino >= SNAP_BASE:
            raise FsError(errno.EROFS, "", "snapshots are read-only")
        if self.store.read_only or self.store.broken is not None:
            raise FsError(errno.EROFS, "", "the volume is read-only")

    def _inode(self, ino: int) -> Inode:
        if ino == SNAPDIR_INO:
            root = self.objects.inode(ROOT_INO)
            return Inode(mode=stat.S_IFDIR | 0o555, nlink=2, uid=root.uid, gid=root.gid,
                         size=len(self.store.snapshots), atime_ns=root.atime_ns,
                         mtime_ns=root.mtime_ns, ctime_ns=root.ctime_ns)
        view, local = self._image(ino)
        if local == ORPHAN_INO:  # the orphan directory has no name and no number outside
            raise FsError(errno.ENOENT, "", f"no inode {ino}")
        ind = view.inode(local)
        if ind.free:
            raise FsError(errno.ENOENT, "", f"no inode {ino}")
        return ind

    # -- lookups ------------------------------------------------------------

    def getattr(self, ino: int) -> Attr:
        with self.lock:
            ind = self._inode(ino)
            bs = self.store.block_size
            used = ind.blocks
            if ino < SNAP_BASE and stat.S_ISREG(ind.mode):
                used += self._pending_blocks(ino)
            blocks = used * (bs // BLOCK_UNITS)
            size = ind.size if not stat.S_ISDIR(ind.mode) else bs
            return Attr(ino, ind.mode, ind.nlink, ind.uid, ind.gid, size, blocks, ind.atime_ns,
                        ind.mtime_ns, ind.ctime_ns, ind.rdev, bs)

    def _pending_blocks(self, ino: int) -> int:
        """Blocks the next CP adds to (or, if negative, drops from) a file's count.

        ``Inode.blocks`` counts committed leaves only; data written since the
        last CP must count at once, or ``tar --sparse`` and ``du`` take a file
        just written for one big hole (tar then archives zeros).
        """
        tree = self.objects.tree(ino)
        if not tree.dirty:
            return 0
        if not tree.committed:  # a new file: every dirty leaf with bytes is new (no walk)
            return sum(1 for leaf in tree.dirty.values() if leaf is not None)
        committed = set(tree.nonnull_leaves(min(tree.dirty), max(tree.dirty) + 1).tolist())
        delta = 0
        for i, leaf in tree.dirty.items():
            if leaf is None:
                delta -= i in committed
            else:
                delta += i not in committed
        return delta

    def lookup(self, parent: int, name: bytes) -> int:
        with self.lock:
            if len(name) > MAX_NAME_LEN:  # as Linux file systems answer, not ENOENT
                raise FsError(errno.ENAMETOOLONG, name[:40].decode(errors="replace") + "...")
            if parent == SNAPDIR_INO:
                for rec in self.store.snapshots:
                    if rec.name.encode() == name:
                        return SNAP_BASE + (self._snap_id(rec) << SNAP_SHIFT) + ROOT_INO
                raise FsError(errno.ENOENT, name.decode(errors="replace"))
            pind = self._inode(parent)
            if not stat.S_ISDIR(pind.mode):
                raise FsError(errno.ENOTDIR, name.decode(errors="replace"))
            if name == b".":
                return parent
            if name == b"..":
                return self._parent_of(parent)
            if parent == ROOT_INO and name == SNAPDIR_NAME:
                return SNAPDIR_INO
            got = self._dir(parent).lookup(name)
            if got is None:
                raise FsError(errno.ENOENT, name.decode(errors="replace"))
            return self._global(got[0], parent)

    def _parent_of(self, ino: int) -> int:
        if ino == SNAPDIR_INO:
            return ROOT_INO
        if ino >= SNAP_BASE and ino & LOCAL_MASK == ROOT_INO:
            return SNAPDIR_INO
        return self._global(self._inode(ino).parent or ROOT_INO, ino)

    def readdir(self, ino: int, after: int = 0) -> Iterator[tuple[bytes, int, int, int]]:
        """Entries after cookie ``after`` as (name, inode, DT type, cookie), "." and ".." first."""
        with self.lock:
            ind = self._inode(ino)
            if not stat.S_ISDIR(ind.mode):
                raise FsError(errno.ENOTDIR, "")
            out: list[tuple[bytes, int, int, int]] = []
            if after < 1:
                out.append((b".", ino, stat.S_IFDIR >> 12, 1))
            if after < 2:
                out.append((b"..", self._parent_of(ino), stat.S_IFDIR >> 12, 2))
            if ino == SNAPDIR_INO:
                for k, rec in enumerate(self.store.snapshots, start=3):
                    if k > after:
                        out.append((rec.name.encode(),
                                    SNAP_BASE + (self._snap_id(rec) << SNAP_SHIFT) + ROOT_INO,
                                    stat.S_IFDIR >> 12, k))
                return iter(out)
            if ino == ROOT_INO and after < 3:
                out.append((SNAPDIR_NAME, SNAPDIR_INO, stat.S_IFDIR >> 12, 3))
            for h, child, typ, name in self._dir(ino).entries(max(after, 3)):
                out.append((name, self._global(child, ino), typ, h))
            return iter(out)

    def listdir(self, ino: int) -> list[bytes]:
        return [n for n, _, _, _ in self.readdir(ino) if n not in (b".", b"..")]

    # -- creating -----------------------------------------------------------

    def _new_inode(self, parent: int, name: bytes, mode: int, uid: int, gid: int,
                   nlink: int = 1) -> int:
        self._writable(parent)
        _check_name(name)
        pind = self._inode(parent)
        if not stat.S_ISDIR(pind.mode):
            raise FsError(errno.ENOTDIR, name.decode(errors="replace"))
        if (parent == ROOT_INO and name == SNAPDIR_NAME) or self._dir(parent).lookup(name):
            raise FsError(errno.EEXIST, name.decode(errors="replace"))
        try:
            self.store.check_space(2)
        except NoSpace:
            raise FsError(errno.ENOSPC, name.decode(errors="replace")) from None
        objs = self.objects
        ino = objs.new_ino()
        now = self._now()
        objs.set_inode(ino, Inode(mode=mode, uid=uid, gid=gid, nlink=nlink, atime_ns=now,
                                  mtime_ns=now, ctime_ns=now,
                                  parent=parent if stat.S_ISDIR(mode) else 0))
        self._dir(parent).add(name, ino, dtype_of(mode))
        objs.update(parent, mtime_ns=now, ctime_ns=now)
        return ino

    def create(self, parent: int, name: bytes, mode: int = 0o644, uid: int = 0,
               gid: int = 0) -> int:
        """A new regular file (EEXIST if the name exists)."""
        with self.lock:
            if stat.S_IFMT(mode) == 0:
                mode |= stat.S_IFREG
            return self._new_inode(parent, name, mode, uid, gid)

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int = 0, uid: int = 0,
              gid: int = 0) -> int:
        with self.lock:
            ino = self._new_inode(parent, name, mode, uid, gid)
            if rdev:
                self.objects.update(ino, rdev=rdev)
            return ino

    def mkdir(self, parent: int, name: bytes, mode: int = 0o755, uid: int = 0,
              gid: int = 0) -> int:
        with self.lock:
            ino = self._new_inode(parent, name, stat.S_IFDIR | (mode & 0o7777), uid, gid, 2)
            pind = self.objects.inode(parent)
            self.objects.update(parent, nlink=pind.nlink + 1)
            return ino

    def symlink(self, parent: int, name: bytes, target: bytes, uid: int = 0,
                gid: int = 0) -> int:
        with self.lock:
            if len(target) > 4095:
                raise FsError(errno.ENAMETOOLONG, "symlink target")
            ino = self._new_inode(parent, name, stat.S_IFLNK | 0o777, uid, gid)
            self.store.write(ino, 0, target)
            return ino

    def readlink(self, ino: int) -> bytes:
        with self.lock:
            ind = self._inode(ino)
            if not stat.S_ISLNK(ind.mode):
                raise FsError(errno.EINVAL, "", "not a symbolic link")
            view, local = self._image(ino)
            return view.read(local, 0, ind.size)

    def link(self, ino: int, parent: int, name: bytes) -> None:
        with self.lock:
            self._writable(parent)
            self._writable(ino)
            _check_name(name)
            ind = self._inode(ino)
            if stat.S_ISDIR(ind.mode):
                raise FsError(errno.EPERM, name.decode(errors="replace"),
                              "hard links to directories are not allowed")
            if ind.nlink == 0:  # an open, unlinked file stays an orphan (Linux: ENOENT)
                raise FsError(errno.ENOENT, name.decode(errors="replace"),
                              "the file was unlinked")
            if (parent == ROOT_INO and name == SNAPDIR_NAME) or self._dir(parent).lookup(name):
                raise FsError(errno.EEXIST, name.decode(errors="replace"))
            now = self._now()
            self._dir(parent).add(name, ino, dtype_of(ind.mode))
            self.objects.update(ino, nlink=ind.nlink + 1, ctime_ns=now)
            self.objects.update(parent, mtime_ns=now, ctime_ns=now)

    # -- removing -----------------------------------------------------------

    def _drop_link(self, ino: int) -> None:
        ind = self.objects.inode(ino)
        now = self._now()
        nlink = ind.nlink - (2 if stat.S_ISDIR(ind.mode) else 1)
        if nlink <= 0 and not self.open_counts.get(ino):
            if stat.S_ISDIR(ind.mode):  # a removed directory has nothing left to encode
                self._dirty_dirs.pop(ino, None)
                self._dirs.pop((id(self.objects), ino), None)
            self.objects.release(ino)
        else:
            self.objects.update(ino, nlink=max(0, nlink), ctime_ns=now)
            if nlink <= 0:  # open: kept until its last close, listed until then
                self._orphan(ino, ind.mode)

    def unlink(self, parent: int, name: bytes) -> None:
        with self.lock:
            self._writable(parent)
            got = self._dir(parent).lookup(name)
            if got is None:
                if parent == ROOT_INO and name == SNAPDIR_NAME:
                    raise FsError(errno.EROFS, ".snapshot")
                raise FsError(errno.ENOENT, name.decode(errors="replace"))
            ino, typ = got
            if typ == stat.S_IFDIR >> 12:
                raise FsError(errno.EISDIR, name.decode(errors="replace"))
            self._dir(parent).remove(name)
            now = self._now()
            self.objects.update(parent, mtime_ns=now, ctime_ns=now)
            self._drop_link(ino)

    def rmdir(self, parent: int, name: bytes) -> None:
        with self.lock:
            self._writable(parent)
            if name == b".":
                raise FsError(errno.EINVAL, ".")
            if name == b"..":
                raise FsError(errno.ENOTEMPTY, "..")
            got = self._dir(parent).lookup(name)
            if got is None:
                if parent == ROOT_INO and name == SNAPDIR_NAME:
                    raise FsError(errno.EROFS, ".snapshot")
                raise FsError(errno.ENOENT, name.decode(errors="replace"))
            ino, typ = got
            if typ != stat.S_IFDIR >> 12:
                raise FsError(errno.ENOTDIR, name.decode(errors="replace"))
            if not self._dir(ino).is_empty():
                raise FsError(errno.ENOTEMPTY, name.decode(errors="replace"))
            self._dir(parent).remove(name)
            now = self._now()
            pind = self.objects.inode(parent)
            self.objects.update(parent, nlink=pind.nlink - 1, mtime_ns=now, ctime_ns=now)
            self._drop_link(ino)
            self._dirs.pop((id(self.objects), ino), None)

    def rename(self, old_parent: int, old: bytes, new_parent: int, new: bytes,
               noreplace: bool = False) -> None:
        """Move ``old`` to ``new``, atomically replacing ``new`` if it exists."""
        with self.lock:
            self._writable(old_parent)
            self._writable(new_parent)
            _check_name(new)
            if new_parent == ROOT_INO and new == SNAPDIR_NAME:
                raise FsError(errno.EEXIST, ".snapshot")
            src = self._dir(old_parent).lookup(old)
            if src is None:
                raise FsError(errno.ENOENT, old.decode(errors="replace"))
            ino, typ = src
            is_dir = typ == stat.S_IFDIR >> 12
            npind = self._inode(new_parent)
            if not stat.S_ISDIR(npind.mode):
                raise FsError(errno.ENOTDIR, new.decode(errors="replace"))
            if is_dir:
                a = new_parent
                while True:
                    if a == ino:
                        raise FsError(errno.EINVAL, new.decode(errors="replace"),
                                      "cannot move a directory into itself")
                    if a == ROOT_INO:
                        break
                    a = self.objects.inode(a).parent or ROOT_INO
            dst = self._dir(new_parent).lookup(new)
            now = self._now()
            if dst is not None:
                if noreplace:
                    raise FsError(errno.EEXIST, new.decode(errors="replace"))
                dino, dtyp = dst
                if dino == ino:
                    return
                d_is_dir = dtyp == stat.S_IFDIR >> 12
                if is_dir and not d_is_dir:
                    raise FsError(errno.ENOTDIR, new.decode(errors="replace"))
                if d_is_dir and not is_dir:
                    raise FsError(errno.EISDIR, new.decode(errors="replace"))
                if d_is_dir and not self._dir(dino).is_empty():
                    raise FsError(errno.ENOTEMPTY, new.decode(errors="replace"))
                self._dir(new_parent).replace(new, ino, typ)
                if d_is_dir:
                    self.objects.update(new_parent,
                                        nlink=self.objects.inode(new_parent).nlink - 1)
                self._drop_link(dino)
            else:
                self._dir(new_parent).add(new, ino, typ)
            self._dir(old_parent).remove(old)
            if is_dir and old_parent != new_parent:
                self.objects.update(ino, parent=new_parent)
                self.objects.update(old_parent, nlink=self.objects.inode(old_parent).nlink - 1)
                self.objects.update(new_parent, nlink=self.objects.inode(new_parent).nlink + 1)
            self.objects.update(ino, ctime_ns=now)
            self.objects.update(old_parent, mtime_ns=now, ctime_ns=now)
            self.objects.update(new_parent, mtime_ns=now, ctime_ns=now)

    # -- files --------------------------------------------------------------

    def read(self, ino: int, offset: int, size: int) -> bytes:
        with self.lock:
            view, local = self._reading(ino, offset)
            data = view.read(local, offset, size)
            self._accessed(ino)
            return data

    def readinto(self, ino: int, offset: int, buf: memoryview) -> int:
        """Read into ``buf`` (a byte-format memoryview); returns the count (the fast path)."""
        with self.lock:
            view, local = self._reading(ino, offset)
            n = view.readinto(local, offset, buf)
            self._accessed(ino)
            return n

    def _reading(self, ino: int, offset: int) -> tuple[ObjectView, int]:
        if offset < 0:
            raise FsError(errno.EINVAL, "", "negative offset")
        if stat.S_ISDIR(self._inode(ino).mode):
            raise FsError(errno.EISDIR, "")
        return self._image(ino)

    def _accessed(self, ino: int) -> None:
        """relatime: record the access only when atime is older than mtime/ctime or a day."""
        if ino < SNAP_BASE and not self.store.read_only:
            ind = self._inode(ino)
            now = self._now()
            if ind.atime_ns <= max(ind.mtime_ns, ind.ctime_ns) or (
                    now - ind.atime_ns > RELATIME_NS):
                self.objects.update(ino, atime_ns=now)

    def write(self, ino: int, offset: int, data: bytes | bytearray | memoryview) -> int:
        with self.lock:
            self._writable(ino)
            ind = self._inode(ino)
            if stat.S_ISDIR(ind.mode):
                raise FsError(errno.EISDIR, "")
            if offset < 0:
                raise FsError(errno.EINVAL, "", "negative offset")
            if offset + len(data) > MAX_FILE_SIZE:
                raise FsError(errno.EFBIG, "")
            now = self._now()
            try:
                return self.store.write(ino, offset, data, mtime_ns=now, ctime_ns=now)
            except NoSpace:
                raise FsError(errno.ENOSPC, "") from None

    def setattr(self, ino: int, *, mode: int | None = None, uid: int | None = None,
                gid: int | None = None, size: int | None = None, atime_ns: int | None = None,
                mtime_ns: int | None = None) -> Attr:
        with self.lock:
            self._writable(ino)
            ind = self._inode(ino)
            # refuse here what the inode cannot hold: a failed CP would make the volume read-only
            for v in (uid, gid):
                if v is not None and not -1 <= v <= 0xFFFFFFFF:
                    raise FsError(errno.EINVAL, "", "owner out of range")
            for t in (atime_ns, mtime_ns):
                if t is not None and not -(1 << 63) <= t < 1 << 63:
                    raise FsError(errno.EINVAL, "", "time out of range")
            now = self._now()
            changes: dict[str, int] = {"ctime_ns": now}
            if size is not None:
                if stat.S_ISDIR(ind.mode):
                    raise FsError(errno.EISDIR, "")
                if size < 0:
                    raise FsError(errno.EINVAL, "", "negative size")
                if size > MAX_FILE_SIZE:
                    raise FsError(errno.EFBIG, "")
                if size > ind.size:
                    try:
                        self.store.check_space(1)
                    except NoSpace:
                        raise FsError(errno.ENOSPC, "") from None
                self.store.truncate(ino, size)
                changes["mtime_ns"] = now
            if mode is not None:
                changes["mode"] = stat.S_IFMT(ind.mode) | (mode & 0o7777)
            if uid is not None and uid != -1 and uid != 0xFFFFFFFF:
                changes["uid"] = uid
            if gid is not None and gid != -1 and gid != 0xFFFFFFFF:
                changes["gid"] = gid
            if atime_ns is not None:
                changes["atime_ns"] = atime_ns
            if mtime_ns is not None:
                changes["mtime_ns"] = mtime_ns
            self.objects.update(ino, **changes)
            return self.getattr(ino)

    def opened(self, ino: int) -> None:
        with self.lock:
            self.open_counts[ino] = self.open_counts.get(ino, 0) + 1

    def released(self, ino: int) -> None:
        """The last close of an unlinked file frees it."""
        with self.lock:
            n = self.open_counts.get(ino, 0) - 1
            if n > 0:
                self.open_counts[ino] = n
                return
            self.open_counts.pop(ino, None)
            if ino < SNAP_BASE and not self.store.read_only:
                ind = self.objects.inode(ino)
                if not ind.free and ind.nlink == 0:
                    self.objects.release(ino)
                    self._unorphan(ino)

    # -- orphans (see the module docstring) ---------------------------------

    def _orphan_dir(self, create: bool = False) -> Directory | None:
        """The orphan directory of the active image (None when it has none)."""
        if self.objects.inode(ORPHAN_INO).free:
            if not create:
                return None
            now = self._now()
            self.objects.set_inode(ORPHAN_INO, Inode(
                mode=stat.S_IFDIR | 0o700, nlink=2, atime_ns=now, mtime_ns=now, ctime_ns=now,
                parent=ORPHAN_INO))
        return self._dir(ORPHAN_INO)

    def _orphan(self, ino: int, mode: int) -> None:
        """List ``ino``, whose last link just went while it is open."""
        d = self._orphan_dir(create=True)
        assert d is not None
        name = str(ino).encode()
        if d.lookup(name) is None:
            d.add(name, ino, dtype_of(mode))

    def _unorphan(self, ino: int) -> None:
        d = self._orphan_dir()
        name = str(ino).encode()
        if d is not None and d.lookup(name) is not None:
            d.remove(name)
            self._orphans_shrunk = True

    def orphans(self) -> list[int]:
        """Inodes of the active image that are unlinked but kept (open, or left by a crash)."""
        with self.lock:
            d = self._orphan_dir()
            return sorted(ino for _, ino, _, _ in d.entries()) if d is not None else []

    def reclaim_orphans(self) -> int:
        """Free every orphan nobody here has open, and commit; returns how many were freed.

        Run at a writable open (the orphans a close or a crash left) and after a
        rollback. Reads the orphan directory and the listed inodes only. With an
        unreadable object table it frees what it can: the rest stays listed for the
        next open, and fsck reports the damage.
        """
        with self.lock:
            if self.store.read_only or self.store.broken is not None:
                return 0
            freed = 0
            try:
                d = self._orphan_dir()
                if d is None:
                    return 0
                for _h, ino, _t, name in list(d.entries()):
                    if self.open_counts.get(ino):
                        continue
                    ind = self.objects.inode(ino)
                    if not ind.free and ind.nlink == 0:  # anything else: a stale entry
                        self.objects.release(ino)
                        freed += 1
                    d.remove(name)
                    self._orphans_shrunk = True
            except (CorruptBlock, FormatError) as e:
                log.info("orphans left for a later open: %s", e)
            if self._orphans_shrunk:
                self.store.commit()
                log.info("freed %d orphan inode(s)", freed)
            return freed

    def statfs(self) -> StatFs:
        with self.lock:
            st = self.store.statistics()
            # data written since the last CP takes its blocks at the next one; count it now,
            # or df shows a volume that a write is about to fill (ENOSPC) as empty
            free = max(0, st.free_blocks - st.dirty_leaves)
            return StatFs(self.store.block_size, st.total_blocks, free,
                          1 << 40, (1 << 40) - self.objects.next_ino, MAX_NAME_LEN)

    # -- snapshots and rollback ---------------------------------------------

    def rollback(self, name: str) -> None:
        with self.lock:
            self.store.rollback(name)
            self.reset_caches()
            self._views.clear()
            self.reclaim_orphans()  # the snapshot's orphans that nobody here has open

    # -- paths (the Python API and the offline CLI) ---------------------------

    def resolve(self, path: str, follow: bool = True, _depth: int = 0) -> int:
        """The inode of an absolute path (symlinks followed except, optionally, the last)."""
        with self.lock:
            if _depth > 40:
                raise FsError(errno.ELOOP, path)
            parts = [p for p in path.split("/") if p]
            ino = ROOT_INO
            for i, part in enumerate(parts):
                try:
                    child = self.lookup(ino, part.encode(errors="surrogateescape"))
                except FsError as e:
                    raise FsError(e.errno, path) from None
                last = i == len(parts) - 1
                if (follow or not last) and child != SNAPDIR_INO and stat.S_ISLNK(
                        self._inode(child).mode):
                    target = self.readlink(child).decode(errors="surrogateescape")
                    base = "/" + "/".join(parts[:i])
                    full = target if target.startswith("/") else f"{base}/{target}"
                    rest = "/".join(parts[i + 1 :])
                    return self.resolve(f"{full}/{rest}" if rest else full, follow, _depth + 1)
                ino = child
            return ino

    def resolve_parent(self, path: str) -> tuple[int, bytes]:
        parts = [p for p in path.split("/") if p]
        if not parts:
            raise FsError(errno.EINVAL, path, "the root has no parent")
        parent = self.resolve("/" + "/".join(parts[:-1]))
        return parent, parts[-1].encode(errors="surrogateescape")

    def path_of(self, ino: int) -> str:
        """One path of an active inode (for messages); '?' when unknown."""
        with self.lock:
            if ino == ROOT_INO:
                return "/"
            return f"<inode {ino}>"


