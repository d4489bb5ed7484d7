"""The rendered connector config: the settings that decide how types travel."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cdc.connector import ConnectorSpec, render_config
from tidelog.errors import ConnectorError
from tidelog.settings import Settings

SETTINGS = Settings(home=Path("/nonexistent"), postgres_dsn="postgresql://u:pw@db:5433/shop")


def test_exclude_columns_become_debeziums_column_exclude_list() -> None:
    spec = ConnectorSpec("c", ("public.t",), "p",
                         exclude_columns=("public.t.shape", "public.t.tz$1"))
    config = render_config(SETTINGS, spec)["config"]
    patterns = config["column.exclude.list"].split(",")
    assert [bool(re.fullmatch(p, "public.t.shape")) for p in patterns] == [True, False]
    assert re.fullmatch(patterns[1], "public.t.tz$1")  # escaped: a name, not a pattern
    assert not re.fullmatch(patterns[0], "public.tXshape")
    assert "column.exclude.list" not in render_config(
        SETTINGS, ConnectorSpec("c", ("public.t",), "p"))["config"]


def test_exclude_columns_need_schema_table_column() -> None:
    with pytest.raises(ConnectorError, match="schema.table.column"):
        render_config(SETTINGS, ConnectorSpec("c", ("public.t",), "p", exclude_columns=("t.c",)))


def test_template_settings_that_decide_exact_types() -> None:
    config = render_config(SETTINGS, ConnectorSpec("c", ("public.t",), "p"))["config"]
    # bytes, not base64: base64 mode sends an unchanged TOASTed bytea as NULL
    assert config["binary.handling.mode"] == "bytes"
    assert config["decimal.handling.mode"] == "string"
    assert config["column.propagate.source.type"] == ".*"
