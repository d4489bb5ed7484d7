"""Table state from archived change events: last write per key, vectorised in polars.

The rules (docs/archive.md, "Materialisation") in one place:

* per `__key`, in `(__partition, __offset)` order, `r`/`c`/`u` upsert the after image and
  `d`/`x` delete the key; a `t` removes everything before it;
* rows with a null `__key` (tables without a primary key) are append-only;
* Debezium's placeholder for an unchanged TOASTed text/JSON/bytea value is replaced by
  the key's latest real value (earlier events, else the base);
* the output has the column set of the segment holding the latest event; a column's
  values only survive from segments after its last absence (a dropped column stays gone);
* incremental: `base` (a previous state with its `__key`) behaves exactly like the
  events it was built from, so `materialise(rest, base=materialise(prefix))` equals
  `materialise(prefix + rest)`.

No per-row Python: one cheap pre-pass over the metadata columns (ops, positions) decides
the plan, then a single lazy query does the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, TypeAlias

import polars as pl

from cdc.columns import (
    DELETE_OPS,
    KEY,
    OFFSET,
    OP,
    PARTITION,
    ROW_HASH,
    SALT,
    UPSERT_OPS,
)
from snapshotter.survey import (
    META_COLUMNS,
    Events,
    Frame,
    Surveyed,
    as_frames,
    as_lazy,
    infer_key_columns,
    not_in_base,
    survey,
    survey_frames,
)
from snapshotter.toast import (
    MAY_BE_PLACEHOLDER,
    UNAVAILABLE,
    fill_placeholders,
    may_be_placeholder,
    unavailable_columns,
)
from tidelog.errors import SnapshotError

__all__ = [
    "KEY",
    "META_COLUMNS",
    "UPSERT_OPS",
    "DELETE_OPS",
    "Events",
    "Surveyed",
    "materialise",
    "plan_materialise",
    "survey",
    "unavailable_columns",
    "UNAVAILABLE",
    "key_expr",
    "data_columns",
]

META_DTYPES: dict[str, pl.DataType] = {
    PARTITION: pl.Int32(),
    OFFSET: pl.Int64(),
    OP: pl.String(),
    KEY: pl.String(),
}

# Key dtypes whose Debezium JSON form is exactly the JSON of the typed value; other types
# (numeric-as-string, dates as day counts, zoned timestamps, base64 bytes) are rendered
# differently by Debezium, so `key_expr` cannot reproduce the archive's `__key` for them.
_KEY_SAFE_DTYPES = (
    pl.Int8, pl.Int16, pl.Int32, pl.Int64,
    pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64,
    pl.Boolean, pl.String,
)  # fmt: skip

Engine: TypeAlias = Literal["auto", "in-memory", "streaming"]


def key_expr(key_columns: Sequence[str]) -> pl.Expr:
    """The canonical `__key` string built from typed key columns.

    Canonical JSON of the key payload: keys sorted, no spaces, strings JSON-escaped with
    non-ASCII kept as UTF-8 (what `json.dumps(..., sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)` and `orjson.dumps(..., option=OPT_SORT_KEYS)` give), e.g.
    `{"id":5}`. Exact only for integer, boolean and text keys; see `check_key_dtypes`.
    """
    if not key_columns:
        raise ValueError("key_expr needs at least one key column")
    return pl.struct(sorted(key_columns)).struct.json_encode().alias(KEY)


def check_key_dtypes(schema: Mapping[str, pl.DataType], key_columns: Sequence[str]) -> None:
    """Refuse to rebuild `__key` where `key_expr` would not match the archive's text."""
    for name in key_columns:
        if name not in schema:
            raise SnapshotError(
                f"key column {name!r} is not in the base state; pass a base that keeps its "
                "__key column or do a full build",
                column=name,
            )
        dtype = schema[name]
        if not isinstance(dtype, _KEY_SAFE_DTYPES):
            raise SnapshotError(
                f"cannot rebuild __key from key column {name!r} of type {dtype}: only "
                "integer, boolean and text keys have a canonical form that matches the "
                "archive; keep __key in the base (keep_key=True) or do a full build",
                column=name,
                dtype=str(dtype),
            )


def data_columns(names: Sequence[str]) -> list[str]:
    """Source columns: everything not prefixed `__` (tidelog's own bookkeeping)."""
    return [n for n in names if not n.startswith("__")]


