"""The full writer: a table's whole state from its events (and a base state), in key-hash
buckets small enough for the memory budget, folded in bounded groups of events."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import duckdb
import polars as pl

from snapshotter.digest import ContentSum
from snapshotter.layout import (
    base_pieces_of,
)
from snapshotter.manifest import TableManifest
from snapshotter.materialise import Surveyed, materialise, survey
from snapshotter.row_hashes import drop_row_hashes, stored_sum
from snapshotter.table_files import KEY_COLUMN, Base, key_columns_of, table_manifest
from tidelog.errors import ConfigError
from tidelog.settings import Settings

__all__ = [
    "BUCKET_COLUMN",
    "FOLD_EVENTS",
    "PEAK_PER_INPUT_BYTE",
    "BUILD_FLOOR_BYTES",
    "DEFAULT_MEMORY_MB",
    "fold",
    "memory_budget",
    "plan_buckets",
    "write_full",
]


BUCKET_COLUMN = "__bucket"  # only in spill files


FOLD_EVENTS = 2_000_000  # events materialised at once; bounds peak memory


# A full build's memory (measured, BENCHMARKS.md): one bucket peaks at about 4x the
# in-memory size of its events and base rows; spilling and folding add about 1 GiB.
PEAK_PER_INPUT_BYTE = 4


BUILD_FLOOR_BYTES = 1 << 30


DEFAULT_MEMORY_MB = 4096


_BUCKET_SEED = 0x7D1E


def fold(frames: list[pl.LazyFrame], base: pl.LazyFrame | None,
          where: pl.Expr | None = None,
          surveys: dict[int, list[Surveyed]] | None = None,
          group_events: int | None = None,
          key_columns: Sequence[str] | None = None,
          row_hashes: bool = False,
          sizes: Sequence[int] | None = None) -> pl.DataFrame:
    """Materialise groups of segments of about FOLD_EVENTS events, each on the state so far.

    Peak memory is then about the table state plus one group, instead of growing with
    the whole change history; the result is the same (the incremental rule). `where`
    restricts the events to some keys (the base must already be restricted to them);
    `surveys` keeps each group's metadata pre-pass for the next call on the same frames.
    `group_events`: events per group before `where` (default FOLD_EVENTS).
    `key_columns`: as for `materialise` (None: read them from the events).
    `row_hashes`: carry the archived row hashes (snapshotter/row_hashes.py).
    `sizes`: the frames' event counts, where the caller has them.
    """
    limit = group_events or FOLD_EVENTS
    if sizes is None:
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
                            surveyed=surveyed, row_hashes=row_hashes)
    assert isinstance(state, pl.DataFrame)
    return state


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
                frames: list[pl.LazyFrame], base: Base | None, memory_bytes: int, *,
                row_hashes: bool = False) -> TableManifest:
    """The whole table state, in key-hash buckets small enough to fit in memory.

    With several buckets the events (and a base state) are first spilled once, sorted by
    bucket; then each bucket is folded from its own events and written before the next
    one starts, so peak memory follows the bucket size, not the table's.
    `row_hashes`: sum the archived row hashes where every row has one (and a sample of
    each file agrees) instead of hashing the files (snapshotter/row_hashes.py).
    """
    prev = base.manifest.tables[table] if base is not None else None
    base_pieces: list[pl.LazyFrame] = []
    if base is not None and prev is not None:
        base_pieces = base_pieces_of(base.directory, prev)
    sizes = [int(f.select(pl.len()).collect().item()) for f in frames]
    event_count = sum(sizes)
    input_bytes = event_count * _bytes_per_row(frames)
    if prev is not None:
        input_bytes += prev.rows * _bytes_per_row(base_pieces)
    buckets = plan_buckets(int(input_bytes), memory_bytes)
    # With no events the key columns cannot be read from them: the base knows them.
    keys = list(prev.key_columns) if prev is not None and event_count == 0 else None
    (tmp / table).mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    key_columns: list[str] = []
    sums: list[ContentSum | None] = []

    def write(state: pl.DataFrame, number: int) -> None:
        nonlocal key_columns
        state, hashes = drop_row_hashes(state)
        name = f"{table}/data-{number:05d}.parquet"
        # zstd level 1: files as small as the default level 3 gave on TPC-H, ~20% faster
        state.write_parquet(tmp / name, compression="zstd", compression_level=1,
                            statistics=True)
        files.append(name)
        if not key_columns and KEY_COLUMN in state.columns:
            key_columns = key_columns_of(state)
        sums.append(stored_sum(con, tmp / name, hashes, state) if hashes is not None else None)

    if buckets == 1:
        write(fold(frames, pl.concat(base_pieces) if base_pieces else None,
                    key_columns=keys, row_hashes=row_hashes, sizes=sizes), 0)
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
                write(fold(events, own_base, mine, surveys, FOLD_EVENTS * buckets, keys,
                           row_hashes), number)
        finally:
            shutil.rmtree(spill, ignore_errors=True)
    content = None
    if sums and all(part is not None for part in sums):
        content = sum((p for p in sums if p is not None), ContentSum(0, 0, 0))
    return table_manifest(con, table, topic, tmp, key_columns, files, content=content)
