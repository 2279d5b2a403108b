"""Directory bucket blocks: hashed directory entries.

Owns the bucket layout and the name hash. Keeps: entries in a bucket are
sorted by hash, and bucket i of a directory of depth d holds exactly the
names whose hash's top d bits equal i, so the whole directory in bucket order
is in hash order. A readdir cookie (the last hash returned) therefore stays
valid when the directory doubles.

Bucket layout (one block)::

    off size field
    0   2    entry count
    2   2    bytes used after the header
    4   ...  entries: hash u64, inode u64, type u8, name length u8, name

A directory of 100,000 entries needs no linear scan: a lookup reads one
bucket.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import xxhash

from ._common import Where, fail

_HDR = struct.Struct("<HH")
_ENT = struct.Struct("<QQBB")
ENTRY_OVERHEAD = _ENT.size
MAX_NAME_LEN = 255

# (hash, ino, type, name)
Entry = tuple[int, int, int, bytes]


FIRST_HASH = 4  # readdir cookies 1, 2, 3 are ".", ".." and "/.snapshot"


def name_hash(name: bytes) -> int:
    """A 64-bit hash of a name in [FIRST_HASH, 2**63): a readdir cookie that fits off_t."""
    h = xxhash.xxh3_64_intdigest(name) >> 1
    return max(h, FIRST_HASH)


def bucket_of(h: int, depth: int) -> int:
    """Bucket of hash ``h`` in a directory of 2**depth buckets: its top ``depth`` bits."""
    return h >> (63 - depth) if depth else 0


def entry_size(name: bytes) -> int:
    return ENTRY_OVERHEAD + len(name)


def bucket_capacity(block_size: int) -> int:
    """Bytes available for entries in one bucket."""
    return block_size - _HDR.size


def encode_bucket(entries: Iterable[Entry], block_size: int) -> bytes:
    out = bytearray(block_size)
    pos = _HDR.size
    count = 0
    for h, ino, typ, name in sorted(entries):
        _ENT.pack_into(out, pos, h, ino, typ, len(name))
        pos += _ENT.size
        out[pos : pos + len(name)] = name
        pos += len(name)
        count += 1
    assert pos <= block_size, "bucket overflow must be handled by the caller"
    _HDR.pack_into(out, 0, count, pos - _HDR.size)
    return bytes(out)


def decode_bucket(data: bytes | bytearray | memoryview,
                  where: Where | None = None) -> list[Entry]:
    if len(data) < _HDR.size:
        raise fail(where, f"directory bucket is {len(data)} bytes, shorter than its header")
    count, used = _HDR.unpack_from(data)
    if used > len(data) - _HDR.size:
        raise fail(where, f"directory bucket claims {used} bytes, block has {len(data)}")
    entries: list[Entry] = []
    pos = _HDR.size
    end = _HDR.size + used
    for _ in range(count):
        if pos + _ENT.size > end:
            raise fail(where, "directory bucket entry runs past its end")
        h, ino, typ, nlen = _ENT.unpack_from(data, pos)
        pos += _ENT.size
        if pos + nlen > end or nlen == 0:
            raise fail(where, "directory entry name out of bounds")
        entries.append((h, ino, typ, bytes(data[pos : pos + nlen])))
        pos += nlen
    return entries
