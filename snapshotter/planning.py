"""Which offsets a snapshot covers: planning, resolving and checking cuts over the archive.

A cut names, per partition of every chosen table, the archive generation (log identity)
and the offsets `[start, end)` it covers. `plan_cut` finds the newest transaction-aligned
cut the archive holds; `resolve_cut` turns what a caller asked for ("latest", a cut) into
one, refusing stale capture; `validate_cut` and `check_archive` refuse cuts the archive
cannot serve exactly. Nothing here writes a snapshot.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import polars as pl

from cdc.columns import LSN, OFFSET, OP, TS_MS, TX
from cdc.reader import LogIdentity
from snapshotter.alignment import TableEvents, aligned_ends, transactions_from_rows
from snapshotter.archive import Archive, Generation
from snapshotter.archiving import archive_topics
from snapshotter.cut import Cut, PartitionCut
from snapshotter.manifest import Manifest
from tidelog.errors import CutError, DigestMismatch
from tidelog.settings import Settings
from tidelog.topics import table_topic, transaction_topic

__all__ = [
    "topic_of",
    "tx_topic_of",
    "snapshot_id",
    "scan_range",
    "generation_of",
    "plan_cut",
    "validate_cut",
    "resolve_cut",
    "check_archive",
    "find_base",
]


def topic_of(settings: Settings, table: str) -> str:
    return table_topic(settings.topic_prefix, table)


def tx_topic_of(settings: Settings) -> str:
    return transaction_topic(settings.topic_prefix)


def snapshot_id(cut: Cut, tables: Sequence[str]) -> str:
    body = json.dumps({"cut": json.loads(cut.canonical()), "tables": sorted(tables)},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _current_generation(archive: Archive, topic: str, partition: int) -> Generation:
    gens = archive.generations(topic, partition)
    if not gens:
        raise CutError(f"nothing of {topic}[{partition}] is archived; is the table captured? "
                       "(`tidelog connector apply`, then `tidelog archive run`)")
    return gens[-1]


def _archived_partitions(archive: Archive, topic: str) -> list[int]:
    parts = [int(p[1:]) for p in archive.storage.listdir(archive.storage.path(topic))
             if p.startswith("p")]
    if not parts:
        raise CutError(f"unknown table: topic {topic} is not in the archive at {archive.root}; "
                       "check the table name (schema.table) and that it is captured")
    return sorted(parts)


def scan_range(archive: Archive, topic: str, partition: int, generation: int, start: int,
          end: int, columns: list[str] | None = None) -> list[pl.LazyFrame]:
    frames = []
    segments = archive.segments_for_range(topic, partition, generation, start, end)
    archive.verify(segments)  # never build from a segment that fails its checksum
    for seg in segments:
        frame = archive.storage.scan(seg.path)
        if seg.start < start or seg.end > end:
            frame = frame.filter((pl.col(OFFSET) >= start) & (pl.col(OFFSET) < end))
        frames.append(frame.select(columns) if columns is not None else frame)
    return frames


def _require_full_history(archive: Archive, topic: str, partition: int, generation: int,
                          hwm: int) -> None:
    """A later generation is only a table's whole history if it opens with a snapshot.

    A restarted local broker loses Connect's offsets too, so Debezium re-reads the tables
    (`r` events) into the new log; a topic recreated under a running connector does not.
    """
    segs = archive.segments(topic, partition, generation)
    ops = next((frame[OP] for frame in (
        archive.scan(s, [OP]).collect() for s in segs) if frame.height), None)
    if ops is not None and ops[0] != "r":
        raise CutError(
            f"{topic}[{partition}] is on a new log (archive generation {generation}) that "
            "does not begin with a Debezium snapshot, so it lacks the rows written before "
            "it; earlier cuts still work. Re-snapshot the table (recreate the connector "
            "under a new --name, or send Debezium an `execute-snapshot` signal), then "
            "archive again"
        )


def _txid_expr() -> pl.Expr:
    """alignment.txid_of over the `__tx` column, vectorised: a snapshot of a table with a
    long history reads one per archived event (0.3 s for TPC-H's 866k in Python)."""
    tx = pl.col(TX)
    return (pl.when(tx.str.len_bytes() > 0)
            .then(tx.str.split(":").list.first().cast(pl.Int64))
            .otherwise(None).alias(TX))


def plan_cut(archive: Archive, settings: Settings, tables: Sequence[str]) -> Cut:
    """The newest transaction-consistent cut the archive can serve for `tables`."""
    table_events: list[TableEvents] = []
    identities: dict[tuple[str, int], Any] = {}
    for table in tables:
        topic = topic_of(settings, table)
        for partition in _archived_partitions(archive, topic):
            gen = _current_generation(archive, topic, partition)
            hwm = archive.high_water_mark(topic, partition, gen)
            identities[(topic, partition)] = gen
            if gen.number > 0:
                _require_full_history(archive, topic, partition, gen.number, hwm)
            frames = scan_range(archive, topic, partition, gen.number, gen.first_offset, hwm,
                           [OFFSET, TX])
            events = (pl.concat(frames).select(OFFSET, _txid_expr()).collect()
                      if frames else pl.DataFrame({OFFSET: [], TX: []}))
            table_events.append(TableEvents(
                table, (topic, partition), events[OFFSET].to_list(),
                events[TX].to_list(), hwm))
    tx_topic = tx_topic_of(settings)
    aligned = False
    ends = {t.tp: t.high_water_mark for t in table_events}
    if archive.storage.exists(archive.storage.path(tx_topic)):
        gen = _current_generation(archive, tx_topic, 0)
        if all(g.identity.cluster_id == gen.cluster_id for g in identities.values()):
            hwm = archive.high_water_mark(tx_topic, 0, gen)
            frames = scan_range(archive, tx_topic, 0, gen.number, gen.first_offset, hwm)
            rows = (pl.concat(frames, how="diagonal_relaxed").collect() if frames else None)
            txs = transactions_from_rows(
                list(zip(rows[OFFSET], rows["status"], rows["id"],
                         rows["data_collections"], strict=True)) if rows is not None else [])
            ends, _ = aligned_ends(table_events, txs)
            aligned = True
    partitions = tuple(
        PartitionCut(topic=tp[0], partition=tp[1], end=ends[tp],
                     start=identities[tp].first_offset,
                     cluster_id=identities[tp].cluster_id, topic_id=identities[tp].topic_id)
        for tp in sorted(ends)
    )
    lsn, commit = _watermarks(archive, partitions)
    return Cut(partitions, lsn=lsn, commit_time_ms=commit, transaction_aligned=aligned)


def _watermarks(archive: Archive, partitions: Sequence[PartitionCut]
                ) -> tuple[int | None, int | None]:
    lsn: int | None = None
    commit: int | None = None
    for p in partitions:
        gen = generation_of(archive, p)
        frames = scan_range(archive, p.topic, p.partition, gen.number, p.start, p.end,
                       [LSN, TS_MS])
        if not frames:
            continue
        row = pl.concat(frames).select(pl.col(LSN).max(), pl.col(TS_MS).max()).collect()
        got_lsn, got_ts = row.row(0)
        if got_lsn is not None:
            lsn = max(lsn or 0, int(got_lsn))
        if got_ts is not None:
            commit = max(commit or 0, int(got_ts))
    return lsn, commit


def generation_of(archive: Archive, p: PartitionCut) -> Generation:
    identity = LogIdentity(p.cluster_id, p.topic_id)
    gen = archive.generation_for(p.topic, p.partition, identity)
    if gen is None:
        known = [g.identity for g in archive.generations(p.topic, p.partition)]
        raise CutError(
            f"the cut names {p.topic}[{p.partition}] in log {identity}, which the archive "
            f"does not hold (it has {known or 'nothing'}); a cut from another log (recreated "
            "topic, other cluster) cannot be served"
        )
    return gen


def validate_cut(archive: Archive, cut: Cut) -> None:
    for p in cut.partitions:
        gen = generation_of(archive, p)
        hwm = archive.high_water_mark(p.topic, p.partition, gen)
        if p.end > hwm:
            raise CutError(
                f"cut end {p.end} of {p.topic}[{p.partition}] is beyond the archived "
                f"high-water mark {hwm}; run `tidelog archive run` or choose an earlier cut"
            )
        if p.start < gen.first_offset:
            raise CutError(
                f"offsets {p.start}..{gen.first_offset - 1} of {p.topic}[{p.partition}] were "
                "never archived and are gone from Kafka; choose a cut starting at "
                f"{gen.first_offset} or later"
            )


def resolve_cut(settings: Settings, tables: Sequence[str], at: str | Cut,
                archive: Archive | None = None, catch_up: bool = True, *,
                allow_stale: bool = False) -> Cut:
    """The cut `at` names; for "latest" (with `catch_up`), the archive's newest cut after
    archiving everything new, refused with CaptureStale while capture is behind the source
    (snapshotter/freshness.py) unless `allow_stale`. Without `catch_up`, "latest" is
    the newest cut the archive already holds, and no capture check is made."""
    from snapshotter.freshness import archive_problems, refuse_if_stale, source_problems

    archive = archive or Archive(settings.archive_root)
    if isinstance(at, str) and at == "latest":
        if not catch_up:
            return plan_cut(archive, settings, tables)
        # The source check first: what it confirms was committed before the catch-up.
        problems = source_problems(settings, tables)
        topics = [topic_of(settings, t) for t in tables]
        tx = tx_topic_of(settings)
        try:
            archive_topics(settings, [*topics, tx], archive=archive)
            topics.append(tx)
        except CutError:
            archive_topics(settings, topics, archive=archive)
        problems += archive_problems(archive, topics)
        stale = refuse_if_stale(problems, tables, allow_stale)
        cut = plan_cut(archive, settings, tables)
        return dataclasses.replace(cut, stale_allowed=stale) if stale else cut
    cut = at if isinstance(at, Cut) else Cut.from_json(at)
    wanted = {topic_of(settings, t) for t in tables}
    missing = wanted - {p.topic for p in cut.partitions}
    if missing:
        raise CutError(f"the cut has no offsets for {sorted(missing)}; a cut must name every "
                       "partition of every chosen table")
    cut = cut.for_topics(wanted)
    validate_cut(archive, cut)
    if cut.lsn is None:
        lsn, commit = _watermarks(archive, cut.partitions)
        cut = Cut(cut.partitions, lsn, commit, cut.transaction_aligned,
                  stale_allowed=cut.stale_allowed)
    return cut


def check_archive(settings: Settings, archive: Archive, cut: Cut, tables: Sequence[str]
                  ) -> None:
    """Refuse, naming table and segment, when an archived segment was changed."""
    for table in sorted(tables):
        topic = topic_of(settings, table)
        for p in (p for p in cut.partitions if p.topic == topic):
            gen = generation_of(archive, p)
            segments = archive.segments_for_range(p.topic, p.partition, gen.number,
                                                  p.start, p.end)
            bad = archive.damaged(segments)
            if bad:
                raise DigestMismatch(
                    f"archived segment {bad[0].path} of table {table} ({p.topic}"
                    f"[{p.partition}] offsets {bad[0].start}..{bad[0].end - 1}) no longer "
                    f"matches its checksum {bad[0].checksum}: the archive was changed after "
                    "it was written. Restore it from a backup; tidelog will not rebuild "
                    "from altered history",
                    tables=[table], segments=[s.path for s in bad])


def find_base(manifests: Sequence[Manifest], cut: Cut, tables: Sequence[str]
              ) -> Manifest | None:
    """Of `manifests`, the newest of the same tables whose cut is a prefix of `cut`."""
    best: Manifest | None = None
    ends = cut.ends()
    for manifest in manifests:
        if sorted(manifest.tables) != sorted(tables) or manifest.cut.is_window:
            continue
        theirs = manifest.cut.partitions
        if {(p.topic, p.partition) for p in theirs} != set(ends):
            continue
        ok = all(
            p.end <= ends[(p.topic, p.partition)]
            and any(q.topic == p.topic and q.partition == p.partition
                    and (q.cluster_id, q.topic_id, q.start) == (p.cluster_id, p.topic_id,
                                                                p.start)
                    for q in cut.partitions)
            for p in theirs
        )
        if ok and (best is None or sum(p.end for p in theirs) >
                   sum(p.end for p in best.cut.partitions)):
            best = manifest
    return best
