"""Through the mount: mirrorfs on 2 plexes against btrfs raid1, ext4 and a do-nothing FUSE ceiling.

Issue item 9. In one run, on image files in one scratch directory on the
real disk (default: a fresh directory under /var/tmp, never tmpfs), four
file systems, each used only through its mount point by ordinary tools:

mirrorfs
    ``mirrorfs mkfs --size S v.toml p1.img p2.img`` (two sparse images),
    ``mirrorfs mount`` (the background daemon), ``mirrorfs umount``.
btrfs
    btrfs raid1 (``-d raid1 -m raid1``) over two loop devices, one sparse
    image each, default mount options.
ext4
    ext4 on one loop device (``mkfs.ext4 -F -q``, inode tables and journal
    zeroed at mkfs so no lazy-init thread writes during the figures).
nullfs
    ``bench/_nullfs.py``: a do-nothing FUSE file system on the same binding
    (pyfuse3 under trio, synchronous handlers), inodes in dicts, data in one
    preallocated backing file, no copy-on-write. It takes mirrorfs's FUSE
    options, timeouts and flags at start, so it shows the ceiling Python and
    FUSE allow on this machine for the same requests.

Workloads (each in a fresh file system or a fresh directory):

seq_write
    ``dd if=SRC of=MNT/big bs=1M count=N conv=fsync`` (N = 2048, 2 GiB) on
    a fresh file system. SRC is a file in /dev/shm holding one random 1 MiB
    pattern repeated, each MiB stamped with its index (so no file system can
    take zeros for holes, and a misplaced MiB shows); the same for every
    file system. fsync is the durability point: for the FUSE file systems it
    is their ``fsync`` handler (mirrorfs commits a CP).
seq_read_cold
    The file system unmounted (FUSE: the daemon stops), its images dropped
    from the page cache (``_common.drop_cache``, then ``echo 3 >
    /proc/sys/vm/drop_caches``), mounted again (FUSE: a fresh daemon;
    ``mount_s``), then ``dd if=MNT/big of=/dev/null bs=1M``. Afterwards
    (untimed) sampled MiBs are compared with SRC.
small_files
    On a second fresh file system: a Python loop creates ``--files`` files
    (5,000) of 4 KiB in directories of 100 (open O_CREAT|O_EXCL, one write,
    close), then makes them durable: ``syncfs`` on the mount and ``fsync``
    of the top directory (sync(2) does not reach a FUSE file system; its
    ``fsyncdir`` does: mirrorfs commits a CP, nullfs fdatasyncs). Timed as a
    whole; ``create_s`` and ``sync_s`` split it.
tar_x
    ``tar -xf T -C MNT/tar`` + the same syncfs + fsync of the top
    directory. T is made once per run from ``--tar-src`` (default
    /usr/include, a source tree of headers; ``config.tarball`` records its
    files, dirs, symlinks and bytes) and kept in /dev/shm, so reading it
    costs no disk. Afterwards (untimed) ``tar --compare`` checks contents,
    modes, owners, times and symlinks.

Figures. Rates are MB/s (decimal, as dd reports them) for seq_*, files/s
for small_files, entries/s and MB/s for tar_x. ``daemon_cpu_s`` is the
CPU time of the FUSE daemon during the step (user + system, all threads),
``cpu_busy`` the fraction of all CPUs busy machine-wide: a FUSE figure with
``daemon_cpu_s`` close to ``seconds`` is bound by the daemon's single
thread. ``stall`` is the share of the step during which some task waited
for a CPU or for I/O (/proc/pressure, "some"; the step's own processes
count too). ``loadavg`` is taken before each step; the machine is shared.

Rounds. ``--rounds`` (default 2) rounds over the file systems, the order
reversed every other round; each figure is the median of its rounds, and
ratios are taken between medians. ``ratios`` also has each ratio best round
against best round (``mirrorfs_vs_PEER_best``): on this VM a round can land
in a phase where page-cache allocations run at half speed (the host takes
freed guest memory back), and a ratio of medians then says which file
system met such a phase; best against best says what each can do. The
targets are judged on the medians.

Targets (mirrorfs on 2 plexes, same run): seq_write >= 1.0 x btrfs raid1;
seq_read_cold >= 0.8 x nullfs (the ratio to btrfs is reported too);
small_files and tar_x >= 0.6 x nullfs. ``ratios`` has mirrorfs over every
peer for every workload.

Output: one JSON document on stdout, also written to
``bench/results/mount.json`` (``mount.quick.json`` for ``--quick``,
``mount.profiled.json`` with ``--profile``) and a plot next to it (``.png``).
``mirrorfs_log`` counts the ERROR and WARNING lines of the daemon's log;
the last round's mirrorfs volumes are checked with ``mirrorfs fsck`` after
unmounting (outside the timing).

``--quick``: 256 MiB, 500 files, /usr/include/linux, one round, 2 GiB
images. ``--only`` takes file system and workload names, comma-separated
(``--only mirrorfs,nullfs,small_files``); seq_read_cold needs seq_write's
file, so it runs seq_write too. ``--profile DIR`` records each FUSE
daemon's steps with py-spy (collapsed stacks, ``DIR/<fs>_<step>_r<round>.txt``).

Which mirrorfs is measured: the one ``import mirrorfs`` finds, and the CLI
and daemon subprocesses inherit the environment; ``source`` records its
path and commit. To measure a fixed commit while others edit the tree:
``git archive HEAD src | tar -x -C DIR; git rev-parse --short HEAD >
DIR/COMMIT`` and run with ``PYTHONPATH=DIR/src``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    GIB,
    MB,
    MIB,
    RESULTS_DIR,
    drop_cache,
    emit,
    loadavg,
    log,
    machine_info,
    median,
    proc_cpu_s,
    scratch_dir,
    source_state,
    target,
    warm_memory,
    warn_if_busy,
)

BENCH = Path(__file__).resolve().parent
NULLFS = BENCH / "_nullfs.py"
FS_NAMES = ("mirrorfs", "btrfs", "ext4", "nullfs")
WORKLOADS = ("seq_write", "seq_read_cold", "small_files", "tar_x")
RATE_KEY = {"seq_write": "mb_s", "seq_read_cold": "mb_s", "small_files": "files_s",
            "tar_x": "entries_s"}

WRITE_VS_BTRFS = 1.0  # mirrorfs seq write / btrfs raid1 (issue item 9)
READ_VS_NULLFS = 0.8  # mirrorfs cold seq read / nullfs
META_VS_NULLFS = 0.6  # mirrorfs small-file creates and tar -x / nullfs

STEP_TIMEOUT_S = 900.0  # a step that takes longer counts as a hang
MOUNT_TIMEOUT_S = 300.0
FILES_PER_DIR = 100
SMALL_FILE_BYTES = 4096
SAMPLES = 16  # MiBs compared after the cold read


# -- system helpers -----------------------------------------------------------------


def run(cmd: Sequence[str | os.PathLike[str]], timeout: float = STEP_TIMEOUT_S,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; raise with its stderr on failure or when it outlasts ``timeout``."""
    args = [str(c) for c in cmd]
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{' '.join(args)}: no answer after {timeout:.0f} s (hang?)"
                           ) from None
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({p.returncode}): "
                           f"{(p.stderr or p.stdout).strip()[-2000:]}")
    return p


