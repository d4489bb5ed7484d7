"""Retention by reachability: the pure planner, and carrying a plan out on a real local
archive and snapshot root (crash leftovers included)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pytest

from cdc.reader import LogIdentity
from snapshotter.archive import Archive, Generation, Segment
from snapshotter.cut import Cut, PartitionCut
from snapshotter.manifest import MANIFEST_NAME, Manifest, TableManifest
from snapshotter.retention import (
    GcPolicy,
    PartitionHistory,
    Root,
    archive_history,
    collect,
    gc_policy,
    plan_gc,
)
from snapshotter.snapshots import validate_cut
from tidelog.errors import ArchiveError, ConfigError, CutError, SnapshotPinned
from tidelog.settings import Settings, load_settings

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
TOPIC = "shop.public.customers"
OLD, NEW = LogIdentity("cluster-a", "topic-a"), LogIdentity("cluster-b", "topic-b")


def _cut(end: int, identity: LogIdentity = NEW, start: int = 0, topic: str = TOPIC) -> Cut:
    return Cut((PartitionCut(topic, 0, end, start, identity.cluster_id, identity.topic_id),))


def _manifest(sid: str, cut: Cut, days_old: float, built_from: str = "full") -> Manifest:
    table = TableManifest(name="public.customers", topic=TOPIC, rows=0,
                          columns=(("id", "BIGINT"),), key_columns=("id",), digest="d",
                          files=())
    created = (NOW - dt.timedelta(days=days_old)).isoformat(timespec="microseconds")
    return Manifest(id=sid, cut=cut, tables={"public.customers": table}, digest="d",
                    created_at=created, tidelog_version="0", built_from=built_from,
                    source={})


def _segments(gen: int, bounds: list[tuple[int, int]], topic: str = TOPIC
              ) -> tuple[Segment, ...]:
    return tuple(Segment(topic, 0, gen, a, b, f"/a/{topic}/p0/g{gen}/{a}-{b}.parquet", "x")
                 for a, b in bounds)


def _history(topic: str = TOPIC) -> PartitionHistory:
    gens = (Generation(0, OLD.cluster_id, OLD.topic_id, 0),
            Generation(1, NEW.cluster_id, NEW.topic_id, 0))
    return PartitionHistory(topic, 0, gens, {
        0: _segments(0, [(0, 50), (50, 100), (100, 150)], topic),
        1: _segments(1, [(0, 40), (40, 90)], topic)})


def test_registered_model_keeps_its_snapshot_its_base_and_its_segments() -> None:
    base = _manifest("b" * 16, _cut(40), days_old=90)
    used = _manifest("u" * 16, _cut(90), days_old=80, built_from=base.id)
    other = _manifest("o" * 16, _cut(60), days_old=70)
    newest = _manifest("n" * 16, _cut(90, start=40), days_old=60)
    old_gen = _manifest("g" * 16, _cut(150, OLD, start=60), days_old=100)
    roots = [Root("model_version", "churn/2 (alias champion), run r1", used.id, used.cut),
             Root("pinned_run", "r9", "gone0000gone0000", _cut(120, OLD, start=60))]
    plan = plan_gc([base, used, other, newest, old_gen], roots, [_history()],
                   GcPolicy(keep_days=30, keep_snapshots=1), NOW)

    assert set(plan.keep_snapshots) == {used.id, base.id, newest.id}
    assert plan.keep_snapshots[used.id] == (
        "model version churn/2 (alias champion), run r1",)
    assert plan.keep_snapshots[base.id] == (f"base of kept snapshot {used.id}",)
    assert plan.keep_snapshots[newest.id] == ("one of the newest 1 snapshot(s)",)
    assert set(plan.delete_snapshots) == {other.id, old_gen.id}
    # The old generation: the pinned run's cut starts at 60, so [0, 50) goes, [50, 150) stays.
    assert [(s.generation, s.start, s.end) for s, _ in plan.delete_segments] == [(0, 0, 50)]
    assert "below offset 60" in plan.delete_segments[0][1]
    assert plan.trims == {(TOPIC, 0, 0): 50}
    kept = {k.generation: k for k in plan.keep_segments}
    assert (kept[0].start, kept[0].end, kept[0].segments) == (50, 150, 2)
    assert kept[0].why == ("pinned run r9",)
    # The current generation is kept whole, and says who reads it.
    assert kept[1].why[0].startswith("current generation")
    assert "model version churn/2 (alias champion), run r1" in kept[1].why
    report = plan.to_json()
    assert {s["snapshot_id"] for s in report["delete"]["snapshots"]} == {other.id, old_gen.id}


def test_never_age_only_and_the_window_keeps_young_things() -> None:
    young = _manifest("y" * 16, _cut(10), days_old=2)
    old = _manifest("o" * 16, _cut(20), days_old=40)
    plan = plan_gc([young, old], [], [], GcPolicy(keep_days=7, keep_snapshots=0), NOW)
    assert set(plan.keep_snapshots) == {young.id}
    assert "within the 7-day window" in plan.keep_snapshots[young.id][0]
    # Without roots, window or newest-N nothing keeps them: both go, by reachability.
    plan = plan_gc([young, old], [], [], GcPolicy(keep_days=0, keep_snapshots=0), NOW)
    assert set(plan.delete_snapshots) == {young.id, old.id}
    # A pinned snapshot stays however old.
    pinned = Root("pinned_snapshot", f"{old.id} (pinned by ana: audit)", old.id)
    plan = plan_gc([young, old], [pinned], [], GcPolicy(keep_days=0, keep_snapshots=0), NOW)
    assert plan.keep_snapshots == {old.id: (f"pinned snapshot {old.id} (pinned by ana: audit)",)}


def test_an_unread_old_generation_goes_whole() -> None:
    plan = plan_gc([], [], [_history()], GcPolicy(0, 0), NOW)
    assert [(s.generation, s.start) for s, _ in plan.delete_segments] == [(0, 0), (0, 50),
                                                                          (0, 100)]
    assert "no longer current" in plan.delete_segments[0][1]
    assert plan.trims == {(TOPIC, 0, 0): 150}
    assert [k.generation for k in plan.keep_segments] == [1]


def test_policy_from_settings_and_arguments(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(home=tmp_path, gc_keep_days=3.5, gc_keep_snapshots=4)
    assert gc_policy(settings) == GcPolicy(3.5, 4)
    assert gc_policy(settings, keep_days=0, keep_snapshots=0) == GcPolicy(0, 0)
    assert gc_policy(Settings(home=tmp_path)) == GcPolicy(30, 1)
    monkeypatch.setenv("TIDELOG_GC_KEEP_DAYS", "soon")
    with pytest.raises(ConfigError, match="TIDELOG_GC_KEEP_DAYS .*'soon'"):
        load_settings(tmp_path)
    monkeypatch.setenv("TIDELOG_GC_KEEP_DAYS", "3.5")
    monkeypatch.setenv("TIDELOG_GC_KEEP_SNAPSHOTS", "4")
    assert gc_policy(load_settings(tmp_path)) == GcPolicy(3.5, 4)
    with pytest.raises(ConfigError):
        gc_policy(settings, keep_days=-1)


# -- carrying a plan out ------------------------------------------------------------------

def _archive(root: Path) -> Archive:
    archive = Archive(str(root))
    rows = pa.table({"__offset": pa.array([0], pa.int64())})
    archive.open_generation(TOPIC, 0, OLD)
    for a, b in ((0, 50), (50, 100), (100, 150)):
        archive.write_segment(TOPIC, 0, 0, a, b, rows)
    archive.open_generation(TOPIC, 0, NEW)
    for a, b in ((0, 40), (40, 90)):
        archive.write_segment(TOPIC, 0, 1, a, b, rows)
    return archive


def _publish(settings: Settings, manifest: Manifest) -> Path:
    directory = Path(settings.snapshot_root) / manifest.id
    directory.mkdir(parents=True)
    (directory / MANIFEST_NAME).write_text(manifest.dumps())
    return directory


def test_collect_deletes_the_plan_and_leaves_kept_cuts_rebuildable(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, archive_root=str(tmp_path / "archive"),
                        snapshot_root=str(tmp_path / "snapshots"))
    archive = _archive(tmp_path / "archive")
    kept = _manifest("k" * 16, _cut(120, OLD, start=60), days_old=50)
    gone = _manifest("d" * 16, _cut(30), days_old=50)
    for m in (kept, gone):
        _publish(settings, m)
    leftover = Path(settings.snapshot_root) / ".deleted-x-1234"
    (leftover / "t").mkdir(parents=True)  # a delete killed before its rmtree
    roots = [Root("model_version", "m/1", kept.id, kept.cut)]
    plan = plan_gc([kept, gone], roots, archive_history(archive), GcPolicy(0, 0), NOW)
    result = collect(settings, plan, archive)

    assert result["deleted_snapshots"] == [gone.id]
    assert result["leftovers_removed"] == [leftover.name]
    assert not (Path(settings.snapshot_root) / gone.id).exists()
    assert (Path(settings.snapshot_root) / kept.id / MANIFEST_NAME).exists()
    assert not list(Path(settings.snapshot_root).glob(".deleted-*"))
    assert [(s.start, s.end) for s in archive.segments(TOPIC, 0, 0)] == [(50, 100),
                                                                        (100, 150)]
    assert archive.generations(TOPIC, 0)[0].first_offset == 50
    assert archive.generations(TOPIC, 0)[1].first_offset == 0  # the live log is untouched
    assert len(archive.segments(TOPIC, 0, 1)) == 2
    # the kept cut still validates and is covered; one reaching below the trim is refused
    validate_cut(archive, kept.cut)
    assert archive.segments_for_range(TOPIC, 0, 0, 60, 120)
    with pytest.raises(CutError, match="never archived"):
        validate_cut(archive, _cut(120, OLD, start=0))


def test_a_snapshot_pinned_after_the_plan_is_kept_with_its_history(tmp_path: Path) -> None:
    """gc re-reads the pins under each snapshot's exclusive lock: one pinned since the
    plan is kept, and so is the archive below its cut (the next gc plans again)."""
    settings = Settings(home=tmp_path, archive_root=str(tmp_path / "archive"),
                        snapshot_root=str(tmp_path / "snapshots"))
    archive = _archive(tmp_path / "archive")
    kept = _manifest("k" * 16, _cut(120, OLD, start=60), days_old=50)
    late = _manifest("d" * 16, _cut(30), days_old=50)
    for m in (kept, late):
        _publish(settings, m)
    roots = [Root("model_version", "m/1", kept.id, kept.cut)]
    plan = plan_gc([kept, late], roots, archive_history(archive), GcPolicy(0, 0), NOW)
    assert late.id in plan.delete_snapshots and plan.delete_segments
    checked: list[str] = []

    def pinned_meanwhile(sid: str) -> None:
        checked.append(sid)
        raise SnapshotPinned(f"snapshot {sid} was pinned during gc", snapshot_id=sid)

    result = collect(settings, plan, archive, check=pinned_meanwhile)
    assert checked == [late.id] and result["pinned_meanwhile"] == [late.id]
    assert result["deleted_snapshots"] == [] and result["deleted_segments"] == []
    assert (Path(settings.snapshot_root) / late.id / MANIFEST_NAME).exists()
    assert [(s.start, s.end) for s in archive.segments(TOPIC, 0, 0)] == [
        (0, 50), (50, 100), (100, 150)]
    validate_cut(archive, late.cut)  # its history is still all there


def test_a_gc_killed_between_trim_and_delete_is_finished_by_the_next(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, archive_root=str(tmp_path / "archive"),
                        snapshot_root=str(tmp_path / "snapshots"))
    archive = _archive(tmp_path / "archive")
    # As if a gc raised generation 0's first offset to 100 and was killed before deleting.
    log = tmp_path / "archive" / TOPIC / "p0" / "log.json"
    body = json.loads(log.read_text())
    body["generations"][0]["first_offset"] = 100
    log.write_text(json.dumps(body))
    # The leftovers below the first offset are never read ...
    with pytest.raises(CutError, match="never archived"):
        validate_cut(archive, _cut(120, OLD, start=50))
    with pytest.raises(ArchiveError):
        archive.segments_for_range(TOPIC, 0, 0, 150, 160)
    # ... and the next gc (a cut still needs [100, 150)) deletes them.
    roots = [Root("pinned_run", "r", None, _cut(150, OLD, start=100))]
    plan = plan_gc([], roots, archive_history(archive), GcPolicy(0, 0), NOW)
    assert {(s.start, s.end) for s, _ in plan.delete_segments} == {(0, 50), (50, 100)}
    result = collect(settings, plan, archive)
    assert len(result["deleted_segments"]) == 2
    assert [(s.start, s.end) for s in archive.segments(TOPIC, 0, 0)] == [(100, 150)]


def test_cli_gc_reads_the_api_pins_and_deletes_only_without_dry_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        quiet_mlflow: None) -> None:
    from api.retention import Pins
    from api.store import Database
    from tidelog.cli import main

    for name in ("TIDELOG_ARCHIVE_ROOT", "TIDELOG_SNAPSHOT_ROOT", "TIDELOG_API_DB",
                 "TIDELOG_GC_KEEP_DAYS", "TIDELOG_GC_KEEP_SNAPSHOTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TIDELOG_HOME", str(tmp_path))
    monkeypatch.setenv("TIDELOG_MLFLOW_URI", f"sqlite:///{tmp_path}/mlflow.db")
    settings = Settings(home=tmp_path, snapshot_root=str(tmp_path / "snapshots"))
    pinned = _manifest("p" * 16, _cut(10), days_old=400)
    loose = _manifest("l" * 16, _cut(20), days_old=400)
    for m in (pinned, loose):
        _publish(settings, m)
    db = Database(tmp_path / "api.db")
    Pins(db).pin(pinned.id, "k1", "legal hold")
    db.close()

    assert main(["gc", "--dry-run", "--keep-days", "0", "--keep-snapshots", "0"]) == 0
    out = capsys.readouterr().out
    assert f"keep snapshot {pinned.id}: pinned snapshot {pinned.id} (pinned by k1: legal " \
           "hold)" in out
    assert f"would delete snapshot {loose.id}" in out
    assert (tmp_path / "snapshots" / loose.id).exists()
    assert main(["gc", "--keep-days", "0", "--keep-snapshots", "0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["result"]["deleted_snapshots"] == [loose.id]
    assert not (tmp_path / "snapshots" / loose.id).exists()
    assert (tmp_path / "snapshots" / pinned.id).exists()
    logged = (tmp_path / "gc" / "log.jsonl").read_text().splitlines()
    assert len(logged) == 1 and json.loads(logged[0])["result"]["deleted_snapshots"] == [
        loose.id]
