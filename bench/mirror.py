"""Mirror throughput: sequential write and cold read on 1, 2 and 3 plexes, and scrub, in one run.

Measures, on image files in one scratch directory (default: a fresh dir
under /var/tmp, never tmpfs):

seq_write
    For each plex count N in 1, 2, 3: a fresh volume on N sparse images, one
    file written in 1 MiB ``write`` calls (the same random 1 MiB buffer
    repeated), then ``vol.sync()``; the time includes every CP, the last one
    too. Targets: the 2-plex figure >= 0.8 x the 1-plex figure of the same
    run (issue 3). Peer: ``dd_copies``, N dd processes at once, each writing
    the same size with ``conv=fdatasync`` to its own file on the same disk:
    what the disk gives to N copies, so ``vs_dd_copies`` says how much of
    the disk a mirrored write gets (the plexes here share one disk, so an
    N-plex write moves N times the bytes through it).
seq_read_cold
    The volume reopened after its images were dropped from the page cache
    (``_common.drop_cache``; ``cache`` says which method worked and what
    stayed resident), then the file read in 1 MiB ``readinto`` calls, each
    checked against the buffer written. The plexes are opened through a
    byte-counting wrapper, so ``per_plex_read_bytes`` shows how reads were
    spread. Target: N-plex >= 1.0 x the 1-plex figure, N = 2, 3.
    Peer: ``dd if=IMG of=/dev/null bs=1M`` of the 1-plex image, dropped the
    same way.
scrub
    ``scrub`` (``mirrorfs.fs.scrub``: verify every block of every image on
    every in-sync plex, repair bad copies) of the 2-plex volume holding the
    written file, cold: ``Volume.open`` + ``scrub`` + ``close`` after a cache
    drop. Target: < 4 s for 1 GiB (scaled by the size with ``--size-gib`` or
    ``--quick``). ``warm_s`` is a second scrub right after, from the cache.

Rounds. Disk speed on a shared VM drifts over minutes, so the plex counts
are measured in ``--rounds`` rounds (default 2), alternating the order (1,
2, 3 then 3, 2, 1); the figure per plex count is the median of its rounds,
and ratios are taken between medians. ``rounds`` keeps every run.

Reading the output. stdout is one JSON document (also written to
``bench/results/mirror.json``, ``mirror.quick.json`` for ``--quick``,
``mirror.profiled.json`` with ``--profile``): ``machine``, ``config``,
``seq_write`` / ``seq_read_cold`` per plex count (median and all runs, MB/s in
decimal megabytes), ``scrub``, and ``targets``, each with ``value``,
``target`` and ``holds``; ``all_hold`` is their conjunction. ``cpu_s`` is
this process's CPU time: compare it with ``seconds`` to see whether a figure
is bound by the CPU or by the disk.

``--quick`` writes 64 MiB, one round, for a smoke run under a minute.
``--profile DIR`` runs every timed part under pyinstrument and writes
``DIR/<test>_<N>p.txt`` and ``.html``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    MB,
    MIB,
    RESULTS_DIR,
    Timed,
    dd_read,
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
    warn_if_busy,
)

from mirrorfs.fs import scrub
from mirrorfs.plex import FilePlex
from mirrorfs.testing import CountingPlex
from mirrorfs.volume import Volume

PLEX_COUNTS = (1, 2, 3)
WRITE_RATIO_2 = 0.8  # 2-plex sequential write / 1-plex, same run (issue 3)
READ_RATIO = 1.0  # N-plex cold read / 1-plex, same run (issue 3)
SCRUB_S_PER_GIB = 4.0  # most seconds to scrub 1 GiB on 2 plexes (issue 3)
SCRUB_PLEXES = 2


def _plex_paths(work: Path, n: int) -> list[str]:
    return [str(work / f"seq{n}-p{i}.img") for i in range(n)]


def _vf(work: Path, n: int) -> Path:
    return work / f"seq{n}.toml"


def _remove(work: Path, n: int) -> None:
    for p in _plex_paths(work, n):
        Path(p).unlink(missing_ok=True)
    _vf(work, n).unlink(missing_ok=True)


# -- tests ------------------------------------------------------------------------


def seq_write(work: Path, mib: int, n: int, pattern: bytes, prof: Path | None
              ) -> dict[str, Any]:
    """A fresh n-plex volume, ``mib`` MiB written in 1 MiB calls, then a sync (all timed)."""
    _remove(work, n)
    vol = Volume.create(_plex_paths(work, n), mib * MIB * 5 // 4 + 256 * MIB,
                        volume_file=_vf(work, n), cp_interval=None)
    vol.sync()
    cp0 = vol.store.cp
    os.sync()
    with maybe_profile(f"seq_write_{n}p", prof):
        c0, t0 = time.process_time(), time.perf_counter()
        with vol.open_file("/seq", "wb") as f:
            for _ in range(mib):
                f.write(pattern)
        t1 = time.perf_counter()
        vol.sync()
        t2, c2 = time.perf_counter(), time.process_time()
    cps = vol.store.cp - cp0
    vol.close()
    run = Timed(t2 - t0, mib * MIB)
    log(f"  write {n} plex(es): {run.mb_s:.0f} MB/s ({t1 - t0:.2f} s writes, "
        f"{t2 - t1:.2f} s final sync, cpu {c2 - c0:.2f} s, {cps} CPs)")
    return {**run.as_json(), "write_calls_s": round(t1 - t0, 4),
            "final_sync_s": round(t2 - t1, 4), "cpu_s": round(c2 - c0, 4), "cps": cps}


def seq_read_cold(work: Path, mib: int, n: int, pattern: bytes, prof: Path | None
                  ) -> dict[str, Any]:
    """Drop the images from the cache, reopen, read the file back in 1 MiB calls (timed).

    The plexes are opened through ``CountingPlex`` (one Python call per read of
    a run of blocks, noise at 1 MiB reads) to report how the reads were spread.
    """
    cache = drop_cache(_plex_paths(work, n))
    t0 = time.perf_counter()
    plexes = [CountingPlex(FilePlex(p)) for p in _plex_paths(work, n)]
    vol = Volume.attach(plexes, cp_interval=None)
    t_open = time.perf_counter() - t0
    stats0 = vol.mirror.statistics()
    counted0 = [p.read_bytes for p in plexes]
    with maybe_profile(f"seq_read_cold_{n}p", prof):
        wall, cpu = read_back(vol, "/seq", pattern, mib)
    stats1 = vol.mirror.statistics()
    per_plex = {p.spec: p.read_bytes - c for p, c in zip(plexes, counted0, strict=True)}
    vol.close()
    run = Timed(wall, mib * MIB)
    spread = ", ".join(f"{v / MIB:.0f}" for v in per_plex.values())
    log(f"  read {n} plex(es), cold: {run.mb_s:.0f} MB/s (cpu {cpu:.2f} s, open "
        f"{t_open * 1000:.0f} ms, MiB per plex: {spread})")
    return {**run.as_json(), "open_s": round(t_open, 4), "cpu_s": round(cpu, 4),
            "mirror_reads": stats1.reads - stats0.reads,
            "mirror_read_bytes": stats1.read_bytes - stats0.read_bytes,
            "per_plex_read_bytes": per_plex, "cache": cache}


def dd_copies(work: Path, mib: int, n: int) -> dict[str, Any]:
    """n dd processes at once, each writing ``mib`` MiB of zeros with fdatasync to its own file."""
    paths = [work / f"dd{n}-{i}.img" for i in range(n)]
    for p in paths:
        p.unlink(missing_ok=True)
    os.sync()
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["dd", "if=/dev/zero", f"of={p}", "bs=1M", f"count={mib}",
                               "conv=fdatasync", "status=none"]) for p in paths]
    codes = [p.wait() for p in procs]
    dt = time.perf_counter() - t0
    for p in paths:
        p.unlink(missing_ok=True)
    if any(codes):
        raise SystemExit(f"dd_copies: dd exited with {codes}")
    run = Timed(dt, mib * MIB)  # data bytes, as mirrorfs's figure counts them
    log(f"  dd x{n} at once: {run.mb_s:.0f} MB/s of data ({n * run.mb_s:.0f} MB/s to disk)")
    return {**run.as_json(), "disk_mb_s": round(n * run.mb_s, 1)}


def dd_read_ref(work: Path, mib: int) -> dict[str, Any]:
    """``dd`` of a ``mib`` MiB file to /dev/null after a cache drop: the disk's cold read."""
    img = work / "ddread.img"
    with open(img, "wb") as f:
        block = os.urandom(MIB)
        for _ in range(mib):
            f.write(block)
    cache = drop_cache([img])
    run = dd_read(img)
    img.unlink()
    log(f"  dd cold read: {run.mb_s:.0f} MB/s")
    return {**run.as_json(), "cache": cache}


