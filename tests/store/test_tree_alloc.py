"""Block trees and the allocator, alone and inside a volume.

The tree tests run ``Tree`` over an in-memory block source (a dict of
written blocks, checksums verified on every read) and the real
``Allocator``, CP after CP, against a dict model of the leaves. Each CP may
call ``place`` several times (as the block-map plane does to reach its
fixpoint), rewriting leaves placed earlier in the same CP. After every seal:

* a fresh tree opened at the new root reads exactly the model;
* the blocks it reaches are exactly the active plane (nothing leaked,
  nothing missing, nothing reached twice);
* no block written in the CP was held by the committed plane (a committed
  block is never written again, and a block freed in the CP is not reused
  in it).

The volume tests check the same invariants end to end with fsck, whose
block-map check compares the plane on disk with the reachable blocks.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirrorfs.errors import CorruptBlock, NoSpace
from mirrorfs.fs import fsck
from mirrorfs.ondisk import PTR_DTYPE, PtrArray, checksum, null_ptrs
from mirrorfs.store import Allocator, Tree, plane_from_tree, tree_blocks
from mirrorfs.store import _planes as planes
from mirrorfs.volume import Volume

BS = 4096
FANOUT = BS // PTR_DTYPE.itemsize  # 128 pointers per node
NBLOCKS = 1 << 15
RESERVED = np.arange(0, 8, dtype=np.uint64)

Leaves = dict[int, bytes]


class MemSource:
    """Committed blocks in a dict; every read is checked against its pointer."""

    block_size = BS

    def __init__(self) -> None:
        self.blocks: dict[int, bytes] = {}
        self.reads = 0

    def _get(self, ptr: np.void, what: str) -> bytes:
        self.reads += 1
        blk = int(ptr["blk"])
        data = self.blocks.get(blk)
        if data is None or checksum(data) != np.asarray(ptr["ck"], dtype="<u8").tobytes():
            raise CorruptBlock(what, blk, "bad checksum in the test source")
        return data

    def read_nodes(self, ptrs: PtrArray, what: str, ahead: PtrArray | None = None
                   ) -> list[PtrArray]:
        return [np.frombuffer(self._get(p, what), dtype=PTR_DTYPE) for p in ptrs]

    def read_leaves(self, ptrs: PtrArray, what: str) -> list[bytes]:
        return [self._get(p, what) for p in ptrs]

    def cache_node(self, blk: int, node: PtrArray) -> None:
        pass

    reads_ahead = False  # every block is in memory already

    def prefetch(self, ptrs: PtrArray) -> None:
        pass


class Harness:
    """One tree, its allocator and its model, committed CP by CP."""

    def __init__(self) -> None:
        self.src = MemSource()
        plane = planes.new_plane(NBLOCKS, BS // 8)
        planes.set_bits(plane, RESERVED)
        self.alloc = Allocator(plane, np.zeros_like(plane), NBLOCKS, RESERVED)
        self.tree = Tree(self.src, null_ptrs(1), 0, "test tree")
        self.model: Leaves = {}
        self.cp = 0

    def commit(self, batches: list[dict[int, bytes | None]], small: bool = False) -> list[int]:
        """One CP: each batch is written and placed in turn, then the tree is sealed.

        With ``small`` (one batch, a ``small_placeable`` tree) the tree goes through
        ``Tree.place_and_seal_small`` instead, as the CP of many small files does.
        """
        self.cp += 1
        committed_before = self.alloc.committed.copy()
        for batch in batches:
            for i, d in batch.items():
                self.tree.write_leaf(i, d)
                if d is None:
                    self.model.pop(i, None)
                else:
                    self.model[i] = d
            if small:
                assert len(batches) == 1 and self.tree.small_placeable
                break
            self.tree.place(self.alloc, self.cp)
        if small:
            blks, datas = Tree.place_and_seal_small([self.tree], self.alloc, self.cp)
        else:
            blks, datas = self.tree.seal()
        written = np.array(blks, dtype=np.uint64)
        assert len(set(blks)) == len(blks), "a block written twice in one CP"
        assert not planes.test_bits(committed_before, written).any(), (
            "a CP wrote over a block the committed CP holds")
        for b, d in zip(blks, datas, strict=True):
            assert len(d) == BS
            self.src.blocks[b] = bytes(d)
        self.alloc.commit(self.alloc.active)
        return blks

    def check(self) -> None:
        """The tree as reopened from its root equals the model; its blocks are the plane."""
        fresh = Tree(self.src, self.tree.root, self.tree.height, "reopened")
        top = max(self.model, default=-1) + 1
        want = [self.model.get(i) for i in range(top + 3)]
        assert fresh.read_leaves(0, top + 3) == want
        assert fresh.nonnull_leaves(0, 1 << 40).tolist() == sorted(self.model)
        reached = tree_blocks(fresh)
        assert len(np.unique(reached)) == len(reached), "a block reached twice"
        expect = np.zeros_like(self.alloc.active)
        planes.set_bits(expect, reached)
        planes.set_bits(expect, RESERVED)
        leaked = planes.to_blocks(self.alloc.active & ~expect)
        missing = planes.to_blocks(expect & ~self.alloc.active)
        assert len(leaked) == 0, f"blocks held but unreachable: {leaked[:10]}"
        assert len(missing) == 0, f"blocks reachable but not held: {missing[:10]}"
        assert self.tree.capacity() >= top


def leaf(tag: int) -> bytes:
    return tag.to_bytes(8, "little") * (BS // 8)


INDICES = st.one_of(
    st.integers(0, 2 * FANOUT + 3),
    st.sampled_from([0, 1, FANOUT - 1, FANOUT, FANOUT * FANOUT - 1, FANOUT * FANOUT,
                     FANOUT * FANOUT + 5, 3 * FANOUT * FANOUT + 17]),
)
BATCH = st.dictionaries(INDICES, st.one_of(st.none(), st.integers(1, 1 << 30)), max_size=12)


@settings(max_examples=150, deadline=None)
@given(cps=st.lists(st.lists(BATCH, min_size=1, max_size=3), min_size=1, max_size=6))
def test_tree_random_dirty_patterns(cps: list[list[dict[int, int | None]]]) -> None:
    """Random dirty patterns (holes, growth by several levels at once, one or several
    place() calls per CP rewriting the same leaves) keep the tree equal to its model, its
    blocks equal to the active plane, and never overwrite a committed block."""
    h = Harness()
    for batches in cps:
        h.commit([{i: None if t is None else leaf(t) for i, t in b.items()} for b in batches])
        h.check()


@pytest.mark.parametrize("first", [
    {0: 1}, {0: 1, 1: 2, 2: 3}, {i: i + 1 for i in range(FANOUT)}, {5: 9},
    {0: None, 1: 4}, {0: 1, 3: None, 7: 2},
])
def test_small_trees_placed_in_a_batch_equal_the_per_tree_path(
        first: dict[int, int | None]) -> None:
    """A new tree whose leaves hang from one node, and a one-block tree rewritten, placed
    by ``place_and_seal_small``: they read back, reach exactly their blocks, and go on
    through the per-tree path in later CPs (growth, rewrites, holes)."""
    h = Harness()
    h.commit([{i: None if v is None else leaf(v) for i, v in first.items()}], small=True)
    h.check()
    if h.tree.height == 0:  # a one-block tree: its rewrite takes the batch path too
        h.commit([{0: leaf(77)}], small=True)
        h.check()
    h.commit([{1: leaf(5), FANOUT + 2: leaf(6)}])
    h.check()
    h.commit([{0: None, 1: leaf(8)}])
    h.check()


def test_tree_growth_by_two_levels_keeps_old_leaves() -> None:
    """A one-leaf tree (height 0) written at leaf 600 grows to height 2 in one CP; the old
    leaf 0 must stay reachable and readable (not leaked and lost)."""
    h = Harness()
    h.commit([{0: leaf(1)}])
    h.commit([{FANOUT * 4 + 88: leaf(2)}])
    assert h.tree.height == 2
    h.check()


def test_tree_growth_by_two_levels_from_height_one() -> None:
    """The same growth from height 1 to height 3 in one CP keeps the old subtree."""
    h = Harness()
    h.commit([{0: leaf(1), 5: leaf(2)}])
    assert h.tree.height == 1
    h.commit([{FANOUT * FANOUT * 2: leaf(3)}])
    assert h.tree.height == 3
    h.check()


def test_holes_only_growth_across_two_places_writes_no_dangling_pointer() -> None:
    """Holes written into an empty tree by two place() calls of one CP, the second growing
    it by a level, leave no pointer to a block the CP never wrote (an all-hole node gets
    no block)."""
    h = Harness()
    h.commit([{1: None}, {FANOUT: None}])
    h.check()
    h.commit([{0: leaf(1)}, {FANOUT * FANOUT + 1: None}, {2 * FANOUT * FANOUT: leaf(2)}])
    h.check()


def test_leaf_delta_counts_rewrites_of_a_single_leaf() -> None:
    """Rewriting the only leaf of a height-0 tree keeps one leaf: ``leaf_delta`` is 0,
    so an inode's block count does not drop to zero on an overwrite."""
    h = Harness()
    h.commit([{0: leaf(1)}])
    assert h.tree.leaf_delta == 1
    h.tree.leaf_delta = 0
    h.commit([{0: leaf(2)}])
    assert h.tree.leaf_delta == 0
    h.commit([{0: None}])
    assert h.tree.leaf_delta == -1
    h.check()


