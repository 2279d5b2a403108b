"""A volume through a real FUSE mount, used by ordinary tools (issue 5, items 1, 4, 5, 8).

Each test mounts a fresh two-plex volume on image files in its own
tmp_path, in the background as a user would (`mirrorfs mount`), and proves
one property a program relies on: trees copied in with cp -a, tar and
rsync compare clean; git and SQLite (WAL, concurrent readers) work; POSIX
errno values; unlinked and renamed-over open files; ownership and umask of
new files; the .snapshot view is the old state and read-only; umount
commits a final CP (fsck clean, content equal offline); fsync is durable
and a SIGKILLed daemon leaves every file at a committed state.

Every mount is unmounted in teardown (lazily if it must be), and a daemon
log holding an ERROR, WARNING or traceback the test did not declare fails
the test. Tests skip only when /dev/fuse or fusermount3 is missing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mirrorfs import Volume
from mirrorfs.daemon import FSTYPE, mount_type
from mirrorfs.daemon._mount import state_path
from mirrorfs.testing import MIRRORFS, wait_for
from mirrorfs.testing import run_cli as run

MIB = 1 << 20


# -- helpers ------------------------------------------------------------------------


def ok(*args: str | os.PathLike[str]) -> bytes:
    res = run(*args)
    assert res.returncode == 0, (args, res.returncode, res.stderr.decode())
    return res.stdout


def one_line_error(res: subprocess.CompletedProcess[bytes]) -> str:
    """The command failed with exactly one line on stderr and no traceback."""
    err = res.stderr.decode()
    assert res.returncode != 0, err
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    return lines[0]


def sh(cmd: str, cwd: Path | None = None, **env: str) -> str:
    res = subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, timeout=120,
                         env={**os.environ, **env})
    assert res.returncode == 0, (cmd, res.stdout.decode(), res.stderr.decode())
    return res.stdout.decode()


def is_mounted(mp: Path) -> bool:
    return mount_type(mp) == FSTYPE


def errno_of(fn: Callable[..., Any], *args: Any) -> str:
    """The errno name ``fn(*args)`` fails with, or "OK"."""
    try:
        fn(*args)
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e))
    return "OK"


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"
    return False


class MountedVolume:
    """A volume file with two plexes in ``root``, and its mount point."""

    def __init__(self, root: Path, mp: Path | None = None) -> None:
        self.root = root
        self.volume = root / "v.toml"
        self.plexes = [root / "p0.img", root / "p1.img"]
        self.mp = mp or root / "mnt"
        self.log = root / "v.log"
        self.expected_log: list[re.Pattern[str]] = []

    def mkfs(self, size: str = "512M") -> None:
        ok("mkfs", "--size", size, self.volume, *self.plexes)

    def mount(self, *extra: str) -> None:
        self.mp.mkdir(exist_ok=True)
        ok("mount", *extra, self.volume, self.mp)
        assert is_mounted(self.mp)

    def umount(self) -> None:
        ok("umount", self.mp)
        assert not is_mounted(self.mp)

    def fsck(self) -> None:
        ok("fsck", self.volume)

    def daemon_pid(self) -> int:
        return int(json.loads(state_path(self.mp).read_text())["pid"])

    def offline(self) -> Volume:
        return Volume.open(self.volume, read_only=True, cp_interval=None)

    def expect_log(self, pattern: str) -> None:
        """Declare that the daemon log may hold a WARNING or ERROR matching ``pattern``."""
        self.expected_log.append(re.compile(pattern))

    def cleanup(self) -> None:
        if is_mounted(self.mp):
            res = run("umount", self.mp, timeout=60)
            if res.returncode != 0 and is_mounted(self.mp):
                subprocess.run(["fusermount3", "-u", "-z", str(self.mp)], check=False)
        with contextlib.suppress(OSError):  # the state file a killed daemon left
            state_path(self.mp).unlink()

    def unexpected_log_lines(self) -> list[str]:
        if not self.log.exists():
            return []
        return [line for line in self.log.read_text(errors="replace").splitlines()
                if re.search(r" (ERROR|WARNING|CRITICAL) |Traceback", line)
                and not any(p.search(line) for p in self.expected_log)]


@contextlib.contextmanager
def volume_in(root: Path, mp: Path | None = None, size: str = "512M"
              ) -> Iterator[MountedVolume]:
    v = MountedVolume(root, mp)
    v.mkfs(size)
    try:
        yield v
    finally:
        v.cleanup()
    bad = v.unexpected_log_lines()
    assert not bad, "unexpected lines in the daemon log:\n" + "\n".join(bad)


@pytest.fixture
def vol(tmp_path: Path, need_fuse: None) -> Iterator[MountedVolume]:
    """A fresh 512 MiB volume on two sparse image files, not mounted yet."""
    with volume_in(tmp_path) as v:
        yield v


@pytest.fixture
def mounted(vol: MountedVolume) -> MountedVolume:
    """The fresh volume, mounted in the background."""
    vol.mount()
    return vol


# -- a source tree ------------------------------------------------------------------

SPARSE_SIZE = 64 * MIB
BIG_SIZE = 20 * MIB


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Nested dirs, odd names, symlinks, hard links, a sparse file, a 20 MiB file, modes."""
    src = tmp_path_factory.mktemp("source") / "tree"
    (src / "a" / "b" / "c").mkdir(parents=True)
    (src / "empty-dir").mkdir()
    (src / "private").mkdir(mode=0o700)
    (src / "a" / "small.txt").write_text("hello, mirrorfs\n")
    (src / "a" / "b" / "one").write_bytes(b"1")
    (src / "a" / "b" / "c" / "block").write_bytes(os.urandom(4096))
    (src / "a" / "b" / "c" / "block+1").write_bytes(os.urandom(4097))
    (src / "a" / "empty").write_bytes(b"")
    (src / "name with spaces").write_text("spaces\n")
    (src / "ünïcödé-名前").write_text("unicode\n")
    (src / ("n" * 255)).write_text("longest name\n")
    (src / "private" / "secret").write_text("secret\n")
    (src / "private" / "secret").chmod(0o600)
    (src / "a" / "tool.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "a" / "tool.sh").chmod(0o755)
    (src / "big").write_bytes(os.urandom(BIG_SIZE))
    with open(src / "sparse", "wb") as f:
        f.write(b"head")
        f.seek(10 * MIB)
        f.write(os.urandom(100_000))
        f.truncate(SPARSE_SIZE)
        f.seek(SPARSE_SIZE - 4)
        f.write(b"tail")
    os.link(src / "a" / "small.txt", src / "a" / "b" / "hardlink")
    os.link(src / "a" / "small.txt", src / "hardlink-top")
    os.symlink("small.txt", src / "a" / "rel-link")
    os.symlink("../a/b/c", src / "empty-dir" / "dir-link")
    os.symlink("/etc/hostname", src / "abs-link")
    os.symlink("nowhere/at/all", src / "dangling")
    os.utime(src / "a" / "b" / "one", ns=(1_000_000_123, 1_234_567_890_123_456_789))
    return src


def assert_same_tree(src: Path, dst: Path, *, hard_links: bool = True,
                     mtime_ns: bool = True, sparse: bool = False) -> None:
    """diff -r is clean, and modes, sizes, mtimes, link targets and hard links match."""
    res = subprocess.run(["diff", "-r", "--no-dereference", str(src), str(dst)],
                         capture_output=True, timeout=120)
    assert res.returncode == 0, res.stdout.decode()[-2000:] + res.stderr.decode()
    inodes: dict[int, int] = {}
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        for name in [*dirnames, *filenames, "."]:
            s = os.lstat(src / rel / name)
            d = os.lstat(dst / rel / name)
            where = str(rel / name)
            assert stat.S_IMODE(s.st_mode) == stat.S_IMODE(d.st_mode), where
            assert stat.S_IFMT(s.st_mode) == stat.S_IFMT(d.st_mode), where
            if stat.S_ISLNK(s.st_mode):
                assert os.readlink(src / rel / name) == os.readlink(dst / rel / name)
                continue
            if not stat.S_ISDIR(s.st_mode):
                assert s.st_size == d.st_size, where
                if hard_links:
                    assert s.st_nlink == d.st_nlink, where
                    assert inodes.setdefault(s.st_ino, d.st_ino) == d.st_ino, where
            if mtime_ns:
                assert s.st_mtime_ns == d.st_mtime_ns, where
            else:
                assert int(s.st_mtime) == int(d.st_mtime), where
    if sparse:
        st = os.stat(dst / "sparse")
        assert st.st_size == SPARSE_SIZE
        assert 100_000 <= st.st_blocks * 512 < 4 * MIB, st.st_blocks


# -- copying trees in and out ----------------------------------------------------------


def test_cp_a_in_and_out_diff_clean_and_fsck_after_umount(
        mounted: MountedVolume, source: Path, tmp_path: Path) -> None:
    """cp -a keeps content, modes, mtimes, symlinks, hard links and holes, both ways."""
    m = mounted.mp
    sh(f"cp -a {source} {m}/tree")
    assert_same_tree(source, m / "tree", sparse=True)
    out = tmp_path / "out"
    sh(f"cp -a {m}/tree {out}")
    assert_same_tree(source, out, sparse=True)
    big = (source / "big").read_bytes()
    mounted.umount()
    mounted.fsck()
    with mounted.offline() as v:
        assert v.read_bytes("/tree/big") == big
        assert v.read_bytes("/tree/a/b/hardlink") == b"hello, mirrorfs\n"
        assert v.readlink("/tree/dangling") == "nowhere/at/all"


def test_tar_pipe_in_and_out(mounted: MountedVolume, source: Path, tmp_path: Path) -> None:
    """tar -c | tar -x into the mount and back out again: the same tree."""
    m = mounted.mp
    (m / "t").mkdir()
    sh(f"tar --format=posix -C {source} -cf - . | tar -C {m}/t -xpf -")
    assert_same_tree(source, m / "t")
    out = tmp_path / "out"
    out.mkdir()
    sh(f"tar --format=posix -C {m}/t -cSf - . | tar -C {out} -xpf -")
    assert_same_tree(source, out)


def test_rsync_a_then_a_second_run_has_nothing_to_do(mounted: MountedVolume,
                                                    source: Path) -> None:
    """rsync -aH copies the tree; a second run finds sizes and mtimes equal and sends nothing."""
    m = mounted.mp
    sh(f"rsync -aH {source}/ {m}/r/")
    assert_same_tree(source, m / "r")
    changes = sh(f"rsync -aHi {source}/ {m}/r/")
    assert changes.strip() == "", changes


# -- programs --------------------------------------------------------------------------


def test_git_init_add_commit(mounted: MountedVolume, source: Path) -> None:
    """git works inside the mount: init, add, commit, a second commit, log, fsck, status."""
    repo = mounted.mp / "repo"
    repo.mkdir()
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org",
           "HOME": str(mounted.root)}
    sh("git init -q -b main .", cwd=repo, **env)
    sh(f"cp -a {source}/a {source}/sparse .", cwd=repo)
    sh("git add -A && git commit -q -m first", cwd=repo, **env)
    (repo / "a" / "small.txt").write_text("changed\n")
    sh("git mv a/b/one a/b/two && git commit -q -a -m second", cwd=repo, **env)
    assert sh("git log --format=%s", cwd=repo, **env).split() == ["second", "first"]
    assert sh("git status --porcelain", cwd=repo, **env) == ""
    sh("git fsck --strict", cwd=repo, **env)
    assert sh("git show HEAD~1:a/small.txt", cwd=repo, **env) == "hello, mirrorfs\n"


