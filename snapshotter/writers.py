"""Which writer builds one table of a snapshot: layered on a base where that layout can
express the change (snapshotter/layered_build.py), else full (snapshotter/full_build.py).
Both write under the caller's build directory only; publishing is the store's job
(snapshotter/store.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path

import duckdb
import polars as pl

from snapshotter.archive import Archive
from snapshotter.cut import Cut
from snapshotter.full_build import BUILD_FLOOR_BYTES, memory_budget, write_full
from snapshotter.layered_build import write_layered
from snapshotter.manifest import TableManifest
from snapshotter.planning import generation_of, scan_range, topic_of
from snapshotter.table_files import Base
from tidelog.settings import Settings

__all__ = ["MAX_WORKERS", "build_each", "build_table", "build_workers"]


# Tables built at once. Most of a table's build is polars and DuckDB, which release the
# GIL, but much of a small table's is latency: opening files, planning small queries,
# fsync. Two at once took about a fifth off both an incremental and a full TPC-H
# snapshot on 2 cores (BENCHMARKS.md "Tables built at once").
MAX_WORKERS = 4


def build_workers(settings: Settings, tables: int) -> tuple[int, int]:
    """(tables built at once, bytes of the memory budget each of them may use).

    The budget (`TIDELOG_SNAPSHOT_MEMORY_MB`) is the whole snapshot's: it is shared out,
    and fewer tables run at once where a share would fall below what one build needs
    (BUILD_FLOOR_BYTES for folding a group of FOLD_EVENTS events, which also bounds a
    layered build, plus 512 MiB for its buckets)."""
    budget = memory_budget(settings)
    workers = max(1, min(tables, os.cpu_count() or 1, MAX_WORKERS))
    while workers > 1 and budget // workers < BUILD_FLOOR_BYTES + (512 << 20):
        workers -= 1
    return workers, budget // workers


def build_each(build: Callable[[str], TableManifest], tables: Sequence[str],
               workers: int) -> dict[str, TableManifest]:
    """`build(table)` for every table, `workers` at a time. At the first failure no
    further table starts; once the running ones have stopped, the failure of the first
    failed table (in table order) is raised. Ctrl-C is taken within a second."""
    if workers <= 1:
        return {table: build(table) for table in tables}
    with ThreadPoolExecutor(workers, thread_name_prefix="tidelog-build") as pool:
        futures: dict[str, Future[TableManifest]] = {t: pool.submit(build, t) for t in tables}
        try:
            pending = set(futures.values())
            while pending:
                # a timeout, so that the main thread gets to handle signals
                done, pending = wait(pending, timeout=1.0, return_when=FIRST_EXCEPTION)
                if any(f.exception() is not None for f in done):
                    break
        except BaseException:
            for future in futures.values():
                future.cancel()
            raise
        for future in futures.values():
            future.cancel()  # after a failure: those not started yet never start
    for future in futures.values():
        if not future.cancelled() and (error := future.exception()) is not None:
            raise error
    return {table: future.result() for table, future in futures.items()}


def build_table(con: duckdb.DuckDBPyConnection, settings: Settings, archive: Archive,
                cut: Cut, table: str, tmp: Path, base: Base | None, *,
                row_hashes: bool = True, memory_bytes: int | None = None) -> TableManifest:
    """One table of a snapshot under `tmp`; `row_hashes`: a full build may sum the
    archived row hashes (False hashes every row's content, as verify and rebuild do);
    `memory_bytes`: this table's share of the memory budget (default: all of it)."""
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
    memory = memory_bytes if memory_bytes is not None else memory_budget(settings)
    return write_full(con, table, topic, tmp, frames, base, memory, row_hashes=row_hashes)
