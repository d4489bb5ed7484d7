"""Row hashes at archive time (docs/digest.md, "Row hashes at archive time"): the archiver
hashes each table event's row once, a full build sums the hashes of the rows that survive
instead of hashing its files, and wherever a row is not exactly its event's (a base row,
a TOAST fill, a changed schema, an archive from before row hashes) or a sample of the
file disagrees, the file is hashed as before. Verify and rebuild always hash content."""

from __future__ import annotations

import datetime as dt
import decimal
import json
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import snapshotter.table_files as table_files
from cdc.columns import METADATA_COLUMNS, ROW_HASH, ROW_HASH_TYPE, SALT, with_salts
from snapshotter.archive import Archive
from snapshotter.cut import Cut, PartitionCut
from snapshotter.digest import ContentSum, content_sum, table_digest
from snapshotter.layout import visible_sql
from snapshotter.row_hashes import SAMPLE_HEAD, stored_sum, with_row_hashes
from snapshotter.snapshots import create_snapshot, rebuild_snapshot
from snapshotter.verify import verify_snapshot
from tests.unit.test_row_salts import archived_segments
from tests.unit.test_snapshot_layout import IDENTITY, PREFIX, History
from tests.unit.test_snapshot_layout import _settings as layout_settings
from tidelog.settings import Settings

TABLE = "public.items"
TOPIC = f"{PREFIX}.{TABLE}"


def _typed_rows(n: int) -> pa.Table:
    """Data columns of many source types, with nulls, as events_to_arrow types them."""
    def maybe(i: int, value: object) -> object:
        return None if i % 7 == 3 else value
    return pa.table({
        "id": pa.array(range(n), pa.int32()),
        "small": pa.array([maybe(i, i % 100) for i in range(n)], pa.int16()),
        "big": pa.array([maybe(i, 2**62 - i) for i in range(n)], pa.int64()),
        "ratio": pa.array([maybe(i, i / 3) for i in range(n)], pa.float64()),
        "single": pa.array([maybe(i, i / 7) for i in range(n)], pa.float32()),
        "price": pa.array([maybe(i, decimal.Decimal(i) / 1000) for i in range(n)],
                          pa.decimal128(12, 3)),
        "name": pa.array([maybe(i, f"naïve ☃ {i}") for i in range(n)], pa.string()),
        "flag": pa.array([maybe(i, i % 2 == 0) for i in range(n)], pa.bool_()),
        "day": pa.array([maybe(i, dt.date(2020, 1, 1) + dt.timedelta(days=i))
                         for i in range(n)], pa.date32()),
        "at": pa.array([maybe(i, dt.datetime(2021, 5, 6, 7, 8, 9, i))
                        for i in range(n)], pa.timestamp("us")),
        "at_tz": pa.array([maybe(i, dt.datetime(2021, 5, 6, 7, 8, 9, i, tzinfo=dt.UTC))
                           for i in range(n)], pa.timestamp("us", tz="UTC")),
        "blob": pa.array([maybe(i, bytes([i % 256, 0, 255])) for i in range(n)], pa.binary()),
        "doc": pa.array([maybe(i, json.dumps({"k": i})) for i in range(n)], pa.string()),
    })


def _events(rows: pa.Table, start: int = 0, op: str = "r") -> pa.Table:
    """`rows` as archived events (metadata columns first), one upsert per row."""
    n = rows.num_rows
    values = {
        "__partition": [0] * n, "__offset": list(range(start, start + n)), "__op": [op] * n,
        "__key": [json.dumps({"id": i}, separators=(",", ":")) for i in rows["id"].to_pylist()],
        "__lsn": [1000 + start + i for i in range(n)], "__txid": [start + i for i in range(n)],
        "__tx": [None] * n, "__ts_ms": [1_700_000_000_000] * n, "__before": [None] * n,
    }
    meta = pa.table({name: pa.array(values[name], t) for name, t in METADATA_COLUMNS})
    for name in rows.column_names:
        meta = meta.append_column(rows.schema.field(name), rows[name])
    return meta


def _write(settings: Settings, events: pa.Table, start: int, end: int) -> None:
    archive = Archive(settings.archive_root)
    generation = archive.open_generation(TOPIC, 0, IDENTITY).number
    archive.write_segment(TOPIC, 0, generation, start, end, events)


