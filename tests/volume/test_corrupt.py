"""Corrupt input on a real volume: every kind of damage ends in a clear MirrorfsError.

Each test damages the image file of a closed one-plex volume the way a disk,
a bad copy or a wrong volume file would, then reopens it. What must happen:

* damage to the labels (superblock rings) is survived while one valid copy
  of a slot remains, and otherwise refused at open with a message naming the
  plex; never another exception type;
* a flipped bit in any block reached from the superblock is detected on
  read (``CorruptBlock``, naming the block) and reported by fsck, and the
  volume still opens, unless the block is one that opening reads (the
  block-map plane, the snapshot table): then opening fails with
  ``CorruptBlock`` naming the block.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import struct
import tomllib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from mirrorfs.errors import CorruptBlock, ForeignPlex, FormatError, MirrorfsError, PlexError
from mirrorfs.fs import fsck
from mirrorfs.ondisk import (
    MAX_HEIGHT,
    MAX_SNAPSHOTS,
    RING_BYTES,
    SLOT_SIZE,
    Superblock,
    checksum,
    cp_offsets,
    slot_offsets,
)
from mirrorfs.ondisk._superblock import SB_BODY, SB_SIZE
from mirrorfs.store import _planes as planes
from mirrorfs.volume import Volume

SIZE = 32 << 20
BS = 4096
CORRUPT_LOG = r"checksum or I/O error on plex .*, block {blk} "

Files = dict[str, bytes]


@dataclasses.dataclass(frozen=True)
class Made:
    """A closed volume: its files, its CP, and one block of every kind it holds."""

    vf: Path
    plex: Path
    cp: int
    files: Files = dataclasses.field(repr=False)
    blocks: dict[str, int]


def make_volume(tmp_path: Path, name: str = "v") -> Made:
    """A one-plex volume with a small file, a directory, a 1 MiB file and a snapshot."""
    vf = tmp_path / f"{name}.toml"
    plex = tmp_path / f"{name}-p0.img"
    rng = random.Random(name)
    files: Files = {"/small": rng.randbytes(10_000), "/d/f": rng.randbytes(5000),
                    "/big": rng.randbytes(1 << 20)}
    vol = Volume.create([str(plex)], SIZE, volume_file=vf, cp_interval=None)
    try:
        vol.mkdir("/d")
        for path, data in files.items():
            vol.write_bytes(path, data)
        vol.snapshot("s1")
        st = vol.store
        big = st.objects.tree(vol.stat("/big").ino)
        assert big.height == 2  # 256 leaves, 128 pointers per node
        levels = dict(big.walk_ptrs())
        blocks = {
            "data": int(big.leaf_ptrs(200, 201)["blk"][0]),
            "node": int(levels[1]["blk"][1]),  # the node over leaves 128..255
            "bucket": int(st.objects.tree(vol.stat("/d").ino).leaf_ptrs(0, 1)["blk"][0]),
            "objtab": int(st.objects.objtab.leaf_ptrs(0, 1)["blk"][0]),
            "plane": int(st.plane_tree.leaf_ptrs(0, 1)["blk"][0]),
            "snaptab": int(st.snap_tree.leaf_ptrs(0, 1)["blk"][0]),
        }
        assert all(blocks.values()) and len(set(blocks.values())) == len(blocks)
        cp = st.cp
    finally:
        vol.close()
    return Made(vf, plex, cp, files, blocks)


@pytest.fixture
def made(tmp_path: Path) -> Made:
    return make_volume(tmp_path)


def write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def read_at(path: Path, offset: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


def flip_bit(path: Path, blk: int, byte: int = 100, bit: int = 2) -> None:
    """Flip one bit inside block ``blk`` of an image, as a failing disk would."""
    old = read_at(path, blk * BS + byte, 1)
    write_at(path, blk * BS + byte, bytes([old[0] ^ (1 << bit)]))


def open_fails(target: str | Path | list[str]) -> MirrorfsError:
    """Open must fail with a MirrorfsError (any other type fails the test); return it."""
    with pytest.raises(MirrorfsError) as info:
        Volume.open(str(target) if isinstance(target, Path) else target, cp_interval=None)
    err = info.value
    assert "\n" not in str(err)
    return err


def assert_content(vol: Volume, files: Files) -> None:
    """The volume holds exactly ``files`` (and /d), and snapshot s1 the same."""
    assert sorted(vol.listdir("/")) == [".snapshot", "big", "d", "small"]
    for path, data in files.items():
        assert vol.read_bytes(path) == data, path
        assert vol.read_bytes("/.snapshot/s1" + path) == data, path


# -- labels -----------------------------------------------------------------------


def test_garbage_in_both_rings_is_refused_naming_the_plex(made: Made) -> None:
    """Random bytes over every superblock slot: FormatError naming the plex, nothing else."""
    rng = random.Random(1)
    write_at(made.plex, 0, rng.randbytes(RING_BYTES))
    write_at(made.plex, SIZE - RING_BYTES, rng.randbytes(RING_BYTES))
    err = open_fails(made.vf)
    assert type(err) is FormatError
    assert f"plex {made.plex}" in str(err)
    assert "no mirrorfs superblock" in str(err)
    assert err.exit_code == 2


def test_a_zeroed_image_is_refused_as_blank(made: Made) -> None:
    """An image of zeros (a new disk, a wiped plex) is refused as blank, naming the plex."""
    os.truncate(made.plex, 0)
    os.truncate(made.plex, SIZE)
    err = open_fails(made.vf)
    assert type(err) is FormatError
    assert str(err) == (f"plex {made.plex}: no mirrorfs superblock (the plex is blank); "
                        "is this a mirrorfs plex?")


@pytest.mark.parametrize("size", [0, 100, RING_BYTES])
def test_an_image_too_small_for_a_plex_is_refused_naming_the_plex(made: Made, size: int) -> None:
    """A file too short for the two superblock rings is refused with a message about its size
    (before, the ring read failed as an I/O error of a running mirror, or the plex opened)."""
    os.truncate(made.plex, size)
    err = open_fails(made.vf)
    assert str(made.plex) in str(err)
    assert f"{size} bytes" in str(err)
    assert "in-sync set" not in str(err)  # not an I/O error of a running mirror


def test_a_truncated_image_is_refused_naming_both_sizes(made: Made) -> None:
    """An image cut short (a copy interrupted) still has ring A, but it is smaller than the
    volume its label describes: open refuses it rather than fail later on a read or a write."""
    os.truncate(made.plex, SIZE // 2)
    err = open_fails(made.vf)
    assert isinstance(err, PlexError | FormatError)
    assert str(made.plex) in str(err)
    assert str(SIZE // 2) in str(err) and str(SIZE) in str(err)


def edit_volume_file(vf: Path, plexes: list[str]) -> None:
    doc = tomllib.loads(vf.read_text())
    doc["volume"]["plexes"] = plexes
    vf.write_text(tomli_w.dumps(doc))


@pytest.mark.parametrize("listing", ["instead", "besides"])
def test_a_plex_of_another_volume_is_refused_as_foreign(tmp_path: Path, listing: str) -> None:
    """A volume file that lists another volume's plex (alone or with its own) opens nothing:
    ForeignPlex names that plex and both volumes."""
    ours = make_volume(tmp_path, "ours")
    theirs = make_volume(tmp_path, "theirs")
    plexes = [str(theirs.plex)] if listing == "instead" else [str(ours.plex), str(theirs.plex)]
    edit_volume_file(ours.vf, plexes)
    err = open_fails(ours.vf)
    assert type(err) is ForeignPlex
    ours_uuid = tomllib.loads(ours.vf.read_text())["volume"]["uuid"]
    theirs_uuid = tomllib.loads(theirs.vf.read_text())["volume"]["uuid"]
    assert str(err) == (f"plex {theirs.plex} belongs to volume {theirs_uuid}, not to volume "
                        f"{ours_uuid}; remove it from the volume file")
    assert err.exit_code == 2


def valid_slots(path: Path) -> list[tuple[int, bytes]]:
    """(offset, bytes) of every slot of the image that decodes."""
    out = []
    for off in slot_offsets(SIZE):
        raw = read_at(path, off, SLOT_SIZE)
        try:
            Superblock.decode(raw)
        except FormatError:
            continue
        out.append((off, raw))
    return out


def test_a_future_format_version_in_every_slot_is_refused_naming_the_version(
        made: Made) -> None:
    """Slots of format version 2 with correct checksums: refused, and the message says why
    (the version), not that the plex is blank or torn."""
    assert {off for off, _ in valid_slots(made.plex)} >= set(cp_offsets(SIZE, made.cp))
    rewrite_valid_slots(made.plex, 8, "I", 2)
    err = open_fails(made.vf)
    assert type(err) is FormatError
    assert str(made.plex) in str(err)
    assert re.search(r"format version 2 is not supported \(this mirrorfs reads \[1\]\)",
                     str(err))


def rewrite_valid_slots(path: Path, offset: int, fmt: str, value: int) -> None:
    """Set one field in every valid slot, with a correct checksum: a label that lies."""
    slots = valid_slots(path)
    assert slots
    for off, raw in slots:
        buf = bytearray(raw)
        struct.pack_into("<" + fmt, buf, offset, value)
        buf[SB_BODY:SB_SIZE] = checksum(bytes(buf[:SB_BODY]))
        write_at(path, off, bytes(buf))


@pytest.mark.parametrize("count", [MAX_SNAPSHOTS + 1, 2**32 - 1])
def test_a_snapshot_count_out_of_bounds_is_refused_at_decode(made: Made, count: int) -> None:
    """A label claiming more snapshots than a volume may hold is refused by its bounds check,
    naming the plex, before open sizes anything by it (2**32 - 1 records would need
    gigabytes of pointers: a MemoryError, not a MirrorfsError)."""
    rewrite_valid_slots(made.plex, 228, "I", count)
    err = open_fails(made.vf)
    assert type(err) is FormatError
    assert str(made.plex) in str(err)
    assert f"snapshot count {count} above {MAX_SNAPSHOTS}" in str(err)


def test_a_label_counting_more_snapshots_than_its_table_holds_names_the_plex(
        made: Made) -> None:
    """A snapshot count within bounds but above the records in the table: open fails with a
    FormatError, and the message must say which plex and which block."""
    rewrite_valid_slots(made.plex, 228, "I", 20)
    err = open_fails(made.vf)
    assert type(err) is FormatError
    assert "snapshot record of unknown kind 0" in str(err)
    assert str(made.plex) in str(err)


def test_a_label_whose_inode_counter_is_past_the_inode_space_is_refused(made: Made) -> None:
    """next_ino = 2**64 - 1 with a valid checksum: the next file would get an inode number
    that names a snapshot inode, and the one after cannot be stored. Open must refuse it."""
    rewrite_valid_slots(made.plex, 112, "Q", 2**64 - 1)
    try:
        vol = Volume.open(made.vf, cp_interval=None)
    except MirrorfsError as e:
        assert type(e) is FormatError and str(made.plex) in str(e)
        return
    vol.mirror.close()  # not vol.close(): its commit is where struct.error escapes
    pytest.fail("a label with next_ino = 2**64 - 1 opened")


def exercise(vol: Volume) -> list[str]:
    """Walk, read and fsck a volume whose label lies; any failure must be a MirrorfsError.

    Returns what failed (as messages), so a test can also say that something did.
    """
    failed: list[str] = []
    reads: list[Callable[[], object]] = [
        lambda: vol.listdir("/"), lambda: vol.listdir("/d"), lambda: vol.read_bytes("/d/f"),
        lambda: vol.read_bytes("/big"), lambda: vol.read_bytes("/.snapshot/s1/big")]
    for read in reads:
        try:
            read()
        except MirrorfsError as e:
            failed.append(str(e))
    try:
        failed += [str(f) for f in fsck(vol.store).findings]
    except MirrorfsError as e:
        failed.append(str(e))
    return failed


@pytest.mark.parametrize("height", [1, 5, MAX_HEIGHT])
@pytest.mark.parametrize(("tree", "offset"), [("object table", 224), ("plane", 225),
                                              ("snapshot table", 226)])
def test_a_label_with_a_wrong_tree_height_fails_only_with_mirrorfs_errors(
        made: Made, expect_log: Callable[[str], None], tree: str, offset: int,
        height: int) -> None:
    """Each table here is one leaf (height 0). A label saying otherwise has a valid checksum,
    so the leaf's bytes are read as pointers: wherever they point (past the volume, or at a
    block whose checksum they do not match) the result is a MirrorfsError, found by a read
    or by fsck, never an OverflowError or IndexError."""
    expect_log(r"checksum or I/O error on plex")
    rewrite_valid_slots(made.plex, offset, "B", height)
    try:
        vol = Volume.open(made.vf, read_only=True, cp_interval=None)
    except MirrorfsError as e:
        assert tree != "object table"  # opening reads only the plane and the snapshot table
        assert isinstance(e, CorruptBlock), e
        return
    with vol:
        assert exercise(vol), "a wrong height must be noticed"


@pytest.mark.parametrize("nblocks", [1, 8, 16])
def test_a_label_smaller_than_its_rings_is_refused_naming_the_plex(
        made: Made, nblocks: int) -> None:
    """nblocks too small to hold the two superblock rings is out of bounds: every slot is
    refused at decode (before, CP 0's slot, whose roots are null, passed and opening
    failed with an OverflowError placing ring B below block 0)."""
    rewrite_valid_slots(made.plex, 56, "Q", nblocks)
    err = open_fails(made.vf)
    assert type(err) is FormatError
    assert str(made.plex) in str(err)


@pytest.mark.parametrize("ring", ["A", "B"])
def test_one_destroyed_ring_leaves_the_volume_at_the_same_cp(made: Made, ring: str) -> None:
    """Either ring alone opens the volume at its newest CP with all content, fsck clean;
    the next CP is written and found again on reopen."""
    off = 0 if ring == "A" else SIZE - RING_BYTES
    write_at(made.plex, off, random.Random(2).randbytes(RING_BYTES))
    with Volume.open(made.vf, cp_interval=None) as vol:
        assert vol.store.cp == made.cp
        assert_content(vol, made.files)
        report = fsck(vol.store)
        assert report.clean, [str(f) for f in report.findings]
        vol.write_bytes("/after", b"written after the damage")
        vol.sync()
        cp = vol.store.cp
    with Volume.open(made.vf, read_only=True, cp_interval=None) as vol:
        assert vol.store.cp == cp
        assert vol.read_bytes("/after") == b"written after the damage"


def commit_one_more_cp(made: Made) -> tuple[bytes, int]:
    """Commit CP n+1 (a new file) on the closed volume; return the image before it, and n+1."""
    before = made.plex.read_bytes()
    with Volume.open(made.vf, cp_interval=None) as vol:
        vol.write_bytes("/later", b"only in CP n+1")
        vol.sync()
        cp = vol.store.cp
    assert cp == made.cp + 1
    return before, cp


@pytest.mark.parametrize("cut", [8, 512, SB_BODY])
def test_a_torn_newest_slot_opens_at_the_previous_cp(made: Made, cut: int) -> None:
    """Power lost while ring A's slot of CP n+1 was written (ring B's not yet begun): the slot
    fails its checksum and the volume opens at CP n, with CP n's content, fsck clean."""
    before, cp = commit_one_more_cp(made)
    a, b = cp_offsets(SIZE, cp)
    new_a = read_at(made.plex, a, SLOT_SIZE)
    write_at(made.plex, a, new_a[:cut] + before[a + cut : a + SLOT_SIZE])
    write_at(made.plex, b, before[b : b + SLOT_SIZE])
    with Volume.open(made.vf, read_only=True, cp_interval=None) as vol:
        assert vol.store.cp == made.cp
        assert not vol.exists("/later")
        assert_content(vol, made.files)
        report = fsck(vol.store)
        assert report.clean, [str(f) for f in report.findings]


