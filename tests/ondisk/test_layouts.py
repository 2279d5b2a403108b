"""On-disk layouts: encode/decode round trips, the choice of the live slot, and rejection.

Every decode must turn bad bytes into a FormatError that names the plex and
the block they came from (never a struct.error, ValueError or IndexError),
and must check in the documented order: length, magic, version, checksum,
bounds. The superblock is the only layout with its own magic, version and
checksum; inodes, snapshot records and directory buckets are covered by the
checksum in their parent's block pointer, so for them the tests check length
and bounds.
"""

from __future__ import annotations

import dataclasses
import struct
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirrorfs.errors import FormatError, MirrorfsError
from mirrorfs.ondisk import (
    FORMAT_VERSION,
    INODE_SIZE,
    MAX_HEIGHT,
    MAX_NAME_LEN,
    MAX_PLEXES,
    MAX_SNAPSHOT_NAME,
    MAX_SNAPSHOTS,
    RING_BYTES,
    RING_SLOTS,
    SLOT_SIZE,
    SNAP_SIZE,
    SUPPORTED_VERSIONS,
    Entry,
    Inode,
    Member,
    PlexState,
    ResyncRecord,
    SnapKind,
    SnapshotRecord,
    Superblock,
    Where,
    bucket_capacity,
    checksum,
    cp_offsets,
    decode_bucket,
    encode_bucket,
    entry_size,
    name_hash,
    pick_slot,
    slot_offsets,
)
from mirrorfs.ondisk._superblock import SB_BODY, SB_SIZE

WHERE = Where("p0.img", 7)
NAMED = r"plex p0\.img, block 7: "
NBLOCKS = 1 << 20

u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
uuids = st.builds(uuid.UUID, int=st.integers(0, 2**128 - 1))


def ptr_raw(blk: int, birth: int, ck: bytes) -> bytes:
    """The 32 bytes of a block pointer, as layouts store it."""
    return struct.pack("<QQ16s", blk, birth, ck)


ptrs = st.builds(ptr_raw, st.integers(0, NBLOCKS - 1), u64, st.binary(min_size=16, max_size=16))
members = st.builds(Member, uuids, u32, st.sampled_from(PlexState), u64)
resyncs = st.builds(ResyncRecord, uuids, uuids, u64, u64, uuids, u64, u64)
heights = st.integers(0, MAX_HEIGHT)


@st.composite
def superblocks(draw: st.DrawFn) -> Superblock:
    return Superblock(
        block_size=draw(st.sampled_from([4096, 8192, 16384, 65536])),
        volume_uuid=draw(uuids), plex_uuid=draw(uuids), plex_ordinal=draw(u32),
        nblocks=NBLOCKS, cp=draw(u64), cp_id=draw(uuids), prev_cp_id=draw(uuids),
        timestamp_ns=draw(u64), next_ino=draw(st.integers(1, 1 << 40)), min_plexes=draw(u32),
        objtab_root=draw(ptrs), plane_root=draw(ptrs), snaptab_root=draw(ptrs),
        objtab_height=draw(heights), plane_height=draw(heights), snaptab_height=draw(heights),
        n_snapshots=draw(st.integers(0, MAX_SNAPSHOTS)),
        members=tuple(draw(st.lists(members, min_size=1, max_size=MAX_PLEXES))),
        resync=draw(st.none() | resyncs),
    )


