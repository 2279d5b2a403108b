"""Examine: read every plex's label and decide who is up to date (the first comparison element).

Owns the comparison of CP values and lineage across all plexes at once.
Keeps: a plex that is an unfinished resync target is never chosen as a
source, and two plexes that each advanced without the other are reported
as a split brain instead of being ordered by CP value.

Lineage. Each superblock records, for every member, the last CP that member
completed while in the set (``Member.last_cp``). Plex P advanced alone past
what plex S knows iff ``P.cp > S.member(P).last_cp``. A split brain is a
pair where each advanced alone past what the other knows; equal CP values
with different CP ids are the degenerate case.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence

from ..errors import MirrorfsError, PlexError
from ..mirror import MirrorSet, PlexSlot
from ..ondisk import PlexState, SnapshotRecord, Superblock
from ..plex import Plex, open_plex
from ..store import MirrorSource, Tree, load_snapshot_table
from ..store._objects import ptr_of


@dataclasses.dataclass
class PlexReport:
    """One plex as examined: its live label, snapshots and state."""

    spec: str
    sb: Superblock | None = None
    snapshots: list[SnapshotRecord] = dataclasses.field(default_factory=list)
    state: str = "missing"
    error: str | None = None
    recorded: str | None = None  # what the up-to-date plex's membership says of this plex

    @property
    def cp(self) -> int:
        return self.sb.cp if self.sb else -1

    def as_dict(self) -> dict[str, object]:
        sb = self.sb
        return {
            "spec": self.spec,
            "plex_uuid": str(sb.plex_uuid) if sb else None,
            "volume_uuid": str(sb.volume_uuid) if sb else None,
            "ordinal": sb.plex_ordinal if sb else None,
            "cp": sb.cp if sb else None,
            "cp_id": str(sb.cp_id) if sb else None,
            "state": self.state,
            "recorded_state": self.recorded,
            "resync": _resync_dict(sb),
            "members": [{"plex_uuid": str(m.plex_uuid), "state": m.state.label,
                         "last_cp": m.last_cp} for m in sb.members] if sb else [],
            "snapshots": [{"name": r.name, "guid": str(r.guid), "cp": r.cp,
                           "kind": r.kind.label} for r in self.snapshots],
            "error": self.error,
        }


def _resync_dict(sb: Superblock | None) -> dict[str, object] | None:
    if sb is None or sb.resync is None:
        return None
    r = sb.resync
    return {"source": str(r.source), "base_guid": str(r.base_guid), "base_cp": r.base_cp,
            "target_cp": r.target_cp, "cursor": r.cursor, "total": r.total}


@dataclasses.dataclass
class Examination:
    """All plexes compared at once."""

    volume_uuid: uuid.UUID | None
    plexes: list[PlexReport]
    up_to_date: PlexReport | None
    split_brain: bool
    forks: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"volume_uuid": str(self.volume_uuid) if self.volume_uuid else None,
                "plexes": [p.as_dict() for p in self.plexes],
                "up_to_date": self.up_to_date.spec if self.up_to_date else None,
                "split_brain": self.split_brain,
                "forks": [list(f) for f in self.forks]}


def advanced_alone(p: Superblock, s: Superblock) -> bool:
    """Did plex ``p`` commit CPs that plex ``s`` does not know of?"""
    m = s.member(p.plex_uuid)
    known = m.last_cp if m else 0
    if m is not None and m.state == PlexState.IN_SYNC:
        known = s.cp
    return p.cp > known or (p.cp == s.cp and p.cp_id != s.cp_id)


def read_plex_snapshots(plex: Plex, sb: Superblock) -> list[SnapshotRecord]:
    """The snapshot table of one plex, read from that plex alone."""
    slot = PlexSlot(plex, sb.plex_uuid, sb.plex_ordinal, PlexState.IN_SYNC, sb)
    mirror = MirrorSet([slot], sb.block_size, sb.nblocks, read_only=True)
    tree = Tree(MirrorSource(mirror), ptr_of(sb.snaptab_root), sb.snaptab_height,
                f"snapshot table of {plex.spec}")
    return load_snapshot_table(tree, sb.n_snapshots, plex.spec)


def examine_plexes(plexes: Sequence[Plex], volume_uuid: uuid.UUID | None = None,
                   size_hint: int | None = None,
                   missing: Sequence[tuple[str, str]] = ()) -> Examination:
    """Examine opened plexes (and name the ones that could not be opened)."""
    from ..volume import read_label

    reports: list[PlexReport] = []
    for plex in plexes:
        rep = PlexReport(plex.spec)
        try:
            rep.sb = read_label(plex, size_hint)
            if rep.sb is None:
                rep.state, rep.error = "unreadable", "no valid superblock"
            elif rep.sb.resync is None:  # a resync target's tables are not its own yet
                rep.snapshots = read_plex_snapshots(plex, rep.sb)
        except MirrorfsError as e:
            rep.state, rep.error = "unreadable", str(e)
        reports.append(rep)
    for spec, why in missing:
        reports.append(PlexReport(spec, state="missing", error=why))
    labelled = [r for r in reports if r.sb is not None]
    vol = volume_uuid or (labelled[0].sb.volume_uuid if labelled and labelled[0].sb else None)
    for r in labelled:
        assert r.sb is not None
        if r.sb.volume_uuid != vol:
            r.state, r.error = "foreign", f"belongs to volume {r.sb.volume_uuid}"
    ours = [r for r in labelled if r.state != "foreign"]
    sources = [r for r in ours if r.sb is not None and r.sb.resync is None] or ours
    best = max(sources, key=lambda r: r.cp) if sources else None
    forks: list[tuple[str, str]] = []
    for r in ours:
        assert r.sb is not None
        if best is None or best.sb is None:
            continue
        if r.sb.resync is not None:
            r.state = "resyncing"
        elif r.sb.cp == best.sb.cp and r.sb.cp_id == best.sb.cp_id:
            r.state = "in-sync"
        else:
            r.state = "stale"
            m = best.sb.member(r.sb.plex_uuid)
            if m is not None:
                r.recorded = m.state.label
    for i, a in enumerate(ours):
        for b in ours[i + 1 :]:
            if a.sb and b.sb and a.sb.resync is None and b.sb.resync is None and (
                    advanced_alone(a.sb, b.sb) and advanced_alone(b.sb, a.sb)):
                forks.append((a.spec, b.spec))
    for a_spec, b_spec in forks:
        for r in ours:
            if r.spec in (a_spec, b_spec) and r is not best:
                r.state = "diverged"
    if best is not None and forks:
        best.state = "diverged" if any(best.spec in f for f in forks) else best.state
    return Examination(vol, reports, best, bool(forks), forks)


def examine(specs: Sequence[str], volume_uuid: uuid.UUID | None = None,
            size_hint: int | None = None) -> Examination:
    """Examine plexes named by spec (paths or nbd:// URLs), read-only."""
    plexes: list[Plex] = []
    missing: list[tuple[str, str]] = []
    for spec in specs:
        try:
            plexes.append(open_plex(spec, read_only=True))
        except PlexError as e:
            missing.append((spec, str(e)))
    try:
        return examine_plexes(plexes, volume_uuid, size_hint, missing)
    finally:
        for p in plexes:
            p.close()
