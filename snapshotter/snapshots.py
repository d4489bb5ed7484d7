"""Create, open, list and rebuild offset-bounded snapshots.

A snapshot lives in `<snapshot_root>/<id>/`: a directory of Parquet files per table
(layout.py, docs/archive.md "Snapshot layout on disk") and `manifest.json`, written last.
It is built in a temporary directory, synced to disk and renamed into place only when
complete, so a crash leaves either no snapshot or a whole one. The id is derived from the
cut and the tables, so asking twice for the same data yields one snapshot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from cdc.reader import LogIdentity
from snapshotter.alignment import TableEvents, aligned_ends, transactions_from_rows
from snapshotter.archive import Archive, Generation, archive_topics
from snapshotter.cut import Cut, PartitionCut
from snapshotter.digest import (
    ContentSum,
    TableDigest,
    content_sum,
    digest_from_parts,
    overall_digest,
    table_digest,
)
from snapshotter.layout import (
    base_pieces_of,
    changed_files,
    file_sha256,
    file_stat,
    read_table,
    sql_paths,
    sql_text,
    visible_sql,
)
from snapshotter.layout import fsync as _fsync
from snapshotter.manifest import MANIFEST_NAME, Manifest, TableManifest
from snapshotter.materialise import Surveyed, materialise, survey, unavailable_columns
from snapshotter.openlineage import describe_snapshot
from tidelog import __version__
from tidelog.crashpoints import crash_point
from tidelog.errors import (
    ConfigError,
    CutError,
    DigestMismatch,
    SnapshotError,
    SnapshotNotFound,
    SnapshotWriteError,
    TidelogError,
)
from tidelog.openlineage import traced
from tidelog.redact import redact_dsn
from tidelog.settings import Settings
from tidelog.topics import table_topic, transaction_topic

__all__ = [
    "Snapshot",
    "create_snapshot",
    "open_snapshot",
    "list_snapshots",
    "rebuild_snapshot",
    "resolve_cut",
    "plan_cut",
]

KEY_COLUMN = "__key"
OP_COLUMN = "__op"
BUCKET_COLUMN = "__bucket"  # only in spill files


@dataclass(frozen=True)
class Snapshot:
    """A published snapshot. Every read checks the table's files against the manifest
    first (`verify`), so nothing is ever read that differs from what its digest says."""

    manifest: Manifest
    path: Path
    _verified: set[str] = dataclasses.field(default_factory=set, compare=False, repr=False)

    def verify(self, name: str) -> None:
        """Refuse with DigestMismatch unless table `name`'s files are those the manifest
        describes: sha256 per file (skipped for files that still stat as recorded), or,
        for a manifest without checksums, the recomputed digest."""
        if name in self._verified:
            return
        table = self.manifest.tables[name]
        sid = self.manifest.id
        if table.checksums:
            bad = changed_files(self.path, table)
            what = (f"file{'s' if len(bad) > 1 else ''} {', '.join(bad)} "
                    "missing or failing the sha256 its manifest recorded")
        else:
            try:
                got = table_digest(duckdb.connect(), visible_sql(self.path, table)).digest
            except TidelogError:
                got = "unreadable"
            bad = [name] if got != table.digest else []
            what = f"content digest {got} where the manifest recorded {table.digest}"
        if bad:
            raise DigestMismatch(
                f"snapshot {sid} table {name} was changed after it was built ({what}); "
                "refusing to read it, since anything built from it would record a digest "
                f"its data does not have. See `tidelog snapshot verify {sid}`, then delete "
                "the snapshot and create it again from the archive at the same cut "
                f"(`tidelog snapshot show {sid}` prints the cut)",
                snapshot_id=sid, table=name, files=bad)
        self._verified.add(name)

    def table(self, name: str) -> pl.DataFrame:
        """The table's rows in the canonical order (key columns, then `__key`)."""
        if name not in self.manifest.tables:
            raise SnapshotError(f"snapshot {self.manifest.id} has no table {name}; it has "
                                f"{sorted(self.manifest.tables)}")
        self.verify(name)
        return read_table(self.path, self.manifest.tables[name])

    def tables(self) -> dict[str, pl.DataFrame]:
        return {name: self.table(name) for name in sorted(self.manifest.tables)}

    def duckdb(self) -> duckdb.DuckDBPyConnection:
        for name in self.manifest.tables:
            self.verify(name)
        con = duckdb.connect()
        for name, table in self.manifest.tables.items():
            schema, rel = name.split(".", 1)
            con.execute(f'create schema if not exists "{schema}"')
            con.execute(f'create view "{schema}"."{rel}" as '
                        f"select * from {visible_sql(self.path, table)}")
        return con