_WINNER = "__last_of_key"


def _retyped(schema: Mapping[str, pl.DataType], out: Mapping[str, pl.DataType],
             cols: set[str]) -> bool:
    """Whether a column of `schema` that counts (`cols`) has another type in `out`."""
    return any(n in schema and schema[n] != t for n, t in out.items() if n in cols)


def _column_expr(name: str, dtype: pl.DataType, present: bool) -> pl.Expr:
    if not present:
        return pl.lit(None, dtype=dtype).alias(name)
    return pl.col(name).cast(dtype)


def plan_materialise(
    events: Events,
    key_columns: Sequence[str] | None = None,
    base: Frame | None = None,
    base_position: Mapping[int, int] | None = None,
    *,
    keep_key: bool = False,
    where: pl.Expr | None = None,
    surveyed: Sequence[Surveyed] | None = None,
    fill_unavailable: Sequence[str] = (),
    row_hashes: bool = False,
) -> pl.LazyFrame:
    """The lazy query giving the table state; only the metadata pre-pass runs here.

    `events`: one frame or a list of segments in the archive layout, possibly with
    different column sets. `key_columns`: the primary key, used to sort the output and
    to rebuild a base's missing `__key`; `None` reads the names from the first `__key`
    payload, `[]` means none. `base`: a previous state (data columns plus `__key`; without
    `__key` it is rebuilt with `key_expr`). `base_position`: per partition, the exclusive
    end offset the base already includes; earlier events are skipped. `keep_key` adds
    `__key` after the data columns, which is what a later incremental build needs, and
    then `__salt` (each row's event's salt) when any event or base row carries one.
    `where`: a predicate on the events choosing a subset of keys (e.g. one hash bucket;
    the caller restricts `base` to the same keys); the plan's decisions (column set,
    truncates, order) are still taken over all events, so the states of disjoint subsets
    concatenate to the whole state. `surveyed`: what `survey(events, base_position)`
    returned for these same events, to plan several subsets after one pre-pass.
    `fill_unavailable`: columns whose Debezium placeholder for an unchanged TOASTed value
    is replaced by the key's latest real value (from the events, else the base);
    `materialise` finds them. `row_hashes` (with `keep_key`) carries each row's archived
    `__row_hash` last, null where the row is not exactly its event's (snapshotter/
    row_hashes.py); with a TOAST fill there is none.
    Casting errors surface when the plan is collected; `materialise` maps them.
    """
    if base is None and base_position:
        raise ValueError("base_position only makes sense together with a base state")
    keep = not_in_base(base_position)
    segments = list(surveyed) if surveyed is not None else survey_frames(as_frames(events), keep)
    live = sorted((s for s in segments if s.rows), key=lambda s: s.last)
    keys = list(key_columns) if key_columns is not None else infer_key_columns(live)
    truncate_at = _truncate_position(live)
    base_lf = as_lazy(base) if base is not None else None
    base_schema = dict(base_lf.collect_schema()) if base_lf is not None else None
    out = _output_columns(live, base_schema, segments)
    missing_keys = [k for k in keys if k not in out]
    if missing_keys and out and key_columns is not None:  # no columns known: empty state
        raise SnapshotError(
            f"key columns {missing_keys} are not in the table's latest schema {list(out)}",
            missing=missing_keys,
        )

    alive = _alive_columns(live, out)
    # Each row keeps its event's salt (docs/digest.md) once any input carries salts.
    salted = any(has_salt(seg.schema) for seg in live) or (base_schema is not None
                                                         and has_salt(base_schema))
    hashed = (row_hashes and not fill_unavailable
              and any(has_row_hash(seg.schema) for seg in live))
    meta = [pl.col(c).cast(t) for c, t in META_DTYPES.items()]
    winners = (None if fill_unavailable else _winners(live, alive, out, keep, meta))
    parts = [_event_rows(seg, cols, out, keep, where, truncate_at, winners, meta,
                         placeholders=bool(fill_unavailable), salted=salted, hashed=hashed)
             for seg, cols in zip(live, alive, strict=True)
             if truncate_at is None or seg.last[1] > truncate_at]  # else nothing survives
    upsert = pl.col(OP).is_in(UPSERT_OPS)
    carried = [KEY, *([SALT] if salted else []), *([ROW_HASH] if hashed else [])]
    wanted = [*out, *carried]
    ev, last, keyless = _event_branches(live, parts, wanted)

    base_rows: pl.LazyFrame | None = None
    if base_lf is not None and base_schema is not None and truncate_at is None:
        base_rows = _base_rows(base_lf, base_schema, keys, out, alive, last,
                               cast_all=bool(fill_unavailable), salted=salted, hashed=hashed)
    upserts: pl.LazyFrame | None = None
    if last is not None:
        if fill_unavailable and ev is not None:
            upserts = fill_placeholders(last.filter(upsert).select(*wanted, MAY_BE_PLACEHOLDER),
                                        ev, base_rows, fill_unavailable, out).select(wanted)
        else:
            upserts = last.filter(upsert).select(wanted)
    state = _state(base_rows, last, upserts, keyless, out, salted=salted, hashed=hashed)
    # Keyed rows are totally ordered by (key columns, __key); keyless rows (null __key)
    # keep event order, which costs a stable sort, so only when there may be some. Nulls
    # sort first: `nulls_last` makes polars' multi-column sort several times slower.
    present = [k for k in keys if k in out]
    may_be_keyless = keyless is not None or base_lf is not None
    state = state.sort([*present, KEY], maintain_order=may_be_keyless)
    return state.select(wanted if keep_key else list(out))


