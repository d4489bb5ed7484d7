"""Issue 4 end to end on the real stack: train, move the database on, train again, rebuild.

Real Postgres, Debezium in Kafka Connect, the Tansu broker and the MLflow tracking server
of the session stack. The source is `examples.shop` in a schema of its own, captured by a
connector with a unique topic prefix, archived and snapshotted under this module's own
roots, so nothing here sees other tests' data.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdc.connector import ConnectorSpec, apply, delete
from examples.shop import Shop
from snapshotter.archive import Archive
from snapshotter.archiving import cdc_topics
from snapshotter.verify import SnapshotReport, verify_snapshot
from tests.integration.cdc_helpers import private_settings, unique_name
from tidelog.demo.capture import wait_for_capture
from tidelog.errors import DigestMismatch
from tidelog.settings import Settings
from trainer.lineage import model_lineage, row_lineage
from trainer.rebuild import rebuild
from trainer.tracking import connect
from trainer.train import TrainResult, train

pytestmark = pytest.mark.integration

RECIPE = "examples.churn:train"
PARAMS: dict[str, str | int | float] = {"model": "forest", "n_estimators": 25, "max_depth": 6}
SEED = 11


@dataclasses.dataclass
class History:
    env: Settings
    shop: Shop
    model: str
    first: TrainResult
    second: TrainResult
    first_matches_source: SnapshotReport
    second_matches_source: SnapshotReport
    rows_then: dict[str, dict[str, Any] | None]  # tracked customers at the first run
    rows_now: dict[str, dict[str, Any] | None]  # ... and at the second


@pytest.fixture(scope="module")
def history(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    name = unique_name("e2e")
    root = tmp_path_factory.mktemp("e2e")
    env = private_settings(settings, root, name)
    shop = Shop(env.postgres_dsn, name)
    spec = ConnectorSpec(name, shop.tables, name)
    shop.load(customers=600)
    apply(env, spec, timeout=180)
    try:
        model = f"e2e-churn-{name}"
        wait_for_capture(env, dict(shop.events))
        first = train(env, RECIPE, at="latest", tables=shop.tables, params=PARAMS, seed=SEED,
                      register=model)
        first_check = verify_snapshot(env, first.snapshot_id, against_source=True)
        rows_then = {k: shop.row("customers", v) for k, v in shop.tracked.items()}

        shop.change()  # updates, deletes, new rows, ALTER TABLE ADD COLUMN + backfill
        wait_for_capture(env, dict(shop.events))
        second = train(env, RECIPE, at="latest", tables=shop.tables, params=PARAMS, seed=SEED,
                       register=model)
        second_check = verify_snapshot(env, second.snapshot_id, against_source=True)
        rows_now = {k: shop.row("customers", v) for k, v in shop.tracked.items()}
        yield History(env, shop, model, first, second, first_check, second_check, rows_then,
                      rows_now)
    finally:
        delete(env, spec, drop_slot=True)
        shop.drop()


def _digests(result: TrainResult) -> dict[str, str]:
    return {name: t.digest for name, t in result.manifest.tables.items()}


def test_each_run_trained_on_exactly_the_database_of_its_moment(history: History) -> None:
    for check in (history.first_matches_source, history.second_matches_source):
        assert check.ok and check.source is not None, check
        assert all(t["ok"] for t in check.source.values()), check.source
    first, second = history.first, history.second
    assert first.registered_version == "1" and second.registered_version == "2"
    assert first.snapshot_id != second.snapshot_id
    # every table changed between the runs, and the added column is in the second only
    assert all(_digests(first)[t] != _digests(second)[t] for t in history.shop.tables)
    customers = f"{history.shop.schema}.customers"
    assert "loyalty_tier" not in dict(first.manifest.tables[customers].columns)
    assert "loyalty_tier" in dict(second.manifest.tables[customers].columns)
    # the cut is recorded on the run, with its log identity
    run = connect(history.env).get_run(first.run_id)
    assert run.data.tags["tidelog.snapshot_id"] == first.snapshot_id
    assert run.data.tags["tidelog.cut.fingerprint"] == first.manifest.cut.fingerprint()
    for p in first.manifest.cut.partitions:
        assert p.cluster_id and p.topic_id
        assert run.data.tags[f"tidelog.cut.end.{p.topic}/{p.partition}"] == str(p.end)


def test_rebuild_reproduces_the_first_run_although_the_database_moved_on(
        history: History) -> None:
    report = rebuild(history.env, history.first.run_id)
    assert report.dataset_match and report.model_match and report.artifact_match
    assert report.verified
    assert {t: c.rebuilt_digest for t, c in report.tables.items()} == _digests(history.first)
    assert report.digest_rebuilt == history.first.manifest.digest
    assert report.predictions_rebuilt == history.first.predictions_sha256
    assert report.model_rebuilt == history.first.model_sha256
    assert report.metrics_rebuilt == history.first.metrics
    rebuilt_run = connect(history.env).get_run(report.new_run_id)
    assert rebuilt_run.data.tags["tidelog.rebuild_of"] == history.first.run_id
    assert rebuilt_run.data.tags["tidelog.rebuild.dataset_match"] == "true"
    rebuilds = model_lineage(history.env, history.model, "1").rebuilds
    assert report.new_run_id in {r["run_id"] for r in rebuilds}


def _delete_topics(env: Settings) -> list[str]:
    from confluent_kafka.admin import AdminClient

    topics = cdc_topics(env)
    admin = AdminClient(env.kafka_config())
    for future in admin.delete_topics(topics, operation_timeout=30).values():
        future.result(timeout=30)
    deadline = time.monotonic() + 30
    while set(topics) & set(admin.list_topics(timeout=10).topics):
        assert time.monotonic() < deadline, "the broker still lists the deleted topics"
        time.sleep(0.2)
    return topics


def test_rebuild_after_the_topics_were_deleted_uses_the_archive_alone(
        history: History) -> None:
    deleted = _delete_topics(history.env)
    assert {f"{history.env.topic_prefix}.{t}" for t in history.shop.tables} <= set(deleted)
    for result in (history.first, history.second):
        report = rebuild(history.env, result.run_id)
        assert report.verified, report.to_json()
        assert {t: c.rebuilt_digest for t, c in report.tables.items()} == _digests(result)


def _tamper(segment: Path, column: str) -> Any:
    """Rewrite one value of one initial-snapshot row in an archived segment; keep the
    file's schema (with its tidelog.pg_type metadata) as it was."""
    table = pq.read_table(segment)
    ops = table.column("__op").to_pylist()
    row = ops.index("r")
    index = table.schema.get_field_index(column)
    values = table.column(index).to_pylist()
    values[row] = values[row] + 1
    field = table.schema.field(index)
    pq.write_table(table.set_column(index, field, pa.array(values, type=field.type)),
                   segment, compression="zstd")
    return table.column("__key")[row].as_py()