def scrub_cold(work: Path, mib: int, n: int, prof: Path | None) -> dict[str, Any]:
    """Open + scrub + close of the n-plex volume after a cache drop, then once more warm."""
    cache = drop_cache(_plex_paths(work, n))
    with maybe_profile(f"scrub_{n}p", prof):
        c0, t0 = time.process_time(), time.perf_counter()
        vol = Volume.open(_vf(work, n), cp_interval=None)
        t_open = time.perf_counter() - t0
        report = scrub(vol.store)
        vol.close()
        t1, c1 = time.perf_counter(), time.process_time()
    doc = report.as_scrub_dict()
    if doc["errors_total"] or doc["unrecoverable"] or doc["other_findings"]:
        raise SystemExit(f"scrub found damage on a fresh volume: {doc}")
    t2 = time.perf_counter()
    vol = Volume.open(_vf(work, n), cp_interval=None)
    scrub(vol.store)
    vol.close()
    warm = time.perf_counter() - t2
    checked = int(doc["blocks_checked"])  # type: ignore[call-overload]
    read_bytes = checked * 4096 * n
    log(f"  scrub {n} plexes, {mib} MiB, cold: {t1 - t0:.2f} s (cpu {c1 - c0:.2f} s, "
        f"{checked} blocks per plex, {read_bytes / MB / (t1 - t0):.0f} MB/s read); warm "
        f"{warm:.2f} s")
    return {"plexes": n, "data_bytes": mib * MIB, "seconds": round(t1 - t0, 4),
            "open_s": round(t_open, 4), "cpu_s": round(c1 - c0, 4),
            "blocks_checked": checked, "bytes_read": read_bytes,
            "read_mb_s": round(read_bytes / MB / (t1 - t0), 1),
            "warm_s": round(warm, 4), "cache": cache}