def test_sqlite_wal_with_a_writer_and_concurrent_readers(mounted: MountedVolume) -> None:
    """SQLite in WAL mode: readers never see a count go back; the database checks ok."""
    db = str(mounted.mp / "db.sqlite")
    w = sqlite3.connect(db, timeout=30, check_same_thread=False)
    assert w.execute("pragma journal_mode=wal").fetchone() == ("wal",)
    w.execute("create table t (i integer primary key, v blob)")
    w.commit()
    done = threading.Event()
    problems: list[str] = []
    seen: list[int] = []

    def writer() -> None:
        try:
            for i in range(600):
                w.execute("insert into t (v) values (?)", (os.urandom(200),))
                if i % 25 == 24:
                    w.commit()
            w.commit()
        except Exception as e:
            problems.append(f"writer: {e!r}")
        finally:
            done.set()

    def reader() -> None:
        c = sqlite3.connect(db, timeout=30)
        try:
            last = 0
            while not done.is_set():
                n = c.execute("select count(*) from t").fetchone()[0]
                if n < last:
                    problems.append(f"count went back from {last} to {n}")
                last = n
                seen.append(n)
        except Exception as e:
            problems.append(f"reader: {e!r}")
        finally:
            c.close()

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader)
                                                   for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not problems, problems
    assert len(set(seen)) > 2  # the readers saw the table grow, not just its ends
    assert w.execute("select count(*) from t").fetchone() == (600,)
    assert w.execute("pragma integrity_check").fetchone() == ("ok",)
    w.execute("pragma wal_checkpoint(truncate)")
    w.close()
    mounted.umount()
    mounted.fsck()
    with mounted.offline() as v:
        raw = v.read_bytes("/db.sqlite")
    copy = mounted.root / "copy.sqlite"
    copy.write_bytes(raw)
    c = sqlite3.connect(copy)
    assert c.execute("select count(*) from t").fetchone() == (600,)
    assert c.execute("pragma integrity_check").fetchone() == ("ok",)
    c.close()


