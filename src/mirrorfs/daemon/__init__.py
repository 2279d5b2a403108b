"""FUSE adapter of a mounted volume: the request handlers and the daemon's life.

Only this package knows about FUSE. pyfuse3 and trio are imported lazily
(``mirrorfs[fuse]``), so the rest of mirrorfs works without them.
"""

from ._mount import FSTYPE as FSTYPE
from ._mount import MountError as MountError
from ._mount import MountOptions as MountOptions
from ._mount import MountRequest as MountRequest
from ._mount import UnmountError as UnmountError
from ._mount import default_log_file as default_log_file
from ._mount import live_mounts as live_mounts
from ._mount import mount as mount
from ._mount import mount_type as mount_type
from ._mount import runtime_dir as runtime_dir
from ._mount import unmount as unmount
