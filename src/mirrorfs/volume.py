"""Volume: a mirrored copy-on-write file system opened from its plexes.

Owns the volume file, the opening rules and the background CP timer. Keeps:
a volume opens only from plexes of one volume, at the newest CP they hold,
and every close commits a final CP.

The volume file is a small TOML file written by mkfs::

    [volume]
    uuid = "..."
    size = 1073741824
    block_size = 4096
    plexes = ["p0.img", "nbd://host/export"]

Relative plex paths are relative to the volume file. The plex labels (the
superblocks) stay authoritative: the file only says where to look.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import stat
import threading
import tomllib
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, cast

import tomli_w

from .errors import ForeignPlex, FormatError, FsError, MirrorfsError, PlexError, UsageError
from .fs import SNAP_BASE, Attr, FileSystem, StatFs
from .mirror import MirrorSet, PlexSlot
from .ondisk import (
    MAX_PLEXES,
    RING_BYTES,
    SLOT_SIZE,
    SUPPORTED_VERSIONS,
    Member,
    PlexState,
    SnapKind,
    SnapshotRecord,
    Superblock,
    Where,
    check_block_size,
    checksum,
    cp_offsets,
    pick_slot,
    slot_offsets,
)
from .plex import FilePlex, Plex, open_plex
from .store import Clock, Store, SystemClock, empty_superblock

CP_INTERVAL_S = 5.0  # most seconds of dirty data before the timer commits a CP
FILE_BUFFER = 1 << 20  # the buffer of a file object from open_file
PASS_BYTES_MIN = 128 << 10  # a bytes write this large passes the buffer (_PassingWrites)
MIN_VOLUME_BYTES = 16 << 20


def parse_size(text: str) -> int:
    """'1G', '512M', '4096' -> bytes (binary units)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    for suffix, m in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40),
                      ("P", 1 << 50)):
        if t.endswith(suffix):
            t, mult = t[:-1], m
            break
    try:
        value = float(t)
    except ValueError:
        raise UsageError(f"cannot read size {text!r} (use e.g. 512M, 1G, 1T)") from None
    if value <= 0:
        raise UsageError(f"size {text!r} must be positive")
    return int(value * mult)


@dataclasses.dataclass
class VolumeFile:
    """Where a volume's plexes are: the TOML file mkfs writes."""

    path: Path
    uuid: uuid.UUID
    size: int
    block_size: int
    plexes: list[str]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VolumeFile:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
            vol = data["volume"]
            return cls(p, uuid.UUID(vol["uuid"]), int(vol["size"]), int(vol["block_size"]),
                       [str(x) for x in vol["plexes"]])
        except FileNotFoundError:
            raise UsageError(f"{p}: no such volume file (create one with `mirrorfs mkfs`)"
                             ) from None
        except (tomllib.TOMLDecodeError, KeyError, ValueError, TypeError) as e:
            raise UsageError(f"{p}: not a mirrorfs volume file ({e})") from None
        except OSError as e:
            raise UsageError(f"{p}: {e.strerror}") from None

    def save(self) -> None:
        doc = {"volume": {"uuid": str(self.uuid), "size": self.size,
                          "block_size": self.block_size, "plexes": self.plexes}}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(tomli_w.dumps(doc))
        os.replace(tmp, self.path)

    def resolve(self, spec: str) -> str:
        """A plex spec as opened: relative paths are relative to the volume file."""
        if "://" in spec or os.path.isabs(spec):
            return spec
        return str(self.path.parent / spec)


@dataclasses.dataclass(frozen=True)
class PlexLabel:
    """What examining one plex found: its live slot, or why it has none."""

    spec: str
    sb: Superblock | None
    error: str | None = None


def read_label(plex: Plex, size_hint: int | None = None) -> Superblock | None:
    """The live superblock of a plex: the valid slot with the highest CP in either ring."""
    return pick_slot(read_slots(plex, size_hint))


