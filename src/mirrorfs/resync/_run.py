"""The whole method on an open volume: examine, choose, plan, rescue, copy, commit.

Owns the decisions a resync makes before it copies anything. Keeps: on a
split brain nothing is overwritten unless the user chose the survivor, and
then the losing side's state is kept as a snapshot first (unless the user
explicitly discards it).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ..errors import MirrorfsError
from ..mirror import PlexSlot
from ._copy import Resync, TargetResult, Throttle
from ._examine import advanced_alone
from ._plan import Plan, _held_by_target, plan_target, target_slots
from ._rescue import Rescued, divergent_blocks, rescue

if TYPE_CHECKING:
    from ..volume import Volume


class SplitBrain(MirrorfsError):
    """split brain: {0}"""

    exit_code = 1


@dataclasses.dataclass
class ResyncReport:
    source: str | None
    plans: list[Plan] = dataclasses.field(default_factory=list)
    results: list[TargetResult] = dataclasses.field(default_factory=list)
    rescued: list[Rescued] = dataclasses.field(default_factory=list)
    split_brain: bool = False
    explanation: str = ""
    dry_run: bool = False

    @property
    def nothing_to_do(self) -> bool:
        return not self.plans

    def as_dict(self) -> dict[str, object]:
        return {"source": self.source, "dry_run": self.dry_run,
                "split_brain": self.split_brain, "explanation": self.explanation,
                "plans": [p.as_dict() for p in self.plans],
                "targets": [r.as_dict() for r in self.results],
                "rescued": [dataclasses.asdict(r) for r in self.rescued]}


def diverged_targets(source: PlexSlot, targets: list[PlexSlot]) -> list[PlexSlot]:
    """Targets that went on alone while the source did too (a split brain)."""
    out = []
    for t in targets:
        if t.sb is None or source.sb is None or t.resync is not None or t.sb.resync is not None:
            continue
        if advanced_alone(t.sb, source.sb) and advanced_alone(source.sb, t.sb):
            out.append(t)
    return out


def explain_split(vol: Volume, source: PlexSlot, diverged: list[PlexSlot],
                  plans: dict[int, Plan]) -> str:
    store = vol.store
    parts = []
    for d in diverged:
        common, _ = _held_by_target(store, d)
        union = np.zeros(store.plane_words, dtype=np.uint64)
        for r in common:
            union |= store.snapshot_plane(r)
        base = max(common, key=lambda r: r.cp) if common else None
        theirs = divergent_blocks(store, d, union)
        mine = plans[id(d)].blocks
        since = f"snapshot {base.name} (CP {base.cp})" if base else "no common snapshot"
        assert d.sb is not None and source.sb is not None
        parts.append(f"{source.spec} (CP {source.sb.cp}) and {d.spec} (CP {d.sb.cp}) each "
                     f"went on alone since {since}: {source.spec} changed {mine} blocks, "
                     f"{d.spec} changed {theirs} blocks")
    return "; ".join(parts)


REFUSAL = (". Nothing was changed. Choose the survivor with --prefer PLEX; the other side's "
           "state is then kept as a snapshot diverged-<plex>-cp<N> (drop it instead with "
           "--discard-divergent)")


def resync_volume(vol: Volume, *, dry_run: bool = False, verify: bool = False,
                  rate: float | None = None, prefer: str | None = None,
                  discard_divergent: bool = False,
                  progress: Callable[[int], None] | None = None,
                  throttle: Throttle | None = None) -> ResyncReport:
    store = vol.store
    with store.lock:
        if not store.read_only:
            store.commit()
        sources = store.mirror.in_sync()
        if not sources:
            raise MirrorfsError("no in-sync plex to resync from")
        source = sources[0]
        if prefer is not None and vol._slot(prefer) not in sources:
            raise MirrorfsError(f"--prefer {prefer}: the volume was not opened with that plex "
                                "as its source")
        targets = target_slots(store)
        report = ResyncReport(source.spec, dry_run=dry_run)
        if not targets:
            return report
        plans = {id(t): plan_target(store, t, source.spec) for t in targets}
        diverged = diverged_targets(source, targets)
        if diverged:
            report.split_brain = True
            report.explanation = explain_split(vol, source, diverged, plans)
            if prefer is None:
                report.plans = [plans[id(t)] for t in targets]
                if dry_run:
                    return report
                raise SplitBrain(report.explanation + REFUSAL)
        if dry_run:
            report.plans = [plans[id(t)] for t in targets]
            return report
        if diverged and not discard_divergent:
            for d in diverged:
                common, _ = _held_by_target(store, d)
                report.rescued += rescue(store, d, common)
            plans = {id(t): plan_target(store, t, source.spec) for t in targets}
        report.plans = [plans[id(t)] for t in targets]
        job = Resync(store, [(t, plans[id(t)]) for t in targets], verify=verify, rate=rate,
                     progress=progress, throttle=throttle)
        # Still under the lock that planned: the targets take every CP from here on, so
        # no block committed after the plan can miss them (the plan holds all before).
        starts = job.begin()
    report.results = job.run(starts)
    return report


class ResyncJob:
    """An online resync running in a thread while the volume keeps taking writes."""

    def __init__(self, vol: Volume, **kwargs: object) -> None:
        self.report: ResyncReport | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(vol, kwargs), name="resync",
                                        daemon=True)
        self._thread.start()

    def _run(self, vol: Volume, kwargs: dict[str, object]) -> None:
        try:
            self.report = resync_volume(vol, **kwargs)  # type: ignore[arg-type]
        except BaseException as e:  # handed to wait()
            self.error = e

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> ResyncReport:
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        if self.report is None:
            raise TimeoutError("the resync is still running")
        return self.report
