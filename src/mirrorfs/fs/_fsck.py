"""fsck: a list of small checks over a volume, one invariant each.

Owns nothing; reads only. Keeps: every finding names what is wrong and
where (a path and offset for data, a block for metadata); a clean volume
has no findings.

Checks, in order:

* ``checksums``: every block of every tree of the active image and of each
  snapshot, on every readable plex, matches the checksum its parent holds.
* ``namespace``: every entry names a used inode of the type it says; link
  counts equal the references; every used inode is reachable. The orphan
  directory (``ORPHAN_INO``, fs/_fs.py "Orphans") is a second root: an
  inode it lists is reachable with no links (``nlink`` 0, named by no
  directory), so an unlinked file that is still open, or that a close or a
  crash left for the next writable open to free, is no finding; an inode
  with ``nlink`` 0 that it does not list is one.
* ``block-map``: the active plane holds exactly the blocks the active image
  reaches (nothing leaked, nothing missing); each snapshot's plane holds
  every block its image reaches.
* ``accounting``: free + used == total.
"""

from __future__ import annotations

import dataclasses
import stat
from collections.abc import Callable

import numpy as np

from ..errors import CorruptBlock, FormatError
from ..ondisk import ORPHAN_INO, ROOT_INO, PtrArray, decode_bucket
from ..store import Frozen, ObjectView, Store, Tree, inodes, plane_from_tree
from ..store import _planes as planes
from ..store._objects import ptr_of


@dataclasses.dataclass
class Finding:
    check: str
    image: str
    detail: str
    path: str | None = None
    block: int | None = None
    plex: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        plex = f" on plex {self.plex}" if self.plex else ""
        blk = f" (block {self.block})" if self.block is not None else ""
        return f"[{self.check}] {self.image}: {where}{self.detail}{plex}{blk}"


@dataclasses.dataclass
class FsckReport:
    findings: list[Finding] = dataclasses.field(default_factory=list)
    blocks_checked: int = 0
    files: int = 0
    directories: int = 0
    snapshots: int = 0
    repaired: int = 0
    errors_by_plex: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.findings

    def as_dict(self) -> dict[str, object]:
        return {"clean": self.clean, "blocks_checked": self.blocks_checked,
                "files": self.files, "directories": self.directories,
                "snapshots": self.snapshots, "repaired": self.repaired,
                "errors_by_plex": self.errors_by_plex,
                "findings": [f.as_dict() for f in self.findings]}

    def as_scrub_dict(self) -> dict[str, object]:
        """The scrub view: what was checked, found per plex, repaired, and lost."""
        lost, seen = [], set()
        for f in self.findings:
            if f.check == "checksums" and (f.image, f.block) not in seen:
                seen.add((f.image, f.block))
                lost.append(f.as_dict())
        return {"blocks_checked": self.blocks_checked, "errors": self.errors_by_plex,
                "errors_total": sum(self.errors_by_plex.values()),
                "repaired": self.repaired, "unrecoverable": lost,
                "files": self.files, "directories": self.directories,
                "snapshots": self.snapshots,
                "other_findings": [f.as_dict() for f in self.findings
                                   if f.check != "checksums"]}


class _Walker:
    """Walks one image's trees, verifying each level on every plex before descending."""

    def __init__(self, store: Store | Frozen, report: FsckReport, image: str, repair: bool,
                 seen: np.ndarray, progress: Callable[[int], None] | None) -> None:
        self.store = store
        self.report = report
        self.image = image
        self.repair = repair
        self.seen = seen  # plane of blocks already verified (snapshots share blocks)
        self.progress = progress
        self.reached: list[np.ndarray] = []

    def tree(self, tree: Tree, path: str) -> bool:
        """Verify every block of ``tree``; False if something in it is bad."""
        if tree.root["blk"][0] == 0:
            return True
        idx = np.zeros(1, dtype=np.int64)  # index of each pointer within its level
        ok = self._verify(tree.root, path, tree.height, idx, tree)
        level_ptrs = tree.root
        for level in range(tree.height, 0, -1):
            try:
                nodes = tree.src.read_nodes(level_ptrs, tree.what)
            except (CorruptBlock, FormatError):
                return False
            children = np.concatenate(nodes)
            pos = np.flatnonzero(children["blk"])
            fan = tree.fanout
            idx = np.repeat(idx, fan)[pos] * fan + pos % fan
            children = children[pos]
            if not self._verify(children, path, level - 1, idx, tree):
                ok = False
            level_ptrs = children
        return ok

    def _verify(self, ptrs: PtrArray, path: str, level: int, idx: np.ndarray,
                tree: Tree) -> bool:
        blks = np.asarray(ptrs["blk"], dtype=np.uint64)
        beyond = blks >= self.store.nblocks  # only a lying parent (or label) holds these
        if beyond.any():
            self.report.findings.append(Finding(
                "checksums", self.image, f"{int(beyond.sum())} pointers beyond the volume's "
                f"{self.store.nblocks} blocks", path, int(blks[beyond][0])))
            self._verify(ptrs[~beyond], path, level, idx[~beyond], tree)
            return False
        self.reached.append(blks)
        fresh = np.flatnonzero(~planes.test_bits(self.seen, blks))
        if len(fresh) == 0:
            return True
        todo = ptrs[fresh]
        planes.set_bits(self.seen, np.asarray(todo["blk"], dtype=np.uint64))
        res = self.store.mirror.check(todo, repair=self.repair)
        self.report.blocks_checked += len(todo)
        self.report.repaired += res.repaired
        for spec, n in res.errors.items():
            self.report.errors_by_plex[spec] = self.report.errors_by_plex.get(spec, 0) + n
        if self.progress:
            self.progress(len(todo))
        unrecoverable = set(res.unrecoverable)
        repaired = self.repair and not self.store.mirror.read_only
        for spec, blk, i, why in res.bad:
            if repaired and i not in unrecoverable:
                continue
            if level == 0:
                what = f"data block at offset {int(idx[fresh[i]]) * tree.src.block_size}"
            else:
                what = f"tree node (level {level})"
            self.report.findings.append(Finding(
                "checksums", self.image, f"{why} in {what}", path, blk, spec))
        return not res.bad or (self.repair and not unrecoverable)


