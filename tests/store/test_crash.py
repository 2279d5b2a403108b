"""Crash tests of the CP order: a power cut at any moment opens at a committed CP.

A scripted workload runs on one image through a ``RecordingPlex``, which
records every write and flush; after each CP the test notes the model (the
file tree with its bytes, and every snapshot's tree) under the CP value.
Then, from the image as it was before the workload, the test rebuilds what a
power cut could leave on the plex and opens it read-only:

* every prefix of the writes (cut after write k), in issue order;
* the same with the last write torn, at several lengths, including cuts
  inside a superblock slot's body and inside its checksum;
* between two flushes, writes may reach the plex in any order: subsets of
  the writes issued since the last flush, on top of everything flushed.

Each image must open at exactly the CP the superblock slots on it name (the
newest complete slot), with the file tree, the bytes and the snapshots of the
model at that CP, and fsck must find it clean. A slot cut at or past byte
1024 is complete: its body and checksum are the first 1024 bytes and the
rest of a slot is zero in every version, so the test expects that CP.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from mirrorfs.errors import FormatError
from mirrorfs.fs import fsck
from mirrorfs.ondisk import SLOT_SIZE, Superblock, slot_offsets
from mirrorfs.plex import FilePlex
from mirrorfs.testing import Op, RecordingPlex
from mirrorfs.volume import Volume

SIZE = 32 << 20  # bytes of the image: small, so every rebuilt image is cheap
BS = 4096
SB_BODY_AND_CHECKSUM = 1024  # a slot cut at or past this byte is complete
SLOT_TEARS = (512, 1008, 1016, SB_BODY_AND_CHECKSUM, 2048)  # a sector; body without checksum;
# half the checksum; exactly body and checksum; half the slot
MAX_ALL_SUBSETS = 5  # epochs with at most this many writes are tried in every order subset
RANDOM_SUBSETS = 24  # subsets tried for longer epochs

Tree = dict[str, bytes | None]  # path -> bytes of a file, None for a directory
_SLOTS = frozenset(slot_offsets(SIZE))  # byte offsets of every superblock slot


@dataclasses.dataclass(frozen=True)
class State:
    """What a volume at one CP must show: its tree and each snapshot's tree."""

    tree: Tree
    snapshots: dict[str, Tree]


@dataclasses.dataclass(frozen=True)
class Recording:
    """One recorded workload: the image before it, its operations, the model per CP."""

    base: bytes = dataclasses.field(repr=False)
    base_cp: int
    ops: list[Op] = dataclasses.field(repr=False)
    models: dict[int, State] = dataclasses.field(repr=False)

    @property
    def writes(self) -> list[Op]:
        return [op for op in self.ops if not op.is_flush]

    def slot_cp(self, op: Op) -> int | None:
        """The CP a write commits, if it is a superblock slot write; else None."""
        assert op.data is not None
        if op.offset not in _SLOTS or len(op.data) != SLOT_SIZE:
            return None
        return Superblock.decode(op.data).cp

    def expected_cp(self, applied: Sequence[Op], torn: Op | None = None,
                    torn_len: int = 0) -> int:
        """The CP an image must open at: its newest complete superblock slot."""
        cps = [self.base_cp]
        cps += [cp for op in applied if (cp := self.slot_cp(op)) is not None]
        if torn is not None and torn_len >= SB_BODY_AND_CHECKSUM:
            cp = self.slot_cp(torn)
            if cp is not None:
                cps.append(cp)
        return max(cps)


# -- the workload --------------------------------------------------------------


