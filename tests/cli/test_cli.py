"""The ``mirrorfs`` command as a user runs it: real processes, real image files.

Proves the acceptance path of issue 2 end to end, and that user mistakes end
in one line and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from mirrorfs import Volume
from mirrorfs.testing import run_cli as run


def ok(*args: str, cwd: Path, input: bytes | None = None) -> bytes:
    res = run(*args, cwd=cwd, input=input)
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout


def one_line_error(res: subprocess.CompletedProcess[bytes], code: int) -> str:
    err = res.stderr.decode()
    assert res.returncode == code, (res.returncode, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def vol(tmp_path: Path) -> Path:
    ok("mkfs", "--size", "1G", "v.toml", "p0.img", cwd=tmp_path)
    return tmp_path


def test_acceptance_snapshot_keeps_old_bytes(vol: Path) -> None:
    """Issue 2: put 10 MiB, snapshot, overwrite half, old bytes under .snapshot, fsck 0."""
    old = os.urandom(10 << 20)
    (vol / "f").write_bytes(old)
    ok("put", "v.toml", "f", "/FILE", cwd=vol)
    ok("snapshot", "create", "v.toml", "s1", cwd=vol)
    new = b"\x5a" * (5 << 20) + old[5 << 20 :]
    (vol / "f2").write_bytes(new)
    ok("put", "v.toml", "f2", "/FILE", cwd=vol)
    assert ok("cat", "v.toml", "/.snapshot/s1/FILE", cwd=vol) == old
    assert ok("cat", "v.toml", "/FILE", cwd=vol) == new
    ok("fsck", "v.toml", cwd=vol)


def test_flipped_byte_is_named_by_fsck_and_fails_cat(vol: Path) -> None:
    """Issue 2: one flipped byte in a data block: fsck exit 1 naming the file, cat fails."""
    (vol / "f").write_bytes(os.urandom(1 << 20))
    ok("put", "v.toml", "f", "/FILE", cwd=vol)
    with Volume.open(vol / "v.toml", read_only=True, cp_interval=None) as v:
        ino = v.fs.resolve("/FILE")
        blk = int(v.store.objects.tree(ino).leaf_ptrs(100, 101)["blk"][0])
    with open(vol / "p0.img", "r+b") as img:
        img.seek(blk * 4096 + 7)
        byte = img.read(1)
        img.seek(blk * 4096 + 7)
        img.write(bytes([byte[0] ^ 0x10]))
    res = run("fsck", "v.toml", cwd=vol)
    assert res.returncode == 1
    assert b"/FILE" in res.stdout and b"checksum mismatch" in res.stdout
    assert f"offset {100 * 4096}".encode() in res.stdout
    res = run("cat", "v.toml", "/FILE", cwd=vol)
    assert res.returncode == 1
    assert b"/FILE" in res.stderr and b"checksum mismatch" in res.stderr
    assert f"/FILE at offset {100 * 4096}".encode() in res.stderr
    assert b"Traceback" not in res.stderr


def test_fsck_and_status_json(vol: Path) -> None:
    ok("mkdir", "-p", "v.toml", "/a/b", cwd=vol)
    ok("put", "v.toml", "-", "/a/b/x", cwd=vol, input=b"hello")
    ok("snapshot", "create", "v.toml", "s1", cwd=vol)
    report = json.loads(ok("fsck", "--json", "v.toml", cwd=vol))
    assert report["clean"] is True and report["files"] == 1 and report["directories"] == 3
    status = json.loads(ok("status", "--json", "v.toml", cwd=vol))
    (plex,) = status["plexes"]
    assert set(plex) >= {"spec", "plex_uuid", "volume_uuid", "cp", "cp_id", "state",
                         "snapshots"}
    assert plex["state"] == "in-sync"
    assert plex["volume_uuid"] == status["volume_uuid"]
    assert [s["name"] for s in plex["snapshots"]] == ["s1"]
    assert set(plex["snapshots"][0]) >= {"name", "guid", "cp", "kind"}
    assert plex["snapshots"][0]["kind"] == "user"


def test_file_commands(vol: Path) -> None:
    ok("mkdir", "v.toml", "/d", cwd=vol)
    ok("put", "v.toml", "-", "/d/a", cwd=vol, input=b"A")
    ok("mv", "v.toml", "/d/a", "/d/b", cwd=vol)
    listing = json.loads(ok("ls", "--json", "v.toml", "/d", cwd=vol))
    assert [e["name"] for e in listing] == ["b"]
    ok("get", "v.toml", "/d/b", str(vol / "out"), cwd=vol)
    assert (vol / "out").read_bytes() == b"A"
    res = run("rm", "v.toml", "/d", cwd=vol)
    assert "directory" in one_line_error(res, 2)
    ok("rm", "-r", "v.toml", "/d", cwd=vol)
    assert b"d" not in ok("ls", "v.toml", "/", cwd=vol).split()


def test_snapshot_commands(vol: Path) -> None:
    ok("put", "v.toml", "-", "/x", cwd=vol, input=b"one")
    ok("snapshot", "create", "v.toml", "s1", cwd=vol)
    ok("put", "v.toml", "-", "/x", cwd=vol, input=b"two")
    ok("put", "v.toml", "-", "/y", cwd=vol, input=b"new")
    d = json.loads(ok("snapshot", "diff", "--json", "v.toml", "s1", cwd=vol))
    assert d["added"] == ["/y"] and d["modified"] == ["/x"] and d["removed"] == []
    assert d["changed_blocks"] > 0
    names = [s["name"] for s in json.loads(ok("snapshot", "list", "--json", "v.toml", cwd=vol))]
    assert names == ["s1"]
    res = run("snapshot", "rollback", "v.toml", "s1", cwd=vol)
    assert "--yes" in one_line_error(res, 2)
    ok("snapshot", "rollback", "--yes", "v.toml", "s1", cwd=vol)
    assert ok("cat", "v.toml", "/x", cwd=vol) == b"one"
    assert run("cat", "v.toml", "/y", cwd=vol).returncode == 2
    ok("snapshot", "delete", "v.toml", "s1", cwd=vol)
    assert json.loads(ok("snapshot", "list", "--json", "v.toml", cwd=vol)) == []
    ok("fsck", "v.toml", cwd=vol)


@pytest.mark.parametrize("args, needle", [
    (("ls",), "required"),
    (("mkfs", "--size", "lots", "v2.toml", "q.img"), "size"),
    (("mkfs", "--size", "1M", "v2.toml", "q.img"), "at least"),
    (("ls", "nosuch.toml"), "no such volume file"),
    (("cat", "v.toml", "/nosuch"), "No such file"),
    (("snapshot", "create", "v.toml", "a/b"), "name"),
    (("snapshot", "delete", "v.toml", "nosuch"), "no such snapshot"),
    (("frobnicate",), "invalid choice"),
])
def test_user_mistakes_are_one_line_exit_2(vol: Path, args: tuple[str, ...],
                                           needle: str) -> None:
    line = one_line_error(run(*args, cwd=vol), 2)
    assert needle in line


def test_mkfs_refuses_to_overwrite_a_plex(vol: Path) -> None:
    line = one_line_error(run("mkfs", "--size", "1G", "w.toml", "p0.img", cwd=vol), 2)
    assert "--force" in line


def test_garbage_superblock_is_a_clear_error(vol: Path) -> None:
    with open(vol / "p0.img", "r+b") as img:
        img.write(os.urandom(32768))
        img.seek(-32768, os.SEEK_END)
        img.write(os.urandom(32768))
    line = one_line_error(run("ls", "v.toml", cwd=vol), 2)
    assert "p0.img" in line and "superblock" in line


def test_foreign_plex_is_refused(vol: Path) -> None:
    ok("mkfs", "--size", "1G", "other.toml", "q0.img", cwd=vol)
    text = (vol / "v.toml").read_text().replace('"p0.img"', '"q0.img"')
    (vol / "v.toml").write_text(text)
    line = one_line_error(run("ls", "v.toml", cwd=vol), 2)
    assert "q0.img" in line and "belongs to volume" in line


def test_help_of_every_command() -> None:
    for cmd in (["--help"], ["mkfs", "--help"], ["snapshot", "diff", "--help"],
                ["fsck", "--help"], ["status", "--help"], ["demo", "--help"]):
        res = run(*cmd, timeout=60)
        assert res.returncode == 0 and b"usage:" in res.stdout
