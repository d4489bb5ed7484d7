"""Row hashes computed once, when an event is archived, and summed by full builds.

A table's content digest is the sum of its rows' hashes (docs/digest.md). Hashing every
row at every full build was half of its time (TPC-H, BENCHMARKS.md), so the archiver
hashes each table event's row text (salt included) once, into `__row_hash`, with the
same SQL the digest uses. A full build then sums the stored hashes of the rows that
survive, provided that each of them is exactly its event's row: same columns, same
types, no TOAST fill, not a base row. Anything else has a null hash, and the table is
hashed from its files as before.

What this trusts, and what checks it:

* the stored hashes are the archive's, under its segments' checksums, which a build
  verifies before reading them;
* a full build re-hashes a sample of each file it writes (the first rows, and for
  every column the first rows where it is not null) and compares; a mismatch (a type
  whose text the file renders otherwise) falls back to hashing the whole file;
* `snapshot verify` and `rebuild` never use stored hashes: they hash the content.
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from cdc.columns import ROW_HASH, ROW_HASH_TYPE, SALT
from snapshotter import engine
from snapshotter.digest import ContentSum, in_utc, row_hash_sql
from tidelog.sql import literal

__all__ = ["with_row_hashes", "stored_sum", "drop_row_hashes", "SAMPLE_HEAD",
           "SAMPLE_PER_COLUMN"]

log = logging.getLogger(__name__)

SAMPLE_HEAD = 256  # a file's first rows re-hashed by a build that sums stored hashes
SAMPLE_PER_COLUMN = 4  # and, per column, its first rows with a value


def _data_columns(con: duckdb.DuckDBPyConnection, relation: str) -> list[tuple[str, str]]:
    described = con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    return [(str(n), str(t)) for n, t, *_ in described if not str(n).startswith("__")]


def with_row_hashes(table: pa.Table) -> pa.Table:
    """`table` (a segment's events, salts drawn) with each row's hash as `__row_hash`.

    Where DuckDB cannot hash the columns, every hash is null: builds of those rows then
    hash their files, exactly as before row hashes existed.
    """
    if ROW_HASH in table.column_names:
        raise ValueError(f"{ROW_HASH} is already set: rows are hashed once, when archived")
    hashes: pa.Array
    try:
        hashes = _hashes(table)
    except duckdb.Error as exc:
        log.warning("row hashes not stored for %d events (%s); full builds will hash "
                    "these rows from the snapshot's files", table.num_rows, exc)
        hashes = pa.nulls(table.num_rows, ROW_HASH_TYPE)
    return table.append_column(pa.field(ROW_HASH, ROW_HASH_TYPE), hashes)


def _hashes(table: pa.Table) -> pa.Array:
    con = engine.connection()
    try:
        con.register("segment_events", table)
        columns = _data_columns(con, "segment_events")
        salted = SALT in table.column_names
        if not columns:  # only deletes and tombstones: nothing a state row can carry
            return pa.nulls(table.num_rows, ROW_HASH_TYPE)
        result = con.execute(row_hash_sql("segment_events", columns, salted=salted)).arrow()
    finally:
        con.close()
    if isinstance(result, pa.RecordBatchReader):
        result = result.read_all()
    hi = result.column("hi").combine_chunks()
    lo = result.column("lo").combine_chunks()
    if len(hi) != table.num_rows:
        raise duckdb.InvalidInputException("row hash count differs from the event count")
    return pa.StructArray.from_arrays([hi, lo], fields=list(ROW_HASH_TYPE))


def stored_sum(con: duckdb.DuckDBPyConnection, path: Path, hashes: pl.Series,
               state: pl.DataFrame) -> ContentSum | None:
    """The content sum of the file at `path`, written from `state`, from the stored
    `hashes` of its rows (in order); None when a row has none or the sample disagrees."""
    if hashes.null_count():
        return None
    fields = hashes.struct.unnest()
    hi = fields.get_column("hi").to_numpy()
    lo = fields.get_column("lo").to_numpy()
    # numpy sums uint64 modulo 2**64, which is how the digest's halves add.
    total = ContentSum(len(hashes), int(np.sum(hi, dtype=np.uint64)),
                       int(np.sum(lo, dtype=np.uint64)))
    rows = _sample_rows(state)
    if not rows:
        return total
    # LIMIT: the scan stops after the last sampled row instead of reading the file.
    relation = (f"(SELECT * FROM (SELECT * FROM read_parquet({literal(str(path))}, "
                f"file_row_number = true) LIMIT {rows[-1] + 1}) "
                f"WHERE file_row_number IN ({', '.join(map(str, rows))}))")
    try:
        columns = [(n, t) for n, t in _data_columns(con, relation) if n != "file_row_number"]
        salted = SALT in state.columns
        with in_utc(con):
            found = sorted(con.execute(row_hash_sql(relation, columns,
                                                    salted=salted)).fetchall())
    except duckdb.Error as exc:  # e.g. a source column named file_row_number
        log.warning("could not sample the row hashes of %s (%s); hashing the whole file",
                    path.name, exc)
        return None
    expected = sorted((int(hi[r]), int(lo[r])) for r in rows)
    if found != expected:
        log.warning("stored row hashes of %s disagree with its content on a sample; "
                    "hashing the whole file instead", path.name)
        return None
    return total


def _sample_rows(state: pl.DataFrame) -> list[int]:
    rows = set(range(min(SAMPLE_HEAD, state.height)))
    for name in state.columns:
        if name.startswith("__"):
            continue
        present = state.get_column(name).is_not_null().arg_true().head(SAMPLE_PER_COLUMN)
        rows.update(int(r) for r in present)
    return sorted(rows)


def drop_row_hashes(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.Series | None]:
    """`frame` without `__row_hash`, and the column (None where the frame has none)."""
    if ROW_HASH not in frame.columns:
        return frame, None
    return frame.drop(ROW_HASH), frame.get_column(ROW_HASH)

