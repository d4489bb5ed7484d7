"""Issue 16, item 1 on the real stack: erase a customer who is in two snapshots and a
registered model.

Real Postgres, Debezium in Kafka Connect, the Tansu broker and MLflow of the session stack;
the source is `examples.shop` in a schema of its own with its own connector, archive,
snapshots and TIDELOG_HOME, so every file this test searches belongs to it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import psycopg
import pytest

from cdc.connector import ConnectorSpec, apply, delete
from examples.shop import Shop
from snapshotter.archive import Archive
from snapshotter.snapshots import open_snapshot
from snapshotter.verify import verify_snapshot
from tests.integration.cdc_helpers import private_settings, unique_name
from tidelog.demo.capture import wait_for_capture
from tidelog.errors import DatasetErased
from tidelog.settings import Settings
from trainer.erasure import ErasureReport, erase, erasure_tag, list_erasures, verify_ledger
from trainer.rebuild import rebuild
from trainer.tracking import connect
from trainer.train import TrainResult, train

pytestmark = pytest.mark.integration

RECIPE = "examples.churn:train"
PARAMS: dict[str, str | int | float] = {"model": "forest", "n_estimators": 10, "max_depth": 4}
SUBJECT = 5
CRASHED = 9


@dataclasses.dataclass
class World:
    env: Settings
    shop: Shop
    model: str
    first: TrainResult
    second: TrainResult
    secrets: list[str]
    report: ErasureReport


def _files_with(root: Path, needles: list[str]) -> list[str]:
    """Files under `root` whose raw bytes, or whose Parquet rows as DuckDB reads them,
    hold any needle."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if any(n.encode() in data for n in needles):
            found.append(str(path))
        elif path.suffix == ".parquet":
            text = str(duckdb.sql(f"select * from read_parquet('{path}')").fetchall())
            if any(n in text for n in needles):
                found.append(str(path))
    return found


