"""Which plex serves a read (``MirrorSet.reader_for``): streams stay, other reads spread.

A run of reads that continue each other (one stream) is served by the plex
that served its first read, wherever its blocks lie, so one image's
read-ahead keeps going; a read that starts a new run, and reads of other
files, go to the plex of their region of the volume, so readers spread; a
new run starts over with the region rule (``read_shift`` turns it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mirrorfs.mirror import READ_REGION_BLOCKS
from mirrorfs.plex import FilePlex
from mirrorfs.testing import CountingPlex
from mirrorfs.volume import Volume

MIB = 1 << 20
BS = 4096


def _volume(tmp_path: Path, files: dict[str, int]) -> tuple[list[str], dict[str, bytes]]:
    paths = [str(tmp_path / f"p{i}.img") for i in range(2)]
    rng = np.random.default_rng(5)
    data = {p: rng.integers(0, 256, n, dtype=np.uint8).tobytes() for p, n in files.items()}
    with Volume.create(paths, 512 << 20, volume_file=tmp_path / "v.toml",
                       cp_interval=None) as vol:
        for p, d in data.items():
            vol.write_bytes(p, d)
    return paths, data


def _read(vol: Volume, path: str, chunk: int = 128 << 10) -> bytes:
    ino = vol.stat(path).ino
    out = bytearray()
    buf = bytearray(chunk)
    while n := vol.fs.readinto(ino, len(out), memoryview(buf)):
        out += buf[:n]
    return bytes(out)


def test_a_stream_stays_on_the_plex_of_its_first_read(tmp_path: Path) -> None:
    paths, data = _volume(tmp_path, {"/big": 160 * MIB})  # spans three regions
    with Volume.attach([FilePlex(p) for p in paths], cp_interval=None) as vol:
        blks = np.asarray(vol.store.objects.tree(vol.stat("/big").ino)
                          .leaf_ptrs(0, 160 * MIB // BS)["blk"])
        assert len(np.unique(blks // READ_REGION_BLOCKS)) >= 3
    for shift in (0, 1):
        plexes = [CountingPlex(FilePlex(p)) for p in paths]
        with Volume.attach(plexes, cp_interval=None) as vol:
            vol.mirror.read_shift = shift
            assert _read(vol, "/big") == data["/big"]
        got = [p.read_bytes for p in plexes]
        # all data from one plex (the other reads no more than tree nodes)
        assert max(got) >= 160 * MIB and min(got) < 2 * MIB, got


def test_streams_of_other_regions_spread_over_the_plexes(tmp_path: Path) -> None:
    sizes = {f"/f{i}": 40 * MIB for i in range(6)}  # 240 MiB: the files lie in four regions
    paths, data = _volume(tmp_path, sizes)
    plexes = [CountingPlex(FilePlex(p)) for p in paths]
    with Volume.attach(plexes, cp_interval=None) as vol:
        for p in sizes:
            assert _read(vol, p) == data[p]
    got = [p.read_bytes for p in plexes]
    assert min(got) >= 40 * MIB, got  # each plex served whole files
