"""The layered writer: an earlier snapshot's data files shared, plus the keys its events
replaced (deletes) and their new rows (delta), with the digest derived, not recomputed."""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from pathlib import Path

import duckdb
import polars as pl

from cdc.columns import SALT, TRUNCATE_OP
from snapshotter import full_build
from snapshotter.digest import (
    ContentSum,
    content_sums,
    digest_from_parts,
)
from snapshotter.layout import (
    file_stat,
    sql_text,
)
from snapshotter.manifest import TableManifest
from snapshotter.materialise import has_salt, materialise, survey, unavailable_columns
from snapshotter.table_files import (
    KEY_COLUMN,
    Base,
    data_schema,
    file_rows,
    link,
    table_manifest,
)

__all__ = ["COMPACT_FRACTION", "write_layered"]


COMPACT_FRACTION = 0.1  # a delta past this fraction of the data files is folded back in


def write_layered(con: duckdb.DuckDBPyConnection, table: str, topic: str, tmp: Path,
                   frames: list[pl.LazyFrame], base: Base) -> TableManifest | None:
    """Base data files (shared) + accumulated deletes and delta; None where that layout
    cannot express the change (truncate, schema change, older base, delta grown large).

    The digest is derived, not recomputed: base content - rows replaced + rows written.
    """
    prev = base.manifest.tables[table]
    if not (prev.content_digest and prev.schema_digest and prev.checksums) or prev.erased:
        return None  # an erased base's recorded sums include rows it no longer has
    # One metadata pre-pass gives the event count, the column sets and the operations,
    # and is handed on to `materialise`, which would otherwise make it again.
    surveyed = survey(frames)
    event_count = sum(s.rows for s in surveyed)
    if event_count > full_build.FOLD_EVENTS:
        return None  # a change this large is folded in bounded groups by a full build
    src = base.directory
    if event_count == 0:
        # Nothing happened to the table since the base: the same files, the same digest
        # (of 8 TPC-H tables a refresh round touches 4; this was half an incremental build).
        for name in prev.all_files:
            link(src / name, tmp / name)
        return dataclasses.replace(prev, file_stats={n: file_stat(tmp / n)
                                                     for n in prev.all_files})
    file_schema = data_schema(pl.scan_parquet(str(src / prev.files[0])).collect_schema())
    if any(data_schema(s.schema) != file_schema for s in surveyed):
        return None  # a column added, dropped or retyped: rewrite the table
    if any(has_salt(s.schema) != prev.salted for s in surveyed):
        return None  # salted events on an unsalted base: a full build salts every row
    if any(TRUNCATE_OP in s.ops for s in surveyed):
        return None
    if frames:
        events = pl.concat([f.select(KEY_COLUMN) for f in frames]).collect()
    else:
        events = pl.DataFrame(schema={KEY_COLUMN: pl.String})
    changed = events.drop_nulls().unique()
    old_deletes = (pl.read_parquet([str(src / f) for f in prev.delete_files])
                   if prev.delete_files else changed.clear())
    deletes = pl.concat([old_deletes, changed]).unique().sort(KEY_COLUMN)
    old_delta = (pl.read_parquet([str(src / f) for f in prev.delta_files])
                 if prev.delta_files else None)
    carried = [(KEY_COLUMN, pl.String()), *([(SALT, pl.Binary())] if prev.salted else [])]
    changes = (materialise(frames, keep_key=True, surveyed=surveyed) if frames
               else pl.DataFrame(schema=[*file_schema, *carried]))
    if unavailable_columns(changes):
        return None  # an unchanged TOAST value whose real value is in the base state
    if old_delta is not None:
        delta = pl.concat([old_delta.join(changed, on=KEY_COLUMN, how="anti",
                                          maintain_order="left"), changes])
    else:
        delta = changes
    data_paths = [src / f for f in prev.files]
    if deletes.height + delta.height > COMPACT_FRACTION * file_rows(data_paths):
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
        link(src / name, tmp / name)
    delete_name, delta_name = f"{table}/deletes.parquet", f"{table}/delta.parquet"
    deletes.write_parquet(tmp / delete_name, compression="zstd", statistics=True)
    delta.write_parquet(tmp / delta_name, compression="zstd", statistics=True)
    # Both sides hashed in one scan of one file, through Parquet exactly as a full
    # build's files are read for its digest.
    side = "__side"
    both = _replaced_and_changed(removed, changes, side)
    if both is None:
        return None  # the base's rows and the events' differ in their columns' types
    scratch = tmp / f".scratch-{uuid.uuid4().hex[:8]}"
    scratch.mkdir()
    try:
        path = scratch / "changed.parquet"
        both.write_parquet(path)
        relation = f"read_parquet({sql_text(str(path))})"
        described = con.execute(f"describe select * from {relation}").fetchall()
        if [(str(r[0]), str(r[1])) for r in described
                if r[0] not in (KEY_COLUMN, SALT, side)] != list(prev.columns):
            return None
        sums = content_sums(con, relation, prev.columns, side, salted=prev.salted)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    nothing = ContentSum(0, 0, 0)
    content = (ContentSum.parse(prev.content_digest, prev.rows)
               - sums.get(0, nothing) + sums.get(1, nothing))
    digest = digest_from_parts(prev.schema_digest, content)
    return table_manifest(con, table, topic, tmp, prev.key_columns, prev.files,
                           delete_files=(delete_name,), delta_files=(delta_name,),
                           digest=digest, columns=prev.columns,
                           checksums={f: prev.checksums[f] for f in prev.files},
                           salted=prev.salted)


def _replaced_and_changed(removed: pl.DataFrame, changes: pl.DataFrame,
                          side: str) -> pl.DataFrame | None:
    """The base rows a change replaces (`side` 0) and the changed rows (`side` 1) in one
    frame; None where their columns differ (name or type)."""
    if set(removed.columns) != set(changes.columns):
        return None
    changes = changes.select(removed.columns)
    if changes.schema != removed.schema:
        return None
    return pl.concat([removed.with_columns(pl.lit(0, pl.Int8).alias(side)),
                      changes.with_columns(pl.lit(1, pl.Int8).alias(side))])