def fsck(store: Store, repair: bool = False,
         progress: Callable[[int], None] | None = None) -> FsckReport:
    """Run every check on every image of the volume (committing first, when writable).

    The checks read committed trees; uncommitted changes would look like
    unnamed inodes and leaked blocks. The store lock is held throughout.
    """
    with store.lock:
        if not store.read_only:
            store.commit()
        report = _check(store, repair, progress)
        _accounting(store, report)
        return report


def scrub(store: Store, progress: Callable[[int], None] | None = None,
          repair: bool = True) -> FsckReport:
    """Verify every block of every image on every in-sync plex and repair bad copies.

    The findings left are the blocks bad on every plex (with their paths).
    The walk runs without the store lock, so a mounted volume goes on
    serving (and committing) meanwhile: it walks the last CP as
    ``Store.freeze`` keeps it, whose blocks stay put until the walk ends,
    and the accounting check runs under the lock at the end.
    """
    with store.lock:
        if not store.read_only:
            store.commit()
        frozen = store.freeze()
    try:
        report = _check(frozen, repair, progress)
    finally:
        store.thaw(frozen)
    with store.lock:
        _accounting(store, report)
    return report


def _check(store: Store | Frozen, repair: bool,
           progress: Callable[[int], None] | None) -> FsckReport:
    report = FsckReport()
    seen = np.zeros(store.plane_words, dtype=np.uint64)
    images: list[tuple[str, ObjectView, np.ndarray | None]] = [("active", store.objects, None)]
    for rec in store.snapshots:
        images.append((f"snapshot {rec.name}", store.view(rec), store.snapshot_plane(rec)))
    report.snapshots = len(store.snapshots)
    for name, view, plane in images:
        w = _Walker(store, report, name, repair, seen, progress)
        w.tree(view.objtab, "<object table>")
        _namespace(view, w, report, count=plane is None)
        if plane is None:
            w.tree(store.snap_tree, "<snapshot table>")
            w.tree(store.plane_tree, "<block-map plane>")
            _check_active_plane(store, w, report)
        else:
            rec = next(r for r in store.snapshots if f"snapshot {r.name}" == name)
            w.tree(Tree(store.src, ptr_of(rec.plane_root), rec.plane_height, "plane"),
                   "<block-map plane>")
            reached = np.concatenate(w.reached) if w.reached else np.zeros(0, np.uint64)
            missing = reached[~planes.test_bits(plane, reached)]
            if len(missing):
                report.findings.append(Finding(
                    "block-map", name, f"{len(missing)} reachable blocks missing from the "
                    f"snapshot's plane (first {int(missing[0])})"))
    return report


def _accounting(store: Store, report: FsckReport) -> None:
    st = store.statistics()
    used = planes.count(store.alloc.held())
    if st.free_blocks + used != store.nblocks:
        report.findings.append(Finding("accounting", "active",
                                       f"free {st.free_blocks} + used {used} != {store.nblocks}"))


