"""resync: bring stale plexes back in sync by copying only what changed."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..volume import Volume, parse_size
from ._common import CliError, add_volume_args, human, print_json, progress, via_daemon


def register(sub: Any) -> None:
    p = sub.add_parser(
        "resync", help="bring stale plexes in sync, copying only the changed blocks",
        description="Examine every plex, choose the most up-to-date one, find the newest "
                    "snapshot each stale plex holds in common with it, and copy exactly the "
                    "blocks changed since (all in-use blocks when nothing is held in "
                    "common). A killed resync resumes where it stopped. On a split brain it "
                    "refuses until --prefer names the survivor; the other side's state is "
                    "then kept as a snapshot diverged-<plex>-cp<N>.")
    add_volume_args(p, writes=True)
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--verify", action="store_true",
                   help="read every copied extent back from the target and compare")
    p.add_argument("--rate", metavar="BYTES/s", default=None,
                   help="copy at most this many bytes per second (e.g. 50M)")
    p.add_argument("--prefer", metavar="PLEX", default=None,
                   help="on a split brain, the plex whose state survives")
    p.add_argument("--discard-divergent", action="store_true",
                   help="with --prefer: drop the other side's state instead of keeping it as "
                        "a snapshot (asks for confirmation unless --yes)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_resync)


def cmd_resync(args: argparse.Namespace) -> int:
    if args.discard_divergent and not args.prefer:
        raise CliError("--discard-divergent needs --prefer PLEX (which side survives)")
    if args.discard_divergent and args.dry_run:
        raise CliError("--discard-divergent and --dry-run contradict each other")
    if args.read_only and not args.dry_run:
        raise CliError("--read-only allows only --dry-run")
    if args.discard_divergent and not args.yes:
        if not sys.stdin.isatty():
            raise CliError("--discard-divergent drops the other side's data for good; "
                           "confirm with --yes")
        answer = input("Drop the divergent state of the other plexes for good? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("resync cancelled")
            return 1
    rate = parse_size(args.rate) if args.rate else None
    routed, doc = via_daemon(args, "resync", {
        "dry_run": bool(args.dry_run), "verify": bool(args.verify), "rate": args.rate,
        "prefer": args.prefer, "discard_divergent": bool(args.discard_divergent)},
        writes=not args.dry_run)
    if not routed:
        vol = Volume.open(args.volume, read_only=args.dry_run or args.read_only,
                          only=args.plex, degraded=args.degraded, cp_interval=None,
                          prefer=args.prefer, split_ok=True)
        try:
            targets = sum(p.blocks for p in _plans(vol))
            with progress("resync", targets) as tick:
                report = vol.resync(dry_run=args.dry_run, verify=args.verify, rate=rate,
                                    prefer=args.prefer,
                                    discard_divergent=args.discard_divergent, progress=tick)
        finally:
            vol.close()
        doc = report.as_dict()
    if args.json:
        print_json(doc)
    else:
        _print(doc)
    if doc["split_brain"] and args.prefer is None:
        return 1
    return 1 if any(r["error"] for r in doc["targets"]) else 0


def _plans(vol: Volume) -> list[Any]:
    from ..resync import plan_target, target_slots

    src = vol.mirror.in_sync()
    if not src:
        return []
    return [plan_target(vol.store, t, src[0].spec) for t in target_slots(vol.store)]


def _print(doc: dict[str, Any]) -> None:
    """The text of a resync report, from its JSON document (the daemon's reply too)."""
    if not doc["plans"]:
        print("nothing to resync: every plex is in sync")
        return
    if doc["split_brain"]:
        print(f"SPLIT BRAIN: {doc['explanation']}")
    for r in doc["rescued"]:
        print(f"kept the divergent state as snapshot {r['snapshot']} "
              f"({r['blocks_copied']} blocks copied into free space)")
    for p in doc["plans"]:
        b = p["base"]
        base = f"snapshot {b['name']} (CP {b['cp']})" if b else "nothing in common"
        print(f"plan {p['target']} <- {p['source']}: base {base}; {p['blocks']} blocks "
              f"({human(p['bytes'])}) in {p['extents']} extents, about "
              f"{p['estimated_seconds']:.1f} s" + (f"  [{p['note']}]" if p["note"] else ""))
    for r in doc["targets"]:
        if r["error"]:
            print(f"resync {r['target']}: FAILED: {r['error']}")
            continue
        rate = r["bytes_copied"] / r["seconds"] if r["seconds"] > 0 else 0.0
        extra = f", resumed at block {r['resumed_from']}" if r["resumed_from"] else ""
        print(f"resync {r['target']}: {r['blocks_copied']} blocks ({human(r['bytes_copied'])}) "
              f"in {r['seconds']:.2f} s ({human(rate)}/s){extra}"
              + (", verified" if r["verified"] else "") + "; now in sync")