# -- POSIX ------------------------------------------------------------------------------


def test_errno_values(mounted: MountedVolume) -> None:
    """ENOENT, EEXIST (O_EXCL, mkdir, link), ENOTEMPTY, EISDIR, ENOTDIR, ENAMETOOLONG, EINVAL."""
    m = mounted.mp
    (m / "d" / "sub").mkdir(parents=True)
    (m / "f").write_text("x")
    long = "a" * 256
    assert errno_of(os.open, m / "missing", os.O_RDONLY) == "ENOENT"
    assert errno_of(os.stat, m / "missing" / "x") == "ENOENT"
    assert errno_of(os.open, m / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY) == "EEXIST"
    assert errno_of(os.mkdir, m / "d") == "EEXIST"
    assert errno_of(os.link, m / "f", m / "d") == "EEXIST"
    assert errno_of(os.symlink, "x", m / "f") == "EEXIST"
    assert errno_of(os.rmdir, m / "d") == "ENOTEMPTY"
    assert errno_of(os.rename, m / "f", m / "d") == "EISDIR"
    assert errno_of(os.open, m / "d", os.O_WRONLY) == "EISDIR"
    assert errno_of(os.unlink, m / "d") == "EISDIR"
    assert errno_of(os.open, m / "f" / "x", os.O_RDONLY) == "ENOTDIR"
    assert errno_of(os.rmdir, m / "f") == "ENOTDIR"
    assert errno_of(os.rename, m / "d", m / "f") == "ENOTDIR"
    assert errno_of(os.open, m / long, os.O_CREAT | os.O_WRONLY) == "ENAMETOOLONG"
    assert errno_of(os.stat, m / long) == "ENAMETOOLONG"
    assert errno_of(os.mkdir, m / long) == "ENAMETOOLONG"
    assert errno_of(os.rename, m / "f", m / long) == "ENAMETOOLONG"
    assert errno_of(os.rename, m / "d", m / "d" / "sub" / "x") == "EINVAL"
    assert errno_of(os.readlink, m / "f") == "EINVAL"
    assert errno_of(os.open, m / ("b" * 255), os.O_CREAT | os.O_WRONLY) == "OK"
    # rename flags: RENAME_NOREPLACE refuses an existing name; RENAME_EXCHANGE is EINVAL
    (m / "g").write_text("g")
    assert _renameat2(m / "g", m / "f", 1) == "EEXIST"
    assert _renameat2(m / "g", m / "f", 2) == "EINVAL"
    assert _renameat2(m / "g", m / "h", 1) == "OK"
    assert (m / "h").read_text() == "g" and (m / "f").read_text() == "x"
    assert sorted(os.listdir(m)) == sorted([".snapshot", "d", "f", "h", "b" * 255])


