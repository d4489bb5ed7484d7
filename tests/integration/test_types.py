"""Type coverage on the real stack: every column type tidelog accepts, with edge values
written before the connector exists (initial snapshot) and while streaming, must read back
from the snapshot exactly as Postgres prints it, in full, incremental and `--full`
(rebuild) builds; types it cannot carry are refused at `connector apply`."""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path

import psycopg
import pytest

from cdc.connector import ConnectorSpec, apply, connector_status
from cdc.events import ChangeEvent, decode_message
from cdc.reader import list_partitions, read_range
from cdc.source_types import array_guard
from snapshotter.snapshots import create_snapshot, open_snapshot, rebuild_snapshot
from tests.integration import type_coverage as tc
from tests.integration.cdc_helpers import execute, private_settings, unique_name
from tidelog.errors import BrokerError, ConnectorError, CutError, SourceError
from tidelog.settings import Settings

pytestmark = pytest.mark.integration

WIDE = "public.types_wide"
DATE_KEYED = "public.types_date_key"


def _wait_for_key(env: Settings, topic: str, key: dict[str, int], timeout: float = 180) -> None:
    """Until an event for `key` is on the topic. Decoded untyped, as the archiver does:
    Python's datetime stops at year 9999, the archive's types do not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for batch in read_range(env, {tp: 0 for tp in list_partitions(env, [topic])}):
                for m in batch:
                    ev = decode_message(m.topic, m.partition, m.offset, m.key, m.value,
                                        typed=False)
                    if isinstance(ev, ChangeEvent) and ev.key == key:
                        return
        except (BrokerError, CutError):
            pass  # the topic may not exist yet
        time.sleep(1)
    raise AssertionError(f"no event for {key} on {topic} after {timeout}s")


def _postgres(settings: Settings, table: str) -> dict[int, dict[str, str | None]]:
    with psycopg.connect(settings.postgres_dsn) as conn:
        return tc.pg_rows(conn, table)


def _check(settings: Settings, env: Settings, sid: str) -> None:
    con = open_snapshot(env, sid).duckdb()
    diffs = tc.differences(_postgres(settings, WIDE), tc.snapshot_rows(con, WIDE))
    assert not diffs, "\n".join(diffs)


def _date_keys(settings: Settings, env: Settings, sid: str) -> None:
    with psycopg.connect(settings.postgres_dsn) as conn:
        want = sorted(conn.execute(f"select d::text, v from {DATE_KEYED}").fetchall())
    con = open_snapshot(env, sid).duckdb()
    rows = con.execute(f"select d::varchar, v from {DATE_KEYED}").fetchall()
    assert sorted((tc.pg_temporal(d), v) for d, v in rows) == want


def run_type_coverage(settings: Settings, root: Path) -> None:
    name = unique_name("types")
    env = private_settings(settings, root, name)
    execute(settings, *tc.SETUP, f"drop table if exists {WIDE}", tc.create_sql(WIDE),
            f"drop table if exists {DATE_KEYED}",
            f"create table {DATE_KEYED} (d date primary key, v int)",
            *tc.rows_sql(WIDE, 1, stream=False),
            f"insert into {DATE_KEYED} values ('infinity', 1), ('-infinity', 2), "
            "('2020-01-01', 3)")
    apply(env, ConnectorSpec(name, (WIDE, DATE_KEYED), name), timeout=180)
    execute(settings, *tc.rows_sql(WIDE, 1001, stream=True),
            f"insert into {DATE_KEYED} values ('4713-01-01 BC', 4), ('5874897-12-31', 5)",
            f"update {DATE_KEYED} set v = 40 where d = '4713-01-01 BC'",
            f"delete from {DATE_KEYED} where d = 'infinity'",
            f"update {DATE_KEYED} set v = 20 where d = '-infinity'",
            f"insert into {WIDE} (id) values (5000)")
    _wait_for_key(env, f"{name}.{WIDE}", {"id": 5000})
    first = create_snapshot(env, [WIDE, DATE_KEYED], "latest")
    _check(settings, env, first.id)
    _date_keys(settings, env, first.id)
    con = open_snapshot(env, first.id).duckdb()
    # char(n) answers comparisons the way Postgres does
    assert con.execute(f"select count(*) from {WIDE} where ch = 'BUILDING'").fetchone() == (2,)

    # Updates that rewrite every edge value in place, then an incremental build.
    execute(settings, f"update {WIDE} set id = id + 2000 where id between 1 and 3",
            f"update {WIDE} set t = t || '!' where id > 1000 and id < 1005",
            f"delete from {WIDE} where id = 1004",
            f"insert into {WIDE} (id) values (5001)")
    _wait_for_key(env, f"{name}.{WIDE}", {"id": 5001})
    second = create_snapshot(env, [WIDE, DATE_KEYED], "latest")
    assert second.built_from == first.id
    _check(settings, env, second.id)
    _date_keys(settings, env, second.id)
    # a full build of the same cut from the archive alone (what `rebuild` and --full do)
    rebuilt = rebuild_snapshot(env, second.cut, [WIDE, DATE_KEYED], root / "rebuilt")
    assert rebuilt.digest == second.digest
    assert rebuilt.built_from == "full"


def test_every_accepted_type_reads_back_as_postgres_prints_it(
        settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> None:
    run_type_coverage(settings, tmp_path_factory.mktemp("types"))


REFUSED = "public.types_refused"
REFUSED_COLUMNS = {
    "bx": "box", "ci": "circle", "li": "line", "ls": "lseg", "pa": "path", "po": "polygon",
    "tq": "tsquery", "mr": "int4multirange", "tz": "timetz", "vb": "varbit", "nm": "name",
    "pos": "polygon[]",
}


def test_types_tidelog_cannot_carry_are_refused_at_apply(
        settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("refused")
    name = unique_name("refused")
    env = private_settings(settings, root, name)
    cols = ", ".join(f"{c} {t}" for c, t in REFUSED_COLUMNS.items())
    execute(settings, f"drop table if exists {REFUSED}",
            f"create table {REFUSED} (id int primary key, ok text, {cols}, "
            "g int generated always as (id * 2) stored, arr int[], d date)",
            f"insert into {REFUSED} (id, ok, arr, d) values (1, 'a', '{{{{1,2}},{{3,4}}}}', "
            "'4713-01-01 BC')")
    spec = ConnectorSpec(name, (REFUSED,), name)
    with pytest.raises(SourceError) as refused:
        apply(env, spec, timeout=60)
    named = set(refused.value.details["columns"])  # type: ignore[arg-type]
    assert named == {f"{REFUSED}.{c}" for c in [*REFUSED_COLUMNS, "g", "arr", "d"]}
    assert "--exclude-columns" in refused.value.message
    with pytest.raises(ConnectorError, match="no connector named"):
        connector_status(env, name)  # nothing was created

    # Leaving the columns out (and fixing the values) lets it through; the snapshot has
    # exactly the columns that were kept.
    execute(settings, f"update {REFUSED} set arr = '{{1,2}}', d = '2024-01-01'",
            f"alter table {REFUSED} add check ({array_guard('arr', 'int4', 'b')})")
    left_out = tuple(f"{REFUSED}.{c}" for c in [*REFUSED_COLUMNS, "g"])
    apply(env, ConnectorSpec(name, (REFUSED,), name, exclude_columns=left_out), timeout=180)
    execute(settings, f"insert into {REFUSED} (id, ok, arr) values (2, 'b', '{{5}}')")
    _wait_for_key(env, f"{name}.{REFUSED}", {"id": 2})
    snap = create_snapshot(env, [REFUSED], "latest")
    rows = open_snapshot(env, snap.id).table(REFUSED).to_dicts()
    assert rows == [{"id": 1, "ok": "a", "arr": [1, 2], "d": date(2024, 1, 1)},
                    {"id": 2, "ok": "b", "arr": [5], "d": None}]