def _cut(end: int) -> Cut:
    return Cut((PartitionCut(TOPIC, 0, end, 0, IDENTITY.cluster_id, IDENTITY.topic_id),),
               lsn=1000 + end)


def _no_file_hashing(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every time a build hashes its files instead of summing row hashes."""
    calls: list[str] = []
    real = table_files.table_digest

    def counting(con: duckdb.DuckDBPyConnection, relation: str):  # type: ignore[no-untyped-def]
        calls.append(relation)
        return real(con, relation)
    monkeypatch.setattr(table_files, "table_digest", counting)
    return calls


def _recomputed(settings: Settings, manifest_id: str) -> str:
    from snapshotter.snapshots import open_snapshot
    snap = open_snapshot(settings, manifest_id)
    table = snap.manifest.tables[TABLE]
    return table_digest(duckdb.connect(), visible_sql(snap.path, table, with_salt=True)).digest


def test_each_stored_row_hash_is_its_rows_digest_summand() -> None:
    events = with_row_hashes(with_salts(_events(_typed_rows(60))))
    assert events.schema.field(ROW_HASH).type == ROW_HASH_TYPE
    con = duckdb.connect()
    con.register("events", events.drop_columns([ROW_HASH]))
    data = [(str(n), str(t)) for n, t, *_ in con.execute(
        "describe select * from events").fetchall() if not str(n).startswith("__")]
    hashes = events[ROW_HASH].to_pylist()
    for i in (0, 3, 59):  # row 3 has nulls in every nullable column
        con.register("one", events.slice(i, 1).drop_columns([ROW_HASH]))
        one = content_sum(con, "one", data)
        assert (hashes[i]["hi"], hashes[i]["lo"]) == (one.hi, one.lo)
    whole = content_sum(con, "events", data)
    assert sum(h["hi"] for h in hashes) % 2**64 == whole.hi
    assert sum(h["lo"] for h in hashes) % 2**64 == whole.lo
    with pytest.raises(ValueError, match="already set"):
        with_row_hashes(events)


def test_the_archiver_hashes_table_events_and_not_the_transaction_topic(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table_segment, tx_segment, events = archived_segments(tmp_path, monkeypatch)
    hashes = pq.read_table(table_segment)[ROW_HASH].to_pylist()
    assert len(hashes) == events and None not in hashes
    assert len({(h["hi"], h["lo"]) for h in hashes}) == events
    assert ROW_HASH not in pq.read_schema(tx_segment).names


def test_a_full_build_sums_stored_hashes_to_the_content_digest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = layout_settings(tmp_path)
    rows = _typed_rows(400)
    _write(settings, with_row_hashes(with_salts(_events(rows))), 0, 400)
    updated = rows.slice(0, 50).set_column(6, "name", pa.array(["changed"] * 50))
    _write(settings, with_row_hashes(with_salts(_events(updated, 400, "u"))), 400, 450)
    calls = _no_file_hashing(monkeypatch)
    manifest = create_snapshot(settings, [TABLE], _cut(450), catch_up=False,
                               incremental=False)
    assert calls == []  # no file was hashed: the stored hashes gave the digest
    table = manifest.tables[TABLE]
    assert table.rows == 400 and ROW_HASH not in pq.read_schema(
        Path(settings.snapshot_root) / manifest.id / table.files[0]).names
    assert _recomputed(settings, manifest.id) == table.digest
    assert verify_snapshot(settings, manifest.id).ok
    # a rebuild proves the digest from the content, not from the stored hashes
    rebuilt = rebuild_snapshot(settings, manifest.cut, [TABLE], tmp_path / "rebuild")
    assert len(calls) == 1 and rebuilt.tables[TABLE].digest == table.digest


def test_rows_not_exactly_their_events_are_hashed_from_the_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = layout_settings(tmp_path)
    history = History(settings, TABLE).seed(30)
    history.flush()
    history.event("u", 1, v=1.5, name="n1", extra="new column")  # the schema changed
    calls = _no_file_hashing(monkeypatch)
    manifest = create_snapshot(settings, [TABLE], history.cut(), catch_up=False,
                               incremental=False)
    assert len(calls) == 1  # older events lack `extra`: their hashes do not count
    assert _recomputed(settings, manifest.id) == manifest.tables[TABLE].digest


def test_an_archive_from_before_row_hashes_is_hashed_from_the_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = layout_settings(tmp_path)
    _write(settings, with_salts(_events(_typed_rows(40))), 0, 40)
    calls = _no_file_hashing(monkeypatch)
    manifest = create_snapshot(settings, [TABLE], _cut(40), catch_up=False)
    assert len(calls) == 1
    assert _recomputed(settings, manifest.id) == manifest.tables[TABLE].digest


def test_a_forged_hash_in_the_sample_falls_back_to_the_content(tmp_path: Path) -> None:
    rows = _typed_rows(SAMPLE_HEAD + 200)
    events = with_row_hashes(with_salts(_events(rows)))
    state = pl.from_arrow(events.drop_columns(
        [n for n, _ in METADATA_COLUMNS if n != "__key"]))
    assert isinstance(state, pl.DataFrame)
    hashes, state = state.get_column(ROW_HASH), state.drop(ROW_HASH)
    path = tmp_path / "data.parquet"
    state.write_parquet(path)
    con = duckdb.connect()
    relation = f"(select * exclude (__key) from read_parquet('{path}'))"
    columns = [(str(n), str(t)) for n, t, *_ in con.execute(
        f"describe select * from {relation}").fetchall() if n != SALT]
    truth = content_sum(con, relation, columns)
    assert stored_sum(con, path, hashes, state) == truth

    def forged(row: int) -> pl.Series:
        return pl.Series(ROW_HASH, [{"hi": 1, "lo": 2} if i == row else h
                                    for i, h in enumerate(hashes.to_list())], hashes.dtype)
    assert stored_sum(con, path, forged(5), state) is None  # sampled: caught
    # outside the sample a forged hash is the archive's word: verify and rebuild, which
    # hash content, are what catch it (the segment checksums guard the archive itself)
    unsampled = forged(SAMPLE_HEAD + 150)
    assert stored_sum(con, path, unsampled, state) not in (None, truth)
    with_null = pl.Series(ROW_HASH, [None, *hashes.to_list()[1:]], hashes.dtype)
    assert stored_sum(con, path, with_null, state) is None


def test_a_layered_build_hashes_replaced_and_changed_rows_in_one_scan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A layered build's change is small (at most COMPACT_FRACTION of the table): its
    rows are hashed from content, the base's replaced rows and the new ones in one query,
    and the derived digest is the full build's."""
    import snapshotter.layered_build as layered_build
    settings = layout_settings(tmp_path)
    history = History(settings, TABLE).seed(200)
    create_snapshot(settings, [TABLE], history.cut(), catch_up=False)
    for key in range(5):
        history.event("u", key, v=-1.0, name=f"changed {key}")
    history.event("d", 7)
    sums: list[dict[object, ContentSum]] = []
    real = layered_build.content_sums

    def recording(*args: Any, **kwargs: Any) -> dict[object, ContentSum]:
        sums.append(real(*args, **kwargs))
        return sums[-1]
    monkeypatch.setattr(layered_build, "content_sums", recording)
    layered = create_snapshot(settings, [TABLE], history.cut(), catch_up=False)
    assert layered.tables[TABLE].layered
    assert len(sums) == 1
    assert {side: part.rows for side, part in sums[0].items()} == {0: 6, 1: 5}
    assert _recomputed(settings, layered.id) == layered.tables[TABLE].digest
    full = create_snapshot(settings, [TABLE], history.cut(), catch_up=False,
                           incremental=False)
    assert full.tables[TABLE].digest == layered.tables[TABLE].digest


def test_a_text_row_hash_column_from_an_older_archive_is_no_hash(tmp_path: Path) -> None:
    """Before tidelog refused the name, a source column could be called `__row_hash`;
    only the hash struct is taken for stored hashes."""
    settings = layout_settings(tmp_path)
    rows = _typed_rows(20)
    events = with_salts(_events(rows))
    events = events.append_column("__row_hash", pa.array(["not a hash"] * 20))
    _write(settings, events, 0, 20)
    manifest = create_snapshot(settings, [TABLE], _cut(20), catch_up=False)
    assert manifest.tables[TABLE].rows == 20
    assert _recomputed(settings, manifest.id) == manifest.tables[TABLE].digest
