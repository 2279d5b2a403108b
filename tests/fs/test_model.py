"""Model-based test: random operation sequences on a Volume against an in-memory model.

The model is a tree of plain Python objects (``MDir``, ``MFile``, ``MLink``);
hard links are the same object under two names, so link counts and shared
content fall out of object identity. A snapshot of the model is a deep copy
(which keeps that sharing). After every step the whole active tree, and the
tree of every snapshot under ``/.snapshot/NAME``, must equal the model; after
a sync or a reopen fsck must be clean and the block counts of files must
match the blocks the model says were written. Files may be held open while
their names go (orphans): a held file reads the model's bytes with the model's
link count (0 once unlinked), fsck stays clean while it is held, and a reopen
with orphans still held frees them (more free space, none left listed).
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from mirrorfs.errors import FsError, SnapshotError
from mirrorfs.fs import fsck
from mirrorfs.store import plane_from_tree
from mirrorfs.volume import Volume

BS = 4096
VOLUME_BYTES = 64 << 20
NAMES = ("a", "b", "c")
SNAP_NAMES = ("s1", "s2", "s3")

OFFSETS = st.one_of(
    st.integers(0, 3 * BS + 5),
    st.sampled_from([BS - 1, BS, 128 * BS - 3, 128 * BS, 600 * BS + 7]),  # tree growth
)
SIZES = st.one_of(st.integers(0, 3 * BS + 5), st.sampled_from([BS, 129 * BS + 1, 700 * BS]))
DATA = st.binary(max_size=2 * BS + 100)
TARGETS = st.sampled_from(["a", "../b", "/c/d", "nowhere", "x" * 300])


@dataclasses.dataclass(eq=False)
class MFile:
    data: bytearray = dataclasses.field(default_factory=bytearray)
    leaves: set[int] = dataclasses.field(default_factory=set)  # leaf blocks ever written

    def write(self, offset: int, data: bytes) -> None:
        if not data:
            return
        end = offset + len(data)
        if end > len(self.data):
            self.data.extend(bytes(end - len(self.data)))
        self.data[offset:end] = data
        self.leaves |= set(range(offset // BS, (end - 1) // BS + 1))

    def truncate(self, size: int) -> None:
        if size < len(self.data):
            del self.data[size:]
        else:
            self.data.extend(bytes(size - len(self.data)))
        keep = -(-size // BS)
        self.leaves = {lb for lb in self.leaves if lb < keep}


@dataclasses.dataclass(eq=False)
class MLink:
    target: str


@dataclasses.dataclass(eq=False)
class MDir:
    entries: dict[str, MFile | MLink | MDir] = dataclasses.field(default_factory=dict)


Node = MFile | MLink | MDir


def join(parent: str, name: str) -> str:
    return parent.rstrip("/") + "/" + name


def walk_model(root: MDir) -> dict[str, Node]:
    out: dict[str, Node] = {}
    stack: list[tuple[str, MDir]] = [("/", root)]
    while stack:
        path, d = stack.pop()
        for name, node in d.entries.items():
            p = join(path, name)
            out[p] = node
            if isinstance(node, MDir):
                stack.append((p, node))
    return out


def describe_model(root: MDir) -> dict[str, tuple[Any, ...]]:
    """Path -> what stat and read should report, with hard links grouped by first path."""
    nodes = walk_model(root)
    first: dict[int, str] = {}
    refs: dict[int, int] = {}
    for p in sorted(nodes):
        first.setdefault(id(nodes[p]), p)
        refs[id(nodes[p])] = refs.get(id(nodes[p]), 0) + 1
    out: dict[str, tuple[Any, ...]] = {
        "": ("dir", 2 + sum(isinstance(c, MDir) for c in root.entries.values()))}
    for p, n in nodes.items():
        if isinstance(n, MDir):
            subdirs = sum(isinstance(c, MDir) for c in n.entries.values())
            out[p] = ("dir", 2 + subdirs)
        elif isinstance(n, MFile):
            out[p] = ("file", len(n.data), bytes(n.data), refs[id(n)], first[id(n)])
        else:
            out[p] = ("symlink", len(n.target), n.target, refs[id(n)], first[id(n)])
    return out


def describe_volume(vol: Volume, top: str) -> dict[str, tuple[Any, ...]]:
    """The same description read from the volume under ``top`` (lstat, never following)."""
    out: dict[str, tuple[Any, ...]] = {"": ("dir", vol.stat(top).nlink)}
    first: dict[int, str] = {}
    raw: dict[str, Any] = {}
    stack = [top]
    while stack:
        d = stack.pop()
        for name, attr in vol.scandir(d):
            if d == "/" and name == ".snapshot":
                continue
            p = join(d, name)
            rel = p[len(top.rstrip("/")):]
            raw[rel] = attr
            if stat.S_ISDIR(attr.mode):
                stack.append(p)
    for rel in sorted(raw):
        first.setdefault(raw[rel].ino, rel)
    for rel, attr in raw.items():
        if stat.S_ISDIR(attr.mode):
            out[rel] = ("dir", attr.nlink)
        elif stat.S_ISREG(attr.mode):
            data = vol.fs.read(attr.ino, 0, attr.size + 10)
            out[rel] = ("file", attr.size, data, attr.nlink, first[attr.ino])
        else:
            assert stat.S_ISLNK(attr.mode), oct(attr.mode)
            target = vol.fs.readlink(attr.ino).decode()
            out[rel] = ("symlink", attr.size, target, attr.nlink, first[attr.ino])
    return out


def file_blocks_model(root: MDir) -> dict[str, int]:
    """Path -> st_blocks (512-byte units) the volume must report once the CP committed."""
    return {p: len(n.leaves) * (BS // 512) for p, n in walk_model(root).items()
            if isinstance(n, MFile)}


def file_blocks_volume(vol: Volume, top: str, paths: list[str]) -> dict[str, int]:
    return {p: vol.lstat(top.rstrip("/") + p).blocks for p in paths}


class VolumeModel(RuleBasedStateMachine):
    """A volume and its model, stepped together."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="mirrorfs-model-"))
        self.vf = self.tmp / "v.toml"
        self.vol = Volume.create([str(self.tmp / "p0.img")], VOLUME_BYTES,
                                 volume_file=self.vf, cp_interval=None)
        self.root = MDir()
        self.snaps: dict[str, MDir] = {}
        self.held: list[tuple[int, MFile]] = []  # inodes opened through fs.opened
        self.orphan_snaps: set[str] = set()  # snapshots taken while an orphan existed

    def teardown(self) -> None:
        try:
            self.vol.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers ------------------------------------------------------------

    def dirs(self) -> list[str]:
        return ["/", *sorted(p for p, n in walk_model(self.root).items() if isinstance(n, MDir))]

    def node(self, path: str) -> Node | None:
        if path == "/":
            return self.root
        return walk_model(self.root).get(path)

    def parent_dir(self, path: str) -> MDir:
        parent = path.rsplit("/", 1)[0] or "/"
        d = self.node(parent)
        assert isinstance(d, MDir)
        return d

    def pick(self, data: st.DataObject) -> str:
        """An existing directory joined with a name that may or may not exist."""
        parent = data.draw(st.sampled_from(self.dirs()), label="dir")
        return join(parent, data.draw(st.sampled_from(NAMES), label="name"))

    def expect(self, err: int | None, fn: Any, *args: Any) -> None:
        """Run ``fn``; it must raise FsError with ``err``, or succeed when ``err`` is None."""
        if err is None:
            fn(*args)
            return
        with pytest.raises(FsError) as info:
            fn(*args)
        assert info.value.errno == err, (errno.errorcode[info.value.errno], str(info.value))

    def check_committed(self) -> None:
        """After a CP: fsck is clean, block counts match, and free space is exactly what no
        plane on disk (the active one or a snapshot's) holds."""
        report = fsck(self.vol.store)
        assert report.clean, [str(f) for f in report.findings]
        paths = sorted(file_blocks_model(self.root))
        assert file_blocks_volume(self.vol, "/", paths) == file_blocks_model(self.root)
        store = self.vol.store
        held = plane_from_tree(store.plane_tree, store.plane_words)
        for rec in store.snapshots:
            held |= store.snapshot_plane(rec)
        assert self.vol.statfs().free == store.nblocks - int(np.bitwise_count(held).sum())

    # -- files ----------------------------------------------------------------

    @rule(data=st.data(), content=DATA)
    def create_or_overwrite(self, data: st.DataObject, content: bytes) -> None:
        path = self.pick(data)
        node = self.node(path)
        if isinstance(node, MLink):
            return  # writing through a symlink is not modelled
        if isinstance(node, MDir):
            self.expect(errno.EISDIR, self.vol.write_bytes, path, content)
            return
        self.vol.write_bytes(path, content)
        if node is None:
            node = MFile()
            self.parent_dir(path).entries[path.rsplit("/", 1)[1]] = node
        node.truncate(0)
        node.write(0, content)

    @rule(data=st.data(), offset=OFFSETS, content=DATA)
    def write_at(self, data: st.DataObject, offset: int, content: bytes) -> None:
        path = self.pick(data)
        node = self.node(path)
        if isinstance(node, MLink):
            return
        if node is None or isinstance(node, MDir):
            err = errno.ENOENT if node is None else errno.EISDIR
            self.expect(err, self.vol.open_file, path, "r+b")
            return
        with self.vol.open_file(path, "r+b") as f:
            assert f.seek(offset) == offset
            f.write(content)
        node.write(offset, content)

    @rule(data=st.data(), size=SIZES)
    def truncate(self, data: st.DataObject, size: int) -> None:
        path = self.pick(data)
        node = self.node(path)
        if isinstance(node, MLink):
            return
        if node is None or isinstance(node, MDir):
            err = errno.ENOENT if node is None else errno.EISDIR
            self.expect(err, self.vol.truncate, path, size)
            return
        self.vol.truncate(path, size)
        node.truncate(size)

    # -- names ----------------------------------------------------------------

    @rule(data=st.data())
    def mkdir(self, data: st.DataObject) -> None:
        path = self.pick(data)
        if self.node(path) is not None:
            self.expect(errno.EEXIST, self.vol.mkdir, path)
            return
        self.vol.mkdir(path)
        self.parent_dir(path).entries[path.rsplit("/", 1)[1]] = MDir()

    @rule(data=st.data())
    def rmdir(self, data: st.DataObject) -> None:
        path = self.pick(data)
        node = self.node(path)
        if node is None:
            self.expect(errno.ENOENT, self.vol.rmdir, path)
        elif not isinstance(node, MDir):
            self.expect(errno.ENOTDIR, self.vol.rmdir, path)
        elif node.entries:
            self.expect(errno.ENOTEMPTY, self.vol.rmdir, path)
        else:
            self.vol.rmdir(path)
            del self.parent_dir(path).entries[path.rsplit("/", 1)[1]]

    @rule(data=st.data())
    def unlink(self, data: st.DataObject) -> None:
        path = self.pick(data)
        node = self.node(path)
        if node is None:
            self.expect(errno.ENOENT, self.vol.unlink, path)
        elif isinstance(node, MDir):
            self.expect(errno.EISDIR, self.vol.unlink, path)
        else:
            self.vol.unlink(path)
            del self.parent_dir(path).entries[path.rsplit("/", 1)[1]]

    @rule(data=st.data())
    def rename(self, data: st.DataObject) -> None:
        src = self.pick(data)
        dst = self.pick(data)
        snode, dnode = self.node(src), self.node(dst)
        err: int | None = None
        if snode is None:
            err = errno.ENOENT
        elif isinstance(snode, MDir) and (dst + "/").startswith(src + "/") and dst != src:
            err = errno.EINVAL
        elif dnode is not None and dnode is not snode:
            if isinstance(snode, MDir) and not isinstance(dnode, MDir):
                err = errno.ENOTDIR
            elif isinstance(dnode, MDir) and not isinstance(snode, MDir):
                err = errno.EISDIR
            elif isinstance(dnode, MDir) and dnode.entries:
                err = errno.ENOTEMPTY
        self.expect(err, self.vol.rename, src, dst)
        if err is None and snode is not dnode:
            assert snode is not None
            del self.parent_dir(src).entries[src.rsplit("/", 1)[1]]
            self.parent_dir(dst).entries[dst.rsplit("/", 1)[1]] = snode

    @rule(data=st.data())
    def link(self, data: st.DataObject) -> None:
        src = self.pick(data)
        dst = self.pick(data)
        snode, dnode = self.node(src), self.node(dst)
        if snode is None:
            self.expect(errno.ENOENT, self.vol.link, src, dst)
        elif isinstance(snode, MDir):
            self.expect(errno.EPERM, self.vol.link, src, dst)
        elif dnode is not None:
            self.expect(errno.EEXIST, self.vol.link, src, dst)
        else:
            self.vol.link(src, dst)
            self.parent_dir(dst).entries[dst.rsplit("/", 1)[1]] = snode

    @rule(data=st.data(), link_to=TARGETS)
    def symlink(self, data: st.DataObject, link_to: str) -> None:
        path = self.pick(data)
        if self.node(path) is not None:
            self.expect(errno.EEXIST, self.vol.symlink, link_to, path)
            return
        self.vol.symlink(link_to, path)
        self.parent_dir(path).entries[path.rsplit("/", 1)[1]] = MLink(link_to)

    # -- files held open (orphans once unlinked) --------------------------------

    @precondition(lambda self: len(self.held) < 3)
    @rule(data=st.data(), unlink=st.booleans())
    def hold_open(self, data: st.DataObject, unlink: bool) -> None:
        """Open a file and keep it open, and maybe unlink it at once."""
        path = self.pick(data)
        node = self.node(path)
        if not isinstance(node, MFile):
            return
        ino = self.vol.stat(path).ino
        self.vol.fs.opened(ino)
        self.held.append((ino, node))
        if unlink:
            self.vol.unlink(path)
            del self.parent_dir(path).entries[path.rsplit("/", 1)[1]]

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def close_held(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.held) - 1), label="held")
        ino, _ = self.held.pop(i)
        self.vol.fs.released(ino)

    def release_all(self) -> None:
        while self.held:
            self.vol.fs.released(self.held.pop()[0])

    # -- snapshots, CPs, reopen -------------------------------------------------

    @rule(name=st.sampled_from(SNAP_NAMES))
    def snapshot(self, name: str) -> None:
        if name in self.snaps:
            with pytest.raises(SnapshotError):
                self.vol.snapshot(name)
            return
        self.vol.snapshot(name)
        self.snaps[name] = copy.deepcopy(self.root)
        if any(not self.refs(node) for _, node in self.held):
            self.orphan_snaps.add(name)  # it holds the orphan directory's blocks

    @rule(name=st.sampled_from(SNAP_NAMES))
    def delete_snapshot(self, name: str) -> None:
        if name not in self.snaps:
            with pytest.raises(SnapshotError):
                self.vol.delete_snapshot(name)
            return
        self.vol.delete_snapshot(name)
        del self.snaps[name]
        self.orphan_snaps.discard(name)

    @precondition(lambda self: bool(self.snaps))
    @rule(data=st.data())
    def rollback(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.snaps)), label="snapshot")
        self.release_all()  # a held file would show the snapshot's version: not modelled
        self.vol.rollback(name)
        assert self.vol.fs.orphans() == []
        self.root = copy.deepcopy(self.snaps[name])

    @rule()
    def sync(self) -> None:
        self.vol.sync()
        self.check_committed()

    @rule()
    def reopen(self) -> None:
        """Close and open; files still held are abandoned, as a crash would leave them."""
        self.vol.sync()
        free = self.vol.statfs().free
        orphans = self.vol.fs.orphans()
        assert orphans == sorted({ino for ino, node in self.held if not self.refs(node)})
        self.vol.close()
        self.held.clear()
        self.vol = Volume.open(self.vf, cp_interval=None)
        assert self.vol.fs.orphans() == []
        if not orphans:
            assert self.vol.statfs().free == free
        elif not self.orphan_snaps:
            assert self.vol.statfs().free > free  # at least the orphan directory's bucket
        # else a snapshot holds the orphans' blocks: reclaiming them frees nothing, and the
        # CP that records it writes metadata beside the snapshot's copy
        self.check_committed()

    def refs(self, node: MFile) -> int:
        return sum(n is node for n in walk_model(self.root).values())

    # -- invariants -------------------------------------------------------------

    @invariant()
    def tree_equals_model(self) -> None:
        assert describe_volume(self.vol, "/") == describe_model(self.root)

    @invariant()
    def held_files_read_their_bytes(self) -> None:
        for ino, node in self.held:
            attr = self.vol.fs.getattr(ino)
            assert attr.nlink == self.refs(node)
            assert attr.size == len(node.data)
            assert self.vol.fs.read(ino, 0, len(node.data) + 10) == bytes(node.data)

    @invariant()
    def snapshots_equal_their_models(self) -> None:
        assert sorted(r.name for r in self.vol.snapshots()) == sorted(self.snaps)
        assert sorted(self.vol.listdir("/.snapshot")) == sorted(self.snaps)
        for name, root in self.snaps.items():
            top = f"/.snapshot/{name}"
            assert describe_volume(self.vol, top) == describe_model(root), name
            paths = sorted(file_blocks_model(root))
            assert file_blocks_volume(self.vol, top, paths) == file_blocks_model(root), name

    @invariant()
    def free_space_plausible(self) -> None:
        st_ = self.vol.statfs()
        assert 0 <= st_.free <= st_.blocks
        assert st_.blocks == VOLUME_BYTES // BS - 16  # both superblock rings are reserved


