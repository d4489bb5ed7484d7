"""Debezium's placeholder for an unchanged TOASTed value, and putting the real value back.

Without REPLICA IDENTITY FULL, an update that leaves a large (TOASTed) value unchanged
does not carry it: Debezium sends `__debezium_unavailable_value` instead. For text, JSON
and bytea columns, materialisation replaces it by the key's latest real value, from
earlier events or the base state (docs/types.md, "Unchanged TOASTed values").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import polars as pl

from cdc.columns import BEFORE, KEY, OP, UPSERT_OPS

__all__ = ["UNAVAILABLE", "MAY_BE_PLACEHOLDER", "may_be_placeholder", "unavailable_columns",
           "fill_placeholders"]


UNAVAILABLE = "__debezium_unavailable_value"  # Debezium's unavailable.value.placeholder
MAY_BE_PLACEHOLDER = "__may_be_placeholder"


def may_be_placeholder(schema: Mapping[str, pl.DataType]) -> pl.Expr:
    """True for events in which Debezium could have sent the placeholder: updates without
    a before image. Inserts and snapshot reads always carry the value, and with REPLICA
    IDENTITY FULL (a before image) Debezium has the old value; there a value equal to the
    placeholder text is data (docs/types.md, "Unchanged TOASTed values")."""
    flag = pl.col(OP) == "u"
    if BEFORE in schema:
        flag = flag & pl.col(BEFORE).is_null()
    return flag.alias(MAY_BE_PLACEHOLDER)


def _unavailable(name: str, dtype: pl.DataType) -> pl.Expr:
    """True where the column holds Debezium's placeholder for an unchanged TOAST value."""
    if dtype == pl.String:
        return (pl.col(name) == UNAVAILABLE).fill_null(False)
    if dtype == pl.Binary:
        return (pl.col(name) == UNAVAILABLE.encode()).fill_null(False)
    return pl.lit(False)


def unavailable_columns(frame: pl.DataFrame) -> list[str]:
    """Columns of a state in which some row holds the unavailable-value placeholder."""
    names = [n for n, t in frame.schema.items()
             if not n.startswith("__") and t in (pl.String, pl.Binary)]
    if not names or frame.height == 0:
        return []
    found = frame.select(_unavailable(n, frame.schema[n]).any().alias(n) for n in names)
    return [n for n in names if found[n][0]]


def fill_placeholders(upserts: pl.LazyFrame, ev: pl.LazyFrame,
                      base_rows: pl.LazyFrame | None,
                      columns: Sequence[str], out: Mapping[str, pl.DataType]
                      ) -> pl.LazyFrame:
    """Replace placeholders by the key's latest real value: from earlier events (an
    update that leaves a TOASTed value unchanged cannot follow a NULL, and an insert
    always carries the value), else from the base state."""
    keyed_upsert = pl.col(KEY).is_not_null() & pl.col(OP).is_in(UPSERT_OPS)
    for name in columns:
        if name not in out:
            continue
        literal = _unavailable(name, out[name])
        placeholder = literal & pl.col(MAY_BE_PLACEHOLDER)
        known = (ev.filter(keyed_upsert & ~placeholder)
                 .unique(subset=KEY, keep="last", maintain_order=True)
                 .select(KEY, pl.col(name).alias("__known")))
        sources = [known]
        if base_rows is not None:
            # the base is resolved state: a placeholder left in it is no value to copy
            sources.append(base_rows.filter(~literal)
                           .select(KEY, pl.col(name).alias("__known")))
        for source in sources:
            upserts = (upserts.join(source, on=KEY, how="left", maintain_order="left")
                       .with_columns(pl.when(placeholder & pl.col("__known").is_not_null())
                                     .then(pl.col("__known")).otherwise(pl.col(name))
                                     .alias(name))
                       .drop("__known"))
    return upserts
