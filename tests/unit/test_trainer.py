"""Trainer unit tests: the in-memory fake snapshotter and a real MLflow SQLite store."""

from __future__ import annotations

import copy
import hashlib
import json
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import mlflow
import polars as pl
import pytest

from examples.churn import demo_tables
from snapshotter.cut import Cut, PartitionCut
from tidelog.errors import CutError, DigestMismatch, LogIdentityError, TrainingError
from tidelog.settings import Settings
from trainer import rebuild as rebuild_module
from trainer import train as train_module
from trainer.commands import parse_at, parse_param
from trainer.lineage import model_lineage, parse_model_ref, row_lineage
from trainer.rebuild import rebuild
from trainer.recipe import load_recipe, run_recipe
from trainer.testing import FakeSnapshotProvider, frame_digest
from trainer.train import TrainResult, train, window_cut

RECIPE = "examples.churn:train"
FOREST = {"model": "forest", "n_estimators": 15, "max_depth": 6}


@pytest.fixture(scope="module", autouse=True)
def _quiet(quiet_mlflow: None) -> None:
    """Every test here runs MLflow (tests/unit/conftest.py)."""


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("trainer-home")
    return Settings(home=home, mlflow_uri=f"sqlite:///{home}/mlflow.db",
                    archive_root=str(home / "archive"), snapshot_root=str(home / "snapshots"))


@pytest.fixture(scope="module")
def source() -> FakeSnapshotProvider:
    fake = FakeSnapshotProvider()
    for name, frame in demo_tables(customers=160).items():
        fake.put(name, frame)
    return fake


@pytest.fixture(scope="module")
def first(settings: Settings, source: FakeSnapshotProvider) -> TrainResult:
    return train(settings, RECIPE, params=FOREST, seed=7, register="churn", provider=source)


@pytest.fixture
def fake(source: FakeSnapshotProvider, first: TrainResult) -> FakeSnapshotProvider:
    """The source after `first` trained on it; each test may change or break its copy."""
    return copy.deepcopy(source)


def _move_on(fake: FakeSnapshotProvider) -> None:
    """Updates, deletes, new rows and an added column, after the first run."""
    def customers(frame: pl.DataFrame) -> pl.DataFrame:
        frame = frame.with_columns(
            pl.when(pl.col("id") == 5).then(pl.lit("XX")).otherwise(pl.col("country"))
            .alias("country"),
            pl.when(pl.col("id") % 4 == 0).then(~pl.col("churned")).otherwise(pl.col("churned"))
            .alias("churned"),
        ).filter(pl.col("id") != 9)
        extra = frame.filter(pl.col("id") <= 3).with_columns(pl.col("id") + 1000)
        return pl.concat([frame, extra]).with_columns(vip=pl.col("id") > 100)

    fake.change("public.customers", customers)
    fake.change("public.payments", lambda f: f.filter(pl.col("id") % 7 != 0))


# -- train ----------------------------------------------------------------------------

