"""What every snapshot writer shares: the table's files under a build directory and the
manifest entry that records them (files, sha256, stats, the content digest)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow.parquet as pq

from cdc.columns import KEY, OP, SALT
from snapshotter.digest import (
    ContentSum,
    TableDigest,
    digest_from_parts,
    schema_digest,
    table_digest,
)
from snapshotter.layout import (
    file_sha256,
    file_stat,
    sql_paths,
    visible_sql,
)
from snapshotter.manifest import Manifest, TableManifest
from tidelog.errors import SnapshotError

__all__ = [
    "KEY_COLUMN",
    "key_columns_of",
    "Base",
    "data_schema",
    "file_rows",
    "link",
    "table_manifest",
    "OP_COLUMN",
]


KEY_COLUMN, OP_COLUMN = KEY, OP  # materialise.py names the metadata columns


def key_columns_of(frame: pl.DataFrame) -> list[str]:
    keys = frame.filter(pl.col(KEY_COLUMN).is_not_null()).select(KEY_COLUMN).head(1)
    if keys.height == 0:
        return []
    return sorted(json.loads(keys.item()).keys())


@dataclass(frozen=True)
class Base:
    """The earlier snapshot an incremental build starts from."""

    manifest: Manifest
    directory: Path


def data_schema(schema: Any) -> list[tuple[str, pl.DataType]]:
    return [(n, t) for n, t in schema.items() if not n.startswith("__")]


def file_rows(paths: Sequence[Path]) -> int:
    return sum(pq.read_metadata(str(p)).num_rows for p in paths)


def link(source: Path, target: Path) -> None:
    """Share an unchanged file with the base snapshot (a copy where links cannot be made)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)  # keeps the modification time the manifest recorded


def table_manifest(con: duckdb.DuckDBPyConnection, table: str, topic: str, tmp: Path,
                    key_columns: Sequence[str], files: Sequence[str], *,
                    delete_files: Sequence[str] = (), delta_files: Sequence[str] = (),
                    digest: TableDigest | None = None,
                    columns: Sequence[tuple[str, str]] | None = None,
                    checksums: dict[str, str] | None = None,
                    salted: bool | None = None,
                    content: ContentSum | None = None) -> TableManifest:
    """The manifest entry for files written under `tmp`; the digest is computed from the
    files unless the caller derived it (`digest`) or its content sum (`content`, from
    the rows' archived hashes). `columns` and `salted` (whether the files keep
    `__salt`) are read from the files unless given."""
    if columns is None or salted is None:
        relation = f"read_parquet({sql_paths([str(tmp / f) for f in files])})"
        described = con.execute(f"describe select * from {relation}").fetchall()
        if salted is None:
            salted = any((str(r[0]), str(r[1])) == (SALT, "BLOB") for r in described)
        if columns is None:
            columns = [(str(r[0]), str(r[1])) for r in described
                       if r[0] not in (KEY_COLUMN, SALT)]
    if not columns:
        raise SnapshotError(
            f"table {table} has no change events below the cut, so nothing is known of its "
            "columns; choose a later cut, or check that the connector captures it "
            "(Debezium writes nothing for a table that has never had a row)", table=table)
    draft = TableManifest(name=table, topic=topic, rows=0, columns=tuple(columns),
                          key_columns=tuple(key_columns), digest="", files=tuple(files),
                          delete_files=tuple(delete_files), delta_files=tuple(delta_files),
                          salted=salted)
    if digest is None and content is not None:
        digest = digest_from_parts(schema_digest(columns), content)
    if digest is None:
        digest = table_digest(con, visible_sql(tmp, draft, with_salt=True))
    sums = dict(checksums or {})
    for name in draft.all_files:
        if name not in sums:
            sums[name] = file_sha256(tmp / name)
    return dataclasses.replace(draft, rows=digest.rows, digest=digest.digest,
                               content_digest=digest.content_digest,
                               schema_digest=digest.schema_digest, checksums=sums,
                               file_stats={n: file_stat(tmp / n) for n in draft.all_files})
