"""Hypothesis on the real stack: random inserts, updates and deletes of a wide table of
supported types (values anywhere in the ranges docs/types.md calls exact) go through
Postgres, the real Debezium and the archive; every `--at latest` snapshot must print
exactly what Postgres prints (`TimeZone=UTC`, `IntervalStyle=iso_8601`).

One connector serves every example (the table only grows and changes, so each snapshot
is also an incremental build on the one before); a full rebuild of the last cut from the
archive must give the same digest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import hypothesis.strategies as st
import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings

from cdc.connector import ConnectorSpec, apply, delete
from cdc.source_types import array_guard
from snapshotter.snapshots import Snapshot, create_snapshot, open_snapshot, rebuild_snapshot
from tests.integration import type_coverage as tc
from tests.integration.cdc_helpers import execute, private_settings, unique_name
from tidelog.settings import Settings

pytestmark = pytest.mark.integration

TABLE = "public.types_hypothesis"

_US_PER_DAY = 86_400_000_000
_MIN_DAYS = -2440588  # 4714-11-24 BC, Postgres's first date and timestamp
_MAX_DATE_DAYS = 2145042905  # 5874897-12-31
_MAX_TS_DAYS = 106751990  # 294247-01-09: DuckDB's timestamps end on the 10th


def _civil(days: int) -> tuple[int, int, int]:
    """(year, month, day) of days since 1970-01-01, proleptic Gregorian, year 0 = 1 BC."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, doy - (153 * mp + 2) // 5 + 1


def _date_text(days: int, clock: str = "") -> str:
    y, m, d = _civil(days)
    year, era = (y, "") if y > 0 else (1 - y, " BC")
    return f"{year:04d}-{m:02d}-{d:02d}{clock}{era}"


def _clock(us: int) -> str:
    secs, frac = divmod(us, 1_000_000)
    return f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}.{frac:06d}"


_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
                max_size=40)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20)
    | st.floats(allow_nan=False, allow_infinity=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=6)
_DATES = st.integers(_MIN_DAYS, _MAX_DATE_DAYS).map(_date_text) | st.sampled_from(
    ["infinity", "-infinity"])
_TIMESTAMPS = st.builds(lambda d, us: _date_text(d, " " + _clock(us)),
                        st.integers(_MIN_DAYS, _MAX_TS_DAYS), st.integers(0, _US_PER_DAY - 1)
                        ) | st.sampled_from(["infinity", "-infinity"])
# Offsets move the instant by up to a day: keep a day inside the range at both ends.
_TIMESTAMPTZ = st.builds(
    lambda d, us, off: _date_text(d, f" {_clock(us)}{off}"),
    st.integers(_MIN_DAYS + 1, _MAX_TS_DAYS - 1), st.integers(0, _US_PER_DAY - 1),
    st.sampled_from(["+00", "+05:30", "-08", "+14"])) | st.sampled_from(["infinity",
                                                                          "-infinity"])
_DECIMALS = st.decimals(allow_nan=False, allow_infinity=False).filter(
    lambda d: -40 < d.adjusted() < 40 and len(d.as_tuple().digits) < 60)


def _float_text(v: float) -> str:
    return "NaN" if v != v else repr(v).replace("inf", "Infinity")


@dataclass(frozen=True)
class Typed:
    column: tc.Column
    values: st.SearchStrategy[Any]  # the text Postgres reads (`%s::text::type`), or bytes


def _col(name: str, type_: str, values: st.SearchStrategy[Any],
         pg_text: str = "{c}::text") -> Typed:
    return Typed(tc.Column(name, type_, (), pg_text), values)


COLUMNS: tuple[Typed, ...] = (
    _col("i2", "smallint", st.integers(-2**15, 2**15 - 1).map(str)),
    _col("i4", "integer", st.integers(-2**31, 2**31 - 1).map(str)),
    _col("i8", "bigint", st.integers(-2**63, 2**63 - 1).map(str)),
    _col("f4", "real", st.floats(width=32).map(_float_text)),
    _col("f8", "double precision", st.floats().map(_float_text)),
    _col("bo", "boolean", st.booleans().map(str)),
    _col("n", "numeric(12,3)", st.decimals(Decimal("-999999999.999"),
                                           Decimal("999999999.999"), places=3).map(str)),
    _col("nu", "numeric", _DECIMALS.map(str) | st.sampled_from(["NaN", "Infinity",
                                                                   "-Infinity"])),
    _col("t", "text", _TEXT),
    _col("vc", "varchar(12)", _TEXT.map(lambda s: s[:12])),
    _col("ch", "char(6)", _TEXT.map(lambda s: s[:6])),
    _col("d", "date", _DATES),
    _col("ts", "timestamp", _TIMESTAMPS),
    _col("tstz", "timestamptz", _TIMESTAMPTZ),
    _col("tm", "time", st.integers(0, _US_PER_DAY).map(
        lambda us: "24:00:00" if us == _US_PER_DAY else _clock(us))),
    _col("iv", "interval", st.builds(
        lambda mons, days, us: f"{mons} mons {days} days {us} microseconds",
        st.integers(-10**6, 10**6), st.integers(-10**6, 10**6),
        st.integers(-10**15, 10**15))),
    _col("js", "jsonb", _JSON.map(json.dumps)),
    _col("u", "uuid", st.uuids().map(str)),
    _col("by", "bytea", st.binary(max_size=40)),
    _col("b6", "bit(6)", st.text("01", min_size=6, max_size=6)),
    _col("en", "tl_mood", st.sampled_from(["sad", "ok", "happy"])),
    _col("ia", "int[]", st.lists(st.none() | st.integers(-2**31, 2**31 - 1), max_size=4).map(
        lambda xs: tc.pg_array_text([None if x is None else str(x) for x in xs]))),
    _col("ta", "text[]", st.lists(st.none() | _TEXT, max_size=4).map(tc.pg_array_text)),
)
_GUARDS = {"ia": ("int4", "b"), "ta": ("text", "b")}
_COLUMNS = tuple(c.column for c in COLUMNS)