def test_a_tampered_archive_segment_makes_rebuild_fail_loudly(history: History) -> None:
    env, first = history.env, history.first
    payments = f"{history.shop.schema}.payments"
    part = next(p for p in first.manifest.cut.partitions
                if p.topic == f"{env.topic_prefix}.{payments}")
    archive = Archive(env.archive_root)
    generation = archive.generations(part.topic, part.partition)[0]
    segment = Path(archive.segments_for_range(part.topic, part.partition, generation.number,
                                              part.start, part.end)[0].path)
    assert segment.is_relative_to(Path(env.archive_root))
    original = segment.read_bytes()
    try:
        key = _tamper(segment, "amount")
        with pytest.raises(DigestMismatch) as caught:
            rebuild(env, first.run_id)
        error = caught.value
        assert error.details["tables"] == [payments]
        assert error.details["run_id"] == first.run_id
        assert payments in error.message and "refused" in error.message
        # the changed segment is named, in the message and in the details
        assert segment.name in error.message
        assert [Path(p).name for p in error.details["segments"]] == [segment.name]
        assert key  # the tampered row existed
    finally:
        segment.write_bytes(original)
    assert rebuild(env, first.run_id).verified


def test_lineage_of_each_model_version(history: History) -> None:
    env, first, second = history.env, history.first, history.second
    for version, result in (("1", first), ("2", second)):
        data = model_lineage(env, history.model, version).to_json()
        assert data["model"]["version"] == version
        assert data["run_id"] == result.run_id
        assert data["snapshot_id"] == result.snapshot_id
        assert data["cut"]["partitions"] == result.manifest.cut.to_json()["partitions"]
        assert data["lsn"] == result.manifest.cut.lsn
        assert data["digest"] == result.manifest.digest
        assert {t: v["digest"] for t, v in data["tables"].items()} == _digests(result)
        assert {t: v["rows"] for t, v in data["tables"].items()} == {
            t: m.rows for t, m in result.manifest.tables.items()}
        assert data["source"]["connector"] == env.connector_name
        assert data["source"]["topic_prefix"] == env.topic_prefix
        assert data["source"]["database"].endswith(env.postgres_dsn.rsplit("@", 1)[1])
        assert data["recipe"]["reference"] == RECIPE
        assert data["params"] == PARAMS and data["seed"] == SEED
        assert all(r["rebuild_of"] == result.run_id for r in data["rebuilds"])
    assert model_lineage(env, history.model).version == "2"  # newest without a version
    # the second cut continues the first: same logs, later offsets and LSN
    ends1 = {(p.topic, p.cluster_id, p.topic_id): p.end for p in first.manifest.cut.partitions}
    ends2 = {(p.topic, p.cluster_id, p.topic_id): p.end
             for p in second.manifest.cut.partitions}
    assert ends1.keys() == ends2.keys()
    assert all(ends2[k] > ends1[k] for k in ends1)
    assert (second.manifest.cut.lsn or 0) > (first.manifest.cut.lsn or 0)