@pytest.fixture(scope="module")
def world(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    name = unique_name("erase")
    root = tmp_path_factory.mktemp("erase")
    env = private_settings(settings, root, name)
    shop = Shop(env.postgres_dsn, name)
    spec = ConnectorSpec(name, shop.tables, name)
    shop.load(customers=200)
    secrets = [f"zelda.{name}@forget-me.example", f"Zelda Forgetme {name}",
               f"Zelda Renamed {name}"]
    customers = f"{name}.customers"
    with psycopg.connect(env.postgres_dsn, autocommit=True) as conn:
        conn.execute(f"update {customers} set email = %s, full_name = %s where id = %s",
                     (secrets[0], secrets[1], SUBJECT))
        conn.execute(f"update {customers} set email = %s where id = %s",
                     (f"crash.{name}@forget-me.example", CRASHED))
    apply(env, spec, timeout=180)
    try:
        model = f"erase-churn-{name}"
        wait_for_capture(env, dict(shop.events))
        first = train(env, RECIPE, at="latest", tables=shop.tables, params=PARAMS, seed=3,
                      register=model)
        with psycopg.connect(env.postgres_dsn, autocommit=True) as conn:
            # an update: the before image (REPLICA IDENTITY FULL) holds the old values too
            conn.execute(f"update {customers} set full_name = %s where id = %s",
                         (secrets[2], SUBJECT))
            conn.execute(f"update {customers} set country = 'NL' where id = 3")
        shop.events[customers] += 2
        wait_for_capture(env, dict(shop.events))
        second = train(env, RECIPE, at="latest", tables=shop.tables, params=PARAMS, seed=3)
        assert _files_with(root, secrets)  # the subject is there before
        report = erase(env, customers, {"id": SUBJECT}, "GDPR art. 17, ticket 16",
                       "integration-test")
        yield World(env, shop, model, first, second, secrets, report)
    finally:
        delete(env, spec, drop_slot=True)
        shop.drop()


def test_no_byte_of_the_subject_is_left_under_tidelog_home(world: World) -> None:
    report = world.report
    assert report.erasure_id and report.segments
    assert {world.first.snapshot_id, world.second.snapshot_id} <= set(report.snapshots)
    assert _files_with(Path(world.env.home), world.secrets) == []
    # the archive still reads gap-free and verified
    archive = Archive(world.env.archive_root)
    topic = f"{world.env.topic_prefix}.{world.shop.schema}.customers"
    assert archive.damaged(archive.segments(topic, 0, 0)) == []
    # ... and the catalog's views read the rewritten files
    con = duckdb.connect(str(Path(world.env.home) / "catalog.duckdb"), read_only=True)
    ids = [r[0] for r in con.execute(
        f"select id from snap_{world.first.snapshot_id}.customers").fetchall()]
    assert SUBJECT not in ids and len(ids) == 199
    con.close()


def test_recorded_digests_still_verify(world: World) -> None:
    for result in (world.first, world.second):
        check = verify_snapshot(world.env, result.snapshot_id)
        assert check.ok, check
        assert check.digest_recorded == result.manifest.digest
        table = open_snapshot(world.env, result.snapshot_id).manifest.tables[
            f"{world.shop.schema}.customers"]
        assert table.erased and table.erased[0].erasure == world.report.erasure_id
        assert table.visible_rows == table.rows - 1


def test_runs_and_model_versions_are_flagged_and_ledgered(world: World) -> None:
    eid = world.report.erasure_id
    assert eid is not None
    tracking = connect(world.env)
    for result in (world.first, world.second):
        assert tracking.get_run(result.run_id).data.tags[erasure_tag(eid)] == "affected"
    version = tracking.model_version(world.model, 1)
    assert version.tags[erasure_tag(eid)] == "affected"
    entry = list_erasures(world.env).items[-1]
    assert entry["id"] == eid and entry["actor"] == "integration-test"
    assert {world.first.run_id, world.second.run_id} <= set(entry["runs"])
    assert {"name": world.model, "version": "1", "run_id": world.first.run_id} in \
        entry["model_versions"]
    assert world.shop.schema in entry["cannot_erase"]["source_database"]["where"]
    assert any(world.env.topic_prefix in t for t in entry["cannot_erase"]["kafka_topics"]["where"])
    assert json.dumps({"id": SUBJECT}, separators=(",", ":")) not in json.dumps(entry)
    assert verify_ledger(world.env).ok


def test_rebuild_names_the_erasure_and_without_erased_makes_a_linked_run(world: World
                                                                        ) -> None:
    eid = world.report.erasure_id
    assert eid is not None
    with pytest.raises(DatasetErased) as refused:
        rebuild(world.env, world.first.run_id)
    assert f"dataset changed by erasure {eid}" in refused.value.message
    assert "every other row is exactly as recorded" in refused.value.message
    report = rebuild(world.env, world.first.run_id, without_erased=True)
    assert report.dataset_match  # rebuilt + kept sums == recorded digests
    tags = connect(world.env).get_run(report.new_run_id).data.tags
    assert tags["tidelog.rebuild_of"] == world.first.run_id
    assert tags["tidelog.rebuild.without_erased"] == eid
    assert tags[erasure_tag(eid)] == "rebuilt-without"
    customers = f"{world.shop.schema}.customers"
    assert tags[f"tidelog.rows.{customers}"] == str(
        world.first.manifest.tables[customers].rows - 1)
    # the new run is exactly rebuildable in its turn: its own digests are the erased data
    again = rebuild(world.env, report.new_run_id)
    assert again.dataset_match


def _cli(env: Settings, *args: str, crash_at: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "TIDELOG_HOME": str(env.home),
               "TIDELOG_POSTGRES_DSN": env.postgres_dsn,
               "TIDELOG_BOOTSTRAP_SERVERS": env.bootstrap_servers,
               "TIDELOG_CONNECT_URL": env.connect_url, "TIDELOG_MLFLOW_URI": env.mlflow_uri,
               "TIDELOG_TOPIC_PREFIX": env.topic_prefix,
               "TIDELOG_CONNECTOR_NAME": env.connector_name,
               "TIDELOG_ARCHIVE_ROOT": env.archive_root,
               "TIDELOG_SNAPSHOT_ROOT": env.snapshot_root, "TIDELOG_CRASH_AT": crash_at}
    return subprocess.run([sys.executable, "-m", "tidelog.cli", *args], env=environ,
                          capture_output=True, text=True, timeout=600)


def test_a_killed_erase_leaves_old_or_new_and_the_next_completes_it(world: World) -> None:
    customers = f"{world.shop.schema}.customers"
    needle = [f"crash.{world.env.topic_prefix}@forget-me.example"]
    killed = _cli(world.env, "erase", "--table", customers, "--key", json.dumps({"id": CRASHED}),
                  "--reason", "crash test", crash_at="erasure.snapshot_files_written")
    assert killed.returncode == 137, killed.stderr
    # archive rewritten (new), snapshots untouched (old): each whole and verified
    for result in (world.first, world.second):
        assert verify_snapshot(world.env, result.snapshot_id).ok
        rows = open_snapshot(world.env, result.snapshot_id).table(customers)
        assert CRASHED in rows["id"].to_list()
    assert list_erasures(world.env).pending
    done = _cli(world.env, "erase", "--table", customers, "--key", json.dumps({"id": CRASHED}),
                "--reason", "crash test", "--json", crash_at="")
    assert done.returncode == 0, done.stderr
    assert "already erased" in json.loads(done.stdout)["notes"][-1]
    assert _files_with(Path(world.env.home), needle) == []
    assert not list_erasures(world.env).pending and verify_ledger(world.env).ok
    for result in (world.first, world.second):
        assert verify_snapshot(world.env, result.snapshot_id).ok
