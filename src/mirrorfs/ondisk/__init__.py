"""On-disk layouts: pure encode, decode and validate; no I/O.

Every decode checks length, magic, version, checksum and bounds, in that
order, and names the plex and block of what it rejects.
"""

from ._common import FORMAT_VERSION as FORMAT_VERSION
from ._common import SUPPORTED_VERSIONS as SUPPORTED_VERSIONS
from ._common import Where as Where
from ._common import check_block_size as check_block_size
from ._dirent import MAX_NAME_LEN as MAX_NAME_LEN
from ._dirent import Entry as Entry
from ._dirent import bucket_capacity as bucket_capacity
from ._dirent import bucket_of as bucket_of
from ._dirent import decode_bucket as decode_bucket
from ._dirent import encode_bucket as encode_bucket
from ._dirent import entry_size as entry_size
from ._dirent import name_hash as name_hash
from ._inode import INODE_SIZE as INODE_SIZE
from ._inode import ORPHAN_INO as ORPHAN_INO
from ._inode import ROOT_INO as ROOT_INO
from ._inode import ZERO_PTR as ZERO_PTR
from ._inode import Inode as Inode
from ._ptr import PTR_DTYPE as PTR_DTYPE
from ._ptr import PTR_SIZE as PTR_SIZE
from ._ptr import PtrArray as PtrArray
from ._ptr import checksum as checksum
from ._ptr import checksums as checksums
from ._ptr import digests_of_run as digests_of_run
from ._ptr import null_ptrs as null_ptrs
from ._ptr import ptr_equal as ptr_equal
from ._ptr import ptr_words as ptr_words
from ._ptr import ptrs_from_bytes as ptrs_from_bytes
from ._ptr import verify as verify
from ._snapshot import MAX_SNAPSHOT_NAME as MAX_SNAPSHOT_NAME
from ._snapshot import MAX_SNAPSHOTS as MAX_SNAPSHOTS
from ._snapshot import SNAP_SIZE as SNAP_SIZE
from ._snapshot import SnapKind as SnapKind
from ._snapshot import SnapshotRecord as SnapshotRecord
from ._superblock import MAX_HEIGHT as MAX_HEIGHT
from ._superblock import MAX_PLEXES as MAX_PLEXES
from ._superblock import RING_BYTES as RING_BYTES
from ._superblock import RING_SLOTS as RING_SLOTS
from ._superblock import SLOT_SIZE as SLOT_SIZE
from ._superblock import Member as Member
from ._superblock import PlexState as PlexState
from ._superblock import ResyncRecord as ResyncRecord
from ._superblock import Superblock as Superblock
from ._superblock import cp_offsets as cp_offsets
from ._superblock import pick_slot as pick_slot
from ._superblock import ptr_bytes as ptr_bytes
from ._superblock import slot_offsets as slot_offsets
