"""A mounted volume's control socket and scheduled snapshots (issue 5, items 2, 3 and 6).

The schedule's logic (when a snapshot is due, its name, which ones to
prune) is tested directly with a FakeClock, without sleeping. The rest runs
through a real background mount, the way a user runs it: while a writer
writes into the mount, `status`, `snapshot`, `scrub`, `plex` and an online
`resync` go through the daemon's socket and print what they print
offline; commands that would open the plexes (fsck, ls) refuse in one line
naming the mount point; after `umount`, fsck is clean. Tests that mount
skip only when /dev/fuse or fusermount3 is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mirrorfs import Volume
from mirrorfs.daemon import FSTYPE, MountOptions, mount_type
from mirrorfs.daemon._control import (
    SnapshotSchedule,
    SnapshotTimer,
    parse_duration,
    request,
)
from mirrorfs.daemon._mount import state_path
from mirrorfs.errors import UsageError
from mirrorfs.ondisk import SnapKind, SnapshotRecord
from mirrorfs.testing import FakeClock, wait_for
from mirrorfs.testing import run_cli as run


def ok(*args: str | os.PathLike[str]) -> str:
    res = run(*args)
    assert res.returncode == 0, (args, res.returncode, res.stderr.decode())
    return res.stdout.decode()


# -- the schedule, with a fake clock -------------------------------------------------


def _rec(name: str, kind: SnapKind, cp: int) -> SnapshotRecord:
    return SnapshotRecord(name=name, guid=uuid.uuid4(), cp=cp, ctime_ns=cp * 10**9,
                          kind=kind, objtab_root=b"", plane_root=b"", objtab_height=0,
                          plane_height=0, next_ino=1)


def test_schedule_is_due_each_interval_without_bunching() -> None:
    clock = FakeClock()
    s = SnapshotSchedule(900.0, 96, clock)
    assert not s.due(clock.monotonic())
    clock.advance(899.0)
    assert not s.due(clock.monotonic())
    clock.advance(1.0)
    assert s.due(clock.monotonic())
    s.taken(clock.monotonic())
    assert not s.due(clock.monotonic())
    clock.advance(900.0)
    assert s.due(clock.monotonic())
    clock.advance(10 * 900.0)  # asleep (a suspended machine): one snapshot, not ten
    s.taken(clock.monotonic())
    clock.advance(449.0)
    assert not s.due(clock.monotonic())


def test_schedule_prunes_only_the_oldest_scheduled_beyond_keep() -> None:
    s = SnapshotSchedule(60.0, 2, FakeClock())
    snaps = [_rec("user1", SnapKind.USER, 1), _rec("sched-a", SnapKind.SCHEDULED, 2),
             _rec("base", SnapKind.RESYNC_BASE, 3), _rec("sched-b", SnapKind.SCHEDULED, 4),
             _rec("sched-c", SnapKind.SCHEDULED, 5), _rec("sched-d", SnapKind.SCHEDULED, 6)]
    assert s.prune(snaps) == ["sched-a", "sched-b"]
    assert SnapshotSchedule(60.0, 10, FakeClock()).prune(snaps) == []
    assert SnapshotSchedule(60.0, None, FakeClock()).prune(snaps) == []


def test_schedule_names_are_utc_stamps_and_unique() -> None:
    clock = FakeClock(start=0.0)
    clock.now = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
    s = SnapshotSchedule(60.0, 2, clock)
    assert s.name() == "sched-20231114-221320"
    assert s.name(["sched-20231114-221320"]) == "sched-20231114-221320-2"


def test_schedule_options_parse_and_refuse() -> None:
    assert parse_duration("15m") == 900.0 and parse_duration("2h") == 7200.0
    assert parse_duration("1d") == 86400.0 and parse_duration("90") == 90.0
    for bad in ("0s", "fast", "5x", ""):
        with pytest.raises(UsageError):
            parse_duration(bad)
    o = MountOptions.parse(["allow_other,snapshot_every=15m,keep=96"])
    assert (o.snapshot_every, o.keep, o.fuse) == (900.0, 96, ("allow_other",))
    assert MountOptions.parse([o.as_arg()]) == o  # what the daemon is handed back
    for bad_opts in (["keep=3"], ["snapshot_every=1m,ro"], ["snapshot_every=1m,keep=0"],
                     ["snapshot_every=1m", "snapshot_every=2m"]):
        with pytest.raises(UsageError):
            MountOptions.parse(bad_opts)


def test_timer_takes_scheduled_snapshots_and_prunes(tmp_path: Path) -> None:
    clock = FakeClock(start=1_700_000_000.0)
    vol = Volume.create([str(tmp_path / "p0.img"), str(tmp_path / "p1.img")], 64 << 20,
                        clock=clock, cp_interval=None)
    try:
        vol.snapshot("mine")
        timer = SnapshotTimer(vol, SnapshotSchedule(60.0, 2, clock))
        assert timer.tick() is None
        names = []
        for i in range(4):
            clock.advance(60.0)
            vol.write_bytes("/f", b"x%d" % i)
            name = timer.tick()
            assert name is not None
            names.append(name)
        snaps = {r.name: r.kind for r in vol.snapshots()}
        assert snaps == {"mine": SnapKind.USER, names[2]: SnapKind.SCHEDULED,
                         names[3]: SnapKind.SCHEDULED}
    finally:
        vol.close()


# -- through a real mount --------------------------------------------------------------


class Mount:
    def __init__(self, root: Path) -> None:
        self.volume = root / "v.toml"
        self.plexes = [root / "p0.img", root / "p1.img"]
        self.mp = root / "mnt"
        self.log = root / "v.log"

    def cleanup(self) -> None:
        if (mount_type(self.mp) == FSTYPE
                and run("umount", self.mp, timeout=60).returncode != 0):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mp)], check=False)
        bad = [x for x in (self.log.read_text().splitlines() if self.log.exists() else [])
               if re.search(r" (ERROR|WARNING|CRITICAL) |Traceback", x)]
        assert not bad, "unexpected lines in the daemon log:\n" + "\n".join(bad)


@contextlib.contextmanager
def mounted(root: Path, *mount_args: str) -> Iterator[Mount]:
    m = Mount(root)
    ok("mkfs", "--size", "256M", m.volume, *m.plexes)
    m.mp.mkdir()
    try:
        ok("mount", *mount_args, m.volume, m.mp)
        yield m
    finally:
        m.cleanup()


class Writer:
    """Appends to a file in the mount until stopped; counts what it wrote."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        chunk = os.urandom(64 << 10)
        try:
            with open(self.path, "wb") as f:
                while not self._stop.is_set():
                    f.write(chunk)
                    f.flush()
                    self.written += len(chunk)
                    time.sleep(0.01)
        except BaseException as e:
            self.error = e

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(30)
        assert self.error is None, self.error
        assert self.written > 0
        return self.written