def _check_active_plane(store: Store | Frozen, w: _Walker, report: FsckReport) -> None:
    reached = np.concatenate([*w.reached, store.reserved])
    uniq, counts = np.unique(reached, return_counts=True)
    dup = uniq[counts > 1]
    if len(dup):
        report.findings.append(Finding("block-map", "active",
                                       f"{len(dup)} blocks referenced twice (first {int(dup[0])})"))
    expected = np.zeros(store.plane_words, dtype=np.uint64)
    planes.set_bits(expected, uniq)
    on_disk = plane_from_tree(store.plane_tree, store.plane_words)
    leaked = planes.to_blocks(on_disk & ~expected)
    missing = planes.to_blocks(expected & ~on_disk)
    if len(leaked):
        report.findings.append(Finding("block-map", "active",
                                       f"{len(leaked)} blocks marked used but unreachable "
                                       f"(first {int(leaked[0])})"))
    if len(missing):
        report.findings.append(Finding("block-map", "active",
                                       f"{len(missing)} reachable blocks not marked used "
                                       f"(first {int(missing[0])})"))


def _namespace(view: ObjectView, w: _Walker, report: FsckReport, count: bool) -> None:
    refs: dict[int, int] = {ROOT_INO: 1}
    subdirs: dict[int, int] = {}
    paths: dict[int, str] = {ROOT_INO: "/"}
    used: dict[int, int] = {}
    orphans: set[int] = set()  # listed in the orphan directory: reachable, not linked
    try:
        for ino, ind in inodes(view):
            used[ino] = ind.mode
    except (CorruptBlock, FormatError) as e:
        report.findings.append(Finding("namespace", view.name, f"object table unreadable: {e}"))
        return
    stack = [ROOT_INO]
    if ORPHAN_INO in used:
        refs[ORPHAN_INO] = 1
        paths[ORPHAN_INO] = "<orphans>"
        if stat.S_ISDIR(used[ORPHAN_INO]):
            stack.insert(0, ORPHAN_INO)
        else:
            report.findings.append(Finding("namespace", view.name,
                                           "the orphan directory is not a directory",
                                           "<orphans>"))
    while stack:
        d = stack.pop()
        dpath = paths[d]
        ind = view.inode(d)
        tree = view.tree(d)
        if not w.tree(tree, dpath):
            continue
        if count and d != ORPHAN_INO:
            report.directories += 1
        for i in tree.nonnull_leaves(0, 1 << (ind.dir_depth)).tolist():
            try:
                leaf = tree.read_leaf(i)
                entries = decode_bucket(leaf) if leaf is not None else []
            except (CorruptBlock, FormatError) as e:
                report.findings.append(Finding("namespace", view.name, str(e), dpath))
                continue
            for _h, child, typ, name in entries:
                cpath = dpath.rstrip("/") + "/" + name.decode(errors="replace")
                if d == ORPHAN_INO:
                    cpath = f"<orphan {child}>"
                    if name != str(child).encode():
                        report.findings.append(Finding(
                            "namespace", view.name, f"orphan entry {name!r} names inode "
                            f"{child}", cpath))
                mode = used.get(child)
                if mode is None:
                    report.findings.append(Finding("namespace", view.name,
                                                   f"entry names free inode {child}", cpath))
                    continue
                if stat.S_IFMT(mode) >> 12 != typ:
                    report.findings.append(Finding("namespace", view.name,
                                                   "entry type differs from the inode", cpath))
                if d == ORPHAN_INO:
                    if child in orphans or child == ORPHAN_INO:
                        what = "the orphan directory lists itself" if child == ORPHAN_INO \
                            else "listed twice as an orphan"
                        report.findings.append(Finding("namespace", view.name, what, cpath))
                        continue
                    orphans.add(child)
                else:
                    refs[child] = refs.get(child, 0) + 1
                if stat.S_ISDIR(mode):
                    if d != ORPHAN_INO:
                        subdirs[d] = subdirs.get(d, 0) + 1
                    if child in paths:
                        report.findings.append(Finding("namespace", view.name,
                                                       "directory linked twice", cpath))
                        continue
                    paths[child] = cpath
                    stack.append(child)
                elif child not in paths:
                    paths[child] = cpath
                    if count:
                        report.files += 1
                    w.tree(view.tree(child), cpath)
    for ino, mode in used.items():
        ind = view.inode(ino)
        if ino in orphans:
            if ino in refs:
                report.findings.append(Finding("namespace", view.name,
                                               "listed as an orphan but named by a directory",
                                               paths.get(ino)))
                continue
            want = 0
        elif ino not in refs:
            report.findings.append(Finding("namespace", view.name,
                                           f"inode {ino} is used but no directory names it "
                                           "and the orphan directory does not list it"))
            continue
        else:
            want = 2 + subdirs.get(ino, 0) if stat.S_ISDIR(mode) else refs[ino]
        if ind.nlink != want:
            report.findings.append(Finding("namespace", view.name,
                                           f"link count {ind.nlink}, expected {want}",
                                           paths.get(ino)))
