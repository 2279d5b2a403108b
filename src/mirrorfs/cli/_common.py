"""What every command shares: opening a volume from its arguments, JSON and progress output."""

from __future__ import annotations

import argparse
import contextlib
import json
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
