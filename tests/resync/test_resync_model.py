"""Model-based test: writes, snapshots, plex outages and resyncs against an in-memory model.

A hypothesis state machine drives a 2- or 3-plex volume through random
sequences of: write a file, overwrite a range, delete a file, create and
delete snapshots, take a plex offline, leave plexes out of a (degraded)
reopen, resync, sync, close and reopen. The model is the file tree with its
bytes and each user snapshot's tree.

Invariants:

* after every step the active tree and every user snapshot equal the model;
* a resync brings every opened plex in sync, copies exactly its plan, and
  never needs a full copy (a resync base or a common snapshot always
  remains for a plex that was once in sync); then each of those plexes
  opened alone and read-only passes fsck and shows the model, with the same
  snapshot list on each;
* fsck of the volume is clean after every reopen and at the end (after a
  sync: fsck checks a committed image).

Plexes are only left out while an in-sync plex stays in, so the volume never
splits (split brains have their own tests in ``test_scenarios.py``).
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from mirrorfs.fs import fsck
from mirrorfs.volume import Volume

VOLUME_BYTES = 32 << 20
NAMES = [f"/f{i}" for i in range(6)]
SNAPS = [f"s{i}" for i in range(3)]
MAX_FILE = 48 << 10

Tree = dict[str, bytes]


def walk(vol: Volume, top: str = "/") -> Tree:
    """Files under ``top`` (flat: this model has no subdirectories) with their bytes."""
    out: Tree = {}
    for name, attr in vol.scandir(top):
        if name == ".snapshot":
            continue
        assert not stat.S_ISDIR(attr.mode), name
        out["/" + name] = vol.fs.read(attr.ino, 0, attr.size)
    return out


def scratch_dir() -> Path:
    """A fresh directory for the images (tmpfs when there is one: examples are many)."""
    shm = "/dev/shm"
    where = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="mirrorfs-model-", dir=where))


class ResyncMachine(RuleBasedStateMachine):
    """One volume, its model, and which plexes are opened, in sync, or left out."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = scratch_dir()
        self.vf = self.dir / "v.toml"
        self.specs: list[str] = []
        self.opened: list[str] = []
        self.vol: Volume | None = None
        self.files: dict[str, bytearray] = {}
        self.snaps: dict[str, Tree] = {}

    @initialize(nplexes=st.sampled_from([2, 3]))
    def create(self, nplexes: int) -> None:
        self.specs = [str(self.dir / f"p{i}.img") for i in range(nplexes)]
        self.opened = list(self.specs)
        self.vol = Volume.create(self.specs, VOLUME_BYTES, volume_file=self.vf,
                                 cp_interval=None)

    @property
    def v(self) -> Volume:
        assert self.vol is not None
        return self.vol

    def in_sync(self) -> list[str]:
        return [s.spec for s in self.v.mirror.in_sync()]

    # -- data -------------------------------------------------------------------------------

    @rule(name=st.sampled_from(NAMES), size=st.integers(0, MAX_FILE), seed=st.integers(0, 99))
    def write_file(self, name: str, size: int, seed: int) -> None:
        data = random.Random(seed).randbytes(size)
        self.v.write_bytes(name, data)
        self.files[name] = bytearray(data)

    @precondition(lambda self: self.files)
    @rule(data=st.data(), offset=st.integers(0, MAX_FILE), size=st.integers(1, 20000),
          seed=st.integers(0, 99))
    def overwrite_range(self, data: st.DataObject, offset: int, size: int, seed: int) -> None:
        name = data.draw(st.sampled_from(sorted(self.files)))
        chunk = random.Random(seed).randbytes(size)
        with self.v.open_file(name, "r+b") as fh:
            fh.seek(offset)
            fh.write(chunk)
        buf = self.files[name]
        if len(buf) < offset:
            buf.extend(bytes(offset - len(buf)))
        buf[offset : offset + size] = chunk

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    def delete_file(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.files)))
        self.v.unlink(name)
        del self.files[name]

    @rule()
    def sync(self) -> None:
        self.v.sync()

    # -- snapshots --------------------------------------------------------------------------

    @rule(name=st.sampled_from(SNAPS))
    def snapshot_create(self, name: str) -> None:
        if name in self.snaps:
            return
        self.v.snapshot(name)
        self.snaps[name] = {p: bytes(b) for p, b in self.files.items()}

    @precondition(lambda self: self.snaps)
    @rule(data=st.data())
    def snapshot_delete(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.snaps)))
        self.v.delete_snapshot(name)
        del self.snaps[name]

    # -- plexes -----------------------------------------------------------------------------

    @precondition(lambda self: len(self.in_sync()) >= 2)
    @rule(data=st.data())
    def plex_offline(self, data: st.DataObject) -> None:
        """Take an in-sync plex offline; at least one stays in sync."""
        spec = data.draw(st.sampled_from(self.in_sync()))
        self.v.plex_offline(spec)
        assert spec not in self.in_sync()

    @rule()
    def resync(self) -> None:
        """Resync, then check every opened plex alone; reopen the same plexes."""
        report = self.v.resync()
        event(f"resync of {len(report.plans)} plex(es)")
        for plan, res in zip(report.plans, report.results, strict=True):
            assert res.error is None, res.error
            assert res.blocks_copied == plan.blocks, (res, plan.as_dict())
            assert not plan.full, plan.as_dict()
        assert self.in_sync() == self.opened
        self.v.close()
        self.vol = None
        seen = []
        for spec in self.opened:
            vol = Volume.open(self.vf, only=[spec], read_only=True, cp_interval=None)
            try:
                self.check_model(vol)
                self.check_fsck(vol)
                seen.append([(r.name, r.guid, r.cp) for r in vol.snapshots()])
            finally:
                vol.close()
        assert all(s == seen[0] for s in seen), seen
        self.open(self.opened)

    @rule(leave_out=st.integers(-1, 2))
    def reopen(self, leave_out: int) -> None:
        """Close and reopen with every plex, or with one left out (degraded).

        A plex is left out only while an in-sync plex stays in, so no side
        ever advances without the other knowing: no split brain.
        """
        in_sync = self.in_sync()
        self.v.close()
        self.vol = None
        chosen = list(self.specs)
        if 0 <= leave_out < len(self.specs):
            rest = [s for s in self.specs if s != self.specs[leave_out]]
            if any(s in in_sync for s in rest):
                chosen = rest
        event("reopen with one plex left out" if chosen != self.specs else "reopen with all")
        self.open(chosen)
        self.check_fsck(self.v)

    def open(self, chosen: list[str]) -> None:
        partial = chosen != self.specs
        self.vol = Volume.open(self.vf, only=chosen if partial else None, degraded=partial,
                               cp_interval=None)
        self.opened = chosen

    # -- checks -----------------------------------------------------------------------------

    def check_model(self, vol: Volume) -> None:
        assert walk(vol) == {p: bytes(b) for p, b in self.files.items()}
        names = {r.name for r in vol.snapshots() if r.name in SNAPS}
        assert names == set(self.snaps)
        for name, tree in self.snaps.items():
            assert walk(vol, f"/.snapshot/{name}") == tree, name

    def check_fsck(self, vol: Volume) -> None:
        """fsck of the committed image (it is run on committed state, so commit first)."""
        vol.sync()
        report = fsck(vol.store)
        assert report.clean, [str(f) for f in report.findings]

    @invariant()
    def content_equals_model(self) -> None:
        if self.vol is not None:
            self.check_model(self.vol)

    def teardown(self) -> None:
        try:
            if self.vol is not None:
                self.check_fsck(self.vol)
                self.vol.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


ResyncMachine.TestCase.settings = settings(
    max_examples=50, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
test_resync_model = ResyncMachine.TestCase
test_resync_model.__doc__ = (
    "Random writes, snapshots, outages, reopens and resyncs keep the volume equal to the "
    "model, and every resync leaves each plex alone clean and identical.")