def _renameat2(old: Path, new: Path, flags: int) -> str:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, os.fsencode(old), at_fdcwd, os.fsencode(new), flags) == 0:
        return "OK"
    return errno.errorcode[ctypes.get_errno()]


def test_file_semantics_append_trunc_fsync_statfs_blocks(mounted: MountedVolume) -> None:
    """O_APPEND from two descriptors interleaves whole writes; O_TRUNC empties; holes count."""
    m = mounted.mp
    p = m / "log"
    a = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
    b = os.open(p, os.O_WRONLY | os.O_APPEND)
    for _ in range(50):
        os.write(a, b"A" * 1000)
        os.write(b, b"B" * 999 + b"\n")
    os.fsync(a)
    os.fdatasync(b)
    os.close(a)
    os.close(b)
    assert p.read_bytes() == (b"A" * 1000 + b"B" * 999 + b"\n") * 50
    p.write_bytes(b"short")  # open with O_TRUNC
    assert p.read_bytes() == b"short"
    os.truncate(p, 3 * MIB)
    with open(p, "r+b") as f:
        f.seek(2 * MIB)
        f.write(b"x" * 8192)
    st = os.stat(p)
    assert st.st_size == 3 * MIB
    assert 8192 <= st.st_blocks * 512 <= 4 * 4096, st.st_blocks  # fresh data counts at once
    with open(p, "rb") as f:
        f.seek(MIB)
        assert f.read(16) == bytes(16)
    fs = os.statvfs(m)
    assert fs.f_bsize == 4096 and fs.f_namemax == 255
    assert 0 < fs.f_bfree < fs.f_blocks <= 512 * MIB // 4096
    before = fs.f_bfree
    (m / "eight").write_bytes(os.urandom(8 * MIB))
    os.sync()
    fd = os.open(m / "eight", os.O_RDONLY)
    os.fsync(fd)  # commits a CP: the space is now allocated
    os.close(fd)
    assert os.statvfs(m).f_bfree <= before - 2000


