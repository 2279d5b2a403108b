"""Scrub without the store lock: the volume goes on while a scrub walks and repairs.

``scrub`` walks the last CP as ``Store.freeze`` keeps it. These tests hold
the scrub at a gate inside its first plex read and prove, meanwhile, that
writers take the lock, write and commit; and, after, that the scrub still
repaired the bad copy it was there for and found nothing else, although the
writers freed and rewrote blocks of the image it walked.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrorfs.fs import fsck, scrub
from mirrorfs.plex import FilePlex
from mirrorfs.volume import Volume

SIZE = 64 << 20
BS = 4096
KIB = 1024
TIMEOUT_S = 30.0


class ScrubGatedPlex(FilePlex):
    """A FilePlex whose reads from the thread named ``scrub`` wait at a gate while held."""

    def __init__(self, path: str, gate: threading.Event, waiting: threading.Event) -> None:
        super().__init__(path)
        self.gate = gate
        self.waiting = waiting

    def readinto(self, offset: int, buf: memoryview) -> None:
        if threading.current_thread().name == "scrub" and not self.gate.is_set():
            self.waiting.set()
            assert self.gate.wait(TIMEOUT_S), "the test never opened the gate"
        super().readinto(offset, buf)


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[Volume, threading.Event, threading.Event]]:
    paths = [str(tmp_path / f"p{i}.img") for i in range(2)]
    Volume.format([FilePlex.create(p, SIZE) for p in paths], SIZE, cp_interval=None).close()
    gate, waiting = threading.Event(), threading.Event()
    gate.set()
    vol = Volume.attach([ScrubGatedPlex(p, gate, waiting) for p in paths], cp_interval=None)
    try:
        yield vol, gate, waiting
    finally:
        gate.set()
        vol.close()


def in_time(fn: object, *args: object) -> None:
    """Run ``fn(*args)`` in a thread; fail if it does not end in time (a held lock)."""
    err: list[BaseException] = []

    def run() -> None:
        try:
            fn(*args)  # type: ignore[operator]
        except BaseException as e:
            err.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(TIMEOUT_S)
    assert not t.is_alive(), "a writer waited for the scrub: it holds the store lock"
    if err:
        raise err[0]


def test_writers_commit_while_a_scrub_walks_and_the_scrub_still_repairs(
        gated: tuple[Volume, threading.Event, threading.Event]) -> None:
    vol, gate, waiting = gated
    rng = random.Random(11)
    old = rng.randbytes(256 * KIB)
    doomed = rng.randbytes(512 * KIB)
    vol.write_bytes("/old", old)
    vol.write_bytes("/doomed", doomed)
    vol.sync()
    # a bad copy on plex 1 for the scrub to repair
    blk = int(vol.store.objects.tree(vol.stat("/old").ino).leaf_ptrs(3, 4)["blk"][0])
    plex1 = vol.mirror.slots[1].plex
    bad = bytearray(plex1.read(blk * BS, BS))
    bad[100] ^= 0xFF
    plex1.writev(blk * BS, [bytes(bad)])

    gate.clear()
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(scrub(vol.store)), name="scrub")
    t.start()
    assert waiting.wait(TIMEOUT_S), "the scrub never read a plex"

    # the scrub is inside its walk: writers must get the lock, and may free and reuse
    # blocks of the image it walks (the allocator searches from block 0 here)
    new = rng.randbytes(768 * KIB)

    def churn() -> None:
        vol.unlink("/doomed")
        vol.sync()
        vol.store.alloc._cursor = 0
        vol.write_bytes("/new", new)
        vol.sync()

    in_time(churn)
    gate.set()
    t.join(TIMEOUT_S)
    assert not t.is_alive()
    report = result[0]
    assert report.repaired >= 1  # type: ignore[attr-defined]
    assert report.clean, [str(f) for f in report.findings]  # type: ignore[attr-defined]
    assert vol.read_bytes("/old") == old and vol.read_bytes("/new") == new
    assert plex1.read(blk * BS, BS) != bytes(bad)  # repaired in place
    after = fsck(vol.store)
    assert after.clean, [str(f) for f in after.findings]


def test_blocks_held_by_a_scrub_return_when_it_ends(
        gated: tuple[Volume, threading.Event, threading.Event]) -> None:
    """Blocks freed while a scrub walks stay held for it, and are free once it ends."""
    vol, _, _ = gated
    vol.write_bytes("/f", random.Random(12).randbytes(1 << 20))
    vol.sync()
    free0 = vol.statfs().free
    frozen = vol.store.freeze()
    try:
        vol.unlink("/f")
        vol.sync()
        assert vol.statfs().free < free0 + 256  # /f's blocks are still held
    finally:
        vol.store.thaw(frozen)
    assert vol.statfs().free >= free0 + 256
    assert fsck(vol.store).clean
