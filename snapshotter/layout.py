"""How one table of a snapshot lies on disk, and how to read it back.

A table is the rows of its data `files`, minus the rows whose `__key` is listed in its
`delete_files`, plus the rows of its `delta_files` (all Parquet, all with the hidden
`__key` column). A full build writes only data files, sorted by key. An incremental
build hard-links its base's data files and writes the keys changed since then as a
delete file and their current rows as a delta file: Iceberg's equality deletes, in
small. Rows with a null `__key` (tables without a primary key) are never deleted.

Readers get one canonical row order whatever the layout: the order of a full build
(key columns, then `__key`; keyless rows first, in event order). Topics with more than
one partition are always built in full (snapshots.py), since the order of events across
partitions is only defined by a full build's sort.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import polars as pl

from cdc.columns import KEY, SALT
from snapshotter.manifest import TableManifest
from tidelog.sql import ident as quote
from tidelog.sql import literal as sql_text

__all__ = ["KEY", "scan_visible", "base_pieces_of", "read_table", "visible_sql", "quote",
           "sql_text", "sql_paths", "file_sha256", "file_stat", "changed_files", "fsync"]


def _paths(directory: Path, names: tuple[str, ...]) -> list[str]:
    return [str(directory / name) for name in names]


def scan_visible(directory: Path, table: TableManifest) -> pl.LazyFrame:
    """The table's rows with their `__key`, in no particular order."""
    rows = pl.scan_parquet(_paths(directory, table.files))
    if table.delete_files:
        deleted = pl.scan_parquet(_paths(directory, table.delete_files)).select(KEY)
        rows = rows.join(deleted, on=KEY, how="anti",  # a null key never matches
                         maintain_order="left")
    if table.delta_files:
        rows = pl.concat([rows, pl.scan_parquet(_paths(directory, table.delta_files))],
                         how="vertical")
    return rows


def base_pieces_of(directory: Path, table: TableManifest) -> list[pl.LazyFrame]:
    """The table's rows with `__key` as a list of pieces (one per file, deletes applied),
    in file order: a caller can process a large table a piece at a time."""
    deleted = (pl.scan_parquet(_paths(directory, table.delete_files)).select(KEY)
               if table.delete_files else None)
    pieces = []
    for path in _paths(directory, table.files):
        rows = pl.scan_parquet(path)
        pieces.append(rows.join(deleted, on=KEY, how="anti", maintain_order="left")
                      if deleted is not None else rows)
    pieces.extend(pl.scan_parquet(path) for path in _paths(directory, table.delta_files))
    return pieces


def read_table(directory: Path, table: TableManifest) -> pl.DataFrame:
    """The table's rows without `__key` and `__salt`, in the canonical order."""
    if not table.layered and len(table.files) == 1:
        frame = pl.read_parquet(str(directory / table.files[0]))  # a full build is sorted
    else:
        frame = scan_visible(directory, table).collect()
        keys = [k for k in table.key_columns if k in frame.columns]
        frame = frame.sort([*keys, KEY], maintain_order=True)
    return frame.drop(KEY, SALT, strict=False)


def sql_paths(paths: list[str]) -> str:
    """A DuckDB list literal of paths, for read_parquet."""
    return "[" + ", ".join(sql_text(p) for p in paths) + "]"


def visible_sql(directory: Path, table: TableManifest, *, with_key: bool = False,
                with_salt: bool = False, locate: Callable[[str], str] | None = None) -> str:
    """A DuckDB relation (parenthesised query) of the table's rows, columns in manifest
    order, then `__key` if `with_key`, then `__salt` if `with_salt` and the table keeps
    salts (what its digest needs). `locate` maps a file name of the manifest to the
    path or URL DuckDB reads (default: under `directory`)."""
    where = locate or (lambda name: str(directory / name))
    names = ([c for c, _ in table.columns] + ([KEY] if with_key else [])
             + ([SALT] if with_salt and table.salted else []))
    columns = ", ".join(f"r.{quote(c)}" for c in names)
    files = [where(n) for n in table.files]
    query = f"select {columns} from read_parquet({sql_paths(files)}) r"
    if table.delete_files:
        deletes = [where(n) for n in table.delete_files]
        query += f" anti join read_parquet({sql_paths(deletes)}) d on r.{KEY} = d.{KEY}"
    if table.delta_files:
        deltas = [where(n) for n in table.delta_files]
        query += f" union all select {columns} from read_parquet({sql_paths(deltas)}) r"
    return f"({query})"


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, as recorded per file in the manifest."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def file_stat(path: Path) -> tuple[int, int]:
    """(size, mtime_ns): what the manifest records per file as its verified mark."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def changed_files(directory: Path, table: TableManifest) -> list[str]:
    """Files of a table that are missing or fail the sha256 its manifest recorded.

    A file that still stats as recorded (`file_stats`) is taken as unchanged without
    rehashing, as git's index does; any other is rehashed. Manifests without checksums
    (format 1) have nothing to compare here: the caller recomputes their digest.
    """
    changed = []
    for name in table.all_files:
        path = directory / name
        if not path.is_file():
            changed.append(name)
        elif (table.file_stats.get(name) != file_stat(path)
              and file_sha256(path) != table.checksums.get(name)):
            changed.append(name)
    return changed


def fsync(path: Path) -> None:
    """Flush a file's or a directory's contents to disk (directories: their entries)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