def keys(doc: dict[str, Any]) -> dict[str, Any]:
    """The shape of a status document: its keys, and each plex's keys."""
    return {"top": sorted(doc), "plexes": [sorted(p) for p in doc["plexes"]]}


def refused(m: Mount, *args: str | os.PathLike[str]) -> None:
    res = run(*args)
    err = res.stderr.decode()
    assert res.returncode == 2, (args, res.returncode, err)
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"mounted at {m.mp}" in lines[0] and "unmount it first" in lines[0], lines[0]


def test_control_socket_commands_while_writing(tmp_path: Path, need_fuse: None) -> None:
    with mounted(tmp_path) as m:
        doc = json.loads(state_path(m.mp).read_text())
        sock = Path(doc["socket"])
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert request(sock, "nonsense")["ok"] is False

        (m.mp / "a").write_text("one")
        writer = Writer(m.mp / "stream")
        wait_for(lambda: writer.written > 0, what="the writer")

        # a snapshot while writes run: .snapshot/s1 holds that moment
        out = ok("snapshot", "create", m.volume, "s1")
        assert re.fullmatch(r"snapshot s1 created at CP \d+ \(\S+\)\n", out), out
        (m.mp / "a").write_text("two")
        assert (m.mp / ".snapshot" / "s1" / "a").read_text() == "one"
        assert (m.mp / "a").read_text() == "two"
        created = json.loads(ok("snapshot", "create", "--json", m.volume, "s2"))
        assert created["name"] == "s2" and created["kind"] == "user"
        listed = json.loads(ok("snapshot", "list", "--json", m.volume))
        assert [s["name"] for s in listed] == ["s1", "s2"]
        assert "s2" in ok("snapshot", "list", m.volume)
        assert ok("snapshot", "delete", m.volume, "s2").startswith("snapshot s2 deleted; ")
        assert "s2" not in ok("snapshot", "list", m.volume)
        res = run("snapshot", "create", m.volume, "s1")  # the daemon's error, one line
        assert res.returncode != 0 and "exists" in res.stderr.decode()

        online = json.loads(ok("status", "--json", m.volume))
        assert [p["state"] for p in online["plexes"]] == ["in-sync", "in-sync"]
        assert "up to date:" in ok("status", m.volume)
        scrubbed = json.loads(ok("scrub", "--json", m.volume))
        assert scrubbed["blocks_checked"] > 0 and scrubbed["unrecoverable"] == []
        assert ok("scrub", m.volume).startswith("scrub: ")

        # one plex away while writes go on, then back and resynced online
        p1 = str(m.plexes[1])
        off = json.loads(ok("plex", "offline", "--json", m.volume, p1))
        assert off == {"plex": p1, "action": "offline", "state": "offline"}
        (m.mp / "while-away").write_bytes(os.urandom(1 << 20))
        assert ok("plex", "online", m.volume, p1) == f"plex {p1}: online; now stale\n"
        written = writer.stop()  # see test_online_resync_while_writing
        report = json.loads(ok("resync", "--json", m.volume))
        assert [t["target"] for t in report["targets"]] == [p1]
        assert report["targets"][0]["error"] is None
        states = json.loads(ok("status", "--json", m.volume))["plexes"]
        assert [p["state"] for p in states] == ["in-sync", "in-sync"]
        assert ok("resync", m.volume) == "nothing to resync: every plex is in sync\n"

        # commands that would open the plexes refuse, naming the mount point
        refused(m, "fsck", m.volume)
        refused(m, "ls", m.volume, "/")
        refused(m, "snapshot", "diff", m.volume, "s1")
        ok("umount", m.mp)

        assert run("fsck", m.volume).returncode == 0
        offline = json.loads(ok("status", "--json", m.volume))
        assert keys(offline) == keys(online)
        assert [p["state"] for p in offline["plexes"]] == ["in-sync", "in-sync"]
        vol = Volume.open(m.volume, read_only=True, cp_interval=None)
        try:
            assert vol.stat("/stream").size == written
            assert vol.read_bytes("/a") == b"two"
        finally:
            vol.close()