def mirrorfs_exe() -> str:
    exe = Path(sys.executable).parent / "mirrorfs"
    return str(exe) if exe.exists() else (shutil.which("mirrorfs") or "mirrorfs")


def mount_table() -> dict[str, str]:
    """Mount point -> file system type, from /proc/self/mounts (never touching a mount)."""
    out: dict[str, str] = {}
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                out[parts[1].replace("\\040", " ")] = parts[2]
    return out


def mount_options(mnt: Path) -> str | None:
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4 and parts[1] == str(mnt):
                return parts[3]
    return None


def readahead_kb(mnt: Path) -> int | None:
    """The read-ahead window (KiB) of the mount's backing device info, if it has its own."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4] == str(mnt):
                with contextlib.suppress(OSError, ValueError):
                    return int(Path(f"/sys/class/bdi/{fields[2]}/read_ahead_kb").read_text())
    return None


def drop_all(paths: Sequence[Path]) -> dict[str, Any]:
    """``_common.drop_cache`` of the images, then drop page cache, dentries and inodes."""
    cache = drop_cache(paths)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        cache["methods"].append("drop_caches=3")
    except OSError:
        pass
    return cache


_libc = ctypes.CDLL(None, use_errno=True)


def durable(mnt: Path, top: Path) -> None:
    """syncfs(2) on the mount, then fsync(2) of ``top`` (what reaches a FUSE file system)."""
    fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"syncfs {mnt}: {os.strerror(e)}")
    finally:
        os.close(fd)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_counters() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(vals[:8])  # guest time is already counted in user
    idle = vals[3] + vals[4]  # idle + iowait
    return total - idle, total


def psi_totals() -> dict[str, int]:
    """Pressure stall totals (µs some task waited) for cpu and io, from /proc/pressure."""
    out: dict[str, int] = {}
    for res in ("cpu", "io"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            line = Path(f"/proc/pressure/{res}").read_text().splitlines()[0]
            out[res] = int(line.rsplit("total=", 1)[1])
    return out


def rnd(x: float | None, n: int = 4) -> float | None:
    return None if x is None else round(x, n)


# -- the file systems ---------------------------------------------------------------


class Fs:
    """One file system under test: made fresh, mounted, unmounted, removed."""

    name = "?"

    def __init__(self, work: Path, image_bytes: int) -> None:
        self.work = work
        self.image_bytes = image_bytes
        self.mnt = work.resolve() / f"mnt-{self.name}"
        self.mnt.mkdir(exist_ok=True)
        self.mounted = False
        self.exists = False

    # to override
    def create(self) -> None:
        raise NotImplementedError

    def _mount(self) -> None:
        raise NotImplementedError

    def _unmount(self) -> None:
        raise NotImplementedError

    def _remove(self) -> None:
        raise NotImplementedError

    def backing(self) -> list[Path]:
        raise NotImplementedError

    def daemon_pid(self) -> int | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {}

    def log_tail(self, lines: int = 40) -> str | None:
        return None

    def emergency(self) -> None:
        """After a failure: get the mount point free by any means (lazy unmount)."""
        if str(self.mnt) in mount_table():
            run(["umount", "-l", self.mnt], timeout=60, check=False)
        self.mounted = False

    # shared
    def mount(self) -> float:
        t0 = time.perf_counter()
        self._mount()
        self.mounted = True
        return time.perf_counter() - t0

    def unmount(self) -> float:
        t0 = time.perf_counter()
        if self.mounted:
            self._unmount()
            self.mounted = False
        return time.perf_counter() - t0

    def destroy(self) -> None:
        """Unmount if mounted and remove every image (safe to call twice, or after failure)."""
        try:
            self.unmount()
        except Exception as e:
            log(f"  {self.name}: unmount failed ({e}); lazy unmount")
            self.emergency()
        if self.exists:
            self._remove()
            self.exists = False


class LoopFs(Fs):
    """A kernel file system on loop devices over sparse image files."""

    nimages = 1

    def __init__(self, work: Path, image_bytes: int) -> None:
        super().__init__(work, image_bytes)
        self.images = [work / f"{self.name}-{i}.img" for i in range(self.nimages)]
        self.loops: list[str] = []

    def _attach(self) -> list[str]:
        for img in self.images:
            img.unlink(missing_ok=True)
            with open(img, "wb") as f:
                f.truncate(self.image_bytes)
            self.loops.append(run(["losetup", "--find", "--show", img], timeout=60
                                  ).stdout.strip())
        self.exists = True
        return self.loops

    def _unmount(self) -> None:
        run(["umount", self.mnt], timeout=MOUNT_TIMEOUT_S)

    def _remove(self) -> None:
        for dev in reversed(self.loops):
            run(["losetup", "-d", dev], timeout=60, check=False)
        self.loops.clear()
        for img in self.images:
            img.unlink(missing_ok=True)

    def backing(self) -> list[Path]:
        return list(self.images)

    def describe(self) -> dict[str, Any]:
        ra = {}
        for dev in self.loops:
            with contextlib.suppress(OSError, ValueError):
                ra[dev] = int(Path(f"/sys/block/{Path(dev).name}/queue/read_ahead_kb")
                              .read_text())
        return {"images": len(self.images), "image_bytes": self.image_bytes,
                "loop_direct_io": False, "mount_options": mount_options(self.mnt),
                "read_ahead_kb": readahead_kb(self.mnt), "loop_read_ahead_kb": ra}


class Btrfs(LoopFs):
    name = "btrfs"
    nimages = 2
    MKFS = ("mkfs.btrfs", "-f", "-q", "-d", "raid1", "-m", "raid1")

    def create(self) -> None:
        self._remove()
        devs = self._attach()
        run([*self.MKFS, *devs], timeout=MOUNT_TIMEOUT_S)

    def _mount(self) -> None:
        run(["mount", "-t", "btrfs", "-o", f"device={self.loops[1]}", self.loops[0], self.mnt],
            timeout=MOUNT_TIMEOUT_S)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "mkfs": " ".join(self.MKFS)}


class Ext4(LoopFs):
    name = "ext4"
    MKFS = ("mkfs.ext4", "-F", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0")

    def create(self) -> None:
        self._remove()
        devs = self._attach()
        run([*self.MKFS, devs[0]], timeout=MOUNT_TIMEOUT_S)

    def _mount(self) -> None:
        run(["mount", "-t", "ext4", self.loops[0], self.mnt], timeout=MOUNT_TIMEOUT_S)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "mkfs": " ".join(self.MKFS)}


class FuseFs(Fs):
    """Shared by the FUSE file systems: the daemon's pid, its log, a forced way out."""

    fstype = "fuse"

    def __init__(self, work: Path, image_bytes: int) -> None:
        super().__init__(work, image_bytes)
        self.log_path = work / f"{self.name}.log"
        self.pid: int | None = None

    def log_tail(self, lines: int = 40) -> str | None:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return None

    def _wait_gone(self, pid: int | None, timeout: float) -> None:
        if pid is None:
            return
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists():
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            stat = Path(f"/proc/{pid}/stat")
            with contextlib.suppress(OSError):
                if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} daemon pid {pid} still alive {timeout:.0f} s "
                                   "after the unmount")
            time.sleep(0.02)

    def emergency(self) -> None:
        """Lazy unmount, abort the FUSE connection if it hangs, then end our daemon."""
        if str(self.mnt) in mount_table():
            run(["fusermount3", "-u", "-z", self.mnt], timeout=60, check=False)
        pid, self.pid = self.pid, None
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            try:
                self._wait_gone(pid, 30)
            except RuntimeError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.mounted = False

    def daemon_pid(self) -> int | None:
        return self.pid


