"""The acceptance path of issue 2 through the Python API."""

from __future__ import annotations

import os
from pathlib import Path

from mirrorfs.fs import fsck
from mirrorfs.volume import Volume


def test_snapshot_keeps_old_bytes_and_fsck_is_clean(tmp_path: Path) -> None:
    vf = tmp_path / "v.toml"
    vol = Volume.create([str(tmp_path / "p0.img")], 1 << 30, volume_file=vf, cp_interval=None)
    old = os.urandom(10 << 20)
    vol.write_bytes("/file", old)
    vol.snapshot("s1")
    with vol.open_file("/file", "r+b") as f:
        f.write(b"\xab" * (5 << 20))
    vol.close()

    vol = Volume.open(vf, read_only=True, cp_interval=None)
    try:
        assert vol.read_bytes("/.snapshot/s1/file") == old
        new = vol.read_bytes("/file")
        assert new[: 5 << 20] == b"\xab" * (5 << 20)
        assert new[5 << 20 :] == old[5 << 20 :]
        report = fsck(vol.store)
        assert report.clean, [str(f) for f in report.findings]
        assert report.files == 1
    finally:
        vol.close()
