"""The ``mirrorfs`` command: argument parsing, dispatch, and the one place that prints.

Owns exit codes and output formats. Keeps: a user mistake ends in one line
on stderr and exit code 2, a failure in one line and exit code 1; only a
bug prints a traceback (exit code 3). Every reporting command has --json.

Each command lives in its own module (``_files_cmd``, ``_snapshot_cmd``,
``_volume_cmd``, ``_demo_cmd``) and registers its parser here.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence

from ..errors import MirrorfsError
from . import _demo_cmd, _files_cmd, _mount_cmd, _plex_cmd, _resync_cmd, _snapshot_cmd, _volume_cmd
from ._common import CliError, Parser

log = logging.getLogger("mirrorfs")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="mirrorfs",
        description="A copy-on-write file system mirrored on several plexes, with snapshots "
                    "and a resync that copies only what changed.",
        epilog="Exit codes: 0 success, 1 findings or failure, 2 bad usage or input, "
               "3 internal error (a bug).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    _volume_cmd.register(sub)
    _files_cmd.register(sub)
    _snapshot_cmd.register(sub)
    _plex_cmd.register(sub)
    _mount_cmd.register(sub)
    _resync_cmd.register(sub)
    _demo_cmd.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="mirrorfs: %(levelname)s: %(message)s")
    try:
        code = args.func(args)
        return int(code or 0)
    except (MirrorfsError, CliError) as e:
        if getattr(e, "traceback", False) and args.verbose:
            traceback.print_exc()
        print(f"mirrorfs: error: {e}", file=sys.stderr)
        return int(getattr(e, "exit_code", 1))
    except KeyboardInterrupt:
        print("mirrorfs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception:
        traceback.print_exc()
        print("mirrorfs: internal error: this is a bug in mirrorfs; please report it with the "
              "traceback above", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
