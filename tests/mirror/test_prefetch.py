"""Read-ahead: sequential readers get blocks fetched in the background, from every plex.

Read-ahead is for plexes that ask for it (``Plex.read_ahead``: NBD exports);
most tests here use image files wrapped to ask for it, so that faults can be
injected, and one streams from real nbdkit servers. What must hold
(``MirrorSet.prefetch``, ``Tree.read_ahead``):

* a sequential read takes most of its blocks from pieces read ahead, the
  pieces come from every in-sync plex, and the bytes are the file's;
* a piece is only a guess: a piece whose bytes no longer match (the plex
  changed under it) is read again from the plex, silently; a piece whose
  read failed is never used, and the reader's own read meets the error and
  takes the ordinary path (the plex leaves the set, the data comes from
  another plex);
* damage on a plex is found and repaired exactly as without read-ahead;
* writes through the mirror drop the pieces they overlap;
* the window grows while reads continue each other, starts over on a jump,
  and never reaches past the object's end;
* plain file plexes get no read-ahead (the kernel reads ahead for them).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mirrorfs.mirror import PREFETCH_PIECE_BLOCKS
from mirrorfs.ondisk import PtrArray, null_ptrs
from mirrorfs.plex import FilePlex, open_plex
from mirrorfs.store import _tree
from mirrorfs.testing import CountingPlex, FaultyPlex, NbdkitServer
from mirrorfs.volume import Volume

BS = 4096
MIB = 1 << 20
FILE_MIB = 24


def make_volume(tmp_path: Path, nplexes: int) -> tuple[list[str], bytes]:
    """A closed volume on ``nplexes`` images holding /big (FILE_MIB MiB of random bytes)."""
    paths = [str(tmp_path / f"p{i}.img") for i in range(nplexes)]
    data = np.random.default_rng(7).integers(0, 256, FILE_MIB * MIB, dtype=np.uint8).tobytes()
    with Volume.create(paths, 128 << 20, volume_file=tmp_path / "v.toml",
                       cp_interval=None) as vol:
        vol.write_bytes("/big", data)
    return paths, data


def read_stream(vol: Volume, chunk: int = 128 << 10) -> bytes:
    out = bytearray()
    buf = bytearray(chunk)
    with vol.open_file("/big", "rb") as f:
        while n := f.readinto(buf):
            out += buf[:n]
    return bytes(out)


def data_blocks(vol: Volume) -> np.ndarray:
    tree = vol.store.objects.tree(vol.stat("/big").ino)
    return np.asarray(tree.leaf_ptrs(0, FILE_MIB * MIB // BS)["blk"])


@pytest.mark.parametrize("nplexes", [1, 2, 3])
def test_a_sequential_read_streams_from_every_plex(tmp_path: Path, nplexes: int) -> None:
    paths, data = make_volume(tmp_path, nplexes)
    plexes = [CountingPlex(FilePlex(p), read_ahead=True) for p in paths]
    with Volume.attach(plexes, cp_interval=None) as vol:
        assert read_stream(vol) == data
        st = vol.mirror.statistics()
    leaves = FILE_MIB * MIB // BS
    # all but the first reads come from pieces fetched ahead
    assert st.prefetched_blocks_used >= leaves - 2 * PREFETCH_PIECE_BLOCKS
    assert st.prefetched_stale == 0
    for p in plexes:  # the pieces are dealt over every plex
        assert p.read_bytes >= (FILE_MIB // nplexes - 2) * MIB


def ra(path: str) -> FaultyPlex:
    """An image-file plex that asks for read-ahead."""
    return FaultyPlex(FilePlex(path), read_ahead=True)


def test_file_plexes_are_left_to_the_kernel(tmp_path: Path) -> None:
    paths, data = make_volume(tmp_path, 2)
    with Volume.attach([FilePlex(p) for p in paths], cp_interval=None) as vol:
        assert read_stream(vol) == data
        assert vol.mirror.statistics().prefetched_pieces == 0


def test_a_random_reader_fetches_nothing_ahead(tmp_path: Path) -> None:
    paths, data = make_volume(tmp_path, 2)
    with Volume.attach([ra(p) for p in paths], cp_interval=None) as vol:
        rng = np.random.default_rng(1)
        ino = vol.stat("/big").ino
        buf = bytearray(8192)
        for k in rng.permutation(FILE_MIB * 4)[:40].tolist():
            off = k * (256 << 10) + 4096  # never where the last read ended
            assert vol.fs.readinto(ino, off, memoryview(buf)) == len(buf)
            assert buf == data[off : off + len(buf)]
        assert vol.mirror.statistics().prefetched_pieces == 0


def test_a_piece_out_of_date_is_read_again_silently(tmp_path: Path) -> None:
    """Plex 0's copy is damaged when fetched ahead, mended behind the mirror's back after."""
    paths, data = make_volume(tmp_path, 1)
    fp = ra(paths[0])
    with Volume.attach([fp], cp_interval=None) as vol:
        blks = data_blocks(vol)
        victim = int(blks[len(blks) // 2])
        fp.flip_on_read.add(victim * BS + 100)  # the piece will hold a flipped bit
        k = victim // PREFETCH_PIECE_BLOCKS
        with vol.open_file("/big", "rb") as f:
            got = bytearray()
            while k not in vol.mirror._pieces:  # until the victim's piece is asked for
                got += f.read(MIB)
            assert vol.mirror._pieces[k].fut.result()
            assert len(got) < len(data) // 2
            fp.flip_on_read.clear()  # the plex reads right again
            got += f.read()
        st = vol.mirror.statistics()
        assert bytes(got) == data
        assert st.prefetched_stale == 1
        assert st.errors == 0 and st.repaired == 0
        assert [s.state.name for s in vol.mirror.slots] == ["IN_SYNC"]


@pytest.mark.parametrize("nplexes", [2, 3])
def test_damage_is_repaired_as_without_read_ahead(
        tmp_path: Path, expect_log: Callable[[str], None], nplexes: int) -> None:
    expect_log("checksum or I/O error")
    paths, data = make_volume(tmp_path, nplexes)
    with Volume.attach([FilePlex(p) for p in paths], cp_interval=None) as vol:
        blks = data_blocks(vol)
    victims = [int(b) for b in blks[[1000, 2000, 5000]]]  # past the first reads: in pieces
    with open(paths[0], "r+b") as f:  # damage plex 0's copy of three blocks
        for b in victims:
            f.seek(b * BS)
            f.write(b"\xff" * BS)
    with Volume.attach([ra(p) for p in paths], cp_interval=None) as vol:
        for shift in range(nplexes):  # whichever plex serves which piece
            vol.mirror.read_shift = shift
            assert read_stream(vol) == data
        st = vol.mirror.statistics()
        assert st.repaired == 3
        assert vol.mirror.slots[0].errors == 3
    with open(paths[0], "rb") as f:
        for b in victims:
            f.seek(b * BS)
            assert f.read(BS) != b"\xff" * BS


def test_a_failed_fetch_takes_the_ordinary_path(
        tmp_path: Path, expect_log: Callable[[str], None]) -> None:
    expect_log("leaves the in-sync set")
    expect_log("checksum or I/O error")
    paths, data = make_volume(tmp_path, 2)
    fps = [ra(p) for p in paths]
    with Volume.attach(fps, cp_interval=None) as vol:
        with vol.open_file("/big", "rb") as f:
            got = bytearray(f.read(2 * MIB))  # the stream has started; pieces are out
            fps[1].fail_reads = True
            while chunk := f.read(MIB):
                got += chunk
        assert bytes(got) == data
        assert [s.state.name for s in vol.mirror.slots] == ["IN_SYNC", "FAILED"]
        assert vol.mirror.statistics().prefetched_stale == 0


def test_writes_drop_the_pieces_they_overlap(tmp_path: Path) -> None:
    paths, _ = make_volume(tmp_path, 2)
    with Volume.attach([ra(p) for p in paths], cp_interval=None) as vol:
        m = vol.mirror
        lo = int(data_blocks(vol)[0]) // PREFETCH_PIECE_BLOCKS * PREFETCH_PIECE_BLOCKS
        m.prefetch(np.arange(lo, lo + 4 * PREFETCH_PIECE_BLOCKS, dtype=np.uint64))
        assert len(m._pieces) == 4
        m.drop_prefetched(lo + PREFETCH_PIECE_BLOCKS + 5, lo + PREFETCH_PIECE_BLOCKS + 6)
        assert sorted(m._pieces) == [lo // PREFETCH_PIECE_BLOCKS + i for i in (0, 2, 3)]
        free = int(m.nblocks) - 2 * PREFETCH_PIECE_BLOCKS  # far from the data: no harm
        m.prefetch(np.arange(free, free + 8, dtype=np.uint64))
        assert free // PREFETCH_PIECE_BLOCKS in m._pieces
        m.write_blocks(np.array([free + 3], dtype=np.uint64), [bytes(BS)])
        assert free // PREFETCH_PIECE_BLOCKS not in m._pieces
        assert len(m._pieces) == 3


def test_nbd_exports_stream_from_every_server_at_once(
        tmp_path: Path, nbdkit: Callable[..., NbdkitServer]) -> None:
    """Two exports: a sequential read takes pieces from both (bench/mirror.py times it)."""
    pytest.importorskip("nbd", reason="this machine lacks python3-libnbd (module nbd)")
    servers = [nbdkit("memory", "64M") for _ in range(2)]
    data = np.random.default_rng(3).integers(0, 256, 8 * MIB, dtype=np.uint8).tobytes()
    specs = [s.spec for s in servers]
    with Volume.create(specs, 48 << 20, volume_file=tmp_path / "v.toml",
                       cp_interval=None) as vol:
        vol.write_bytes("/big", data)
    plexes = [CountingPlex(open_plex(s)) for s in specs]
    with Volume.attach(plexes, cp_interval=None) as vol:
        got = read_stream(vol, MIB)
        st = vol.mirror.statistics()
    assert got == data
    assert st.prefetched_blocks_used >= (8 * MIB - 3 * MIB) // BS
    for p in plexes:
        assert p.read_bytes >= 2 * MIB


class _Recorder:
    """A block source that records what a tree asks to fetch ahead."""

    block_size = BS
    reads_ahead = True

    def __init__(self) -> None:
        self.asked: list[tuple[int, int]] = []

    def prefetch(self, ptrs: PtrArray) -> None:
        blks = np.asarray(ptrs["blk"])
        self.asked.append((int(blks.min()), int(blks.max()) + 1))


class _StubTree(_tree.Tree):
    """A tree of ``leaves`` leaves, leaf i in block 1000 + i (no I/O)."""

    def __init__(self, src: _Recorder, leaves: int) -> None:
        super().__init__(src, null_ptrs(1), 3, "stub")  # type: ignore[arg-type]
        self.leaves = leaves

    def leaf_ptrs(self, a: int, b: int) -> PtrArray:
        out = null_ptrs(b - a)
        out["blk"] = np.arange(a, b) + 1000
        out["blk"][np.arange(a, b) >= self.leaves] = 0
        return out


def _tree_over(src: _Recorder, leaves: int) -> _tree.Tree:
    return _StubTree(src, leaves)


def test_the_window_grows_with_a_stream_and_stops_at_the_end() -> None:
    src = _Recorder()
    leaves = 20000
    t = _tree_over(src, leaves)
    step = 32  # 128 KiB reads
    for a in range(0, leaves, step):
        t.read_ahead(a, min(a + step, leaves), leaves)
    lo_min = _tree.READ_AHEAD_MIN // BS
    lo_max = _tree.READ_AHEAD_MAX // BS
    # the second read continues the first: from its end, the smallest window
    assert src.asked[0] == (1000 + 2 * step, 1000 + 2 * step + lo_min)
    covered = [b - a for a, b in src.asked]
    assert max(covered) <= lo_max and max(covered) > lo_min  # it grew, within the bound
    for (_, b), (a2, _) in zip(src.asked, src.asked[1:], strict=False):
        assert a2 == b  # no leaf fetched twice, none skipped
    assert src.asked[-1][1] == 1000 + leaves  # the last fetch ends at the object's end


def test_a_jump_starts_the_window_over() -> None:
    src = _Recorder()
    t = _tree_over(src, 100000)
    for a in range(0, 640, 32):
        t.read_ahead(a, a + 32, 100000)
    n = len(src.asked)
    t.read_ahead(50000, 50032, 100000)  # a seek: nothing fetched
    assert len(src.asked) == n
    t.read_ahead(50032, 50064, 100000)  # the new stream fetches from its small window
    assert src.asked[-1] == (1000 + 50064, 1000 + 50064 + _tree.READ_AHEAD_MIN // BS)
