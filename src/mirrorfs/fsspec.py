"""An fsspec file system over a mirrorfs volume: ``mirrorfs://``.

Owns the translation between fsspec's path and error conventions and the
Volume API. Keeps: every fsspec call is one or more Volume calls, so the
volume's guarantees (CoW, checksums, CPs) hold unchanged; errors surface as
the builtin OSError subclasses fsspec users expect (FileNotFoundError,
FileExistsError, IsADirectoryError, ...).

Use::

    import fsspec
    fs = fsspec.filesystem("mirrorfs", volume="v.toml")
    with fs.open("/data/x.bin", "wb") as f:
        f.write(b"...")
    fs.ls("/data")

The volume opens on first use and commits a CP on ``fs.close()`` (and every
CP_INTERVAL_S while data is dirty).
"""

from __future__ import annotations

import datetime
import functools
import stat
from collections.abc import Callable
from typing import Any, TypeVar

from fsspec import AbstractFileSystem

from .errors import FsError
from .volume import Volume

T = TypeVar("T")


def _oserror(fn: Callable[..., T]) -> Callable[..., T]:
    """Re-raise FsError as the builtin OSError subclass of its errno."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except FsError as e:
            raise OSError(e.errno, str(e)) from None

    return wrapped


class MirrorFileSystem(AbstractFileSystem):  # type: ignore[misc]
    """fsspec over one volume, given by its volume file or an open ``Volume``."""

    protocol = "mirrorfs"
    root_marker = "/"
    cachable = True

    def __init__(self, volume: str | Volume, read_only: bool = False, degraded: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(volume, Volume):
            self.vol = volume
            self._owned = False
        else:
            self.vol = Volume.open(volume, read_only=read_only, degraded=degraded)
            self._owned = True

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]  # type: ignore[return-value]
        p = str(path)
        if p.startswith("mirrorfs://"):
            p = p[len("mirrorfs://") :]
        p = "/" + p.lstrip("/")
        return p.rstrip("/") or "/"

    def close(self) -> None:
        if self._owned:
            self.vol.close()

    # -- metadata -------------------------------------------------------------

    def _entry(self, path: str, attr: Any) -> dict[str, Any]:
        if stat.S_ISDIR(attr.mode):
            kind = "directory"
        elif stat.S_ISREG(attr.mode):
            kind = "file"
        elif stat.S_ISLNK(attr.mode):
            kind = "link"
        else:
            kind = "other"
        return {"name": path, "size": attr.size if kind != "directory" else 0, "type": kind,
                "mode": attr.mode, "nlink": attr.nlink, "uid": attr.uid, "gid": attr.gid,
                "ino": attr.ino, "mtime": attr.mtime_ns / 1e9, "created": attr.ctime_ns / 1e9,
                "islink": kind == "link"}

    @_oserror
    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        return self._entry(path, self.vol.stat(path))

    @_oserror
    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        attr = self.vol.stat(path)
        if not stat.S_ISDIR(attr.mode):
            entries = [self._entry(path, attr)]
        else:
            base = path.rstrip("/")
            entries = [self._entry(f"{base}/{name}", a) for name, a in self.vol.scandir(path)
                       if not (path == "/" and name == ".snapshot")]
            entries.sort(key=lambda e: e["name"])
        return entries if detail else [e["name"] for e in entries]

    def modified(self, path: str) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.info(path)["mtime"], datetime.UTC)

    def created(self, path: str) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.info(path)["created"], datetime.UTC)

    # -- changes --------------------------------------------------------------

    @_oserror
    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if create_parents:
            self.vol.mkdir(path, parents=True)
            return
        self.vol.mkdir(path)

    @_oserror
    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        path = self._strip_protocol(path)
        if self.vol.exists(path) and not exist_ok:
            raise FileExistsError(path)
        self.vol.mkdir(path, parents=True)

    @_oserror
    def rmdir(self, path: str) -> None:
        self.vol.rmdir(self._strip_protocol(path))

    @_oserror
    def rm_file(self, path: str) -> None:
        """Remove a file, or an empty directory (fsspec's recursive rm calls this for both)."""
        path = self._strip_protocol(path)
        if stat.S_ISDIR(self.vol.lstat(path).mode):
            self.vol.rmdir(path)
        else:
            self.vol.unlink(path)

    def _rm(self, path: str) -> None:
        self.rm_file(path)

    @_oserror
    def mv(self, path1: str, path2: str, recursive: bool = False, maxdepth: int | None = None,
           **kwargs: Any) -> None:
        """Rename in place when it is one path to another; fsspec's copy+delete otherwise."""
        if isinstance(path1, str) and isinstance(path2, str) and not self._has_magic(path1):
            src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
            if self.isdir(dst) and not self.isdir(src):
                dst = dst.rstrip("/") + "/" + src.rsplit("/", 1)[-1]
            if not self.exists(dst.rsplit("/", 1)[0] or "/"):
                raise FileNotFoundError(dst)
            self.vol.rename(src, dst)
            return
        super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)

    @staticmethod
    def _has_magic(path: str) -> bool:
        return any(c in path for c in "*?[")

    @_oserror
    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
        if self.vol.is_dir(src):  # fsspec's recursive copy calls this for directories too
            self.vol.mkdir(dst, parents=True)
            return
        self.vol.mkdir(dst.rsplit("/", 1)[0] or "/", parents=True)
        with self.vol.open_file(src, "rb") as fin, self.vol.open_file(dst, "wb") as fout:
            while chunk := fin.read(1 << 20):
                fout.write(chunk)

    @_oserror
    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if truncate or not self.vol.exists(path):
            with self._open(path, "wb"):
                pass
        else:
            import time

            now = time.time_ns()
            self.vol.utime(path, now, now)

    @_oserror
    def _open(self, path: str, mode: str = "rb", block_size: int | None = None,
              autocommit: bool = True, cache_options: Any = None, **kwargs: Any) -> Any:
        path = self._strip_protocol(path)
        if "r" not in mode and "+" not in mode:
            parent = path.rsplit("/", 1)[0] or "/"
            if not self.vol.exists(parent):
                self.vol.mkdir(parent, parents=True)
        return self.vol.open_file(path, mode)

    def sync(self) -> bool:
        """Commit a CP now (fsspec has no such call; useful before handing data on)."""
        return self.vol.sync()
