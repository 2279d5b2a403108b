"""Crash tests across plexes: each plex is cut at a different write of the same CP.

One CP is recorded on every plex of a 2- and a 3-plex volume (each plex wrapped
in a ``RecordingPlex`` through ``Volume.attach``). A power cut stops each plex
at its own point, since plexes are independent devices: plex i keeps the first
``k_i`` writes it was sent. For a combination of cuts the test rebuilds every
image from its state before the CP plus its own prefix, then checks:

* every plex opened alone and read-only is at CP n or CP n+1 — n+1 exactly
  when one of its slots of CP n+1 (ring A, then ring B) is in its prefix — with
  the content of the model at that CP, and fsck finds it clean;
* the volume opened from all plexes (no option needed: no plex is missing and
  none went on alone) opens at the highest CP, and ``vol.resync()`` brings every
  plex to that CP, with the same CP id, the model's content and a clean fsck
  on each plex alone.

Combinations: every pair of cuts for 2 plexes; for 3 plexes the corners (all
cut before anything, all complete, one plex complete, one plex between its
two slots) and a seeded sample of the rest.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from mirrorfs.fs import fsck
from mirrorfs.ondisk import SLOT_SIZE, Superblock, slot_offsets
from mirrorfs.plex import FilePlex
from mirrorfs.resync import examine
from mirrorfs.testing import Op, RecordingPlex
from mirrorfs.volume import Volume

SIZE = 16 << 20  # bytes per plex: the smallest volume, so rebuilding images is cheap
SAMPLED_TRIPLES = 14  # random cut combinations tried for 3 plexes, besides the corners
SB_BODY_AND_CHECKSUM = 1024  # a slot cut before this byte fails its checksum
SECTOR = 512  # where the tests tear a write
_SLOTS = frozenset(slot_offsets(SIZE))

Tree = dict[str, bytes | None]  # path -> bytes of a file, None for a directory


@dataclasses.dataclass(frozen=True)
class Recording:
    """One CP recorded on every plex: images before it, each plex's ops, the model per CP."""

    vf: Path
    paths: list[str]
    bases: list[bytes] = dataclasses.field(repr=False)
    ops: list[list[Op]] = dataclasses.field(repr=False)
    models: dict[int, Tree] = dataclasses.field(repr=False)
    cp: int  # CP n, the one committed before the recorded CP n+1

    def writes(self, i: int) -> list[Op]:
        return [op for op in self.ops[i] if not op.is_flush]

    def expected_cp(self, i: int, k: int) -> int:
        """The CP plex ``i`` holds after its first ``k`` writes: n+1 once a slot of it is in."""
        cps = [self.cp] + [cp for op in self.writes(i)[:k] if (cp := slot_cp(op)) is not None]
        return max(cps)


def slot_cp(op: Op) -> int | None:
    """The CP a write commits if it is a superblock slot write, else None."""
    assert op.data is not None
    if op.offset not in _SLOTS or len(op.data) != SLOT_SIZE:
        return None
    return Superblock.decode(op.data).cp


def tree_of(vol: Volume) -> Tree:
    """Every path of the active file system with file bytes (``.snapshot`` left out)."""
    out: Tree = {}
    stack = ["/"]
    while stack:
        d = stack.pop()
        for name, attr in vol.scandir(d):
            if d == "/" and name == ".snapshot":
                continue
            full = d.rstrip("/") + "/" + name
            if stat.S_ISDIR(attr.mode):
                out[full] = None
                stack.append(full)
            else:
                out[full] = vol.fs.read(attr.ino, 0, attr.size)
    return out