def test_train_records_cut_digests_recipe_and_datasets(settings: Settings,
                                                       first: TrainResult) -> None:
    run = mlflow.MlflowClient(settings.mlflow_uri).get_run(first.run_id)
    tags, manifest = run.data.tags, first.manifest
    assert tags["tidelog.snapshot_id"] == manifest.id
    assert Cut.from_json(tags["tidelog.cut"]).partitions == manifest.cut.partitions
    assert tags["tidelog.cut"] == manifest.cut.canonical()
    assert tags["tidelog.digest"] == manifest.digest
    for part in manifest.cut.partitions:
        assert tags[f"tidelog.cut.end.{part.topic}/{part.partition}"] == str(part.end)
        assert tags[f"tidelog.cut.start.{part.topic}/{part.partition}"] == str(part.start)
    identity = json.loads(tags["tidelog.log_identity"])
    assert identity["tidelog.public.customers/0"]["cluster_id"] == "fake-cluster"
    assert tags["tidelog.lsn"] == str(manifest.cut.lsn)
    assert tags["tidelog.commit_time_ms"] == str(manifest.cut.commit_time_ms)
    assert tags["tidelog.tables"] == "public.customers,public.payments,public.subscriptions"
    assert tags["tidelog.recipe"] == RECIPE
    churn_py = Path(__file__).parents[2] / "examples" / "churn.py"
    assert tags["tidelog.recipe.sha256"] == hashlib.sha256(churn_py.read_bytes()).hexdigest()
    assert tags["tidelog.seed"] == "7" and run.data.params["seed"] == "7"
    assert run.data.params["n_estimators"] == "15"
    assert json.loads(tags["tidelog.params"]) == FOREST
    assert tags["tidelog.source.connector"] == "fake-connector"
    assert set(first.metrics) <= set(run.data.metrics) and "accuracy" in first.metrics

    inputs = {d.dataset.name: d.dataset for d in run.inputs.dataset_inputs}
    assert sorted(inputs) == sorted(manifest.tables)
    for name, dataset in inputs.items():
        assert tags[f"tidelog.digest.{name}"] == manifest.tables[name].digest
        assert dataset.digest == manifest.tables[name].digest[:36]
        assert dataset.source_type == "tidelog"
        source = json.loads(dataset.source)
        assert source["uri"] == (f"tidelog://snapshot/{manifest.id}/{name}"
                                 f"?cut={manifest.cut.fingerprint()}")

    pkl = mlflow.artifacts.download_artifacts(run_id=first.run_id,
                                              artifact_path="model/model.pkl")
    assert hashlib.sha256(Path(pkl).read_bytes()).hexdigest() == tags["tidelog.model.sha256"]
    assert first.registered_version == "1"


def test_train_rejects_reserved_param_and_missing_tables(settings: Settings,
                                                         fake: FakeSnapshotProvider) -> None:
    with pytest.raises(TrainingError, match="reserved"):
        train(settings, RECIPE, params={"seed": 1}, provider=fake)
    with pytest.raises(TrainingError, match="no tables for recipe"):
        train(settings, "examples.churn:features", provider=fake)


# -- rebuild ----------------------------------------------------------------------------

def test_rebuild_reproduces_dataset_and_model_after_the_source_moved_on(
        settings: Settings, first: TrainResult, fake: FakeSnapshotProvider) -> None:
    _move_on(fake)
    latest = train(settings, RECIPE, params=FOREST, seed=7, provider=fake)
    assert latest.manifest.digest != first.manifest.digest

    report = rebuild(settings, first.run_id, provider=fake)

    assert report.dataset_match and report.model_match and report.artifact_match
    assert report.verified
    assert report.predictions_rebuilt == first.predictions_sha256
    assert report.model_rebuilt == first.model_sha256
    assert report.digest_rebuilt == first.manifest.digest
    assert {n: c.rebuilt_digest for n, c in report.tables.items()} == {
        n: t.digest for n, t in first.manifest.tables.items()}
    assert report.metrics_rebuilt == report.metrics_recorded
    assert set(report.timings) == {"snapshot", "train", "total"}
    data = report.to_json()
    assert data["dataset_match"] and data["tables"]["public.customers"]["match"]

    new_tags = mlflow.MlflowClient(settings.mlflow_uri).get_run(report.new_run_id).data.tags
    old_tags = mlflow.MlflowClient(settings.mlflow_uri).get_run(first.run_id).data.tags
    assert new_tags["tidelog.rebuild_of"] == first.run_id
    assert new_tags["tidelog.rebuild.model_match"] == "true"
    for key in ("tidelog.cut", "tidelog.snapshot_id", "tidelog.digest", "tidelog.recipe.sha256"):
        assert new_tags[key] == old_tags[key]


def test_rebuild_refuses_when_archived_data_differs(settings: Settings, first: TrainResult,
                                                    fake: FakeSnapshotProvider) -> None:
    fake.tamper("public.payments")
    with pytest.raises(DigestMismatch) as caught:
        rebuild(settings, first.run_id, provider=fake)
    message = caught.value.message
    assert "public.payments" in message and "public.customers" not in message
    assert first.manifest.tables["public.payments"].digest in message
    assert caught.value.details["tables"] == ["public.payments"]
    last_id = first.manifest.tables["public.payments"].rows  # the fake loses the last row
    assert (f"rows only in the recorded snapshot: 1 (id={last_id}); only in the rebuild: 0"
            in message)