def test_unlinked_and_renamed_over_open_files_stay_readable(mounted: MountedVolume) -> None:
    """A file unlinked or replaced by rename while open reads on until closed; then it's freed."""
    m = mounted.mp
    data = os.urandom(3 * MIB)
    (m / "victim").write_bytes(data)
    with open(m / "victim", "r+b") as f:
        os.unlink(m / "victim")
        assert not (m / "victim").exists()
        assert os.fstat(f.fileno()).st_nlink == 0
        assert f.read() == data
        f.seek(0)
        f.write(b"still writable")
        f.seek(0)
        assert f.read(14) == b"still writable"
        # the umount is refused while it is open, and says why
        msg = one_line_error(run("umount", m))
        assert "busy" in msg
    (m / "old").write_bytes(b"old content")
    (m / "new").write_bytes(b"new content")
    with open(m / "old", "rb") as f:
        os.rename(m / "new", m / "old")
        assert f.read() == b"old content"
        assert (m / "old").read_bytes() == b"new content"
        assert not (m / "new").exists()
    mounted.umount()
    mounted.fsck()  # nothing of either file is left behind
    with mounted.offline() as v:
        assert sorted(v.listdir("/")) == [".snapshot", "old"]


def test_owner_and_umask_of_new_files_with_allow_other(need_fuse: None) -> None:
    """-o allow_other,default_permissions: another user's files are theirs, with their umask."""
    if os.geteuid() != 0:
        pytest.skip("this machine lacks root for this test: acting as another user needs it")
    # the mount point must be reachable by that user: not under pytest's 0700 tmp dirs
    base = Path(tempfile.mkdtemp(prefix="mirrorfs-mnt-"))
    base.chmod(0o755)
    root = Path(tempfile.mkdtemp(prefix="mirrorfs-vol-"))
    try:
        with volume_in(root, base / "mnt") as v:
            v.mount("-o", "allow_other,default_permissions")
            m = v.mp
            (m / "pub").mkdir(mode=0o777)
            (m / "pub").chmod(0o1777)
            (m / "sgid").mkdir()
            os.chown(m / "sgid", 0, 4242)
            (m / "sgid").chmod(0o2777)
            script = (
                "import os, errno\n"
                f"m = {str(m)!r}\n"
                "open(m + '/pub/f', 'w').write('mine')\n"
                "os.mkdir(m + '/pub/d', 0o777)\n"
                "os.mkfifo(m + '/pub/fifo', 0o666)\n"
                "os.symlink('f', m + '/pub/l')\n"
                "open(m + '/sgid/g', 'w').close()\n"
                "os.mkdir(m + '/sgid/sub')\n"
                "try:\n"
                "    open(m + '/notmine', 'w')\n"
                "except OSError as e:\n"
                "    print(errno.errorcode[e.errno])\n"
            )
            res = subprocess.run([sys.executable, "-c", script], user=1000, group=1000,
                                 extra_groups=[4242], umask=0o027, capture_output=True,
                                 timeout=60)
            assert res.returncode == 0, res.stderr.decode()
            assert res.stdout.decode().strip() == "EACCES"  # default_permissions checks
            for name, mode in (("pub/f", 0o100640), ("pub/d", 0o40750), ("pub/fifo", 0o10640)):
                st = os.lstat(m / name)
                assert (st.st_uid, st.st_gid, st.st_mode) == (1000, 1000, mode), name
            assert os.lstat(m / "pub" / "l").st_uid == 1000
            # BSD group rule under a set-group-ID directory, and the bit passes to subdirs
            assert os.stat(m / "sgid" / "g").st_gid == 4242
            assert os.stat(m / "sgid" / "sub").st_gid == 4242
            assert os.stat(m / "sgid" / "sub").st_mode & stat.S_ISGID
            # chown by root keeps the owner it is given and clears set-user-ID
            (m / "suid").write_text("x")
            (m / "suid").chmod(0o4755)
            os.chown(m / "suid", 1000, 1000)
            assert os.stat(m / "suid").st_mode & 0o7777 == 0o755
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


