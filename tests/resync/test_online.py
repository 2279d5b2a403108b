"""Online resync: a stale plex comes back while the volume keeps taking writes.

Proves DESIGN.md "Online resync": the target receives new CPs during the copy,
serves no reads until in sync, and data written during the resync is never
overwritten by an older copy.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from mirrorfs import Volume
from mirrorfs.fs import fsck
from mirrorfs.ondisk import PlexState
from mirrorfs.resync import _copy


def tree_bytes(vol: Volume, path: str = "/") -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, attr in vol.scandir(path):
        p = path.rstrip("/") + "/" + name
        if p == "/.snapshot":
            continue
        if attr.mode & 0o170000 == 0o040000:
            out.update(tree_bytes(vol, p))
        else:
            out[p] = vol.read_bytes(p)
    return out


def test_online_resync_with_concurrent_writes(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes that race the copy land on the target too; the result equals the source."""
    vf = tmp_path / "v.toml"
    p = [str(tmp_path / f"p{i}.img") for i in range(2)]
    vol = Volume.create(p, 256 << 20, volume_file=vf, cp_interval=None)
    rnd = random.Random(7)
    for i in range(8):
        vol.write_bytes(f"/f{i}", os.urandom(2 << 20))
    vol.sync()
    vol.plex_offline(p[1])
    for i in range(8):  # change a lot while plex 1 is away, so the copy takes many extents
        with vol.open_file(f"/f{i}", "r+b") as f:
            for _ in range(8):
                f.seek(rnd.randrange(0, 32) * 65536)
                f.write(os.urandom(65536))
    vol.sync()
    monkeypatch.setattr(_copy, "PROGRESS_BYTES", 256 << 10)  # many cursor CPs race the copy
    job = vol.resync(background=True, rate=16e6)  # slow enough that writes interleave
    written = 0
    while not job.done:
        name = f"/during{written % 5}"
        vol.write_bytes(name, os.urandom(300_000))
        with vol.open_file(f"/f{written % 8}", "r+b") as f:
            f.seek(rnd.randrange(0, 32) * 65536)
            f.write(os.urandom(65536))
        vol.sync()
        slot = vol.mirror.slot(p[1])
        assert slot.state in (PlexState.RESYNCING, PlexState.IN_SYNC, PlexState.OFFLINE)
        written += 1
    report = job.wait()
    assert written >= 2, "the writes did not race the copy"
    assert report.results and report.results[0].error is None
    assert vol.mirror.slot(p[1]).state == PlexState.IN_SYNC
    want = tree_bytes(vol)
    vol.close()
    for plex in p:
        with Volume.open(vf, only=[plex], read_only=True, cp_interval=None) as alone:
            assert tree_bytes(alone) == want
            assert fsck(alone.store).clean


def test_target_serves_no_reads_while_resyncing(tmp_path: Path) -> None:
    """A resyncing plex is written but never read: reads come from in-sync plexes only."""
    vf = tmp_path / "v.toml"
    p = [str(tmp_path / f"p{i}.img") for i in range(2)]
    vol = Volume.create(p, 64 << 20, volume_file=vf, cp_interval=None)
    vol.write_bytes("/a", b"x" * 100_000)
    vol.plex_offline(p[1])
    slot = vol.mirror.slot(p[1])
    slot.state = PlexState.RESYNCING
    assert slot.writable and not slot.readable
    assert slot not in vol.mirror.readable()
    slot.state = PlexState.OFFLINE
    vol.close()
