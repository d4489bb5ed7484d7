"""Exclusions and gc on the real stack: Postgres, Debezium in Kafka Connect, the Tansu
broker and the session's MLflow server; `examples.shop` in a schema of its own, captured
under a unique topic prefix, archived and snapshotted under this module's own roots.

Three runs on three snapshots of a moving database: A (unregistered), B (registered), C
(unregistered, trained with an exclusion). gc must keep B's snapshot and its base and
every archive segment B's cut needs, delete the rest, and leave B (and C, whose cut is
still archived) rebuildable bit for bit.
"""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.gc import collect_garbage
from cdc.connector import ConnectorSpec, apply, delete
from examples.shop import Shop
from snapshotter.archive import Archive
from snapshotter.snapshots import list_snapshots
from tests.integration.cdc_helpers import private_settings, unique_name
from tidelog.demo.capture import wait_for_capture
from tidelog.settings import Settings
from trainer.exclusions import ExclusionStore
from trainer.lineage import model_lineage
from trainer.rebuild import rebuild
from trainer.tracking import connect
from trainer.train import TrainResult, train

pytestmark = pytest.mark.integration

PARAMS: dict[str, str | int | float] = {"model": "forest", "n_estimators": 15, "max_depth": 5}
SEED = 5
# The churn recipe, recording the customer ids it was handed as a run tag.
SEEN_IDS = """
    from examples.churn import train as churn

    def train(tables, params, seed):
        result = churn(tables, params, seed)
        customers = next(f for n, f in tables.items() if n.endswith(".customers"))
        result.tags["test.customer_ids"] = ",".join(
            str(i) for i in sorted(customers["id"].to_list()))
        return result
"""


@dataclasses.dataclass
class World:
    env: Settings
    shop: Shop
    model: str
    a: TrainResult
    b: TrainResult
    c: TrainResult
    excluded: list[int]