# -- snapshots ---------------------------------------------------------------------------


def test_snapshot_taken_before_mount_shows_old_state_read_only(vol: MountedVolume) -> None:
    """.snapshot/s1 holds the state at the snapshot; every write under it is EROFS."""
    vol.mount()
    m = vol.mp
    (m / "docs").mkdir()
    (m / "docs" / "a").write_text("version 1\n")
    (m / "keep").write_bytes(os.urandom(MIB))
    old_keep = (m / "keep").read_bytes()
    vol.umount()
    ok("snapshot", "create", vol.volume, "s1")
    vol.mount()
    (m / "docs" / "a").write_text("version 2\n")
    (m / "docs" / "b").write_text("new\n")
    os.unlink(m / "keep")
    s1 = m / ".snapshot" / "s1"
    assert os.listdir(m / ".snapshot") == ["s1"]
    assert (s1 / "docs" / "a").read_text() == "version 1\n"
    assert (s1 / "keep").read_bytes() == old_keep
    assert sorted(os.listdir(s1)) == ["docs", "keep"]
    assert not (s1 / "docs" / "b").exists()
    assert errno_of(os.open, s1 / "docs" / "a", os.O_WRONLY) == "EROFS"
    assert errno_of(os.open, s1 / "docs" / "new", os.O_CREAT | os.O_WRONLY) == "EROFS"
    assert errno_of(os.mkdir, s1 / "x") == "EROFS"
    assert errno_of(os.unlink, s1 / "keep") == "EROFS"
    assert errno_of(os.rmdir, s1 / "docs") == "EROFS"
    assert errno_of(os.rename, s1 / "keep", s1 / "kept") == "EROFS"
    assert errno_of(os.chmod, s1 / "keep", 0o600) == "EROFS"
    assert errno_of(os.truncate, s1 / "keep", 0) == "EROFS"
    assert errno_of(os.symlink, "x", s1 / "l") == "EROFS"
    assert errno_of(os.link, m / "docs" / "a", s1 / "l") == "EROFS"
    assert errno_of(os.mkdir, m / ".snapshot" / "s2") == "EROFS"
    assert errno_of(os.rmdir, m / ".snapshot" / "s1") == "EROFS"
    assert errno_of(os.rename, m / "docs", m / ".snapshot") == "EEXIST"
    assert not os.access(s1 / "keep", os.W_OK)
    vol.umount()
    vol.fsck()


# -- mount life cycle ------------------------------------------------------------------


