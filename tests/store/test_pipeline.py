"""CPs in flight: writers go on while a CP's blocks and superblocks reach the plexes.

A CP started by the dirty limit flies in a thread of its own (``Store``
module docstring). These tests hold it at a gate inside the plex, before its
superblock write, and prove while it waits and after it lands:

* the data it carries reads back (from its own bytes: the plex lacks them),
  and writers may overwrite, extend and unlink what it carries;
* an image copied while it waits opens at the CP before it, complete;
* once it lands its blocks are the committed ones: the next CP, which frees
  them, must not reuse them, so a crash during it finds the flown CP intact.
"""

from __future__ import annotations

import random
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from mirrorfs.fs import fsck
from mirrorfs.ondisk import slot_offsets
from mirrorfs.plex import Buffer, FilePlex
from mirrorfs.store import _planes as planes
from mirrorfs.store import _store
from mirrorfs.store._store import plane_from_tree
from mirrorfs.volume import Volume

SIZE = 16 << 20
KIB = 1024
GATE_TIMEOUT_S = 30.0


class GatedPlex(FilePlex):
    """A FilePlex whose writes wait at a gate while it is held: every write, or slots only."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._slots = frozenset(slot_offsets(SIZE))
        self._open = threading.Event()
        self._open.set()
        self._all = False
        self.waiting = threading.Event()  # a write is held at the gate

    def hold(self, every_write: bool = False) -> None:
        """Hold the next superblock slot write (or, with ``every_write``, the next write)."""
        self._all = every_write
        self.waiting.clear()
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def writev(self, offset: int, bufs: Sequence[Buffer]) -> None:
        if (self._all or offset in self._slots) and not self._open.is_set():
            self.waiting.set()
            assert self._open.wait(GATE_TIMEOUT_S), "the test never opened the gate"
        super().writev(offset, bufs)


@pytest.fixture
def gated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Volume, GatedPlex]]:
    monkeypatch.setattr(_store, "DIRTY_LIMIT_BYTES", 256 * KIB)
    path = str(tmp_path / "p0.img")
    Volume.format([FilePlex.create(path, SIZE)], SIZE, cp_interval=None).close()
    plex = GatedPlex(path)
    vol = Volume.attach([plex], cp_interval=None)
    try:
        yield vol, plex
    finally:
        plex.release()
        vol.close()


def wait_at_gate(vol: Volume, plex: GatedPlex) -> None:
    assert plex.waiting.wait(GATE_TIMEOUT_S), "no CP reached the gate"
    assert vol.store._flight is not None, "the CP should be in flight"


def open_copy(src: str, dst: Path) -> Volume:
    shutil.copyfile(src, dst)
    return Volume.attach([FilePlex(str(dst), read_only=True)], read_only=True,
                         cp_interval=None)


def commit_x(vol: Volume, rng: random.Random) -> tuple[bytes, int]:
    """CP n: /x (40 KiB) committed; its bytes and n."""
    x = rng.randbytes(40 * KIB)
    vol.write_bytes("/x", x)
    vol.sync()
    return x, vol.store.cp


def crash_meets_cp_n(plex: GatedPlex, tmp_path: Path, cp_n: int, x: bytes) -> None:
    """A copy of the plex now (a crash) opens at CP n: /x as it was, no /a, fsck clean."""
    crash = open_copy(plex.spec, tmp_path / "crash.img")
    try:
        assert crash.store.cp == cp_n
        assert crash.read_bytes("/x") == x
        assert not crash.exists("/a")
        assert fsck(crash.store).clean
    finally:
        crash.close()


def test_a_flying_cp_reads_back_takes_overwrites_and_a_crash_meets_the_cp_before(
        gated: tuple[Volume, GatedPlex], tmp_path: Path) -> None:
    vol, plex = gated
    rng = random.Random(7)
    x, cp_n = commit_x(vol, rng)

    plex.hold(every_write=True)  # nothing of CP n+1 reaches the plex
    a = bytearray(rng.randbytes(300 * KIB))  # past the dirty limit: CP n+1 flies
    vol.write_bytes("/a", bytes(a))
    wait_at_gate(vol, plex)
    assert vol.store.cp == cp_n  # not landed: the plex holds CP n only

    # the flying CP's blocks are not on the plex yet: reads come from its bytes
    assert vol.read_bytes("/a") == a
    patch = rng.randbytes(5000)
    with vol.open_file("/a", "r+b") as f:  # partial blocks: read-modify-write of flying ones
        f.seek(4000)
        f.write(patch)
        f.seek(len(a))
        f.write(b"tail")
    a[4000:9000] = patch
    a += b"tail"
    assert vol.read_bytes("/a") == a
    vol.unlink("/x")

    crash_meets_cp_n(plex, tmp_path, cp_n, x)

    plex.release()
    vol.sync()
    assert vol.store.cp == cp_n + 2
    assert vol.read_bytes("/a") == a and not vol.exists("/x")
    assert fsck(vol.store).clean


def test_the_cp_after_a_flown_one_never_overwrites_its_blocks(
        gated: tuple[Volume, GatedPlex], tmp_path: Path) -> None:
    """Once a flying CP lands, its plane is the committed one (what the allocator
    never hands out), and a crash during the next CP, which frees /a's blocks
    (an unlink) and writes as much elsewhere, finds the flown CP whole."""
    vol, plex = gated
    rng = random.Random(8)
    plex.hold()
    a = rng.randbytes(300 * KIB)
    vol.write_bytes("/a", a)  # CP n+1 flies carrying /a
    wait_at_gate(vol, plex)
    cp_flown = vol.store.cp + 1
    plex.release()
    vol.store.drain()
    assert vol.store.cp == cp_flown
    store = vol.store
    on_disk = plane_from_tree(store.plane_tree, store.plane_words)
    assert np.array_equal(store.alloc.committed, on_disk)

    # CP n+2 unlinks /a (placed first, its blocks are freed before /b's are taken)
    # and writes /b; the allocator may take any free block: start its search at
    # block 0, below /a's blocks
    vol.store.alloc._cursor = 0
    plex.hold()
    vol.unlink("/a")
    vol.write_bytes("/b", rng.randbytes(200 * KIB))
    vol.store.commit(wait=False)
    wait_at_gate(vol, plex)

    crash = open_copy(plex.spec, tmp_path / "crash.img")  # CP n+2's data, not its slots
    try:
        assert crash.store.cp == cp_flown
        assert crash.read_bytes("/a") == a
        assert fsck(crash.store).clean
    finally:
        crash.close()
    plex.release()
    vol.store.drain()
    assert fsck(vol.store).clean


def test_the_cp_placed_while_one_flies_never_takes_its_blocks(
        gated: tuple[Volume, GatedPlex], monkeypatch: pytest.MonkeyPatch) -> None:
    """CP n+2 is placed while CP n+1 still flies. It unlinks /a, which only CP n+1
    holds: those blocks are in neither ``active`` nor ``committed`` (CP n's plane),
    yet the flying CP is still writing them, and a crash before CP n+2 lands must
    find them whole. The placement holds the flying CP's plane from allocation."""
    vol, plex = gated
    rng = random.Random(9)
    store = vol.store
    plex.hold()
    vol.write_bytes("/a", rng.randbytes(300 * KIB))  # CP n+1 flies carrying /a
    wait_at_gate(vol, plex)
    flying = store._flight
    assert flying is not None

    placed: list[_store._Flight] = []
    place = store._place

    def capture() -> _store._Flight:
        fl = place()
        placed.append(fl)
        return fl

    store._place = capture  # type: ignore[method-assign]
    monkeypatch.setattr(_store, "DIRTY_LIMIT_BYTES", SIZE)  # the test starts CP n+2 itself
    vol.unlink("/a")  # placed before /b (an older tree): /a's blocks are freed first
    vol.write_bytes("/b", rng.randbytes(600 * KIB))  # more leaves than one node holds
    alloc, free = store.alloc, store.alloc.free

    def free_then_rescan(blks: np.ndarray) -> None:
        """The worst refill schedule the allocator may meet: after every free, its
        free list is gone and the next allocation rescans from block 0 (as after a
        wrap), so the blocks just freed are offered unless something holds them."""
        free(blks)
        alloc._free = np.zeros(0, dtype=np.uint64)
        alloc._scanned, alloc._cursor = 0, 0

    alloc.free = free_then_rescan  # type: ignore[method-assign]
    committer = threading.Thread(target=store.commit, kwargs={"wait": False})
    committer.start()
    try:
        for _ in range(int(GATE_TIMEOUT_S * 100)):
            if placed:
                break
            threading.Event().wait(0.01)
        assert placed, "CP n+2 was not placed while CP n+1 flew"
        assert store._flight is flying  # placed ahead, not after landing
        taken = planes.test_bits(flying.plane, placed[0].blks)
        assert not taken.any(), f"CP n+2 took {int(taken.sum())} blocks of the flying CP"
    finally:
        plex.release()
        committer.join(GATE_TIMEOUT_S)
    store.drain()
    assert store.cp == flying.cp + 1
    assert fsck(store).clean


def test_a_flight_switches_threads_quickly_and_puts_the_interval_back(
        gated: tuple[Volume, GatedPlex]) -> None:
    """While a CP flies, the interpreter's switch interval is FLIGHT_SWITCH_INTERVAL
    (the flight's system calls get the GIL back soon); once no flight runs, the
    caller's own interval is back."""
    vol, plex = gated
    before = sys.getswitchinterval()
    assert before > _store.FLIGHT_SWITCH_INTERVAL
    plex.hold(every_write=True)
    vol.write_bytes("/a", bytes(300 * KIB))  # past the dirty limit: a CP flies
    wait_at_gate(vol, plex)
    assert sys.getswitchinterval() == _store.FLIGHT_SWITCH_INTERVAL
    plex.release()
    vol.sync()
    assert vol.store._flight is None
    assert sys.getswitchinterval() == before


def test_the_next_cp_writes_its_blocks_while_one_flies_and_a_crash_meets_the_cp_before(
        gated: tuple[Volume, GatedPlex], tmp_path: Path) -> None:
    """A CP placed while another flies writes its blocks at once (the disk does
    not wait between CPs). Those blocks are free in both CPs before it, so an
    image copied while the flying CP waits before its superblock, with the next
    CP's data already on the plex, opens at the CP before both, intact."""
    vol, plex = gated
    rng = random.Random(11)
    x, cp_n = commit_x(vol, rng)

    plex.hold()  # CP n+1's superblock waits at the gate; data writes pass
    a = rng.randbytes(300 * KIB)
    vol.write_bytes("/a", a)  # past the dirty limit: CP n+1 flies
    wait_at_gate(vol, plex)
    b = rng.randbytes(300 * KIB)
    with vol.open_file("/a", "r+b") as f:
        f.write(b)  # CP n+2 overwrites /a in place: its blocks must take none of n+1's
    syncer = threading.Thread(target=vol.sync)  # places CP n+2, waits for n+1 to land
    syncer.start()
    image = Path(plex.spec)
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while b[:4096] not in image.read_bytes():  # CP n+2's first block reaches the plex
        assert time.monotonic() < deadline, "CP n+2 wrote nothing while CP n+1 flew"
        time.sleep(0.01)
    assert syncer.is_alive() and vol.store.cp == cp_n

    crash_meets_cp_n(plex, tmp_path, cp_n, x)

    plex.release()
    syncer.join(GATE_TIMEOUT_S)
    assert not syncer.is_alive()
    assert vol.store.cp == cp_n + 2
    assert vol.read_bytes("/a") == b
    assert fsck(vol.store).clean
