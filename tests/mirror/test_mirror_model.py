"""Model-based test: file operations mixed with plex failures, against an in-memory model.

A hypothesis state machine drives a 2- or 3-plex volume whose plexes are
``FaultyPlex`` wrappers and keeps a model: path -> bytes, and the model of
each user snapshot. Rules:

* file operations: write, patch, truncate, unlink, snapshot; ``sync``
  commits and runs fsck on the live volume, which may report bad copies only
  on a faulty plex;
* ``fail_plex`` / ``vanish_plex``: a random in-sync plex starts failing its
  writes or its flushes, or its device vanishes (reads fail too), optionally
  followed by a commit at once; at least one healthy in-sync plex is always
  kept, so the volume never drops below ``min_plexes`` = 1;
* ``restart``: either close and reopen with ``degraded=True`` (a vanished
  plex stays away: it is not given to the open; the others come back
  healthy), or close, reopen with every plex and ``vol.resync()``: then every
  plex is in sync, and each plex opened alone and read-only holds the model
  (files and snapshots) and passes fsck.

After every step the files read back equal to the model, whatever failed.
Failures warn (a plex leaves the in-sync set; a read heals from another plex);
those two warnings are declared, any other fails the test.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from mirrorfs.fs import fsck
from mirrorfs.ondisk import PlexState
from mirrorfs.plex import FilePlex
from mirrorfs.testing import FaultyPlex
from mirrorfs.volume import Volume

SIZE = 16 << 20  # bytes per plex
MAX_WRITE = 40_000  # bytes of one write: up to 10 blocks, so runs and partial blocks mix
MAX_SNAPSHOTS = 3  # user snapshots a run may take
NAMES = ["/f0", "/f1", "/f2", "/d/g0", "/d/g1"]

Files = dict[str, bytes]


class MirrorMachine(RuleBasedStateMachine):
    """A mirrored volume under file operations and plex failures, beside its model."""

    base_dir: Path  # set by the test before the machine runs

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(dir=self.base_dir))
        self.vf = self.dir / "v.toml"
        self.paths: list[str] = []
        self.files: Files = {}
        self.snaps: dict[str, Files] = {}
        self.vol: Volume | None = None
        self.fps: list[FaultyPlex | None] = []  # None: the plex is away (vanished)
        self.rng = random.Random(0)

    # -- setup and helpers --------------------------------------------------------

    @initialize(nplexes=st.sampled_from([2, 3]), seed=st.integers(0, 2**16))
    def create(self, nplexes: int, seed: int) -> None:
        """Make the volume (the first step of every run)."""
        self.rng = random.Random(seed)
        self.paths = [str(self.dir / f"p{i}.img") for i in range(nplexes)]
        vol = Volume.create(self.paths, SIZE, volume_file=self.vf, cp_interval=None)
        vol.mkdir("/d")
        vol.close()
        self._attach(set(), degraded=False)

    def _attach(self, away: set[int], degraded: bool) -> None:
        """Open the plexes not ``away`` through fresh FaultyPlex wrappers."""
        self.fps = [None if i in away else FaultyPlex(FilePlex(p))
                    for i, p in enumerate(self.paths)]
        present = [fp for fp in self.fps if fp is not None]
        missing = [(self.paths[i], "vanished") for i in sorted(away)]
        self.vol = Volume.attach(present, degraded=degraded, missing=missing, cp_interval=None)

    @property
    def v(self) -> Volume:
        assert self.vol is not None
        return self.vol

    def _healthy_in_sync(self) -> list[int]:
        """Plexes in sync with no fault armed."""
        out = []
        for i, fp in enumerate(self.fps):
            if fp is None or fp.fail_writes or fp.fail_flush or fp.vanished:
                continue
            if self.v.mirror.slot(fp.spec).state == PlexState.IN_SYNC:
                out.append(i)
        return out

    def _check_files(self, vol: Volume, files: Files, top: str = "") -> None:
        for path, data in files.items():
            assert vol.read_bytes(top + path) == data, (top, path)
        for d in ("/", "/d"):
            want = {p.rsplit("/", 1)[1] for p in files if p.rsplit("/", 1)[0] == d.rstrip("/")}
            got = set(vol.listdir(top + d)) - {".snapshot", "d"}
            assert got == want, (top, d, got, want)

    def _data(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    # -- file operations ---------------------------------------------------------

    @rule(name=st.sampled_from(NAMES), size=st.integers(0, MAX_WRITE))
    def write(self, name: str, size: int) -> None:
        data = self._data(size)
        self.v.write_bytes(name, data)
        self.files[name] = data

    @precondition(lambda self: bool(self.files))
    @rule(pick=st.integers(0, 100), offset=st.integers(0, 60_000),
          size=st.integers(1, MAX_WRITE))
    def patch(self, pick: int, offset: int, size: int) -> None:
        name = sorted(self.files)[pick % len(self.files)]
        data = self._data(size)
        with self.v.open_file(name, "r+b") as f:
            f.seek(offset)
            f.write(data)
        old = self.files[name].ljust(offset, b"\0")
        self.files[name] = old[:offset] + data + old[offset + size :]

    @precondition(lambda self: bool(self.files))
    @rule(pick=st.integers(0, 100), size=st.integers(0, 50_000))
    def truncate(self, pick: int, size: int) -> None:
        name = sorted(self.files)[pick % len(self.files)]
        self.v.truncate(name, size)
        self.files[name] = self.files[name][:size].ljust(size, b"\0")

    @precondition(lambda self: bool(self.files))
    @rule(pick=st.integers(0, 100))
    def unlink(self, pick: int) -> None:
        name = sorted(self.files)[pick % len(self.files)]
        self.v.unlink(name)
        del self.files[name]

    @rule()
    def sync(self) -> None:
        """Commit, then fsck the live volume: it may find bad copies only on a faulty plex
        (a vanished one that no I/O has touched yet is still in sync), nothing else."""
        self.v.sync()
        faulty = {fp.spec for fp in self.fps
                  if fp is not None and (fp.vanished or fp.fail_writes or fp.fail_flush)}
        report = fsck(self.v.store)
        wrong = [str(f) for f in report.findings if f.check != "checksums" or f.plex not in faulty]
        assert not wrong, wrong

    @precondition(lambda self: len(self.snaps) < MAX_SNAPSHOTS)
    @rule()
    def snapshot(self) -> None:
        name = f"s{len(self.snaps)}"
        self.v.snapshot(name)
        self.snaps[name] = dict(self.files)

    # -- failures ------------------------------------------------------------------

    def _arm(self, pick: int, how: str, now: bool) -> None:
        """Arm a fault on an in-sync plex, unless it is the last healthy one; with ``now``
        commit at once, so the plex fails before the next file operation."""
        healthy = self._healthy_in_sync()
        if len(healthy) < 2:
            return
        fp = self.fps[healthy[pick % len(healthy)]]
        assert fp is not None
        if how == "writes":
            fp.fail_writes = True
        elif how == "flush":
            fp.fail_flush = True
        else:
            fp.vanished = True
        if now:
            self.v.sync()

    @rule(pick=st.integers(0, 100), how=st.sampled_from(["writes", "flush"]),
          now=st.booleans())
    def fail_plex(self, pick: int, how: str, now: bool) -> None:
        """A plex starts failing its writes or its flushes."""
        self._arm(pick, how, now)

    @rule(pick=st.integers(0, 100), now=st.booleans())
    def vanish_plex(self, pick: int, now: bool) -> None:
        """A plex's device vanishes: its reads and writes fail."""
        self._arm(pick, "vanish", now)

    @rule(resync=st.booleans())
    def restart(self, resync: bool) -> None:
        """Close and reopen degraded (vanished plexes stay away), or reopen all and resync."""
        if resync:
            self._resync()
        else:
            self._reopen()

    def _reopen(self) -> None:
        away = {i for i, fp in enumerate(self.fps) if fp is None or fp.vanished}
        self.v.close()
        self.vol = None
        self._attach(away, degraded=True)
        behind = sum(s.state != PlexState.IN_SYNC for s in self.v.mirror.slots)
        event(f"reopen: {behind} present plex(es) behind, {len(away)} away")
        assert all(self.v.mirror.slot(self.paths[i]).state == PlexState.IN_SYNC
                   for i in self._healthy_in_sync())

    def _resync(self) -> None:
        """Every plex back, resync; then each plex alone holds the model and is fsck clean."""
        self.v.close()
        self.vol = None
        self._attach(set(), degraded=False)
        behind = sum(s.state != PlexState.IN_SYNC for s in self.v.mirror.slots)
        event(f"resync of {behind} plex(es)")
        self.v.resync()
        assert all(s.state == PlexState.IN_SYNC for s in self.v.mirror.slots)
        cp = self.v.store.cp
        self.v.close()
        self.vol = None
        for p in self.paths:
            vol = Volume.open(self.vf, only=[p], read_only=True, cp_interval=None)
            try:
                assert vol.store.cp == cp
                self._check_files(vol, self.files)
                for name, files in self.snaps.items():
                    self._check_files(vol, files, f"/.snapshot/{name}")
                report = fsck(vol.store)
                assert report.clean, (p, [str(f) for f in report.findings])
            finally:
                vol.close()
        self._attach(set(), degraded=False)

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def files_match_the_model(self) -> None:
        if self.vol is not None:
            self._check_files(self.vol, self.files)

    @invariant()
    def one_healthy_plex_is_in_sync(self) -> None:
        if self.vol is not None:
            assert self._healthy_in_sync()
            assert self.v.store.broken is None

    def teardown(self) -> None:
        try:
            if self.vol is not None:
                self.vol.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def test_file_operations_with_plex_failures_match_the_model(
        tmp_path: Path, expect_log: Callable[[str], None]) -> None:
    """Random runs of the machine above (each starts by creating its volume)."""
    expect_log("leaves the in-sync set")
    expect_log("checksum or I/O error")
    MirrorMachine.base_dir = tmp_path
    run_state_machine_as_test(MirrorMachine, settings=settings(
        max_examples=80, stateful_step_count=35, deadline=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
