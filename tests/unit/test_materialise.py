"""Materialisation equals a trivial per-event replay, and incremental equals full."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from polars.testing import assert_frame_equal

from snapshotter.materialise import KEY, key_expr, materialise, plan_materialise
from tidelog.errors import ArchiveError, SnapshotError

DTYPES: dict[str, pl.DataType] = {
    "id": pl.Int64(),
    "a": pl.Int32(),
    "b": pl.String(),
    "c": pl.Float64(),
    "d": pl.Boolean(),
}
OPTIONAL = ["a", "b", "c", "d"]
META_SCHEMA: dict[str, pl.DataType] = {
    "__partition": pl.Int32(),
    "__offset": pl.Int64(),
    "__op": pl.String(),
    "__key": pl.String(),
    "__lsn": pl.Int64(),
}


@dataclass
class Event:
    partition: int
    offset: int
    op: str
    key: int | None
    after: dict[str, Any] | None
    columns: tuple[str, ...] = ()  # data columns of the segment holding the event

    def key_text(self, keyed: bool) -> str | None:
        if not keyed or self.key is None:
            return None
        return json.dumps({"id": self.key}, separators=(",", ":"))


@dataclass
class History:
    keyed: bool
    events: list[Event]  # in (partition, offset) order
    segments: list[list[Event]] = field(default_factory=list)


def segment_frame(events: Sequence[Event], columns: Sequence[str], keyed: bool) -> pl.DataFrame:
    """One archive segment: metadata columns plus the typed after image."""
    data: dict[str, list[Any]] = {
        "__partition": [e.partition for e in events],
        "__offset": [e.offset for e in events],
        "__op": [e.op for e in events],
        "__key": [e.key_text(keyed) for e in events],
        "__lsn": [e.offset * 8 for e in events],
    }
    for name in columns:
        data[name] = [(e.after or {}).get(name) for e in events]
    schema = {**META_SCHEMA, **{n: DTYPES[n] for n in columns}}
    return pl.DataFrame(data, schema=schema)


def frames(history: History) -> list[pl.DataFrame]:
    return [
        segment_frame(seg, seg[0].columns if seg else ("id",), history.keyed)
        for seg in history.segments
    ]


def replay(history: History) -> tuple[list[str], list[dict[str, Any]]]:
    """The obviously-correct model: a dict of rows, one event at a time."""
    rows: dict[int, dict[str, Any]] = {}
    keyless: list[dict[str, Any]] = []
    columns: tuple[str, ...] | None = None
    for ev in history.events:
        if columns is not None:
            for gone in set(columns) - set(ev.columns):  # ALTER TABLE … DROP COLUMN
                for row in [*rows.values(), *keyless]:
                    row.pop(gone, None)
        columns = ev.columns
        key = ev.key if history.keyed else None
        if ev.op in "rcu":
            assert ev.after is not None
            image = {c: ev.after.get(c) for c in ev.columns}
            if key is None:
                keyless.append(image)
            else:
                rows[key] = image
        elif ev.op in "dx":
            if key is not None:
                rows.pop(key, None)
        elif ev.op == "t":
            rows.clear()
            keyless.clear()
    out = list(columns or ())
    return out, [{c: r.get(c) for c in out} for r in [*rows.values(), *keyless]]


def as_multiset(rows: list[dict[str, Any]], columns: list[str]) -> Counter[str]:
    return Counter(repr(tuple(r[c] for c in columns)) for r in rows)


values = {
    "a": st.none() | st.integers(-(2**31), 2**31 - 1),
    "b": st.none() | st.text(max_size=6) | st.sampled_from(["", "NULL", 'x"y', "a\\b"]),
    "c": st.none() | st.floats(allow_nan=False, width=64),
    "d": st.none() | st.booleans(),
}


@st.composite
def histories(draw: st.DrawFn, *, partitions: int = 1) -> History:
    keyed = draw(st.booleans()) if partitions == 1 else True
    n_keys = draw(st.integers(1, 6))
    actions = draw(
        st.lists(
            st.sampled_from(["upsert"] * 5 + ["delete", "tombstone", "rekey"] + ["truncate"]),
            max_size=40,
        )
    )
    next_offset = {p: draw(st.integers(0, 5)) for p in range(partitions)}
    events: list[Event] = []

    def emit(op: str, key: int | None, after: dict[str, Any] | None, part: int = 0) -> None:
        events.append(Event(part, next_offset[part], op, key, after))
        next_offset[part] += draw(st.integers(1, 3))  # offsets have gaps (tx markers)

    def image(key: int) -> dict[str, Any]:
        return {"id": key, **{c: draw(values[c]) for c in OPTIONAL}}

    for action in actions:
        key = draw(st.integers(0, n_keys - 1))
        part = key % partitions
        if action == "upsert":
            emit(draw(st.sampled_from("rcu")), key, image(key), part)
        elif action in ("delete", "tombstone"):
            emit("d", key, None, part)
            if action == "tombstone":
                emit("x", key, None, part)
        elif action == "rekey":  # Debezium: delete + tombstone of the old key, create new
            new = draw(st.integers(0, n_keys + 2))
            emit("d", key, None, part)
            emit("x", key, None, part)
            emit("c", new, image(new), new % partitions)
        elif partitions == 1:
            emit("t", None, None)
    events.sort(key=lambda e: (e.partition, e.offset))

    # Split each partition's run into segments; each segment has its own column set.
    segments: list[list[Event]] = []
    for p in range(partitions):
        run = [e for e in events if e.partition == p]
        cuts = sorted(draw(st.lists(st.integers(0, len(run)), max_size=4)))
        for lo, hi in zip([0, *cuts], [*cuts, len(run)], strict=True):
            cols = ("id", *(c for c in OPTIONAL if draw(st.booleans())))
            seg = run[lo:hi]
            for e in seg:
                e.columns = cols
            keep_if_empty: bool = draw(st.booleans())
            if seg or keep_if_empty:
                segments.append(seg)
    segments = segments or [[]]  # an archive asked for a table has at least one segment
    return History(keyed, events, segments)


def check_against_replay(history: History, result: pl.DataFrame) -> None:
    columns, rows = replay(history)
    if history.events:
        assert result.columns == columns
    assert as_multiset(result.to_dicts(), result.columns) == as_multiset(rows, result.columns)
    if history.keyed and "id" in result.columns and len(result) > 1:
        assert result["id"].is_sorted()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_materialise_equals_replay(history: History) -> None:
    keys = ["id"] if history.keyed else None
    check_against_replay(history, materialise(frames(history), keys))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(partitions=3))
def test_materialise_multi_partition_equals_replay(history: History) -> None:
    check_against_replay(history, materialise(frames(history), ["id"]))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.randoms(use_true_random=False))
def test_segment_order_and_engine_do_not_matter(history: History, rnd: Any) -> None:
    keys = ["id"] if history.keyed else None
    full = materialise(frames(history), keys)
    shuffled = frames(history)
    rnd.shuffle(shuffled)
    assert_frame_equal(materialise(shuffled, keys, engine="streaming"), full)


Split = tuple[list[pl.DataFrame], list[pl.DataFrame], dict[int, int]]


def split(history: History, at: int) -> Split:
    """Frames of events before index `at`, frames from it on, and the base position."""
    before = {id(e) for e in history.events[:at]}
    head = [[e for e in seg if id(e) in before] for seg in history.segments]
    tail = [[e for e in seg if id(e) not in before] for seg in history.segments]
    columns = [seg[0].columns if seg else ("id",) for seg in history.segments]
    position: dict[int, int] = {}
    for e in history.events[:at]:
        position[e.partition] = e.offset + 1
    return (
        [segment_frame(s, c, history.keyed) for s, c in zip(head, columns, strict=True)],
        [segment_frame(s, c, history.keyed) for s, c in zip(tail, columns, strict=True)],
        position,
    )


def check_incremental(history: History, at: int) -> None:
    keys = ["id"] if history.keyed else None
    full = materialise(frames(history), keys, keep_key=True)
    prefix, suffix, position = split(history, at)
    base = materialise(prefix, keys, keep_key=True)
    # the whole archive, skipping what the base has …
    assert_frame_equal(
        materialise(frames(history), keys, base=base, base_position=position, keep_key=True),
        full,
    )
    # … or only the new events
    assert_frame_equal(materialise(suffix, keys, base=base, keep_key=True), full)
    if history.keyed:  # a base without __key gets it rebuilt from the key column
        assert_frame_equal(materialise(suffix, keys, base=base.drop(KEY)), full.drop(KEY))
        # … whose name can also be read from the events' __key payload
        assert_frame_equal(materialise(suffix, base=base.drop(KEY)), full.drop(KEY))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.data())
def test_incremental_equals_full(history: History, data: st.DataObject) -> None:
    check_incremental(history, data.draw(st.integers(0, len(history.events))))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(partitions=2), st.data())
def test_incremental_equals_full_multi_partition(history: History, data: st.DataObject) -> None:
    check_incremental(history, data.draw(st.integers(0, len(history.events))))


# --- explicit small cases -------------------------------------------------------------


def ev(rows: list[tuple[int, str, int | None, str | None]], partition: int = 0) -> pl.DataFrame:
    """Events (offset, op, id, v) for table (id bigint primary key, v text)."""
    return pl.DataFrame(
        {
            "__partition": [partition] * len(rows),
            "__offset": [r[0] for r in rows],
            "__op": [r[1] for r in rows],
            "__key": [None if r[1] == "t" else f'{{"id":{r[2]}}}' for r in rows],
            "id": [r[2] if r[1] in "rcu" else None for r in rows],
            "__lsn": [r[0] * 8 for r in rows],
            "v": [r[3] for r in rows],
        },
        schema={**META_SCHEMA, "id": pl.Int64, "v": pl.String},
    )


def test_upsert_update_delete_tombstone() -> None:
    got = materialise(
        ev(
            [
                (0, "r", 1, "a"),
                (1, "r", 2, "b"),
                (2, "u", 1, "a2"),
                (3, "d", 2, None),
                (4, "x", 2, None),
                (5, "c", 3, "c"),
            ]
        ),
        ["id"],
    )
    assert got.to_dicts() == [{"id": 1, "v": "a2"}, {"id": 3, "v": "c"}]


def test_primary_key_change_is_delete_plus_create() -> None:
    got = materialise(
        ev([(0, "c", 1, "a"), (1, "d", 1, None), (2, "x", 1, None), (3, "c", 7, "a")]), ["id"]
    )
    assert got.to_dicts() == [{"id": 7, "v": "a"}]


def test_truncate_removes_earlier_keys_only() -> None:
    got = materialise(
        ev([(0, "c", 1, "a"), (1, "c", 2, "b"), (2, "t", None, None), (3, "u", 2, "b2")]),
        ["id"],
    )
    assert got.to_dicts() == [{"id": 2, "v": "b2"}]


def test_truncate_on_multi_partition_input_is_rejected() -> None:
    p0 = ev([(0, "c", 1, "a"), (1, "t", None, None)])
    p1 = ev([(0, "c", 2, "b")], partition=1)
    with pytest.raises(SnapshotError, match="multi-partition"):
        materialise([p0, p1], ["id"])


def test_unknown_op_is_rejected() -> None:
    with pytest.raises(SnapshotError, match="unknown change operations"):
        materialise(ev([(0, "m", 1, "a")]), ["id"])


def test_out_of_order_rows_are_sorted_by_position() -> None:
    got = materialise(ev([(5, "u", 1, "late"), (1, "c", 1, "early")]), ["id"])
    assert got.to_dicts() == [{"id": 1, "v": "late"}]


def test_schema_evolution_add_and_drop() -> None:
    old = ev([(0, "c", 1, "a"), (1, "c", 2, "b")])
    new = pl.DataFrame(
        {
            "__partition": [0],
            "__offset": [2],
            "__op": ["u"],
            "__key": ['{"id":2}'],
            "id": [2],
            "__lsn": [16],
            "w": [9.5],
        },
        schema={**META_SCHEMA, "id": pl.Int64, "w": pl.Float64},
    )
    got = materialise([old, new], ["id"])
    # v was dropped; w is null for the row last written before it existed
    assert got.to_dicts() == [{"id": 1, "w": None}, {"id": 2, "w": 9.5}]


def test_dropped_then_readded_column_does_not_resurrect_old_values() -> None:
    s1 = ev([(0, "c", 1, "old")])
    s2 = ev([(1, "c", 2, None)]).drop("v")
    s3 = ev([(2, "c", 3, "new")])
    got = materialise([s1, s2, s3], ["id"])
    assert got.to_dicts() == [
        {"id": 1, "v": None},
        {"id": 2, "v": None},
        {"id": 3, "v": "new"},
    ]


def test_type_widening_casts_older_values() -> None:
    s1 = ev([(0, "c", 1, "a")]).with_columns(n=pl.lit(7, pl.Int32))
    s2 = ev([(1, "c", 2, "b")]).with_columns(n=pl.lit(2**40, pl.Int64))
    got = materialise([s1, s2], ["id"])
    assert got.schema["n"] == pl.Int64
    assert got["n"].to_list() == [7, 2**40]


def test_impossible_type_change_is_a_snapshot_error() -> None:
    s1 = ev([(0, "c", 1, "a")]).with_columns(n=pl.lit("abc"))
    s2 = ev([(1, "c", 2, "b")]).with_columns(n=pl.lit(5, pl.Int64))
    with pytest.raises(SnapshotError, match="cast"):
        materialise([s1, s2], ["id"])


def test_values_a_type_change_replaced_are_not_cast() -> None:
    """ALTER COLUMN v TYPE int USING length(v), then the DDL refresh re-reads every row:
    the old text values are superseded, so they never meet the new type."""
    old = ev([(0, "r", 1, "abc"), (1, "r", 2, "hello"), (2, "c", 3, "x"), (3, "d", 3, None)])
    refreshed = ev([(4, "r", 1, None), (5, "r", 2, None)]).with_columns(
        v=pl.Series([3, 5], dtype=pl.Int32))
    got = materialise([old, refreshed], ["id"])
    assert got.schema["v"] == pl.Int32 and got.rows() == [(1, 3), (2, 5)]
    # incremental: a base built before the change, with the same keys replaced
    base = materialise([old], ["id"], keep_key=True)
    again = materialise([refreshed], ["id"], base=base, base_position={0: 4})
    assert again.rows() == [(1, 3), (2, 5)]
    # a key the refresh has not reached yet keeps its old value: that cast still fails
    with pytest.raises(SnapshotError, match="cast"):
        materialise([old, refreshed.head(1)], ["id"])
    with pytest.raises(SnapshotError, match="cast"):
        materialise([refreshed.head(1)], ["id"], base=base, base_position={0: 4})


def test_keyless_table_is_append_only() -> None:
    events = ev([(0, "c", 1, "a"), (1, "c", 1, "a"), (2, "d", 1, None)]).with_columns(
        __key=pl.lit(None, pl.String)
    )
    got = materialise(events, None)
    assert got.to_dicts() == [{"id": 1, "v": "a"}, {"id": 1, "v": "a"}]


def test_accepts_arrow_tables_and_empty_input() -> None:
    table: pa.Table = ev([(0, "c", 1, "a")]).to_arrow()
    assert materialise(table, ["id"]).to_dicts() == [{"id": 1, "v": "a"}]
    assert materialise([], None).shape == (0, 0)
    empty = materialise(ev([]), ["id"])
    assert empty.shape == (0, 2) and empty.columns == ["id", "v"]


def test_base_position_skips_events_already_in_base() -> None:
    events = ev([(0, "c", 1, "a"), (1, "c", 2, "b"), (2, "d", 1, None)])
    base = materialise(events.head(2), ["id"], keep_key=True)
    got = materialise(events, ["id"], base=base, base_position={0: 2})
    assert got.to_dicts() == [{"id": 2, "v": "b"}]
    with pytest.raises(ValueError):
        plan_materialise(events, ["id"], base_position={0: 2})


def test_key_expr_matches_canonical_json() -> None:
    frame = pl.DataFrame(
        {"tenant": ["a\"b\\c\n\x01é😀", "x"], "id": [5, -1], "ok": [True, None]}
    )
    got = frame.select(key_expr(["tenant", "id", "ok"]))[KEY].to_list()
    expected = [
        json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        for r in frame.to_dicts()
    ]
    assert got == expected


@settings(max_examples=200, deadline=None)
@given(st.text(), st.integers(-(2**63), 2**63 - 1))
def test_key_expr_matches_json_dumps_for_any_text(text: str, number: int) -> None:
    frame = pl.DataFrame({"s": [text], "n": [number]}, schema={"s": pl.String, "n": pl.Int64})
    expected = json.dumps(
        {"n": number, "s": text}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert frame.select(key_expr(["s", "n"]))[KEY][0] == expected


def test_base_without_key_needs_key_safe_types() -> None:
    events = ev([(0, "c", 1, "a")]).with_columns(
        ts=pl.lit(0).cast(pl.Datetime("us", "UTC"))
    )
    base = materialise(events, ["ts"])
    with pytest.raises(SnapshotError, match="cannot rebuild __key"):
        materialise(events.clear(), ["ts"], base=base)


def test_key_columns_are_inferred_from_key_payload() -> None:
    events = ev([(0, "c", 2, "b"), (1, "c", 1, "a"), (2, "u", 2, "b2")])
    assert_frame_equal(materialise(events), materialise(events, ["id"]))
    assert materialise(events)["id"].to_list() == [1, 2]


def test_unreadable_segment_is_an_archive_error(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="could not read"):
        materialise([pl.scan_parquet(tmp_path / "missing.parquet")], ["id"])


# --- Debezium's unavailable-value placeholder: only where Debezium could have sent it ---


def _with_before(frame: pl.DataFrame, before: list[str | None]) -> pl.DataFrame:
    return frame.with_columns(pl.Series("__before", before, dtype=pl.String))


def test_placeholder_in_an_update_is_the_previous_value() -> None:
    from snapshotter.materialise import UNAVAILABLE

    events = _with_before(ev([(0, "r", 1, "big"), (1, "u", 1, UNAVAILABLE)]), [None, None])
    assert materialise(events, ["id"]).to_dicts() == [{"id": 1, "v": "big"}]


def test_placeholder_text_written_by_an_insert_is_data() -> None:
    from snapshotter.materialise import UNAVAILABLE

    # the key had an earlier life: its old value must not come back
    events = _with_before(ev([(0, "c", 1, "old"), (1, "d", 1, None), (2, "x", 1, None),
                              (3, "c", 1, UNAVAILABLE)]), [None] * 4)
    assert materialise(events, ["id"]).to_dicts() == [{"id": 1, "v": UNAVAILABLE}]


def test_placeholder_text_in_an_update_with_a_before_image_is_data() -> None:
    from snapshotter.materialise import UNAVAILABLE

    # REPLICA IDENTITY FULL: Debezium had the old value, so it never sends the placeholder
    events = _with_before(ev([(0, "r", 1, "old"), (1, "u", 1, UNAVAILABLE)]),
                          [None, '{"id":1,"v":"old"}'])
    assert materialise(events, ["id"]).to_dicts() == [{"id": 1, "v": UNAVAILABLE}]