def a_superblock(cp: int = 5, **changes: object) -> Superblock:
    """A valid superblock with two members and a resync record."""
    sb = Superblock(
        block_size=4096, volume_uuid=uuid.UUID(int=1), plex_uuid=uuid.UUID(int=2),
        plex_ordinal=1, nblocks=NBLOCKS, cp=cp, cp_id=uuid.UUID(int=3),
        prev_cp_id=uuid.UUID(int=4), timestamp_ns=1_700_000_000_000_000_000, next_ino=99,
        min_plexes=1, objtab_root=ptr_raw(10, cp, b"o" * 16),
        plane_root=ptr_raw(11, cp, b"p" * 16), snaptab_root=ptr_raw(12, cp, b"s" * 16),
        objtab_height=1, plane_height=0, snaptab_height=2, n_snapshots=3,
        members=(Member(uuid.UUID(int=2), 1, PlexState.IN_SYNC, cp),
                 Member(uuid.UUID(int=9), 0, PlexState.RESYNCING, cp - 1)),
        resync=ResyncRecord(uuid.UUID(int=9), uuid.UUID(int=5), 2, cp, uuid.UUID(int=6), 17, 40),
    )
    return dataclasses.replace(sb, **changes)  # type: ignore[arg-type]


def patched(raw: bytes, offset: int, fmt: str, value: int) -> bytes:
    """``raw`` with one field replaced and the slot checksum recomputed, so only that field
    is wrong and the check that fires is the one for it."""
    buf = bytearray(raw)
    struct.pack_into("<" + fmt, buf, offset, value)
    buf[SB_BODY:SB_SIZE] = checksum(bytes(buf[:SB_BODY]))
    return bytes(buf)


# -- superblock ---------------------------------------------------------------


@given(superblocks())
def test_superblock_round_trips(sb: Superblock) -> None:
    """Every valid superblock decodes to itself; a slot is SLOT_SIZE bytes, zero past 1024."""
    raw = sb.encode()
    assert len(raw) == SLOT_SIZE
    assert raw[SB_SIZE:] == bytes(SLOT_SIZE - SB_SIZE)
    assert Superblock.decode(raw, WHERE) == sb


def test_superblock_with_members_and_resync_record_round_trips_field_by_field() -> None:
    """The members, their states and the resync record come back exactly, and roots too."""
    sb = a_superblock()
    got = Superblock.decode(sb.encode(), WHERE)
    assert got.members == sb.members
    assert got.members[1].state is PlexState.RESYNCING
    assert got.resync == sb.resync
    assert got.version == FORMAT_VERSION
    assert got.root("objtab")["blk"][0] == 10
    assert got.root("snaptab")["birth"][0] == 5
    assert got.member(uuid.UUID(int=9)) == sb.members[1]
    assert got.member(uuid.UUID(int=77)) is None
    no_resync = dataclasses.replace(sb, resync=None)
    assert Superblock.decode(no_resync.encode()).resync is None


def test_superblock_decode_reads_only_the_first_slot_bytes() -> None:
    """Bytes past the checksum (the rest of a slot, or more) do not change what decodes."""
    raw = a_superblock().encode()
    assert Superblock.decode(raw[:SB_SIZE]) == a_superblock()
    assert Superblock.decode(raw + b"x" * 10) == a_superblock()


def test_superblock_writers_emit_only_the_newest_version() -> None:
    """A superblock decoded from an old version is re-encoded as FORMAT_VERSION."""
    assert FORMAT_VERSION in SUPPORTED_VERSIONS
    raw = dataclasses.replace(a_superblock(), version=0).encode()
    assert struct.unpack_from("<I", raw, 8)[0] == FORMAT_VERSION


@pytest.mark.parametrize("n", [0, 1, 1023])
def test_superblock_rejects_short_data(n: int) -> None:
    """A slot shorter than its body and checksum is refused by length, naming plex and block."""
    with pytest.raises(FormatError, match=NAMED + rf".*{n} bytes, expected {SB_SIZE}"):
        Superblock.decode(a_superblock().encode()[:n], WHERE)


def test_superblock_rejects_wrong_magic() -> None:
    """Bytes that are not a superblock are refused by magic, before anything else is read."""
    raw = b"NOTMIRRF" + a_superblock().encode()[8:]
    with pytest.raises(FormatError, match=NAMED + r"no mirrorfs superblock \(magic b'NOTMIRRF'"):
        Superblock.decode(raw, WHERE)


