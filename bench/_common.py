"""Shared helpers for the benchmarks in bench/: scratch dirs, caches, dd, targets, JSON.

Owns nothing persistent. Keeps: every benchmark prints one JSON document on
stdout (progress goes to stderr) and writes the same document to
``bench/results/<name>.json``, so a run is both readable by a script and kept.

Peers in the same run. A figure means little alone on a shared VM whose disk
speed drifts; each benchmark measures its reference (``dd``, ext4, ...) in the
same run, on the same disk, and reports the ratio.

Cold caches. ``drop_cache`` fsyncs a file and asks the kernel to drop its
pages (``posix_fadvise(DONTNEED)``), then tries the global
``/proc/sys/vm/drop_caches``; it returns which of the two worked and how many
bytes stayed resident (``fincore``), so a reader can judge what "cold" meant.
In a VM the host may still cache the image: cold here means cold in the guest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
MB = 1_000_000  # throughput unit: decimal megabytes, as dd reports them
MIB = 1 << 20
GIB = 1 << 30


def log(msg: str) -> None:
    """Progress for a human, on stderr (stdout carries only the JSON)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- where images go ---------------------------------------------------------


def fs_type(path: str | os.PathLike[str]) -> str:
    """The file system type of the mount holding ``path`` (from /proc/self/mounts)."""
    real = os.path.realpath(path)
    best, kind = "", "unknown"
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
        if inside and len(mnt) >= len(best):
            best, kind = mnt, parts[2]
    return kind


@contextlib.contextmanager
def scratch_dir(arg: str | None, keep: bool = False, base: Path = Path("/var/tmp"),
                prefix: str = "mirrorfs-bench-") -> Iterator[Path]:
    """A directory for images: ``arg`` if given, else a fresh one under ``base``.

    /var/tmp, not /tmp: /tmp is often tmpfs, and images in RAM measure nothing
    about a disk. A fresh directory is removed afterwards unless ``keep``.
    """
    if arg is not None:
        p = Path(arg)
        p.mkdir(parents=True, exist_ok=True)
        made = False
    else:
        base.mkdir(parents=True, exist_ok=True)
        p = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
        made = True
    if fs_type(p) in ("tmpfs", "ramfs"):
        log(f"WARNING: {p} is on {fs_type(p)}; figures will not reflect a disk")
    try:
        yield p
    finally:
        if made and not keep:
            shutil.rmtree(p, ignore_errors=True)


def source_state() -> dict[str, Any]:
    """Which mirrorfs is measured: its location, and the commit (from git, or a COMMIT file).

    To measure a fixed snapshot while others edit the tree:
    ``git archive HEAD src bench | tar -x -C DIR; git rev-parse --short HEAD > DIR/COMMIT``
    and run with ``PYTHONPATH=DIR/src`` (the CLI subprocesses inherit it).
    """
    import mirrorfs

    src = Path(mirrorfs.__file__).resolve().parent.parent
    out: dict[str, Any] = {"path": str(src)}
    marker = src.parent / "COMMIT"
    if marker.exists():
        out.update(commit=marker.read_text().strip(), snapshot=True)
        return out
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(src), *args], capture_output=True,
                                  text=True, timeout=30, check=True).stdout

        head = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--", ".")
        out.update(commit=head, snapshot=False, src_files_changed=len(dirty.splitlines()))
    except (subprocess.SubprocessError, OSError):
        out["commit"] = None
    return out


def meminfo_bytes(key: str) -> int:
    """A /proc/meminfo figure (``MemTotal``, ``MemAvailable``...) in bytes; 0 if unknown."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def machine_info(where: Path) -> dict[str, Any]:
    """What the figures were measured on."""
    du = shutil.disk_usage(where)
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = meminfo_bytes("MemTotal")
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "kernel": platform.release(),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_bytes": mem,
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "dir": str(where),
        "dir_fs": fs_type(where),
        "disk_free_bytes": du.free,
        "disk_total_bytes": du.total,
        "loadavg_start": loadavg(),
    }


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages: other work on the machine skews CPU-bound figures."""
    return [round(x, 2) for x in os.getloadavg()]