def test_a_torn_ring_b_slot_still_opens_at_the_new_cp(made: Made) -> None:
    """Power lost while ring B's slot was written: ring A holds the whole slot of CP n+1."""
    before, cp = commit_one_more_cp(made)
    _, b = cp_offsets(SIZE, cp)
    new_b = read_at(made.plex, b, SLOT_SIZE)
    write_at(made.plex, b, new_b[:512] + before[b + 512 : b + SLOT_SIZE])
    with Volume.open(made.vf, read_only=True, cp_interval=None) as vol:
        assert vol.store.cp == cp
        assert vol.read_bytes("/later") == b"only in CP n+1"


# -- flipped bits in blocks ------------------------------------------------------------


def expect_corrupt(expect_log: Callable[[str], None], blk: int) -> None:
    expect_log(CORRUPT_LOG.format(blk=blk))


def test_a_flipped_bit_in_file_data_is_found_on_read_and_by_fsck(
        made: Made, expect_log: Callable[[str], None]) -> None:
    """Reading the damaged block raises CorruptBlock naming it; other blocks of the file and
    other files still read; fsck reports the file's path and the block."""
    blk = made.blocks["data"]
    flip_bit(made.plex, blk)
    expect_corrupt(expect_log, blk)
    with Volume.open(made.vf, cp_interval=None) as vol:
        ino = vol.stat("/big").ino
        with pytest.raises(CorruptBlock, match=rf"block {blk}: checksum mismatch") as info:
            vol.read_bytes("/big")
        assert info.value.exit_code == 1
        assert vol.fs.read(ino, 0, BS) == made.files["/big"][:BS]
        assert vol.fs.read(ino, 201 * BS, BS) == made.files["/big"][201 * BS : 202 * BS]
        assert vol.read_bytes("/small") == made.files["/small"]
        report = fsck(vol.store)
        assert not report.clean
        bad = [f for f in report.findings if f.block == blk]
        assert len(bad) == 1, [str(f) for f in report.findings]
        assert bad[0].check == "checksums"
        assert bad[0].path == "/big"
        assert bad[0].plex == str(made.plex)
        assert [f for f in report.findings if f.block != blk] == []


