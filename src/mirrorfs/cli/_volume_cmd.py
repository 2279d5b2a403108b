"""mkfs, status and fsck: making a volume and looking at it."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from ..errors import MirrorfsError
from ..fs import fsck, scrub
from ..resync import examine, plan_target, target_slots
from ..volume import Volume, VolumeFile, parse_size
from ._common import add_volume_args, human, opened, print_json, progress


def register(sub: Any) -> None:
    p = sub.add_parser("mkfs", help="create a volume on one or more plexes",
                       description="Format PLEX... as one mirrored volume and write VOLUME, "
                                   "the small TOML file that lists them. A PLEX is an image "
                                   "file (created sparse), a block device, or "
                                   "nbd://host[:port]/export.")
    p.add_argument("--size", required=True, help="volume size, e.g. 1G, 512M, 2T")
    p.add_argument("--block-size", type=int, default=4096, help="bytes per block (default 4096)")
    p.add_argument("--min-plexes", type=int, default=1,
                   help="fewest plexes a CP must reach before the volume turns read-only")
    p.add_argument("--force", action="store_true",
                   help="overwrite plexes that already hold a mirrorfs label")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("volume", metavar="VOLUME", help="volume file to write")
    p.add_argument("plexes", metavar="PLEX", nargs="+", help="plexes to format")
    p.set_defaults(func=cmd_mkfs)

    p = sub.add_parser("status", help="show every plex's state, CP and snapshots",
                       description="Examine every plex of VOLUME: CP value and id, state, "
                                   "membership and snapshots, and which plex is up to date.")
    add_volume_args(p, writes=False)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("fsck", help="verify every checksum and the block maps",
                       description="Walk every tree of the active file system and of every "
                                   "snapshot, verify every block's checksum on every plex, "
                                   "and check the block maps against reachability. Exit 0 "
                                   "when clean, 1 with the findings listed.")
    add_volume_args(p, writes=False)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_fsck)

    p = sub.add_parser("scrub", help="verify every block on every plex and repair bad copies",
                       description="Walk the active file system and every snapshot, read "
                                   "every block from every in-sync plex, verify its checksum, "
                                   "and rewrite bad copies from a good one. Exit 0 when "
                                   "everything is (now) good, 1 when some block is bad on "
                                   "every plex.")
    add_volume_args(p, writes=True)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_scrub)


def cmd_mkfs(args: argparse.Namespace) -> int:
    size = parse_size(args.size)
    if os.path.exists(args.volume) and not args.force:
        from ._common import CliError

        raise CliError(f"{args.volume} exists; use --force to replace the volume file")
    if args.min_plexes < 1 or args.min_plexes > len(args.plexes):
        from ._common import CliError

        raise CliError(f"--min-plexes must be between 1 and {len(args.plexes)}")
    vol = Volume.create(args.plexes, size, block_size=args.block_size, volume_file=args.volume,
                        min_plexes=args.min_plexes, force=args.force, cp_interval=None)
    try:
        vf = vol.volume_file
        assert vf is not None
        doc = {"volume": str(vf.path), "volume_uuid": str(vf.uuid), "size": vf.size,
               "block_size": vf.block_size,
               "plexes": [{"spec": s.spec, "plex_uuid": str(s.plex_uuid), "ordinal": s.ordinal}
                          for s in vol.mirror.slots]}
    finally:
        vol.close()
    if args.json:
        print_json(doc)
    else:
        print(f"created volume {doc['volume_uuid']} ({human(vf.size)}, "
              f"{vf.block_size}-byte blocks) in {vf.path}")
        for s in vol.mirror.slots:
            print(f"  plex {s.ordinal}: {s.spec}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    vf = VolumeFile.load(args.volume)
    specs = [vf.resolve(p) for p in (args.plex or vf.plexes)]
    exam = examine(specs, vf.uuid, vf.size)
    doc = exam.as_dict()
    doc["volume"] = str(vf.path)
    doc["size"] = vf.size
    doc["block_size"] = vf.block_size
    space = None
    plans: list[dict[str, object]] = []
    if exam.up_to_date is not None:
        try:
            vol = Volume.open(args.volume, read_only=True, only=args.plex, degraded=True,
                              cp_interval=None)
        except MirrorfsError as e:
            doc["open_error"] = str(e)  # status reports what it can when the volume won't open
        else:
            try:
                st = vol.store.statistics()
                space = {"total_bytes": st.total_blocks * vol.store.block_size,
                         "free_bytes": st.free_blocks * vol.store.block_size}
                source = vol.mirror.in_sync()[0].spec
                plans = [plan_target(vol.store, t, source).as_dict()
                         for t in target_slots(vol.store)]
            finally:
                vol.close()
    doc["space"] = space
    doc["plan"] = plans
    code = 1 if exam.split_brain else 0
    if args.json:
        print_json(doc)
        return code
    print(f"volume {vf.uuid}  ({human(vf.size)}, {vf.block_size}-byte blocks)")
    if space:
        used = space["total_bytes"] - space["free_bytes"]
        print(f"space: {human(used)} used, {human(space['free_bytes'])} free")
    print(f"up to date: {exam.up_to_date.spec if exam.up_to_date else 'none'}"
          + ("   SPLIT BRAIN" if exam.split_brain else ""))
    for rep in exam.plexes:
        sb = rep.sb
        if sb is None:
            print(f"\nplex {rep.spec}: {rep.state}" + (f" ({rep.error})" if rep.error else ""))
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sb.timestamp_ns / 1e9))
        print(f"\nplex {sb.plex_ordinal}: {rep.spec}")
        recorded = f" (recorded {rep.recorded})" if rep.recorded else ""
        print(f"  state {rep.state}{recorded}, CP {sb.cp} ({sb.cp_id}) at {when}")
        print(f"  plex {sb.plex_uuid}")
        if rep.snapshots:
            print("  snapshots:")
            for r in rep.snapshots:
                print(f"    {r.name:<24} CP {r.cp:<8} {r.kind.label:<12} {r.guid}")
    for p in plans:
        base = p["base"]
        since = f"snapshot {base['name']} (CP {base['cp']})" if isinstance(base, dict) else (
            "nothing in common: full copy")
        print(f"\nresync plan for {p['target']} from {p['source']}: {p['blocks']} blocks "
              f"({human(int(p['bytes']))}, {p['extents']} extents) since {since}")  # type: ignore[call-overload]
    if exam.split_brain:
        print("\nsplit brain: resync refuses until --prefer PLEX names the survivor")
    return code


def cmd_fsck(args: argparse.Namespace) -> int:
    with opened(args, writes=False) as vol:
        total = vol.store.nblocks - vol.store.alloc.free_blocks()
        with progress("fsck", total) as tick:
            report = fsck(vol.store, progress=tick)
    if args.json:
        print_json(report.as_dict())
    else:
        for f in report.findings:
            print(f)
        state = "clean" if report.clean else f"{len(report.findings)} problem(s) found"
        print(f"fsck: {state}: {report.blocks_checked} blocks checked, {report.files} files, "
              f"{report.directories} directories, {report.snapshots} snapshots")
    return 0 if report.clean else 1


def cmd_scrub(args: argparse.Namespace) -> int:
    with opened(args, writes=True) as vol:
        total = vol.store.nblocks - vol.store.alloc.free_blocks()
        t0 = time.perf_counter()
        with progress("scrub", total) as tick:
            report = scrub(vol.store, progress=tick)
        seconds = time.perf_counter() - t0
    doc = report.as_scrub_dict()
    doc["seconds"] = round(seconds, 3)
    if args.json:
        print_json(doc)
    else:
        for f in report.findings:
            print(f)
        errs = ", ".join(f"{k}: {v}" for k, v in report.errors_by_plex.items()) or "none"
        lost = len(doc["unrecoverable"])  # type: ignore[arg-type]
        print(f"scrub: {report.blocks_checked} blocks checked in {seconds:.1f} s; errors "
              f"{errs}; {report.repaired} repaired; {lost} unrecoverable")
    return 0 if report.clean else 1