def _truncate_position(live: Sequence[Surveyed]) -> int | None:
    """The offset of the latest truncate, if any (refused on several partitions)."""
    partitions = frozenset().union(*(s.partitions for s in live))
    truncates = [s.truncate_at for s in live if s.truncate_at is not None]
    truncate_at = max(truncates) if truncates else None
    if truncate_at is not None and len(partitions) > 1:
        raise SnapshotError(
            f"truncate event on a multi-partition input (partitions {sorted(partitions)}): "
            "its position relative to other partitions is undefined; tidelog topics must "
            "have one partition per table",
            partitions=sorted(partitions),
        )
    return truncate_at


def _event_branches(live: Sequence[Surveyed], parts: list[pl.LazyFrame], wanted: list[str]
                    ) -> tuple[pl.LazyFrame | None, pl.LazyFrame | None, pl.LazyFrame | None]:
    """(all events in order, each key's last event, keyless upserts): each branch re-reads
    the segments, so only the ones the data needs are built (None otherwise)."""
    if not parts:
        return None, None, None
    in_order = all(s.in_order for s in live) and all(
        a.last < b.first for a, b in zip(live, live[1:], strict=False))
    ev = pl.concat(parts, how="vertical")
    if not in_order:
        ev = ev.sort([PARTITION, OFFSET], maintain_order=True)
    keyed = pl.col(KEY).is_not_null()
    last = keyless = None
    if any(s.keyed_rows for s in live):
        # A mask over the key column alone, then one gather: polars' `unique(keep=
        # "last")` on the wide frame was 7x slower (TPC-H lineitem, BENCHMARKS.md).
        last = ev.filter(keyed).filter(pl.col(KEY).is_last_distinct())
    if any(s.keyless_upserts for s in live):
        keyless = ev.filter(~keyed & pl.col(OP).is_in(UPSERT_OPS)).select(wanted)
    return ev, last, keyless


def has_salt(schema: Mapping[str, pl.DataType]) -> bool:
    """Whether rows of this schema carry tidelog's salt: a binary `__salt` (a source
    column of that name archived before tidelog refused it is text or a number)."""
    return schema.get(SALT) == pl.Binary


def _salt_of(schema: Mapping[str, pl.DataType]) -> pl.Expr:
    """The input's `__salt`, or null where it has none (archived before salts)."""
    if has_salt(schema):
        return pl.col(SALT)
    return pl.lit(None, dtype=pl.Binary).alias(SALT)


ROW_HASH_DTYPE = pl.Struct({"hi": pl.UInt64(), "lo": pl.UInt64()})


def has_row_hash(schema: Mapping[str, pl.DataType]) -> bool:
    """Whether rows of this schema carry archived row hashes: a `__row_hash` of the hash
    struct (a source column of that name, archived before tidelog refused it, is not)."""
    return schema.get(ROW_HASH) == ROW_HASH_DTYPE


