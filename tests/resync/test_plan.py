"""Plan cost follows the change, not the volume size (DESIGN.md, "Performance").

A 1 TiB volume on two sparse image files holds 4 MiB of files; plex p1
goes offline and 256 KiB are overwritten in 16 scattered places. The plan
for p1 must then

* read only a handful of blocks: counted by ``MirrorSet.statistics()``
  around ``plan_target`` (deterministic counts, no timing), far below one
  block-map plane of the volume (32 MiB at 1 TiB);
* read no more than the same plan on a 64 MiB volume, plus the extra
  levels of the taller plane trees;
* be exact: its blocks are the blocks the active image holds that the
  common snapshot does not (``Store.diff``), i.e. the 64 changed data
  blocks plus the metadata above them.

``examine`` (the other half of ``status``) reads only the superblock rings
and the snapshot tables, and ``status --json`` reports the same plan. The
image files stay sparse throughout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path

import pytest

from mirrorfs.plex import FilePlex
from mirrorfs.resync import Plan, examine_plexes, plan_target, target_slots
from mirrorfs.testing import CountingPlex, run_cli
from mirrorfs.volume import Volume

BS = 4096
TIB = 1 << 40
CHANGE_WRITES = 16
CHANGE_CHUNK = 16 << 10  # 16 writes of 16 KiB: 64 data blocks changed
META_BLOCKS = 32  # metadata a small change's plan may add (measured: 11 blocks)
PLAN_READ_LIMIT = 256 << 10  # bytes a plan of this change may read (measured: 16 KiB)
EXAMINE_READ_LIMIT = 256 << 10  # bytes examine may read per plex (rings: 64 KiB)
SPARSE_LIMIT = 64 << 20  # bytes an image of the 1 TiB volume may occupy on disk


@dataclasses.dataclass
class Built:
    """A volume (closed again) with p1 offline after a small change; the plan of p1 and its cost."""

    specs: list[str]
    vf: Path
    plan: Plan
    reads: int
    read_bytes: int
    plane_bytes: int  # bytes of one block-map plane of the volume
    diff_blocks: int  # blocks the active image holds beyond the plan's base, by Store.diff


def build(tmp: Path, size: int) -> Built:
    """Files, p1 offline, a small scattered change; plan p1 and count the plan's reads."""
    rng = random.Random(7)
    specs = [str(tmp / "p0.img"), str(tmp / "p1.img")]
    vf = tmp / "v.toml"
    vol = Volume.create(specs, size, volume_file=vf, cp_interval=None)
    for i in range(4):
        vol.write_bytes(f"/f{i}", rng.randbytes(1 << 20))
    vol.sync()
    vol.plex_offline(specs[1])
    places = rng.sample(range(4 * (1 << 20) // CHANGE_CHUNK), CHANGE_WRITES)
    for place in places:
        f, off = divmod(place * CHANGE_CHUNK, 1 << 20)
        with vol.open_file(f"/f{f}", "r+b") as fh:
            fh.seek(off)
            fh.write(rng.randbytes(CHANGE_CHUNK))
    assert vol.sync()
    (target,) = target_slots(vol.store)
    before = vol.mirror.statistics()
    plan = plan_target(vol.store, target, specs[0])
    after = vol.mirror.statistics()
    try:
        assert plan.base is not None
        diff = vol.store.diff(plan.base.name)
        return Built(specs, vf, plan, after.reads - before.reads,
                     after.read_bytes - before.read_bytes, vol.store.plane_words * 8,
                     diff.blocks_new)
    finally:
        vol.close()


@pytest.fixture(scope="module")
def huge(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The 1 TiB volume, built once for the tests of this module."""
    return build(tmp_path_factory.mktemp("huge"), TIB)


def test_plan_on_a_1_tib_volume_reads_a_handful_of_blocks(huge: Built) -> None:
    """A small change on a 1 TiB volume plans by reading a few blocks, not a plane.

    One plane of 1 TiB at 4 KiB blocks is 32 MiB; the plan reads under
    PLAN_READ_LIMIT in a few calls, and the images stay sparse.
    """
    assert huge.plane_bytes == 32 << 20
    assert huge.read_bytes < PLAN_READ_LIMIT, huge.read_bytes
    assert huge.reads <= 16, huge.reads
    for spec in huge.specs:
        assert os.stat(spec).st_size == TIB
        assert os.stat(spec).st_blocks * 512 < SPARSE_LIMIT, spec


def test_plan_is_the_change_plus_its_metadata(huge: Built) -> None:
    """The plan copies exactly what the active image holds beyond the common snapshot.

    That set, computed independently by ``Store.diff`` over whole planes,
    equals the plan; it is the 64 changed data blocks plus a little
    metadata, in few extents.
    """
    plan = huge.plan
    assert plan.base is not None and not plan.full
    assert [r.name for r in plan.common] == [plan.base.name]
    assert plan.blocks == huge.diff_blocks
    data_blocks = CHANGE_WRITES * CHANGE_CHUNK // BS
    assert data_blocks <= plan.blocks <= data_blocks + META_BLOCKS, plan.as_dict()
    assert plan.extents <= CHANGE_WRITES + META_BLOCKS


def test_plan_cost_does_not_grow_with_the_volume_size(huge: Built, tmp_path: Path) -> None:
    """The same change on a 64 MiB volume costs the plan as much as on 1 TiB.

    The 1 TiB plan may read and copy a few more blocks (its plane trees are
    taller), never anything proportional to the 16384-fold size.
    """
    small = build(tmp_path, 64 << 20)
    # the same data and file metadata; only the taller plane tree adds a few nodes
    assert small.plan.blocks <= huge.plan.blocks <= small.plan.blocks + 8
    assert huge.reads <= small.reads + 8, (huge.reads, small.reads)
    assert huge.read_bytes <= small.read_bytes + 8 * BS, (huge.read_bytes, small.read_bytes)


def test_examine_of_a_1_tib_volume_reads_only_labels_and_snapshot_tables(huge: Built) -> None:
    """Examine reads each plex's two superblock rings and snapshot table, nothing more."""
    plexes = [CountingPlex(FilePlex(s, read_only=True)) for s in huge.specs]
    try:
        exam = examine_plexes(plexes)
    finally:
        for p in plexes:
            p.close()
    assert exam.up_to_date is not None and exam.up_to_date.spec == huge.specs[0]
    assert [p.state for p in exam.plexes] == ["in-sync", "stale"]
    assert exam.plexes[1].recorded == "offline"
    for p in plexes:
        assert p.read_bytes < EXAMINE_READ_LIMIT, (p.spec, p.read_bytes)
        assert (p.writes, p.flushes) == (0, 0), f"examine wrote to {p.spec}"


def test_status_json_reports_the_plan_of_the_1_tib_volume(huge: Built) -> None:
    """``mirrorfs status --json`` names p0 up to date, p1 stale, and the same plan."""
    res = run_cli("status", "--json", huge.vf)
    assert res.returncode == 0, res.stderr.decode()
    doc = json.loads(res.stdout)
    assert doc["up_to_date"] == huge.specs[0]
    assert not doc["split_brain"]
    assert [p["state"] for p in doc["plexes"]] == ["in-sync", "stale"]
    (plan,) = doc["plan"]
    assert plan["target"] == huge.specs[1] and plan["source"] == huge.specs[0]
    assert plan["base"]["name"] == huge.plan.base.name  # type: ignore[union-attr]
    assert plan["blocks"] == huge.plan.blocks
    assert plan["bytes"] == huge.plan.bytes
    assert plan["extents"] == huge.plan.extents