def test_leaf_placed_twice_in_one_cp_keeps_its_block() -> None:
    """A leaf rewritten between two place() calls of one CP keeps the block the first call
    gave it, and the second bytes are what the CP writes (the plane fixpoint relies on it)."""
    h = Harness()
    h.commit([{0: leaf(1), 1: leaf(2)}])
    first = h.tree.leaf_ptrs(0, 2)["blk"].tolist()
    blks = h.commit([{3: leaf(3)}, {3: leaf(4), 4: leaf(5)}, {3: leaf(6)}])
    assert len(blks) == 3  # leaves 3 and 4 and the one node above them, nothing else
    assert h.model[3] == leaf(6)
    assert h.src.blocks[int(h.tree.leaf_ptrs(3, 4)["blk"][0])] == leaf(6)
    assert h.tree.leaf_ptrs(0, 2)["blk"].tolist() == first  # untouched leaves stay put
    h.check()


def test_freed_blocks_are_not_reused_in_the_same_cp() -> None:
    """Blocks a CP frees (overwritten leaves, dropped nodes) stay out of the free list until
    that CP commits, and are reusable after it."""
    h = Harness()
    h.commit([{i: leaf(i + 1) for i in range(2 * FANOUT)}])
    old = set(tree_blocks(h.tree).tolist())
    new = h.commit([{i: leaf(i + 1000) for i in range(2 * FANOUT)},
                    {i: None for i in range(FANOUT, 2 * FANOUT)}])
    assert old.isdisjoint(new)
    h.check()
    # after the commit the freed blocks are free again
    free_now = NBLOCKS - planes.count(h.alloc.held())
    assert h.alloc.free_blocks() == free_now
    got = set(h.alloc.allocate(free_now).tolist())
    assert old - set(tree_blocks(h.tree).tolist()) <= got


