"""Resync against btrfs send/receive, rsync, a full copy and an exact copy, in one run.

What it measures. One workload is built the same way in mirrorfs and in
btrfs: ``NFILES`` (64) files holding the data, then, while one side is away,
random 64 KiB writes (64 KiB aligned, distinct offsets inside the files,
fixed seed) of fresh random bytes. Workloads (``--workloads``):

W1  1 GiB of data, 16 MiB changed, on a 2 GiB volume.
W2  8 GiB of data, 80 MiB changed, on a 12 GiB volume.
W3  W2 on a 64 GiB volume (sparse images): the cost must follow the change.

``--quick`` scales them down (64 MiB / 1 MiB, 128 MiB / 2 MiB) for a smoke run.

For each workload, on image files in one scratch directory on the real disk
(default: a fresh directory under /var/tmp/mirrorfs-bench, never tmpfs):

mirrorfs_api
    Two plexes; data written, ``vol.sync()``, ``vol.plex_offline(plex 2)``,
    changes written, ``vol.sync()``, ``vol.close()`` (all untimed). Then,
    after dropping the page cache, the timed part: ``Volume.open`` +
    ``vol.resync()`` + ``vol.close()``, i.e. the whole resync with its final
    flushes and commits. The process is warm: mirrorfs (mirrorfs.resync
    too) and numpy are already imported (``mirrorfs_cli`` shows the cold-process figure).
    ``bytes_copied`` comes from the resync report, ``plan_bytes`` from its
    plan; afterwards plex 2 is opened alone read-only and every changed chunk
    is read back and compared (``verified``). One resync on a noisy VM is
    one sample, so ``--rounds`` (default 3) repeats it: after the references
    below, plex 2 goes offline again, as many new chunks are changed, and
    the resync is timed again. ``seconds`` is the median over rounds (the
    time targets use it), ``first_round_s`` round 1 alone, ``rounds`` each;
    ``bytes``/``bytes_copied`` are round 1's (the byte targets use them).
mirrorfs_cli
    The same resync as ``mirrorfs resync --json VOLUME`` in a subprocess, on
    sparse copies of both plexes made before the API run (so it starts from
    the identical state). Includes interpreter start and imports.
btrfs
    Two btrfs file systems on loop devices (images on the same disk). Data
    written on A, ``snapshot -r base``, ``send base | receive B`` (untimed);
    the same changes on A, ``snapshot -r new``; then, cache dropped, the
    timed ``btrfs send -p base new | btrfs receive B`` followed by ``sync``.
    Repeated ``--repeat`` times (B/new deleted and the cleaner waited for in
    between); the median is the figure. ``bytes`` is the size of the send
    stream (``btrfs send -f``, measured separately, untimed).
rsync
    ``rsync -I --inplace --no-whole-file --stats`` of plex 1's image (after
    the resync) onto a sparse copy of the stale plex 2 image made before the
    resync, then ``sync``. ``bytes`` is rsync's "Literal data" (what it had to
    send); ``bytes_read`` is what it read (both whole images, holes included).
full_copy
    ``cp --sparse=always --reflink=never`` of plex 1's image + ``sync``;
    ``bytes`` is the allocated size of the image.
exact_cp
    ``cp`` of a file holding exactly the changed bytes (the chunks one after
    another) + ``sync``: the issue's "copying exactly the changed bytes with
    cp plus sync". The W2 target ratio uses this one. Median of ``--repeat``.
exact_pwrite
    The changed chunks written at their own offsets (sorted, adjacent chunks
    coalesced into one ``os.pwritev``) into a file preallocated at those
    extents, after reading them from the changed-bytes file, + fdatasync:
    a random-offset exact copy, closer to what a resync does. Reported,
    not used by the target. Median of ``--repeat``.
status_1tib
    ``mirrorfs status --json`` (examine + plan, a CLI subprocess) on a 1 TiB
    volume of two sparse plexes, plex 2 offline after a 1 MiB change.
    Median of ``--repeat`` runs, the first after a cache drop;
    ``cli_startup_s`` is ``mirrorfs --help`` for scale.

Before every timed phase the page cache is dropped: sync, then ``3`` written
to /proc/sys/vm/drop_caches (``cache_drop.permitted`` says whether the
kernel let us; if not, only the image files are dropped with
``posix_fadvise``). In a VM the host may still cache the images.

Reading the output. stdout is one JSON document, also written to
``bench/results/resync.json`` (``resync.quick.json`` for ``--quick``,
``resync.profiled.json`` with ``--profile``); progress goes to stderr.
``workloads.<W>`` holds per method ``seconds`` and ``bytes`` (bytes moved)
plus details, and ``ratios``. ``targets`` lists every target of the issue
with its ``value``, ``target`` and ``holds``; ``all_hold`` is their
conjunction. Each mirrorfs figure is a single run on a shared VM whose disk
speed drifts (see ``machine.loadavg_*``): re-run before believing a ratio
near its bound. ``bench/results/resync.png`` plots seconds against MiB
changed per method (left) and bytes moved per method (right, log scale).
``--profile DIR`` runs the API resyncs under pyinstrument into
``DIR/resync_<W>.txt`` and ``.html``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    GIB,
    MIB,
    RESULTS_DIR,
    emit,
    loadavg,
    log,
    machine_info,
    maybe_profile,
    median,
    scratch_dir,
    source_state,
    target,
    warm_memory,
    warn_if_busy,
)

import mirrorfs.resync  # noqa: F401  (imported lazily by Volume.resync; the API run is warm)
from mirrorfs.volume import Volume

NFILES = 64
CHUNK = 64 << 10
SEED = 4_2024
POOL_BYTES = 64 * MIB  # random pool the base data is sliced from (see file_pieces)
TIB = 1 << 40
DEFAULT_BASE = Path("/var/tmp/mirrorfs-bench")

BYTES_RATIO = 1.10  # bytes copied / bytes changed (W1, W2)
BTRFS_RATIO = 0.5  # W2 resync / btrfs send|receive
EXACT_RATIO = 3.0  # W2 resync / exact cp + sync
SCALE_RATIO = 1.3  # W3 resync / W2 resync
STATUS_S = 2.0  # mirrorfs status on 1 TiB


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    data_bytes: int
    changed_bytes: int
    volume_bytes: int

    @property
    def file_bytes(self) -> int:
        return self.data_bytes // NFILES

    @property
    def nchanges(self) -> int:
        return self.changed_bytes // CHUNK

    def as_json(self) -> dict[str, Any]:
        return {"data_bytes": self.data_bytes, "changed_bytes": self.changed_bytes,
                "volume_bytes": self.volume_bytes, "files": NFILES,
                "file_bytes": self.file_bytes, "write_size": CHUNK,
                "changes": self.nchanges, "seed": SEED}


FULL = {
    "W1": Workload("W1", 1 * GIB, 16 * MIB, 2 * GIB),
    "W2": Workload("W2", 8 * GIB, 80 * MIB, 12 * GIB),
    "W3": Workload("W3", 8 * GIB, 80 * MIB, 64 * GIB),
}
QUICK = {
    "W1": Workload("W1", 64 * MIB, 1 * MIB, 256 * MIB),
    "W2": Workload("W2", 128 * MIB, 2 * MIB, 512 * MIB),
    "W3": Workload("W3", 128 * MIB, 2 * MIB, 2 * GIB),
}


# -- the workload's bytes ------------------------------------------------------------


class Data:
    """The base data and the changes of a workload, deterministic from ``SEED``.

    Base data: 1 MiB pieces sliced at random 8-byte-aligned offsets from a
    64 MiB random pool (fast to produce; no two 4 KiB blocks alike in
    practice). Changes: distinct 64 KiB-aligned chunks, fresh random bytes,
    in random order; ``set_round(r)`` selects the change set of round ``r``
    (round 0 is the workload; later rounds are as large, at other offsets).
    """

    def __init__(self, w: Workload) -> None:
        self.w = w
        gen = np.random.Generator(np.random.SFC64([SEED, 0]))
        self.pool = memoryview(gen.bit_generator.random_raw(POOL_BYTES // 8).tobytes())
        self.set_round(0)

    def set_round(self, r: int) -> None:
        w = self.w
        per_file = w.file_bytes // CHUNK
        extra = [r] if r else []
        rng = np.random.default_rng([SEED, 1, *extra])
        idx = rng.choice(NFILES * per_file, size=w.nchanges, replace=False)
        self.files = (idx // per_file).astype(np.int64)
        self.offsets = ((idx % per_file) * CHUNK).astype(np.int64)
        self.changes = memoryview(np.random.Generator(np.random.SFC64([SEED, 2, *extra]))
                                  .bit_generator.random_raw(w.nchanges * CHUNK // 8).tobytes())

    def file_pieces(self, i: int) -> Iterator[memoryview]:
        n = -(-self.w.file_bytes // MIB)
        rng = np.random.default_rng([SEED, 3, i])
        starts = rng.integers(0, (POOL_BYTES - MIB) // 8, size=n) * 8
        left = self.w.file_bytes
        for s in starts.tolist():
            k = min(MIB, left)
            yield self.pool[s : s + k]
            left -= k

    def change(self, k: int) -> memoryview:
        return self.changes[k * CHUNK : (k + 1) * CHUNK]

    def iter_changes(self) -> Iterator[tuple[int, int, memoryview]]:
        for k, (f, off) in enumerate(zip(self.files.tolist(), self.offsets.tolist(),
                                         strict=True)):
            yield f, off, self.change(k)


def fname(i: int) -> str:
    return f"f{i:02d}"


# -- system helpers ----------------------------------------------------------------


_DROP: dict[str, Any] = {"method": "sync + echo 3 > /proc/sys/vm/drop_caches",
                         "permitted": None}


def drop_caches(fallback: Sequence[Path] = ()) -> None:
    """sync and drop page cache, dentries and inodes; fadvise(DONTNEED) if not permitted."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        _DROP["permitted"] = True
        return
    except OSError:
        _DROP["permitted"] = False
    for p in fallback:
        with contextlib.suppress(OSError):
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def run(cmd: Sequence[str | os.PathLike[str]], **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a command; raise with its stderr on failure."""
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({p.returncode}): "
                           f"{p.stderr.strip()[-2000:]}")
    return p


def timed(cmd: Sequence[str | os.PathLike[str]]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    p = run(cmd)
    return time.perf_counter() - t0, p


def sync_s() -> float:
    """The ``sync`` command, timed."""
    return timed(["sync"])[0]


def sparse_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    run(["cp", "--sparse=always", "--reflink=never", src, dst])


def allocated(p: Path) -> int:
    return p.stat().st_blocks * 512


def write_all(f: Any, data: memoryview) -> None:
    while len(data):
        n = f.write(data)
        data = data[n:]


def read_exact(f: Any, n: int) -> bytes:
    buf = bytearray(n)
    mv = memoryview(buf)
    got = 0
    while got < n:
        k = f.readinto(mv[got:])
        if not k:
            break
        got += k
    return bytes(buf[:got])


def mirrorfs_exe() -> str:
    exe = Path(sys.executable).parent / "mirrorfs"
    return str(exe) if exe.exists() else (shutil.which("mirrorfs") or "mirrorfs")


def rnd(x: float, n: int = 4) -> float:
    return round(x, n)


# -- mirrorfs ----------------------------------------------------------------------


def mirrorfs_build(work: Path, w: Workload, data: Data) -> tuple[Path, Path, Path]:
    """Write the data, take plex 2 offline, write the changes; returns (volume file, p1, p2)."""
    vf, p1, p2 = work / "mfs.toml", work / "mfs-p1.img", work / "mfs-p2.img"
    for p in (vf, p1, p2):
        p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    vol = Volume.create([str(p1), str(p2)], w.volume_bytes, volume_file=vf, cp_interval=None)
    try:
        for i in range(NFILES):
            with vol.open_file("/" + fname(i), "wb") as f:
                for piece in data.file_pieces(i):
                    write_all(f, piece)
            if (i + 1) % 8 == 0:
                log(f"  mirrorfs: {i + 1}/{NFILES} files written")
        vol.sync()
        vol.plex_offline(str(p2))
        apply_changes(vol, data)
    finally:
        vol.close()
    log(f"  mirrorfs: built in {time.perf_counter() - t0:.1f} s")
    return vf, p1, p2


def apply_changes(vol: Volume, data: Data) -> None:
    """Write the current round's changes and commit."""
    handles = {i: vol.open_file("/" + fname(i), "r+b") for i in range(NFILES)}
    try:
        for i, off, chunk in data.iter_changes():
            handles[i].seek(off)
            write_all(handles[i], chunk)
    finally:
        for h in handles.values():
            h.close()
    vol.sync()


def next_round(vf: Path, p2: Path, data: Data, r: int) -> None:
    """After a resync: plex 2 offline again and round ``r``'s changes written (untimed)."""
    data.set_round(r)
    vol = Volume.open(vf, cp_interval=None)
    try:
        vol.plex_offline(str(p2))
        apply_changes(vol, data)
    finally:
        vol.close()


def verify_plex(vf: Path, plex: Path, data: Data) -> bool:
    """Open ``plex`` alone read-only and compare every changed chunk."""
    vol = Volume.open(vf, read_only=True, only=[str(plex)], cp_interval=None)
    try:
        for i, off, chunk in data.iter_changes():
            with vol.open_file("/" + fname(i), "rb") as f:
                f.seek(off)
                if read_exact(f, CHUNK) != chunk:
                    return False
    finally:
        vol.close()
    return True


def mirrorfs_api_resync(vf: Path, plexes: Sequence[Path], name: str,
                        prof: Path | None) -> dict[str, Any]:
    drop_caches(plexes)
    c0 = time.process_time()
    t0 = time.perf_counter()
    with maybe_profile(f"resync_{name}", prof):
        vol = Volume.open(vf, cp_interval=None)
        t1 = time.perf_counter()
        try:
            rep = vol.resync()
            t2 = time.perf_counter()
        finally:
            vol.close()
        t3 = time.perf_counter()
    cpu = time.process_time() - c0
    if not rep.results or rep.results[0].error:
        raise RuntimeError(f"resync failed: {rep.as_dict()}")
    plan, res = rep.plans[0], rep.results[0]
    return {"seconds": rnd(t3 - t0), "bytes": res.bytes_copied,
            "open_s": rnd(t1 - t0), "resync_s": rnd(t2 - t1), "close_s": rnd(t3 - t2),
            "copy_loop_s": rnd(res.seconds), "cpu_s": rnd(cpu),
            "bytes_copied": res.bytes_copied, "blocks_copied": res.blocks_copied,
            "plan_bytes": plan.bytes, "plan_blocks": plan.blocks, "plan_extents": plan.extents,
            "plan_base": plan.base.name if plan.base else None, "plan_full_copy": plan.full,
            "process": "warm (mirrorfs already imported, same process)"}


ROUND_KEYS = ("seconds", "open_s", "resync_s", "close_s", "copy_loop_s", "cpu_s",
              "bytes_copied", "plan_bytes", "plan_extents", "plan_base", "verified")


def summarize_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Round 1 in full; ``seconds`` is the median over rounds, ``bytes`` round 1's."""
    out = dict(rounds[0])
    out["first_round_s"] = rounds[0]["seconds"]
    out["seconds"] = rnd(median([r["seconds"] for r in rounds]))
    out["bytes_copied_max"] = max(r["bytes_copied"] for r in rounds)
    out["rounds"] = [{k: r[k] for k in ROUND_KEYS if k in r} for r in rounds]
    return out


def mirrorfs_cli_resync(vf: Path, plexes: Sequence[Path]) -> dict[str, Any]:
    drop_caches(plexes)
    dt, p = timed([mirrorfs_exe(), "resync", "--json", vf])
    doc = json.loads(p.stdout)
    t = doc["targets"][0]
    return {"seconds": rnd(dt), "bytes": t["bytes_copied"], "bytes_copied": t["bytes_copied"],
            "copy_loop_s": t["seconds"], "plan_bytes": doc["plans"][0]["bytes"],
            "process": "cold (new interpreter: `mirrorfs resync --json VOLUME`)"}


def clone_volume(vf: Path, p1: Path, p2: Path, stem: str) -> tuple[Path, Path, Path]:
    """Sparse copies of both plexes and a volume file naming them."""
    c1, c2, cvf = vf.with_name(f"{stem}-p1.img"), vf.with_name(f"{stem}-p2.img"), \
        vf.with_name(f"{stem}.toml")
    sparse_copy(p1, c1)
    sparse_copy(p2, c2)
    text = vf.read_text()
    for old, new in ((p1, c1), (p2, c2)):
        if f'"{old}"' not in text:
            raise RuntimeError(f"{vf} does not name {old} as expected")
        text = text.replace(f'"{old}"', f'"{new}"')
    cvf.write_text(text)
    return cvf, c1, c2


# -- references on the image files ---------------------------------------------------


_RSYNC_STAT = re.compile(r"^(Literal data|Matched data|Total file size|Total bytes sent|"
                         r"Total bytes received): ([\d,]+)", re.M)


def rsync_ref(src: Path, stale: Path) -> dict[str, Any]:
    drop_caches([src, stale])
    dt, p = timed(["rsync", "-I", "--inplace", "--no-whole-file", "--stats", "--no-h",
                   src, stale])
    ds = sync_s()
    st = {k: int(v.replace(",", "")) for k, v in _RSYNC_STAT.findall(p.stdout)}
    size = src.stat().st_size
    return {"seconds": rnd(dt + ds), "rsync_s": rnd(dt), "sync_s": rnd(ds),
            "bytes": st.get("Literal data", -1), "literal_bytes": st.get("Literal data", -1),
            "matched_bytes": st.get("Matched data", -1),
            "bytes_sent": st.get("Total bytes sent", -1),
            "bytes_read": 2 * size, "image_size": size,
            "note": "bytes = rsync's Literal data; it reads both images whole (holes too)"}


def full_copy_ref(src: Path, dst: Path) -> dict[str, Any]:
    dst.unlink(missing_ok=True)
    drop_caches([src])
    dt, _ = timed(["cp", "--sparse=always", "--reflink=never", src, dst])
    ds = sync_s()
    out = {"seconds": rnd(dt + ds), "cp_s": rnd(dt), "sync_s": rnd(ds),
           "bytes": allocated(src), "image_size": src.stat().st_size}
    dst.unlink()
    return out


def exact_refs(work: Path, data: Data, repeats: int) -> dict[str, dict[str, Any]]:
    """cp + sync of exactly the changed bytes, and pwrite of them at their offsets + fdatasync."""
    w = data.w
    changes = work / "changes.bin"
    with open(changes, "wb") as f:
        f.write(data.changes)
        f.flush()
        os.fsync(f.fileno())
    nbytes = len(data.changes)
    cp_runs = []
    dst = work / "exact-cp.bin"
    for _ in range(repeats):
        dst.unlink(missing_ok=True)
        drop_caches([changes])
        dt, _ = timed(["cp", changes, dst])
        cp_runs.append((dt, sync_s()))
    dst.unlink(missing_ok=True)

    # the same chunks at their own offsets in one data-sized file, sorted and coalesced
    pos = data.files * w.file_bytes + data.offsets
    order = np.argsort(pos, kind="stable")
    runs: list[tuple[int, list[int]]] = []
    for k in order.tolist():
        p = int(pos[k])
        if runs and runs[-1][0] + CHUNK * len(runs[-1][1]) == p:
            runs[-1][1].append(k)
        else:
            runs.append((p, [k]))
    pw_runs = []
    dst = work / "exact-pwrite.bin"
    for _ in range(repeats):
        dst.unlink(missing_ok=True)
        fd = os.open(dst, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, w.data_bytes)
            for p, ks in runs:
                os.posix_fallocate(fd, p, CHUNK * len(ks))
            os.fsync(fd)
        finally:
            os.close(fd)
        drop_caches([changes, dst])
        t0 = time.perf_counter()
        src = os.open(changes, os.O_RDONLY)
        fd = os.open(dst, os.O_WRONLY)
        try:
            buf = bytearray(nbytes)
            mv = memoryview(buf)
            got = 0
            while got < nbytes:
                got += os.readv(src, [mv[got : got + 8 * MIB]])
            for p, ks in runs:
                os.pwritev(fd, [mv[k * CHUNK : (k + 1) * CHUNK] for k in ks], p)
            os.fdatasync(fd)
        finally:
            os.close(fd)
            os.close(src)
        pw_runs.append(time.perf_counter() - t0)
    dst.unlink(missing_ok=True)
    changes.unlink(missing_ok=True)
    tot = [a + b for a, b in cp_runs]
    return {
        "exact_cp": {"seconds": rnd(median(tot)), "bytes": nbytes,
                     "runs_s": [rnd(x) for x in tot],
                     "cp_s": [rnd(a) for a, _ in cp_runs], "sync_s": [rnd(b) for _, b in cp_runs],
                     "note": "cp of a file of exactly the changed bytes + sync; median"},
        "exact_pwrite": {"seconds": rnd(median(pw_runs)), "bytes": nbytes,
                         "runs_s": [rnd(x) for x in pw_runs], "writes": len(runs),
                         "note": "read the changed bytes, pwritev at their own offsets "
                                 "(coalesced) into a preallocated file, fdatasync; median"},
    }


# -- btrfs -------------------------------------------------------------------------


class Btrfs:
    """Two btrfs file systems on loop devices; everything undone by ``close``."""

    def __init__(self, work: Path, size: int) -> None:
        self.work = work
        self.size = size
        self.loops: list[str] = []
        self.mounts: list[Path] = []
        self.images = [work / "btrfs-A.img", work / "btrfs-B.img"]

    def open(self) -> tuple[Path, Path]:
        mnts = []
        for img, tag in zip(self.images, "AB", strict=True):
            img.unlink(missing_ok=True)
            with open(img, "wb") as f:
                f.truncate(self.size)
            dev = run(["losetup", "-f", "--show", img]).stdout.strip()
            self.loops.append(dev)
            run(["mkfs.btrfs", "-f", "-q", "-K", dev])
            mnt = self.work / f"mnt-{tag}"
            mnt.mkdir(exist_ok=True)
            run(["mount", dev, mnt])
            self.mounts.append(mnt)
            mnts.append(mnt)
        return mnts[0], mnts[1]

    def close(self) -> None:
        for mnt in reversed(self.mounts):
            try:
                run(["umount", mnt])
            except RuntimeError as e:
                log(f"  btrfs: {e}; lazy unmount")
                subprocess.run(["umount", "-l", str(mnt)], check=False)
        self.mounts.clear()
        for dev in reversed(self.loops):
            subprocess.run(["losetup", "-d", dev], check=False)
        self.loops.clear()
        for img in self.images:
            img.unlink(missing_ok=True)


def btrfs_ref(work: Path, data: Data, repeats: int) -> dict[str, Any]:
    w = data.w
    fs = Btrfs(work, w.volume_bytes)
    try:
        a, b = fs.open()
        t0 = time.perf_counter()
        run(["btrfs", "subvolume", "create", a / "data"])
        for i in range(NFILES):
            with open(a / "data" / fname(i), "wb") as f:
                for piece in data.file_pieces(i):
                    f.write(piece)
        os.sync()
        run(["btrfs", "subvolume", "snapshot", "-r", a / "data", a / "base"])
        run(["bash", "-o", "pipefail", "-c",
             f"btrfs send -q '{a}/base' | btrfs receive -q '{b}'"])
        os.sync()
        handles = {i: open(a / "data" / fname(i), "r+b") for i in range(NFILES)}  # noqa: SIM115
        try:
            for i, off, chunk in data.iter_changes():
                handles[i].seek(off)
                handles[i].write(chunk)
        finally:
            for h in handles.values():
                h.close()
        os.sync()
        run(["btrfs", "subvolume", "snapshot", "-r", a / "data", a / "new"])
        os.sync()
        log(f"  btrfs: built in {time.perf_counter() - t0:.1f} s")
        runs: list[tuple[float, float]] = []
        for r in range(repeats):
            if r:
                run(["btrfs", "subvolume", "delete", "-c", b / "new"])
                run(["btrfs", "subvolume", "sync", b])
            drop_caches()
            dt, _ = timed(["bash", "-o", "pipefail", "-c",
                           f"btrfs send -q -p '{a}/base' '{a}/new' | btrfs receive -q '{b}'"])
            runs.append((dt, sync_s()))
            log(f"  btrfs send|receive run {r + 1}: {dt:.2f} s + sync {runs[-1][1]:.2f} s")
        ok = True
        for i, off, chunk in data.iter_changes():
            with open(b / "new" / fname(i), "rb") as f:
                f.seek(off)
                if f.read(CHUNK) != chunk:
                    ok = False
                    break
        stream = work / "btrfs-stream.bin"
        run(["btrfs", "send", "-q", "-p", a / "base", "-f", stream, a / "new"])
        nbytes = stream.stat().st_size
        stream.unlink()
    finally:
        fs.close()
    tot = [x + y for x, y in runs]
    return {"seconds": rnd(median(tot)), "bytes": nbytes, "stream_bytes": nbytes,
            "runs_s": [rnd(x) for x in tot], "pipe_s": [rnd(x) for x, _ in runs],
            "sync_s": [rnd(y) for _, y in runs], "verified": ok,
            "note": "btrfs send -p base new | btrfs receive, then sync; median of runs"}


# -- status on a large sparse volume ------------------------------------------------


def status_large(work: Path, size: int, repeats: int) -> dict[str, Any]:
    vf, p1, p2 = work / "big.toml", work / "big-p1.img", work / "big-p2.img"
    try:
        vol = Volume.create([str(p1), str(p2)], size, volume_file=vf, cp_interval=None)
        try:
            with vol.open_file("/f", "wb") as f:
                write_all(f, memoryview(os.urandom(16 * MIB)))
            vol.sync()
            vol.plex_offline(str(p2))
            with vol.open_file("/f", "r+b") as f:
                f.seek(4 * MIB)
                write_all(f, memoryview(os.urandom(MIB)))
            vol.sync()
        finally:
            vol.close()
        runs = []
        doc: dict[str, Any] = {}
        for r in range(repeats):
            if r == 0:
                drop_caches([p1, p2])
            dt, proc = timed([mirrorfs_exe(), "status", "--json", vf])
            runs.append(dt)
            doc = json.loads(proc.stdout)
        startup = [timed([mirrorfs_exe(), "--help"])[0] for _ in range(repeats)]
        plan = doc["plan"][0] if doc.get("plan") else {}
        return {"volume_bytes": size, "seconds": rnd(median(runs)),
                "runs_s": [rnd(x) for x in runs], "first_run_cold": True,
                "cli_startup_s": rnd(median(startup)),
                "plan_bytes": plan.get("bytes"), "plan_extents": plan.get("extents"),
                "plan_base": (plan.get("base") or {}).get("name"),
                "changed_bytes": MIB,
                "note": "mirrorfs status --json (examine + plan) as a subprocess; median"}
    finally:
        for p in (vf, p1, p2):
            p.unlink(missing_ok=True)


# -- one workload ------------------------------------------------------------------


def free_bytes(where: Path) -> int:
    return shutil.disk_usage(where).free


def one_workload(work: Path, w: Workload, args: argparse.Namespace) -> dict[str, Any]:
    log(f"{w.name}: {w.data_bytes / GIB:g} GiB in {NFILES} files, {w.changed_bytes / MIB:g} MiB "
        f"changed, volume {w.volume_bytes / GIB:g} GiB")
    data = Data(w)
    out: dict[str, Any] = {"workload": w.as_json()}
    cli = not args.no_cli
    if cli and free_bytes(work) < 5.5 * w.data_bytes:
        log("  not enough free disk for the CLI run's copies; API only")
        cli = False
    vf, p1, p2 = mirrorfs_build(work, w, data)
    extra: list[Path] = []
    try:
        stale = work / "rsync-p2.img"
        if not args.no_image_refs:
            sparse_copy(p2, stale)
            extra.append(stale)
        if cli:
            cvf, c1, c2 = clone_volume(vf, p1, p2, "cli")
            extra += [cvf, c1, c2]
        log("  mirrorfs: resync (API), round 1")
        api = mirrorfs_api_resync(vf, [p1, p2], f"{w.name}_r1", args.profile)
        api["verified"] = verify_plex(vf, p2, data)
        log(f"  mirrorfs API: {api['seconds']:.2f} s, {api['bytes_copied'] / MIB:.2f} MiB "
            f"copied, verified={api['verified']}")
        rounds = [api]
        if cli:
            log("  mirrorfs: resync (CLI)")
            out["mirrorfs_cli"] = c = mirrorfs_cli_resync(cvf, [c1, c2])
            log(f"  mirrorfs CLI: {c['seconds']:.2f} s")
            for p in (cvf, c1, c2):
                p.unlink(missing_ok=True)
        if args.no_image_refs:
            out["rsync"] = out["full_copy"] = {"skipped": "--no-image-refs"}
        else:
            log("  rsync --inplace")
            out["rsync"] = r = rsync_ref(p1, stale)
            log(f"  rsync: {r['seconds']:.2f} s, literal {r['literal_bytes'] / MIB:.2f} MiB")
            stale.unlink(missing_ok=True)
            log("  full copy")
            out["full_copy"] = fc = full_copy_ref(p1, work / "full.img")
            log(f"  full copy: {fc['seconds']:.2f} s")
        out["images"] = {"plex_size": p1.stat().st_size, "plex1_allocated": allocated(p1),
                         "plex2_allocated": allocated(p2)}
        for rn in range(1, args.rounds):
            next_round(vf, p2, data, rn)
            log(f"  mirrorfs: resync (API), round {rn + 1}")
            rounds.append(mirrorfs_api_resync(vf, [p1, p2], f"{w.name}_r{rn + 1}",
                                              args.profile))
            log(f"  mirrorfs API: {rounds[-1]['seconds']:.2f} s, "
                f"{rounds[-1]['bytes_copied'] / MIB:.2f} MiB copied")
        if len(rounds) > 1:
            rounds[-1]["verified"] = verify_plex(vf, p2, data)
        data.set_round(0)
        out["mirrorfs_api"] = summarize_rounds(rounds)
    finally:
        for p in (vf, p1, p2, work / "full.img", *extra):
            p.unlink(missing_ok=True)
    log("  exact copies")
    out.update(exact_refs(work, data, args.repeat))
    log(f"  exact cp+sync {out['exact_cp']['seconds']:.2f} s, "
        f"pwrite+fdatasync {out['exact_pwrite']['seconds']:.2f} s")
    if args.no_btrfs:
        out["btrfs"] = {"skipped": "--no-btrfs"}
    else:
        log("  btrfs")
        try:
            out["btrfs"] = bt = btrfs_ref(work, data, args.repeat)
            log(f"  btrfs: {bt['seconds']:.2f} s, stream {bt['bytes'] / MIB:.2f} MiB")
        except (RuntimeError, OSError) as e:
            log(f"  btrfs failed: {e}")
            out["btrfs"] = {"error": str(e)}
    out["ratios"] = ratios(w, out)
    return out


def ratios(w: Workload, r: dict[str, Any]) -> dict[str, float | None]:
    api = r["mirrorfs_api"]

    def per(key: str) -> float | None:
        s = r.get(key, {}).get("seconds")
        return rnd(api["seconds"] / s, 3) if s else None

    first = api.get("first_round_s", api["seconds"])
    ex, bt = r.get("exact_cp", {}).get("seconds"), r.get("btrfs", {}).get("seconds")
    return {"bytes_copied_per_changed": rnd(api["bytes_copied"] / w.changed_bytes, 4),
            "bytes_copied_max_per_changed": rnd(api.get("bytes_copied_max", 0)
                                                / w.changed_bytes, 4),
            "first_round_per_btrfs": rnd(first / bt, 3) if bt else None,
            "first_round_per_exact_cp": rnd(first / ex, 3) if ex else None,
            "plan_bytes_per_changed": rnd(api["plan_bytes"] / w.changed_bytes, 4),
            "resync_per_btrfs": per("btrfs"), "resync_per_exact_cp": per("exact_cp"),
            "resync_per_exact_pwrite": per("exact_pwrite"), "resync_per_rsync": per("rsync"),
            "resync_per_full_copy": per("full_copy")}


def targets(res: dict[str, Any], status: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("W1", "W2"):
        if name in res:
            r = res[name]["ratios"]["bytes_copied_per_changed"]
            out[f"{name}_bytes_copied_per_changed"] = target(
                r, "<=", BYTES_RATIO, "x bytes changed", "bytes_copied from the resync report")
    if "W2" in res:
        w2 = res["W2"]
        s = w2["mirrorfs_api"]["seconds"]
        bt = w2["btrfs"].get("seconds")
        out["W2_resync_per_btrfs"] = target(s / bt if bt else float("inf"), "<=", BTRFS_RATIO,
                                            "x btrfs send|receive+sync",
                                            "API resync, median of rounds (warm process) / "
                                            "median btrfs run")
        out["W2_resync_per_exact_cp"] = target(
            s / w2["exact_cp"]["seconds"], "<=", EXACT_RATIO, "x exact cp+sync",
            "API resync, median of rounds / the cp command on a file of exactly the "
            "changed bytes, plus sync (median)")
    if "W2" in res and "W3" in res:
        v2, v3 = (res[n]["workload"]["volume_bytes"] / GIB for n in ("W2", "W3"))
        out["W3_per_W2_resync"] = target(
            res["W3"]["mirrorfs_api"]["seconds"] / res["W2"]["mirrorfs_api"]["seconds"], "<=",
            SCALE_RATIO, "x W2", f"{v3:g} GiB volume vs {v2:g} GiB, same data and change; "
            "medians of rounds")
    if status is not None:
        out["status_1tib_s"] = target(status["seconds"], "<", STATUS_S, "s",
                                      "mirrorfs status --json subprocess, median")
    return out


# -- plot --------------------------------------------------------------------------


METHODS = [("mirrorfs_api", "mirrorfs resync (API)", "o"),
           ("mirrorfs_cli", "mirrorfs resync (CLI)", "s"),
           ("btrfs", "btrfs send -p | receive", "^"),
           ("rsync", "rsync --inplace", "v"),
           ("full_copy", "full copy (cp)", "D"),
           ("exact_cp", "exact bytes: cp + sync", "P"),
           ("exact_pwrite", "exact bytes: pwrite + fdatasync", "X")]


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    for key, label, marker in METHODS:
        pts = [(res[n]["workload"]["changed_bytes"] / MIB, res[n][key]["seconds"], n)
               for n in names if res[n].get(key, {}).get("seconds") is not None]
        if not pts:
            continue
        main = [p for p in pts if p[2] != "W3"]
        line = ax1.plot([p[0] for p in main], [p[1] for p in main], marker=marker,
                        label=label)[0] if main else None
        w3 = [p for p in pts if p[2] == "W3"]
        if w3:
            ax1.scatter([p[0] * 1.04 for p in w3], [p[1] for p in w3], marker=marker,
                        facecolors="none",
                        edgecolors=line.get_color() if line else "k",
                        label=None if line else label)
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    w3 = res.get("W3", {}).get("workload", {}).get("volume_bytes")
    ax1.set_xlabel("MiB changed (W1, W2" + (f"; hollow: W3 = W2 on a {w3 / GIB:g} GiB volume)"
                                             if w3 else ")"))
    ax1.set_ylabel("seconds (cold cache, incl. final sync)")
    ax1.set_title("Time to bring the stale copy up to date")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)

    width = 0.8 / len(METHODS)
    for j, (key, label, _) in enumerate(METHODS):
        xs, ys = [], []
        for i, n in enumerate(names):
            b = res[n].get(key, {}).get("bytes")
            if b:
                xs.append(i + (j - len(METHODS) / 2 + 0.5) * width)
                ys.append(b / MIB)
        if xs:
            ax2.bar(xs, ys, width, label=label)
    for i, n in enumerate(names):
        ch = res[n]["workload"]["changed_bytes"] / MIB
        ax2.hlines(ch, i - 0.45, i + 0.45, colors="k", linestyles="--", linewidth=1)
    ax2.set_xticks(range(len(names)))
    ax2.set_xticklabels([f"{n}\n{res[n]['workload']['data_bytes'] / GIB:g} GiB data, "
                         f"{res[n]['workload']['volume_bytes'] / GIB:g} GiB vol"
                         for n in names], fontsize=8)
    ax2.set_yscale("log")
    ax2.set_ylabel("MiB moved (dashed: MiB changed; rsync: literal data; "
                   "full copy: allocated)", fontsize=8)
    ax2.set_title("Bytes moved per method")
    ax2.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log(f"plot -> {path}")


# -- main --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    ap.add_argument("--dir", help="scratch dir on a real disk (default: a fresh dir under "
                                  f"{DEFAULT_BASE})")
    ap.add_argument("--quick", action="store_true", help="scaled-down workloads, a smoke run")
    ap.add_argument("--workloads", default="W1,W2,W3", help="comma list of W1,W2,W3")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of the btrfs, exact-copy and status figures (median)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="API resync rounds per workload (median); round 1 is the workload, "
                         "each later one takes plex 2 offline again and changes as much")
    ap.add_argument("--no-cli", action="store_true", help="skip the CLI resync run")
    ap.add_argument("--no-btrfs", action="store_true", help="skip btrfs")
    ap.add_argument("--no-image-refs", action="store_true",
                    help="skip rsync and the full copy of the images")
    ap.add_argument("--no-status", action="store_true", help="skip the 1 TiB status test")
    ap.add_argument("--status-size", type=int, default=TIB, help="bytes (default 1 TiB)")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="profile the API resyncs with pyinstrument into DIR")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir")
    args = ap.parse_args(argv)
    table = QUICK if args.quick else FULL
    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
    bad = [w for w in chosen if w not in table]
    if bad:
        ap.error(f"unknown workload(s): {', '.join(bad)}")
    if os.geteuid() != 0 and not args.no_btrfs:
        ap.error("btrfs needs root (loop devices, mount); use --no-btrfs")

    with scratch_dir(args.dir, args.keep, base=DEFAULT_BASE, prefix="resync-") as work:
        doc: dict[str, Any] = {"benchmark": "resync", "machine": machine_info(work),
                               "mirrorfs_source": source_state()}
        doc["config"] = {"quick": args.quick, "workloads": chosen, "repeat": args.repeat,
                         "rounds": args.rounds,
                         "cli_run": not args.no_cli, "image_refs": not args.no_image_refs,
                         "btrfs": not args.no_btrfs, "profiled": args.profile is not None,
                         "block_size": 4096, "plexes": 2}
        need = max((table[w].data_bytes for w in chosen), default=0) * 3.5
        if free_bytes(work) < need:
            log(f"WARNING: {free_bytes(work) / GIB:.1f} GiB free in {work}; the largest "
                f"workload needs about {need / GIB:.1f} GiB (more with the CLI run)")
        warn_if_busy()
        if not args.quick:
            doc["machine"]["memory_warmup"] = warm_memory()
        t_all = time.perf_counter()
        res: dict[str, Any] = {}
        for name in chosen:
            res[name] = one_workload(work, table[name], args)
        status = None
        if not args.no_status:
            log(f"status on a {args.status_size / GIB:g} GiB sparse volume")
            status = status_large(work, args.status_size, args.repeat)
            log(f"  status: {status['seconds']:.2f} s (startup {status['cli_startup_s']:.2f} s)")
        doc["cache_drop"] = dict(_DROP)
        doc["workloads"] = res
        doc["status_1tib"] = status
        doc["targets"] = targets(res, status)
        doc["all_hold"] = all(t["holds"] for t in doc["targets"].values())
        doc["elapsed_s"] = round(time.perf_counter() - t_all, 1)
        doc["machine"]["loadavg_end"] = loadavg()
    kind = ".profiled" if args.profile else ".quick" if args.quick else ""
    out = args.out or RESULTS_DIR / f"resync{kind}.json"
    emit("resync", doc, out)
    if res:
        plot(res, out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