# -- driver ------------------------------------------------------------------------


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    mb_s = [r["mb_s"] for r in runs]
    return {"mb_s": round(median(mb_s), 1), "mb_s_runs": mb_s, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    ap.add_argument("--dir", help="where images go (default: a fresh dir under /var/tmp)")
    ap.add_argument("--size-gib", type=float, default=1.0,
                    help="data written, read and scrubbed in GiB (default 1)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds over the plex counts (default 2; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="64 MiB, one round: a smoke run")
    ap.add_argument("--no-dd", action="store_true", help="skip the dd peers")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="profile each timed part with pyinstrument into DIR")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir")
    args = ap.parse_args(argv)

    mib = 64 if args.quick else int(args.size_gib * 1024)
    rounds = args.rounds or (1 if args.quick else 2)
    scrub_target = SCRUB_S_PER_GIB * mib / 1024
    pattern = os.urandom(MIB)
    prof = args.profile

    with scratch_dir(args.dir, args.keep) as work:
        doc: dict[str, Any] = {"benchmark": "mirror", "machine": machine_info(work),
                               "source": source_state()}
        doc["config"] = {"quick": args.quick, "bytes": mib * MIB, "rounds": rounds,
                         "plex_counts": list(PLEX_COUNTS), "block_size": 4096,
                         "io_size": MIB, "data": "one random 1 MiB buffer, repeated",
                         "plexes_share_one_disk": True, "profiled": prof is not None}
        warn_if_busy()
        t_all = time.perf_counter()
        writes: dict[int, list[dict[str, Any]]] = {n: [] for n in PLEX_COUNTS}
        reads: dict[int, list[dict[str, Any]]] = {n: [] for n in PLEX_COUNTS}
        dds: dict[int, list[dict[str, Any]]] = {n: [] for n in PLEX_COUNTS}
        scrub_res: dict[str, Any] | None = None
        for r in range(rounds):
            order = PLEX_COUNTS if r % 2 == 0 else tuple(reversed(PLEX_COUNTS))
            log(f"round {r + 1} of {rounds}: plex counts {order}, {mib} MiB")
            for n in order:
                writes[n].append(seq_write(work, mib, n, pattern, prof))
                reads[n].append(seq_read_cold(work, mib, n, pattern, prof))
                if n == SCRUB_PLEXES and r == rounds - 1:
                    scrub_res = scrub_cold(work, mib, n, prof)
                _remove(work, n)
                if not args.no_dd:
                    dds[n].append(dd_copies(work, mib, n))
        dd_read = None if args.no_dd else dd_read_ref(work, mib)

        w = {n: _summary(writes[n]) for n in PLEX_COUNTS}
        rd = {n: _summary(reads[n]) for n in PLEX_COUNTS}
        for n in PLEX_COUNTS:
            w[n]["ratio_to_1_plex"] = round(w[n]["mb_s"] / w[1]["mb_s"], 4)
            rd[n]["ratio_to_1_plex"] = round(rd[n]["mb_s"] / rd[1]["mb_s"], 4)
            if dds[n]:
                ref = median([d["mb_s"] for d in dds[n]])
                w[n]["dd_copies"] = {"mb_s": round(ref, 1), "runs": dds[n]}
                w[n]["vs_dd_copies"] = round(w[n]["mb_s"] / ref, 4)
        if dd_read is not None:
            for n in PLEX_COUNTS:
                rd[n]["vs_dd"] = round(rd[n]["mb_s"] / dd_read["mb_s"], 4)
        doc["seq_write"] = {f"{n}_plex": w[n] for n in PLEX_COUNTS}
        doc["seq_read_cold"] = {f"{n}_plex": rd[n] for n in PLEX_COUNTS}
        if dd_read is not None:
            doc["seq_read_cold"]["dd"] = dd_read
        doc["scrub"] = scrub_res
        size_note = "" if mib == 1024 else f"measured on {mib} MiB, bound scaled"
        targets: dict[str, Any] = {
            "seq_write_2_plex_ratio": target(w[2]["ratio_to_1_plex"], ">=", WRITE_RATIO_2,
                                             "x 1-plex"),
            "seq_read_cold_2_plex_ratio": target(rd[2]["ratio_to_1_plex"], ">=", READ_RATIO,
                                                 "x 1-plex"),
            "seq_read_cold_3_plex_ratio": target(rd[3]["ratio_to_1_plex"], ">=", READ_RATIO,
                                                 "x 1-plex"),
        }
        if scrub_res is not None:
            targets["scrub_2_plex_s"] = target(scrub_res["seconds"], "<", scrub_target, "s",
                                               size_note)
        doc["targets"] = targets
        doc["all_hold"] = all(t["holds"] for t in targets.values())
        doc["elapsed_s"] = round(time.perf_counter() - t_all, 1)
        doc["machine"]["loadavg_end"] = loadavg()
    kind = ".profiled" if prof else ".quick" if args.quick else ""
    out = args.out or RESULTS_DIR / f"mirror{kind}.json"
    emit("mirror", doc, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