class Mirrorfs(FuseFs):
    name = "mirrorfs"
    fstype = "fuse.mirrorfs"

    def __init__(self, work: Path, image_bytes: int) -> None:
        super().__init__(work, image_bytes)
        self.vf = work / "mirrorfs-v.toml"
        self.plexes = [work / "mirrorfs-p1.img", work / "mirrorfs-p2.img"]

    def create(self) -> None:
        self._remove()
        self.exists = True
        run([mirrorfs_exe(), "mkfs", "--size", f"{self.image_bytes // MIB}M", self.vf,
             *self.plexes], timeout=MOUNT_TIMEOUT_S)

    def _find_pid(self) -> int | None:
        """The daemon serving our mount point: the mount command's ``--foreground`` child."""
        want = os.fsencode(str(self.mnt))
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--foreground" in argv and want in argv and b"mirrorfs" in argv:
                return int(d.name)
        return None

    def _mount(self) -> None:
        run([mirrorfs_exe(), "mount", "--log", self.log_path, self.vf, self.mnt],
            timeout=MOUNT_TIMEOUT_S)
        self.pid = self._find_pid()

    def _unmount(self) -> None:
        pid, self.pid = self.pid, None
        run([mirrorfs_exe(), "umount", "--timeout", f"{MOUNT_TIMEOUT_S:.0f}", self.mnt],
            timeout=MOUNT_TIMEOUT_S + 60)
        self._wait_gone(pid, 60)

    def _remove(self) -> None:
        for p in (*self.plexes, self.vf):
            p.unlink(missing_ok=True)

    def backing(self) -> list[Path]:
        return list(self.plexes)

    def fsck(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        p = run([mirrorfs_exe(), "fsck", self.vf], timeout=STEP_TIMEOUT_S, check=False)
        out = (p.stdout + p.stderr).strip().splitlines()
        return {"exit": p.returncode, "clean": p.returncode == 0,
                "seconds": rnd(time.perf_counter() - t0), "output_tail": out[-8:]}

    def describe(self) -> dict[str, Any]:
        return {"plexes": len(self.plexes), "image_bytes": self.image_bytes,
                "plexes_share_one_disk": True, "mount_options": mount_options(self.mnt),
                "read_ahead_kb": readahead_kb(self.mnt)}


class Nullfs(FuseFs):
    name = "nullfs"
    fstype = "fuse.nullfs"

    def __init__(self, work: Path, image_bytes: int) -> None:
        super().__init__(work, image_bytes)
        self.file = work / "nullfs-backing.img"
        self.state = work / "nullfs-state.pickle"
        self.proc: subprocess.Popen[bytes] | None = None

    def create(self) -> None:
        self._remove()
        self.exists = True

    def _mount(self) -> None:
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, str(NULLFS), str(self.file), str(self.mnt),
                 "--size", str(self.image_bytes), "--state", str(self.state)],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True)
        self.pid = self.proc.pid
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while mount_table().get(str(self.mnt)) != self.fstype:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nullfs exited ({self.proc.returncode}) before mounting: "
                                   f"{self.log_tail(5)}")
            if time.monotonic() > deadline:
                raise RuntimeError("nullfs did not mount in time")
            time.sleep(0.01)

    def _unmount(self) -> None:
        run(["fusermount3", "-u", self.mnt], timeout=MOUNT_TIMEOUT_S)
        if self.proc is not None:
            code = self.proc.wait(timeout=MOUNT_TIMEOUT_S)
            self.proc = None
            self.pid = None
            if code != 0:
                raise RuntimeError(f"nullfs exited {code}: {self.log_tail(5)}")

    def emergency(self) -> None:
        super().emergency()
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            self.proc = None

    def _remove(self) -> None:
        self.file.unlink(missing_ok=True)
        self.state.unlink(missing_ok=True)

    def backing(self) -> list[Path]:
        return [self.file]

    def describe(self) -> dict[str, Any]:
        import _nullfs

        return {"backing_bytes": self.image_bytes, "preallocated": True,
                "mount_options": mount_options(self.mnt), "read_ahead_kb": readahead_kb(self.mnt),
                "fuse_settings": _nullfs.fuse_settings(str(self.file))}