def record(tmp: Path, nplexes: int) -> Recording:
    """Build a volume at CP n, then record CP n+1 on every plex: overwrites that free blocks,
    a 5 MiB file (two coalesced runs), an unlink, a new directory."""
    rng = random.Random(nplexes)
    paths = [str(tmp / f"p{i}.img") for i in range(nplexes)]
    vf = tmp / "v.toml"
    vol = Volume.create(paths, SIZE, volume_file=vf, cp_interval=None)
    try:
        vol.mkdir("/d")
        vol.write_bytes("/a", rng.randbytes(300_000))
        vol.write_bytes("/d/b", rng.randbytes(200_000))
        vol.write_bytes("/c", rng.randbytes(50_000))
        vol.snapshot("s1")
        vol.write_bytes("/d/b", rng.randbytes(120_000))
        vol.sync()
    finally:
        vol.close()
    bases = [Path(p).read_bytes() for p in paths]
    recs = [RecordingPlex(FilePlex(p)) for p in paths]
    vol = Volume.attach(recs, cp_interval=None)
    try:
        n = vol.store.cp
        models = {n: tree_of(vol)}
        for r in recs:
            r.ops.clear()  # reads only so far, but start from a clean slate
        with vol.open_file("/a", "r+b") as f:
            f.seek(100_000)
            f.write(rng.randbytes(50_000))
        vol.write_bytes("/new", rng.randbytes(5 << 20))
        vol.unlink("/c")
        vol.mkdir("/e")
        vol.write_bytes("/e/f", rng.randbytes(3000))
        assert vol.sync()
        assert vol.store.cp == n + 1, "the recorded workload must be exactly one CP"
        for r in recs:
            r.recording = False
        models[n + 1] = tree_of(vol)
    finally:
        vol.close()
    rec = Recording(vf, paths, bases, [r.ops for r in recs], models, n)
    for i in range(nplexes):
        kinds = [slot_cp(op) for op in rec.writes(i)]
        assert kinds[-2:] == [n + 1, n + 1] and kinds.count(None) >= 3, kinds
    return rec


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    return record(tmp_path_factory.mktemp("two"), 2)


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    return record(tmp_path_factory.mktemp("three"), 3)


def rebuild(rec: Recording, cuts: Sequence[int], torn: dict[int, int] | None = None) -> None:
    """Each image as the power cut leaves it: its state before the CP plus its first writes.

    ``torn[i] = m`` also puts the first ``m`` bytes of plex i's next write (cut mid-write).
    """
    for i, k in enumerate(cuts):
        fd = os.open(rec.paths[i], os.O_WRONLY)
        try:
            os.pwrite(fd, rec.bases[i], 0)
            for op in rec.writes(i)[:k]:
                assert op.data is not None
                os.pwrite(fd, op.data, op.offset)
            if torn and i in torn:
                op = rec.writes(i)[k]
                assert op.data is not None
                os.pwrite(fd, op.data[: torn[i]], op.offset)
        finally:
            os.close(fd)


def check_alone(rec: Recording, spec: str, cp: int, what: str, model: int | None = None) -> None:
    """The plex opened alone, read-only: at ``cp``, with the tree of the model at CP
    ``model`` (default ``cp``), fsck clean."""
    vol = Volume.open(rec.vf, only=[spec], read_only=True, cp_interval=None)
    try:
        assert vol.store.cp == cp, f"{what}: {spec} opened at CP {vol.store.cp}, not {cp}"
        want = rec.models[cp if model is None else model]
        assert tree_of(vol) == want, f"{what}: {spec} differs from the model"
        assert [s.name for s in vol.snapshots()][:1] == ["s1"], what
        report = fsck(vol.store)
        assert report.clean, (what, spec, [str(f) for f in report.findings])
    finally:
        vol.close()


def check_cuts(rec: Recording, cuts: Sequence[int], torn: dict[int, int] | None = None) -> None:
    """Rebuild for ``cuts``, check each plex alone, then resync and check them all again.

    A torn write here is always shorter than a slot's body and checksum, so it never
    completes a slot: the expected CPs are those of ``cuts``.
    """
    assert all(m < SB_BODY_AND_CHECKSUM for m in (torn or {}).values())
    what = f"cuts {tuple(cuts)}, torn {torn}"
    rebuild(rec, cuts, torn)
    expected = [rec.expected_cp(i, k) for i, k in enumerate(cuts)]
    for i, spec in enumerate(rec.paths):
        check_alone(rec, spec, expected[i], what)
    top = max(expected)
    vol = Volume.open(rec.vf, cp_interval=None)
    try:
        # at ``top``, or one past it when the open pins CP n for a plex one CP behind
        assert vol.store.cp in (top, top + 1), what
        assert vol.store.cp == top or min(expected) == top - 1, what
        assert tree_of(vol) == rec.models[top], what
        vol.resync()
        assert all(s.state.label == "in-sync" for s in vol.mirror.slots), what
    finally:
        vol.close()
    ex = examine(rec.paths)
    ids = {(r.cp, r.sb.cp_id if r.sb else None) for r in ex.plexes}
    assert len(ids) == 1 and not ex.split_brain, (what, ids)
    final = ex.plexes[0].cp  # past ``top``: the open and the resync commit CPs of their own
    assert final >= top, what
    for spec in rec.paths:
        check_alone(rec, spec, final, what, model=top)