class Workload:
    """Drives a volume and keeps the model beside it, recorded per CP."""

    def __init__(self, vol: Volume, models: dict[int, State]) -> None:
        self.vol = vol
        self.models = models
        self.tree: Tree = {}
        self.snaps: dict[str, Tree] = {}
        self.rng = random.Random(1234)

    def state(self) -> State:
        return State(dict(self.tree), {k: dict(v) for k, v in self.snaps.items()})

    def record(self) -> None:
        """Note the model under the CP just committed."""
        cp = self.vol.store.cp
        assert cp not in self.models or self.models[cp] == self.state()
        self.models[cp] = self.state()

    def sync(self) -> None:
        assert self.vol.sync(), "a workload step must dirty something"
        self.record()

    def data(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def write(self, path: str, data: bytes) -> None:
        self.vol.write_bytes(path, data)
        self.tree[path] = data

    def patch(self, path: str, offset: int, data: bytes) -> None:
        with self.vol.open_file(path, "r+b") as f:
            f.seek(offset)
            f.write(data)
        old = self.tree[path]
        assert old is not None
        grown = old.ljust(offset + len(data), b"\0")
        self.tree[path] = grown[:offset] + data + grown[offset + len(data):]

    def truncate(self, path: str, size: int) -> None:
        self.vol.truncate(path, size)
        old = self.tree[path]
        assert old is not None
        self.tree[path] = old[:size].ljust(size, b"\0")

    def mkdir(self, path: str) -> None:
        self.vol.mkdir(path)
        self.tree[path] = None

    def rename(self, src: str, dst: str) -> None:
        self.vol.rename(src, dst)
        moved = {p: v for p, v in self.tree.items() if p == src or p.startswith(src + "/")}
        for p in moved:
            del self.tree[p]
        for p, v in moved.items():
            self.tree[dst + p[len(src):]] = v

    def unlink(self, path: str) -> None:
        self.vol.unlink(path)
        del self.tree[path]

    def rmdir(self, path: str) -> None:
        self.vol.rmdir(path)
        del self.tree[path]

    def snapshot(self, name: str) -> None:
        """A snapshot commits the dirty tree (if any) as a CP, then its record in the next."""
        before = self.vol.store.cp
        dirty = self.vol.store.dirty
        self.vol.snapshot(name)
        assert self.vol.store.cp == before + (2 if dirty else 1)
        if dirty:
            self.models[before + 1] = self.state()
        self.snaps[name] = dict(self.tree)
        self.record()

    def delete_snapshot(self, name: str) -> None:
        self.vol.delete_snapshot(name)
        del self.snaps[name]
        self.record()

    def run(self) -> None:
        """Several CPs of every kind of change; more than RING_SLOTS of them, so the ring wraps."""
        self.write("/a", self.data(100_000))
        self.mkdir("/d")
        self.write("/d/b", self.data(300_000))
        self.write("/empty", b"")
        self.sync()
        self.patch("/a", 5000, self.data(9000))
        self.patch("/d/b", 299_000, self.data(5000))  # grows the file past its end
        self.sync()
        self.snapshot("s1")
        self.truncate("/a", 10_001)
        self.truncate("/d/b", 400_000)  # grows with a hole
        self.rename("/d/b", "/c")
        self.sync()
        self.unlink("/a")
        self.mkdir("/d/sub")
        self.write("/d/sub/big", self.data(600_000))  # > 128 blocks: a tree of height 2
        self.sync()
        self.snapshot("s2")
        self.write("/c", self.data(50_000))
        self.rename("/d/sub/big", "/big")
        self.sync()
        self.delete_snapshot("s1")
        self.rmdir("/d/sub")
        self.patch("/big", 4096 * 130, self.data(4096 * 3))
        self.sync()
        for i in range(3):
            self.write(f"/d/n{i}", self.data(1000 * (i + 1)))
            self.sync()
        self.delete_snapshot("s2")
        self.truncate("/big", 0)
        self.sync()


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    """The recorded workload, shared by the tests of this module (it runs once)."""
    path = str(tmp_path_factory.mktemp("crash") / "p0.img")
    vol = Volume.format([FilePlex.create(path, SIZE)], SIZE, cp_interval=None)
    vol.close()
    base = Path(path).read_bytes()
    models: dict[int, State] = {}
    plex = RecordingPlex(FilePlex(path))
    vol = Volume.attach([plex], cp_interval=None)
    try:
        work = Workload(vol, models)
        base_cp = vol.store.cp
        work.record()
        work.run()
    finally:
        vol.close()
    assert len(models) > 10, "the workload must wrap the superblock ring"
    assert sorted(models) == list(range(base_cp, base_cp + len(models)))
    return Recording(base, base_cp, plex.ops, models)


# -- rebuilding and opening images -------------------------------------------


class Image:
    """One image file rebuilt in place: a shadow of its bytes, patched and restored by range."""

    def __init__(self, path: Path, base: bytes) -> None:
        self.path = path
        self.shadow = bytearray(base)
        path.write_bytes(base)
        self._fd = os.open(path, os.O_RDWR)

    def apply(self, op: Op) -> None:
        """Make a write permanent (the image moves to the next prefix)."""
        assert op.data is not None
        self.shadow[op.offset : op.offset + len(op.data)] = op.data
        os.pwrite(self._fd, op.data, op.offset)

    @contextmanager
    def patched(self, pieces: Sequence[tuple[int, bytes]]) -> Iterator[None]:
        """Write ``pieces`` for the duration of the block, then restore the shadow's bytes."""
        for off, data in pieces:
            os.pwrite(self._fd, data, off)
        try:
            yield
        finally:
            for off, data in pieces:
                os.pwrite(self._fd, bytes(self.shadow[off : off + len(data)]), off)

    def close(self) -> None:
        os.close(self._fd)


@pytest.fixture
def image(tmp_path: Path, recording: Recording) -> Iterator[Image]:
    img = Image(tmp_path / "crash.img", recording.base)
    yield img
    img.close()


def tree_of(vol: Volume, root: str = "/") -> Tree:
    """Every path under ``root`` (relative to it, as absolute paths), with file bytes."""
    out: Tree = {}
    stack = [root]
    while stack:
        d = stack.pop()
        for name, attr in vol.scandir(d):
            if d == "/" and name == ".snapshot":
                continue
            full = d.rstrip("/") + "/" + name
            rel = "/" + full[len(root):].lstrip("/")
            if stat.S_ISDIR(attr.mode):
                out[rel] = None
                stack.append(full)
            else:
                out[rel] = vol.read_bytes(full)
    return out


def check_opens_at(rec: Recording, image: Image, cp: int, what: str) -> None:
    """Open the image read-only: it must be at ``cp`` with the model's content, fsck clean."""
    vol = Volume.open([str(image.path)], read_only=True, cp_interval=None)
    try:
        assert vol.store.cp == cp, f"{what}: opened at CP {vol.store.cp}, expected CP {cp}"
        snaps = {r.name: tree_of(vol, f"/.snapshot/{r.name}") for r in vol.snapshots()}
        got = State(tree_of(vol), snaps)
        want = rec.models[cp]
        assert sorted(got.tree) == sorted(want.tree), what
        assert got == want, f"{what}: content differs from the model at CP {cp}"
        report = fsck(vol.store)
        assert report.clean, (what, [str(f) for f in report.findings])
    finally:
        vol.close()


def tears(op: Op, is_slot: bool) -> list[int]:
    """Lengths at which to cut a write: inside a slot's body and checksum, or mid-run.

    A data write cut anywhere leaves some of its blocks new and the rest old;
    a cut after its first block and one in its middle cover both shapes.
    """
    assert op.data is not None
    n = len(op.data)
    if is_slot:
        return list(SLOT_TEARS)
    cuts = {n // 2, BS} if n > BS else {n // 2}
    return sorted(c for c in cuts if 0 < c < n)


# -- the tests ------------------------------------------------------------------


def test_the_workload_writes_data_then_flush_then_both_slots_then_flush(
        recording: Recording) -> None:
    """Every CP's writes follow DESIGN.md's order, so the crash tests below cover real CPs.

    Between two slot writes of consecutive CPs come data writes (or none),
    one flush, the slot in ring A, the slot in ring B, and a flush.
    """
    ops = recording.ops
    slot_idx = [i for i, op in enumerate(ops) if not op.is_flush and recording.slot_cp(op)]
    cps = [recording.slot_cp(ops[i]) for i in slot_idx]
    assert cps == [cp for cp in sorted(recording.models) if cp > recording.base_cp
                   for _ in range(2)]
    for a, b in zip(slot_idx[::2], slot_idx[1::2], strict=True):
        assert b == a + 1
        assert ops[a].offset < SIZE // 2 < ops[b].offset  # ring A, then ring B
        assert ops[a - 1].is_flush and ops[b + 1].is_flush


def test_a_cut_after_any_write_opens_at_the_newest_complete_cp(
        recording: Recording, image: Image) -> None:
    """Power cut after write k, for every k: the volume opens at the CP of its newest slot."""
    writes = recording.writes
    seen: set[int] = set()
    for k in range(len(writes) + 1):
        if k:
            image.apply(writes[k - 1])
        cp = recording.expected_cp(writes[:k])
        seen.add(cp)
        check_opens_at(recording, image, cp, f"cut after write {k}")
    assert seen == set(recording.models)


def test_a_torn_last_write_opens_at_cp_n_or_at_n_plus_1_when_its_slot_is_whole(
        recording: Recording, image: Image) -> None:
    """Write k torn at several lengths: a torn slot is skipped, a torn data block never read.

    A ring A slot cut before byte 1024 must leave CP n (the slot's checksum
    fails); cuts at or after it leave a complete slot, so CP n+1. A torn ring B
    slot leaves CP n+1, whole in ring A.
    """
    writes = recording.writes
    torn_slots_rejected = 0
    for k, op in enumerate(writes):
        assert op.data is not None
        is_slot = recording.slot_cp(op) is not None
        for cut in tears(op, is_slot):
            cp = recording.expected_cp(writes[:k], op, cut)
            ring_a = is_slot and (k == 0 or recording.slot_cp(writes[k - 1]) is None)
            if ring_a and cut < SB_BODY_AND_CHECKSUM:
                torn_slots_rejected += 1
                assert cp == (recording.slot_cp(op) or 0) - 1
            with image.patched([(op.offset, op.data[:cut])]):
                check_opens_at(recording, image, cp, f"write {k} torn at byte {cut}")
        image.apply(op)
    assert torn_slots_rejected >= len(SLOT_TEARS) // 2


def epochs(rec: Recording) -> list[tuple[int, list[Op]]]:
    """The writes between consecutive flushes: (writes issued before the epoch, its writes)."""
    out: list[tuple[int, list[Op]]] = []
    done = 0
    cur: list[Op] = []
    for op in rec.ops:
        if op.is_flush:
            if cur:
                out.append((done, cur))
            done += len(cur)
            cur = []
        else:
            cur.append(op)
    if cur:
        out.append((done, cur))
    return out


def subsets(n: int, rng: random.Random) -> list[tuple[int, ...]]:
    """Every subset of range(n) when small, else a seeded sample (always with empty and full)."""
    if n <= MAX_ALL_SUBSETS:
        return [c for r in range(n + 1) for c in itertools.combinations(range(n), r)]
    out = {(), tuple(range(n))}
    while len(out) < RANDOM_SUBSETS + 2:
        out.add(tuple(sorted(rng.sample(range(n), rng.randint(1, n - 1)))))
    return sorted(out)


def test_writes_between_flushes_may_land_in_any_order(
        recording: Recording, image: Image) -> None:
    """Any subset of the writes since the last flush, on top of what was flushed, opens
    at CP n or n+1 (n+1 only if a whole slot of n+1 landed), with CP n's or n+1's content.

    This covers the superblock epoch (ring B's slot without ring A's, and neither)
    and the data epochs (some blocks of CP n+1 written, no slot naming them).
    Each subset is also tried with its last write torn in half, and with all its
    writes torn (writes in flight together may all be cut: a slot of CP n+1 torn
    in both rings still leaves CP n, whose slots are other slots).
    """
    rng = random.Random(7)
    writes = recording.writes
    applied = 0
    slot_epochs = 0
    for done, epoch in epochs(recording):
        while applied < done:
            image.apply(writes[applied])
            applied += 1
        before = recording.expected_cp(writes[:done])
        if any(recording.slot_cp(op) for op in epoch):
            slot_epochs += 1
        for subset in subsets(len(epoch), rng):
            chosen = [epoch[i] for i in subset]
            pieces = [(op.offset, op.data) for op in chosen if op.data is not None]
            cp = recording.expected_cp(writes[:done] + chosen)
            assert cp in (before, before + 1)
            with image.patched(pieces):
                check_opens_at(recording, image, cp, f"epoch at write {done}, subset {subset}")
            if not chosen:
                continue
            last = chosen[-1]
            assert last.data is not None
            cut = len(last.data) // 2
            cp = recording.expected_cp(writes[:done] + chosen[:-1], last, cut)
            with image.patched([*pieces[:-1], (last.offset, last.data[:cut])]):
                check_opens_at(recording, image, cp,
                               f"epoch at write {done}, subset {subset}, last torn")
            if len(chosen) > 1:  # in flight together, all cut (both rings' slots, say)
                cp = recording.expected_cp(writes[:done])
                cuts = [512 if recording.slot_cp(op) else len(data) // 2
                        for op, (_, data) in zip(chosen, pieces, strict=True)]
                with image.patched([(off, data[:c])
                                    for (off, data), c in zip(pieces, cuts, strict=True)]):
                    check_opens_at(recording, image, cp,
                                   f"epoch at write {done}, subset {subset}, all torn")
    assert slot_epochs == len(recording.models) - 1


def test_a_blank_slot_image_is_refused_with_format_error(
        recording: Recording, image: Image) -> None:
    """Control: with every slot of the image blanked, opening fails cleanly, so the
    checks above really read the slots they expect."""
    pieces = [(off, bytes(SLOT_SIZE)) for off in slot_offsets(SIZE)]
    with image.patched(pieces), pytest.raises(FormatError, match="no mirrorfs superblock"):
        Volume.open([str(image.path)], read_only=True, cp_interval=None)