def test_allocator_never_hands_out_held_blocks() -> None:
    """Over random committed, active and snapshot planes, with blocks of the committed CP
    freed mid-CP, every allocated block is free in all three planes and was not freed in
    this CP; blocks come out ascending; exhausting the free space raises NoSpace."""
    rng = np.random.default_rng(7)
    nblocks = 20_000
    for _ in range(20):
        empty = planes.new_plane(nblocks, BS // 8)
        committed, extra, snaps = (empty.copy() for _ in range(3))
        for p in (committed, extra, snaps):
            planes.set_bits(p, rng.choice(nblocks, size=int(rng.integers(0, nblocks // 3)),
                                          replace=False).astype(np.uint64))
        planes.set_bits(committed, RESERVED)
        active = committed | extra  # the CP being built started from the committed plane
        alloc = Allocator(committed.copy(), snaps.copy(), nblocks, RESERVED)
        np.copyto(alloc.active, active)
        alloc.begin_cp()
        held = active | committed | snaps
        free = nblocks - planes.count(held)
        assert alloc.free_blocks() == free
        gone = planes.to_blocks(committed & ~snaps)[8:60]  # freed in this CP
        alloc.free(gone)
        assert alloc.free_blocks() == free
        got: list[npt.NDArray[np.uint64]] = []
        remaining = free
        while remaining:
            n = int(min(remaining, rng.integers(1, 700)))
            out = alloc.allocate(n)
            assert len(out) == n
            assert np.all(np.diff(out.astype(np.int64)) > 0)
            got.append(out)
            remaining -= n
        allb = np.concatenate(got)
        assert len(np.unique(allb)) == len(allb) == free
        assert not planes.test_bits(held, allb).any()
        assert np.all(allb < nblocks)
        with pytest.raises(NoSpace):
            alloc.allocate(1)
        alloc.commit(alloc.active)  # now the freed blocks are free
        assert sorted(alloc.allocate(len(gone)).tolist()) == sorted(gone.tolist())


# -- inside a volume -----------------------------------------------------------


@pytest.fixture
def big_volume(tmp_path: Path) -> Iterator[Volume]:
    """A 1 GiB volume: its plane spans eight leaves, so the plane fixpoint has work."""
    vol = Volume.create([str(tmp_path / "p0.img")], 1 << 30, volume_file=tmp_path / "v.toml",
                        cp_interval=None)
    try:
        yield vol
    finally:
        vol.close()


def _assert_plane_is_reachable(vol: Volume) -> None:
    report = fsck(vol.store)
    assert report.clean, [str(f) for f in report.findings]
    store = vol.store
    on_disk = plane_from_tree(store.plane_tree, store.plane_words)
    assert np.array_equal(on_disk, store.alloc.committed)
    reached = np.zeros_like(on_disk)
    planes.set_bits(reached, store.active_blocks())
    assert np.array_equal(on_disk, reached)


def test_plane_after_commit_is_the_reachable_set(big_volume: Volume) -> None:
    """Across CPs whose blocks land in several plane leaves (files spread over the volume,
    overwrites, deletes), the committed plane equals the set of reachable blocks, on disk
    and in memory (checked by fsck's block-map check and directly)."""
    vol = big_volume
    rng = random.Random(3)
    try:
        for step in range(8):
            for k in range(6):
                name = f"/f{rng.randrange(10)}"
                off = rng.choice([0, 1, 300, 40_000]) * BS
                with vol.open_file(name, "ab" if k % 2 else "wb") as f:
                    f.seek(off)
                    f.write(rng.randbytes(rng.choice([100, 5 * BS, 70 * BS])))
            if step % 3 == 2:
                victim = f"/f{rng.randrange(10)}"
                if vol.exists(victim):
                    vol.unlink(victim)
            vol.sync()
            _assert_plane_is_reachable(vol)
        # spread the allocation cursor over the whole volume so every plane leaf changes
        vol.write_bytes("/spread", bytes(200 << 20))
        vol.sync()
        _assert_plane_is_reachable(vol)
        vol.unlink("/spread")
        vol.sync()
        _assert_plane_is_reachable(vol)
    finally:
        vol.close()


def test_snapshot_planes_hold_their_blocks(big_volume: Volume) -> None:
    """After overwrites, a snapshot's blocks are never handed out: the allocator's snapshot
    union covers every block the snapshot reaches, and fsck finds every snapshot plane
    complete."""
    vol = big_volume
    try:
        vol.write_bytes("/a", bytes(range(256)) * 400)
        vol.snapshot("s")
        for i in range(5):
            vol.write_bytes("/a", bytes([i]) * 150_000)
            vol.sync()
        rec = vol.snapshots()[0]
        plane = vol.store.snapshot_plane(rec)
        assert not np.any(plane & ~vol.store.alloc.snap_union)
        free = vol.store.alloc.free_blocks()
        got = vol.store.alloc.allocate(free)
        assert not planes.test_bits(plane, got).any()
        assert not planes.test_bits(vol.store.alloc.committed, got).any()
        vol.store.alloc.begin_cp()  # hand the test allocation back
        planes.clear_bits(vol.store.alloc.active, got)
        report = fsck(vol.store)
        assert report.clean, [str(f) for f in report.findings]
        assert vol.read_bytes("/.snapshot/s/a") == bytes(range(256)) * 400
    finally:
        vol.close()
