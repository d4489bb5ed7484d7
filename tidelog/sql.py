"""Quoting for the SQL tidelog writes (Postgres and DuckDB quote alike): the one copy."""

from __future__ import annotations

__all__ = ["ident", "qualified", "literal"]


def ident(name: str) -> str:
    """A quoted identifier: `"name"`, with embedded double quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


def qualified(table: str) -> str:
    """`schema.table` as `"schema"."table"` (the first dot separates them)."""
    schema, name = table.split(".", 1)
    return f"{ident(schema)}.{ident(name)}"


def literal(text: str) -> str:
    """A string literal: `'text'`, with embedded single quotes doubled."""
    return "'" + text.replace("'", "''") + "'"