def _topic(settings: Settings, table: str) -> str:
    return table_topic(settings.topic_prefix, table)


def _tx_topic(settings: Settings) -> str:
    return transaction_topic(settings.topic_prefix)


def _snapshot_root(settings: Settings) -> Path:
    return Path(settings.snapshot_root)


def snapshot_id(cut: Cut, tables: Sequence[str]) -> str:
    body = json.dumps({"cut": json.loads(cut.canonical()), "tables": sorted(tables)},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()[:16]


# -- cuts ------------------------------------------------------------------------------

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


def _scan(archive: Archive, topic: str, partition: int, generation: int, start: int,
          end: int, columns: list[str] | None = None) -> list[pl.LazyFrame]:
    frames = []
    segments = archive.segments_for_range(topic, partition, generation, start, end)
    archive.verify(segments)  # never build from a segment that fails its checksum
    for seg in segments:
        frame = archive.storage.scan(seg.path)
        if seg.start < start or seg.end > end:
            frame = frame.filter((pl.col("__offset") >= start) & (pl.col("__offset") < end))
        frames.append(frame.select(columns) if columns is not None else frame)
    return frames


def _require_full_history(archive: Archive, topic: str, partition: int, generation: int,
                          hwm: int) -> None:
    """A later generation is only a table's whole history if it opens with a snapshot.

    A restarted local broker loses Connect's offsets too, so Debezium re-reads the tables
    (`r` events) into the new log; a topic recreated under a running connector does not.
    """
    segs = archive.segments(topic, partition, generation)
    ops = next((frame["__op"] for frame in (
        archive.scan(s, ["__op"]).collect() for s in segs) if frame.height), None)
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
    tx = pl.col("__tx")
    return (pl.when(tx.str.len_bytes() > 0)
            .then(tx.str.split(":").list.first().cast(pl.Int64))
            .otherwise(None).alias("__tx"))


def plan_cut(archive: Archive, settings: Settings, tables: Sequence[str]) -> Cut:
    """The newest transaction-consistent cut the archive can serve for `tables`."""
    table_events: list[TableEvents] = []
    identities: dict[tuple[str, int], Any] = {}
    for table in tables:
        topic = _topic(settings, table)
        for partition in _archived_partitions(archive, topic):
            gen = _current_generation(archive, topic, partition)
            hwm = archive.high_water_mark(topic, partition, gen)
            identities[(topic, partition)] = gen
            if gen.number > 0:
                _require_full_history(archive, topic, partition, gen.number, hwm)
            frames = _scan(archive, topic, partition, gen.number, gen.first_offset, hwm,
                           ["__offset", "__tx"])
            events = (pl.concat(frames).select("__offset", _txid_expr()).collect()
                      if frames else pl.DataFrame({"__offset": [], "__tx": []}))
            table_events.append(TableEvents(
                table, (topic, partition), events["__offset"].to_list(),
                events["__tx"].to_list(), hwm))
    tx_topic = _tx_topic(settings)
    aligned = False
    ends = {t.tp: t.high_water_mark for t in table_events}
    if archive.storage.exists(archive.storage.path(tx_topic)):
        gen = _current_generation(archive, tx_topic, 0)
        if all(g.identity.cluster_id == gen.cluster_id for g in identities.values()):
            hwm = archive.high_water_mark(tx_topic, 0, gen)
            frames = _scan(archive, tx_topic, 0, gen.number, gen.first_offset, hwm)
            rows = (pl.concat(frames, how="diagonal_relaxed").collect() if frames else None)
            txs = transactions_from_rows(
                list(zip(rows["__offset"], rows["status"], rows["id"],
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
        gen = _generation_of(archive, p)
        frames = _scan(archive, p.topic, p.partition, gen.number, p.start, p.end,
                       ["__lsn", "__ts_ms"])
        if not frames:
            continue
        row = pl.concat(frames).select(pl.col("__lsn").max(), pl.col("__ts_ms").max()).collect()
        got_lsn, got_ts = row.row(0)
        if got_lsn is not None:
            lsn = max(lsn or 0, int(got_lsn))
        if got_ts is not None:
            commit = max(commit or 0, int(got_ts))
    return lsn, commit


def _generation_of(archive: Archive, p: PartitionCut) -> Generation:
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
        gen = _generation_of(archive, p)
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
        topics = [_topic(settings, t) for t in tables]
        tx = _tx_topic(settings)
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
    wanted = {_topic(settings, t) for t in tables}
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


# -- building --------------------------------------------------------------------------

def _key_columns(frame: pl.DataFrame) -> list[str]:
    keys = frame.filter(pl.col(KEY_COLUMN).is_not_null()).select(KEY_COLUMN).head(1)
    if keys.height == 0:
        return []
    return sorted(json.loads(keys.item()).keys())


def _find_base(settings: Settings, cut: Cut, tables: Sequence[str]) -> Manifest | None:
    """The newest snapshot of the same tables whose cut is a prefix of `cut`."""
    best: Manifest | None = None
    ends = cut.ends()
    for manifest in list_snapshots(settings):
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


def _intact(settings: Settings, manifest: Manifest, con: duckdb.DuckDBPyConnection) -> bool:
    """Whether a snapshot's files are still exactly what its manifest describes."""
    directory = _snapshot_root(settings) / manifest.id
    for table in manifest.tables.values():
        if table.checksums:  # format 2: a sha256 per file, rehashed unless it stats the same
            if changed_files(directory, table):
                return False
            continue
        try:  # format 1: recompute the digest
            got = table_digest(con, visible_sql(directory, table))
        except TidelogError:
            return False
        if got.digest != table.digest:
            return False
    return True


FOLD_EVENTS = 2_000_000  # events materialised at once; bounds peak memory
# A full build's memory (measured, BENCHMARKS.md): one bucket peaks at about 4x the
# in-memory size of its events and base rows; spilling and folding add about 1 GiB.
PEAK_PER_INPUT_BYTE = 4
BUILD_FLOOR_BYTES = 1 << 30
DEFAULT_MEMORY_MB = 4096
COMPACT_FRACTION = 0.1  # a delta past this fraction of the data files is folded back in
_BUCKET_SEED = 0x7D1E


def _fold(frames: list[pl.LazyFrame], base: pl.LazyFrame | None,
          where: pl.Expr | None = None,
          surveys: dict[int, list[Surveyed]] | None = None,
          group_events: int | None = None,
          key_columns: Sequence[str] | None = None) -> pl.DataFrame:
    """Materialise groups of segments of about FOLD_EVENTS events, each on the state so far.

    Peak memory is then about the table state plus one group, instead of growing with
    the whole change history; the result is the same (the incremental rule). `where`
    restricts the events to some keys (the base must already be restricted to them);
    `surveys` keeps each group's metadata pre-pass for the next call on the same frames.
    `group_events`: events per group before `where` (default FOLD_EVENTS).
    `key_columns`: as for `materialise` (None: read them from the events).
    """
    limit = group_events or FOLD_EVENTS
    sizes = [int(f.select(pl.len()).collect().item()) for f in frames]
    groups: list[list[pl.LazyFrame]] = [[]]
    count = 0
    for frame, size in zip(frames, sizes, strict=True):
        if count >= limit:
            groups.append([])
            count = 0
        groups[-1].append(frame)
        count += size
    state: pl.DataFrame | pl.LazyFrame | None = base
    for number, group in enumerate(groups):
        surveyed = None
        if surveys is not None:
            surveyed = surveys.get(number)
            if surveyed is None:
                surveyed = surveys[number] = survey(group)
        state = materialise(group, key_columns, base=state, keep_key=True, where=where,
                            surveyed=surveyed)
    assert isinstance(state, pl.DataFrame)
    return state


@dataclass(frozen=True)
class _Base:
    """The earlier snapshot an incremental build starts from."""

    manifest: Manifest
    directory: Path


def _data_schema(schema: Any) -> list[tuple[str, pl.DataType]]:
    return [(n, t) for n, t in schema.items() if not n.startswith("__")]


def _file_rows(paths: Sequence[Path]) -> int:
    return sum(pq.read_metadata(str(p)).num_rows for p in paths)


def _link(source: Path, target: Path) -> None:
    """Share an unchanged file with the base snapshot (a copy where links cannot be made)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)  # keeps the modification time the manifest recorded


def _table_manifest(con: duckdb.DuckDBPyConnection, table: str, topic: str, tmp: Path,
                    key_columns: Sequence[str], files: Sequence[str], *,
                    delete_files: Sequence[str] = (), delta_files: Sequence[str] = (),
                    digest: TableDigest | None = None,
                    columns: Sequence[tuple[str, str]] | None = None,
                    checksums: dict[str, str] | None = None) -> TableManifest:
    """The manifest entry for files written under `tmp`; the digest is computed from the
    files unless the caller derived it."""
    if columns is None:
        relation = f"read_parquet({sql_paths([str(tmp / f) for f in files])})"
        described = con.execute(f"describe select * from {relation}").fetchall()
        columns = [(str(r[0]), str(r[1])) for r in described if r[0] != KEY_COLUMN]
    if not columns:
        raise SnapshotError(
            f"table {table} has no change events below the cut, so nothing is known of its "
            "columns; choose a later cut, or check that the connector captures it "
            "(Debezium writes nothing for a table that has never had a row)", table=table)
    draft = TableManifest(name=table, topic=topic, rows=0, columns=tuple(columns),
                          key_columns=tuple(key_columns), digest="", files=tuple(files),
                          delete_files=tuple(delete_files), delta_files=tuple(delta_files))
    if digest is None:
        digest = table_digest(con, visible_sql(tmp, draft))
    sums = dict(checksums or {})
    for name in draft.all_files:
        if name not in sums:
            sums[name] = file_sha256(tmp / name)
    return dataclasses.replace(draft, rows=digest.rows, digest=digest.digest,
                               content_digest=digest.content_digest,
                               schema_digest=digest.schema_digest, checksums=sums,
                               file_stats={n: file_stat(tmp / n) for n in draft.all_files})


def memory_budget(settings: Settings) -> int:
    """Bytes a full build aims to stay within (`TIDELOG_SNAPSHOT_MEMORY_MB`)."""
    megabytes = settings.snapshot_memory_mb or DEFAULT_MEMORY_MB
    minimum = (BUILD_FLOOR_BYTES >> 20) + 512
    if megabytes < minimum:
        raise ConfigError(
            f"snapshot_memory_mb is {megabytes}: give a whole number of MiB of at least "
            f"{minimum} (a full build needs about {BUILD_FLOOR_BYTES >> 20} MiB beyond "
            f"its buckets); the default is {DEFAULT_MEMORY_MB}")
    return megabytes << 20


def plan_buckets(input_bytes: int, memory_bytes: int) -> int:
    """Key-hash buckets for a full build whose events and base rows take `input_bytes`
    in memory, so that one bucket's build fits in `memory_bytes`."""
    per_bucket = memory_bytes - BUILD_FLOOR_BYTES
    return max(1, -(-input_bytes * PEAK_PER_INPUT_BYTE // per_bucket))


def _bytes_per_row(frames: Sequence[pl.LazyFrame], sample: int = 1000) -> float:
    """In-memory bytes per row, from the first rows of the first non-empty frame."""
    for frame in frames:
        head = frame.head(sample).collect()
        if head.height:
            return head.estimated_size() / head.height
    return 0.0


def _bucket_of(buckets: int) -> pl.Expr:
    return (pl.col(KEY_COLUMN).hash(_BUCKET_SEED).fill_null(0) % buckets).alias(BUCKET_COLUMN)


def _spill(pieces: Sequence[pl.LazyFrame], buckets: int, directory: Path) -> list[pl.LazyFrame]:
    """Rewrite each piece (one at a time) sorted by key bucket, in small row groups, so a
    scan filtered on one bucket skips the others' row groups by their statistics.

    Sorting is stable, so each bucket keeps its events' order within a piece.
    """
    directory.mkdir(parents=True)
    spilled = []
    for number, piece in enumerate(pieces):
        frame = piece.with_columns(_bucket_of(buckets)).collect()
        frame = frame.sort(BUCKET_COLUMN, maintain_order=True)
        path = directory / f"{number:06d}.parquet"
        frame.write_parquet(path, compression="lz4", statistics=True,
                            row_group_size=max(1024, frame.height // (buckets * 4)))
        spilled.append(pl.scan_parquet(str(path)))
        del frame
    return spilled


def _write_full(con: duckdb.DuckDBPyConnection, table: str, topic: str, tmp: Path,
                frames: list[pl.LazyFrame], base: _Base | None, memory_bytes: int
                ) -> TableManifest:
    """The whole table state, in key-hash buckets small enough to fit in memory.

    With several buckets the events (and a base state) are first spilled once, sorted by
    bucket; then each bucket is folded from its own events and written before the next
    one starts, so peak memory follows the bucket size, not the table's.
    """
    prev = base.manifest.tables[table] if base is not None else None
    base_pieces: list[pl.LazyFrame] = []
    if base is not None and prev is not None:
        base_pieces = base_pieces_of(base.directory, prev)
    event_count = sum(int(f.select(pl.len()).collect().item()) for f in frames)
    input_bytes = event_count * _bytes_per_row(frames)
    if prev is not None:
        input_bytes += prev.rows * _bytes_per_row(base_pieces)
    buckets = plan_buckets(int(input_bytes), memory_bytes)
    # With no events the key columns cannot be read from them: the base knows them.
    keys = list(prev.key_columns) if prev is not None and event_count == 0 else None
    (tmp / table).mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    key_columns: list[str] = []

    def write(state: pl.DataFrame, number: int) -> None:
        nonlocal key_columns
        name = f"{table}/data-{number:05d}.parquet"
        # zstd level 1: files as small as the default level 3 gave on TPC-H, ~20% faster
        state.write_parquet(tmp / name, compression="zstd", compression_level=1,
                            statistics=True)
        files.append(name)
        if not key_columns and KEY_COLUMN in state.columns:
            key_columns = _key_columns(state)

    if buckets == 1:
        write(_fold(frames, pl.concat(base_pieces) if base_pieces else None,
                    key_columns=keys), 0)
    else:
        spill = tmp / f".spill-{uuid.uuid4().hex[:8]}"
        try:
            events = _spill(frames, buckets, spill / "events")
            spilled_base = _spill(base_pieces, buckets, spill / "base") if base_pieces else []
            surveys: dict[int, list[Surveyed]] = {}
            for number in range(buckets):
                mine = pl.col(BUCKET_COLUMN) == number
                own_base = (pl.concat(spilled_base).filter(mine).drop(BUCKET_COLUMN)
                            if spilled_base else None)
                # a bucket holds about 1/buckets of each group's events
                write(_fold(events, own_base, mine, surveys, FOLD_EVENTS * buckets, keys),
                      number)
        finally:
            shutil.rmtree(spill, ignore_errors=True)
    return _table_manifest(con, table, topic, tmp, key_columns, files)


def _write_layered(con: duckdb.DuckDBPyConnection, table: str, topic: str, tmp: Path,
                   frames: list[pl.LazyFrame], base: _Base) -> TableManifest | None:
    """Base data files (shared) + accumulated deletes and delta; None where that layout
    cannot express the change (truncate, schema change, older base, delta grown large).

    The digest is derived, not recomputed: base content - rows replaced + rows written.
    """
    prev = base.manifest.tables[table]
    if not (prev.content_digest and prev.schema_digest and prev.checksums) or prev.erased:
        return None  # an erased base's recorded sums include rows it no longer has
    event_count = sum(int(f.select(pl.len()).collect().item()) for f in frames)
    if event_count > FOLD_EVENTS:
        return None  # a change this large is folded in bounded groups by a full build
    src = base.directory
    if event_count == 0:
        # Nothing happened to the table since the base: the same files, the same digest
        # (of 8 TPC-H tables a refresh round touches 4; this was half an incremental build).
        for name in prev.all_files:
            _link(src / name, tmp / name)
        return dataclasses.replace(prev, file_stats={n: file_stat(tmp / n)
                                                     for n in prev.all_files})
    file_schema = _data_schema(pl.scan_parquet(str(src / prev.files[0])).collect_schema())
    if any(_data_schema(f.collect_schema()) != file_schema for f in frames):
        return None  # a column added, dropped or retyped: rewrite the table
    if frames:
        events = pl.concat([f.select(OP_COLUMN, KEY_COLUMN) for f in frames]).collect()
    else:
        events = pl.DataFrame(schema={OP_COLUMN: pl.String, KEY_COLUMN: pl.String})
    if (events[OP_COLUMN] == "t").any():
        return None
    changed = events.select(KEY_COLUMN).drop_nulls().unique()
    old_deletes = (pl.read_parquet([str(src / f) for f in prev.delete_files])
                   if prev.delete_files else changed.clear())
    deletes = pl.concat([old_deletes, changed]).unique().sort(KEY_COLUMN)
    old_delta = (pl.read_parquet([str(src / f) for f in prev.delta_files])
                 if prev.delta_files else None)
    changes = (materialise(frames, keep_key=True) if frames
               else pl.DataFrame(schema=[*file_schema, (KEY_COLUMN, pl.String())]))
    if unavailable_columns(changes):
        return None  # an unchanged TOAST value whose real value is in the base state
    if old_delta is not None:
        delta = pl.concat([old_delta.join(changed, on=KEY_COLUMN, how="anti",
                                          maintain_order="left"), changes])
    else:
        delta = changes
    data_paths = [src / f for f in prev.files]
    if deletes.height + delta.height > COMPACT_FRACTION * _file_rows(data_paths):
        return None

    # Rows of the base that the changed keys replace or delete.
    keys = changed[KEY_COLUMN].implode()
    replaced = [pl.scan_parquet([str(p) for p in data_paths])
                .filter(pl.col(KEY_COLUMN).is_in(keys))
                .join(old_deletes.lazy(), on=KEY_COLUMN, how="anti")]
    if old_delta is not None:
        replaced.append(old_delta.lazy().filter(pl.col(KEY_COLUMN).is_in(keys)))
    removed = pl.concat(replaced).collect()

    (tmp / table).mkdir(parents=True, exist_ok=True)
    for name in prev.files:
        _link(src / name, tmp / name)
    delete_name, delta_name = f"{table}/deletes.parquet", f"{table}/delta.parquet"
    deletes.write_parquet(tmp / delete_name, compression="zstd", statistics=True)
    delta.write_parquet(tmp / delta_name, compression="zstd", statistics=True)
    scratch = tmp / f".scratch-{uuid.uuid4().hex[:8]}"
    scratch.mkdir()
    try:
        # Hash through Parquet, exactly as a full build's files are read for its digest.
        removed.write_parquet(scratch / "removed.parquet")
        changes.write_parquet(scratch / "changes.parquet")
        sums = []
        for part in ("removed", "changes"):
            path = scratch / f"{part}.parquet"
            relation = f"(select * exclude ({KEY_COLUMN}) from read_parquet({sql_text(str(path))}))"
            described = con.execute(f"describe select * from {relation}").fetchall()
            if [(str(r[0]), str(r[1])) for r in described] != list(prev.columns):
                return None
            sums.append(content_sum(con, relation, prev.columns))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    content = ContentSum.parse(prev.content_digest, prev.rows) - sums[0] + sums[1]
    digest = digest_from_parts(prev.schema_digest, content)
    return _table_manifest(con, table, topic, tmp, prev.key_columns, prev.files,
                           delete_files=(delete_name,), delta_files=(delta_name,),
                           digest=digest, columns=prev.columns,
                           checksums={f: prev.checksums[f] for f in prev.files})


def _build_table(con: duckdb.DuckDBPyConnection, settings: Settings, archive: Archive,
                 cut: Cut, table: str, tmp: Path, base: _Base | None) -> TableManifest:
    topic = _topic(settings, table)
    parts = [p for p in cut.partitions if p.topic == topic]
    if len(parts) > 1:
        # Which of two partitions' events is later is defined only by a full build's sort
        # (partition, offset); building on a base would let the newer events win instead.
        base = None
    base_ends = base.manifest.cut.ends() if base else {}
    frames: list[pl.LazyFrame] = []
    for p in parts:
        gen = _generation_of(archive, p)
        start = base_ends.get((p.topic, p.partition), p.start)
        frames.extend(_scan(archive, p.topic, p.partition, gen.number, start, p.end))
    if base is not None:
        layered = _write_layered(con, table, topic, tmp, frames, base)
        if layered is not None:
            return layered
        shutil.rmtree(tmp / table, ignore_errors=True)  # a partial layered attempt
    return _write_full(con, table, topic, tmp, frames, base, memory_budget(settings))


def _fsync_tree(directory: Path) -> None:
    """Sync every file under `directory`, then the directories holding them."""
    paths = sorted(directory.rglob("*"), key=lambda p: (p.is_dir(), -len(p.parts)))
    for path in [*paths, directory]:
        _fsync(path)


@contextlib.contextmanager
def _shared_lock(root: Path, sid: str) -> Iterator[None]:
    with open(root / f".lock-{sid}", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_abandoned_builds(root: Path) -> None:
    """Delete temporary directories of builds whose builder is gone (killed).

    A live builder holds its id's lock, so a directory whose lock is free is abandoned;
    removing it also releases any base files it had hard-linked.
    """
    for stale in root.glob(".tmp-*"):
        sid = stale.name[len(".tmp-"):].rsplit("-", 1)[0]
        with open(root / f".lock-{sid}", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a build in progress (or our own, cleaned by the caller)
            try:
                shutil.rmtree(stale, ignore_errors=True)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _build(settings: Settings, archive: Archive, cut: Cut, tables: Sequence[str],
           target: Path, incremental: bool, replace: bool = False) -> Manifest:
    sid = target.name
    tmp = target.parent / f".tmp-{sid}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        con = duckdb.connect()
        found = _find_base(settings, cut, tables) if incremental and not cut.is_window else None
        with contextlib.ExitStack() as hold:
            base = None
            if found is not None:
                # A shared lock on the base: deleting it waits until this build is done.
                hold.enter_context(_shared_lock(_snapshot_root(settings), found.id))
                if _intact(settings, found, con):
                    # never build on a damaged snapshot; a full build is always right
                    base = _Base(found, _snapshot_root(settings) / found.id)
            table_manifests = {}
            for table in sorted(tables):
                try:
                    table_manifests[table] = _build_table(con, settings, archive, cut, table,
                                                          tmp, base)
                except (pl.exceptions.PolarsError, duckdb.Error, pa.ArrowException) as exc:
                    if _storage_failure(exc):
                        raise _write_failed(sid, target.parent, exc) from exc
                    also = (f" and the base snapshot with `tidelog snapshot verify "
                            f"{base.manifest.id}`") if base else ""
                    raise SnapshotError(
                        f"building table {table} of snapshot {sid} failed: {exc}; check the "
                        f"archive with `tidelog archive verify`{also}", table=table) from exc
        manifest = Manifest(
            id=sid, cut=cut, tables=table_manifests,
            digest=overall_digest({k: v.digest for k, v in table_manifests.items()}),
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
            tidelog_version=__version__,
            built_from=base.manifest.id if base else "full",
            source={"topic_prefix": settings.topic_prefix,
                    "connector": settings.connector_name,
                    "database": redact_dsn(settings.postgres_dsn)},
        )
        # The files reach the disk first, the manifest last; the rename makes the whole
        # snapshot appear at once, and syncing the parent makes the rename durable.
        _fsync_tree(tmp)
        crash_point("snapshot.before_manifest")
        manifest_tmp = tmp / f".{MANIFEST_NAME}.tmp"
        manifest_tmp.write_text(manifest.dumps())
        _fsync(manifest_tmp)
        os.replace(manifest_tmp, tmp / MANIFEST_NAME)
        _fsync(tmp)
        crash_point("snapshot.manifest_in_build_dir")
        if replace and target.exists():
            # Two renames: a crash between them leaves `.old-<id>`, which the next
            # create_snapshot of this id renames back (_restore_replaced).
            old = target.parent / f".old-{sid}"
            os.replace(target, old)
            _fsync(target.parent)
            crash_point("snapshot.old_set_aside")
            os.replace(tmp, target)
            _fsync(target.parent)
            shutil.rmtree(old, ignore_errors=True)
            return manifest
        os.replace(tmp, target)
        _fsync(target.parent)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# What polars, DuckDB and Arrow say when the disk (not the data) is the problem; they
# wrap the OS error in their own exception types and keep only its text.
_STORAGE_FAILURES = tuple(os.strerror(code) for code in (
    errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO))


def _storage_failure(exc: BaseException) -> bool:
    return isinstance(exc, OSError) or any(text in str(exc) for text in _STORAGE_FAILURES)


def _write_failed(sid: str, root: Path, exc: BaseException) -> SnapshotWriteError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return SnapshotWriteError(
        f"writing snapshot {sid} under {root} failed: {reason}; nothing of it was kept. "
        f"Free space (or fix permissions) under {root}, then retry", snapshot_id=sid,
        root=str(root))


@traced("snapshot", describe_snapshot)
def create_snapshot(settings: Settings, tables: Sequence[str], at: str | Cut = "latest", *,
                    incremental: bool = True, catch_up: bool = True,
                    allow_stale: bool = False) -> Manifest:
    from snapshotter.catalog import ensure_catalog, register_snapshot

    tables = sorted(set(tables))
    if not tables:
        raise SnapshotError("no tables given: pass --tables schema.table[,...]")
    ensure_catalog(settings)  # repairs what a crash between publish and register left
    archive = Archive(settings.archive_root)
    cut = resolve_cut(settings, tables, at, archive, catch_up=catch_up,
                      allow_stale=allow_stale)
    root = _snapshot_root(settings)
    sid = snapshot_id(cut, tables)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_failed(sid, root, exc) from exc
    target = root / sid
    # One builder per snapshot id: a second identical request waits and reuses the result.
    with open(root / f".lock-{sid}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _restore_replaced(root, sid)
        exists = (target / MANIFEST_NAME).exists()
        if exists and incremental:
            found = open_snapshot(settings, sid).manifest
            _announce(settings, found)  # same event id: a crash after the build resends
            if cut.stale_allowed:
                # Built earlier from the same offsets; this request's cut was stale, and
                # the caller (and a run trained on it) must see that.
                return dataclasses.replace(found, cut=dataclasses.replace(
                    found.cut, stale_allowed=cut.stale_allowed))
            return found
        for stale in root.glob(f".tmp-{sid}-*"):  # left by a builder that was killed
            shutil.rmtree(stale, ignore_errors=True)
        _remove_abandoned_builds(root)
        if target.exists() and not exists:
            # A directory without a manifest is not a snapshot; only our rename makes one.
            shutil.rmtree(target)
        try:
            # `--full` of an existing id builds it again from the archive and swaps it in.
            manifest = _build(settings, archive, cut, tables, target, incremental,
                              replace=exists)
        except OSError as exc:
            raise _write_failed(sid, root, exc) from exc
    crash_point("snapshot.after_publish")
    register_snapshot(settings, manifest)
    _announce(settings, manifest)
    return manifest


def _announce(settings: Settings, manifest: Manifest) -> None:
    from snapshotter.announce import dataset_ready
    from tidelog.events import publish

    publish(settings, dataset_ready(settings, manifest))


def _restore_replaced(root: Path, sid: str) -> None:
    """Put back a snapshot whose replacement by a `--full` rebuild was interrupted."""
    old = root / f".old-{sid}"
    if not old.exists():
        return
    if (root / sid / MANIFEST_NAME).exists():
        shutil.rmtree(old, ignore_errors=True)  # the new one is in place
    else:
        if (root / sid).exists():
            shutil.rmtree(root / sid)
        os.replace(old, root / sid)
        _fsync(root)


def check_archive(settings: Settings, archive: Archive, cut: Cut, tables: Sequence[str]
                  ) -> None:
    """Refuse, naming table and segment, when an archived segment was changed."""
    for table in sorted(tables):
        topic = _topic(settings, table)
        for p in (p for p in cut.partitions if p.topic == topic):
            gen = _generation_of(archive, p)
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


def rebuild_snapshot(settings: Settings, cut: Cut, tables: Sequence[str], into: Path
                     ) -> Manifest:
    """Materialise `cut` again from the archive alone (no Kafka, no earlier snapshot)."""
    archive = Archive(settings.archive_root)
    cut = resolve_cut(settings, tables, cut, archive, catch_up=False)
    check_archive(settings, archive, cut, tables)
    target = into / snapshot_id(cut, tables)
    try:
        into.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        return _build(settings, archive, cut, sorted(tables), target, incremental=False)
    except OSError as exc:
        raise _write_failed(target.name, into, exc) from exc


def open_snapshot(settings: Settings, sid: str) -> Snapshot:
    path = _snapshot_root(settings) / sid
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.exists():
        known = [m.id for m in list_snapshots(settings)]
        hint = f"; known snapshots: {', '.join(known[-5:])}" if known else ""
        raise SnapshotNotFound(f"no snapshot {sid!r} under {path.parent}{hint}",
                               snapshot_id=sid)
    return Snapshot(Manifest.loads(manifest_path.read_text(), str(manifest_path)), path)


def list_snapshots(settings: Settings) -> list[Manifest]:
    root = _snapshot_root(settings)
    if not root.exists():
        return []
    manifests = []
    for child in root.iterdir():
        manifest_path = child / MANIFEST_NAME
        if child.name.startswith(".") or not manifest_path.exists():
            continue
        try:
            manifests.append(Manifest.loads(manifest_path.read_text(), str(manifest_path)))
        except TidelogError:
            continue
    return sorted(manifests, key=lambda m: (m.created_at, m.id))
