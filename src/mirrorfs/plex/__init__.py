"""Plex I/O: one small interface (read, write, flush, size, close) per kind of storage."""

from ..errors import PlexError
from ._base import Buffer as Buffer
from ._base import Plex as Plex
from ._base import read_by_readinto as read_by_readinto
from ._file import FilePlex as FilePlex


def open_plex(spec: str, *, read_only: bool = False) -> Plex:
    """Open a plex named by a path (image file or block device) or ``nbd://host[:port]/export``."""
    if spec.startswith("nbd://"):
        from ._nbd import NbdPlex

        return NbdPlex(spec, read_only=read_only)
    if "://" in spec:
        raise PlexError(spec, "unknown plex scheme (use a path or nbd://host[:port]/export)")
    return FilePlex(spec, read_only=read_only)
