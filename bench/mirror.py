"""Mirror throughput: sequential write and read on 1, 2 and 3 plexes, and scrub, in one run.

Two placements of the plexes, chosen with ``--placement`` (default ``both``,
disk first):

disk
    Image files in one scratch directory (default: a fresh dir under
    /var/tmp, never tmpfs), all on the one disk of this machine. An N-plex
    write moves N times the bytes through that disk, so its write measures
    the shared disk more than mirrorfs: the ``dd_copies`` peer shows it.
    Whenever the disk is the limit, two dd copies at once get 0.41-0.60 of
    one copy's rate here, and the 2-plex write ratio is held below the 0.8
    target whatever mirrorfs does (on a fast-disk day the 2 shared cores
    are the limit instead). Top-level keys ``seq_write``, ``seq_read_cold``,
    ``scrub``.
nbd (key ``independent``)
    One nbdkit server per plex on 127.0.0.1, each a device of fixed
    bandwidth: the memory plugin behind the rate filter (``bench/_nbd.py``
    says how it is set up and why). ``--rate`` is each plex's bandwidth in
    bits/s, per direction, as nbdkit reads it: the default ``1000M`` is
    1,048,576,000 bit/s = 131.1 MB/s, about one gigabit link per plex. The
    plexes are independent devices, as a mirror's plexes are meant to be,
    so this placement is the fair test of the ratio targets: does mirroring
    cost throughput when each copy has its own device?

seq_write (both placements)
    For each plex count N in 1, 2, 3: a fresh volume on N plexes (sparse
    images, or N fresh servers), one file written in 1 MiB ``write`` calls
    (the same random 1 MiB buffer repeated), then ``vol.sync()``; the time
    includes every CP, the last one too. Targets: the 2-plex figure >= 0.8 x
    the 1-plex figure of the same run and placement (issue 3). Peers:
    disk: ``dd_copies``, N dd processes at once, each writing the same size
    with ``conv=fdatasync`` to its own file on the same disk: what the disk
    gives to N copies, so ``vs_dd_copies`` says how much of the disk a
    mirrored write gets. nbd: ``device_copies``, N ``nbdcopy --flush``
    processes at once, each copying the same data from a file in /dev/shm
    to its own fresh server: the data rate N such devices accept when each
    must get every byte (the bound of an N-way mirror), and ``vs_device`` =
    mirrorfs / that. ``server_cpu_s`` is the CPU the servers used meanwhile.
seq_read_cold (disk)
    The volume reopened after its images were dropped from the page cache
    (``_common.drop_cache``; ``cache`` says which method worked and what
    stayed resident), then the file read in 1 MiB ``readinto`` calls, each
    checked against the buffer written. The plexes are opened through a
    byte-counting wrapper, so ``per_plex_read_bytes`` shows how reads were
    spread. Target: N-plex >= 1.0 x the 1-plex figure, N = 2, 3.
    Peer: ``dd if=IMG of=/dev/null bs=1M`` of the 1-plex image, dropped the
    same way.
seq_read (nbd)
    The same read, on the same servers right after the write: the volume
    reopened (``Volume.attach`` on byte-counting wrappers around NbdPlex)
    and the file read back and checked. Not cold: the memory plugin has no
    cache to drop. Targets as for ``seq_read_cold``. Peer: ``device``,
    ``nbdcopy`` of one server's export to ``null:`` (one device's read
    rate, measured after the 1-plex copy); ``vs_device`` = mirrorfs / that,
    so an N-plex read that spreads over the plexes may exceed 1.
scrub (disk)
    ``scrub`` (``mirrorfs.fs.scrub``: verify every block of every image on
    every in-sync plex, repair bad copies) of the 2-plex volume holding the
    written file, cold: ``Volume.open`` + ``scrub`` + ``close`` after a cache
    drop. Target: < 4 s for 1 GiB (scaled by the size with ``--size-gib`` or
    ``--quick``). ``warm_s`` is a second scrub right after, from the cache.

Rounds. Disk speed on a shared VM drifts over minutes, so the plex counts
are measured in ``--rounds`` rounds (default 2), alternating the order (1,
2, 3 then 3, 2, 1), in each placement; the figure per plex count is the
median of its rounds, and ratios are taken between medians. ``rounds``
keeps every run.

Reading the output. stdout is one JSON document (also written to
``bench/results/mirror.json``, ``mirror.quick.json`` for ``--quick``,
``mirror.profiled.json`` with ``--profile``; ``mirror.disk*.json`` or
``mirror.nbd*.json`` with one ``--placement``): ``machine``, ``config``
(``config.independent``: the rate per plex and the servers), the disk
placement's ``seq_write`` / ``seq_read_cold`` per plex count (median and
all runs, MB/s in decimal megabytes) and ``scrub``, the nbd placement's
``independent`` (``seq_write`` / ``seq_read``, same shape), and ``targets``
(the nbd ones named ``independent_*``), each with ``value``, ``target`` and
``holds``; ``all_hold`` is their conjunction. ``cpu_s`` is this process's
CPU time: compare it with ``seconds`` to see whether a figure is bound by
the CPU or by the disk. On 2 cores the nbd placement's 3-plex write is
partly CPU-bound: mirrorfs pushes every byte through loopback TCP three
times and the servers use about as much CPU again.

``--quick`` writes 64 MiB, one round, for a smoke run under a minute (the
nbd servers' 6.6 MB start burst then inflates the figures by about 10%).
``--profile DIR`` runs every timed part under pyinstrument and writes
``DIR/<test>_<N>p.txt`` and ``.html``. Every nbdkit started is killed when
its run ends, on an error, Ctrl-C or SIGTERM too (and dies with this
process in any case: ``--exit-with-parent``).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
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
    meminfo_bytes,
    read_back,
    scratch_dir,
    source_state,
    target,
    warm_memory,
    warn_if_busy,
)
from _nbd import (
    NBDCOPY_OPTS,
    nbdcopy_copies,
    nbdcopy_version,
    nbdkit_version,
    parse_rate,
    ram_file,
    rate_info,
    require,
    server_cpu_s,
    servers,
)

from mirrorfs.fs import scrub
from mirrorfs.plex import FilePlex, open_plex
from mirrorfs.testing import CountingPlex
from mirrorfs.volume import Volume

PLEX_COUNTS = (1, 2, 3)
WRITE_RATIO_2 = 0.8  # 2-plex sequential write / 1-plex, same run (issue 3)
READ_RATIO = 1.0  # N-plex cold read / 1-plex, same run (issue 3)
SCRUB_S_PER_GIB = 4.0  # most seconds to scrub 1 GiB on 2 plexes (issue 3)
SCRUB_PLEXES = 2
PLACEMENTS = ("disk", "nbd", "both")
DEFAULT_RATE = "1000M"  # bits/s per nbd plex, as nbdkit reads it (powers of 1024: 131.1 MB/s)


def _plex_paths(work: Path, n: int) -> list[str]:
    return [str(work / f"seq{n}-p{i}.img") for i in range(n)]


def _vf(work: Path, n: int) -> Path:
    return work / f"seq{n}.toml"


def _remove(work: Path, n: int) -> None:
    for p in _plex_paths(work, n):
        Path(p).unlink(missing_ok=True)
    _vf(work, n).unlink(missing_ok=True)


def _vol_size(mib: int) -> int:
    return mib * MIB * 5 // 4 + 256 * MIB


# -- tests ------------------------------------------------------------------------


def seq_write(work: Path, mib: int, n: int, pattern: bytes, prof: Path | None
              ) -> dict[str, Any]:
    """A fresh n-plex volume, ``mib`` MiB written in 1 MiB calls, then a sync (all timed)."""
    _remove(work, n)
    vol = Volume.create(_plex_paths(work, n), _vol_size(mib),
                        volume_file=_vf(work, n), cp_interval=None)
    return _timed_write(vol, mib, n, pattern, f"seq_write_{n}p", prof, os_sync=True)


def _timed_write(vol: Volume, mib: int, n: int, pattern: bytes, name: str,
                 prof: Path | None, os_sync: bool,
                 side_cpu: Callable[[], float] | None = None, label: str = ""
                 ) -> dict[str, Any]:
    """Write ``/seq`` in 1 MiB calls and sync (timed), then close ``vol``.

    ``side_cpu`` gives the CPU seconds of other processes doing the work
    (the nbd servers): its growth over the timed part is ``server_cpu_s``.
    """
    vol.sync()
    cp0 = vol.store.cp
    if os_sync:
        os.sync()
    s0 = side_cpu() if side_cpu else 0.0
    with maybe_profile(name, prof):
        c0, t0 = time.process_time(), time.perf_counter()
        with vol.open_file("/seq", "wb") as f:
            for _ in range(mib):
                f.write(pattern)
        t1 = time.perf_counter()
        vol.sync()
        t2, c2 = time.perf_counter(), time.process_time()
    s2 = side_cpu() if side_cpu else 0.0
    cps = vol.store.cp - cp0
    vol.close()
    run = Timed(t2 - t0, mib * MIB)
    side = f", servers' cpu {s2 - s0:.2f} s" if side_cpu else ""
    log(f"  {label}write {n} plex(es): {run.mb_s:.0f} MB/s ({t1 - t0:.2f} s writes, "
        f"{t2 - t1:.2f} s final sync, cpu {c2 - c0:.2f} s{side}, {cps} CPs)")
    out = {**run.as_json(), "write_calls_s": round(t1 - t0, 4),
           "final_sync_s": round(t2 - t1, 4), "cpu_s": round(c2 - c0, 4), "cps": cps}
    if side_cpu:
        out["server_cpu_s"] = round(s2 - s0, 4)
    return out


def seq_read_cold(work: Path, mib: int, n: int, pattern: bytes, prof: Path | None
                  ) -> dict[str, Any]:
    """Drop the images from the cache, reopen, read the file back in 1 MiB calls (timed).

    The plexes are opened through ``CountingPlex`` (one Python call per read of
    a run of blocks, noise at 1 MiB reads) to report how the reads were spread.
    """
    cache = drop_cache(_plex_paths(work, n))
    paths = _plex_paths(work, n)
    out = _timed_read(lambda: [CountingPlex(FilePlex(p)) for p in paths], mib, n, pattern,
                      f"seq_read_cold_{n}p", prof, "read", ", cold")
    return {**out, "cache": cache}


def _timed_read(open_plexes: Callable[[], list[CountingPlex]], mib: int, n: int,
                pattern: bytes, name: str, prof: Path | None, label: str, how: str = "",
                side_cpu: Callable[[], float] | None = None) -> dict[str, Any]:
    """Open the volume on ``open_plexes()`` (timed as ``open_s``), read ``/seq`` back (timed)."""
    t0 = time.perf_counter()
    plexes = open_plexes()
    vol = Volume.attach(plexes, cp_interval=None)
    t_open = time.perf_counter() - t0
    stats0 = vol.mirror.statistics()
    counted0 = [p.read_bytes for p in plexes]
    s0 = side_cpu() if side_cpu else 0.0
    with maybe_profile(name, prof):
        wall, cpu = read_back(vol, "/seq", pattern, mib)
    s1 = side_cpu() if side_cpu else 0.0
    stats1 = vol.mirror.statistics()
    per_plex = {p.spec: p.read_bytes - c for p, c in zip(plexes, counted0, strict=True)}
    vol.close()
    run = Timed(wall, mib * MIB)
    spread = ", ".join(f"{v / MIB:.0f}" for v in per_plex.values())
    side = f", servers' cpu {s1 - s0:.2f} s" if side_cpu else ""
    log(f"  {label} {n} plex(es){how}: {run.mb_s:.0f} MB/s (cpu {cpu:.2f} s{side}, open "
        f"{t_open * 1000:.0f} ms, MiB per plex: {spread})")
    out = {**run.as_json(), "open_s": round(t_open, 4), "cpu_s": round(cpu, 4),
           "mirror_reads": stats1.reads - stats0.reads,
           "mirror_read_bytes": stats1.read_bytes - stats0.read_bytes,
           "per_plex_read_bytes": per_plex}
    if side_cpu:
        out["server_cpu_s"] = round(s1 - s0, 4)
    return out


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


# -- independent placement: one rate-limited nbdkit per plex --------------------------


def independent_run(work: Path, mib: int, n: int, pattern: bytes, rate: str,
                    prof: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """On ``n`` fresh rate-limited nbdkit servers: the write of ``seq_write``, then the read back.

    The read reopens the volume (``Volume.attach`` on ``CountingPlex`` around
    each NbdPlex) and reads as ``seq_read_cold`` does; it is not cold, as the
    memory plugin has no cache. The servers are killed on return.
    """
    size = _vol_size(mib)
    with servers(n, size, rate, work) as srv:
        specs = [s.spec for s in srv]

        def side_cpu() -> float:
            return sum(server_cpu_s(s) for s in srv)

        vf = work / f"nbd{n}.toml"
        vf.unlink(missing_ok=True)
        vol = Volume.create(specs, size, volume_file=vf, cp_interval=None)
        write = _timed_write(vol, mib, n, pattern, f"independent_seq_write_{n}p", prof,
                             os_sync=False, side_cpu=side_cpu, label="nbd ")
        read = _timed_read(lambda: [CountingPlex(open_plex(s)) for s in specs], mib, n,
                           pattern, f"independent_seq_read_{n}p", prof, "nbd read",
                           side_cpu=side_cpu)
        vf.unlink(missing_ok=True)
    return write, read


def device_copies(work: Path, mib: int, n: int, pattern: bytes, rate: str) -> dict[str, Any]:
    """The peer: nbdcopy of the same data from RAM to ``n`` fresh servers at once.

    With n == 1 it also reads that server's export back (``read``): one
    device's read rate.
    """
    with ram_file(pattern, mib) as src:
        out = nbdcopy_copies(src, n, rate, work, read_back=n == 1)
    log(f"  nbdcopy x{n} at once: {out['mb_s']:.0f} MB/s of data "
        f"({out['devices_mb_s']:.0f} MB/s into the devices, nbdcopy cpu "
        f"{out['nbdcopy_cpu_s']:.2f} s, servers' cpu {out['server_cpu_s']:.2f} s)")
    if "read" in out:
        log(f"  nbdcopy read of one device: {out['read']['mb_s']:.0f} MB/s")
    return out


# -- driver ------------------------------------------------------------------------


def _summaries(runs: dict[int, list[dict[str, Any]]]) -> dict[int, dict[str, Any]]:
    """Each plex count's median and runs, with its ratio to the 1-plex median."""
    out = {n: _summary(runs[n]) for n in PLEX_COUNTS}
    for n in PLEX_COUNTS:
        out[n]["ratio_to_1_plex"] = round(out[n]["mb_s"] / out[1]["mb_s"], 4)
    return out


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    mb_s = [r["mb_s"] for r in runs]
    return {"mb_s": round(median(mb_s), 1), "mb_s_runs": mb_s, "runs": runs}