def read_slots(plex: Plex, size_hint: int | None = None) -> list[Superblock | None]:
    """Every slot of both rings, decoded (None where a slot is not valid)."""
    where = Where(plex.spec)
    slots: list[Superblock | None] = []
    ring_a = plex.read(0, RING_BYTES)
    for i in range(RING_BYTES // SLOT_SIZE):
        slots.append(_decode_slot(ring_a[i * SLOT_SIZE : (i + 1) * SLOT_SIZE], where, i))
    best = pick_slot(slots)
    vol_bytes = best.nblocks * best.block_size if best else (size_hint or plex.size)
    if vol_bytes <= plex.size and vol_bytes >= 2 * RING_BYTES:
        offs = slot_offsets(vol_bytes)[len(slots):]
        ring_b = plex.read(offs[0], RING_BYTES)
        for i in range(RING_BYTES // SLOT_SIZE):
            slots.append(_decode_slot(ring_b[i * SLOT_SIZE : (i + 1) * SLOT_SIZE], where,
                                      offs[i] // SLOT_SIZE))
    return slots


def _decode_slot(raw: bytes, where: Where, slot: int) -> Superblock | None:
    """A valid slot, or None for a torn or blank one; a newer format is an error, not a skip.

    Skipping a slot of a newer version would silently open an older CP.
    """
    if raw[:8] == b"MIRRFSSB" and checksum(raw[:1008]) == raw[1008:1024]:
        version = int.from_bytes(raw[8:12], "little")  # whole, not torn: trust the version
        if version not in SUPPORTED_VERSIONS:
            newer = "; upgrade mirrorfs" if version > max(SUPPORTED_VERSIONS) else ""
            raise FormatError(f"plex {where.plex}, superblock slot {slot}",
                              f"format version {version} is not supported (this mirrorfs "
                              f"reads {sorted(SUPPORTED_VERSIONS)}){newer}")
    try:
        return Superblock.decode(raw, Where(where.plex, f"superblock slot {slot}"))
    except FormatError:
        return None


def _label_error(plex: Plex) -> str:
    """Why a plex has no valid slot: the error of its first slot, for the message."""
    raw = plex.read(0, SLOT_SIZE)
    if not any(raw):
        return "no mirrorfs superblock (the plex is blank)"
    try:
        Superblock.decode(raw, Where(plex.spec, "superblock slot 0"))
    except FormatError as e:
        return str(e).split(": ", 2)[-1]
    return "no valid superblock slot"


class Volume:
    """A mirrorfs volume: open it, use its file system, close it.

    ``Volume.create`` formats plexes; ``Volume.open`` opens existing ones. A
    background thread commits a CP every ``cp_interval`` seconds while data
    is dirty; ``sync`` commits at once; ``close`` commits and releases.
    """

    def __init__(self, mirror: MirrorSet, store: Store, volume_file: VolumeFile | None,
                 cp_interval: float | None = CP_INTERVAL_S) -> None:
        self.mirror = mirror
        self.store = store
        self.fs = FileSystem(store)
        self.volume_file = volume_file
        self._closed = False
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self.cp_interval = cp_interval
        if cp_interval and not store.read_only:
            self._timer = threading.Thread(target=self._cp_loop, name="cp-timer", daemon=True)
            self._timer.start()

    # -- creating and opening -----------------------------------------------

    @classmethod
    def create(cls, plexes: Sequence[str], size: int, *, block_size: int = 4096,
               volume_file: str | os.PathLike[str] | None = None, min_plexes: int = 1,
               force: bool = False, clock: Clock | None = None,
               cp_interval: float | None = CP_INTERVAL_S) -> Volume:
        """Format the plexes named by ``plexes`` as a new volume of ``size`` bytes and open it."""
        check_block_size(block_size)
        if not plexes:
            raise UsageError("a volume needs at least one plex")
        if len(set(plexes)) != len(plexes):
            raise UsageError("the same plex is named twice")
        size = size // block_size * block_size
        if size < MIN_VOLUME_BYTES:
            raise UsageError(f"a volume needs at least {MIN_VOLUME_BYTES >> 20} MiB")
        vf = None
        if volume_file is not None:
            vf = VolumeFile(Path(volume_file), uuid.uuid4(), size, block_size, list(plexes))
        opened: list[Plex] = []
        try:
            for spec in plexes:
                path = vf.resolve(spec) if vf else spec
                if not force:
                    _refuse_labelled(path)
                opened.append(_create_plex(path, size))
            vol = cls.format(opened, size, block_size=block_size, min_plexes=min_plexes,
                             force=force, clock=clock, cp_interval=cp_interval,
                             volume_uuid=vf.uuid if vf else None)
        except BaseException:
            for p in opened:
                p.close()
            raise
        if vf is not None:
            vf.save()
            vol.volume_file = vf
        return vol

    @classmethod
    def format(cls, plexes: Sequence[Plex], size: int, *, block_size: int = 4096,
               min_plexes: int = 1, force: bool = False, clock: Clock | None = None,
               cp_interval: float | None = CP_INTERVAL_S,
               volume_uuid: uuid.UUID | None = None) -> Volume:
        """Write a new volume's labels on already opened plexes and open it."""
        check_block_size(block_size)
        size = size // block_size * block_size
        clock = clock or SystemClock()
        for plex in plexes:
            if plex.size < size:
                raise PlexError(plex.spec, f"holds {plex.size} bytes, the volume needs {size}")
            if not force:
                _refuse_existing(plex)
        vol_uuid = volume_uuid or uuid.uuid4()
        slots = [PlexSlot(p, uuid.uuid4(), i, PlexState.IN_SYNC) for i, p in enumerate(plexes)]
        members = tuple(Member(s.plex_uuid, s.ordinal, PlexState.IN_SYNC, 0) for s in slots)
        nblocks = size // block_size
        mirror = MirrorSet(slots, block_size, nblocks, min_plexes)
        cp_id = uuid.uuid4()
        now = clock.time_ns()
        # Blank both rings first: a plex's old labels must not outlive the new one.
        blank = bytes(RING_BYTES)
        for s in slots:
            s.plex.writev(0, [blank])
            s.plex.writev(size - RING_BYTES, [blank])
        mirror.write_superblocks(lambda s: empty_superblock(
            block_size, nblocks, vol_uuid, cp_id, s, members, min_plexes, now))
        store = Store(mirror, slots[0].sb or _never(), clock=clock)
        FileSystem.format_root(store, uid=os.getuid(), gid=os.getgid())
        return cls(mirror, store, None, cp_interval)

    @classmethod
    def open(cls, target: str | os.PathLike[str] | Sequence[str], *, read_only: bool = False,
             only: Sequence[str] | None = None, degraded: bool = False,
             clock: Clock | None = None, cp_interval: float | None = CP_INTERVAL_S,
             prefer: str | None = None, split_ok: bool = False) -> Volume:
        """Open a volume from its volume file (or a list of plex specs)."""
        if isinstance(target, (str, os.PathLike)):
            vf: VolumeFile | None = VolumeFile.load(target)
            assert vf is not None
            specs = [vf.resolve(p) for p in vf.plexes]
        else:
            vf, specs = None, list(target)
        partial = bool(only)
        if only:
            by_path = {os.path.abspath(s) if "://" not in s else s: s for s in specs}
            chosen = []
            for name in only:
                for cand in (name, vf.resolve(name) if vf else name):
                    key = os.path.abspath(cand) if "://" not in cand else cand
                    if key in by_path:
                        chosen.append(by_path[key])
                        break
                else:
                    chosen.append(vf.resolve(name) if vf else name)
            unknown = [c for c in chosen if c not in specs and vf is not None]
            if unknown:
                raise UsageError(f"{unknown[0]} is not a plex of this volume "
                                 f"(its plexes: {', '.join(specs)})")
            specs = chosen
        plexes: list[Plex] = []
        missing: list[tuple[str, str]] = []
        try:
            for spec in specs:
                try:
                    plexes.append(open_plex(spec, read_only=read_only))
                except PlexError as e:
                    missing.append((spec, str(e)))
            vol = cls.attach(plexes, read_only=read_only, degraded=degraded, clock=clock,
                             cp_interval=cp_interval, volume_uuid=vf.uuid if vf else None,
                             size_hint=vf.size if vf else None, missing=missing,
                             partial=partial,
                             prefer=(vf.resolve(prefer) if vf and prefer else prefer),
                             split_ok=split_ok)
        except BaseException:
            for p in plexes:
                p.close()
            raise
        vol.volume_file = vf
        return vol

    @classmethod
    def attach(cls, plexes: Sequence[Plex], *, read_only: bool = False, degraded: bool = False,
               clock: Clock | None = None, cp_interval: float | None = CP_INTERVAL_S,
               volume_uuid: uuid.UUID | None = None, size_hint: int | None = None,
               missing: Sequence[tuple[str, str]] = (), partial: bool = False,
               prefer: str | None = None, split_ok: bool = False) -> Volume:
        """Open a volume on already opened plexes.

        Opening rules (DESIGN.md; issue "Mirrored volumes"): a member that the
        newest label records as in sync but that is not here (missing,
        unreadable, or left out with ``partial``) makes the open refuse
        unless ``degraded`` (or, for a chosen subset, ``read_only``): an
        accidental partial open must not start a split. A writable degraded
        open pins the current CP as a resync base for the absent plexes.
        """
        labels: list[tuple[Plex, Superblock]] = []
        unreadable: list[tuple[str, str]] = list(missing)
        errors: list[MirrorfsError] = []
        for plex in plexes:
            if plex.size < 2 * RING_BYTES:  # a read of its rings would fail as an I/O error
                small = FormatError(f"plex {plex.spec}", f"holds {plex.size} bytes, too few "
                                    f"for a mirrorfs plex; is this a mirrorfs plex?")
                unreadable.append((plex.spec, str(small)))
                errors.append(small)
                continue
            try:
                sb = read_label(plex, size_hint)
            except MirrorfsError as e:
                unreadable.append((plex.spec, str(e)))
                errors.append(e)
                continue
            if sb is None:
                err = FormatError(f"plex {plex.spec}", _label_error(plex) +
                                  "; is this a mirrorfs plex?")
                unreadable.append((plex.spec, str(err)))
                errors.append(err)
                continue
            if plex.size < sb.nblocks * sb.block_size:  # ring B and blocks past the end: gone
                cut = PlexError(plex.spec, f"holds {plex.size} bytes but its label says the "
                                f"volume has {sb.nblocks * sb.block_size}; the image is truncated")
                unreadable.append((plex.spec, str(cut)))
                errors.append(cut)
                continue
            labels.append((plex, sb))
        if not labels:
            if errors:
                raise errors[0]
            raise PlexError(missing[0][0] if missing else "?",
                            missing[0][1] if missing else "no plexes to open")
        vol_uuid = volume_uuid or labels[0][1].volume_uuid
        for plex, sb in labels:
            if sb.volume_uuid != vol_uuid:
                raise ForeignPlex(plex.spec, sb.volume_uuid, vol_uuid)
        if not read_only and not partial and prefer is None and not split_ok:
            fork = _fork(labels)
            if fork:
                raise PlexError(f"{fork[0]} and {fork[1]}", "each went on alone (split brain); "
                                "read-only commands still work; choose the survivor with "
                                "`mirrorfs resync --prefer PLEX VOLUME`")
        mirror, best = _assemble(labels, read_only, prefer)
        here = {s.plex_uuid for s in mirror.slots}
        absent = [m for m in best.members if m.state == PlexState.IN_SYNC
                  and m.plex_uuid not in here]
        if absent and unreadable and not degraded:
            spec, why = unreadable[0]
            raise PlexError(spec, f"{why.split(': ', 1)[-1]}; the volume opens without it "
                                  "only with --degraded")
        if absent and partial and not (degraded or read_only):
            raise UsageError(f"{len(absent)} in-sync plex(es) left out; open with --read-only "
                             "to inspect, or --degraded to run without them (they then need "
                             "a resync)")
        if absent and not unreadable and not partial and not degraded:
            raise PlexError(f"plex #{absent[0].ordinal}", f"member {absent[0].plex_uuid} is in "
                            "sync but was not given; open with --degraded to run without it")
        store = Store(mirror, best, read_only=read_only, clock=clock)
        vol = cls(mirror, store, None, cp_interval)
        if not read_only:
            try:
                vol._pin_bases_at_open(absent, labels)
                # after the pins: they must name the CP the absent plexes hold, not a newer one
                vol.fs.reclaim_orphans()  # files a close or a crash left unlinked but open
            except BaseException:
                vol.close()
                raise
        return vol

    def _pin_bases_at_open(self, absent: Sequence[Member],
                           labels: Sequence[tuple[Plex, Superblock]]) -> None:
        """Pin what absent and stale plexes hold, so their resync copies only what they miss.

        Absent in-sync members hold the current CP. A stale plex one CP behind
        (a crash between two plexes' superblock writes) holds CP n-1, whose
        roots the source's ring still has and whose blocks CP n has not yet
        let anyone reuse.
        """
        store = self.store
        if absent:
            store.pin_current()
        src = next(p for p, sb in labels if sb.cp == store.cp and sb.cp_id == store.cp_id)
        for s in self.mirror.slots:
            sb = s.sb
            if sb is None or s.state != PlexState.STALE or sb.cp != store.cp - 1:
                continue
            if any(r.guid == sb.cp_id for r in store.snapshots):
                continue
            for old in read_slots(src):
                if old is not None and old.cp == sb.cp and old.cp_id == sb.cp_id:
                    store.pin_slot(old)
                    break
        store.commit()

    # -- life cycle -----------------------------------------------------------

    def _cp_loop(self) -> None:
        interval = self.cp_interval or CP_INTERVAL_S
        while not self._stop.wait(min(interval, 1.0)):
            st = self.store
            if st.dirty and st.clock.monotonic() - st.last_commit >= interval:
                # a failed commit marks the store broken; callers see it on their next write
                with contextlib.suppress(MirrorfsError):
                    st.commit(wait=False)  # the plexes work without the lock held ...
                    st.settle()  # ... and the CP lands here, not in some writer's call

    def sync(self) -> bool:
        """Commit a CP now; returns False when nothing was dirty."""
        return self.store.commit()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._timer is not None:
            self._timer.join()
        try:
            if not self.store.read_only and self.store.broken is None:
                self.store.commit()
        finally:
            with contextlib.suppress(MirrorfsError):
                self.store.drain()  # a broken store may still have a CP in flight
            self.mirror.close()

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- path API ------------------------------------------------------------

    def _ino(self, path: str, follow: bool = True) -> int:
        return self.fs.resolve(path, follow)

    def stat(self, path: str) -> Attr:
        return self.fs.getattr(self._ino(path))

    def lstat(self, path: str) -> Attr:
        return self.fs.getattr(self._ino(path, follow=False))

    def exists(self, path: str) -> bool:
        try:
            self._ino(path)
            return True
        except FsError:
            return False

    def is_dir(self, path: str) -> bool:
        try:
            return stat.S_ISDIR(self.stat(path).mode)
        except FsError:
            return False

    def listdir(self, path: str = "/") -> list[str]:
        return [n.decode(errors="surrogateescape") for n in self.fs.listdir(self._ino(path))]

    def scandir(self, path: str = "/") -> Iterator[tuple[str, Attr]]:
        ino = self._ino(path)
        for name, child, _, _ in self.fs.readdir(ino):
            if name in (b".", b".."):
                continue
            yield name.decode(errors="surrogateescape"), self.fs.getattr(child)

    def mkdir(self, path: str, mode: int = 0o755, parents: bool = False,
              exist_ok: bool = False) -> None:
        if parents:
            parts = [p for p in path.split("/") if p]
            for i in range(1, len(parts) + 1):
                self.mkdir("/" + "/".join(parts[:i]), mode, exist_ok=True)
            return
        parent, name = self.fs.resolve_parent(path)
        try:
            self.fs.mkdir(parent, name, mode, os.getuid(), os.getgid())
        except FsError as e:
            if not (exist_ok and e.errno == 17 and self.is_dir(path)):
                raise FsError(e.errno, path) from None

    def unlink(self, path: str) -> None:
        parent, name = self.fs.resolve_parent(path)
        self._path_op(path, self.fs.unlink, parent, name)

    def rmdir(self, path: str) -> None:
        parent, name = self.fs.resolve_parent(path)
        self._path_op(path, self.fs.rmdir, parent, name)

    def rename(self, src: str, dst: str, replace: bool = True) -> None:
        sp, sn = self.fs.resolve_parent(src)
        dp, dn = self.fs.resolve_parent(dst)
        try:
            self.fs.rename(sp, sn, dp, dn, noreplace=not replace)
        except FsError as e:
            raise FsError(e.errno, f"{src} -> {dst}", str(e).split(": ", 1)[-1]) from None

    def symlink(self, target: str, path: str) -> None:
        parent, name = self.fs.resolve_parent(path)
        self._path_op(path, self.fs.symlink, parent, name, target.encode(), os.getuid(),
                      os.getgid())

    def readlink(self, path: str) -> str:
        return self.fs.readlink(self._ino(path, follow=False)).decode(errors="surrogateescape")

    def link(self, src: str, dst: str) -> None:
        ino = self._ino(src, follow=False)
        parent, name = self.fs.resolve_parent(dst)
        self._path_op(dst, self.fs.link, ino, parent, name)

    def chmod(self, path: str, mode: int) -> None:
        self.fs.setattr(self._ino(path), mode=mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        self.fs.setattr(self._ino(path), uid=uid, gid=gid)

    def utime(self, path: str, atime_ns: int, mtime_ns: int) -> None:
        self.fs.setattr(self._ino(path), atime_ns=atime_ns, mtime_ns=mtime_ns)

    def truncate(self, path: str, size: int) -> None:
        self.fs.setattr(self._ino(path), size=size)

    def statfs(self) -> StatFs:
        return self.fs.statfs()

    def _path_op(self, path: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except FsError as e:
            raise FsError(e.errno, path, str(e).split(": ", 1)[-1]) from None

    def open_file(self, path: str, mode: str = "rb", *, perm: int = 0o644) -> IO[Any]:
        """A file object, like the built-in ``open`` (text modes wrap the binary one)."""
        raw = MirrorFile(self, path, mode.replace("t", "").replace("b", ""), perm)
        binary = "b" in mode
        buffered: io.BufferedIOBase
        if raw.readable() and raw.writable():
            buffered = _BufferedRandom(raw, FILE_BUFFER)
        elif raw.writable():
            buffered = _BufferedWriter(raw, FILE_BUFFER)
        else:
            buffered = io.BufferedReader(raw, FILE_BUFFER)
        return buffered if binary else io.TextIOWrapper(buffered)

    def read_bytes(self, path: str) -> bytes:
        with self.open_file(path, "rb") as f:
            data: bytes = f.read()
            return data

    def write_bytes(self, path: str, data: bytes) -> None:
        with self.open_file(path, "wb") as f:
            f.write(data)

    # -- plexes ---------------------------------------------------------------

    def _slot(self, spec: str) -> PlexSlot:
        want = self.volume_file.resolve(spec) if self.volume_file else spec
        for s in self.mirror.slots:
            if s.spec in (spec, want) or os.path.abspath(s.spec) == os.path.abspath(want):
                return s
        raise UsageError(f"{spec} is not an open plex of this volume (see `mirrorfs status`)")

    def _others_in_sync(self, slot: PlexSlot) -> list[PlexSlot]:
        return [s for s in self.mirror.slots if s is not slot and s.state == PlexState.IN_SYNC]

    def plex_offline(self, spec: str) -> PlexSlot:
        """Take a plex out of the in-sync set on purpose; it keeps the CP it holds.

        The current CP is pinned as a resync base first, so bringing the plex
        back copies only what changed while it was away.
        """
        with self.store.lock:
            slot = self._slot(spec)
            if slot.state != PlexState.IN_SYNC:
                raise UsageError(f"{slot.spec} is {slot.state.label}, not in sync")
            if len(self._others_in_sync(slot)) < max(1, self.mirror.min_plexes):
                raise UsageError(f"{slot.spec} is the last in-sync plex; it cannot go offline")
            self.store.commit()
            slot.state = PlexState.OFFLINE
            self.store.pin_current()
            self.store.commit(force=True)
            return slot

    def plex_online(self, spec: str) -> PlexSlot:
        """Bring an offline plex back as stale: the next resync brings it in sync."""
        with self.store.lock:
            self.store.drain()
            slot = self._slot(spec)
            if slot.state not in (PlexState.OFFLINE, PlexState.FAILED):
                raise UsageError(f"{slot.spec} is {slot.state.label}, not offline or failed")
            slot.state = PlexState.STALE
            self.store.commit(force=True)
            return slot

    def plex_add(self, spec: str) -> PlexSlot:
        """Attach a new, empty plex as stale (a resync fills it) and list it in the volume file."""
        with self.store.lock:
            st = self.store
            st.drain()
            if any(s.spec == spec for s in self.mirror.slots):
                raise UsageError(f"{spec} is already a plex of this volume")
            path = self.volume_file.resolve(spec) if self.volume_file else spec
            _refuse_labelled(path)
            if len(st.members) >= MAX_PLEXES:
                raise UsageError(f"a volume has at most {MAX_PLEXES} plexes")
            size = st.nblocks * st.block_size
            plex = _create_plex(path, size)
            ordinal = max([m.ordinal for m in st.members.values()] + [-1]) + 1
            slot = PlexSlot(plex, uuid.uuid4(), ordinal, PlexState.STALE)
            blank = bytes(RING_BYTES)
            plex.writev(0, [blank])
            plex.writev(size - RING_BYTES, [blank])
            label = empty_superblock(st.block_size, st.nblocks, st.volume_uuid, uuid.uuid4(),
                                     slot, (Member(slot.plex_uuid, ordinal, PlexState.STALE,
                                                   0),), st.min_plexes,
                                     st.clock.time_ns())
            for off in cp_offsets(size, 0):
                plex.writev(off, [label.encode()])
            plex.flush()
            slot.sb = label
            self.mirror.add_slot(slot)
            st.commit(force=True)
            if self.volume_file is not None:
                self.volume_file.plexes.append(spec)
                self.volume_file.save()
            return slot

    def plex_remove(self, spec: str) -> None:
        """Detach a plex for good: out of the membership, the volume file, and its label wiped."""
        with self.store.lock:
            slot = self._slot(spec)
            if slot.state == PlexState.IN_SYNC and not self._others_in_sync(slot):
                raise UsageError(f"{slot.spec} is the last in-sync plex; it cannot be removed")
            self.store.commit()
            self.mirror.remove_slot(slot)
            self.store.set_member(None, slot.plex_uuid)
            self.store.commit(force=True)
            try:
                blank = bytes(RING_BYTES)
                size = self.store.nblocks * self.store.block_size
                slot.plex.writev(0, [blank])
                slot.plex.writev(size - RING_BYTES, [blank])
                slot.plex.flush()
            except MirrorfsError:
                pass  # a dead plex keeps its stale label; it is no member any more
            finally:
                slot.plex.close()
            if self.volume_file is not None:
                vf = self.volume_file
                vf.plexes = [p for p in vf.plexes
                             if vf.resolve(p) != slot.spec and p != spec]
                vf.save()

    # -- resync ---------------------------------------------------------------

    def resync(self, *, background: bool = False, **kwargs: Any) -> Any:
        """Bring every stale plex in sync (see ``mirrorfs.resync.resync_volume``).

        With ``background=True`` it runs in a thread while the volume keeps
        taking writes, and returns a ``ResyncJob`` whose ``wait()`` gives the
        report.
        """
        from .resync import ResyncJob, resync_volume

        if background:
            return ResyncJob(self, **kwargs)
        return resync_volume(self, **kwargs)

    # -- snapshots ------------------------------------------------------------

    def snapshot(self, name: str, kind: SnapKind = SnapKind.USER) -> SnapshotRecord:
        return self.store.create_snapshot(name, kind)

    def snapshots(self) -> list[SnapshotRecord]:
        return list(self.store.snapshots)

    def delete_snapshot(self, name: str) -> None:
        with self.store.lock:
            self.store.delete_snapshot(name)

    def rollback(self, name: str) -> None:
        self.fs.rollback(name)


class MirrorFile(io.RawIOBase):
    """A file of a volume as a raw, seekable file object."""

    def __init__(self, volume: Volume, path: str, mode: str, perm: int) -> None:
        super().__init__()
        fs = volume.fs
        self._fs = fs
        self.name = path
        self.mode = mode
        m = mode or "r"
        self._read = "r" in m or "+" in m
        self._write = any(c in m for c in "wax+")
        self._append = "a" in m
        if not set(m) <= set("rwax+") or sum(c in m for c in "rwax") != 1:
            raise UsageError(f"invalid mode {mode!r}")
        try:
            if "r" in m:
                ino = fs.resolve(path)
            else:
                parent, name = fs.resolve_parent(path)
                try:
                    ino = fs.lookup(parent, name)
                    if "x" in m:
                        raise FsError(17, path)
                    ino = fs.resolve(path)
                except FsError as e:
                    if e.errno != 2:
                        raise
                    ino = fs.create(parent, name, perm, os.getuid(), os.getgid())
        except FsError as e:
            raise FsError(e.errno, path, str(e).split(": ", 1)[-1]) from None
        attr = fs.getattr(ino)
        if stat.S_ISDIR(attr.mode):
            raise FsError(21, path)
        if self._write and (ino >= SNAP_BASE or fs.store.read_only):
            raise FsError(30, path)  # EROFS at open, as open(2) on a read-only file system
        self.ino = ino
        if "w" in m and attr.size:
            fs.setattr(ino, size=0)
        self._pos = attr.size if self._append else 0
        fs.opened(ino)

    def readable(self) -> bool:
        return self._read

    def writable(self) -> bool:
        return self._write

    def seekable(self) -> bool:
        return True

    def readall(self) -> bytes:
        """The rest of the file in one read (RawIOBase's default reads 8 KiB at a time)."""
        if not self._read:
            raise io.UnsupportedOperation("not open for reading")
        size = self._fs.getattr(self.ino).size
        data = self._fs.read(self.ino, self._pos, max(0, size - self._pos))
        self._pos += len(data)
        return data

    def readinto(self, b: Any) -> int:
        if not self._read:
            raise io.UnsupportedOperation("not open for reading")
        n = self._fs.readinto(self.ino, self._pos, memoryview(b).cast("B"))
        self._pos += n
        return n

    def write(self, b: Any) -> int:
        if not self._write:
            raise io.UnsupportedOperation("not open for writing")
        if self._append:
            self._pos = self._fs.getattr(self.ino).size
        n = self._fs.write(self.ino, self._pos, b)
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            pos = offset
        elif whence == 1:
            pos = self._pos + offset
        else:
            pos = self._fs.getattr(self.ino).size + offset
        if pos < 0:
            raise OSError(22, "negative seek position")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        self._fs.setattr(self.ino, size=size)
        return size

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a mirrorfs file has no OS descriptor")

    def close(self) -> None:
        if not self.closed:
            self._fs.released(self.ino)
        super().close()


class _PassingWrites:
    """A ``bytes`` write of PASS_BYTES_MIN or more passes the buffer of the buffered
    class this comes before, whole.

    Why: ``io.BufferedWriter`` hands a large write to the raw file as a
    memoryview of the caller's memory with no owner, valid only for the
    call, so the store had to copy every block of it; a ``bytes`` object
    cannot change, and the store keeps its whole blocks as views of it until
    the CP writes them, with no copy at all. 1 GiB in 1 MiB writes
    (/var/tmp/s7inst.py, five runs each): 944-1233 MB/s with 0.42-0.47 s
    of the writing thread's CPU passed whole, 894-946 MB/s with 0.84-0.89 s
    through the buffer. The buffer is flushed first, so the bytes land in
    the order they were written, and the buffered object is then seeked to
    where the raw file stands (after an append, the end): it caches the raw
    position, and a write it did not make would leave that stale.

    The buffered object's own lock covers one call, and a passed write is
    three (flush, the raw write, seek): a lock of ours makes every write one
    step again for other writing threads. Without it, four threads writing
    to one file object lost a quarter to a half of their bytes
    (/var/tmp/s7tiny.py). The price is the Python call: a million 16-byte
    writes take 0.28-0.31 s, against 0.09 s through ``io.BufferedWriter``.

    Left as is: reads from other threads (``r+b``) are not held by the lock,
    so a read that runs between a passed write's raw write and its seek
    leaves the position after the read's read-ahead, not after the bytes it
    returned. No byte is lost; only a shared position raced by readers and
    writers at once can differ from what ``io.BufferedRandom`` gives.
    """

    def __init__(self, raw: MirrorFile, buffer_size: int) -> None:
        super().__init__(raw, buffer_size)  # type: ignore[call-arg]
        self._writing = threading.Lock()

    def write(self, b: Any) -> int:
        with self._writing:
            if type(b) is not bytes or len(b) < PASS_BYTES_MIN:
                n: int = super().write(b)  # type: ignore[misc]
                return n
            f = cast(io.BufferedWriter, self)
            f.flush()
            done = f.raw.write(b)
            assert done is not None  # a MirrorFile never blocks
            f.seek(f.raw.tell())
            return done


class _BufferedWriter(_PassingWrites, io.BufferedWriter):
    pass


class _BufferedRandom(_PassingWrites, io.BufferedRandom):
    pass


def _create_plex(spec: str, size: int) -> Plex:
    if "://" in spec:
        plex = open_plex(spec)
        if plex.size < size:
            plex.close()
            raise PlexError(spec, f"holds {plex.size} bytes, the volume needs {size}")
        return plex
    return FilePlex.create(spec, size)


def _refuse_labelled(spec: str) -> None:
    """Refuse to format a plex that holds a mirrorfs label (before anything touches it)."""
    if "://" not in spec and not os.path.exists(spec):
        return
    try:
        plex = open_plex(spec, read_only=True)
    except PlexError:
        return
    try:
        _refuse_existing(plex)
    finally:
        plex.close()


def _refuse_existing(plex: Plex) -> None:
    try:
        sb = read_label(plex)
    except MirrorfsError:
        return
    if sb is not None:
        raise UsageError(f"{plex.spec} already holds a mirrorfs plex of volume "
                         f"{sb.volume_uuid}; use --force to overwrite it")


def _never() -> Superblock:
    raise AssertionError("write_superblocks sets every slot's superblock")


def _fork(labels: Sequence[tuple[Plex, Superblock]]) -> tuple[str, str] | None:
    """Two plexes that each committed CPs the other does not know (a split brain)."""
    from .resync._examine import advanced_alone

    for i, (pa, a) in enumerate(labels):
        for pb, b in labels[i + 1 :]:
            if a.resync is None and b.resync is None and advanced_alone(a, b) and (
                    advanced_alone(b, a)):
                return pa.spec, pb.spec
    return None


def _assemble(labels: list[tuple[Plex, Superblock]], read_only: bool = False,
              prefer: str | None = None) -> tuple[MirrorSet, Superblock]:
    """Slots for the opened plexes: those at the newest CP are in sync.

    The others take the state the newest label records for them (offline,
    failed, ...), or stale when it records them in sync or not at all.
    """
    candidates = [sb for _, sb in labels if sb.resync is None]
    if not candidates:
        raise PlexError(", ".join(p.spec for p, _ in labels),
                        "unfinished resync target(s) only: open the volume with the plex it "
                        "resyncs from (`mirrorfs status` names it), then run `mirrorfs resync`")
    if prefer is not None:
        chosen = [sb for p, sb in labels if p.spec == prefer or (
            os.path.abspath(p.spec) == os.path.abspath(prefer))]
        if not chosen:
            raise UsageError(f"--prefer {prefer}: not a plex of this volume that could be opened")
        if chosen[0].resync is not None:
            raise UsageError(f"--prefer {prefer}: that plex is an unfinished resync target")
        candidates = chosen
    best = max(candidates, key=lambda sb: sb.cp)
    slots = []
    for plex, sb in labels:
        if sb.resync is not None:
            state = PlexState.RESYNCING  # its slots may share the CP id: never in sync
        elif sb.cp == best.cp and sb.cp_id == best.cp_id:
            state = PlexState.IN_SYNC
        else:
            m = best.member(sb.plex_uuid)
            state = PlexState.STALE
            if m is not None and m.state in (PlexState.OFFLINE, PlexState.FAILED):
                state = m.state
            if sb.resync is not None:
                state = PlexState.RESYNCING
        slots.append(PlexSlot(plex, sb.plex_uuid, sb.plex_ordinal, state, sb,
                              resync=sb.resync if state == PlexState.RESYNCING else None))
    mirror = MirrorSet(slots, best.block_size, best.nblocks, best.min_plexes, read_only)
    return mirror, best
