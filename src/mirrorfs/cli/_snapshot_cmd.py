"""snapshot create|list|delete|diff|rollback."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ..ondisk import SnapshotRecord
from ._common import CliError, Parser, add_volume_args, opened, print_json, via_daemon


def register(sub: Any) -> None:
    snap = sub.add_parser("snapshot", help="create, list, delete, diff or roll back snapshots",
                          description="Snapshots are read-only images of the whole file "
                                      "system at one CP, readable under /.snapshot/NAME/.")
    ssub = snap.add_subparsers(dest="snapshot_command", metavar="ACTION",
                               parser_class=Parser)
    ssub.required = True

    p = ssub.add_parser("create", help="take a snapshot of the active file system")
    add_volume_args(p, writes=True)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_create)

    p = ssub.add_parser("list", help="list snapshots")
    add_volume_args(p, writes=False)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_list)

    p = ssub.add_parser("delete", help="delete a snapshot, freeing what only it held")
    add_volume_args(p, writes=True)
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_delete)

    p = ssub.add_parser("diff", help="changed files and blocks between two snapshots "
                                     "(or a snapshot and the active file system)")
    add_volume_args(p, writes=False)
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW", nargs="?", default=None,
                   help="a newer snapshot (default: the active file system)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_diff)

    p = ssub.add_parser("rollback", help="make the active file system equal to a snapshot",
                        description="Discards every change made since the snapshot. Every "
                                    "snapshot is kept. Asks for confirmation unless --yes.")
    add_volume_args(p, writes=True)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_rollback)


def snap_dict(r: SnapshotRecord) -> dict[str, object]:
    return {"name": r.name, "guid": str(r.guid), "cp": r.cp, "kind": r.kind.label,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(r.ctime_ns / 1e9)),
            "created_ns": r.ctime_ns}


def cmd_create(args: argparse.Namespace) -> int:
    routed, doc = via_daemon(args, "snapshot create", {"name": args.name}, writes=True)
    if not routed:
        with opened(args, writes=True) as vol:
            t0 = time.perf_counter()
            rec = vol.snapshot(args.name)
            ms = (time.perf_counter() - t0) * 1000
        doc = {**snap_dict(rec), "milliseconds": round(ms, 2)}
    if args.json:
        print_json(doc)
    else:
        print(f"snapshot {doc['name']} created at CP {doc['cp']} ({doc['guid']})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    routed, snaps = via_daemon(args, "snapshot list")
    if not routed:
        with opened(args, writes=False) as vol:
            snaps = [snap_dict(r) for r in vol.snapshots()]
    if args.json:
        print_json(snaps)
        return 0
    if not snaps:
        print("no snapshots")
    for d in snaps:
        print(f"{d['name']:<28} CP {d['cp']:<8} {d['kind']:<12} {d['created']}  {d['guid']}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    routed, doc = via_daemon(args, "snapshot delete", {"name": args.name}, writes=True)
    if routed:
        freed = int(doc["freed_blocks"])
    else:
        with opened(args, writes=True) as vol:
            before = vol.store.alloc.free_blocks()
            vol.delete_snapshot(args.name)
            freed = vol.store.alloc.free_blocks() - before
    print(f"snapshot {args.name} deleted; {freed} blocks freed")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    with opened(args, writes=False) as vol:
        d = vol.store.diff(args.old, args.new)
    if args.json:
        print_json(d.as_dict())
        return 0
    for path in d.added:
        print(f"+ {path}")
    for path in d.removed:
        print(f"- {path}")
    for path in d.modified:
        print(f"M {path}")
    print(f"{d.old} -> {d.new}: {len(d.added)} added, {len(d.removed)} removed, "
          f"{len(d.modified)} modified; {d.blocks_new} blocks changed "
          f"({d.blocks_new * d.block_size} bytes)")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError("rollback discards every change since the snapshot; "
                           "confirm with --yes")
        answer = input(f"Discard every change since snapshot {args.name}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("rollback cancelled")
            return 1
    with opened(args, writes=True) as vol:
        vol.rollback(args.name)
    print(f"rolled back to snapshot {args.name}")
    return 0