def _order(r: int) -> tuple[int, ...]:
    return PLEX_COUNTS if r % 2 == 0 else tuple(reversed(PLEX_COUNTS))


def run_disk(work: Path, mib: int, rounds: int, pattern: bytes, prof: Path | None,
             no_dd: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The image-file placement: (its top-level JSON sections, its targets)."""
    scrub_target = SCRUB_S_PER_GIB * mib / 1024
    writes: dict[int, list[dict[str, Any]]] = {n: [] for n in PLEX_COUNTS}
    reads: dict[int, list[dict[str, Any]]] = {n: [] for n in PLEX_COUNTS}
    dds: dict[int, list[dict[str, Any]]] = {n: [] for n in PLEX_COUNTS}
    scrub_res: dict[str, Any] | None = None
    for r in range(rounds):
        order = _order(r)
        log(f"disk placement, round {r + 1} of {rounds}: plex counts {order}, {mib} MiB")
        for n in order:
            writes[n].append(seq_write(work, mib, n, pattern, prof))
            reads[n].append(seq_read_cold(work, mib, n, pattern, prof))
            if n == SCRUB_PLEXES and r == rounds - 1:
                scrub_res = scrub_cold(work, mib, n, prof)
            _remove(work, n)
            if not no_dd:
                dds[n].append(dd_copies(work, mib, n))
    dd_read = None if no_dd else dd_read_ref(work, mib)

    w, rd = _summaries(writes), _summaries(reads)
    for n in PLEX_COUNTS:
        if dds[n]:
            ref = median([d["mb_s"] for d in dds[n]])
            w[n]["dd_copies"] = {"mb_s": round(ref, 1), "runs": dds[n]}
            w[n]["vs_dd_copies"] = round(w[n]["mb_s"] / ref, 4)
    if dd_read is not None:
        for n in PLEX_COUNTS:
            rd[n]["vs_dd"] = round(rd[n]["mb_s"] / dd_read["mb_s"], 4)
    sections: dict[str, Any] = {
        "seq_write": {f"{n}_plex": w[n] for n in PLEX_COUNTS},
        "seq_read_cold": {f"{n}_plex": rd[n] for n in PLEX_COUNTS},
    }
    if dd_read is not None:
        sections["seq_read_cold"]["dd"] = dd_read
    sections["scrub"] = scrub_res
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
    return sections, targets


def run_independent(work: Path, mib: int, rounds: int, pattern: bytes, rate: str,
                    prof: Path | None, no_peer: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The nbd placement, one rate-limited nbdkit per plex: (its JSON section, its targets)."""
    need = (max(PLEX_COUNTS) + 1) * mib * MIB  # the peer's 3 servers + its source in RAM
    avail = meminfo_bytes("MemAvailable")
    if avail and avail < need * 5 // 4:
        log(f"WARNING: {avail / MIB:.0f} MiB of memory available; the nbd placement keeps "
            f"up to {need / MIB:.0f} MiB in RAM (servers and /dev/shm)")
    writes: dict[int, list[dict[str, Any]]] = {n: [] for n in PLEX_COUNTS}
    reads: dict[int, list[dict[str, Any]]] = {n: [] for n in PLEX_COUNTS}
    peers: dict[int, list[dict[str, Any]]] = {n: [] for n in PLEX_COUNTS}
    for r in range(rounds):
        order = _order(r)
        log(f"nbd placement, round {r + 1} of {rounds}: plex counts {order}, {mib} MiB, "
            f"rate={rate} per plex")
        for n in order:
            wr, rd_run = independent_run(work, mib, n, pattern, rate, prof)
            writes[n].append(wr)
            reads[n].append(rd_run)
            if not no_peer:
                peers[n].append(device_copies(work, mib, n, pattern, rate))

    w, rd = _summaries(writes), _summaries(reads)
    dev_reads = [p["read"] for p in peers[1] if "read" in p]
    dev_read = median([d["mb_s"] for d in dev_reads]) if dev_reads else None
    for n in PLEX_COUNTS:
        if peers[n]:
            ref = median([p["mb_s"] for p in peers[n]])
            w[n]["device_copies"] = {"mb_s": round(ref, 1), "runs": peers[n]}
            w[n]["vs_device"] = round(w[n]["mb_s"] / ref, 4)
        if dev_read is not None:
            rd[n]["vs_device"] = round(rd[n]["mb_s"] / dev_read, 4)
    section: dict[str, Any] = {
        "seq_write": {f"{n}_plex": w[n] for n in PLEX_COUNTS},
        "seq_read": {f"{n}_plex": rd[n] for n in PLEX_COUNTS},
    }
    if dev_read is not None:
        section["seq_read"]["device"] = {"mb_s": round(dev_read, 1), "runs": dev_reads}
    targets: dict[str, Any] = {
        "independent_seq_write_2_plex_ratio": target(w[2]["ratio_to_1_plex"], ">=",
                                                     WRITE_RATIO_2, "x 1-plex"),
        "independent_seq_read_2_plex_ratio": target(rd[2]["ratio_to_1_plex"], ">=",
                                                    READ_RATIO, "x 1-plex"),
        "independent_seq_read_3_plex_ratio": target(rd[3]["ratio_to_1_plex"], ">=",
                                                    READ_RATIO, "x 1-plex"),
    }
    return section, targets


def _rate_arg(text: str) -> str:
    try:
        parse_rate(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text.strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    ap.add_argument("--placement", choices=PLACEMENTS, default="both",
                    help="disk: image files on the one disk; nbd: one rate-limited nbdkit "
                         "per plex; both (default)")
    ap.add_argument("--rate", type=_rate_arg, default=DEFAULT_RATE,
                    help="bandwidth of each nbd plex in bits/s, as nbdkit's rate filter reads "
                         f"it (suffixes are powers of 1024; default {DEFAULT_RATE})")
    ap.add_argument("--dir", help="where images go (default: a fresh dir under /var/tmp)")
    ap.add_argument("--size-gib", type=float, default=1.0,
                    help="data written, read and scrubbed in GiB (default 1)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds over the plex counts (default 2; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="64 MiB, one round: a smoke run")
    ap.add_argument("--no-dd", action="store_true",
                    help="skip the peers (dd for disk, nbdcopy for nbd)")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="profile each timed part with pyinstrument into DIR")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir")
    args = ap.parse_args(argv)

    mib = 64 if args.quick else int(args.size_gib * 1024)
    rounds = args.rounds or (1 if args.quick else 2)
    pattern = os.urandom(MIB)
    prof = args.profile
    disk = args.placement in ("disk", "both")
    nbd = args.placement in ("nbd", "both")
    if nbd:
        require(peer=not args.no_dd)
    # SIGTERM ends the run through the finally blocks, as Ctrl-C does: the nbdkit
    # servers, the RAM copy in /dev/shm and the scratch dir go with it.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    with scratch_dir(args.dir, args.keep) as work:
        doc: dict[str, Any] = {"benchmark": "mirror", "machine": machine_info(work),
                               "source": source_state()}
        doc["config"] = {"quick": args.quick, "bytes": mib * MIB, "rounds": rounds,
                         "plex_counts": list(PLEX_COUNTS), "block_size": 4096,
                         "io_size": MIB, "data": "one random 1 MiB buffer, repeated",
                         "plexes_share_one_disk": True, "profiled": prof is not None,
                         "placement": args.placement}
        if nbd:
            doc["config"]["independent"] = {
                **rate_info(args.rate), "rate_is": "per plex, each way (read, write)",
                "server": "nbdkit --filter=blocksize --filter=rate memory SIZE maxdata=... "
                          "rate=... burstiness=..., one per plex, on 127.0.0.1",
                "nbdkit": nbdkit_version(),
                "nbdcopy": None if args.no_dd else nbdcopy_version(),
                "peer": f"nbdcopy {' '.join(NBDCOPY_OPTS)} --flush SRC nbd://... (N at once)",
                "reads_cold": False}
        warn_if_busy()
        if not args.quick:
            doc["machine"]["memory_warmup"] = warm_memory()
        t_all = time.perf_counter()
        targets: dict[str, Any] = {}
        if disk:
            sections, disk_targets = run_disk(work, mib, rounds, pattern, prof, args.no_dd)
            doc.update(sections)
            targets.update(disk_targets)
        if nbd:
            section, nbd_targets = run_independent(work, mib, rounds, pattern, args.rate, prof,
                                                   args.no_dd)
            doc["independent"] = section
            targets.update(nbd_targets)
        doc["targets"] = targets
        doc["all_hold"] = all(t["holds"] for t in targets.values())
        doc["elapsed_s"] = round(time.perf_counter() - t_all, 1)
        doc["machine"]["loadavg_end"] = loadavg()
    kind = ".profiled" if prof else ".quick" if args.quick else ""
    where = "" if args.placement == "both" else f".{args.placement}"
    out = args.out or RESULTS_DIR / f"mirror{where}{kind}.json"
    emit("mirror", doc, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