def test_a_flipped_bit_in_a_file_tree_node_is_found_on_read_and_by_fsck(
        made: Made, expect_log: Callable[[str], None]) -> None:
    """The node over leaves 128..255 of /big: those leaves raise CorruptBlock naming the node,
    the leaves under the other node still read; fsck names the node and the path."""
    blk = made.blocks["node"]
    flip_bit(made.plex, blk)
    expect_corrupt(expect_log, blk)
    with Volume.open(made.vf, cp_interval=None) as vol:
        ino = vol.stat("/big").ino
        assert vol.fs.read(ino, 0, BS) == made.files["/big"][:BS]
        with pytest.raises(CorruptBlock, match=rf"block {blk}: checksum mismatch"):
            vol.fs.read(ino, 130 * BS, BS)
        report = fsck(vol.store)
        bad = [f for f in report.findings if f.block == blk]
        assert bad, [str(f) for f in report.findings]
        assert bad[0].check == "checksums" and bad[0].path == "/big"
        assert "tree node" in bad[0].detail


def test_a_flipped_bit_in_a_directory_bucket_is_found_on_lookup_and_by_fsck(
        made: Made, expect_log: Callable[[str], None]) -> None:
    """Listing or looking up in /d raises CorruptBlock naming its bucket; the rest reads;
    fsck reports /d and the block."""
    blk = made.blocks["bucket"]
    flip_bit(made.plex, blk)
    expect_corrupt(expect_log, blk)
    with Volume.open(made.vf, cp_interval=None) as vol:
        with pytest.raises(CorruptBlock, match=rf"block {blk}: checksum mismatch"):
            vol.listdir("/d")
        with pytest.raises(CorruptBlock, match=rf"block {blk}"):
            vol.read_bytes("/d/f")
        assert vol.read_bytes("/big") == made.files["/big"]
        report = fsck(vol.store)
        bad = [f for f in report.findings if f.block == blk]
        assert bad, [str(f) for f in report.findings]
        assert bad[0].check == "checksums" and bad[0].path == "/d"


