"""Which writer builds one table of a snapshot: layered on a base where that layout can
express the change (snapshotter/layered_build.py), else full (snapshotter/full_build.py).
Both write under the caller's build directory only; publishing is the store's job
(snapshotter/store.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import polars as pl

from snapshotter.archive import Archive
from snapshotter.cut import Cut
from snapshotter.full_build import memory_budget, write_full
from snapshotter.layered_build import write_layered
from snapshotter.manifest import TableManifest
from snapshotter.planning import generation_of, scan_range, topic_of
from snapshotter.table_files import Base
from tidelog.settings import Settings

__all__ = ["build_table"]


def build_table(con: duckdb.DuckDBPyConnection, settings: Settings, archive: Archive,
                cut: Cut, table: str, tmp: Path, base: Base | None, *,
                row_hashes: bool = True) -> TableManifest:
    """One table of a snapshot under `tmp`; `row_hashes`: a full build may sum the
    archived row hashes (False hashes every row's content, as verify and rebuild do)."""
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
    return write_full(con, table, topic, tmp, frames, base, memory_budget(settings),
                      row_hashes=row_hashes)
