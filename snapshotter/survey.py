"""The metadata pre-pass of materialisation (snapshotter/materialise.py): one cheap read
of every segment's metadata columns (ops, positions, a sample key), in parallel, from
which the plan is decided before any data column is read."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import polars as pl
import pyarrow as pa

from cdc.columns import DELETE_OPS, KEY, OFFSET, OP, PARTITION, TRUNCATE_OP, UPSERT_OPS
from tidelog.errors import ArchiveError, SnapshotError

__all__ = ["META_COLUMNS", "KNOWN_OPS", "Frame", "Events", "Segment", "Surveyed", "as_lazy",
           "as_frames", "not_in_base", "survey", "survey_frames", "infer_key_columns"]

META_COLUMNS = (PARTITION, OFFSET, OP, KEY)
KNOWN_OPS = frozenset((*UPSERT_OPS, *DELETE_OPS, TRUNCATE_OP))

Frame: TypeAlias = pl.LazyFrame | pl.DataFrame | pa.Table
Events: TypeAlias = Frame | Sequence[Frame]


@dataclass(frozen=True)
class Segment:
    """One input segment and what the pre-pass learned about it."""

    frame: pl.LazyFrame
    schema: dict[str, pl.DataType]
    rows: int
    ops: frozenset[str]
    partitions: frozenset[int]
    first: tuple[int, int]
    last: tuple[int, int]
    in_order: bool
    truncate_at: int | None
    sample_key: str | None
    keyed_rows: int
    keyless_upserts: int


def as_lazy(frame: Frame) -> pl.LazyFrame:
    if isinstance(frame, pl.LazyFrame):
        return frame
    if isinstance(frame, pl.DataFrame):
        return frame.lazy()
    if isinstance(frame, pa.Table):
        converted = pl.from_arrow(frame)
        assert isinstance(converted, pl.DataFrame)
        return converted.lazy()
    raise TypeError(f"expected a polars LazyFrame/DataFrame or pyarrow Table, got {type(frame)}")


def as_frames(events: Events) -> list[pl.LazyFrame]:
    if isinstance(events, pl.LazyFrame | pl.DataFrame | pa.Table):
        return [as_lazy(events)]
    return [as_lazy(f) for f in events]


def not_in_base(base_position: Mapping[int, int] | None) -> pl.Expr:
    """True for events the base does not already contain."""
    if not base_position:
        return pl.lit(True)
    parts = list(base_position)
    ends = [base_position[p] for p in parts]
    start = pl.col(PARTITION).replace_strict(parts, ends, default=0, return_dtype=pl.Int64)
    return pl.col(OFFSET) >= start


Surveyed: TypeAlias = Segment


def survey(events: Events, base_position: Mapping[int, int] | None = None
           ) -> list[Segment]:
    """The metadata pre-pass of `plan_materialise`, to reuse across several plans."""
    return survey_frames(as_frames(events), not_in_base(base_position))


def survey_frames(frames: list[pl.LazyFrame], keep: pl.Expr) -> list[Segment]:
    """The pre-pass: reads only the metadata columns of every segment, in parallel."""
    try:
        return _survey_unchecked(frames, keep)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ArchiveError(
            f"could not read the event segments: {exc}; check that the archive files "
            "exist and are readable Parquet",
        ) from exc


def _survey_unchecked(frames: list[pl.LazyFrame], keep: pl.Expr) -> list[Segment]:
    schemas = []
    for i, frame in enumerate(frames):
        schema = dict(frame.collect_schema())
        missing = [c for c in META_COLUMNS if c not in schema]
        if missing:
            raise SnapshotError(
                f"event segment {i} lacks metadata columns {missing}; it is not in the "
                "archive layout of docs/archive.md",
                segment=i,
                missing=missing,
            )
        schemas.append(schema)

    p, o, op = pl.col(PARTITION), pl.col(OFFSET), pl.col(OP)
    dp, do = p.diff(), o.diff()
    queries = [
        f.filter(keep).select(
            rows=pl.len(),
            ops=op.unique().implode(),
            partitions=p.unique().implode(),
            p_first=p.min(),
            o_first=o.filter(p == p.min()).min(),
            p_last=p.max(),
            o_last=o.filter(p == p.max()).max(),
            in_order=((dp > 0) | ((dp == 0) & (do > 0))).fill_null(True).all(),
            truncate_at=o.filter(op == TRUNCATE_OP).max(),
            sample_key=pl.col(KEY).drop_nulls().first(),
            keyed_rows=pl.col(KEY).is_not_null().sum(),
            keyless_upserts=(pl.col(KEY).is_null() & op.is_in(UPSERT_OPS)).sum(),
        )
        for f in frames
    ]
    segments = []
    for frame, schema, stats in zip(frames, schemas, pl.collect_all(queries), strict=True):
        row = stats.row(0, named=True)
        ops = frozenset(row["ops"])
        unknown = ops - KNOWN_OPS
        if unknown:
            raise SnapshotError(
                f"unknown change operations {sorted(map(str, unknown))} in the events; "
                f"expected a subset of {sorted(KNOWN_OPS)}",
                ops=sorted(map(str, unknown)),
            )
        empty = row["rows"] == 0
        segments.append(
            Segment(
                frame=frame,
                schema=schema,
                rows=row["rows"],
                ops=ops,
                partitions=frozenset(row["partitions"]),
                first=(-1, -1) if empty else (row["p_first"], row["o_first"]),
                last=(-1, -1) if empty else (row["p_last"], row["o_last"]),
                in_order=bool(row["in_order"]),
                truncate_at=row["truncate_at"],
                sample_key=row["sample_key"],
                keyed_rows=row["keyed_rows"],
                keyless_upserts=row["keyless_upserts"],
            )
        )
    return segments


def infer_key_columns(segments: Sequence[Segment]) -> list[str]:
    """Key column names from the first `__key` payload: `{"id":5}` names `id`."""
    for seg in segments:
        if seg.sample_key is None:
            continue
        try:
            payload = json.loads(seg.sample_key)
        except ValueError:
            return []
        return sorted(payload) if isinstance(payload, dict) else []
    return []
