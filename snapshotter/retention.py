"""Retention by reachability: keep exactly what pinned things need to be rebuilt.

The keep-set starts from roots (registered model versions and their aliases, runs pinned
with the `tidelog.keep` tag, runs younger than the window, pinned snapshots) plus the
newest N snapshots and the snapshots younger than the window. A kept snapshot keeps the
base it was layered on (its digest was derived from the base's). Every kept cut keeps
the archive segments it is rebuilt from. Everything else may go; nothing goes by age
alone. docs/retention.md has the rules and the reasons printed for each item.

`plan_gc` is pure (manifests, roots, archive listing in; keep/delete with reasons out);
`collect` carries a plan out, crash-safely:

- a snapshot is renamed to `.deleted-<id>-<rand>` under its build lock (readers see all
  of it or none), then removed; leftovers of a killed gc are removed by the next one;
- an archive generation's `first_offset` in `log.json` is raised (one atomic rewrite)
  before the segments below it are deleted, so a crash leaves segments no reader looks
  at, which the next gc deletes;
- the DuckDB catalog is synced last (it is derived from the manifests, so a crash
  before that is repaired by the next sync).

Only generations that are no longer current lose segments: a new snapshot of the current
log is cut from its first offset, so the current generation is kept whole.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from snapshotter.archive import Archive, Generation, Segment
from snapshotter.cut import Cut
from snapshotter.manifest import Manifest
from snapshotter.store import SnapshotStore
from tidelog.errors import ConfigError, SnapshotNotFound, SnapshotPinned
from tidelog.settings import Settings

__all__ = ["Root", "PartitionHistory", "KeptRange", "GcPlan", "GcPolicy", "gc_policy",
           "plan_gc", "archive_history", "collect", "roots_of_snapshots"]



@dataclass(frozen=True)
class Root:
    """Something that must stay rebuildable. `kind`: model_version | pinned_run |
    recent_run | pinned_snapshot; `ref` names it for people (e.g. "churn/2 (champion)")."""

    kind: str
    ref: str
    snapshot_id: str | None = None
    cut: Cut | None = None

    @property
    def why(self) -> str:
        return f"{self.kind.replace('_', ' ')} {self.ref}"


@dataclass(frozen=True)
class PartitionHistory:
    """One archived topic-partition: its generations (oldest first) and their segments."""

    topic: str
    partition: int
    generations: tuple[Generation, ...]
    segments: dict[int, tuple[Segment, ...]]


@dataclass(frozen=True)
class KeptRange:
    topic: str
    partition: int
    generation: int
    start: int
    end: int
    segments: int
    why: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition,
                "generation": self.generation, "offsets": [self.start, self.end],
                "segments": self.segments, "why": list(self.why)}


@dataclass(frozen=True)
class GcPolicy:
    keep_days: float
    keep_snapshots: int

    def to_json(self) -> dict[str, Any]:
        return {"keep_days": self.keep_days, "keep_snapshots": self.keep_snapshots}


@dataclass(frozen=True)
class GcPlan:
    policy: GcPolicy
    roots: tuple[Root, ...]
    keep_snapshots: dict[str, tuple[str, ...]]  # id -> why
    delete_snapshots: dict[str, str]  # id -> why it may go
    keep_segments: tuple[KeptRange, ...]
    delete_segments: tuple[tuple[Segment, str], ...]
    # (topic, partition, generation) -> the generation's new first offset
    trims: dict[tuple[str, int, int], int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy.to_json(),
            "roots": [{"kind": r.kind, "ref": r.ref, "snapshot_id": r.snapshot_id,
                       "cut_fingerprint": r.cut.fingerprint() if r.cut else None}
                      for r in self.roots],
            "keep": {"snapshots": [{"snapshot_id": s, "why": list(w)}
                                   for s, w in sorted(self.keep_snapshots.items())],
                     "segments": [k.to_json() for k in self.keep_segments]},
            "delete": {"snapshots": [{"snapshot_id": s, "why": w}
                                     for s, w in sorted(self.delete_snapshots.items())],
                       "segments": [{"topic": s.topic, "partition": s.partition,
                                     "generation": s.generation, "offsets": [s.start, s.end],
                                     "path": s.path, "why": w}
                                    for s, w in self.delete_segments]},
            "trims": [{"topic": t, "partition": p, "generation": g, "first_offset": o}
                      for (t, p, g), o in sorted(self.trims.items())],
        }


def gc_policy(settings: Settings, keep_days: float | None = None,
              keep_snapshots: int | None = None) -> GcPolicy:
    """The window and the newest-N count: arguments, else TIDELOG_GC_KEEP_DAYS and
    TIDELOG_GC_KEEP_SNAPSHOTS, else 30 days and 1 snapshot."""
    days = float(keep_days if keep_days is not None else settings.gc_keep_days)
    newest = int(keep_snapshots if keep_snapshots is not None else settings.gc_keep_snapshots)
    if days < 0 or newest < 0:
        raise ConfigError(f"the gc window ({days} days) and the newest-snapshot count "
                          f"({newest}) cannot be negative")
    return GcPolicy(days, newest)


def _parse_time(text: str) -> dt.datetime | None:
    try:
        found = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return found if found.tzinfo else found.replace(tzinfo=dt.UTC)


def plan_gc(manifests: Sequence[Manifest], roots: Sequence[Root],
            partitions: Sequence[PartitionHistory], policy: GcPolicy, now: dt.datetime
            ) -> GcPlan:
    """What stays and why, what goes and why. Pure: no I/O."""
    by_id = {m.id: m for m in manifests}
    why: dict[str, list[str]] = {}

    def keep(sid: str, reason: str) -> None:
        if reason not in why.setdefault(sid, []):
            why[sid].append(reason)

    for root in roots:
        if root.snapshot_id and root.snapshot_id in by_id:
            keep(root.snapshot_id, root.why)
    ordered = sorted(manifests, key=lambda m: (m.created_at, m.id))
    if policy.keep_snapshots:
        for m in ordered[-policy.keep_snapshots:]:
            keep(m.id, f"one of the newest {policy.keep_snapshots} snapshot(s)")
    horizon = now - dt.timedelta(days=policy.keep_days)
    for m in manifests:
        created = _parse_time(m.created_at)
        if policy.keep_days and (created is None or created >= horizon):
            keep(m.id, f"created {m.created_at}, within the {policy.keep_days:g}-day window")
    # A layered snapshot's digest derives from its base's: keep the chain checkable.
    pending = list(why)
    while pending:
        sid = pending.pop()
        base = by_id[sid].built_from
        if base and base != "full" and base in by_id:
            if base not in why:
                pending.append(base)
            keep(base, f"base of kept snapshot {sid}")
    delete = {m.id: (f"no model version, pin or run needs it; not among the newest "
                     f"{policy.keep_snapshots} and older than {policy.keep_days:g} days")
              for m in manifests if m.id not in why}

    # Cuts that must stay rebuildable: every root's and every kept snapshot's.
    needs: dict[tuple[str, int, str, str], list[tuple[int, str]]] = {}
    cuts = [(r.cut, r.why) for r in roots if r.cut is not None]
    cuts += [(by_id[s].cut, f"kept snapshot {s}") for s in sorted(why)]
    for cut, reason in cuts:
        for p in cut.partitions:
            needs.setdefault((p.topic, p.partition, p.cluster_id, p.topic_id), []).append(
                (p.start, reason))
    kept: list[KeptRange] = []
    gone: list[tuple[Segment, str]] = []
    trims: dict[tuple[str, int, int], int] = {}
    for history in partitions:
        if not history.generations:
            continue
        current = history.generations[-1]
        for gen in history.generations:
            segs = history.segments.get(gen.number, ())
            users = needs.get((history.topic, history.partition, gen.cluster_id,
                               gen.topic_id), [])
            reasons = sorted({r for _, r in users})
            hwm = segs[-1].end if segs else gen.first_offset
            if gen is current:
                # Leftovers of an interrupted trim never exist here: only old ones trim.
                kept.append(KeptRange(history.topic, history.partition, gen.number,
                                      segs[0].start if segs else gen.first_offset, hwm,
                                      len(segs), ("current generation: new snapshots are cut "
                                                  "from its first offset", *reasons)))
                continue
            low = min((start for start, _ in users), default=hwm)
            what = (f"below offset {low}, the lowest any kept cut of generation "
                    f"{gen.number} needs" if users else
                    f"generation {gen.number} (log {gen.cluster_id}/{gen.topic_id}) is no "
                    "longer current and no kept cut reads it")
            remaining = [s for s in segs if s.end > low]
            gone.extend((s, what) for s in segs if s.end <= low)
            first = remaining[0].start if remaining else hwm
            if first > gen.first_offset:
                trims[(history.topic, history.partition, gen.number)] = first
            if remaining:
                kept.append(KeptRange(history.topic, history.partition, gen.number,
                                      remaining[0].start, remaining[-1].end, len(remaining),
                                      tuple(reasons)))
    return GcPlan(policy, tuple(roots), {s: tuple(w) for s, w in sorted(why.items())},
                  delete, tuple(kept), tuple(gone), trims)


def archive_history(archive: Archive) -> list[PartitionHistory]:
    """Every archived topic-partition with its generations and segments."""
    found = []
    for topic in archive.topics():
        for name in archive.storage.listdir(archive.storage.path(topic)):
            if not (name.startswith("p") and name[1:].isdigit()):
                continue
            partition = int(name[1:])
            gens = tuple(archive.generations(topic, partition))
            found.append(PartitionHistory(topic, partition, gens, {
                g.number: tuple(archive.segments(topic, partition, g.number)) for g in gens}))
    return found


def _raise_first_offset(archive: Archive, topic: str, partition: int, number: int,
                        offset: int) -> bool:
    """Raise a no-longer-current generation's first offset in log.json (atomically)."""
    gens = archive.generations(topic, partition)
    if not gens or gens[-1].number == number:
        return False  # became current again? never trim a live log
    body = {"topic": topic, "partition": partition,
            "generations": [dict(g.to_json(), first_offset=max(offset, g.first_offset))
                            if g.number == number else g.to_json() for g in gens]}
    archive.storage.write_bytes(f"{archive.storage.path(topic, f'p{partition}')}/log.json",
                                json.dumps(body, indent=2).encode())
    return True