@pytest.mark.parametrize("version", [0, 2, 2**32 - 1])
def test_superblock_rejects_unsupported_version(version: int) -> None:
    """A slot of another format version (with a correct checksum) is refused by version."""
    raw = patched(a_superblock().encode(), 8, "I", version)
    with pytest.raises(FormatError, match=NAMED + rf"format version {version} is not supported"):
        Superblock.decode(raw, WHERE)


def test_the_version_check_comes_before_the_checksum() -> None:
    """A future version may checksum differently: its slot is refused by version, not as torn."""
    buf = bytearray(a_superblock().encode())
    struct.pack_into("<I", buf, 8, 2)
    with pytest.raises(FormatError, match="format version 2 is not supported"):
        Superblock.decode(bytes(buf), WHERE)


@pytest.mark.parametrize("offset", [12, 64, 500, SB_BODY - 1, SB_BODY, SB_SIZE - 1])
def test_superblock_rejects_bad_checksum(offset: int) -> None:
    """One flipped bit anywhere in the body or the checksum makes the slot untrusted."""
    buf = bytearray(a_superblock().encode())
    buf[offset] ^= 0x10
    with pytest.raises(FormatError, match=NAMED + r"superblock checksum mismatch"):
        Superblock.decode(bytes(buf), WHERE)


def test_a_torn_slot_is_rejected_by_its_checksum() -> None:
    """The front of a new slot over the back of an old one (a torn write) is never trusted."""
    new, old = a_superblock(cp=9).encode(), a_superblock(cp=1).encode()
    for cut in (72, 512, SB_BODY, SB_BODY + 8):  # 72: just past the CP value
        with pytest.raises(FormatError, match="checksum mismatch"):
            Superblock.decode(new[:cut] + old[cut:], WHERE)