def _versions(history: History, key: int) -> list[tuple[str, list[dict[str, Any]], set[str]]]:
    table = f"{history.shop.schema}.customers"
    found = row_lineage(history.env, table, {"id": key})
    assert found.table == table and found.key == {"id": key}
    return [(s.snapshot_id, s.rows, {r["run_id"] for r in s.runs}) for s in found.snapshots]


def test_lineage_of_rows_follows_their_history(history: History) -> None:
    first, second = history.first, history.second
    then, now = history.rows_then, history.rows_now
    snapshots = [first.snapshot_id, second.snapshot_id]

    updated = _versions(history, history.shop.tracked["updated"])
    assert [s for s, _, _ in updated] == snapshots
    (_, rows1, runs1), (_, rows2, runs2) = updated
    assert rows1[0]["email"] == then["updated"]["email"]  # type: ignore[index]
    assert rows2[0]["email"] == now["updated"]["email"] == "ada.new@example.com"  # type: ignore[index]
    assert "loyalty_tier" not in rows1[0]
    assert rows2[0]["loyalty_tier"] == now["updated"]["loyalty_tier"]  # type: ignore[index]
    assert first.run_id in runs1 and second.run_id in runs2 and first.run_id not in runs2
    assert all(connect(history.env).get_run(r).data.tags.get("tidelog.rebuild_of")
               == first.run_id for r in runs1 - {first.run_id})

    deleted = _versions(history, history.shop.tracked["deleted"])
    assert then["deleted"] is not None and now["deleted"] is None
    assert [len(rows) for _, rows, _ in deleted] == [1, 0]
    assert deleted[0][1][0]["email"] == then["deleted"]["email"]

    inserted = _versions(history, history.shop.tracked["inserted"])
    assert then["inserted"] is None and now["inserted"] is not None
    assert [len(rows) for _, rows, _ in inserted] == [0, 1]
    assert inserted[1][1][0]["email"] == now["inserted"]["email"]

    full = row_lineage(history.env, f"{history.shop.schema}.customers",
                       {"id": history.shop.tracked["updated"]})
    v1, v2 = (s.version for s in full.snapshots)
    assert v1 and v2 and v1 != v2