def _row_hash_of(schema: Mapping[str, pl.DataType], out: Mapping[str, pl.DataType],
                 alive: set[str]) -> pl.Expr:
    """The input's archived row hash where its rows are exactly the output's (the same
    columns and types, all of them alive); else null, so the row is hashed from files."""
    own = {n: schema[n] for n in data_columns(list(schema))}
    if has_row_hash(schema) and own == dict(out) and alive == set(out):
        return pl.col(ROW_HASH).cast(ROW_HASH_DTYPE)
    return pl.lit(None, dtype=ROW_HASH_DTYPE).alias(ROW_HASH)


def _event_rows(seg: Surveyed, cols: set[str], out: Mapping[str, pl.DataType], keep: pl.Expr,
                where: pl.Expr | None, truncate_at: int | None, winners: pl.LazyFrame | None,
                meta: Sequence[pl.Expr], *, placeholders: bool, salted: bool,
                hashed: bool = False) -> pl.LazyFrame:
    """One segment's events in the output columns: those after the base and the truncate
    and chosen by `where`; of a retyped segment, only each key's last event."""
    rows = seg.frame.filter(keep)
    if where is not None:
        rows = rows.filter(where)
    if truncate_at is not None:
        rows = rows.filter(pl.col(OFFSET) > truncate_at)
    if winners is not None and _retyped(seg.schema, out, cols):
        rows = rows.with_columns(*meta[:2]).join(
            winners, on=[PARTITION, OFFSET], how="left", maintain_order="left",
        ).filter(pl.col(KEY).is_null() | pl.col(_WINNER).is_not_null()).drop(_WINNER)
    extra = [may_be_placeholder(seg.schema)] if placeholders else []
    if salted:
        extra.append(_salt_of(seg.schema))
    if hashed:
        extra.append(_row_hash_of(seg.schema, out, cols))
    return rows.select(*meta, *extra, *(_column_expr(n, t, n in cols and n in seg.schema)
                                        for n, t in out.items()))


def _state(base_rows: pl.LazyFrame | None, last: pl.LazyFrame | None,
           upserts: pl.LazyFrame | None, keyless: pl.LazyFrame | None,
           out: Mapping[str, pl.DataType], *, salted: bool, hashed: bool = False
           ) -> pl.LazyFrame:
    """The unsorted state: base rows no event replaced, the keys' last upserts, the base's
    keyless rows, then keyless upserts (in that order: keyless rows keep event order)."""
    keyed = pl.col(KEY).is_not_null()
    pieces: list[pl.LazyFrame] = []
    if base_rows is not None:
        base_keyed = base_rows.filter(keyed)
        if last is not None:
            base_keyed = base_keyed.join(last.select(KEY), on=KEY, how="anti")
        pieces.append(base_keyed)
        if upserts is not None:
            pieces.append(upserts)
        pieces.append(base_rows.filter(~keyed))
    elif upserts is not None:
        pieces.append(upserts)
    if keyless is not None:
        pieces.append(keyless)
    if not pieces:
        carried = {KEY: pl.String(), **({SALT: pl.Binary()} if salted else {}),
                   **({ROW_HASH: ROW_HASH_DTYPE} if hashed else {})}
        pieces.append(pl.DataFrame(schema={**out, **carried}).lazy())
    return pl.concat(pieces, how="vertical")


def _output_columns(live: Sequence[Surveyed], base_schema: Mapping[str, pl.DataType] | None,
                    segments: Sequence[Surveyed]) -> dict[str, pl.DataType]:
    """The state's data columns: the latest event's segment's; else the base's; else the
    last segment's. Segments of tombstones alone say nothing about the columns."""
    shaped = [s for s in live if not _only_tombstones(s)]
    schema: Mapping[str, pl.DataType]
    if shaped:
        schema = shaped[-1].schema
    elif base_schema is not None:
        schema = base_schema
    elif segments:
        schema = segments[-1].schema
    else:
        schema = {}
    return {n: schema[n] for n in data_columns(list(schema))}


def _only_tombstones(seg: Surveyed) -> bool:
    """A segment of Kafka tombstones only, without data columns: what an archive run that
    stops between Debezium's delete and its tombstone writes. A tombstone has no value,
    hence no schema: such a segment neither adds nor drops a column."""
    return seg.ops <= {"x"} and not data_columns(list(seg.schema))


