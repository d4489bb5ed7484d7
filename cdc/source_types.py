"""Which source columns tidelog can carry exactly: checked at `connector apply`.

Debezium drops some column types without a word (only a WARN in the Connect log), or
changes their values on the way (docs/types.md lists each type). Rather than let a
snapshot differ from Postgres, `connector apply` refuses such columns up front, naming
each one and what to do about it. Three checks:

- by type, from the catalog: types Debezium drops or cannot carry exactly, whatever the
  value (`TYPE_REFUSALS`, multiranges, generated columns, arrays of any of these);
- by value, one scan per table: values already in the table that the initial snapshot
  would change (BC dates, timestamps past DuckDB's range, NaN/Infinity in numeric(p,s),
  multi-dimensional arrays or arrays not starting at 1, NaN in numeric[], NULL elements
  in enum arrays);
- array columns: the same array values written later, while streaming, reach the
  change event looking ordinary, so an array column is refused unless a CHECK constraint
  on it (or its domain) keeps them out, found by evaluating the constraints on probe
  values (`_array_guard_refusal`; docs/types.md, "Arrays").

A column left out with `column.exclude.list` (`ConnectorSpec.exclude_columns`) is not
checked: the user chose to leave it out of every snapshot.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from tidelog.adapters import postgres
from tidelog.errors import SourceError
from tidelog.sql import ident

__all__ = ["TYPE_REFUSALS", "SourceColumn", "Refusal", "source_columns", "refusals",
           "array_guard", "unguarded_arrays", "check_source_types"]

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
    sql_type: str = ""  # format_type(): what a probe value is cast to
    element_sql_type: str = ""  # for arrays: the element's format_type()


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
        "e.oid is not null, a.atttypmod, a.attgenerated <> '', "
        "format_type(a.atttypid, a.atttypmod), coalesce(format_type(e.oid, a.atttypmod), '') "
        "from pg_attribute a join pg_class c on c.oid = a.attrelid "
        "join pg_namespace n on n.oid = c.relnamespace "
        "join pg_type t on t.oid = a.atttypid "
        # a domain over an array is an array column too (typelem is its base type's)
        "join pg_type b on b.oid = case when t.typtype = 'd' then t.typbasetype else t.oid end "
        "left join pg_type e on b.typcategory = 'A' and e.oid = b.typelem "
        "where n.nspname = %s and c.relname = %s and a.attnum > 0 and not a.attisdropped "
        "order by a.attnum", (schema, name)).fetchall()
    return [SourceColumn(str(r[0]), str(r[1]), str(r[2]), bool(r[3]), int(r[4]), bool(r[5]),
                         str(r[6]), str(r[7]))
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


def _value_checks(col: SourceColumn) -> list[tuple[str, str]]:
    """(SQL predicate on existing rows, why it cannot be carried) for one column."""
    c = ident(col.name)
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


# Element values tried, in turn, until one casts to the element type: the shape probes
# need an ordinary element, since a constraint may refuse NULL elements.
_ELEMENT_SAMPLES = ("0", "a", "2000-01-01", "00:00:00", "2000-01-01 00:00:00+00", "t",
                    "0.0.0.0", "00:00:00:00:00:00", "00000000-0000-0000-0000-000000000000",
                    "{}", "[0,1)", "(0,0)", "<a/>")


def _ident(name: str) -> str:
    return name if re.fullmatch(r"[a-z_][a-z0-9_]*", name) else ident(name)


def array_guard(column: str, type_name: str, type_kind: str) -> str:
    """The CHECK expression that keeps an array column to what Debezium carries."""
    c = _ident(column)
    parts = [f"array_ndims({c}) = 1", f"array_lower({c}, 1) = 1"]
    if type_name == "numeric":
        parts.append(f"not ('NaN' = any({c}) or 'Infinity' = any({c}) "
                     f"or '-Infinity' = any({c}))")
    if type_kind == "e":
        parts.append(f"array_position({c}, NULL) is null")
    if type_name == "date":
        parts.append(f"'0001-01-01'::date <= all(array_remove({c}, '-infinity'))")
    return " and ".join(parts)


def _array_literal(*elements: str | None) -> str:
    def one(v: str | None) -> str:
        return "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "{" + ",".join(one(v) for v in elements) + "}"


def _element_sample(conn: psycopg.Connection[Any], col: SourceColumn) -> str | None:
    if col.type_kind == "e":
        row = conn.execute("select enumlabel::text from pg_enum "
                           "where enumtypid = %s::regtype order by enumsortorder limit 1",
                           (col.element_sql_type,)).fetchone()
        return None if row is None else str(row[0])
    for candidate in _ELEMENT_SAMPLES:
        try:
            with conn.transaction():
                conn.execute(f"select %s::{col.element_sql_type}", (candidate,))
        except psycopg.Error:
            continue
        return candidate
    return None


def _accepts(conn: psycopg.Connection[Any], col: SourceColumn, checks: Sequence[str],
             literal: str) -> bool:
    """Whether the column's type (a domain's constraints) and its own CHECK constraints
    let `literal` in, evaluated without touching the table."""
    try:
        with conn.transaction():
            conn.execute(f"select %s::{col.sql_type}", (literal,))
            for check in checks:
                row = conn.execute(f"select coalesce(({check}), true) from "
                                   f"(select %s::{col.sql_type} as {ident(col.name)}) probe",
                                   (literal,)).fetchone()
                if row is not None and row[0] is False:
                    return False
    except psycopg.Error:
        return False
    return True


def _array_guard_refusal(conn: psycopg.Connection[Any], table: str, col: SourceColumn
                         ) -> Refusal | None:
    """A refusal unless the source itself keeps out the array values Debezium changes.

    Debezium renumbers arrays that do not start at 1 and flattens multi-dimensional ones
    (to NULLs, or to JVM object names), NULLs a numeric[] holding NaN and an enum[] holding
    a NULL, and sends BC dates in a date[] as AD: the change event shows no sign of it, so
    values written after `connector apply` could not be caught. A CHECK constraint on the
    column (or the column's domain) that rejects each such value is proof they cannot
    arrive; it is tested by evaluating it on probe values, never by writing to the table.
    """
    schema, name = table.split(".", 1)
    checks = [str(r[0]) for r in conn.execute(
        "select pg_get_expr(c.conbin, c.conrelid) from pg_constraint c "
        "join pg_attribute a on a.attrelid = c.conrelid and c.conkey = array[a.attnum] "
        "where c.conrelid = %s::regclass and c.contype = 'c' and a.attname = %s",
        (f"{ident(schema)}.{ident(name)}", col.name)).fetchall()]
    e = _element_sample(conn, col)
    bad = {"[0:0]=" + _array_literal(e): "another lower bound ('[0:1]={1,2}' arrives as "
                                           "{1,2})",
           "{" + _array_literal(e) + "}": "more than one dimension ('{{1,2},{3,4}}' "
                                          "arrives as {NULL,NULL})"}
    if col.type_name == "numeric":
        bad.update({_array_literal(v): "NaN or ±Infinity (the whole array arrives as NULL)"
                    for v in ("NaN", "Infinity", "-Infinity")})
    if col.type_kind == "e":
        bad[_array_literal(e, None)] = "a NULL element (the whole array arrives as NULL)"
    if col.type_name == "date":
        bad[_array_literal("0001-01-01 BC")] = "a BC date (it arrives as an AD date)"
    good = _accepts(conn, col, checks, _array_literal(e))
    let_in = sorted({why for literal, why in bad.items()
                     if not good or _accepts(conn, col, checks, literal)})
    if not let_in:
        return None
    guard = array_guard(col.name, col.type_name, col.type_kind)
    constraint = _ident(f"{name}_{col.name}_carried")
    return Refusal(table, col.name, (
        f"{col.element_sql_type}[]: an array written after `connector apply` with "
        + "; or with ".join(let_in)
        + " would reach snapshots changed, and Debezium's change event shows no sign of "
        "it; keep such values out with a CHECK constraint on the column (or its domain), "
        "which tidelog then finds: "
        f"ALTER TABLE {table} ADD CONSTRAINT {constraint} CHECK ({guard}); or "
        + _LEAVE_OUT.format(table=table, column=col.name)))


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
        if col.is_array:
            guard = _array_guard_refusal(conn, table, col)
            if guard is not None:
                found.append(guard)
        fmt = {"table": table, "column": col.name}
        checks.extend((col.name, sql, why.format(**fmt)) for sql, why in _value_checks(col))
    if checks:
        schema, name = table.split(".", 1)
        counts = ", ".join(f"count(*) filter (where {sql})" for _, sql, _ in checks)
        row = conn.execute(f"select {counts} from {ident(schema)}.{ident(name)}").fetchone()
        for (column, _, why), count in zip(checks, row or (), strict=True):
            if count:
                found.append(Refusal(table, column, f"{count} row(s) {why}"))
    return found


def unguarded_arrays(dsn: str, tables: Sequence[str], exclude_columns: Sequence[str] = ()
                     ) -> list[Refusal]:
    """The array columns of `tables` whose constraint no longer keeps out what Debezium
    changes (catalog queries and probe values only; no table scan).

    `connector apply` refused such columns; asked again before every `--at latest` cut,
    so a constraint dropped after `apply` stops 'latest' instead of letting changed arrays
    through unnoticed.
    """
    found: list[Refusal] = []
    with postgres.connect(dsn) as conn, postgres.postgres_errors(
            f"read the array constraints of {', '.join(tables)}", dsn):
        for table in tables:
            for col in source_columns(conn, table):
                if (col.is_array and f"{table}.{col.name}" not in exclude_columns
                        and _type_refusal(table, col) is None):
                    refusal = _array_guard_refusal(conn, table, col)
                    if refusal is not None:
                        found.append(refusal)
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
