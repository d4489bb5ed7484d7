"""The one SQL quoting helper: identifiers and literals survive their own quote characters."""

from __future__ import annotations

import duckdb

from tidelog.sql import ident, literal, qualified


def test_quoting_round_trips_through_duckdb() -> None:
    con = duckdb.connect()
    schema, table, column, text = 'we"ird', "o'k.table", 'a "b"', "it's \\ fine"
    con.execute(f"create schema {ident(schema)}")
    con.execute(f"create table {qualified(schema + '.' + table)} ({ident(column)} text)")
    con.execute(f"insert into {qualified(schema + '.' + table)} values ({literal(text)})")
    assert con.execute(f"select {ident(column)} from {ident(schema)}.{ident(table)}"
                       ).fetchall() == [(text,)]
    assert qualified("public.x") == '"public"."x"'  # the first dot splits schema and name
