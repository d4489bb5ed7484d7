"""Filling an `Observation`: exact change counts from the archive, the champion and the
last training from MLflow, drift and retrain requests from the event topics."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import polars as pl

from cdc.columns import OFFSET, OP, TS_MS
from cdc.reader import LogIdentity
from pipelines.config import Pipeline
from pipelines.registry import Champion, Registry
from pipelines.triggers import ChangeLog, Observation, Signal
from snapshotter.archive import Archive
from snapshotter.cut import Cut
from tidelog.errors import CutError
from tidelog.events import CloudEvent
from tidelog.settings import Settings

__all__ = ["CHANGE_OPS", "change_log", "signals_from", "read_signals", "observe"]

CHANGE_OPS = ("c", "u", "d", "t")  # not "r" (snapshot reads) nor tombstones


def _times(archive: Archive, topic: str, partition: int, generation: int, start: int,
           end: int, ops: Iterable[str] | None) -> list[int]:
    if end <= start:
        return []
    frames = []
    for seg in archive.segments_for_range(topic, partition, generation, start, end):
        frame = archive.storage.scan(seg.path, [OFFSET, OP, TS_MS]).filter(
            (pl.col(OFFSET) >= start) & (pl.col(OFFSET) < end)
            & (pl.col(OP) != "x"))  # "x": a tombstone, the second half of a delete
        if ops is not None:
            frame = frame.filter(pl.col(OP).is_in(list(ops)))
        frames.append(frame.select(TS_MS))
    if not frames:
        return []
    return pl.concat(frames).collect()[TS_MS].fill_null(0).sort().to_list()


def change_log(settings: Settings, latest: Cut, base: Cut | None, base_name: str
               ) -> ChangeLog:
    """Change events per table between `base`'s end and `latest`'s end, from the archive.

    Without a base (no champion yet) every row event counts, the initial snapshot's too.
    A partition whose base is on another log (recreated topic, new cluster) counts from
    the start of the current log: those offsets cannot be compared.
    """
    archive = Archive(settings.archive_root)
    bases = {(p.topic, p.partition): p for p in (base.partitions if base else ())}
    prefix = f"{settings.topic_prefix}."
    times: dict[str, list[int]] = {}
    for p in latest.partitions:
        table = p.topic.removeprefix(prefix)
        gen = archive.generation_for(p.topic, p.partition, LogIdentity(p.cluster_id,
                                                                       p.topic_id))
        if gen is None:
            raise CutError(f"the archive does not hold the log of {p.topic}[{p.partition}] "
                           "named by the latest cut; run `tidelog archive run`")
        old = bases.get((p.topic, p.partition))
        same_log = old is not None and (old.cluster_id, old.topic_id) == (p.cluster_id,
                                                                          p.topic_id)
        start = max(old.end, p.start) if same_log and old is not None else p.start
        ops = CHANGE_OPS if base is not None else None
        times.setdefault(table, []).extend(
            _times(archive, p.topic, p.partition, gen.number, start, p.end, ops))
    return ChangeLog({t: sorted(v) for t, v in times.items()}, base_name)


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.UTC)


def signals_from(events: Iterable[CloudEvent], pipeline: Pipeline) -> list[Signal]:
    """The drift and retrain events meant for this pipeline, once per event id."""
    seen: dict[str, Signal] = {}
    for e in events:
        if e.id in seen:
            continue
        data: dict[str, Any] = e.data
        if e.kind == "drift.detected" and data.get("model") == pipeline.model:
            seen[e.id] = Signal("drift", e.id, _parse_time(e.time),
                                str(data.get("details", {}).get("reason", "")),
                                float(data["score"]), data.get("metric"))
        elif e.kind == "retrain.requested" and data.get("pipeline") == pipeline.name:
            seen[e.id] = Signal("manual", e.id, _parse_time(e.time),
                                str(data.get("reason", "")))
    return list(seen.values())


def read_signals(settings: Settings, pipeline: Pipeline) -> list[Signal]:
    """Every drift / retrain event on the broker for this pipeline (for a dry run)."""
    from pipelines.feed import read_events

    return signals_from(read_events(settings, ["drift", "retrain"]), pipeline)


def observe(settings: Settings, pipeline: Pipeline, registry: Registry, now: dt.datetime,
            signals: Iterable[Signal], *, catch_up: bool = True
            ) -> tuple[Observation, Cut, Champion | None]:
    """What the triggers look at now, the newest transaction-consistent cut, the champion."""
    from snapshotter.snapshots import resolve_cut

    latest = resolve_cut(settings, pipeline.tables, "latest", catch_up=catch_up)
    champ = registry.champion(pipeline.model, pipeline.alias)
    base_name = (f"the cut of {pipeline.alias} {champ.ref}" if champ
                 else "the start of the log (no champion yet)")
    changes = change_log(settings, latest, champ.lineage.cut if champ else None, base_name)
    obs = Observation(now, changes, registry.last_training_at(pipeline.name),
                      champ.ref if champ else None, tuple(signals),
                      registry.handled_signals(pipeline.name))
    return obs, latest, champ