FS_CLASSES: dict[str, type[Fs]] = {"mirrorfs": Mirrorfs, "btrfs": Btrfs, "ext4": Ext4,
                                   "nullfs": Nullfs}


# -- measuring ----------------------------------------------------------------------


class Meter:
    """Times steps: wall, the daemon's CPU, the machine's CPU; optional py-spy per step."""

    def __init__(self, profile_dir: Path | None) -> None:
        self.profile_dir = profile_dir

    @contextlib.contextmanager
    def step(self, fs: Fs, name: str, rnd_no: int) -> Iterator[dict[str, Any]]:
        out: dict[str, Any] = {"loadavg": loadavg()}
        pid = fs.daemon_pid()
        spy = None
        if self.profile_dir is not None and pid is not None:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            path = self.profile_dir / f"{fs.name}_{name}_r{rnd_no}.txt"
            spy_exe = Path(sys.executable).parent / "py-spy"
            spy = subprocess.Popen([str(spy_exe), "record", "--pid", str(pid), "--format",
                                    "raw", "--rate", "250", "--nonblocking", "--output",
                                    str(path)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            time.sleep(0.5)  # let it attach
        c0 = proc_cpu_s(pid)
        b0, n0 = cpu_counters()
        p0 = psi_totals()
        t0 = time.perf_counter()
        try:
            yield out
        finally:
            t1 = time.perf_counter()
            b1, n1 = cpu_counters()
            p1 = psi_totals()
            c1 = proc_cpu_s(pid)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    spy.wait(timeout=60)
        out["seconds"] = rnd(t1 - t0)
        out["daemon_cpu_s"] = rnd(c1 - c0) if c0 is not None and c1 is not None else None
        out["cpu_busy"] = rnd((b1 - b0) / (n1 - n0), 3) if n1 > n0 else None
        out["stall"] = {k: rnd((p1[k] - p0[k]) / 1e6 / (t1 - t0), 3) for k in p0 if k in p1}


def make_source(shm: Path, mib: int) -> tuple[Path, bytes]:
    """SRC for dd: one random 1 MiB pattern repeated, each MiB stamped with its index."""
    pattern = os.urandom(MIB)
    src = shm / "seq.src"
    with open(src, "wb") as f:
        for i in range(mib):
            f.write(i.to_bytes(8, "little") + pattern[8:])
    return src, pattern


def make_tarball(shm: Path, src_dir: Path) -> tuple[Path, dict[str, Any]]:
    """A tar of ``src_dir`` in /dev/shm, and what it holds."""
    tar = shm / "tree.tar"
    src_dir = src_dir.resolve()
    run(["tar", "-cf", tar, "-C", src_dir.parent, src_dir.name], timeout=STEP_TIMEOUT_S)
    counts = {"files": 0, "dirs": 0, "symlinks": 0, "hardlinks": 0, "other": 0}
    data = 0
    with tarfile.open(tar) as t:
        for m in t:
            if m.isreg():
                counts["files"] += 1
                data += m.size
            elif m.isdir():
                counts["dirs"] += 1
            elif m.issym():
                counts["symlinks"] += 1
            elif m.islnk():
                counts["hardlinks"] += 1
            else:
                counts["other"] += 1
    info = {"source": str(src_dir), **counts, "entries": sum(counts.values()),
            "data_bytes": data, "tar_bytes": tar.stat().st_size}
    return tar, info


def seq_write(fs: Fs, meter: Meter, r: int, src: Path, mib: int) -> dict[str, Any]:
    os.sync()
    with meter.step(fs, "seq_write", r) as m:
        run(["dd", f"if={src}", f"of={fs.mnt / 'big'}", "bs=1M", f"count={mib}",
             "conv=fsync", "status=none"])
    m["bytes"] = mib * MIB
    m["mb_s"] = round(mib * MIB / MB / m["seconds"], 1)
    return m


def seq_read_cold(fs: Fs, meter: Meter, r: int, src: Path, mib: int, verify: bool
                  ) -> dict[str, Any]:
    umount_s = fs.unmount()
    cache = drop_all(fs.backing())
    mount_s = fs.mount()
    big = fs.mnt / "big"
    with meter.step(fs, "seq_read_cold", r) as m:
        run(["dd", f"if={big}", "of=/dev/null", "bs=1M", "status=none"])
    size = big.stat().st_size
    if size != mib * MIB:
        raise RuntimeError(f"{fs.name}: {big} holds {size} bytes, {mib * MIB} written")
    m.update(bytes=size, mb_s=round(size / MB / m["seconds"], 1), umount_s=rnd(umount_s),
             mount_s=rnd(mount_s), read_ahead_kb=readahead_kb(fs.mnt), cache=cache)
    if verify:
        picks = sorted({0, mib - 1, *(i * mib // SAMPLES for i in range(SAMPLES))})
        bad = []
        with open(src, "rb") as a, open(big, "rb") as b:
            for i in picks:
                a.seek(i * MIB)
                b.seek(i * MIB)
                if a.read(MIB) != b.read(MIB):
                    bad.append(i)
        if bad:
            raise RuntimeError(f"{fs.name}: MiB {bad} of {big} differ from what was written")
        m["verified_mib"] = len(picks)
    return m


def small_files(fs: Fs, meter: Meter, r: int, nfiles: int, pattern: bytes, verify: bool
                ) -> dict[str, Any]:
    top = fs.mnt / "small"
    os.sync()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    with meter.step(fs, "small_files", r) as m:
        t0 = time.perf_counter()
        os.mkdir(top)
        k = 0
        for d in range(-(-nfiles // FILES_PER_DIR)):
            dp = f"{top}/d{d:03d}"
            os.mkdir(dp)
            for i in range(min(FILES_PER_DIR, nfiles - k)):
                fd = os.open(f"{dp}/f{i:03d}", flags, 0o644)
                off = (k * 64) % (MIB - SMALL_FILE_BYTES)
                os.write(fd, pattern[off:off + SMALL_FILE_BYTES])
                os.close(fd)
                k += 1
        t1 = time.perf_counter()
        durable(fs.mnt, top)
        t2 = time.perf_counter()
    m.update(files=nfiles, bytes=nfiles * SMALL_FILE_BYTES,
             files_s=round(nfiles / m["seconds"], 1), create_s=rnd(t1 - t0),
             sync_s=rnd(t2 - t1))
    if verify:
        found = sum(len(files) for _, _, files in os.walk(top))
        if found != nfiles:
            raise RuntimeError(f"{fs.name}: {found} files under {top}, {nfiles} created")
        last = nfiles - 1
        off = (last * 64) % (MIB - SMALL_FILE_BYTES)
        p = top / f"d{last // FILES_PER_DIR:03d}" / f"f{last % FILES_PER_DIR:03d}"
        if p.read_bytes() != pattern[off:off + SMALL_FILE_BYTES]:
            raise RuntimeError(f"{fs.name}: {p} does not hold what was written")
        m["verified"] = True
    return m


def tar_x(fs: Fs, meter: Meter, r: int, tar: Path, info: dict[str, Any], verify: bool
          ) -> dict[str, Any]:
    dest = fs.mnt / "tar"
    dest.mkdir()
    os.sync()
    with meter.step(fs, "tar_x", r) as m:
        t0 = time.perf_counter()
        run(["tar", "-xf", tar, "-C", dest])
        t1 = time.perf_counter()
        durable(fs.mnt, dest)
        t2 = time.perf_counter()
    m.update(entries=info["entries"], bytes=info["data_bytes"],
             entries_s=round(info["entries"] / m["seconds"], 1),
             mb_s=round(info["data_bytes"] / MB / m["seconds"], 1),
             extract_s=rnd(t1 - t0), sync_s=rnd(t2 - t1))
    if verify:
        p = run(["tar", "--compare", "-f", tar, "-C", dest], check=False)
        diffs = [x for x in p.stdout.splitlines() if x.strip()]
        if p.returncode != 0:
            raise RuntimeError(f"{fs.name}: tar --compare found {len(diffs)} differences: "
                               f"{diffs[:5]} {p.stderr.strip()[-500:]}")
        m["verified"] = True
    return m


# -- the run --------------------------------------------------------------------------


def log_findings(path: Path) -> dict[str, Any]:
    """ERROR and WARNING lines of a daemon log (counts and the first few)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"path": str(path), "missing": True}
    errors = [x for x in lines if " ERROR " in x or "Traceback" in x]
    warnings = [x for x in lines if " WARNING " in x]
    return {"path": str(path), "lines": len(lines), "errors": len(errors),
            "warnings": len(warnings), "first_errors": errors[:5],
            "first_warnings": warnings[:5]}


def one_fs(fs: Fs, meter: Meter, r: int, wl: Sequence[str], ctx: dict[str, Any],
           last_round: bool) -> dict[str, Any]:
    """The selected workloads on one file system (two fresh file systems: seq, then meta)."""
    res: dict[str, Any] = {}
    verify = ctx["verify"]
    if "seq_write" in wl or "seq_read_cold" in wl:
        try:
            fs.create()
            fs.mount()
            res["seq_write"] = seq_write(fs, meter, r, ctx["src"], ctx["mib"])
            log(f"  {fs.name:8s} seq_write      {res['seq_write']['mb_s']:8.1f} MB/s "
                f"({_detail(res['seq_write'])})")
            if "seq_read_cold" in wl:
                res["seq_read_cold"] = seq_read_cold(fs, meter, r, ctx["src"], ctx["mib"],
                                                     verify)
                log(f"  {fs.name:8s} seq_read_cold  {res['seq_read_cold']['mb_s']:8.1f} MB/s "
                    f"({_detail(res['seq_read_cold'])}, mount "
                    f"{res['seq_read_cold']['mount_s']:.2f} s)")
            fs.unmount()
            if last_round and isinstance(fs, Mirrorfs):
                res["fsck_seq"] = fs.fsck()
                log(f"  mirrorfs fsck after seq: exit {res['fsck_seq']['exit']} "
                    f"({res['fsck_seq']['seconds']:.1f} s)")
        finally:
            fs.destroy()
    if "small_files" in wl or "tar_x" in wl:
        try:
            fs.create()
            fs.mount()
            if "small_files" in wl:
                res["small_files"] = small_files(fs, meter, r, ctx["files"], ctx["pattern"],
                                                 verify)
                s = res["small_files"]
                log(f"  {fs.name:8s} small_files    {s['files_s']:8.1f} files/s "
                    f"({_detail(s)}, create {s['create_s']:.2f} s + sync {s['sync_s']:.2f} s)")
            if "tar_x" in wl:
                res["tar_x"] = tar_x(fs, meter, r, ctx["tar"], ctx["tarball"], verify)
                t = res["tar_x"]
                log(f"  {fs.name:8s} tar_x          {t['entries_s']:8.1f} entries/s "
                    f"{t['mb_s']:.1f} MB/s ({_detail(t)}, extract {t['extract_s']:.2f} s + "
                    f"sync {t['sync_s']:.2f} s)")
            res["describe"] = fs.describe()
            fs.unmount()
            if last_round and isinstance(fs, Mirrorfs):
                res["fsck_meta"] = fs.fsck()
                log(f"  mirrorfs fsck after small_files/tar_x: exit "
                    f"{res['fsck_meta']['exit']} ({res['fsck_meta']['seconds']:.1f} s)")
        finally:
            fs.destroy()
    return res


def _detail(m: dict[str, Any]) -> str:
    cpu = m.get("daemon_cpu_s")
    d = f"{m['seconds']:.2f} s"
    if cpu is not None:
        d += f", daemon cpu {cpu:.2f} s"
    return d + f", busy {m['cpu_busy']:.2f}, load {m['loadavg'][0]}"


def summarize(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    vals = [x[key] for x in runs]
    secs = [x["seconds"] for x in runs]
    out: dict[str, Any] = {key: round(median(vals), 1), f"{key}_runs": vals,
                           "seconds": rnd(median(secs))}
    if key != "mb_s" and all("mb_s" in x for x in runs):
        out["mb_s"] = round(median([x["mb_s"] for x in runs]), 1)
    cpus = [x["daemon_cpu_s"] for x in runs if x.get("daemon_cpu_s") is not None]
    if cpus:
        out["daemon_cpu_s"] = rnd(median(cpus))
        out["daemon_cpu_share"] = rnd(median(cpus) / median(secs), 3)
    out["runs"] = runs
    return out


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = doc["results"]
    wls = [w for w in WORKLOADS if any(w in res.get(f, {}) for f in FS_NAMES)]
    if not wls:
        return
    units = {"mb_s": "MB/s", "files_s": "files/s", "entries_s": "entries/s"}
    colors = {"mirrorfs": "tab:red", "btrfs": "tab:blue", "ext4": "tab:green",
              "nullfs": "tab:gray"}
    peer = {"seq_write": ("btrfs", WRITE_VS_BTRFS), "seq_read_cold": ("nullfs", READ_VS_NULLFS),
            "small_files": ("nullfs", META_VS_NULLFS), "tar_x": ("nullfs", META_VS_NULLFS)}
    fig, axes = plt.subplots(1, len(wls), figsize=(3.6 * len(wls), 4.2), squeeze=False)
    for ax, w in zip(axes[0], wls, strict=True):
        key = RATE_KEY[w]
        names = [f for f in FS_NAMES if w in res.get(f, {})]
        vals = [res[f][w][key] for f in names]
        bars = ax.bar(names, vals, color=[colors[f] for f in names])
        ax.bar_label(bars, labels=[f"{v:.0f}" for v in vals], fontsize=8)
        ref, ratio = peer[w]
        if ref in names:
            ax.axhline(res[ref][w][key] * ratio, color="tab:red", linestyle="--", linewidth=1,
                       label=f"target {ratio} x {ref}")
            ax.legend(fontsize=7, loc="upper left")
        ax.set_ylim(0, max(vals) * 1.3)
        ax.set_title(w, fontsize=10)
        ax.set_ylabel(units[key])
        ax.tick_params(axis="x", labelsize=8)
    m, c = doc["machine"], doc["config"]
    fig.suptitle(f"mirrorfs {doc.get('source', {}).get('commit')} through the mount vs peers "
                 f"({c['seq_bytes'] / GIB:g} GiB seq, {c['files']} files, {c['rounds']} round(s), "
                 f"load {m['loadavg_start'][0]} -> {m.get('loadavg_end', ['?'])[0]})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log(f"plot -> {path}")


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    ap.add_argument("--dir", help="where images go (default: a fresh dir under /var/tmp)")
    ap.add_argument("--size-gib", type=float, default=2.0,
                    help="bytes of the sequential file in GiB (default 2)")
    ap.add_argument("--files", type=int, default=None, help="small files (default 5000)")
    ap.add_argument("--tar-src", type=Path, default=None,
                    help="directory tarred once for tar_x (default /usr/include)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds over the file systems (default 2; 1 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="256 MiB, 500 files, /usr/include/linux, one round: a smoke run")
    ap.add_argument("--only", default=None,
                    help="comma-separated file systems and/or workloads, e.g. "
                         "mirrorfs,nullfs,small_files")
    ap.add_argument("--no-verify", action="store_true", help="skip the untimed checks")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="py-spy each FUSE daemon's steps into DIR")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir")
    args = ap.parse_args(argv)

    fs_sel, wl_sel = list(FS_NAMES), list(WORKLOADS)
    if args.only:
        items = [x.strip() for x in args.only.split(",") if x.strip()]
        bad = [x for x in items if x not in FS_NAMES and x not in WORKLOADS]
        if bad:
            ap.error(f"--only: unknown {bad} (file systems {FS_NAMES}, workloads {WORKLOADS})")
        if any(x in FS_NAMES for x in items):
            fs_sel = [f for f in FS_NAMES if f in items]
        if any(x in WORKLOADS for x in items):
            wl_sel = [w for w in WORKLOADS if w in items]
        if "seq_read_cold" in wl_sel and "seq_write" not in wl_sel:
            wl_sel.insert(0, "seq_write")
    mib = 256 if args.quick else int(args.size_gib * 1024)
    nfiles = args.files or (500 if args.quick else 5000)
    tar_src = args.tar_src or Path("/usr/include/linux" if args.quick else "/usr/include")
    rounds = args.rounds or (1 if args.quick else 2)
    image_bytes = max(2 * GIB, -(-(mib * MIB * 3) // GIB) * GIB)
    if os.geteuid() != 0:
        raise SystemExit("mount.py needs root (loop devices, mount, drop_caches)")

    signal.signal(signal.SIGTERM, _stop)
    doc: dict[str, Any] = {"benchmark": "mount"}
    fss: list[Fs] = []
    shm = Path(tempfile.mkdtemp(prefix="mirrorfs-bench-mount-", dir="/dev/shm"))
    with scratch_dir(args.dir, keep=True) as work:
        made = args.dir is None
        try:
            doc["machine"] = machine_info(work)
            log(f"load average at start: {doc['machine']['loadavg_start']}")
            warn_if_busy()
            if not args.quick:
                doc["machine"]["memory_warmup"] = warm_memory()
            doc["source"] = source_state()
            log(f"mirrorfs from {doc['source']}")
            log(f"sources in {shm}: {mib} MiB pattern file, tar of {tar_src}")
            src, pattern = make_source(shm, mib)
            ctx: dict[str, Any] = {"mib": mib, "files": nfiles, "src": src, "pattern": pattern,
                                   "verify": not args.no_verify}
            if "tar_x" in wl_sel:
                ctx["tar"], ctx["tarball"] = make_tarball(shm, tar_src)
                log(f"tarball: {ctx['tarball']}")
            doc["config"] = {
                "quick": args.quick, "seq_bytes": mib * MIB, "files": nfiles,
                "small_file_bytes": SMALL_FILE_BYTES, "files_per_dir": FILES_PER_DIR,
                "rounds": rounds, "file_systems": fs_sel, "workloads": wl_sel,
                "image_bytes": image_bytes, "tarball": ctx.get("tarball"),
                "seq_source": "/dev/shm file: one random 1 MiB pattern repeated, each MiB "
                              "stamped with its index",
                "seq_write_cmd": "dd if=SRC of=MNT/big bs=1M count=N conv=fsync",
                "seq_read_cmd": "dd if=MNT/big of=/dev/null bs=1M (after unmount, "
                                "drop_cache of the images + drop_caches=3, mount)",
                "small_files_method": "python os.open(O_CREAT|O_EXCL)+os.write+os.close, "
                                      "then syncfs(mount) + fsync(top dir)",
                "tar_x_cmd": "tar -xf T -C MNT/tar, then syncfs(mount) + fsync(MNT/tar)",
                "verify": not args.no_verify, "profiled": args.profile is not None}
            fss = [FS_CLASSES[n](work, image_bytes) for n in fs_sel]
            meter = Meter(args.profile)
            results: dict[str, list[dict[str, Any]]] = {n: [] for n in fs_sel}
            failures: list[dict[str, Any]] = []
            t_all = time.perf_counter()
            for r in range(rounds):
                order = fss if r % 2 == 0 else list(reversed(fss))
                log(f"round {r + 1} of {rounds}: {[f.name for f in order]}, load {loadavg()}")
                for fs in order:
                    try:
                        results[fs.name].append(one_fs(fs, meter, r + 1, wl_sel, ctx,
                                                       r == rounds - 1))
                    except Exception as e:
                        tail = fs.log_tail()
                        log(f"  {fs.name} FAILED in round {r + 1}: {e}")
                        if tail:
                            log(f"  {fs.name} log tail:\n{tail}")
                        failures.append({"fs": fs.name, "round": r + 1, "error": str(e),
                                         "log_tail": tail})
                        with contextlib.suppress(Exception):
                            fs.emergency()
                            fs.destroy()
            doc["elapsed_s"] = round(time.perf_counter() - t_all, 1)
            doc["results"] = {}
            for n in fs_sel:
                per: dict[str, Any] = {}
                for w in wl_sel:
                    runs = [x[w] for x in results[n] if w in x]
                    if runs:
                        per[w] = summarize(runs, RATE_KEY[w])
                for x in results[n]:
                    for k in ("fsck_seq", "fsck_meta", "describe"):
                        if k in x:
                            per[k] = x[k]
                doc["results"][n] = per
            doc["ratios"], doc["targets"] = ratios_and_targets(doc["results"], wl_sel)
            doc["all_hold"] = bool(doc["targets"]) and all(
                t["holds"] for t in doc["targets"].values())
            if "mirrorfs" in fs_sel:
                doc["mirrorfs_log"] = log_findings(work / "mirrorfs.log")
            doc["failures"] = failures
            doc["machine"]["loadavg_end"] = loadavg()
            log(f"load average at end: {doc['machine']['loadavg_end']}")
        finally:
            for fs in fss:
                try:
                    fs.destroy()
                except Exception as e:
                    log(f"cleanup of {fs.name}: {e}")
                    with contextlib.suppress(Exception):
                        fs.emergency()
            shutil.rmtree(shm, ignore_errors=True)
            busy = [m for m in mount_table() if m.startswith(str(work) + "/")]
            if busy:
                log(f"WARNING: still mounted, not removing {work}: {busy}")
            elif made and not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    kind = ".profiled" if args.profile else ".quick" if args.quick else ""
    out = args.out or RESULTS_DIR / f"mount{kind}.json"
    emit("mount", doc, out)
    try:
        plot(doc, out.with_suffix(".png"))
    except Exception as e:  # a plot is a nicety; the JSON is the result
        log(f"plot failed: {e}")
    return 0


def ratios_and_targets(res: dict[str, Any], wl: Sequence[str]
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
    """mirrorfs over each peer for each workload (medians), and the issue's targets."""
    ratios: dict[str, Any] = {}
    mine = res.get("mirrorfs", {})
    for w in wl:
        if w not in mine:
            continue
        key = RATE_KEY[w]
        peers = [p for p in FS_NAMES if p != "mirrorfs" and w in res.get(p, {})]
        ratios[w] = {f"mirrorfs_vs_{p}": round(mine[w][key] / res[p][w][key], 4)
                     for p in peers}
        for p in peers:
            ratios[w][f"mirrorfs_vs_{p}_best"] = round(
                max(mine[w][f"{key}_runs"]) / max(res[p][w][f"{key}_runs"]), 4)
    targets: dict[str, Any] = {}

    def add(name: str, w: str, peer: str, bound: float, unit: str) -> None:
        r = ratios.get(w, {}).get(f"mirrorfs_vs_{peer}")
        if r is not None:
            targets[name] = target(r, ">=", bound, unit)

    add("seq_write_vs_btrfs", "seq_write", "btrfs", WRITE_VS_BTRFS, "x btrfs raid1")
    add("seq_read_cold_vs_nullfs", "seq_read_cold", "nullfs", READ_VS_NULLFS, "x nullfs")
    add("small_files_vs_nullfs", "small_files", "nullfs", META_VS_NULLFS, "x nullfs")
    add("tar_x_vs_nullfs", "tar_x", "nullfs", META_VS_NULLFS, "x nullfs")
    return ratios, targets


if __name__ == "__main__":
    sys.exit(main())
