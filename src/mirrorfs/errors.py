"""Errors a user can meet, each with a fixed exit code and a message that names the remedy.

Owns the exit-code table. Keeps: an exit code, once given, is never reused for
another meaning.

Ranges (the README repeats them):

    0   success
    1   findings or a failed operation (fsck found damage, a plex failed, data
        is unrecoverable, the volume is full)
    2   bad usage or bad input (wrong argument, unreadable or foreign plex,
        corrupt superblock, a path that does not exist)
    3   internal error: a bug in mirrorfs (a traceback is printed)
    130 interrupted (Ctrl-C)

`cli.py` prints ``str(error)`` on one line and exits with ``error.exit_code``.
Errors whose ``traceback`` flag is set are also logged with their stack,
because they point at damage or a bug rather than at a user mistake.
"""

from __future__ import annotations

import errno as _errno


class MirrorfsError(Exception):
    """mirrorfs failed: {0}"""

    exit_code = 1
    traceback = False

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.args_ = args

    def __str__(self) -> str:
        doc = type(self).__doc__ or "{0}"
        template = doc.strip().splitlines()[0]
        try:
            return template.format(*self.args_)
        except (IndexError, KeyError):
            return " ".join(str(a) for a in self.args_) or template


class UsageError(MirrorfsError):
    """{0}"""

    exit_code = 2


class PlexError(MirrorfsError):
    """plex {0}: {1}"""

    exit_code = 2


class PlexBusy(MirrorfsError):
    """plex {0} is in use by another mirrorfs process (a mounted volume? see `mount | grep mirrorfs`); unmount it, or use the mounted file system"""  # noqa: E501

    exit_code = 2


class PlexIOError(MirrorfsError):
    """plex {0}: I/O error {1}; the plex leaves the in-sync set, run `mirrorfs status`"""

    exit_code = 1


class CorruptBlock(MirrorfsError):
    """{0}: block {1}: {2}; run `mirrorfs fsck` (or `mirrorfs scrub` on a mirror)"""

    exit_code = 1
    traceback = True
    offset: int | None = None  # byte offset of the bad block in its object, when known

    def at(self, what: str, offset: int | None = None) -> CorruptBlock:
        """The same damage named for a reader: ``what`` (a path), and the offset."""
        off = self.offset if offset is None else offset
        err = CorruptBlock(what if off is None else f"{what} at offset {off}",
                           *self.args_[1:])
        err.offset = off
        return err


class FormatError(MirrorfsError):
    """{0}: {1}"""

    exit_code = 2


class ForeignPlex(MirrorfsError):
    """plex {0} belongs to volume {1}, not to volume {2}; remove it from the volume file"""

    exit_code = 2


class NoSpace(MirrorfsError):
    """the volume is full: {0} blocks needed, {1} free; delete snapshots or files"""

    exit_code = 1


class ReadOnly(MirrorfsError):
    """the volume is open read-only: {0}"""

    exit_code = 1


class SnapshotError(MirrorfsError):
    """snapshot {0}: {1}"""

    exit_code = 2


class FsError(MirrorfsError):
    """{1}: {2}"""

    exit_code = 1

    def __init__(self, err: int, path: str = "", detail: str = "") -> None:
        super().__init__(err, path, detail or _errno_text(err))
        self.errno = err
        # a missing or misused path is bad input; no space or an I/O error is a failure
        self.exit_code = 1 if err in (_errno.ENOSPC, _errno.EIO, _errno.EROFS) else 2

    def __str__(self) -> str:
        _err, path, detail = self.args_
        return f"{path}: {detail}" if path else str(detail)


def _errno_text(err: int) -> str:
    import os

    return os.strerror(err) if err else "error"