def proc_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (all its threads), or None if it is gone."""
    if pid is None:
        return None
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()  # after "pid (comm)": utime, stime are 11, 12
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def warn_if_busy() -> None:
    load, n = os.getloadavg()[0], os.cpu_count() or 1
    if load > 0.5 * n:
        log(f"WARNING: load average {load:.1f} on {n} CPUs; CPU-bound figures will be low")


WARM_HEADROOM = 3 * GIB  # memory left untouched by warm_memory
WARM_CHUNK = 256 * MIB


def warm_memory() -> dict[str, Any]:
    """Touch every page of free memory once, then give it back: the guest's first use is paid here.

    Why: a VM whose host backs guest memory lazily charges the first touch of
    each guest page with a host fault. On a fresh VM here, touching 6 GiB took
    14.3 s the first time and 1.2 s the next (numpy ``ones`` of 6 GiB, three
    runs in a row). Page cache and heap come from that same free memory, so
    without this step whichever file system is measured first pays seconds
    per GiB that the others do not (session 5 saw mirrorfs's first-round
    mount read at 388 MB/s and 5.1 s of daemon CPU, its second at 852 MB/s
    and 1.9 s). Pages given back stay backed, so later allocations are fast.

    Touches MemAvailable minus WARM_HEADROOM (MAP_POPULATE), in chunks held
    until the end (so they are distinct pages), and reports how long it
    took: about 2.4 s per GiB on a fresh VM, a tenth of that once warm.
    """
    import mmap

    avail = meminfo_bytes("MemAvailable")
    want = max(0, avail - WARM_HEADROOM) // WARM_CHUNK * WARM_CHUNK
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE  # the kernel touches
    held: list[mmap.mmap] = []
    t0 = time.perf_counter()
    try:
        for _ in range(want // WARM_CHUNK):
            held.append(mmap.mmap(-1, WARM_CHUNK, flags=flags))
    finally:
        for m in held:
            m.close()
    dt = time.perf_counter() - t0
    touched = len(held) * WARM_CHUNK
    log(f"warmed {touched / GIB:.1f} GiB of guest memory in {dt:.1f} s")
    return {"bytes": touched, "seconds": round(dt, 2),
            "s_per_gib": round(dt / (touched / GIB), 3) if touched else None}


# -- page cache ----------------------------------------------------------------


def resident_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes of ``path`` in the page cache (via util-linux ``fincore``), or None."""
    exe = shutil.which("fincore")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--bytes", "--noheadings", "--output", "RES", str(path)],
                             capture_output=True, text=True, check=True, timeout=30).stdout
        return int(out.split()[0])
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return None


def drop_cache(paths: Sequence[str | os.PathLike[str]]) -> dict[str, Any]:
    """Make reads of ``paths`` cold: fsync + fadvise(DONTNEED) each, then try drop_caches."""
    methods: list[str] = []
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    methods.append("fsync+posix_fadvise(DONTNEED)")
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        methods.append("drop_caches=1")
    except OSError:
        pass
    resident = {str(p): resident_bytes(p) for p in paths}
    return {"methods": methods, "resident_after_bytes": resident}


# -- dd references ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Timed:
    """One timed run: wall seconds and the bytes it moved."""

    seconds: float
    nbytes: int

    @property
    def mb_s(self) -> float:
        return self.nbytes / MB / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, float | int]:
        return {"seconds": round(self.seconds, 4), "bytes": self.nbytes,
                "mb_s": round(self.mb_s, 1)}


