"""Writing one table of a snapshot: a full build in memory-sized key buckets, or a
layered one on an earlier snapshot (its data files shared, plus deletes and a delta).

`build_table` picks the layout; both end in `table_manifest`, which records the files,
their sha256 and the table's content digest. Files are written under the caller's build
directory only; publishing them is the store's job (snapshotter/store.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow.parquet as pq

from snapshotter.archive import Archive
from snapshotter.cut import Cut
from snapshotter.digest import (
    ContentSum,
    TableDigest,
    content_sum,
    digest_from_parts,
    table_digest,
)
from snapshotter.layout import (
    base_pieces_of,
    file_sha256,
    file_stat,
    sql_paths,
    sql_text,
    visible_sql,
)
from snapshotter.manifest import Manifest, TableManifest
from snapshotter.materialise import KEY, OP, Surveyed, materialise, survey, unavailable_columns
from snapshotter.planning import generation_of, scan_range, topic_of
from tidelog.errors import ConfigError, SnapshotError
from tidelog.settings import Settings

__all__ = [
    "KEY_COLUMN",
    "Base",
    "build_table",
    "write_full",
    "fold",
    "memory_budget",
    "plan_buckets",
]

KEY_COLUMN, OP_COLUMN = KEY, OP  # materialise.py names the metadata columns

BUCKET_COLUMN = "__bucket"  # only in spill files


def key_columns_of(frame: pl.DataFrame) -> list[str]:
    keys = frame.filter(pl.col(KEY_COLUMN).is_not_null()).select(KEY_COLUMN).head(1)
    if keys.height == 0:
        return []
    return sorted(json.loads(keys.item()).keys())


FOLD_EVENTS = 2_000_000  # events materialised at once; bounds peak memory
# A full build's memory (measured, BENCHMARKS.md): one bucket peaks at about 4x the
# in-memory size of its events and base rows; spilling and folding add about 1 GiB.
PEAK_PER_INPUT_BYTE = 4
BUILD_FLOOR_BYTES = 1 << 30
DEFAULT_MEMORY_MB = 4096
COMPACT_FRACTION = 0.1  # a delta past this fraction of the data files is folded back in
_BUCKET_SEED = 0x7D1E


def fold(frames: list[pl.LazyFrame], base: pl.LazyFrame | None,
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
class Base:
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


def write_full(con: duckdb.DuckDBPyConnection, table: str, topic: str, tmp: Path,
                frames: list[pl.LazyFrame], base: Base | None, memory_bytes: int
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
            key_columns = key_columns_of(state)

    if buckets == 1:
        write(fold(frames, pl.concat(base_pieces) if base_pieces else None,
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
                write(fold(events, own_base, mine, surveys, FOLD_EVENTS * buckets, keys),
                      number)
        finally:
            shutil.rmtree(spill, ignore_errors=True)
    return _table_manifest(con, table, topic, tmp, key_columns, files)


def write_layered(con: duckdb.DuckDBPyConnection, table: str, topic: str, tmp: Path,
                   frames: list[pl.LazyFrame], base: Base) -> TableManifest | None:
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


def build_table(con: duckdb.DuckDBPyConnection, settings: Settings, archive: Archive,
                 cut: Cut, table: str, tmp: Path, base: Base | None) -> TableManifest:
    topic = topic_of(settings, table)
    parts = [p for p in cut.partitions if p.topic == topic]
    if len(parts) > 1:
        # Which of two partitions' events is later is defined only by a full build's sort
        # (partition, offset); building on a base would let the newer events win instead.
        base = None
    base_ends = base.manifest.cut.ends() if base else {}
    frames: list[pl.LazyFrame] = []
    for p in parts:
        gen = generation_of(archive, p)
        start = base_ends.get((p.topic, p.partition), p.start)
        frames.extend(scan_range(archive, p.topic, p.partition, gen.number, start, p.end))
    if base is not None:
        layered = write_layered(con, table, topic, tmp, frames, base)
        if layered is not None:
            return layered
        shutil.rmtree(tmp / table, ignore_errors=True)  # a partial layered attempt
    return write_full(con, table, topic, tmp, frames, base, memory_budget(settings))
