"""Copy-on-write object store: block trees, allocator, object table, CP engine, snapshots."""

from ._alloc import Allocator as Allocator
from ._clock import Clock as Clock
from ._clock import SystemClock as SystemClock
from ._diff import Diff as Diff
from ._objects import ObjectTable as ObjectTable
from ._objects import ObjectView as ObjectView
from ._reach import image_blocks as image_blocks
from ._reach import inodes as inodes
from ._reach import tree_blocks as tree_blocks
from ._source import MirrorSource as MirrorSource
from ._store import Frozen as Frozen
from ._store import Store as Store
from ._store import StoreStats as StoreStats
from ._store import empty_superblock as empty_superblock
from ._store import load_snapshot_table as load_snapshot_table
from ._store import plane_from_tree as plane_from_tree
from ._store import reserved_blocks as reserved_blocks
from ._tree import Tree as Tree