def _create() -> str:
    cols = ", ".join(
        f"{c.name} {c.type}" + (f" check ({array_guard(c.name, *_GUARDS[c.name])})"
                                if c.name in _GUARDS else "") for c in _COLUMNS)
    return f"create table {TABLE} (id int primary key, {cols})"


# A row: each column NULL or a drawn value.
ROWS = st.fixed_dictionaries({c.column.name: st.none() | c.values for c in COLUMNS})


def _assignments(row: dict[str, Any]) -> tuple[list[str], list[str], list[Any]]:
    names, exprs, params = [], [], []
    for typed in COLUMNS:
        c = typed.column
        names.append(c.name)
        value = row[c.name]
        exprs.append("%s::bytea" if isinstance(value, bytes) else f"%s::text::{c.type}")
        params.append(value)
    return names, exprs, params


def _write(conn: psycopg.Connection[Any], op: str, key: int, row: dict[str, Any]) -> None:
    names, exprs, params = _assignments(row)
    if op == "insert":
        conn.execute(f"insert into {TABLE} (id, {', '.join(names)}) values "
                     f"(%s, {', '.join(exprs)})", [key, *params])
    elif op == "update":
        sets = ", ".join(f"{n} = {e}" for n, e in zip(names, exprs, strict=True))
        conn.execute(f"update {TABLE} set {sets} where id = %s", [*params, key])
    else:
        conn.execute(f"delete from {TABLE} where id = %s", [key])


def _compare(settings: Settings, env: Settings, snap: Snapshot) -> None:
    con = open_snapshot(env, snap.id).duckdb()
    got = tc.snapshot_rows(con, TABLE, _COLUMNS)
    # DuckDB's ICU prints a timestamptz after 287396-10-12 with its milliseconds off (2^53
    # ms); the stored microseconds are exact (docs/types.md): print them as UTC TIMESTAMP.
    for key, text in con.execute(f"select id, (tstz at time zone 'UTC')::varchar from {TABLE}"
                                 ).fetchall():
        got[key]["tstz"] = (None if text is None else tc.pg_temporal(text) if "infinity" in text
                            else tc.pg_temporal(text + "+00"))
    with psycopg.connect(settings.postgres_dsn) as conn:
        want = tc.pg_rows(conn, TABLE, _COLUMNS)
        # Postgres prints some floats with more digits than the shortest (exact integer
        # digits: 3.8969582003537376e+16): let it print the snapshot's value itself.
        for name, pg_type in (("f4", "float4"), ("f8", "float8")):
            texts = sorted({r[name] for r in got.values() if r.get(name) is not None})
            printed = dict(conn.execute(f"select x, x::{pg_type}::text from unnest(%s::text[]) x",
                                        [texts]).fetchall())
            for r in got.values():
                if r.get(name) is not None:
                    r[name] = printed[r[name]]
    diffs = tc.differences(want, got)
    assert not diffs, "\n".join(diffs)


def test_random_rows_of_every_type_read_back_as_postgres_prints_them(
        settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("hypothesis")
    name = unique_name("hyp")
    env = private_settings(settings, root, name)
    execute(settings, *tc.SETUP, f"drop table if exists {TABLE}", _create())
    spec = ConnectorSpec(name, (TABLE,), name)
    apply(env, spec, timeout=180)
    existing: set[int] = set()
    last: list[Snapshot] = []

    ops = st.lists(st.tuples(st.sampled_from(["insert", "insert", "update", "delete"]),
                             st.integers(0, 10**6), ROWS), min_size=1, max_size=6)

    @given(ops)
    # Derandomized: CI sees the same 15 examples every run, so a red run is reproducible
    # Explore further with derandomize=False and more examples.
    @hsettings(max_examples=15, deadline=None, database=None, derandomize=True,
               phases=(Phase.explicit, Phase.generate),
               suppress_health_check=list(HealthCheck))
    def writes_then_snapshot(batch: list[tuple[str, int, dict[str, Any]]]) -> None:
        with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
            for op, pick, row in batch:
                if op == "insert" or not existing:
                    key = max(existing, default=0) + 1
                    _write(conn, "insert", key, row)
                    existing.add(key)
                else:
                    key = sorted(existing)[pick % len(existing)]
                    _write(conn, op, key, row)
                    if op == "delete":
                        existing.discard(key)
        snap = create_snapshot(env, [TABLE], "latest")
        _compare(settings, env, snap)
        last.append(snap)

    writes_then_snapshot()
    assert len(last) == 15
    # the last cut, rebuilt from the archive alone, has the same content
    rebuilt = rebuild_snapshot(env, last[-1].cut, [TABLE], root / "rebuilt")
    assert rebuilt.digest == last[-1].digest
    delete(env, spec, drop_slot=True)


def test_the_generated_literals_are_the_values_meant() -> None:
    """The date text helper agrees with Postgres's calendar at its edges."""
    assert _date_text(0) == "1970-01-01"
    assert _date_text(_MIN_DAYS) == "4714-11-24 BC"
    assert _date_text(_MAX_DATE_DAYS) == "5874897-12-31"
    assert _date_text(_MAX_TS_DAYS) == "294247-01-09"
    assert _date_text(-719163) == "0001-12-31 BC"
