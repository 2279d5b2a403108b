"""demo: a narrated tour on local image files, run through the real CLI.

Builds a mirrored volume on two image files, writes data, takes a snapshot,
changes files, and shows what mirrorfs reports at each step. Every step is
the ``mirrorfs`` command a user would type, so the demo doubles as a check
that the commands work.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import tempfile
from pathlib import Path
from typing import Any

from ._common import CliError


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="a narrated tour on local image files",
                       description="Create a mirrored volume on image files in DIR (a new "
                                   "temporary directory by default), write, snapshot, change, "
                                   "inspect, and check it, printing each command as it runs.")
    p.add_argument("--dir", default=None, help="where to put the image files")
    p.add_argument("--data-mib", type=int, default=64, help="MiB of data to write (default 64)")
    p.set_defaults(func=cmd_demo)


def _run(argv: list[str]) -> None:
    from . import main

    print(f"\n$ mirrorfs {shlex.join(argv)}", flush=True)
    code = main(argv)
    if code != 0:
        raise CliError(f"demo step `mirrorfs {shlex.join(argv)}` exited {code}")


def _say(text: str) -> None:
    print(f"\n# {text}", flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    where = Path(args.dir or tempfile.mkdtemp(prefix="mirrorfs-demo-"))
    where.mkdir(parents=True, exist_ok=True)
    vol = str(where / "demo.toml")
    p0, p1 = str(where / "plex0.img"), str(where / "plex1.img")
    src = where / "data"
    src.mkdir(exist_ok=True)
    rnd = os.urandom(1 << 20)
    files = max(1, args.data_mib // 4)
    for i in range(files):
        (src / f"file{i:03d}.bin").write_bytes(rnd[i % 256 :] * 4 + rnd[: i % 256] * 4)
    _say(f"A volume of 1 GiB mirrored on two sparse image files in {where}.")
    _run(["mkfs", "--force", "--size", "1G", vol, p0, p1])
    _say(f"Copy {files * 4} MiB of data in, then look at it.")
    _run(["put", "-r", vol, str(src), "/data"])
    _run(["ls", "-l", vol, "/data"])
    _say("Take a snapshot: O(1), a pointer copy at a consistency point.")
    _run(["snapshot", "create", vol, "before"])
    _say("Change one file and delete another.")
    changed = where / "changed.bin"
    changed.write_bytes(os.urandom(2 << 20))
    _run(["put", vol, str(changed), "/data/file000.bin"])
    if files > 1:
        _run(["rm", vol, "/data/file001.bin"])
    _say("What changed since the snapshot, in files and in blocks.")
    _run(["snapshot", "diff", vol, "before"])
    _say("The snapshot still holds the old bytes, under /.snapshot/before/.")
    old = where / "old.bin"
    _run(["get", vol, "/.snapshot/before/data/file000.bin", str(old)])
    print(f"old  sha256 {hashlib.sha256(old.read_bytes()).hexdigest()[:16]}  "
          f"(original {hashlib.sha256((src / 'file000.bin').read_bytes()).hexdigest()[:16]})")
    new = where / "new.bin"
    _run(["get", vol, "/data/file000.bin", str(new)])
    print(f"new  sha256 {hashlib.sha256(new.read_bytes()).hexdigest()[:16]}  "
          f"(written {hashlib.sha256(changed.read_bytes()).hexdigest()[:16]})")
    _say("Every plex holds the same CP; status compares them all at once.")
    _run(["status", vol])
    _say("fsck verifies every checksum on every plex and the block maps.")
    _run(["fsck", vol])

    _say("Now plex 1 fails: its image vanishes (as a dead disk or a lost NBD server would).")
    away = Path(p1 + ".away")
    os.replace(p1, away)
    print(f"(moved {p1} to {away})")
    _say("Opening refuses to run on half a mirror by accident...")
    code = _try(["put", vol, "-", "/data/while-away.txt"], b"")
    print(f"(exit code {code})")
    _say("...and runs degraded when told to. The survivor pins the CP plex 1 holds as a "
         "resync base.")
    more = where / "more.bin"
    more.write_bytes(os.urandom(4 << 20))
    _run(["put", "--degraded", vol, str(more), "/data/while-away.bin"])
    _run(["rm", "--degraded", vol, "/data/file002.bin"] if files > 2 else ["ls", vol, "/"])
    _say("Plex 1 comes back. status shows it stale, with the resync plan: only what changed.")
    os.replace(away, p1)
    _run(["status", vol])
    _say("A dry run prints the plan; the resync copies exactly that, and verifies it.")
    _run(["resync", "--dry-run", vol])
    _run(["resync", "--verify", vol])
    _say("Each plex alone passes fsck and holds the same bytes.")
    for plex in (p0, p1):
        _run(["fsck", "--read-only", "--plex", plex, vol])
    digests = []
    for plex in (p0, p1):
        out = where / f"check-{Path(plex).stem}.bin"
        _run(["get", "--read-only", "--plex", plex, vol, "/data/while-away.bin", str(out)])
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest()[:16])
    print(f"plex 0: {digests[0]}  plex 1: {digests[1]}  "
          f"({'identical' if digests[0] == digests[1] else 'DIFFERENT'})")
    if digests[0] != digests[1]:
        raise CliError("the plexes differ after the resync")
    _say(f"Done. The volume stays in {where}; try `mirrorfs status {vol}`.")
    return 0


def _try(argv: list[str], stdin: bytes) -> int:
    """Run a step that is meant to fail, showing its error."""
    import subprocess
    import sys

    print(f"\n$ mirrorfs {shlex.join(argv)}", flush=True)
    res = subprocess.run([sys.executable, "-m", "mirrorfs", *argv], input=stdin,
                         capture_output=True, timeout=120)
    sys.stdout.write(res.stderr.decode())
    return res.returncode