def _alive_columns(live: Sequence[Surveyed], out: Mapping[str, pl.DataType]
                   ) -> list[set[str]]:
    """Per live segment, the output columns whose values count from it on: only if no
    later segment lacks the column (a dropped column is gone for good, even if a column
    of that name comes back)."""
    alive: list[set[str]] = []
    running = set(out)
    for seg in reversed(live):
        if not _only_tombstones(seg):  # which has no columns to read, and drops none
            running &= set(seg.schema)
        alive.append(set(running))
    alive.reverse()
    return alive


def _winners(live: Sequence[Surveyed], alive: Sequence[set[str]],
             out: Mapping[str, pl.DataType], keep: pl.Expr, meta: Sequence[pl.Expr]
             ) -> pl.LazyFrame | None:
    """(partition, offset) of each key's last event, when some segment was retyped.

    After ALTER COLUMN ... TYPE, older segments hold values the new type may not take
    ('abc' for an int made with USING length(v)). Only an event that is its key's last
    can reach the state, so such segments are cut down to those before the cast: a value
    that does survive and cannot be cast is still an error, never a silent null.
    """
    if not any(_retyped(seg.schema, out, cols) for seg, cols in zip(live, alive, strict=True)):
        return None
    return pl.concat(
        [seg.frame.filter(keep).select(*meta[:2], pl.col(KEY).cast(pl.String))
         for seg in live], how="vertical"
    ).filter(pl.col(KEY).is_not_null()).sort([PARTITION, OFFSET]).unique(
        subset=KEY, keep="last").select(PARTITION, OFFSET, pl.lit(True).alias(_WINNER))


def _base_rows(base_lf: pl.LazyFrame, base_schema: Mapping[str, pl.DataType],
               keys: Sequence[str], out: Mapping[str, pl.DataType],
               alive: Sequence[set[str]], last: pl.LazyFrame | None, *, cast_all: bool,
               salted: bool, hashed: bool = False) -> pl.LazyFrame:
    """The base state in the output columns, with `__key` (rebuilt from the key columns
    if the base lacks it). Where a column was retyped, only base rows no event replaces
    are cast (as for older segments), unless `cast_all`."""
    if KEY not in base_schema:
        if keys and set(keys) <= set(out):
            check_key_dtypes(base_schema, keys)
            base_lf = base_lf.with_columns(key_expr(keys))
        else:
            base_lf = base_lf.with_columns(pl.lit(None, dtype=pl.String).alias(KEY))
    base_alive = set(base_schema) & (alive[0] if alive else set(out))
    if last is not None and not cast_all and _retyped(base_schema, out, base_alive):
        base_lf = base_lf.join(last.select(KEY), on=KEY, how="anti")
    return base_lf.select(
        *(_column_expr(n, t, n in base_alive) for n, t in out.items()),
        pl.col(KEY).cast(pl.String),
        *([_salt_of(base_schema)] if salted else []),
        *([_row_hash_of(base_schema, out, base_alive)] if hashed else []),
    )


def materialise(
    events: Events,
    key_columns: Sequence[str] | None = None,
    base: Frame | None = None,
    base_position: Mapping[int, int] | None = None,
    *,
    keep_key: bool = False,
    engine: Engine = "in-memory",
    where: pl.Expr | None = None,
    surveyed: Sequence[Surveyed] | None = None,
    row_hashes: bool = False,
) -> pl.DataFrame:
    """The table state after applying `events` (on top of `base`), sorted by key.

    See `plan_materialise` for the arguments; this runs the plan and maps polars errors
    (a column whose old values cannot take the new type) to `SnapshotError`.
    `engine` defaults to polars' in-memory engine: polars 2 made "auto" mean streaming,
    which took ~1.6-1.9x the CPU (and more memory) for these plans (BENCHMARKS.md).
    """
    plan = plan_materialise(events, key_columns, base, base_position, keep_key=keep_key,
                            where=where, surveyed=surveyed, row_hashes=row_hashes)
    try:
        state = plan.collect(engine=engine)
        placeholders = unavailable_columns(state)
        if placeholders:
            # Rare (an update that left a TOASTed value out), so paid only when it happens.
            state = plan_materialise(events, key_columns, base, base_position,
                                     keep_key=keep_key, where=where, surveyed=surveyed,
                                     fill_unavailable=placeholders).collect(engine=engine)
        return state
    except pl.exceptions.InvalidOperationError as exc:
        raise SnapshotError(
            f"materialisation failed: {exc}; a column's type changed in a way its older "
            "values cannot be cast to",
        ) from exc
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise SnapshotError(f"materialisation failed: {exc}") from exc