def collect(settings: Settings, plan: GcPlan, archive: Archive | None = None, *,
            check: Callable[[str], object] | None = None) -> dict[str, Any]:
    """Carry out `plan`: delete its snapshots and segments (module docstring).

    `check(sid)` runs under each snapshot's exclusive lock before it goes, and keeps it
    by raising SnapshotPinned (a pin taken since the plan was made)."""
    from snapshotter.catalog import catalog_path, sync_catalog
    from snapshotter.mirror import sync_or_raise

    archive = archive or Archive(settings.archive_root)
    store = SnapshotStore.of(settings)
    leftovers = store.remove_leftovers()
    deleted: list[str] = []
    pinned_meanwhile: list[str] = []
    for sid in sorted(plan.delete_snapshots):
        try:
            trash = store.set_aside(sid, functools.partial(check, sid) if check else None)
        except SnapshotNotFound:
            continue  # deleted meanwhile
        except SnapshotPinned:
            pinned_meanwhile.append(sid)
            continue
        shutil.rmtree(trash, ignore_errors=True)
        deleted.append(sid)
    removed_segments: list[str] = []
    # A snapshot pinned since the plan keeps the history below its cut: the planned
    # segment deletes assumed it gone, so they wait for the next (re-planned) gc.
    segments = [] if pinned_meanwhile else plan.delete_segments
    trims = {} if pinned_meanwhile else plan.trims
    with archive.writer_lock():
        trimmed = {key for key, offset in trims.items()
                   if _raise_first_offset(archive, *key, offset)}
        for seg, _ in segments:
            key = (seg.topic, seg.partition, seg.generation)
            gens = {g.number: g for g in archive.generations(seg.topic, seg.partition)}
            gen = gens.get(seg.generation)
            # Only below the (raised) first offset of a generation that is not current.
            if gen is None or (key not in trimmed and key in plan.trims) or \
                    seg.end > gen.first_offset or max(gens) == seg.generation:
                continue
            if archive.storage.exists(seg.path):
                archive.storage.fs.delete_file(seg.path)
                removed_segments.append(seg.path)
    if catalog_path(settings).exists():
        sync_catalog(settings)
    if deleted:
        sync_or_raise(settings, f"snapshots {', '.join(deleted)} are deleted here")
    return {"deleted_snapshots": deleted, "pinned_meanwhile": pinned_meanwhile,
            "deleted_segments": removed_segments,
            "trimmed": [{"topic": t, "partition": p, "generation": g, "first_offset": o}
                        for (t, p, g), o in sorted(plan.trims.items())
                        if (t, p, g) in trimmed],
            "leftovers_removed": leftovers}


def roots_of_snapshots(pins: Iterable[tuple[str, str]]) -> list[Root]:
    """Pinned snapshots as roots: (snapshot id, who pinned it and why)."""
    return [Root("pinned_snapshot", f"{sid} ({text})", snapshot_id=sid) for sid, text in pins]
