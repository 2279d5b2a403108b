"""File system throughput through the Python API, against dd on the same disk, in one run.

Measures, on image files in one scratch directory (default: a fresh dir
under /var/tmp, never tmpfs):

seq_write
    One file written in 1 MiB ``write`` calls (the same random 1 MiB buffer
    repeated), then ``vol.sync()``: the time includes every CP, the last
    one too. Before it, 256 MiB go untimed through a throwaway volume
    (``mirrorfs.warmup``): a fresh process's first writes pay for growing
    its heap (page faults, and on this VM host faults too), which a
    long-lived writer has paid already and ``dd``, reusing one buffer, never
    pays. References: ``dd if=/dev/zero ... conv=fdatasync`` and dd of
    the same random buffer through a pipe; the ratio is against the faster.
    Target: mirrorfs / dd >= 0.7.
seq_read_cold
    The volume reopened after its plex images were dropped from the page
    cache (see ``_common.drop_cache``; ``cache`` says which method worked and
    what stayed resident), then the file read in 1 MiB ``readinto`` calls,
    each checked against the buffer written. Reference: ``dd if=IMG
    of=/dev/null bs=1M`` on dd's image, dropped the same way. Target: >= 0.5.
small_files
    10,000 files of 1 KiB created in one directory, then one commit. Target:
    < 5 s (scaled by the file count when ``--files`` differs).
snapshots
    With 1 GiB and then 8 GiB of data on the volume: the median time of
    several ``vol.snapshot`` calls (a 1 MiB change and a commit before each,
    untimed), then of as many ``vol.delete_snapshot`` calls. Targets (issue
    2): create < 50 ms at the small size and at most 1.5x that at the large
    size. Delete has no target and is reported in ``snapshot_delete``: it is
    not O(1), since it commits and then rebuilds the union of the remaining
    snapshots' planes, a cost that grows with the data they map (the first
    of seven deletes at 8 GiB took 10-22 ms, the last 1.5 ms).

Reading the output. stdout is one JSON document (also written to
``bench/results/fs_api.json``): ``machine`` (nproc, python, disk free, date,
load averages), ``config``, one object per test with raw timings, and
``targets``: every figure with its ``value``, ``target`` and ``holds``;
``all_hold`` is their conjunction. MB/s are decimal megabytes, as dd reports.
``cpu_s`` is this process's CPU time: on a busy machine (see
``machine.loadavg_start``) wall times of CPU-bound tests grow and it does not.
Throughput ratios compare runs made seconds apart on a VM disk whose speed
drifts, so a ratio near its bound should be re-run before it is believed.

``--quick`` shrinks the data sizes (64 MiB; 64 and 256 MiB) for a smoke run
under 30 s; the small-file test keeps its 10,000 files. ``--profile
DIR`` runs the tests under pyinstrument and writes ``DIR/<test>.txt`` and
``.html``; profiled timings are slower and are written to
``bench/results/fs_api.profiled.json`` instead (and quick runs to
``fs_api.quick.json``), so neither overwrites the figures of a full run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    GIB,
    MIB,
    RESULTS_DIR,
    Timed,
    dd_read,
    dd_write_pattern,
    dd_write_zero,
    drop_cache,
    emit,
    loadavg,
    log,
    machine_info,
    maybe_profile,
    median,
    read_back,
    scratch_dir,
    source_state,
    target,
    warm_memory,
    warn_if_busy,
)

from mirrorfs.volume import Volume

WRITE_RATIO = 0.7  # mirrorfs / dd, sequential write with commit
WARMUP_MIB = 256  # written untimed through a throwaway volume before the timed write
READ_RATIO = 0.5  # mirrorfs / dd, sequential cold read
SMALL_FILES_S = 5.0  # seconds for 10,000 creates of 1 KiB plus one commit
SMALL_FILES_N = 10_000
SNAP_CREATE_MS = 50.0  # median snapshot create at the small data size
SNAP_SCALE = 1.5  # most growth of that median from the small to the large size


def _plex_paths(work: Path, stem: str, n: int) -> list[str]:
    return [str(work / f"{stem}-p{i}.img") for i in range(n)]


def _create(work: Path, stem: str, size: int, plexes: int) -> Volume:
    """A fresh volume on sparse images; no CP timer, so every commit is one we ask for."""
    for p in _plex_paths(work, stem, plexes):
        Path(p).unlink(missing_ok=True)
    return Volume.create(_plex_paths(work, stem, plexes), size,
                         volume_file=work / f"{stem}.toml", cp_interval=None)


def _fill(vol: Volume, path: str, mib: int, pattern: bytes, mode: str = "wb") -> None:
    with vol.open_file(path, mode) as f:
        for _ in range(mib):
            f.write(pattern)


# -- tests ------------------------------------------------------------------------


def seq_write(work: Path, mib: int, plexes: int, pattern: bytes,
              prof: Path | None) -> dict[str, Any]:
    log(f"seq_write: dd if=/dev/zero, {mib} MiB")
    dd_zero = dd_write_zero(work / "dd.img", mib)
    log(f"  {dd_zero.mb_s:.0f} MB/s")

    warm_mib = min(mib, WARMUP_MIB)
    log(f"seq_write: mirrorfs, {warm_mib} MiB untimed first (this process's heap grows)")
    tw = time.perf_counter()
    vol = _create(work, "warm", warm_mib * MIB * 5 // 4 + 256 * MIB, plexes)
    _fill(vol, "/warm", warm_mib, pattern)
    vol.close()
    for p in [*_plex_paths(work, "warm", plexes), str(work / "warm.toml")]:
        Path(p).unlink()
    warm_s = time.perf_counter() - tw
    log(f"seq_write: mirrorfs, {mib} MiB on {plexes} plex(es)")
    vol = _create(work, "seq", mib * MIB * 5 // 4 + 256 * MIB, plexes)
    vol.sync()
    cp0 = vol.store.cp
    os.sync()
    with maybe_profile("seq_write", prof):
        c0, t0 = time.process_time(), time.perf_counter()
        _fill(vol, "/seq", mib, pattern)
        t1 = time.perf_counter()
        vol.sync()
        t2, c2 = time.perf_counter(), time.process_time()
    cps = vol.store.cp - cp0
    vol.close()
    mfs = Timed(t2 - t0, mib * MIB)
    log(f"  {mfs.mb_s:.0f} MB/s ({t1 - t0:.2f} s writes, {t2 - t1:.2f} s final sync, "
        f"{cps} CPs)")

    log(f"seq_write: dd of the same random MiB through a pipe, {mib} MiB")
    dd_pat = dd_write_pattern(work / "dd.img", mib, pattern)
    log(f"  {dd_pat.mb_s:.0f} MB/s")
    ref = max(dd_zero.mb_s, dd_pat.mb_s)
    return {
        "bytes": mib * MIB,
        "plexes": plexes,
        "mirrorfs": {**mfs.as_json(), "write_calls_s": round(t1 - t0, 4),
                     "final_sync_s": round(t2 - t1, 4), "cpu_s": round(c2 - c0, 4),
                     "cps": cps, "warmup": {"bytes": warm_mib * MIB, "seconds": round(warm_s, 4)}},
        "dd_zero": dd_zero.as_json(),
        "dd_pattern": dd_pat.as_json(),
        "ratio": round(mfs.mb_s / ref, 4),
        "ratio_against": "faster of dd_zero and dd_pattern",
    }


def seq_read_cold(work: Path, mib: int, plexes: int, pattern: bytes,
                  prof: Path | None) -> dict[str, Any]:
    images = _plex_paths(work, "seq", plexes)
    log("seq_read_cold: dropping the plex images from the page cache")
    cache = drop_cache(images)
    t0 = time.perf_counter()
    vol = Volume.open(work / "seq.toml", cp_interval=None)
    t_open = time.perf_counter() - t0
    with maybe_profile("seq_read_cold", prof):
        wall, cpu = read_back(vol, "/seq", pattern, mib)
    vol.close()
    n = mib * MIB
    mfs = Timed(wall, n)
    log(f"  mirrorfs {mfs.mb_s:.0f} MB/s (open {t_open * 1000:.0f} ms); cache: {cache}")

    dd_cache = drop_cache([work / "dd.img"])
    dd = dd_read(work / "dd.img")
    log(f"  dd {dd.mb_s:.0f} MB/s")
    return {
        "bytes": n,
        "mirrorfs": {**mfs.as_json(), "open_s": round(t_open, 4), "cpu_s": round(cpu, 4)},
        "dd": dd.as_json(),
        "ratio": round(mfs.mb_s / dd.mb_s, 4),
        "cache": cache,
        "dd_cache": dd_cache,
    }


def small_files(work: Path, count: int, plexes: int, prof: Path | None) -> dict[str, Any]:
    log(f"small_files: {count} files of 1 KiB in one directory, then one commit")
    vol = _create(work, "small", 1 * GIB, plexes)
    vol.mkdir("/d")
    vol.sync()
    data = os.urandom(1024)
    os.sync()
    with maybe_profile("small_files", prof):
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(count):
            vol.write_bytes(f"/d/f{i:05d}", data)
        t1 = time.perf_counter()
        vol.sync()
        t2, c2 = time.perf_counter(), time.process_time()
    listed = len(vol.listdir("/d"))
    vol.close()
    if listed != count:
        raise SystemExit(f"small_files: /d lists {listed} names, {count} were created")
    log(f"  {t2 - t0:.2f} s ({t1 - t0:.2f} s creates, {t2 - t1:.2f} s commit)")
    return {"files": count, "file_bytes": 1024, "seconds": round(t2 - t0, 4),
            "create_s": round(t1 - t0, 4), "commit_s": round(t2 - t1, 4),
            "cpu_s": round(c2 - c0, 4), "files_per_s": round(count / (t2 - t0), 1)}


def _snap_round(vol: Volume, repeats: int, tag: str, prof: Path | None
                ) -> dict[str, Any]:
    creates: list[float] = []
    deletes: list[float] = []
    with maybe_profile(f"snapshots_{tag}", prof):
        for j in range(repeats):
            with vol.open_file("/touch", "r+b" if vol.exists("/touch") else "wb") as f:
                f.seek(j * MIB)
                f.write(os.urandom(MIB))
            vol.sync()
            t0 = time.perf_counter()
            vol.snapshot(f"{tag}-{j}")
            creates.append((time.perf_counter() - t0) * 1000)
        for j in range(repeats):
            t0 = time.perf_counter()
            vol.delete_snapshot(f"{tag}-{j}")
            deletes.append((time.perf_counter() - t0) * 1000)
    log(f"  create median {median(creates):.1f} ms, delete median {median(deletes):.1f} ms")
    return {"create_ms": [round(x, 2) for x in creates],
            "delete_ms": [round(x, 2) for x in deletes],
            "create_median_ms": round(median(creates), 2),
            "delete_median_ms": round(median(deletes), 2)}


def snapshots(work: Path, small_mib: int, large_mib: int, repeats: int, plexes: int,
              pattern: bytes, prof: Path | None) -> dict[str, Any]:
    size = large_mib * MIB * 5 // 4 + GIB
    log(f"snapshots: volume of {size / GIB:.1f} GiB, filling {small_mib} MiB")
    vol = _create(work, "snap", size, plexes)
    t0 = time.perf_counter()
    _fill(vol, "/fill", small_mib, pattern)
    vol.sync()
    fill_small = time.perf_counter() - t0
    small = _snap_round(vol, repeats, "small", prof)
    log(f"snapshots: filling to {large_mib} MiB")
    t0 = time.perf_counter()
    _fill(vol, "/fill", large_mib - small_mib, pattern, mode="ab")
    vol.sync()
    fill_large = time.perf_counter() - t0
    large = _snap_round(vol, repeats, "large", prof)
    vol.close()
    return {"small_bytes": small_mib * MIB, "large_bytes": large_mib * MIB,
            "volume_bytes": size, "repeats": repeats,
            "fill_s": [round(fill_small, 2), round(fill_large, 2)],
            "small": small, "large": large}


# -- driver ------------------------------------------------------------------------


def _targets(res: dict[str, Any], files_target_s: float, quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "seq_write" in res:
        out["seq_write_ratio"] = target(res["seq_write"]["ratio"], ">=", WRITE_RATIO, "x dd")
    if "seq_read_cold" in res:
        out["seq_read_cold_ratio"] = target(res["seq_read_cold"]["ratio"], ">=", READ_RATIO,
                                            "x dd")
    if "small_files" in res:
        sf = res["small_files"]
        note = "" if sf["files"] == SMALL_FILES_N else f"scaled to {sf['files']} files"
        out["small_files_s"] = target(sf["seconds"], "<", files_target_s, "s", note)
    if "snapshots" in res:
        s = res["snapshots"]
        sizes = f"{s['small_bytes'] >> 20} MiB and {s['large_bytes'] >> 20} MiB"
        note = f"quick sizes: {sizes}" if quick else ""
        lo = s["small"]["create_median_ms"]
        hi = s["large"]["create_median_ms"]
        out["snapshot_create_small_ms"] = target(lo, "<", SNAP_CREATE_MS, "ms", note)
        out["snapshot_create_scale"] = target(hi / lo if lo > 0 else float("inf"), "<=",
                                              SNAP_SCALE, "x small", note)
    return out


def _delete_figures(s: dict[str, Any]) -> dict[str, Any]:
    """Snapshot delete medians and their growth with the data: figures, not targets."""
    lo = s["small"]["delete_median_ms"]
    hi = s["large"]["delete_median_ms"]
    return {"small_median_ms": lo, "large_median_ms": hi,
            "scale": round(hi / lo, 4) if lo > 0 else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--dir", help="where images go (default: a fresh dir under /var/tmp)")
    ap.add_argument("--size-gib", type=float, default=1.0,
                    help="sequential write/read size in GiB (default 1)")
    ap.add_argument("--quick", action="store_true", help="small sizes, a smoke run < 30 s")
    ap.add_argument("--plexes", type=int, default=1,
                    help="plexes per volume (default 1, like the single dd image)")
    ap.add_argument("--files", type=int, default=None, help="small files (default 10000)")
    ap.add_argument("--snap-gib", type=float, nargs=2, default=None, metavar=("SMALL", "LARGE"),
                    help="data on the volume for the snapshot test (default 1 8)")
    ap.add_argument("--snap-repeats", type=int, default=7, help="creates and deletes per size")
    ap.add_argument("--only", default="write,read,files,snap",
                    help="comma list of tests: write,read,files,snap (read needs write)")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="profile each test with pyinstrument into DIR")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir")
    args = ap.parse_args(argv)

    seq_mib = 64 if args.quick else int(args.size_gib * 1024)
    files = args.files or SMALL_FILES_N
    snap = args.snap_gib or ((1 / 16, 1 / 4) if args.quick else (1.0, 8.0))
    snap_mib = (int(snap[0] * 1024), int(snap[1] * 1024))
    repeats = 3 if args.quick and args.snap_repeats == 7 else args.snap_repeats
    tests = set(args.only.split(","))
    if "read" in tests and "write" not in tests:
        ap.error("--only read needs write too (it reads the file seq_write wrote)")
    if snap_mib[1] <= snap_mib[0]:
        ap.error("--snap-gib: LARGE must exceed SMALL")
    files_target_s = SMALL_FILES_S * files / SMALL_FILES_N
    pattern = os.urandom(MIB)
    prof = args.profile

    with scratch_dir(args.dir, args.keep) as work:
        doc: dict[str, Any] = {"benchmark": "fs_api", "machine": machine_info(work),
                               "source": source_state()}
        doc["config"] = {"quick": args.quick, "seq_bytes": seq_mib * MIB, "files": files,
                         "snap_bytes": [m * MIB for m in snap_mib], "snap_repeats": repeats,
                         "plexes": args.plexes, "block_size": 4096, "io_size": MIB,
                         "data": "one random 1 MiB buffer, repeated",
                         "profiled": prof is not None}
        warn_if_busy()
        if not args.quick:
            doc["machine"]["memory_warmup"] = warm_memory()
        res: dict[str, Any] = {}
        t_all = time.perf_counter()
        if "write" in tests:
            res["seq_write"] = seq_write(work, seq_mib, args.plexes, pattern, prof)
        if "read" in tests:
            res["seq_read_cold"] = seq_read_cold(work, seq_mib, args.plexes, pattern, prof)
        for stale in ("dd.img", *(_plex_paths(work, "seq", args.plexes))):
            (work / stale).unlink(missing_ok=True)
        if "files" in tests:
            res["small_files"] = small_files(work, files, args.plexes, prof)
        if "snap" in tests:
            res["snapshots"] = snapshots(work, snap_mib[0], snap_mib[1], repeats, args.plexes,
                                         pattern, prof)
        doc.update(res)
        doc["targets"] = _targets(res, files_target_s, args.quick)
        if "snapshots" in res:
            doc["snapshot_delete"] = _delete_figures(res["snapshots"])
        doc["all_hold"] = all(t["holds"] for t in doc["targets"].values())
        doc["elapsed_s"] = round(time.perf_counter() - t_all, 1)
        doc["machine"]["loadavg_end"] = loadavg()
    kind = ".profiled" if prof else ".quick" if args.quick else ""
    out = args.out or RESULTS_DIR / f"fs_api{kind}.json"
    emit("fs_api", doc, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