def test_umount_commits_the_final_cp(mounted: MountedVolume) -> None:
    """Data written without fsync is on the plexes once `mirrorfs umount` returns."""
    m = mounted.mp
    payload = os.urandom(5 * MIB)
    (m / "f").write_bytes(payload)
    (m / "dir").mkdir()
    os.symlink("../f", m / "dir" / "l")
    pid = mounted.daemon_pid()
    mounted.umount()  # well before the 5 s CP timer
    wait_for(lambda: not pid_alive(pid), timeout=10, what="the daemon to exit")
    assert not state_path(mounted.mp).exists()
    mounted.fsck()
    with mounted.offline() as v:
        assert v.read_bytes("/f") == payload
        assert v.readlink("/dir/l") == "../f"
    assert "closed" in mounted.log.read_text()


def test_sigterm_unmounts_and_commits(mounted: MountedVolume) -> None:
    """SIGTERM to the daemon: unmounted, a final CP, the process gone, fsck clean."""
    payload = os.urandom(MIB)
    (mounted.mp / "f").write_bytes(payload)
    pid = mounted.daemon_pid()
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pid_alive(pid), what="the daemon to exit")
    assert not is_mounted(mounted.mp)
    mounted.fsck()
    with mounted.offline() as v:
        assert v.read_bytes("/f") == payload
    assert "SIGTERM: unmounting" in mounted.log.read_text()


