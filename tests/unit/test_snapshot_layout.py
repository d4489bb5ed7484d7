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

from cdc.reader import LogIdentity
from snapshotter import snapshots
from snapshotter.archive import Archive
from snapshotter.cut import Cut, PartitionCut
from snapshotter.manifest import Manifest
from snapshotter.snapshots import Snapshot, create_snapshot, open_snapshot, rebuild_snapshot
from snapshotter.verify import diff_snapshots, verify_snapshot
from tidelog.errors import ConfigError, SnapshotError
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
                 partitions: int = 1) -> None:
        self.archive = Archive(settings.archive_root)
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
            self.archive.write_segment(self.topic, partition, self.generations[partition],
                                       end - len(rows), end, frame.to_arrow())
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
    assert verify_snapshot(settings, manifest.id)["ok"]


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
    diff = diff_snapshots(settings, first.id, previous.id)["tables"]["public.items"]
    assert diff["inserted"] + diff["updated"] + diff["deleted"] > 0
    view = open_snapshot(settings, previous.id).duckdb()
    assert view.execute("select count(*) from public.items").fetchone() == count

    # Deleting the base snapshot does not break the snapshots sharing its files.
    import shutil

    shutil.rmtree(Path(settings.snapshot_root) / first.id)
    assert verify_snapshot(settings, previous.id)["ok"]


def test_delta_past_threshold_is_compacted(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(tmp_path)
    history = History(settings, "public.items")
    rng = random.Random(3)
    history.seed(200)
    create_snapshot(settings, ["public.items"], history.cut(), catch_up=False)
    monkeypatch.setattr(snapshots, "COMPACT_FRACTION", 0.05)
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
    monkeypatch.setattr(snapshots, "plan_buckets", lambda input_bytes, memory: 9)
    monkeypatch.setattr(snapshots, "FOLD_EVENTS", 120)  # and fold within each bucket
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
    monkeypatch.setattr(snapshots, "plan_buckets", lambda input_bytes, memory: 6)
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
    assert not report["ok"]
    assert report["tables"]["public.items"]["files_damaged"] == [
        base.tables["public.items"].files[0]]
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

    monkeypatch.setattr(snapshots, "COMPACT_FRACTION", compact)
    monkeypatch.setattr(snapshots, "FOLD_EVENTS", fold_events)
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
                    patch.setattr(snapshots, "plan_buckets", lambda *_: buckets)
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
    assert snapshots.plan_buckets(3_000_000 * 114, 4 * gib) == 1
    assert snapshots.plan_buckets(12_000_000 * 114, 4 * gib) == 2
    assert snapshots.plan_buckets(24_000_000 * 114, 4 * gib) == 4
    assert snapshots.plan_buckets(12_000_000 * 114, 2 * gib) == 6
    assert snapshots.plan_buckets(0, 4 * gib) == 1
    settings = _settings(tmp_path)
    assert snapshots.memory_budget(settings) == snapshots.DEFAULT_MEMORY_MB << 20
    assert snapshots.memory_budget(
        dataclasses.replace(settings, snapshot_memory_mb="8192")) == 8 * gib
    for bad in ("lots", "100"):
        with pytest.raises(ConfigError, match="snapshot_memory_mb"):
            snapshots.memory_budget(dataclasses.replace(settings, snapshot_memory_mb=bad))


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
        with pytest.raises(SnapshotError, match="tidelog archive verify"):
            create_snapshot(settings, ["public.items"], cut, catch_up=False,
                            incremental=incremental)
    assert not [p for p in Path(settings.snapshot_root).iterdir()
                if p.name.startswith(".tmp-")], "a failed build leaves nothing behind"


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

    monkeypatch.setattr(snapshots, "FOLD_EVENTS", fold_events)
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