@pytest.mark.parametrize(("offset", "fmt", "value", "message"), [
    (12, "I", 4095, r"block size 4095 is not a power of two"),
    (12, "I", 2048, r"block size 2048"),
    (12, "I", 1 << 17, r"block size 131072"),
    (56, "Q", 2 * RING_BYTES // 4096, r"volume of 16 blocks leaves no room beside the rings"),
    (56, "Q", 1, r"volume of 1 blocks leaves no room"),
    (124, "I", 0, r"member count 0 outside 1\.\.16"),
    (124, "I", MAX_PLEXES + 1, r"member count 17 outside"),
    (224, "B", MAX_HEIGHT + 1, rf"tree height above {MAX_HEIGHT}"),
    (226, "B", 255, r"tree height above"),
    (128, "Q", NBLOCKS, rf"object table root points at block {NBLOCKS} beyond {NBLOCKS}"),
    (160, "Q", 2**64 - 1, r"plane root points at block"),
    (192, "Q", NBLOCKS + 5, r"snapshot table root points at block"),
    (228, "I", MAX_SNAPSHOTS + 1, rf"snapshot count {MAX_SNAPSHOTS + 1} above {MAX_SNAPSHOTS}"),
    (228, "I", 2**32 - 1, r"snapshot count 4294967295 above"),
    (240 + 32 + 20, "B", 0, r"member 1 has unknown state 0"),
    (240 + 20, "B", 200, r"member 0 has unknown state 200"),
])
def test_superblock_rejects_out_of_bound_fields(offset: int, fmt: str, value: int,
                                                message: str) -> None:
    """Each bound is checked (with a valid checksum, so the bound is what fires)."""
    raw = patched(a_superblock().encode(), offset, fmt, value)
    with pytest.raises(FormatError, match=NAMED + message):
        Superblock.decode(raw, WHERE)


def test_a_format_error_is_a_mirrorfs_error_with_a_usage_exit_code() -> None:
    """The CLI prints it on one line and exits 2 (bad input), with no traceback."""
    with pytest.raises(MirrorfsError) as info:
        Superblock.decode(bytes(SLOT_SIZE), WHERE)
    assert isinstance(info.value, FormatError)
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("plex p0.img, block 7: ")


# -- slots and rings ----------------------------------------------------------


def test_pick_slot_takes_the_highest_valid_cp_and_skips_invalid_slots() -> None:
    """None stands for a slot that failed decode; it is never chosen, wherever it sits."""
    a, b, c = a_superblock(cp=3), a_superblock(cp=11), a_superblock(cp=10)
    assert pick_slot([a, None, b, c, None]) is b
    assert pick_slot([None, c, a]) is c
    assert pick_slot([None, None]) is None
    assert pick_slot([]) is None


def test_pick_slot_prefers_ring_a_on_a_tie() -> None:
    """Both rings hold CP n; ring A (listed first) was flushed first, so it wins a tie."""
    a = a_superblock(cp=7)
    b = a_superblock(cp=7, timestamp_ns=1)
    assert pick_slot([None, a, None, b]) is a


@given(st.lists(st.none() | st.integers(0, 2**64 - 1), max_size=2 * RING_SLOTS))
def test_pick_slot_is_the_max_over_valid_slots(cps: list[int | None]) -> None:
    """pick_slot agrees with a plain max over the slots that decoded."""
    slots = [None if cp is None else a_superblock(cp=cp) for cp in cps]
    got = pick_slot(slots)
    valid = [cp for cp in cps if cp is not None]
    if not valid:
        assert got is None
    else:
        assert got is not None and got.cp == max(valid)


@given(st.integers(2 * RING_BYTES // 4096, 1 << 30).map(lambda n: n * 4096), u64)
def test_cp_offsets_are_slot_n_mod_ring_in_both_rings(volume_bytes: int, cp: int) -> None:
    """CP n lands in slot n mod RING_SLOTS of ring A (at 0) and of ring B (at the end)."""
    a, b = cp_offsets(volume_bytes, cp)
    offs = slot_offsets(volume_bytes)
    assert a == offs[cp % RING_SLOTS]
    assert b == offs[RING_SLOTS + cp % RING_SLOTS]
    assert b - a == volume_bytes - RING_BYTES
    assert offs[-1] + SLOT_SIZE == volume_bytes


# -- inodes -----------------------------------------------------------------------


inodes = st.builds(
    Inode, mode=u32, uid=u32, gid=u32, nlink=u32, size=u64, atime_ns=i64, mtime_ns=i64,
    ctime_ns=i64, rdev=u64, root=st.binary(min_size=32, max_size=32), height=heights,
    dir_depth=st.integers(0, 40), blocks=u64, parent=u64)


@given(inodes)
def test_inode_round_trips(ind: Inode) -> None:
    """Every field of an inode survives encode/decode, including negative times."""
    raw = ind.encode()
    assert len(raw) == INODE_SIZE
    assert Inode.decode(raw, WHERE) == ind
    assert Inode.decode(memoryview(raw), WHERE) == ind


@given(inodes, inodes, st.sets(st.sampled_from([f.name for f in dataclasses.fields(Inode)])))
def test_inode_replace_is_dataclasses_replace(ind: Inode, other: Inode, names: set[str]) -> None:
    """The fast ``Inode.replace`` changes exactly the named fields, as the generic one."""
    changes = {n: getattr(other, n) for n in names}
    assert ind.replace(**changes) == dataclasses.replace(ind, **changes)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no field 'colour'"):
        ind.replace(colour=1)


def test_a_zero_record_is_a_free_inode() -> None:
    """The object table's holes and cleared records decode as free inodes."""
    assert Inode.decode(bytes(INODE_SIZE)).free
    assert not Inode(mode=0o100644).free


@pytest.mark.parametrize("n", [0, INODE_SIZE - 1, INODE_SIZE + 1])
def test_inode_rejects_wrong_length(n: int) -> None:
    """An inode record of the wrong size is refused, naming plex and block."""
    raw = (Inode(mode=0o100644).encode() * 2)[:n]
    with pytest.raises(FormatError, match=NAMED + rf"inode record is {n} bytes"):
        Inode.decode(raw, WHERE)


@pytest.mark.parametrize(("offset", "value"), [(88, MAX_HEIGHT + 1), (88, 255), (89, 41)])
def test_inode_rejects_out_of_bound_height_and_depth(offset: int, value: int) -> None:
    """A tree height above MAX_HEIGHT or a directory depth above 40 is refused."""
    buf = bytearray(Inode(mode=0o40755).encode())
    buf[offset] = value
    with pytest.raises(FormatError, match=NAMED + r"inode with tree height .* out of bounds"):
        Inode.decode(bytes(buf), WHERE)


# -- snapshot records ---------------------------------------------------------------


snap_names = st.text(min_size=1, max_size=MAX_SNAPSHOT_NAME).filter(
    lambda s: len(s.encode()) <= MAX_SNAPSHOT_NAME)
snapshot_records = st.builds(
    SnapshotRecord, name=snap_names, guid=uuids, cp=u64, ctime_ns=i64,
    kind=st.sampled_from(SnapKind), objtab_root=st.binary(min_size=32, max_size=32),
    plane_root=st.binary(min_size=32, max_size=32), objtab_height=heights,
    plane_height=heights, next_ino=u64)


@given(snapshot_records)
def test_snapshot_record_round_trips(rec: SnapshotRecord) -> None:
    """Names of any UTF-8 text up to 128 bytes, every kind, every field, come back exactly."""
    raw = rec.encode()
    assert len(raw) == SNAP_SIZE
    assert SnapshotRecord.decode(raw, WHERE) == rec


def test_snapshot_kinds_have_stable_labels() -> None:
    """Kinds print as labels and parse back (the CLI and --json use them)."""
    for kind in SnapKind:
        assert SnapKind.from_label(kind.label) is kind
    assert SnapKind.RESYNC_BASE.label == "resync-base"


def a_snapshot() -> SnapshotRecord:
    return SnapshotRecord("daily", uuid.UUID(int=8), 42, 1, SnapKind.SCHEDULED, bytes(32),
                          bytes(32), 1, 0, 77)


@pytest.mark.parametrize("n", [0, SNAP_SIZE - 1, SNAP_SIZE + 1])
def test_snapshot_record_rejects_wrong_length(n: int) -> None:
    raw = (a_snapshot().encode() * 2)[:n]
    with pytest.raises(FormatError, match=NAMED + rf"snapshot record is {n} bytes"):
        SnapshotRecord.decode(raw, WHERE)


@pytest.mark.parametrize(("offset", "value", "message"), [
    (32, 0, r"snapshot record of unknown kind 0"),
    (32, 99, r"snapshot record of unknown kind 99"),
    (33, MAX_SNAPSHOT_NAME + 1, r"snapshot record out of bounds"),
    (104, MAX_HEIGHT + 1, r"snapshot record out of bounds"),
    (105, 255, r"snapshot record out of bounds"),
])
def test_snapshot_record_rejects_out_of_bound_fields(offset: int, value: int,
                                                     message: str) -> None:
    """Kind, name length and heights are checked, each naming plex and block."""
    buf = bytearray(a_snapshot().encode())
    buf[offset] = value
    with pytest.raises(FormatError, match=NAMED + message):
        SnapshotRecord.decode(bytes(buf), WHERE)


def test_snapshot_record_rejects_a_name_that_is_not_utf8() -> None:
    buf = bytearray(a_snapshot().encode())
    buf[120] = 0xFF
    with pytest.raises(FormatError, match=NAMED + r"snapshot name is not UTF-8"):
        SnapshotRecord.decode(bytes(buf), WHERE)


# -- directory buckets --------------------------------------------------------------


names = st.binary(min_size=1, max_size=MAX_NAME_LEN)
entries = st.builds(lambda name, ino, typ: (name_hash(name), ino, typ, name), names, u64,
                    st.integers(0, 255))


@st.composite
def buckets(draw: st.DrawFn) -> tuple[int, list[Entry]]:
    """A block size and a list of entries that fits one bucket of it."""
    bs = draw(st.sampled_from([4096, 8192]))
    out: list[Entry] = []
    used = 0
    for e in draw(st.lists(entries, max_size=80)):
        if used + entry_size(e[3]) <= bucket_capacity(bs):
            out.append(e)
            used += entry_size(e[3])
    return bs, out


@given(buckets())
def test_directory_bucket_round_trips_in_hash_order(bucket: tuple[int, list[Entry]]) -> None:
    """A bucket decodes to its entries sorted by hash (the readdir cookie order)."""
    bs, ents = bucket
    raw = encode_bucket(ents, bs)
    assert len(raw) == bs
    assert decode_bucket(raw, WHERE) == sorted(ents)
    assert decode_bucket(memoryview(raw), WHERE) == sorted(ents)


def test_a_full_bucket_round_trips() -> None:
    """Entries filling a bucket to its last byte still decode."""
    bs = 4096
    longest = entry_size(b"x" * MAX_NAME_LEN)
    full, rest = divmod(bucket_capacity(bs), longest)
    lens = [MAX_NAME_LEN] * full + [rest - entry_size(b"")]
    assert 1 <= lens[-1] <= MAX_NAME_LEN
    names = [b"%03d" % i + b"x" * (n - 3) for i, n in enumerate(lens)]
    ents: list[Entry] = [(name_hash(n), i, 8, n) for i, n in enumerate(names)]
    raw = encode_bucket(ents, bs)
    assert struct.unpack_from("<H", raw, 2)[0] == bucket_capacity(bs)
    assert decode_bucket(raw, WHERE) == sorted(ents)


def test_name_hash_stays_clear_of_the_reserved_cookies_and_fits_off_t() -> None:
    for name in (b"a", b".", b"x" * 255, bytes(range(1, 200))):
        assert 4 <= name_hash(name) < 2**63


def a_bucket() -> bytes:
    return encode_bucket([(name_hash(b"file"), 12, 8, b"file"), (name_hash(b"dir"), 13, 4,
                                                                 b"dir")], 4096)


@pytest.mark.parametrize("n", [0, 1, 3])
def test_directory_bucket_rejects_short_data(n: int) -> None:
    """Fewer bytes than the bucket header: a FormatError, not a struct.error."""
    with pytest.raises(FormatError, match=NAMED + r"directory bucket"):
        decode_bucket(a_bucket()[:n], WHERE)


def test_directory_bucket_rejects_a_used_count_past_the_block() -> None:
    buf = bytearray(a_bucket())
    struct.pack_into("<H", buf, 2, 4095)
    with pytest.raises(FormatError, match=NAMED + r"directory bucket claims 4095 bytes"):
        decode_bucket(bytes(buf), WHERE)


def test_directory_bucket_rejects_more_entries_than_bytes() -> None:
    buf = bytearray(a_bucket())
    struct.pack_into("<H", buf, 0, 3)
    with pytest.raises(FormatError, match=NAMED + r"directory bucket entry runs past its end"):
        decode_bucket(bytes(buf), WHERE)


@pytest.mark.parametrize("nlen", [0, 200])
def test_directory_bucket_rejects_a_name_length_out_of_bounds(nlen: int) -> None:
    """An empty name, or one running past the bytes in use, is refused."""
    buf = bytearray(a_bucket())
    buf[4 + 17] = nlen  # the first entry's name length
    with pytest.raises(FormatError, match=NAMED + r"directory entry name out of bounds"):
        decode_bucket(bytes(buf), WHERE)


def test_a_truncated_bucket_is_refused_not_misread() -> None:
    """Cutting a bucket inside its entries leaves ``used`` past the data: refused."""
    raw = a_bucket()
    with pytest.raises(FormatError, match=NAMED):
        decode_bucket(raw[:20], WHERE)