def test_foreground_mount_ends_on_sigint(vol: MountedVolume) -> None:
    """--foreground stays attached; Ctrl-C (SIGINT) unmounts, commits and exits 0."""
    vol.mp.mkdir()
    proc = subprocess.Popen([*MIRRORFS, "mount", "--foreground", str(vol.volume),
                             str(vol.mp)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: is_mounted(vol.mp) or proc.poll() is not None, what="the mount")
        wait_for(lambda: state_path(vol.mp).exists(), what="the state file")
        (vol.mp / "f").write_text("foreground\n")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err
    assert not is_mounted(vol.mp)
    vol.fsck()
    with vol.offline() as v:
        assert v.read_bytes("/f") == b"foreground\n"


def test_read_only_mount_writes_nothing(vol: MountedVolume) -> None:
    """-o ro: reads work, every write is EROFS, and the plexes stay at their CP."""
    vol.mount()
    (vol.mp / "f").write_text("data\n")
    vol.umount()
    with vol.offline() as v:
        cp = v.store.cp
    vol.mount("-o", "ro")
    m = vol.mp
    assert (m / "f").read_text() == "data\n"
    assert errno_of(os.open, m / "f", os.O_WRONLY) == "EROFS"
    assert errno_of(os.open, m / "g", os.O_CREAT | os.O_WRONLY) == "EROFS"
    assert errno_of(os.mkdir, m / "d") == "EROFS"
    assert errno_of(os.unlink, m / "f") == "EROFS"
    vol.umount()
    with vol.offline() as v:
        assert v.store.cp == cp


def test_mount_failures_are_one_line_and_non_zero(vol: MountedVolume) -> None:
    """Missing mount point or volume, bad options, a missing plex, a second mount."""
    msg = one_line_error(run("mount", vol.volume, vol.root / "nowhere"))
    assert "no such directory" in msg
    vol.mp.mkdir()
    res = run("mount", vol.root / "missing.toml", vol.mp)
    assert res.returncode == 2 and "no such volume file" in one_line_error(res)
    res = run("mount", "-o", "bogus", vol.volume, vol.mp)
    assert res.returncode == 2 and "unknown mount option" in one_line_error(res)
    res = run("mount", "-o", "ro,rw", vol.volume, vol.mp)
    assert res.returncode == 2 and "contradict" in one_line_error(res)
    assert not is_mounted(vol.mp)
    # a plex that is gone: the daemon cannot open the volume, and says so through the mount
    vol.plexes[1].rename(vol.root / "away.img")
    res = run("mount", vol.volume, vol.mp)
    assert res.returncode == 2 and "--degraded" in one_line_error(res)
    assert not is_mounted(vol.mp)
    vol.expect_log(r"only with --degraded")
    vol.mount("--degraded")
    (vol.mp / "f").write_text("degraded\n")
    # a second mount, on the same or on another mount point
    other = vol.root / "other"
    other.mkdir()
    assert "already mounted" in one_line_error(run("mount", vol.volume, vol.mp))
    assert "already mounted" in one_line_error(run("mount", vol.volume, other))
    assert not is_mounted(other)
    vol.umount()
    assert "not a mirrorfs mount" in one_line_error(run("umount", vol.mp))


def test_full_volume_gives_enospc_and_stays_consistent(tmp_path: Path,
                                                       need_fuse: None) -> None:
    """Writing past the end is ENOSPC for that write only; what was written commits; space
    comes back when the file goes; fsck is clean."""
    with volume_in(tmp_path, size="16M") as v:
        v.mount()
        m = v.mp
        chunk = os.urandom(64 * 1024)
        written = 0
        with open(m / "fill", "wb", buffering=0) as f:
            with pytest.raises(OSError) as info:
                while written < 64 * MIB:
                    written += f.write(chunk)
            assert info.value.errno == errno.ENOSPC
            os.fsync(f.fileno())  # what was accepted commits
        assert written >= 8 * MIB
        assert os.statvfs(m).f_bfree < 1024
        assert (m / "fill").read_bytes() == chunk * (written // len(chunk))
        os.unlink(m / "fill")
        fd = os.open(m, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        (m / "again").write_bytes(chunk * 80)
        v.umount()
        v.fsck()
        with v.offline() as off:
            assert sorted(off.listdir("/")) == [".snapshot", "again"]


# -- crashes ---------------------------------------------------------------------------


def test_sigkill_mid_stream_leaves_every_file_at_a_committed_state(
        mounted: MountedVolume, tmp_path: Path) -> None:
    """Kill the daemon while dd writes: after remount, fsck is clean and every file holds a
    state it had at a CP — fsync'd data whole, the dd stream (oflag=dsync) a prefix no
    shorter than it was seen before the kill, a stream written without sync a prefix."""
    m = mounted.mp
    pattern = os.urandom(64 * MIB)
    src = tmp_path / "pattern"
    src.write_bytes(pattern)
    durable = os.urandom(2 * MIB)
    with open(m / "durable", "wb") as f:
        f.write(durable)
        f.flush()
        os.fsync(f.fileno())
    (m / "gone-before").write_text("x")
    os.unlink(m / "gone-before")
    pid = mounted.daemon_pid()
    bs = 64 * 1024
    dd = subprocess.Popen(["dd", f"if={src}", f"of={m}/stream", f"bs={bs}", "oflag=dsync"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lazy_stop = threading.Event()
    lazy_written = [0]

    def lazy_writer() -> None:  # no fsync: only the CP timer commits it
        try:
            with open(m / "lazy", "wb", buffering=0) as f:
                while not lazy_stop.is_set():
                    n = lazy_written[0]
                    f.write(pattern[n : n + bs])
                    lazy_written[0] = n + bs
                    time.sleep(0.002)
        except OSError:
            pass

    t = threading.Thread(target=lazy_writer)
    t.start()
    try:
        wait_for(lambda: size_of(m / "stream") >= 2 * MIB, what="dd to write")
        time.sleep(1.0)
        # dsync: every write before the one in flight was committed when write(2) returned
        # (the kernel updates the size it shows before it sends the write's fsync)
        durable_size = size_of(m / "stream") - bs
        assert dd.poll() is None, "dd finished before the kill; make it slower"
        os.kill(pid, signal.SIGKILL)
        _, err = dd.communicate(timeout=60)
    finally:
        lazy_stop.set()
        t.join(timeout=60)
    assert dd.returncode != 0 and b"Transport endpoint is not connected" in err, err
    wait_for(lambda: not pid_alive(pid), what="the daemon to die")
    assert errno_of(os.stat, m / "durable") == "ENOTCONN"
    subprocess.run(["fusermount3", "-u", "-z", str(m)], check=True, timeout=60)
    assert not is_mounted(m)
    mounted.fsck()
    mounted.mount()
    stream = (m / "stream").read_bytes()
    assert durable_size <= len(stream) and len(stream) % bs == 0, (durable_size, len(stream))
    assert stream == pattern[: len(stream)]
    lazy = (m / "lazy").read_bytes()
    assert 0 < len(lazy) <= lazy_written[0] and len(lazy) % bs == 0
    assert lazy == pattern[: len(lazy)]
    assert (m / "durable").read_bytes() == durable
    assert not (m / "gone-before").exists()
    mounted.umount()
    mounted.fsck()