def corners(counts: Sequence[int]) -> Iterator[tuple[int, ...]]:
    """All cut before the CP, all complete, one plex complete or between its slots."""
    n = len(counts)
    yield (0,) * n
    yield tuple(counts)
    for i in range(n):
        yield tuple(counts[j] if j == i else 0 for j in range(n))
        yield tuple(counts[j] - 1 if j == i else 0 for j in range(n))  # ring A only
        yield tuple(counts[j] - 1 if j == i else counts[j] for j in range(n))


def test_the_recorded_cp_writes_data_then_both_slots_on_every_plex(two: Recording) -> None:
    """Each plex got the data writes of CP n+1 (more than one run), then ring A, then ring
    B, with a flush between data and slots and after the slots (DESIGN.md's order)."""
    for i in range(len(two.paths)):
        ops = two.ops[i]
        slots = [j for j, op in enumerate(ops) if not op.is_flush and slot_cp(op)]
        assert len(slots) == 2 and slots[1] == slots[0] + 1
        assert ops[slots[0] - 1].is_flush and ops[slots[1] + 1].is_flush
        assert ops[slots[0]].offset < SIZE // 2 < ops[slots[1]].offset
    assert two.models[two.cp] != two.models[two.cp + 1]


def test_two_plexes_cut_at_every_pair_of_writes_open_at_n_or_n_plus_1_and_resync(
        two: Recording) -> None:
    """Every pair (k1, k2) of cuts: each plex opens alone at the CP its own slots name, with
    that CP's content and a clean fsck; a resync then makes both identical."""
    counts = [len(two.writes(i)) for i in range(2)]
    seen: set[tuple[int, int]] = set()
    for cuts in itertools.product(*(range(c + 1) for c in counts)):
        check_cuts(two, cuts)
        seen.add((two.expected_cp(0, cuts[0]), two.expected_cp(1, cuts[1])))
    n = two.cp
    assert seen == {(n, n), (n, n + 1), (n + 1, n), (n + 1, n + 1)}


def test_three_plexes_cut_at_sampled_writes_open_at_n_or_n_plus_1_and_resync(
        three: Recording) -> None:
    """Corner combinations and a seeded sample of (k1, k2, k3): the same checks as for two."""
    counts = [len(three.writes(i)) for i in range(3)]
    combos = list(dict.fromkeys(corners(counts)))
    rng = random.Random(3)
    everything = list(itertools.product(*(range(c + 1) for c in counts)))
    rest = [c for c in everything if c not in combos]
    combos += rng.sample(rest, min(SAMPLED_TRIPLES, len(rest)))
    for cuts in combos:
        check_cuts(three, cuts)


def test_two_plexes_one_with_a_torn_slot_the_other_cut_anywhere(two: Recording) -> None:
    """Plex 0's ring A slot of CP n+1 torn at a sector (plex 0 stays at CP n) while plex 1 is
    cut at every write, and the mirror image: the torn slot is never trusted, the plexes
    open at their CPs and a resync makes them identical."""
    counts = [len(two.writes(i)) for i in range(2)]
    for torn, other in ((0, 1), (1, 0)):
        ring_a = counts[torn] - 2
        for k in range(counts[other] + 1):
            cuts = [0, 0]
            cuts[torn], cuts[other] = ring_a, k
            check_cuts(two, cuts, {torn: SECTOR})
    data = [i for i, op in enumerate(two.writes(0)) if slot_cp(op) is None]
    check_cuts(two, [data[1], counts[1]], {0: SECTOR})  # a data run torn, the other complete
