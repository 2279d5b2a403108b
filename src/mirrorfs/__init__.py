"""mirrorfs: a copy-on-write file system mirrored on several plexes.

Snapshots, end-to-end checksums, and a resync that copies only the blocks
changed since a snapshot both plexes hold (DESIGN.md). The Python API is
``mirrorfs.Volume``; ``mirrorfs://`` is its fsspec file system.
"""

from .errors import MirrorfsError as MirrorfsError
from .volume import Volume as Volume

__version__ = "0.1.0"