def test_train_links_metrics_to_the_logged_model_and_tags_the_version(
        settings: Settings, first: TrainResult) -> None:
    client = mlflow.MlflowClient(settings.mlflow_uri)
    run = client.get_run(first.run_id)
    digests = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
    assert digests == {name: table.digest[:36] for name, table in first.manifest.tables.items()}
    assert {d.dataset.source_type for d in run.inputs.dataset_inputs} == {"tidelog"}
    (model_output,) = run.outputs.model_outputs
    logged = mlflow.get_logged_model(model_output.model_id)
    linked = {(m.key, m.dataset_digest) for m in logged.metrics}
    for key in first.metrics:
        assert {(key, digest) for digest in digests.values()} <= linked, key
    assert first.registered_version is not None
    version = client.get_model_version("churn", first.registered_version)
    assert version.tags["tidelog.snapshot_id"] == first.manifest.id
    assert version.tags["tidelog.cut"] == first.manifest.cut.canonical()
    assert version.tags["tidelog.digest"] == first.manifest.digest


def test_rebuild_of_unknown_run(settings: Settings, fake: FakeSnapshotProvider) -> None:
    with pytest.raises(TrainingError, match="unknown run 'f{32}'"):
        rebuild(settings, "f" * 32, provider=fake)


def test_rebuild_of_a_run_not_made_by_tidelog(settings: Settings,
                                              fake: FakeSnapshotProvider) -> None:
    client = mlflow.MlflowClient(settings.mlflow_uri)
    experiment = client.get_experiment_by_name("tidelog").experiment_id
    run = client.create_run(experiment)
    client.set_terminated(run.info.run_id)
    with pytest.raises(TrainingError, match="not made by tidelog"):
        rebuild(settings, run.info.run_id, provider=fake)


def _write_recipe(directory: Path, name: str, body: str) -> str:
    (directory / f"{name}.py").write_text(textwrap.dedent(body))
    return f"{name}:train"


CALLS_CHURN = """
    from examples.churn import train as churn

    def train(tables, params, seed):
        return churn(tables, params, seed)
"""


