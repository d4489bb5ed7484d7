"""Real Postgres -> Debezium in Kafka Connect -> broker -> decoded ChangeEvents."""

from __future__ import annotations

import pytest

from tests.integration.cdc_helpers import connect_tables, execute, read_events, wait_for_events
from tidelog.settings import Settings

pytestmark = pytest.mark.integration

ALL_TYPES = """
create table {t} (
    id bigint primary key,
    n numeric(12, 3), free numeric, small smallint, i int, r real, f double precision,
    ok boolean, s text, vc varchar(20) default 'the default', ts timestamptz,
    tsn timestamp, d date, tm time, j jsonb, b bytea, ints int[], texts text[], u uuid,
    check (array_ndims(ints) = 1 and array_lower(ints, 1) = 1),
    check (array_ndims(texts) = 1 and array_lower(texts, 1) = 1)
)
"""

ROWS = [
    "(1, 12.300, 0.000001000, -32768, 2147483647, 1.5, 1e300, true, 'plain', 'v',"
    " '2024-02-29 23:59:59.999999+05:30', '1969-12-31 23:59:59.5', '0001-01-01',"
    " '00:00:00.000001', '{\"k\": [1, 2.50, null], \"é\": \"ü\"}', '\\x00ff10',"
    " '{1,NULL,-3}', '{\"a b\",\"\",NULL}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11')",
    "(2, -99999999.999, 123456789012345678901234567890.123456789, 0, 0, -0.0, -2.5e-310,"
    " false, 'emoji 🎉 combining é 中文 \t tab', '', '1900-01-01 00:00:00+00',"
    " '2262-04-11 23:47:16.854775', '9999-12-31', '23:59:59.999999', '[]', '\\x',"
    " '{}', '{}', '00000000-0000-0000-0000-000000000000')",
    "(3, null, null, null, null, null, null, null, null, null, null, null, null, null,"
    " 'null', null, null, null, null)",
]


def _select_all(settings: Settings, table: str) -> dict[int, dict[str, object]]:
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(settings.postgres_dsn, row_factory=dict_row) as conn:
        return {r["id"]: r for r in conn.execute(f"select * from {table} order by id")}


def test_every_type_round_trips_exactly(settings: Settings) -> None:
    table = "public.types_rt"
    execute(settings, f"drop table if exists {table}", ALL_TYPES.format(t=table),
            f"insert into {table} values {ROWS[0]}")
    spec = connect_tables(settings, [table], "types")
    execute(settings, f"insert into {table} values {ROWS[1]}, {ROWS[2]}")
    topic = spec.topic(table)
    events = wait_for_events(settings, topic, lambda ev: len(ev) >= 3)
    expected = _select_all(settings, table)
    decoded = {e.after["id"]: e.after for e in events if e.after}
    assert set(decoded) == {1, 2, 3}
    for key, row in expected.items():
        got = decoded[key]
        for column, value in row.items():
            assert got[column] == value, f"row {key} column {column}: {got[column]!r} != {value!r}"
            assert type(got[column]) is type(value), f"row {key} column {column} type"
    # numeric keeps its scale, not just its value
    assert str(decoded[1]["n"]) == "12.300"
    assert str(decoded[2]["free"]) == "123456789012345678901234567890.123456789"
    # NULL in a column with a default must stay NULL, and JSON 'null' is not SQL NULL
    assert decoded[3]["vc"] is None
    assert decoded[3]["j"] is None or decoded[3]["j"] == expected[3]["j"]
    assert [e.op for e in events] == ["r", "c", "c"]


def test_insert_update_delete_truncate_and_key_change(settings: Settings) -> None:
    table = "public.ops"
    execute(settings, f"drop table if exists {table}",
            f"create table {table} (id int primary key, v text)",
            f"alter table {table} replica identity full")
    spec = connect_tables(settings, [table], "ops")
    execute(
        settings,
        f"insert into {table} values (1, 'a'), (2, 'b')",
        f"update {table} set v = 'a2' where id = 1",
        f"delete from {table} where id = 2",
        f"update {table} set id = 10 where id = 1",
        f"truncate {table}",
        f"insert into {table} values (5, 'after truncate')",
    )
    events = wait_for_events(settings, spec.topic(table),
                             lambda ev: any(e.op == "c" and e.key == {"id": 5} for e in ev))
    summary = [(e.op, e.key, e.tombstone) for e in events]
    assert summary == [
        ("c", {"id": 1}, False),
        ("c", {"id": 2}, False),
        ("u", {"id": 1}, False),
        ("d", {"id": 2}, False),
        ("x", {"id": 2}, True),
        # a primary-key change is a delete of the old key, a tombstone, an insert
        ("d", {"id": 1}, False),
        ("x", {"id": 1}, True),
        ("c", {"id": 10}, False),
        ("t", None, False),
        ("c", {"id": 5}, False),
    ]
    update = events[2]
    assert update.before == {"id": 1, "v": "a"} and update.after == {"id": 1, "v": "a2"}
    assert events[3].before == {"id": 2, "v": "b"} and events[3].after is None
    # offsets are contiguous and every non-tombstone event carries its source position
    assert [e.offset for e in events] == list(range(len(events)))
    for e in events:
        if not e.tombstone:
            assert e.lsn and e.txid and e.commit_time is not None
            assert e.commit_time.tzinfo is not None
    # the statements in one transaction share a transaction id; separate ones differ
    assert events[0].txid == events[1].txid
    assert events[2].txid != events[0].txid
    # the key change happened in one source transaction
    assert events[5].txid == events[7].txid
    assert read_events(settings, spec.topic(table))[-1].after == {"id": 5, "v": "after truncate"}