def test_volume_matches_model() -> None:
    """Random sequences of file, directory, link, snapshot, rollback, sync and reopen
    operations leave the volume (and every snapshot of it) equal to the in-memory model,
    with the errno the model predicts for every refused operation and a clean fsck after
    every CP."""
    run_state_machine_as_test(
        VolumeModel,
        settings=settings(max_examples=150, stateful_step_count=50, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.filter_too_much]),
    )


def test_volume_matches_model_with_cps_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same, with a dirty limit of one block: every write starts a CP that
    flies in its own thread while the next steps read, write, free, snapshot and reopen,
    and the next CP is placed while the one before still flies (``Store`` module
    docstring, "Pipelining"); every invariant still holds."""
    from mirrorfs.store import _store

    monkeypatch.setattr(_store, "DIRTY_LIMIT_BYTES", BS)
    monkeypatch.setattr(_store, "DIRTY_MAX_BYTES", BS)
    flown = ahead = 0
    start, place = _store.Store._start, _store.Store._place

    def counting_start(self: _store.Store, fl: object, background: bool) -> None:
        nonlocal flown
        flown += background
        start(self, fl, background)  # type: ignore[arg-type]

    def counting_place(self: _store.Store) -> object:
        nonlocal ahead
        ahead += self._flight is not None
        return place(self)

    monkeypatch.setattr(_store.Store, "_start", counting_start)
    monkeypatch.setattr(_store.Store, "_place", counting_place)
    run_state_machine_as_test(
        VolumeModel,
        settings=settings(max_examples=60, stateful_step_count=50, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.filter_too_much]),
    )
    assert flown > 50, f"only {flown} CPs flew: the test did not test pipelining"
    assert ahead > 20, f"only {ahead} CPs were placed ahead of a flying one"
