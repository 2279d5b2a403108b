"""mkfs, status, fsck and scrub: making a volume and looking at it.

``status_doc`` builds the status document for this command and for the
daemon of a mounted volume alike, and the text is printed from that
document, so `status` prints the same either way (likewise `scrub`).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from ..errors import MirrorfsError
from ..fs import Finding, fsck, scrub
from ..resync import examine, examine_plexes, plan_target, target_slots
from ..volume import Volume, VolumeFile, parse_size
from ._common import (
    add_volume_args,
    human,
    opened,
    print_json,
    progress,
    refuse_if_mounted,
    via_daemon,
)


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
    if os.path.exists(args.volume):
        refuse_if_mounted(args.volume)
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


def status_doc(vf: VolumeFile, only: list[str] | None = None, vol: Volume | None = None
               ) -> dict[str, Any]:
    """The document `status --json` prints, for the offline command and the daemon alike.

    Offline (``vol`` None) it examines the plexes named by the volume file
    (or ``only``) and opens the volume read-only for space and plans. In the
    daemon ``vol`` is the mounted volume: its open plexes are examined under
    the store lock (no CP lands half-way), and plexes it does not hold are
    reported missing.
    """
    specs = [vf.resolve(p) for p in (only or vf.plexes)]
    if vol is None:
        exam = examine(specs, vf.uuid, vf.size)
    else:
        with vol.store.lock:
            open_slots = {s.spec: s.plex for s in vol.mirror.slots}
            exam = examine_plexes([open_slots[s] for s in specs if s in open_slots], vf.uuid,
                                  vf.size, [(s, "not open in the mounted volume")
                                            for s in specs if s not in open_slots])
    doc = exam.as_dict()
    for rep, d in zip(exam.plexes, doc["plexes"], strict=True):  # type: ignore[call-overload]
        d["timestamp_ns"] = rep.sb.timestamp_ns if rep.sb else None
    doc["volume"] = str(vf.path)
    doc["size"] = vf.size
    doc["block_size"] = vf.block_size
    space = None
    plans: list[dict[str, object]] = []

    def measure(v: Volume) -> None:
        nonlocal space, plans
        st = v.store.statistics()
        space = {"total_bytes": st.total_blocks * v.store.block_size,
                 "free_bytes": st.free_blocks * v.store.block_size}
        source = v.mirror.in_sync()[0].spec
        plans = [plan_target(v.store, t, source).as_dict() for t in target_slots(v.store)]

    if exam.up_to_date is not None:
        if vol is not None:
            with vol.store.lock:
                measure(vol)
        else:
            try:
                opened_vol = Volume.open(vf.path, read_only=True, only=only, degraded=True,
                                         cp_interval=None)
            except MirrorfsError as e:
                doc["open_error"] = str(e)  # status reports what it can when it won't open
            else:
                try:
                    measure(opened_vol)
                finally:
                    opened_vol.close()
    doc["space"] = space
    doc["plan"] = plans
    return doc


def cmd_status(args: argparse.Namespace) -> int:
    routed, doc = via_daemon(args, "status")
    if not routed:
        doc = status_doc(VolumeFile.load(args.volume), args.plex)
    code = 1 if doc["split_brain"] else 0
    if args.json:
        print_json(doc)
        return code
    print_status(doc)
    return code


def print_status(doc: dict[str, Any]) -> None:
    space = doc["space"]
    print(f"volume {doc['volume_uuid']}  ({human(doc['size'])}, {doc['block_size']}-byte "
          "blocks)")
    if space:
        used = space["total_bytes"] - space["free_bytes"]
        print(f"space: {human(used)} used, {human(space['free_bytes'])} free")
    print(f"up to date: {doc['up_to_date'] or 'none'}"
          + ("   SPLIT BRAIN" if doc["split_brain"] else ""))
    for rep in doc["plexes"]:
        if rep["cp"] is None:
            print(f"\nplex {rep['spec']}: {rep['state']}"
                  + (f" ({rep['error']})" if rep["error"] else ""))
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rep["timestamp_ns"] / 1e9))
        print(f"\nplex {rep['ordinal']}: {rep['spec']}")
        recorded = f" (recorded {rep['recorded_state']})" if rep["recorded_state"] else ""
        print(f"  state {rep['state']}{recorded}, CP {rep['cp']} ({rep['cp_id']}) at {when}")
        print(f"  plex {rep['plex_uuid']}")
        if rep["snapshots"]:
            print("  snapshots:")
            for r in rep["snapshots"]:
                print(f"    {r['name']:<24} CP {r['cp']:<8} {r['kind']:<12} {r['guid']}")
    for p in doc["plan"]:
        base = p["base"]
        since = f"snapshot {base['name']} (CP {base['cp']})" if isinstance(base, dict) else (
            "nothing in common: full copy")
        print(f"\nresync plan for {p['target']} from {p['source']}: {p['blocks']} blocks "
              f"({human(int(p['bytes']))}, {p['extents']} extents) since {since}")
    if doc["split_brain"]:
        print("\nsplit brain: resync refuses until --prefer PLEX names the survivor")


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
    routed, doc = via_daemon(args, "scrub", {"read_only": bool(args.read_only)})
    if not routed:
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
        print_scrub(doc)
    return 1 if doc["unrecoverable"] or doc["other_findings"] else 0


def print_scrub(doc: dict[str, Any]) -> None:
    for f in [*doc["unrecoverable"], *doc["other_findings"]]:
        print(Finding(**f))
    errs = ", ".join(f"{k}: {v}" for k, v in doc["errors"].items()) or "none"
    print(f"scrub: {doc['blocks_checked']} blocks checked in {doc['seconds']:.1f} s; errors "
          f"{errs}; {doc['repaired']} repaired; {len(doc['unrecoverable'])} unrecoverable")
