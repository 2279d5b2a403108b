"""What every command shares: opening a volume from its arguments, JSON and progress output.

Owns the choice between opening a volume's plexes and asking its daemon.
Keeps: no command opens the plexes of a mounted volume. A command with a
control-socket counterpart sends it there (``via_daemon``) and prints the
reply exactly as it prints its own result; every other command refuses
with one line naming the mount point (``refuse_if_mounted``, which
``opened`` calls first), exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from ..volume import Volume


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class CliError(Exception):
    """A usage error found by a command itself (exit code 2)."""

    exit_code = 2


class DaemonError(CliError):
    """An error the daemon of a mounted volume replied with, and its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Mounted(CliError):
    """The volume is mounted, and this command cannot go through its daemon."""


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def mount_of(volume: str) -> dict[str, Any] | None:
    """The state document of the live mount of ``volume`` (a volume file), or None."""
    from ..daemon import live_mounts

    for doc in live_mounts():
        vf = doc.get("volume")
        if isinstance(vf, str) and _same_file(vf, volume):
            return doc
    return None


def refuse_if_mounted(volume: str) -> None:
    """Refuse a command that would open the plexes of a mounted volume."""
    doc = mount_of(volume)
    if doc is not None:
        raise Mounted(f"{volume} is mounted at {doc.get('mountpoint')}; use the mounted file "
                      "system, or unmount it first")


def via_daemon(args: argparse.Namespace, command: str, cmd_args: dict[str, Any] | None = None,
               *, writes: bool = False) -> tuple[bool, Any]:
    """Run ``command`` in the daemon when the volume is mounted: (True, result).

    Returns (False, None) when the volume is not mounted: the caller opens it
    itself. The daemon chose the plexes when it mounted, so --plex and
    --degraded are refused here, and so is --read-only on a command that
    ``writes``.
    """
    from ..daemon._control import ControlUnavailable, request

    doc = mount_of(args.volume)
    if doc is None:
        return False, None
    mp = doc.get("mountpoint")
    for flag, given in (("--plex", getattr(args, "plex", None)),
                        ("--degraded", getattr(args, "degraded", False)),
                        ("--read-only", writes and getattr(args, "read_only", False))):
        if given:
            raise Mounted(f"{args.volume} is mounted at {mp}; {flag} applies only to an "
                          f"unmounted volume with {command}")
    sock = doc.get("socket")
    if not isinstance(sock, str):
        raise Mounted(f"{args.volume} is mounted at {mp} by a daemon without a control "
                      "socket; use the mounted file system, or unmount it first")
    try:
        reply = request(sock, command, cmd_args, mountpoint=str(mp))
    except ControlUnavailable as e:
        raise Mounted(f"{args.volume} is mounted at {mp}, but {e}") from None
    if not reply.get("ok"):
        raise DaemonError(str(reply.get("error")), int(reply.get("exit_code") or 1))
    return True, reply.get("result")


def add_volume_args(p: argparse.ArgumentParser, writes: bool) -> None:
    """The VOLUME argument and the options that decide which plexes open."""
    p.add_argument("volume", metavar="VOLUME", help="the volume file written by mkfs")
    p.add_argument("--plex", action="append", metavar="PLEX", default=None,
                   help="open exactly these plexes (repeatable)")
    p.add_argument("--degraded", action="store_true",
                   help="open even when a listed plex is missing or unreadable")
    p.add_argument("--read-only", action="store_true",
                   help="write nothing to any plex" + ("" if writes else " (always so here)")
                   + ("; report, repair nothing" if p.prog.endswith("scrub") else ""))


def open_volume(args: argparse.Namespace, writes: bool) -> Volume:
    refuse_if_mounted(args.volume)
    read_only = not writes or bool(getattr(args, "read_only", False))
    return Volume.open(args.volume, read_only=read_only, only=args.plex,
                       degraded=args.degraded, cp_interval=None)


@contextlib.contextmanager
def opened(args: argparse.Namespace, writes: bool) -> Iterator[Volume]:
    vol = open_volume(args, writes)
    try:
        yield vol
    finally:
        vol.close()


def print_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


@contextlib.contextmanager
def progress(label: str, total: int | None, unit: str = "blocks"
             ) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal (rate and ETA); nothing when stderr is not one."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TransferSpeedColumn() if unit == "bytes" else TextColumn(unit),
            TimeRemainingColumn()]
    with Progress(*cols, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"