def _dd(args: list[str], feed: Callable[[Any], None] | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen(["dd", *args, "status=none"],
                            stdin=subprocess.PIPE if feed else subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    if feed is None:
        _, err = proc.communicate()
    else:
        assert proc.stdin is not None and proc.stderr is not None
        feeder = threading.Thread(target=feed, args=(proc.stdin,), daemon=True)
        feeder.start()
        err = proc.stderr.read()  # dd writes it only when done
        proc.wait()
        feeder.join()
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"dd {' '.join(args)} failed: {err.decode(errors='replace')}")
    return dt


def dd_write_zero(img: Path, mib: int) -> Timed:
    """``dd if=/dev/zero of=IMG bs=1M count=MIB conv=fdatasync`` on a fresh file."""
    img.unlink(missing_ok=True)
    os.sync()
    dt = _dd(["if=/dev/zero", f"of={img}", "bs=1M", f"count={mib}", "conv=fdatasync"])
    return Timed(dt, mib * MIB)


def dd_write_pattern(img: Path, mib: int, pattern: bytes) -> Timed:
    """dd of the same 1 MiB ``pattern`` repeated, fed through a pipe, with fdatasync.

    The pipe costs a little CPU, so this reference is slightly slower than
    ``dd_write_zero``; a benchmark compares with the faster of the two.
    """
    assert len(pattern) == MIB
    img.unlink(missing_ok=True)
    os.sync()

    def feed(pipe: Any) -> None:
        try:
            for _ in range(mib):
                pipe.write(pattern)
            pipe.close()
        except BrokenPipeError:
            pass  # dd died; _dd reports its error

    dt = _dd(["if=/dev/stdin", f"of={img}", "bs=1M", f"count={mib}", "iflag=fullblock",
              "conv=fdatasync"], feed)
    return Timed(dt, mib * MIB)


def dd_read(img: Path) -> Timed:
    """``dd if=IMG of=/dev/null bs=1M`` (the caller drops the cache first)."""
    dt = _dd([f"if={img}", "of=/dev/null", "bs=1M"])
    return Timed(dt, img.stat().st_size)


# -- targets and output ------------------------------------------------------------


def read_back(vol: Any, path: str, pattern: bytes, mib: int) -> tuple[float, float]:
    """Read ``path`` back in 1 MiB calls, each compared with ``pattern``: (wall s, cpu s).

    Exits with a message when the bytes differ from what was written, so a fast
    wrong answer never becomes a figure.
    """
    buf = bytearray(len(pattern))
    got = bad = 0
    c0, t0 = time.process_time(), time.perf_counter()
    with vol.open_file(path, "rb") as f:
        while k := f.readinto(buf):
            got += k
            if k != len(pattern) or buf != pattern:
                bad += 1
    t1, c1 = time.perf_counter(), time.process_time()
    if got != mib * len(pattern) or bad:
        raise SystemExit(f"read {got} bytes of {path}, {bad} MiB differ from what was written "
                         f"({mib * len(pattern)} bytes expected)")
    return t1 - t0, c1 - c0


def target(value: float, op: str, bound: float, unit: str, note: str = "") -> dict[str, Any]:
    """A figure with its target: ``value op bound`` and whether it holds."""
    ops: dict[str, Callable[[float, float], bool]] = {
        ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b,
        "<": lambda a, b: a < b, ">": lambda a, b: a > b}
    out: dict[str, Any] = {"value": round(value, 4), "unit": unit, "target": f"{op} {bound}",
                           "holds": bool(ops[op](value, bound))}
    if note:
        out["note"] = note
    return out


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


@contextlib.contextmanager
def maybe_profile(name: str, out_dir: Path | None) -> Iterator[None]:
    """Profile the block with pyinstrument into ``out_dir/<name>.{txt,html}`` when asked."""
    if out_dir is None:
        yield
        return
    from pyinstrument import Profiler

    prof = Profiler(interval=0.001)
    prof.start()
    try:
        yield
    finally:
        prof.stop()
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{name}.txt").write_text(prof.output_text(unicode=False, color=False,
                                                              show_all=False))
        (out_dir / f"{name}.html").write_text(prof.output_html())
        log(f"profile of {name} -> {out_dir / name}.txt")


def emit(name: str, doc: dict[str, Any], out: Path | None = None) -> None:
    """Print ``doc`` as JSON on stdout and keep it in ``bench/results/<name>.json``."""
    text = json.dumps(doc, indent=2, sort_keys=False)
    path = out or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    print(text, flush=True)
    log(f"results -> {path}")