def test_online_resync_while_writing(tmp_path: Path, need_fuse: None) -> None:
    """`resync` through the socket while a writer keeps writing into the mount."""
    with mounted(tmp_path) as m:
        p1 = str(m.plexes[1])
        (m.mp / "before").write_bytes(os.urandom(4 << 20))
        ok("plex", "offline", m.volume, p1)
        (m.mp / "while-away").write_bytes(os.urandom(4 << 20))
        ok("plex", "online", m.volume, p1)
        writer = Writer(m.mp / "stream")
        wait_for(lambda: writer.written > (1 << 20), what="the writer")
        report = json.loads(ok("resync", "--json", m.volume))
        assert report["targets"][0]["error"] is None
        time.sleep(1.0)  # writes after the resync reach both plexes
        writer.stop()
        states = json.loads(ok("status", "--json", m.volume))["plexes"]
        assert [p["state"] for p in states] == ["in-sync", "in-sync"]
        ok("umount", m.mp)
        res = run("fsck", m.volume)
        assert res.returncode == 0, res.stdout.decode()[-2000:]


def test_scheduled_snapshots_on_a_mount(tmp_path: Path, need_fuse: None) -> None:
    with mounted(tmp_path, "--snapshot-every", "1s", "--keep", "2") as m:
        ok("snapshot", "create", m.volume, "mine")

        def scheduled() -> list[str]:
            snaps = json.loads(ok("snapshot", "list", "--json", m.volume))
            return [s["name"] for s in snaps if s["kind"] == "scheduled"]

        wait_for(lambda: len(scheduled()) >= 2, what="two scheduled snapshots")
        time.sleep(2.0)  # more are taken, the oldest pruned
        names = scheduled()
        assert len(names) == 2 and all(n.startswith("sched-") for n in names), names
        assert "mine" in ok("snapshot", "list", m.volume)
        assert (m.mp / ".snapshot" / names[-1]).is_dir()
        ok("umount", m.mp)
    assert run("fsck", m.volume).returncode == 0