def test_rebuild_detects_a_changed_recipe(settings: Settings, fake: FakeSnapshotProvider,
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    reference = _write_recipe(tmp_path, "recipe_changed_later", CALLS_CHURN)
    result = train(settings, reference, tables=list(fake._log), provider=fake)
    (tmp_path / "recipe_changed_later.py").write_text(
        textwrap.dedent(CALLS_CHURN) + "\n# tuned\n")
    with pytest.raises(TrainingError) as caught:
        rebuild(settings, result.run_id, provider=fake)
    message = caught.value.message
    assert "changed since run" in message and result.recipe.sha256 in message
    assert "restore the recipe source" in message  # tmp_path is in no git repository


def test_rebuild_names_the_recorded_commit_when_the_recipe_is_gone(
        settings: Settings, first: TrainResult, fake: FakeSnapshotProvider,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def gone(reference: str) -> Any:
        raise TrainingError(f"cannot import recipe {reference}: no module named 'examples'")

    monkeypatch.setattr(rebuild_module, "load_recipe", gone)
    with pytest.raises(TrainingError, match="cannot import recipe") as caught:
        rebuild(settings, first.run_id, provider=fake)
    commit = first.recipe.git_commit
    if commit:
        assert f"git checkout {commit}" in caught.value.message


def _write_archive(settings: Settings, tables: dict[str, pl.DataFrame]) -> Cut:
    """Each table as one archived segment of snapshot reads (`r`), per docs/archive.md."""
    from cdc.reader import LogIdentity
    from snapshotter.archive import Archive

    archive, parts = Archive(settings.archive_root), []
    for name, frame in tables.items():
        topic, n = f"{settings.topic_prefix}.{name}", frame.height
        generation = archive.open_generation(topic, 0, LogIdentity("c1", f"t-{name}"))
        events = pl.DataFrame({
            "__partition": pl.Series([0] * n, dtype=pl.Int32),
            "__offset": pl.Series(range(n), dtype=pl.Int64),
            "__op": ["r"] * n,
            "__key": [json.dumps({"id": i}, separators=(",", ":")) for i in frame["id"]],
            "__lsn": pl.Series(range(100, 100 + n), dtype=pl.Int64),
            "__txid": pl.Series([1] * n, dtype=pl.Int64),
            "__tx": pl.Series([None] * n, dtype=pl.String),
            "__ts_ms": pl.Series(range(n), dtype=pl.Int64) + 1_700_000_000_000,
            "__before": pl.Series([None] * n, dtype=pl.String),
        }).hstack(frame)
        archive.write_segment(topic, 0, generation.number, 0, n, events.to_arrow())
        parts.append(PartitionCut(topic, 0, end=n, cluster_id="c1", topic_id=f"t-{name}"))
    return Cut(tuple(parts))


def test_train_and_rebuild_with_the_real_snapshotter(settings: Settings, tmp_path: Path
                                                     ) -> None:
    """The default provider, on an archive written directly (no Kafka: an explicit cut)."""
    from snapshotter.archive import Archive

    real = replace(settings, archive_root=str(tmp_path / "archive"),
                   snapshot_root=str(tmp_path / "snapshots"))
    cut = _write_archive(real, demo_tables(customers=60, seed=2))
    result = train(real, RECIPE, at=cut)
    assert result.manifest.cut.ends() == cut.ends()
    assert rebuild(real, result.run_id).verified

    segment = Archive(real.archive_root).segments("tidelog.public.payments", 0, 0)[0]
    events = pl.read_parquet(segment.path)
    Path(segment.path).unlink()
    events.with_columns(amount=pl.col("amount") + 1).write_parquet(segment.path)
    with pytest.raises(DigestMismatch, match="segment .* of table public.payments") as caught:
        rebuild(real, result.run_id)
    assert caught.value.details["segments"] == [segment.path]
    assert caught.value.details["run_id"] == result.run_id


def _tamper_file(path: Path) -> None:
    """Rewrite a snapshot's data file with other valid rows of the same shape: it reads
    fine, only its sha256 can tell."""
    import os

    before = path.stat()
    frame = pl.read_parquet(path)
    column = next(c for c in frame.columns
                  if c != "id" and not c.startswith("__") and frame[c].n_unique() > 1)
    frame.with_columns(pl.col(column).reverse()).write_parquet(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    assert path.stat().st_mtime_ns != before.st_mtime_ns


def _runs_on(settings: Settings, snapshot_id: str) -> list[str]:
    client = mlflow.MlflowClient(settings.mlflow_uri)
    return [r.info.run_id for e in client.search_experiments()
            for r in client.search_runs([e.experiment_id],
                                        f"tags.`tidelog.snapshot_id` = '{snapshot_id}'")]


def test_train_refuses_a_snapshot_whose_files_fail_their_sha256(
        settings: Settings, fake: FakeSnapshotProvider, tmp_path: Path) -> None:
    """Issue 12.2: training on altered files recorded the original digest in MLflow."""
    local = replace(settings, snapshot_root=str(tmp_path / "snapshots"))
    manifest = fake.create_snapshot(local, sorted(fake._log))
    table = manifest.tables["public.payments"]
    _tamper_file(Path(local.snapshot_root) / manifest.id / table.files[0])
    runs = _runs_on(local, manifest.id)  # `first` trained on the same (intact) data
    with pytest.raises(DigestMismatch, match="public.payments was changed") as caught:
        train(local, RECIPE, params=FOREST, snapshot_id=manifest.id, provider=fake)
    assert caught.value.details["files"] == [table.files[0]]
    assert f"tidelog snapshot verify {manifest.id}" in caught.value.message
    assert _runs_on(local, manifest.id) == runs, "no new run may claim the recorded digest"


def test_train_with_the_real_snapshotter_refuses_changed_files(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from snapshotter import layout
    from snapshotter.snapshots import create_snapshot

    real = replace(settings, archive_root=str(tmp_path / "archive"),
                   snapshot_root=str(tmp_path / "snapshots"))
    cut = _write_archive(real, demo_tables(customers=60, seed=3))
    manifest = create_snapshot(real, sorted(demo_tables(customers=1)), cut, catch_up=False)

    hashed: list[Path] = []
    real_hash = layout.file_sha256
    monkeypatch.setattr(layout, "file_sha256",
                        lambda path: hashed.append(path) or real_hash(path))
    good = train(real, RECIPE, params=FOREST, snapshot_id=manifest.id)
    assert good.manifest.digest == manifest.digest
    assert hashed == [], "files that stat as recorded are not rehashed"

    name = manifest.tables["public.customers"].files[0]
    path = Path(real.snapshot_root) / manifest.id / name
    size = path.stat().st_size
    _tamper_file(path)
    if path.stat().st_size == size:  # the same size is caught by the moved mtime
        assert manifest.tables["public.customers"].file_stats[name][0] == size
    with pytest.raises(DigestMismatch, match="public.customers was changed"):
        train(real, RECIPE, params=FOREST, snapshot_id=manifest.id)
    assert hashed == [path]
    assert _runs_on(real, manifest.id) == [good.run_id]


def test_snapshot_without_checksums_is_checked_by_its_digest(tmp_path: Path) -> None:
    """A format-1 manifest records no sha256 per file: reading recomputes the digest."""
    from snapshotter.manifest import MANIFEST_NAME, Manifest
    from snapshotter.snapshots import Snapshot, create_snapshot

    real = Settings(home=tmp_path, archive_root=str(tmp_path / "archive"),
                    snapshot_root=str(tmp_path / "snapshots"))
    cut = _write_archive(real, {"public.customers": demo_tables(customers=20)[
        "public.customers"]})
    manifest = create_snapshot(real, ["public.customers"], cut, catch_up=False)
    directory = Path(real.snapshot_root) / manifest.id
    legacy = replace(manifest, tables={n: replace(t, checksums={}, file_stats={})
                                       for n, t in manifest.tables.items()})
    (directory / MANIFEST_NAME).write_text(legacy.dumps())
    reopened = Manifest.loads((directory / MANIFEST_NAME).read_text())
    assert Snapshot(reopened, directory).table("public.customers").height == 20
    _tamper_file(directory / manifest.tables["public.customers"].files[0])
    with pytest.raises(DigestMismatch, match="content digest"):
        Snapshot(reopened, directory).table("public.customers")
    with pytest.raises(DigestMismatch):
        Snapshot(reopened, directory).duckdb()


# -- recipes ------------------------------------------------------------------------------

@pytest.mark.parametrize(("reference", "expected"), [
    ("examples.churn", "not an import path"),
    ("no_such_recipe_pkg.mod:train", "no module named 'no_such_recipe_pkg'"),
    ("examples.no_such_module:train", "no module named 'examples.no_such_module'"),
    ("examples.churn:nope", "has no attribute 'nope'.*train"),
    ("examples.churn:TABLES", "is a tuple, not a function"),
])
def test_recipe_import_errors(reference: str, expected: str) -> None:
    with pytest.raises(TrainingError, match=expected):
        load_recipe(reference)


def test_recipe_module_with_missing_dependency_or_import_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    _write_recipe(tmp_path, "recipe_needs_dep", "import not_installed_dep_xyz\n")
    with pytest.raises(TrainingError, match="imports 'not_installed_dep_xyz'.*install it"):
        load_recipe("recipe_needs_dep:train")
    _write_recipe(tmp_path, "recipe_broken", "raise RuntimeError('bad config')\n")
    with pytest.raises(TrainingError, match="RuntimeError: bad config"):
        load_recipe("recipe_broken:train")


def test_recipe_that_raises_is_reported_with_type_message_and_place(
        settings: Settings, fake: FakeSnapshotProvider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    reference = _write_recipe(tmp_path, "recipe_raises", """
        def train(tables, params, seed):
            raise KeyError("public.missing")
    """)
    runs_before = len(mlflow.MlflowClient(settings.mlflow_uri).search_runs(["0", "1"]))
    with pytest.raises(TrainingError) as caught:
        train(settings, reference, tables=["public.customers"], provider=fake)
    message = caught.value.message
    assert "recipe recipe_raises:train raised KeyError: 'public.missing'" in message
    assert "recipe_raises.py:3" in message
    assert len(mlflow.MlflowClient(settings.mlflow_uri).search_runs(["0", "1"])) == runs_before


def test_recipe_result_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    reference = _write_recipe(tmp_path, "recipe_returns_junk", """
        def train(tables, params, seed):
            return 42
    """)
    with pytest.raises(TrainingError, match="returned int; return trainer.recipe.RecipeResult"):
        run_recipe(load_recipe(reference), {}, {}, 0)


def test_recipe_code_version_records_git_and_sha() -> None:
    loaded = load_recipe(RECIPE)
    assert loaded.tables == ("public.customers", "public.subscriptions", "public.payments")
    assert loaded.version.path and loaded.version.path.endswith("examples/churn.py")
    assert loaded.version.sha256 == hashlib.sha256(
        Path(loaded.version.path).read_bytes()).hexdigest()
    if loaded.version.git_commit is not None:
        assert len(loaded.version.git_commit) == 40
        assert loaded.version.git_status in {"clean", "modified", "untracked"}


def test_recipe_from_an_installed_package_records_its_version() -> None:
    import sklearn

    version = load_recipe("sklearn.datasets:load_iris").version
    assert (version.package, version.package_version) == ("scikit-learn", sklearn.__version__)


def test_churn_recipe_ignores_an_added_column() -> None:
    tables = demo_tables(customers=80, seed=3)
    base = load_recipe(RECIPE)
    before = run_recipe(base, tables, {}, 1)
    tables["public.customers"] = tables["public.customers"].with_columns(vip=True)
    after = run_recipe(base, tables, {}, 1)
    assert (before.model.predict(before.features) == after.model.predict(after.features)).all()


# -- windows ------------------------------------------------------------------------------

def test_since_trains_on_the_changes_between_two_cuts(settings: Settings, first: TrainResult,
                                                      fake: FakeSnapshotProvider) -> None:
    fake.change("public.customers", lambda f: f.with_columns(
        pl.when(pl.col("id") <= 40).then(pl.col("signup_date") + pl.duration(days=1))
        .otherwise(pl.col("signup_date")).alias("signup_date")))
    result = train(settings, RECIPE, since=first.run_id, provider=fake)
    cut = result.manifest.cut
    assert cut.is_window
    ends = first.manifest.cut.ends()
    assert cut.starts() == ends
    assert result.manifest.tables["public.customers"].rows == 40
    assert result.manifest.tables["public.payments"].rows == 0
    tags = result.tags
    assert tags["tidelog.window"] == "true" and tags["tidelog.since"] == first.run_id
    assert tags["tidelog.cut.start.tidelog.public.customers/0"] == "1"
    assert tags["tidelog.cut.end.tidelog.public.customers/0"] == "2"
    assert rebuild(settings, result.run_id, provider=fake).verified


def test_since_refuses_a_cut_from_another_log(settings: Settings, first: TrainResult,
                                              fake: FakeSnapshotProvider) -> None:
    fake.recreate_topic("public.customers")
    with pytest.raises(LogIdentityError, match="topic recreated"):
        train(settings, RECIPE, since=first.run_id, provider=fake)


def test_window_cut_checks_order() -> None:
    end = Cut((PartitionCut("t", 0, end=5, cluster_id="c", topic_id="x"),
               PartitionCut("u", 0, end=3, cluster_id="c", topic_id="y")), lsn=9)
    since = Cut((PartitionCut("t", 0, end=2, cluster_id="c", topic_id="x"),))
    window = window_cut(end, since)
    assert window.starts() == {("t", 0): 2, ("u", 0): 0} and window.lsn == 9
    with pytest.raises(CutError, match="after the end"):
        window_cut(since, end)


# -- lineage ------------------------------------------------------------------------------

def test_model_lineage(settings: Settings, first: TrainResult) -> None:
    found = model_lineage(settings, *parse_model_ref("churn/1")).to_json()
    assert found["model"] == {"name": "churn", "version": "1", "source": first.model_uri}
    assert found["run_id"] == first.run_id
    assert found["snapshot_id"] == first.snapshot_id
    assert Cut.from_json(found["cut"]) == first.manifest.cut
    assert found["lsn"] == first.manifest.cut.lsn
    assert found["source"]["connector"] == "fake-connector"
    assert found["tables"]["public.customers"]["rows"] == 160
    assert model_lineage(settings, "churn").version == "1"
    with pytest.raises(TrainingError, match="no registered model 'nope'"):
        model_lineage(settings, "nope")
    with pytest.raises(TrainingError, match="has no version 99"):
        model_lineage(settings, "churn", 99)


def test_row_lineage(settings: Settings, first: TrainResult, fake: FakeSnapshotProvider
                     ) -> None:
    _move_on(fake)
    later = train(settings, RECIPE, params=FOREST, seed=7, provider=fake)
    by_snapshot = {s.snapshot_id: s for s in
                   row_lineage(settings, "public.customers", {"id": 5}, provider=fake).snapshots}
    old, new = by_snapshot[first.snapshot_id], by_snapshot[later.snapshot_id]
    assert old.rows[0]["country"] != "XX" and new.rows[0]["country"] == "XX"
    assert "vip" not in old.rows[0] and new.rows[0]["vip"] is False
    assert old.version != new.version
    assert first.run_id in {r["run_id"] for r in old.runs}
    assert later.run_id in {r["run_id"] for r in new.runs}
    assert first.run_id not in {r["run_id"] for r in new.runs}

    gone = row_lineage(settings, "public.customers", {"id": 9}, provider=fake)
    presence = {s.snapshot_id: s.present for s in gone.snapshots}
    assert presence[first.snapshot_id] and not presence[later.snapshot_id]
    with pytest.raises(TrainingError, match="has no column nope"):
        row_lineage(settings, "public.customers", {"nope": 1}, provider=fake)
    with pytest.raises(TrainingError, match="no snapshot holds table 'public.nope'"):
        row_lineage(settings, "public.nope", {"id": 1}, provider=fake)


# -- command line -------------------------------------------------------------------------

def test_cli_rebuild_and_lineage(settings: Settings, first: TrainResult,
                                 fake: FakeSnapshotProvider, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from tidelog import cli

    monkeypatch.setenv("TIDELOG_HOME", str(settings.home))
    monkeypatch.setenv("TIDELOG_MLFLOW_URI", settings.mlflow_uri)
    monkeypatch.setenv("TIDELOG_SNAPSHOT_ROOT", settings.snapshot_root)
    monkeypatch.setattr(rebuild_module, "default_provider", lambda: fake)
    monkeypatch.setattr(train_module, "default_provider", lambda: fake)

    assert cli.main(["train", "--recipe", RECIPE, "--param", "C=0.5", "--seed", "3",
                     "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["params"] == {"C": 0.5} and trained["seed"] == 3
    assert trained["snapshot_id"] == first.snapshot_id

    assert cli.main(["rebuild", first.run_id, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dataset_match"] and report["model_match"] and report["run_id"] == first.run_id

    assert cli.main(["lineage", "model", "churn/1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["snapshot_id"] == first.snapshot_id

    assert cli.main(["rebuild", "0" * 32]) == 2
    assert "unknown run" in capsys.readouterr().err


def test_cli_argument_parsing() -> None:
    assert parse_param("n=3") == ("n", 3)
    assert parse_param("C=0.5") == ("C", 0.5)
    assert parse_param("model=forest") == ("model", "forest")
    with pytest.raises(TrainingError, match="KEY=VALUE"):
        parse_param("oops")
    assert parse_at(None) == "latest"
    cut = Cut((PartitionCut("t", 0, end=3, cluster_id="c", topic_id="x"),))
    assert parse_at(json.dumps(cut.to_json())) == cut


def test_one_cut_parser_for_cli_and_api(tmp_path: Path) -> None:
    from api.core import cut_or_latest
    from snapshotter.cut import parse_at as parse

    cut = Cut((PartitionCut("t", 0, end=3, cluster_id="c", topic_id="x"),))
    saved = tmp_path / "cut.json"
    saved.write_text(json.dumps(cut.to_json()))
    assert parse(f"@{saved}") == cut == parse(cut.to_json()) == parse(cut)
    assert parse("latest") == parse(None) == "latest"
    assert parse("run-123") == "run-123"  # --since also takes a run id
    with pytest.raises(CutError, match="cannot read the cut file"):
        parse(f"@{tmp_path / 'missing.json'}")
    assert cut_or_latest(cut.to_json()) == cut and cut_or_latest(None) == "latest"
    with pytest.raises(CutError, match="not @FILE"):
        cut_or_latest(f"@{saved}")
    with pytest.raises(CutError, match="not valid JSON"):
        cut_or_latest("lates")


def test_fake_digest_ignores_row_order() -> None:
    frame = pl.DataFrame({"id": [1, 2, 3], "v": ["a", "b", None]})
    assert frame_digest(frame) == frame_digest(frame.reverse())
    assert frame_digest(frame) != frame_digest(frame.head(2))
