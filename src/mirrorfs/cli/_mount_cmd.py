"""mount and umount: a volume as an ordinary file system, through FUSE.

Owns the command lines only; the daemon's life is ``mirrorfs.daemon``.
Keeps: ``mount`` returns only when the mount answers (exit 0), or with one
line and a non-zero exit; ``umount`` returns only after the daemon's final
CP is on the plexes.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..daemon import MountOptions, MountRequest, mount, runtime_dir, unmount
from ..daemon._mount import UNMOUNT_TIMEOUT_S
from ..volume import CP_INTERVAL_S
from ._common import print_json


def register(sub: Any) -> None:
    p = sub.add_parser(
        "mount", help="mount a volume (a FUSE daemon in the background)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Mount VOLUME on MOUNTPOINT. By default the file system runs as a "
                    "background daemon and the command returns once the mount answers; "
                    "with --foreground it stays attached until unmounted (Ctrl-C "
                    "unmounts). Snapshots appear read-only under MOUNTPOINT/.snapshot/.",
        epilog=f"""\
Options (-o, comma-separated, repeatable):
  ro                   open the volume read-only (nothing is written to any plex)
  allow_other          let other users use the mount (non-root: needs user_allow_other
                       in /etc/fuse.conf); allow_root lets only root in addition
  default_permissions  the kernel checks permission bits on every access (without it,
                       only access(2) is checked, by mirrorfs)
  nosuid, nodev, noexec, fsname=NAME, max_read=BYTES   as for any FUSE file system
  snapshot_every=INTERVAL, keep=N   as --snapshot-every and --keep

A CP is committed every {CP_INTERVAL_S:.0f} seconds while data is dirty, on fsync and fdatasync,
and on unmount. Unmount with `mirrorfs umount MOUNTPOINT` (it waits for the final
CP), `fusermount3 -u MOUNTPOINT`, or SIGTERM/SIGINT/SIGHUP to the daemon.
sync(1) does not reach a FUSE file system: use fsync(2) (or unmount) for durability.

Logs: a background daemon logs to --log, by default the volume file with the
suffix .log next to it (v.toml -> v.log); a foreground mount logs to stderr.
Each mount also has a state file in {runtime_dir()}/ (pid, volume, log).""")
    p.add_argument("-f", "--foreground", action="store_true",
                   help="stay attached; log to stderr; unmount on Ctrl-C")
    p.add_argument("--degraded", action="store_true",
                   help="mount even when a listed plex is missing or unreadable")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS",
                   help="mount options, e.g. -o allow_other,default_permissions,ro")
    p.add_argument("--snapshot-every", metavar="INTERVAL", default=None,
                   help="take a snapshot of kind scheduled (named sched-YYYYmmdd-HHMMSS, "
                        "UTC) every INTERVAL, e.g. 15m, 1h, 1d (-o snapshot_every=15m)")
    p.add_argument("--keep", metavar="N", default=None,
                   help="with --snapshot-every: keep the newest N scheduled snapshots, "
                        "deleting older ones (never other kinds; -o keep=N)")
    p.add_argument("--log", metavar="FILE", default=None,
                   help="log file (default: in the background VOLUME's name with suffix "
                        ".log, next to it; in the foreground stderr)")
    p.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("volume", metavar="VOLUME", help="the volume file written by mkfs")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing directory")
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser(
        "umount", help="unmount a mounted volume and wait for its final CP",
        description="Unmount MOUNTPOINT (fusermount3 -u) and wait until the daemon has "
                    "committed its final CP and closed the plexes. Fails, changing "
                    "nothing, while files on the mount are open, unless --lazy.")
    p.add_argument("-z", "--lazy", action="store_true",
                   help="detach now even if files are open; the daemon ends when they close")
    p.add_argument("--timeout", type=float, default=UNMOUNT_TIMEOUT_S, metavar="SECONDS",
                   help=f"most seconds to wait for the final CP (default "
                        f"{UNMOUNT_TIMEOUT_S:.0f})")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.set_defaults(func=cmd_umount)


def cmd_mount(args: argparse.Namespace) -> int:
    specs = list(args.options)
    if args.snapshot_every is not None:
        specs.append(f"snapshot_every={args.snapshot_every}")
    if args.keep is not None:
        specs.append(f"keep={args.keep}")
    opts = MountOptions.parse(specs)
    req = MountRequest.make(args.volume, args.mountpoint, opts, args.degraded, args.log)
    return mount(req, foreground=args.foreground, verbose=args.verbose,
                 ready_fd=args.ready_fd)


def cmd_umount(args: argparse.Namespace) -> int:
    lazy = bool(args.lazy)
    doc = unmount(args.mountpoint, lazy=lazy, timeout=args.timeout)
    if args.json:
        print_json(doc)
    elif doc.get("state") == "detached":
        print(f"{args.mountpoint}: detached; the daemon commits its final CP and ends when "
              "the last open file closes")
    return 0
