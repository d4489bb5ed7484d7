"""Row salts (docs/digest.md, "Salted rows"): the archiver draws one random salt per table
event, each snapshot row keeps its event's salt, the digest hashes it with the row, and
an erasure that removes the row leaves a kept sum nobody can test a guessed row against.
An archive written before salts builds and digests exactly as it did."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdc.columns import SALT, SALT_TYPE, with_salts
from snapshotter.archive import Archive
from snapshotter.archiving import archive_topics
from snapshotter.digest import content_sum, table_digest
from snapshotter.layout import visible_sql
from snapshotter.snapshots import create_snapshot, open_snapshot
from snapshotter.verify import verify_snapshot
from tests.unit.test_archive_failures import _recorded
from tests.unit.test_erasure import TABLE as ERASED_TABLE
from tests.unit.test_erasure import _digest_sql_check, _world
from tests.unit.test_snapshot_layout import History
from tests.unit.test_snapshot_layout import _settings as layout_settings
from tidelog.settings import Settings
from trainer.erasure import erase

TABLE = "public.items"


def _salts_in(root: Path) -> set[bytes]:
    """Every salt value held by any Parquet file under `root`."""
    found: set[bytes] = set()
    for path in root.rglob("*.parquet"):
        if SALT in pq.read_schema(path).names:
            found.update(s for s in pq.read_table(path, columns=[SALT])[SALT].to_pylist() if s)
    return found


def test_with_salts_draws_sixteen_random_bytes_per_row_once() -> None:
    table = pa.table({"id": list(range(500))})
    salted = with_salts(table)
    salts = salted[SALT].to_pylist()
    assert salted.schema.field(SALT).type == SALT_TYPE and len(set(salts)) == 500
    assert all(len(s) == 16 for s in salts) and salted.drop([SALT]) == table
    assert with_salts(table)[SALT].to_pylist() != salts  # random, not derived from rows
    with pytest.raises(ValueError, match="already set"):
        with_salts(salted)


def archived_segments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                      ) -> tuple[Path, Path, int]:
    """Archive a recorded table topic and the transaction topic from a fake broker: the
    table's segment, the transaction topic's, and how many table events there were."""
    settings = Settings(home=tmp_path, bootstrap_servers="fake:9092", topic_prefix="rec",
                        archive_root=str(tmp_path / "archive"))
    broker = _recorded({"rec.public.t1": "rec.public.t1",
                        "rec.transaction": "rec.transaction"}).install(monkeypatch)
    archive_topics(settings, sorted(broker.topics))
    archive = Archive(settings.archive_root)
    [table_segment] = archive.segments("rec.public.t1", 0, 0)
    [tx_segment] = archive.segments("rec.transaction", 0, 0)
    return table_segment.path, tx_segment.path, len(broker.topics["rec.public.t1"])


def test_the_archiver_salts_table_events_and_not_the_transaction_topic(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table_segment, tx_segment, events = archived_segments(tmp_path, monkeypatch)
    rows = pq.read_table(table_segment)
    assert rows.schema.field(SALT).type == SALT_TYPE
    salts = rows[SALT].to_pylist()
    assert None not in salts and len(set(salts)) == rows.num_rows == events
    assert SALT not in pq.read_schema(tx_segment).names


def _history(tmp_path: Path, salted: bool = True) -> tuple[Settings, History]:
    settings = layout_settings(tmp_path)
    history = History(settings, TABLE, salted=salted).seed(50)
    return settings, history


def test_each_row_keeps_its_events_salt_hidden_from_readers(tmp_path: Path) -> None:
    settings, history = _history(tmp_path)
    history.flush()
    for key in (3, 4):
        history.event("u", key, v=-1.0, name=f"changed {key}")
    history.event("d", 5)
    manifest = create_snapshot(settings, [TABLE], history.cut(), catch_up=False)
    table = manifest.tables[TABLE]
    assert table.salted and SALT not in dict(table.columns)
    snap = open_snapshot(settings, manifest.id)
    # readers see the table's columns only
    assert SALT not in snap.table(TABLE).columns
    assert SALT not in [c for (c,) in snap.duckdb().execute(
        "select column_name from (describe public.items)").fetchall()]
    # each row's salt is the one its last event drew in the archive
    events = pl.concat([pl.read_parquet(s.path) for s in
                        history.archive.segments(history.topic, 0, 0)])
    last = events.filter(pl.col("__op") != "d").unique("__key", keep="last")
    rows = pl.read_parquet([snap.path / f for f in table.files])
    assert rows.height == 49
    joined = rows.join(last.select("__key", pl.col(SALT).alias("event_salt")), on="__key")
    assert joined.height == 49 and (joined[SALT] == joined["event_salt"]).all()


def test_the_digest_hashes_each_salt_with_its_row(tmp_path: Path) -> None:
    settings, history = _history(tmp_path)
    manifest = create_snapshot(settings, [TABLE], history.cut(), catch_up=False)
    table = manifest.tables[TABLE]
    directory = Path(settings.snapshot_root) / manifest.id
    con = duckdb.connect()
    salted = table_digest(con, visible_sql(directory, table, with_salt=True))
    plain = table_digest(con, visible_sql(directory, table))
    assert salted.digest == table.digest and plain.digest != table.digest
    assert salted.schema_digest == plain.schema_digest  # __salt is no column of the table
    # one salt changed, every value kept: the digest no longer matches
    [name] = table.files
    frame = pl.read_parquet(directory / name)
    forged = frame.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit(b"\0" * 16))
                                .otherwise(pl.col(SALT)).alias(SALT))
    forged.write_parquet(directory / name)
    assert table_digest(con, visible_sql(directory, table, with_salt=True)).digest \
        != table.digest
    assert table_digest(con, visible_sql(directory, table)).digest == plain.digest
    assert not verify_snapshot(settings, manifest.id).ok


def test_an_archive_from_before_salts_builds_and_digests_as_before(tmp_path: Path) -> None:
    settings, history = _history(tmp_path, salted=False)
    manifest = create_snapshot(settings, [TABLE], history.cut(), catch_up=False)
    table = manifest.tables[TABLE]
    snap = open_snapshot(settings, manifest.id)
    assert not table.salted and "row_salt" not in (snap.path / "manifest.json").read_text()
    assert SALT not in pq.read_schema(snap.path / table.files[0]).names
    con = duckdb.connect()
    con.register("rows", snap.table(TABLE).to_arrow())
    assert table_digest(con, "rows").digest == table.digest  # the unsalted definition


def test_salted_events_on_an_unsalted_base_rebuild_every_row_salted(tmp_path: Path) -> None:
    settings, history = _history(tmp_path, salted=False)
    base = create_snapshot(settings, [TABLE], history.cut(), catch_up=False)
    history.salted = True  # the archiver was upgraded
    history.event("u", 1, v=-1.0, name="after the upgrade")
    newer = create_snapshot(settings, [TABLE], history.cut(), catch_up=False)
    assert not base.tables[TABLE].salted
    table = newer.tables[TABLE]
    assert table.salted and not table.layered  # the full writer, on the base state
    rows = pl.read_parquet([Path(settings.snapshot_root) / newer.id / f for f in table.files])
    salted_keys = rows.filter(pl.col(SALT).is_not_null())["__key"].to_list()
    assert salted_keys == ['{"id":1}']  # rows from before salts keep none
    assert verify_snapshot(settings, newer.id).ok
    # and a layered build on the salted snapshot stays layered
    history.event("u", 2, v=-2.0, name="layered")
    layered = create_snapshot(settings, [TABLE], history.cut(), catch_up=False)
    assert layered.built_from == newer.id and layered.tables[TABLE].salted
    assert verify_snapshot(settings, layered.id).ok


def test_an_erased_rows_kept_sum_tests_no_guess(tmp_path: Path) -> None:
    """Without its salt, even the exact erased row does not reproduce the kept sum."""
    settings, sids = _world(tmp_path)
    sid = sids[-1]
    snap = open_snapshot(settings, sid)
    table = snap.manifest.tables[ERASED_TABLE]
    rows = pl.read_parquet([snap.path / f for f in (*table.files, *table.delta_files)])
    subject = rows.filter(pl.col("__key") == '{"id":7}').tail(1)  # the delta's row is live
    subject_salts = set(pl.concat([pl.read_parquet(s.path) for s in Archive(
        settings.archive_root).segments(f"er.{ERASED_TABLE}", 0, 0)]).filter(
        pl.col("__key") == '{"id":7}')[SALT].to_list())
    assert len(subject_salts) == 3  # its insert and its two updates
    report = erase(settings, ERASED_TABLE, {"id": 7}, "test", "tester")
    kept = open_snapshot(settings, sid).manifest.tables[ERASED_TABLE].erased[0]
    assert kept.erasure == report.erasure_id and kept.rows == 1
    con = duckdb.connect()
    con.register("guess", subject.drop("__key").to_arrow())
    columns = list(table.columns)
    with_salt = content_sum(con, "guess", columns)
    guessed = content_sum(con, "(select * exclude (__salt) from guess)", columns)
    assert with_salt.hex == kept.content_digest  # the salt is what the sum depends on
    assert guessed.hex != kept.content_digest  # the guesser, who has no salt
    # and no copy of any of the subject's salts is left anywhere tidelog writes
    assert not _salts_in(tmp_path) & subject_salts
    assert verify_snapshot(settings, sid).ok and _digest_sql_check(settings, sid)


def test_a_source_column_named_salt_in_an_old_archive_is_no_salt(tmp_path: Path) -> None:
    """Before tidelog refused it, a Postgres column `__salt` (text) could be archived: it
    is not taken for a row salt, and builds digest as they did then."""
    settings = layout_settings(tmp_path)
    history = History(settings, TABLE, salted=False)
    for key in range(20):
        history.event("r", key, v=float(key), __salt=f"user value {key}")
    manifest = create_snapshot(settings, [TABLE], history.cut(), catch_up=False)
    table = manifest.tables[TABLE]
    assert not table.salted and SALT not in dict(table.columns)
    snap = open_snapshot(settings, manifest.id)
    con = duckdb.connect()
    con.register("rows", snap.table(TABLE).to_arrow())
    assert table_digest(con, "rows").digest == table.digest
    assert verify_snapshot(settings, manifest.id).ok
