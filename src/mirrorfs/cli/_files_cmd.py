"""Offline file access: ls, cat, put, get, mkdir, rm, mv on a volume that is not mounted.

Paths are absolute inside the volume; ``/.snapshot/NAME/...`` reads a
snapshot.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import CorruptBlock, FsError
from ..volume import Volume
from ._common import CliError, add_volume_args, opened, print_json, progress

CHUNK = 1 << 20


def register(sub: Any) -> None:
    p = sub.add_parser("ls", help="list a directory of the volume")
    add_volume_args(p, writes=False)
    p.add_argument("path", nargs="?", default="/", metavar="PATH")
    p.add_argument("-l", "--long", action="store_true", help="mode, links, size, time")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("cat", help="write files of the volume to stdout")
    add_volume_args(p, writes=False)
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.set_defaults(func=cmd_cat)

    p = sub.add_parser("put", help="copy a local file (or - for stdin) into the volume")
    add_volume_args(p, writes=True)
    p.add_argument("src", metavar="LOCAL")
    p.add_argument("dest", metavar="PATH")
    p.add_argument("-r", "--recursive", action="store_true", help="copy directories")
    p.set_defaults(func=cmd_put)

    p = sub.add_parser("get", help="copy a file of the volume to a local path (or - for stdout)")
    add_volume_args(p, writes=False)
    p.add_argument("src", metavar="PATH")
    p.add_argument("dest", metavar="LOCAL")
    p.add_argument("-r", "--recursive", action="store_true", help="copy directories")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("mkdir", help="make directories in the volume")
    add_volume_args(p, writes=True)
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("-p", "--parents", action="store_true", help="make parents, no error if "
                                                                 "existing")
    p.set_defaults(func=cmd_mkdir)

    p = sub.add_parser("rm", help="remove files (and with -r directories) from the volume")
    add_volume_args(p, writes=True)
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("-r", "--recursive", action="store_true", help="remove directories too")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("mv", help="rename or move a file or directory in the volume")
    add_volume_args(p, writes=True)
    p.add_argument("src", metavar="PATH")
    p.add_argument("dest", metavar="PATH")
    p.set_defaults(func=cmd_mv)


def _type_char(mode: int) -> str:
    return {stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFREG: "-"}.get(stat.S_IFMT(mode), "?")


def cmd_ls(args: argparse.Namespace) -> int:
    with opened(args, writes=False) as vol:
        st = vol.lstat(args.path)
        if stat.S_ISDIR(vol.stat(args.path).mode):
            rows = sorted(vol.scandir(args.path))
        else:
            rows = [(args.path.rstrip("/").rsplit("/", 1)[-1], st)]
        if args.json:
            print_json([{"name": n, "ino": a.ino, "mode": a.mode, "type": _type_char(a.mode),
                         "nlink": a.nlink, "uid": a.uid, "gid": a.gid, "size": a.size,
                         "mtime_ns": a.mtime_ns} for n, a in rows])
            return 0
        for name, a in rows:
            if args.long:
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(a.mtime_ns / 1e9))
                print(f"{stat.filemode(a.mode)} {a.nlink:>3} {a.uid:>5} {a.gid:>5} "
                      f"{a.size:>12} {when} {name}")
            else:
                print(name + ("/" if stat.S_ISDIR(a.mode) else ""))
    return 0


def _copy_out(vol: Volume, path: str, out: Any) -> None:
    try:
        with vol.open_file(path, "rb") as f:
            while chunk := f.read(CHUNK):
                out.write(chunk)
    except CorruptBlock as e:
        raise e.at(path) from None  # the path instead of the inode, the offset kept


def cmd_cat(args: argparse.Namespace) -> int:
    with opened(args, writes=False) as vol:
        for path in args.paths:
            _copy_out(vol, path, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    return 0


def _put_file(vol: Volume, src: Any, dest: str, size: int | None) -> None:
    with progress(f"put {dest}", size, "bytes") as tick, vol.open_file(dest, "wb") as f:
        while chunk := src.read(CHUNK):
            f.write(chunk)
            tick(len(chunk))


def cmd_put(args: argparse.Namespace) -> int:
    with opened(args, writes=True) as vol:
        dest = args.dest
        if args.src == "-":
            if vol.is_dir(dest):
                raise CliError(f"{dest} is a directory; name the file to write from stdin")
            _put_file(vol, sys.stdin.buffer, dest, None)
            return 0
        src = Path(args.src)
        if not src.exists():
            raise CliError(f"{src}: no such local file")
        if vol.is_dir(dest):
            dest = dest.rstrip("/") + "/" + src.name
        if src.is_dir():
            if not args.recursive:
                raise CliError(f"{src} is a directory (use -r)")
            _put_tree(vol, src, dest)
        else:
            with src.open("rb") as f:
                _put_file(vol, f, dest, src.stat().st_size)
        vol.sync()
    return 0


def _put_tree(vol: Volume, src: Path, dest: str) -> None:
    vol.mkdir(dest, exist_ok=True)
    for entry in sorted(src.iterdir()):
        target = dest.rstrip("/") + "/" + entry.name
        if entry.is_symlink():
            vol.symlink(os.readlink(entry), target)
        elif entry.is_dir():
            _put_tree(vol, entry, target)
        else:
            with entry.open("rb") as f:
                _put_file(vol, f, target, entry.stat().st_size)


def cmd_get(args: argparse.Namespace) -> int:
    with opened(args, writes=False) as vol:
        if args.dest == "-":
            _copy_out(vol, args.src, sys.stdout.buffer)
            return 0
        dest = Path(args.dest)
        if dest.is_dir():
            dest = dest / args.src.rstrip("/").rsplit("/", 1)[-1]
        if vol.is_dir(args.src):
            if not args.recursive:
                raise CliError(f"{args.src} is a directory (use -r)")
            _get_tree(vol, args.src, dest)
        else:
            _get_file(vol, args.src, dest)
    return 0


def _get_file(vol: Volume, src: str, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".mirrorfs-part")
    try:
        with tmp.open("wb") as out:
            _copy_out(vol, src, out)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _get_tree(vol: Volume, src: str, dest: Path) -> None:
    dest.mkdir(exist_ok=True)
    for name, attr in vol.scandir(src):
        path = src.rstrip("/") + "/" + name
        if stat.S_ISLNK(attr.mode):
            (dest / name).unlink(missing_ok=True)
            os.symlink(vol.readlink(path), dest / name)
        elif stat.S_ISDIR(attr.mode):
            _get_tree(vol, path, dest / name)
        else:
            _get_file(vol, path, dest / name)


def cmd_mkdir(args: argparse.Namespace) -> int:
    with opened(args, writes=True) as vol:
        for path in args.paths:
            vol.mkdir(path, parents=args.parents, exist_ok=args.parents)
    return 0


def _rm_tree(vol: Volume, path: str) -> None:
    for name, attr in list(vol.scandir(path)):
        child = path.rstrip("/") + "/" + name
        if stat.S_ISDIR(attr.mode):
            _rm_tree(vol, child)
        else:
            vol.unlink(child)
    vol.rmdir(path)


def cmd_rm(args: argparse.Namespace) -> int:
    with opened(args, writes=True) as vol:
        for path in args.paths:
            attr = vol.lstat(path)
            if stat.S_ISDIR(attr.mode):
                if not args.recursive:
                    raise FsError(errno.EISDIR, path, "is a directory (use -r)")
                _rm_tree(vol, path)
            else:
                vol.unlink(path)
    return 0


def cmd_mv(args: argparse.Namespace) -> int:
    with opened(args, writes=True) as vol:
        dest = args.dest
        if vol.is_dir(dest):  # like mv(1): into an existing directory
            dest = dest.rstrip("/") + "/" + args.src.rstrip("/").rsplit("/", 1)[-1]
        vol.rename(args.src, dest)
    return 0