def test_a_flipped_bit_in_an_object_table_leaf_is_found_on_stat_and_by_fsck(
        made: Made, expect_log: Callable[[str], None]) -> None:
    """The volume's only object-table leaf holds every inode: the volume opens, every inode
    read raises CorruptBlock naming the leaf, and fsck reports it (it cannot walk names)."""
    blk = made.blocks["objtab"]
    flip_bit(made.plex, blk)
    expect_corrupt(expect_log, blk)
    with Volume.open(made.vf, cp_interval=None) as vol:
        assert vol.store.cp == made.cp
        with pytest.raises(CorruptBlock,
                           match=rf"object table( at offset \d+)?: block {blk}: checksum"):
            vol.stat("/small")
        report = fsck(vol.store)
        bad = [f for f in report.findings if f.block == blk]
        assert bad, [str(f) for f in report.findings]
        assert bad[0].check == "checksums"
        assert any(f.check == "namespace" and "object table unreadable" in f.detail
                   for f in report.findings)


@pytest.mark.parametrize(("kind", "what"), [("plane", "block-map plane"),
                                            ("snaptab", "snapshot table")])
def test_a_flipped_bit_in_a_block_read_at_open_makes_open_fail_naming_the_block(
        made: Made, expect_log: Callable[[str], None], kind: str, what: str) -> None:
    """The active plane and the snapshot table are read to open: with one bad (and no other
    plex to repair from) open raises CorruptBlock naming the table and the block."""
    blk = made.blocks[kind]
    flip_bit(made.plex, blk)
    expect_corrupt(expect_log, blk)
    err = open_fails(made.vf)
    assert type(err) is CorruptBlock
    assert re.match(rf"{what}( at offset \d+)?: block {blk}: checksum mismatch on every "
                    "in-sync plex", str(err))
    with pytest.raises(CorruptBlock):
        Volume.open(made.vf, read_only=True, cp_interval=None)


def test_flipped_bits_in_unused_blocks_are_harmless(made: Made) -> None:
    """Control for the tests above: damage outside every tree is never read, fsck is clean."""
    unused = np.array([SIZE // BS // 2, SIZE // BS - 100], dtype=np.uint64)
    with Volume.open(made.vf, read_only=True, cp_interval=None) as vol:
        assert not planes.test_bits(vol.store.alloc.held(), unused).any()
    for blk in unused.tolist():
        flip_bit(made.plex, blk)
    with Volume.open(made.vf, cp_interval=None) as vol:
        assert_content(vol, made.files)
        report = fsck(vol.store)
        assert report.clean, [str(f) for f in report.findings]
