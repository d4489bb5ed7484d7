"""Which source columns tidelog can carry exactly: checked at `connector apply`.

Debezium drops some column types without a word (only a WARN in the Connect log), or
changes their values on the way (docs/types.md lists each type). Rather than let a
snapshot differ from Postgres, `connector apply` refuses such columns up front, naming
each one and what to do about it. Two checks:

- by type, from the catalog: types Debezium drops or cannot carry exactly, whatever the
  value (`TYPE_REFUSALS`, multiranges, generated columns, arrays of any of these);
- by value, one scan per table: values already in the table that the initial snapshot
  would change (BC dates, timestamps past DuckDB's range, NaN/Infinity in numeric(p,s),
  multi-dimensional arrays or arrays not starting at 1, NaN in numeric[], NULL elements
  in enum arrays). The same values written later, while streaming, cannot be caught
  here: docs/types.md says which ones DuckDB-side checks catch and which need a CHECK
  constraint at the source.

A column left out with `column.exclude.list` (`ConnectorSpec.exclude_columns`) is not
checked: the user chose to leave it out of every snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from tidelog.adapters import postgres
from tidelog.errors import SourceError

__all__ = ["TYPE_REFUSALS", "SourceColumn", "Refusal", "source_columns", "refusals",
           "check_source_types"]

_EXCLUDE = "leave the column out with `--exclude-columns {table}.{column}`"
_LEAVE_OUT = _EXCLUDE + ", or change its type at the source"
_AS_TEXT = ("change it to text at the source (ALTER TABLE {table} ALTER COLUMN {column} TYPE "
            "text USING {column}::text) or " + _EXCLUDE)

# type name -> why tidelog refuses it, and what to do (format keys: table, column)
TYPE_REFUSALS: dict[str, str] = {
    **{t: "Debezium does not capture this type: the column would be missing from every "
          "snapshot; " + _AS_TEXT
       for t in ("box", "circle", "line", "lseg", "path", "polygon", "tsquery")},
    "timetz": "Debezium converts time with time zone to UTC and drops the offset "
              "('12:00:00+05:30' arrives as '06:30:00Z'); change it to time or timestamptz, "
              "or " + _EXCLUDE,
    "varbit": "Debezium sends bit varying without its length ('1' and '0001' arrive "
              "alike); change it to bit(n) or text, or " + _EXCLUDE,
    "name": "Debezium sends name columns as NULL while streaming; change it to text "
            "(ALTER TABLE {table} ALTER COLUMN {column} TYPE text) or " + _EXCLUDE,
}
_MULTIRANGE = ("Debezium does not capture multirange types: the column would be missing "
               "from every snapshot; " + _AS_TEXT)
_GENERATED = ("Postgres does not publish generated columns to logical replication: the "
              "column would be missing from every snapshot; compute it from the captured "
              "columns in your recipe, or make it an ordinary column filled by the writer, "
              "or " + _EXCLUDE)

# DuckDB's TIMESTAMP ends at 294247-01-10 04:00:54.775806; Postgres's goes to 294276.
_DUCKDB_MAX_TS = "294247-01-10 04:00:54.775806"


@dataclass(frozen=True)
class SourceColumn:
    """One column of a source table as the catalog describes it."""

    name: str
    type_name: str  # pg_type.typname; for arrays the element's
    type_kind: str  # pg_type.typtype of the (element) type: b base, e enum, m multirange...
    is_array: bool
    typmod: int  # atttypmod: -1 when unconstrained
    generated: bool


@dataclass(frozen=True)
class Refusal:
    table: str
    column: str
    reason: str

    def __str__(self) -> str:
        return f"{self.table}.{self.column}: {self.reason}"


def source_columns(conn: psycopg.Connection[Any], table: str) -> list[SourceColumn]:
    schema, name = table.split(".", 1)
    rows = conn.execute(
        "select a.attname, coalesce(e.typname, t.typname), coalesce(e.typtype, t.typtype), "
        "e.oid is not null, a.atttypmod, a.attgenerated <> '' "
        "from pg_attribute a join pg_class c on c.oid = a.attrelid "
        "join pg_namespace n on n.oid = c.relnamespace "
        "join pg_type t on t.oid = a.atttypid "
        "left join pg_type e on t.typcategory = 'A' and e.oid = t.typelem "
        "where n.nspname = %s and c.relname = %s and a.attnum > 0 and not a.attisdropped "
        "order by a.attnum", (schema, name)).fetchall()
    return [SourceColumn(str(r[0]), str(r[1]), str(r[2]), bool(r[3]), int(r[4]), bool(r[5]))
            for r in rows]


def _type_refusal(table: str, col: SourceColumn) -> str | None:
    fmt = {"table": table, "column": col.name}
    if col.generated:
        return _GENERATED.format(**fmt)
    if col.type_kind == "m":
        return _MULTIRANGE.format(**fmt)
    reason = TYPE_REFUSALS.get(col.type_name)
    if reason is not None:
        kind = f"{col.type_name}[]" if col.is_array else col.type_name
        return f"{kind}: " + reason.format(**fmt)
    return None


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _value_checks(col: SourceColumn) -> list[tuple[str, str]]:
    """(SQL predicate on existing rows, why it cannot be carried) for one column."""
    c = _quote(col.name)
    checks: list[tuple[str, str]] = []
    if col.is_array:
        checks.append((f"array_ndims({c}) > 1 or array_lower({c}, 1) <> 1",
                       "hold multi-dimensional arrays or arrays whose lower bound is not 1, "
                       "which Debezium flattens to NULLs or renumbers; keep it to "
                       f"one-dimensional arrays from 1 (CHECK (array_ndims({c}) = 1 and "
                       f"array_lower({c}, 1) = 1)) or " + _LEAVE_OUT))
        if col.type_name == "numeric":
            checks.append((f"'NaN' = any({c}) or 'Infinity' = any({c}) "
                           f"or '-Infinity' = any({c})",
                           "hold arrays with NaN or ±Infinity, which Debezium sends as NULL "
                           "for the whole array; " + _LEAVE_OUT))
        if col.type_kind == "e":
            checks.append((f"array_position({c}, NULL) is not null",
                           "hold enum arrays with a NULL element, which Debezium sends as "
                           "NULL for the whole array; " + _LEAVE_OUT))
        if col.type_name == "date":
            checks.append((f"exists (select 1 from unnest({c}) x where x < '0001-01-01' "
                           "and x <> '-infinity')",
                           "hold BC dates in an array, which Debezium sends as AD dates; "
                           + _LEAVE_OUT))
        return checks
    if col.type_name == "date":
        checks.append((f"{c} < '0001-01-01' and {c} <> '-infinity'",
                       "hold BC dates, which Debezium's initial snapshot sends as AD dates; "
                       "change them, or " + _LEAVE_OUT))
    elif col.type_name in ("timestamp", "timestamptz"):
        limit = _DUCKDB_MAX_TS + ("+00" if col.type_name == "timestamptz" else "")
        checks.append((f"{c} > '{limit}' and {c} <> 'infinity'",
                       "hold timestamps after 294247-01-10, beyond DuckDB's range; "
                       "change them, or " + _LEAVE_OUT))
    elif col.type_name == "interval":
        checks.append((f"abs(extract(hour from {c})) > 2147483647",
                       "hold intervals of more than 2^31-1 hours, which Debezium's "
                       "Postgres driver cannot parse (the task then retries forever, in the "
                       "initial snapshot and while streaming alike); "
                       "change them, or " + _LEAVE_OUT))
    elif col.type_name == "numeric" and col.typmod != -1:
        checks.append((f"{c} in ('NaN', 'Infinity', '-Infinity')",
                       "hold NaN or ±Infinity, which a DECIMAL(p,s) column cannot hold; "
                       "make the column unconstrained numeric (kept as exact text) or "
                       "remove those values"))
    return checks


def refusals(conn: psycopg.Connection[Any], table: str,
             exclude: Sequence[str] = ()) -> list[Refusal]:
    """Every column of `table` tidelog cannot carry exactly (one scan for the values)."""
    found: list[Refusal] = []
    checks: list[tuple[str, str, str]] = []
    for col in source_columns(conn, table):
        if col.name in exclude:
            continue
        reason = _type_refusal(table, col)
        if reason is not None:
            found.append(Refusal(table, col.name, reason))
            continue
        fmt = {"table": table, "column": col.name}
        checks.extend((col.name, sql, why.format(**fmt)) for sql, why in _value_checks(col))
    if checks:
        schema, name = table.split(".", 1)
        counts = ", ".join(f"count(*) filter (where {sql})" for _, sql, _ in checks)
        row = conn.execute(f"select {counts} from {_quote(schema)}.{_quote(name)}").fetchone()
        for (column, _, why), count in zip(checks, row or (), strict=True):
            if count:
                found.append(Refusal(table, column, f"{count} row(s) {why}"))
    return found


def check_source_types(dsn: str, tables: Sequence[str],
                       exclude_columns: Sequence[str] = ()) -> None:
    """Raise SourceError listing every column tidelog cannot carry exactly.

    `exclude_columns` holds `schema.table.column` names left out of capture.
    """
    found: list[Refusal] = []
    with postgres.connect(dsn) as conn, postgres.postgres_errors(
            f"read the column types of {', '.join(tables)}", dsn):
        for table in tables:
            mine = [c.split(".", 2)[2] for c in exclude_columns
                    if c.count(".") >= 2 and c.rsplit(".", 1)[0] == table]
            found.extend(refusals(conn, table, mine))
    if found:
        raise SourceError(
            "tidelog cannot capture these columns exactly, so it does not start the "
            "connector:\n  " + "\n  ".join(str(r) for r in found)
            + "\n(docs/types.md lists how every Postgres type travels)",
            columns=[f"{r.table}.{r.column}" for r in found],
        )
