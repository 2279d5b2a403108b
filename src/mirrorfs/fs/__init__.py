"""POSIX semantics over the object store: names, files, links, attributes, ``.snapshot``."""

from ._dir import Directory as Directory
from ._fs import SNAP_BASE as SNAP_BASE
from ._fs import SNAPDIR_INO as SNAPDIR_INO
from ._fs import Attr as Attr
from ._fs import FileSystem as FileSystem
from ._fs import StatFs as StatFs
from ._fsck import Finding as Finding
from ._fsck import FsckReport as FsckReport
from ._fsck import fsck as fsck
from ._fsck import scrub as scrub
