"""Snapshot layouts on a real archive directory: layered incremental builds, compaction,
key-hash buckets. Every layout must give the full build's digest, rows and row order."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import duckdb
import polars as pl
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from cdc.columns import with_salts
from cdc.reader import LogIdentity
from snapshotter import archive as archive_module
from snapshotter import full_build, layered_build
from snapshotter.archive import Archive
from snapshotter.cut import Cut, PartitionCut
from snapshotter.manifest import Manifest
from snapshotter.row_hashes import with_row_hashes
from snapshotter.snapshots import Snapshot, create_snapshot, open_snapshot, rebuild_snapshot
from snapshotter.verify import diff_snapshots, verify_snapshot
from tidelog.errors import ArchiveError, ConfigError, SnapshotError
from tidelog.settings import Settings

PREFIX = "lay"
IDENTITY = LogIdentity("cluster-a", "topic-a")
# typed like the archiver's segments, even where a segment holds only deletes
TYPES: dict[str, pl.DataType] = {
    "__partition": pl.Int32(), "__offset": pl.Int64(), "__op": pl.String(),
    "__key": pl.String(), "__lsn": pl.Int64(), "__ts_ms": pl.Int64(), "__tx": pl.String(),
    "__txid": pl.Int64(), "__before": pl.String(), "id": pl.Int64(), "v": pl.Float64(),
    "name": pl.String(), "extra": pl.String(),
}


def _settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", topic_prefix=PREFIX,
                    archive_root=str(tmp_path / "archive"),
                    snapshot_root=str(tmp_path / "snapshots"))


class History:
    """Writes archive segments for one table and keeps a last-write-wins replay (the
    replay is only meaningful for one partition, where offset order is event order)."""

    def __init__(self, settings: Settings, table: str, keyed: bool = True,
                 partitions: int = 1, salted: bool = True) -> None:
        self.archive = Archive(settings.archive_root)
        self.salted = salted  # as the archiver writes; False: an archive from before salts
        self.topic = f"{PREFIX}.{table}"
        self.table = table
        self.keyed = keyed
        self.generations = {p: self.archive.open_generation(self.topic, p, IDENTITY).number
                            for p in range(partitions)}
        self.offsets = {p: 0 for p in range(partitions)}
        self.pending: dict[int, list[dict[str, object]]] = {p: [] for p in range(partitions)}
        self.state: dict[int, dict[str, object]] = {}
        self.keyless: list[dict[str, object]] = []
        self.columns: list[str] = []

    def seed(self, keys: int, rng: random.Random | None = None) -> History:
        """The table's initial rows, as Debezium's snapshot (`r` events) delivers them."""
        for key in range(keys):
            self.event("r", key, v=rng.random() if rng else float(key), name=f"n{key}")
        return self

    @property
    def offset(self) -> int:
        return sum(self.offsets.values())

    def event(self, op: str, key: int | None, partition: int = 0, **values: object) -> None:
        upsert = op in "rcu"
        offset = self.offsets[partition]
        record: dict[str, object] = {
            "__partition": partition, "__offset": offset, "__op": op,
            "__key": (json.dumps({"id": key}, separators=(",", ":"))
                      if self.keyed and op != "t" else None),
            "__lsn": 1000 + offset, "__ts_ms": 1_700_000_000_000 + offset,
            "__tx": None, "__txid": offset, "__before": None,
            "id": key if upsert else None,
        }
        if values:
            self.columns = list(values)
        for name in self.columns:  # a truncate's envelope describes the columns too
            record[name] = values.get(name) if upsert else None
        self.pending[partition].append(record)
        self.offsets[partition] += 1
        if not self.keyed:
            self.keyless.append({"id": key, **values})
        elif op == "t":
            self.state.clear()
        elif upsert:
            assert key is not None
            self.state[key] = {"id": key, **values}
        else:
            assert key is not None
            self.state.pop(key, None)

    def flush(self) -> None:
        """Write the pending events as one segment per partition."""
        for partition, rows in self.pending.items():
            if not rows:
                continue
            columns = {name for row in rows for name in row}
            types = {name: t for name, t in TYPES.items() if name in columns}
            frame = pl.DataFrame(rows, schema_overrides=types)
            end = self.offsets[partition]
            # as the archiver writes: salted, then hashed (an archive from before: neither)
            table = (with_row_hashes(with_salts(frame.to_arrow())) if self.salted
                     else frame.to_arrow())
            self.archive.write_segment(self.topic, partition, self.generations[partition],
                                       end - len(rows), end, table)
            self.pending[partition] = []

    def cut(self) -> Cut:
        self.flush()
        return Cut(tuple(PartitionCut(self.topic, p, end, 0, IDENTITY.cluster_id,
                                      IDENTITY.topic_id) for p, end in self.offsets.items()),
                   lsn=1000 + self.offset)


def _random_changes(history: History, rng: random.Random, n: int, keys: int) -> None:
    for _ in range(n):
        key = rng.randrange(keys)
        op = rng.choice("cuuuudx")
        history.event(op, key, v=rng.random(), name=f"n{rng.randrange(100)}")


def _full(settings: Settings, tmp_path: Path, cut: Cut, tables: list[str]
          ) -> tuple[Manifest, Snapshot]:
    into = tmp_path / "rebuilt"
    manifest = rebuild_snapshot(settings, cut, tables, into)
    return manifest, Snapshot(manifest, into / manifest.id)


def _assert_same_as_full(settings: Settings, tmp_path: Path, manifest: Manifest) -> None:
    full, full_snap = _full(settings, tmp_path, manifest.cut, sorted(manifest.tables))
    assert manifest.digest == full.digest
    snap = open_snapshot(settings, manifest.id)
    for name, table in manifest.tables.items():
        assert table.rows == full.tables[name].rows
        assert table.content_digest == full.tables[name].content_digest
        assert snap.table(name).equals(full_snap.table(name))  # same rows, same order
    assert verify_snapshot(settings, manifest.id).ok


def test_layered_chain_equals_full_builds(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    history = History(settings, "public.items")
    rng = random.Random(11)
    history.seed(2000, rng)
    first = create_snapshot(settings, ["public.items"], history.cut(), catch_up=False)
    assert first.built_from == "full"
    previous = first
    for _ in range(4):  # about 1% of the keys each time; the delta stays below 10%
        _random_changes(history, rng, 15, 2000)
        history.flush()
        _random_changes(history, rng, 5, 2000)
        manifest = create_snapshot(settings, ["public.items"], history.cut(), catch_up=False)
        table = manifest.tables["public.items"]
        assert manifest.built_from == previous.id
        assert table.delete_files and table.delta_files, "a 1% change must not rewrite"
        # the unchanged data files are shared with the first snapshot, not rewritten
        assert table.files == first.tables["public.items"].files
        shared = Path(settings.snapshot_root) / manifest.id / table.files[0]
        original = Path(settings.snapshot_root) / first.id / table.files[0]
        assert shared.stat().st_ino == original.stat().st_ino
        _assert_same_as_full(settings, tmp_path, manifest)
        replay = pl.DataFrame(sorted(history.state.values(), key=lambda r: r["id"]))
        got = open_snapshot(settings, manifest.id).table("public.items")
        assert got.select("id", "v", "name").equals(replay.select("id", "v", "name"))
        previous = manifest

    # The catalog view, diff and DuckDB connection read the layered table too.
    con = duckdb.connect(str(settings.home / "catalog.duckdb"), read_only=True)
    count = con.execute(f"select count(*) from snap_{previous.id}.items").fetchone()
    assert count == (len(history.state),)
    diff = diff_snapshots(settings, first.id, previous.id).tables["public.items"]
    assert diff.inserted + diff.updated + diff.deleted > 0
    view = open_snapshot(settings, previous.id).duckdb()
    assert view.execute("select count(*) from public.items").fetchone() == count

    # Deleting the base snapshot does not break the snapshots sharing its files.
    import shutil

    shutil.rmtree(Path(settings.snapshot_root) / first.id)
    assert verify_snapshot(settings, previous.id).ok


def test_a_layered_build_surveys_its_events_once(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The metadata pre-pass that gives the event count, columns and operations is the
    one `materialise` plans with, not made again (nor the count and the operations read
    by queries of their own)."""
    from snapshotter import survey

    settings = _settings(tmp_path)
    history = History(settings, "public.items")
    rng = random.Random(5)
    history.seed(500, rng)
    create_snapshot(settings, ["public.items"], history.cut(), catch_up=False)
    _random_changes(history, rng, 20, 500)
    history.flush()
    _random_changes(history, rng, 5, 500)  # two segments
    surveys: list[int] = []
    unchecked = survey._survey_unchecked

    def counted(frames: list[pl.LazyFrame], keep: pl.Expr) -> list[survey.Segment]:
        surveys.append(len(frames))
        return unchecked(frames, keep)

    planned_with: list[object] = []
    materialise = layered_build.materialise

    def recorded(*args: object, **kwargs: object) -> pl.DataFrame:
        planned_with.append(kwargs.get("surveyed"))
        return materialise(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(survey, "_survey_unchecked", counted)
    monkeypatch.setattr(layered_build, "materialise", recorded)
    manifest = create_snapshot(settings, ["public.items"], history.cut(), catch_up=False)
    assert manifest.tables["public.items"].layered
    assert surveys == [2]
    assert len(planned_with) == 1 and planned_with[0] is not None
    monkeypatch.undo()
    _assert_same_as_full(settings, tmp_path, manifest)


def test_delta_past_threshold_is_compacted(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(tmp_path)
    history = History(settings, "public.items")
    rng = random.Random(3)
    history.seed(200)
    create_snapshot(settings, ["public.items"], history.cut(), catch_up=False)
    monkeypatch.setattr(layered_build, "COMPACT_FRACTION", 0.05)
    _random_changes(history, rng, 40, 200)  # ~20% of keys: past the threshold
    manifest = create_snapshot(settings, ["public.items"], history.cut(), catch_up=False)
    table = manifest.tables["public.items"]
    assert not table.delete_files and not table.delta_files
    _assert_same_as_full(settings, tmp_path, manifest)


@pytest.mark.parametrize("change", ["added_column", "truncate"])
def test_schema_change_or_truncate_rewrites_the_table(tmp_path: Path, change: str) -> None:
    settings = _settings(tmp_path)
    history = History(settings, "public.items")
    history.seed(100)
    create_snapshot(settings, ["public.items"], history.cut(), catch_up=False)
    if change == "truncate":
        history.event("t", None)
        history.event("c", 5, v=5.0, name="after")
    else:
        history.event("u", 3, v=3.5, name="y", extra="new column")
    manifest = create_snapshot(settings, ["public.items"], history.cut(), catch_up=False)
    assert not manifest.tables["public.items"].layered
    _assert_same_as_full(settings, tmp_path, manifest)


def test_keyless_table_appends_in_event_order(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    history = History(settings, "public.log", keyed=False)
    for i in range(300):
        history.event("c", i % 7, v=float(i), name=f"e{i}")
    create_snapshot(settings, ["public.log"], history.cut(), catch_up=False)
    for i in range(10):
        history.event("c", i % 3, v=-float(i), name=f"late{i}")
    manifest = create_snapshot(settings, ["public.log"], history.cut(), catch_up=False)
    assert manifest.tables["public.log"].delta_files
    _assert_same_as_full(settings, tmp_path, manifest)
    got = open_snapshot(settings, manifest.id).table("public.log")
    assert got["name"].to_list() == [r["name"] for r in history.keyless]


def test_key_hash_buckets_equal_one_file(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(tmp_path)
    history = History(settings, "public.items")
    rng = random.Random(5)
    history.seed(300, rng)
    history.flush()
    _random_changes(history, rng, 500, 300)
    cut = history.cut()
    one, one_snap = _full(settings, tmp_path, cut, ["public.items"])
    assert len(one.tables["public.items"].files) == 1
    monkeypatch.setattr(full_build, "plan_buckets", lambda input_bytes, memory: 9)
    monkeypatch.setattr(full_build, "FOLD_EVENTS", 120)  # and fold within each bucket
    many = create_snapshot(settings, ["public.items"], cut, catch_up=False,
                           incremental=False)
    assert len(many.tables["public.items"].files) == 9
    assert many.digest == one.digest
    got = open_snapshot(settings, many.id).table("public.items")
    assert got.equals(one_snap.table("public.items"))


def test_key_hash_buckets_keep_keyless_event_order(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(tmp_path)
    history = History(settings, "public.log", keyed=False)
    for i in range(250):
        history.event("c", i % 11, v=float(i), name=f"e{i}")
        if i % 60 == 59:
            history.flush()
    cut = history.cut()
    one, _ = _full(settings, tmp_path, cut, ["public.log"])
    monkeypatch.setattr(full_build, "plan_buckets", lambda input_bytes, memory: 6)
    many = create_snapshot(settings, ["public.log"], cut, catch_up=False, incremental=False)
    assert len(many.tables["public.log"].files) > 1
    assert many.digest == one.digest
    got = open_snapshot(settings, many.id).table("public.log")
    assert got["name"].to_list() == [r["name"] for r in history.keyless]


def test_damaged_base_is_not_built_upon(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    history = History(settings, "public.items")
    history.seed(100)
    base = create_snapshot(settings, ["public.items"], history.cut(), catch_up=False)
    data = Path(settings.snapshot_root) / base.id / base.tables["public.items"].files[0]
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    report = verify_snapshot(settings, base.id)
    assert not report.ok
    assert report.tables["public.items"].files_damaged == (base.tables["public.items"].files[0],)
    history.event("u", 1, v=-1.0, name="y")
    manifest = create_snapshot(settings, ["public.items"], history.cut(), catch_up=False)
    assert manifest.built_from == "full"
    _assert_same_as_full(settings, tmp_path, manifest)


def test_docs_layered_view_checks_the_digest_with_duckdb_alone(tmp_path: Path) -> None:
    """docs/digest.md's view for an incremental snapshot + its digest SQL = manifest."""
    from tests.unit.test_digest import run_doc_table_sql

    settings = _settings(tmp_path)
    history = History(settings, "public.orders")
    rng = random.Random(2)
    history.seed(500, rng)
    create_snapshot(settings, ["public.orders"], history.cut(), catch_up=False)
    _random_changes(history, rng, 10, 500)
    manifest = create_snapshot(settings, ["public.orders"], history.cut(), catch_up=False)
    assert manifest.tables["public.orders"].layered
    doc = (Path(__file__).resolve().parents[2] / "docs" / "digest.md").read_text()
    view = next(block.split("```", 1)[0] for block in doc.split("```sql")[1:]
                if "ANTI JOIN" in block)
    view = view.replace("snapshots/<id>", f"{settings.snapshot_root}/{manifest.id}")
    con = duckdb.connect()
    con.execute(view)
    assert run_doc_table_sql(con).digest == manifest.tables["public.orders"].digest


# Kinds repeated to weight them: events and snapshots are more frequent than the changes
# that force a rewrite, so layered chains several snapshots long are common.
_KINDS = ["event"] * 10 + ["segment", "snapshot", "snapshot", "truncate", "add_column"]
_STEP = st.tuples(st.sampled_from(_KINDS), st.sampled_from("ccuuudx"), st.integers(0, 30),
                  st.floats(allow_nan=False, allow_infinity=False, width=32))


@given(steps=st.lists(_STEP, min_size=15, max_size=60),
       compact=st.sampled_from([0.5, 100.0, 100.0]),
       buckets=st.sampled_from([1, 5]),
       fold_events=st.sampled_from([1_000_000, 9]))
@hsettings(max_examples=20, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_history_any_layout_equals_full_build(tmp_path: Path, steps: list[tuple],
                                                  compact: float, buckets: int,
                                                  fold_events: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Random histories, snapshots at random cuts, layered or compacted at random, full
    builds in one bucket or spilled into several, folded in small groups or not: every
    snapshot equals its full rebuild and a last-write-wins replay."""
    import tempfile

    monkeypatch.setattr(layered_build, "COMPACT_FRACTION", compact)
    monkeypatch.setattr(full_build, "FOLD_EVENTS", fold_events)
    with tempfile.TemporaryDirectory(dir=tmp_path) as scratch:
        root = Path(scratch)
        settings = _settings(root)
        history = History(settings, "public.items")
        history.seed(20)
        extra = False
        for kind, op, key, value in [*steps, ("snapshot", "c", 0, 0.0)]:
            if kind == "event":
                values = {"v": value, "name": f"{op}{key}"}
                if extra:
                    values["extra"] = f"x{key}"
                history.event(op, key, **values)
            elif kind == "segment":
                history.flush()
            elif kind == "truncate":
                history.event("t", None)
            elif kind == "add_column":
                history.flush()
                extra = True
            elif history.offset and history.cut().partitions[0].end:
                with monkeypatch.context() as patch:
                    patch.setattr(full_build, "plan_buckets", lambda *_: buckets)
                    manifest = create_snapshot(settings, ["public.items"], history.cut(),
                                               catch_up=False)
                _assert_same_as_full(settings, root, manifest)  # one bucket
                got = open_snapshot(settings, manifest.id).table("public.items")
                replay = sorted(history.state.values(), key=lambda r: r["id"])  # type: ignore[arg-type, return-value]
                assert got["id"].to_list() == [r["id"] for r in replay]
                assert got["name"].to_list() == [r["name"] for r in replay]


def test_bucket_count_follows_the_memory_budget(tmp_path: Path) -> None:
    gib = 1 << 30
    # the benchmark table: ~114 bytes per event in memory
    assert full_build.plan_buckets(3_000_000 * 114, 4 * gib) == 1
    assert full_build.plan_buckets(12_000_000 * 114, 4 * gib) == 2
    assert full_build.plan_buckets(24_000_000 * 114, 4 * gib) == 4
    assert full_build.plan_buckets(12_000_000 * 114, 2 * gib) == 6
    assert full_build.plan_buckets(0, 4 * gib) == 1
    settings = _settings(tmp_path)
    assert full_build.memory_budget(settings) == full_build.DEFAULT_MEMORY_MB << 20
    assert full_build.memory_budget(
        dataclasses.replace(settings, snapshot_memory_mb=8192)) == 8 * gib
    with pytest.raises(ConfigError, match="snapshot_memory_mb is 100: .* at least 1536"):
        full_build.memory_budget(dataclasses.replace(settings, snapshot_memory_mb=100))


@pytest.mark.parametrize("keyed", [True, False])
def test_multi_partition_topics_are_built_in_full(tmp_path: Path, keyed: bool) -> None:
    """Across partitions only a full build's (partition, offset) sort orders events, so a
    key that moves partition, or keyless rows, must not be layered on a base."""
    settings = _settings(tmp_path)
    history = History(settings, "public.items", keyed=keyed, partitions=2)
    for key in range(60):
        history.event("r" if keyed else "c", key, partition=key % 2, v=float(key),
                      name="init")
    create_snapshot(settings, ["public.items"], history.cut(), catch_up=False)
    history.event("u" if keyed else "c", 5, partition=0, v=-5.0, name="moved")  # 5 was in p1
    history.event("c" if keyed else "c", 100, partition=1, v=1.0, name="late")
    manifest = create_snapshot(settings, ["public.items"], history.cut(), catch_up=False)
    assert not manifest.tables["public.items"].layered
    _assert_same_as_full(settings, tmp_path, manifest)


def test_paths_with_quotes(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "o'brien")
    history = History(settings, "public.items")
    history.seed(50)
    create_snapshot(settings, ["public.items"], history.cut(), catch_up=False)
    history.event("u", 1, v=2.0, name="y")
    manifest = create_snapshot(settings, ["public.items"], history.cut(), catch_up=False)
    assert manifest.tables["public.items"].layered
    _assert_same_as_full(settings, tmp_path, manifest)


def test_damaged_segment_is_a_clear_error(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    history = History(settings, "public.items")
    history.seed(100)
    create_snapshot(settings, ["public.items"], history.cut(), catch_up=False)
    history.event("u", 1, v=2.0, name="y")
    cut = history.cut()
    newest = max(Path(settings.archive_root).rglob("*.parquet"), key=lambda p: p.name)
    newest.write_bytes(newest.read_bytes()[:40])
    for incremental in (True, False):
        with pytest.raises(ArchiveError, match="tidelog archive verify"):
            create_snapshot(settings, ["public.items"], cut, catch_up=False,
                            incremental=incremental)
    assert not [p for p in Path(settings.snapshot_root).iterdir()
                if p.name.startswith(".tmp-")], "a failed build leaves nothing behind"


def _segment_paths(settings: Settings) -> list[Path]:
    return sorted(Path(settings.archive_root).rglob("*.parquet"), key=lambda p: p.name)


def _forge(segment: Path, rows: pl.DataFrame) -> None:
    """Replace a segment's bytes with other valid Parquet under the same name: it reads
    fine, only its checksum can tell."""
    rows.write_parquet(segment, compression="zstd")


def _flip_byte(segment: Path) -> None:
    raw = bytearray(segment.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    segment.write_bytes(bytes(raw))


def _age(paths: list[Path], seconds: int = 3600) -> None:
    """Make files old enough to be marked as verified (archive.RACY_SECONDS)."""
    import os
    import time

    past = time.time_ns() - seconds * 1_000_000_000
    for path in paths:
        os.utime(path, ns=(past, past))


@pytest.mark.parametrize("build", ["full", "incremental", "buckets"])
def test_segment_failing_its_checksum_is_never_built_from(
        tmp_path: Path, build: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12.1: a changed segment that still reads as valid Parquet gave a snapshot
    with wrong values that `snapshot verify` then called ok."""
    settings = _settings(tmp_path)
    history = History(settings, "public.items")
    history.seed(50)
    history.flush()
    if build == "incremental":
        create_snapshot(settings, ["public.items"], history.cut(), catch_up=False)
    history.event("u", 7, v=7.5, name="n149")
    cut = history.cut()
    if build == "buckets":
        monkeypatch.setattr(full_build, "plan_buckets", lambda input_bytes, memory: 5)
    victim = _segment_paths(settings)[-1]  # the update: the segment every build reads
    rows = pl.read_parquet(victim).with_columns(pl.lit("n133").alias("name"))
    _forge(victim, rows)
    assert pl.read_parquet(victim)["name"].to_list() == ["n133"]  # readable, and wrong
    before = {p.name for p in Path(settings.snapshot_root).iterdir()} \
        if Path(settings.snapshot_root).exists() else set()
    with pytest.raises(ArchiveError) as caught:
        create_snapshot(settings, ["public.items"], cut, catch_up=False,
                        incremental=build == "incremental")
    message = str(caught.value)
    assert "lay.public.items[0]" in message and "offsets 50..50" in message
    assert victim.name in message and "tidelog archive run" in message
    assert "tidelog archive verify" in message
    after = {p.name for p in Path(settings.snapshot_root).iterdir()}
    assert after - before <= {p for p in after if p.startswith(".lock-")}, \
        "no snapshot (and no temporary build) is left"
    with pytest.raises(SnapshotError):  # rebuild rehashes in full
        rebuild_snapshot(settings, cut, ["public.items"], tmp_path / "rebuilt")


def test_an_old_segment_is_checked_by_a_full_build(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    history = History(settings, "public.items")
    history.seed(50)
    history.flush()
    history.event("u", 7, v=7.5, name="n149")
    cut = history.cut()
    _flip_byte(_segment_paths(settings)[0])
    with pytest.raises(ArchiveError, match="offsets 0..49"):
        create_snapshot(settings, ["public.items"], cut, catch_up=False, incremental=False)


def test_verified_mark_skips_the_rehash_until_the_file_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(tmp_path)
    history = History(settings, "public.items")
    history.seed(50)
    history.flush()
    history.event("u", 7, v=7.5, name="y")
    cut = history.cut()
    paths = _segment_paths(settings)
    _age(paths)
    create_snapshot(settings, ["public.items"], cut, catch_up=False, incremental=False)
    marks = json.loads((paths[0].parent / archive_module.VERIFIED_NAME).read_text())
    assert set(marks) == {p.name for p in paths}
    assert marks[paths[0].name] == [paths[0].stat().st_size, paths[0].stat().st_mtime_ns]

    hashed: list[str] = []
    real = Archive._matches
    monkeypatch.setattr(Archive, "_matches",
                        lambda self, seg: hashed.append(seg.path) or real(self, seg))
    archive = Archive(settings.archive_root)
    segments = archive.segments(history.topic, 0, 0)
    archive.verify(segments)
    assert hashed == [], "a marked segment whose stat is unchanged is not rehashed"

    # Rewritten in place with the same size: the mtime moves, so it is rehashed and refused.
    size = paths[0].stat().st_size
    _flip_byte(paths[0])
    assert paths[0].stat().st_size == size
    with pytest.raises(ArchiveError, match="offsets 0..49"):
        Archive(settings.archive_root).verify(segments)
    assert hashed == [str(paths[0])]

    # The documented limit: the same size with the mtime forged back is only caught by a
    # full rehash, which `tidelog archive verify` (Archive.damaged) does.
    import os

    os.utime(paths[0], ns=(marks[paths[0].name][1], marks[paths[0].name][1]))
    Archive(settings.archive_root).verify(segments)
    assert [s.path for s in Archive(settings.archive_root).damaged(segments)] == [
        str(paths[0])]


def test_young_segments_are_never_marked(tmp_path: Path) -> None:
    """A rewrite within the filesystem's timestamp granularity keeps the mtime; a segment
    hashed that young is therefore not marked, and is rehashed at every read."""
    import os

    settings = _settings(tmp_path)
    history = History(settings, "public.items")
    history.seed(20)
    history.flush()
    archive = Archive(settings.archive_root)
    segments = archive.segments(history.topic, 0, 0)
    archive.verify(segments)
    path = Path(segments[0].path)
    assert not (path.parent / archive_module.VERIFIED_NAME).exists()
    stat = path.stat()
    _flip_byte(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime
    with pytest.raises(ArchiveError):
        archive.verify(segments)


def test_read_only_archive_still_verifies(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Marks are a cache: failing to write one costs a rehash, never a wrong answer."""
    from snapshotter.storage import Storage

    settings = _settings(tmp_path)
    history = History(settings, "public.items")
    history.seed(20)
    cut = history.cut()
    _age(_segment_paths(settings))

    def refuse(self: Storage, path: str, data: bytes) -> None:
        raise PermissionError(13, "read-only", path)

    monkeypatch.setattr(Storage, "write_bytes", refuse)
    manifest = create_snapshot(settings, ["public.items"], cut, catch_up=False)
    assert manifest.tables["public.items"].rows == 20


def test_table_without_events_is_a_clear_error(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    history = History(settings, "public.empty")
    cut = history.cut()
    with pytest.raises(SnapshotError, match="no change events below the cut"):
        create_snapshot(settings, ["public.empty"], cut, catch_up=False)


def test_abandoned_builds_are_removed(tmp_path: Path) -> None:
    """A killed builder's temporary directory goes at the next build of any snapshot."""
    settings = _settings(tmp_path)
    history = History(settings, "public.items")
    history.seed(10)
    root = Path(settings.snapshot_root)
    abandoned = root / ".tmp-0123456789abcdef-deadbeef"
    (abandoned / "public.items").mkdir(parents=True)
    create_snapshot(settings, ["public.items"], history.cut(), catch_up=False)
    assert not abandoned.exists()


@pytest.mark.parametrize("fold_events", [1_000_000, 3])
def test_unchanged_toast_values_take_the_previous_value(tmp_path: Path, fold_events: int,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """Without REPLICA IDENTITY FULL, Debezium sends a placeholder for a large value an
    update left unchanged: the snapshot holds the real value, from earlier events or from
    the base snapshot, exactly as a full build does."""
    from snapshotter.materialise import UNAVAILABLE

    monkeypatch.setattr(full_build, "FOLD_EVENTS", fold_events)
    settings = _settings(tmp_path)
    history = History(settings, "public.docs")
    for key in range(10):
        history.event("r", key, v=float(key), name=f"big-{key}" * 100)
    history.event("u", 1, v=1.5, name=UNAVAILABLE)
    history.event("u", 1, v=1.6, name=UNAVAILABLE)
    history.event("u", 2, v=2.5, name=None)  # a real NULL stays NULL
    first = create_snapshot(settings, ["public.docs"], history.cut(), catch_up=False)
    history.event("u", 3, v=3.5, name=UNAVAILABLE)  # its value is only in the base
    history.event("d", 4)
    history.event("c", 4, v=4.0, name="fresh")
    history.event("u", 4, v=4.5, name=UNAVAILABLE)
    manifest = create_snapshot(settings, ["public.docs"], history.cut(), catch_up=False)
    assert manifest.built_from == first.id
    _assert_same_as_full(settings, tmp_path, manifest)
    got = dict(open_snapshot(settings, manifest.id).table("public.docs")
               .select("id", "name").iter_rows())
    assert got[1] == "big-1" * 100 and got[3] == "big-3" * 100
    assert got[2] is None and got[4] == "fresh"
    assert UNAVAILABLE not in got.values()