@pytest.fixture(scope="module")
def world(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    name = unique_name("gc")
    root = tmp_path_factory.mktemp("gc")
    (root / "recipe_gc_seen.py").write_text(textwrap.dedent(SEEN_IDS))
    sys.path.insert(0, str(root))
    env = private_settings(settings, root, name)
    shop = Shop(env.postgres_dsn, name)
    spec = ConnectorSpec(name, shop.tables, name)
    shop.load(customers=400)
    apply(env, spec, timeout=180)
    recipe = "recipe_gc_seen:train"
    try:
        model = f"gc-churn-{name}"
        wait_for_capture(env, dict(shop.events))
        a = train(env, recipe, at="latest", tables=shop.tables, params=PARAMS, seed=SEED)
        shop.change()
        wait_for_capture(env, dict(shop.events))
        b = train(env, recipe, at="latest", tables=shop.tables, params=PARAMS, seed=SEED,
                  register=model)
        _refund_some(shop)
        wait_for_capture(env, dict(shop.events))
        customers = f"{shop.schema}.customers"
        excluded = [5, 6]
        store = ExclusionStore.for_settings(env)
        for key in excluded:
            store.add(customers, {"id": key}, "anomalous sign-up", by="test")
        c = train(env, recipe, at="latest", tables=shop.tables, params=PARAMS, seed=SEED)
        yield World(env, shop, model, a, b, c, excluded)
    finally:
        sys.path.remove(str(root))
        delete(env, spec, drop_slot=True)
        shop.drop()


def _refund_some(shop: Shop) -> None:
    """A later business change (one transaction) for the third snapshot."""
    import psycopg

    with psycopg.connect(shop.dsn, autocommit=True) as conn, conn.transaction():
        shop._run(conn, "update {s}.payments set status = 'refunded' where id %% 89 = 0",
                  table="payments", kind="update")


def _seen(env: Settings, run_id: str) -> list[int]:
    tags = connect(env).get_run(run_id).data.tags
    return [int(i) for i in tags["test.customer_ids"].split(",")]


def _snapshot_dirs(env: Settings) -> set[str]:
    return {p.name for p in Path(env.snapshot_root).iterdir() if not p.name.startswith(".")}


def test_exclusions_leave_rows_out_of_training_and_rebuild_applies_the_recorded_set(
        world: World) -> None:
    env, c = world.env, world.c
    customers = f"{world.shop.schema}.customers"
    seen = _seen(env, c.run_id)
    assert not set(world.excluded) & set(seen)
    # the snapshot itself still holds them: exclusions are not erasures
    assert c.manifest.tables[customers].rows == len(seen) + len(world.excluded)
    assert c.tags["tidelog.exclusions.count"] == "2"
    assert c.tags[f"tidelog.exclusions.removed.{customers}"] == "2"
    # B was trained before the exclusions: it saw both rows
    assert set(world.excluded) <= set(_seen(env, world.b.run_id))
    # an exclusion added later changes neither the rebuild nor what it was trained on
    ExclusionStore.for_settings(env).add(customers, {"id": seen[0]}, "later", by="test")
    report = rebuild(env, c.run_id)
    assert report.verified and report.artifact_match, report.to_json()
    assert _seen(env, report.new_run_id) == seen


def test_gc_keeps_exactly_what_the_registered_model_needs(world: World) -> None:
    env, a, b, c = world.env, world.a, world.b, world.c
    assert len({a.snapshot_id, b.snapshot_id, c.snapshot_id}) == 3
    manifests = {m.id: m for m in list_snapshots(env)}
    base = manifests[b.snapshot_id].built_from
    assert base == a.snapshot_id  # B's snapshot was built on A's
    archive = Archive(env.archive_root)
    segments_before = {s.path for t in archive.topics()
                       for g in archive.generations(t, 0)
                       for s in archive.segments(t, 0, g.number)}
    before = _snapshot_dirs(env)

    dry = collect_garbage(env, {}, dry_run=True, keep_days=0, keep_snapshots=0)
    assert _snapshot_dirs(env) == before  # a dry run deletes nothing
    kept = {s["snapshot_id"]: s["why"] for s in dry["keep"]["snapshots"]}
    assert kept == {
        b.snapshot_id: [f"model version {world.model}/1, run {b.run_id}"],
        a.snapshot_id: [f"base of kept snapshot {b.snapshot_id}"]}
    assert [s["snapshot_id"] for s in dry["delete"]["snapshots"]] == [c.snapshot_id]
    # every partition of B's cut is in a kept range that names the model version
    ranges = {(k["topic"], k["partition"]): k for k in dry["keep"]["segments"]}
    for p in b.manifest.cut.partitions:
        kept_range = ranges[(p.topic, p.partition)]
        assert kept_range["offsets"][0] <= p.start and kept_range["offsets"][1] >= p.end
        assert any(world.model in why for why in kept_range["why"])
    assert dry["delete"]["segments"] == []  # one log, its current generation kept whole

    done = collect_garbage(env, {}, dry_run=False, keep_days=0, keep_snapshots=0)
    assert done["result"]["deleted_snapshots"] == [c.snapshot_id]
    assert _snapshot_dirs(env) == before - {c.snapshot_id}
    assert not list(Path(env.snapshot_root).glob(".deleted-*"))
    segments_after = {s.path for t in archive.topics()
                      for g in archive.generations(t, 0)
                      for s in archive.segments(t, 0, g.number)}
    assert segments_after == segments_before
    # the catalog forgot the deleted snapshot
    from snapshotter.catalog import run_sql

    _, rows = run_sql(env, "select id from tidelog.snapshots")
    assert {r[0] for r in rows} == {a.snapshot_id, b.snapshot_id}

    # the registered model rebuilds bit for bit from what was kept
    report = rebuild(env, b.run_id)
    assert report.verified and report.artifact_match, report.to_json()
    assert report.digest_rebuilt == b.manifest.digest
    assert report.model_rebuilt == b.model_sha256
    assert model_lineage(env, world.model).run.snapshot_id == b.snapshot_id
    # C's snapshot is gone but its cut is still archived: it rebuilds exactly too
    again = rebuild(env, c.run_id)
    assert again.verified and _seen(env, again.new_run_id) == _seen(env, c.run_id)
