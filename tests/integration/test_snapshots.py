"""Archive + snapshots end to end on the real stack: exact, deterministic, incremental."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import duckdb
import polars as pl
import psycopg
import pytest
from psycopg.rows import dict_row

from cdc.connector import ConnectorSpec, apply
from snapshotter.archive import Archive
from snapshotter.archiving import archive_topics
from snapshotter.catalog import catalog_path, run_sql
from snapshotter.cut import Cut
from snapshotter.digest import table_digest
from snapshotter.layout import visible_sql
from snapshotter.snapshots import create_snapshot, open_snapshot, rebuild_snapshot
from snapshotter.verify import diff_snapshots, verify_snapshot
from tests.integration.cdc_helpers import execute, private_settings, unique_name, wait_for_events
from tidelog.errors import CutError, SnapshotError
from tidelog.settings import Settings

pytestmark = pytest.mark.integration

TABLES = ["public.snap_customers", "public.snap_orders"]


def _pg_state(settings: Settings, table: str) -> list[dict[str, object]]:
    with psycopg.connect(settings.postgres_dsn, row_factory=dict_row) as conn:
        return list(conn.execute(f"select * from {table} order by 1"))


def _snap_state(settings: Settings, sid: str, table: str) -> list[dict[str, object]]:
    frame = open_snapshot(settings, sid).table(table)
    return frame.sort(frame.columns[0]).to_dicts()


@pytest.fixture(scope="module")
def env(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    name = unique_name("snap")
    root = tmp_path_factory.mktemp("snapdata")
    local = private_settings(settings, root, name)
    execute(settings,
            "drop table if exists snap_customers, snap_orders, snap_marker",
            "create table snap_customers (id int primary key, name text, "
            "balance numeric(12, 2), seen timestamptz)",
            "create table snap_orders (id bigint primary key, customer int, "
            "amount numeric(10, 2), note text)",
            "alter table snap_customers replica identity full",
            "insert into snap_customers select g, 'c' || g, g * 1.25, "
            "'2026-01-01'::timestamptz + g * interval '1 minute' from generate_series(1, 500) g",
            "insert into snap_orders select g, g % 500 + 1, g * 0.5, null "
            "from generate_series(1, 2000) g")
    apply(local, ConnectorSpec(name, tuple(TABLES), name), timeout=180)
    return local


def _settle(env: Settings, marker: str) -> None:
    """Write a marker row and wait until the archive holds it: the moment is captured."""
    execute(env, "update snap_customers set name = %s where id = 1", params=(marker,))
    topic = f"{env.topic_prefix}.public.snap_customers"
    wait_for_events(env, topic, lambda ev: any(
        e.after and e.after.get("name") == marker for e in ev), timeout=90)


def _phase(env: Settings, n: int) -> None:
    with psycopg.connect(env.postgres_dsn, autocommit=True) as conn:
        with conn.transaction():
            conn.execute("update snap_customers set balance = balance + %s "
                         "where id %% 7 = %s", (n, n % 7))
            conn.execute("delete from snap_orders where id %% 11 = %s", (n % 11,))
            conn.execute("insert into snap_orders select g, g %% 500 + 1, 1.00, 'phase ' || %s "
                         "from generate_series(%s::int, %s::int) g",
                         (str(n), 10_000 * n, 10_000 * n + 99))
        conn.execute("update snap_customers set id = id + 1000 where id = %s", (100 + n,))
        conn.execute("delete from snap_customers where id = %s", (200 + n,))
        if n == 2:
            conn.execute("alter table snap_orders add column channel text")
            conn.execute("update snap_orders set channel = 'web' where id % 3 = 0")


def test_snapshots_equal_postgres_at_each_moment(env: Settings) -> None:
    manifests = []
    for n in range(1, 4):
        _phase(env, n)
        _settle(env, f"marker {n}")
        expected = {t: _pg_state(env, t) for t in TABLES}
        manifest = create_snapshot(env, TABLES, "latest")
        manifests.append(manifest)
        assert manifest.cut.transaction_aligned
        for table in TABLES:
            assert manifest.tables[table].rows == len(expected[table])
            assert _snap_state(env, manifest.id, table) == expected[table], (n, table)
    # later snapshots were built incrementally from the earlier ones ...
    assert manifests[1].built_from == manifests[0].id
    assert "channel" in dict(manifests[2].tables["public.snap_orders"].columns)
    # ... and a full rebuild from the archive alone gives the same digests
    for manifest in manifests:
        rebuilt = rebuild_snapshot(env, manifest.cut, TABLES, Path(env.home) / "rebuilt")
        assert rebuilt.digest == manifest.digest
        assert {t: m.digest for t, m in rebuilt.tables.items()} == {
            t: m.digest for t, m in manifest.tables.items()}
        assert verify_snapshot(env, manifest.id).ok
    # the last snapshot is the current state: live Postgres agrees, value by value
    report = verify_snapshot(env, manifests[-1].id, against_source=True)
    assert report.ok and report.source is not None, report.source
    assert report.source["public.snap_orders"]["rows_source"] == \
        manifests[-1].tables["public.snap_orders"].rows
    # an earlier one does not, and the report says where
    stale = verify_snapshot(env, manifests[0].id, against_source=True)
    assert not stale.ok and stale.source is not None
    assert stale.source["public.snap_orders"]["differences"] > 0
    # asking again for the same cut gives the same snapshot, not a second one
    again = create_snapshot(env, TABLES, manifests[-1].cut)
    assert again.id == manifests[-1].id

    # DuckDB catalog: each snapshot a schema, `latest`, and tidelog.snapshots
    cols, rows = run_sql(env, f"select count(*) from snap_{manifests[0].id}.snap_orders")
    assert rows[0][0] == manifests[0].tables["public.snap_orders"].rows
    _, rows = run_sql(env, "select count(*) from latest.snap_customers")
    assert rows[0][0] == manifests[-1].tables["public.snap_customers"].rows
    _, rows = run_sql(env, "select id, digest from tidelog.snapshots order by created_at")
    assert {r[0] for r in rows} == {m.id for m in manifests}
    assert catalog_path(env).exists()
    # the change log between two cuts, with before and after images
    ends = [m.cut.ends()[(f"{env.topic_prefix}.public.snap_customers", 0)] for m in manifests]
    _, rows = run_sql(env, "select __op, count(*) from changes.snap_customers where "
                           f"__offset >= {ends[0]} and __offset < {ends[1]} group by 1")
    kinds = dict(rows)
    assert kinds.get("u", 0) > 0 and kinds.get("d", 0) >= 2 and kinds.get("c", 0) >= 1
    _, rows = run_sql(env, "select __before, name from changes.snap_customers where "
                           f"__op = 'u' and __offset >= {ends[0]} limit 1")
    assert rows[0][0] and json.loads(rows[0][0])["name"]  # replica identity full

    diff = diff_snapshots(env, manifests[0].id, manifests[1].id)
    orders = diff.tables["public.snap_orders"]
    assert orders.inserted == 100 and orders.deleted > 0
    customers = diff.tables["public.snap_customers"]
    assert customers.updated > 0 and customers.deleted >= 2  # a delete, a key change
    assert orders.columns_added == ("channel",)  # added in phase 2
    assert diff_snapshots(env, manifests[1].id, manifests[2].id).tables[
        "public.snap_orders"].columns_added == ()


def test_tampered_snapshot_fails_verification(env: Settings) -> None:
    manifest = create_snapshot(env, TABLES, "latest")
    snap = open_snapshot(env, manifest.id)
    path = snap.path / manifest.tables["public.snap_orders"].files[0]
    frame = pl.read_parquet(path)
    frame.with_columns(pl.col("note").fill_null("tampered")).write_parquet(path)
    report = verify_snapshot(env, manifest.id)
    assert not report.ok
    assert not report.tables["public.snap_orders"].ok
    assert report.tables["public.snap_customers"].ok


def test_bad_input_gives_clear_errors(env: Settings) -> None:
    with pytest.raises(CutError, match="unknown table"):
        create_snapshot(env, ["public.no_such_table"], "latest", catch_up=False)
    latest = create_snapshot(env, TABLES, "latest").cut
    beyond = json.loads(json.dumps(latest.to_json()))
    for p in beyond["partitions"]:
        p["end"] += 1_000_000
    with pytest.raises(CutError, match="beyond the archived high-water mark"):
        create_snapshot(env, TABLES, Cut.from_json(beyond))
    other_log = json.loads(json.dumps(latest.to_json()))
    other_log["partitions"][0]["topic_id"] = "AAAAAAAAAAAAAAAAAAAAAA"
    with pytest.raises(CutError, match="another log"):
        create_snapshot(env, TABLES, Cut.from_json(other_log))
    with pytest.raises(CutError, match="not valid JSON"):
        Cut.from_json("{nope")
    with pytest.raises(SnapshotError, match="no snapshot"):
        open_snapshot(env, "0000000000000000")
    before = sorted(p.name for p in Path(env.snapshot_root).iterdir())
    assert not [n for n in before if n.startswith(".tmp")], "a failed build left files"


def test_topic_deleted_after_archiving_still_builds(env: Settings) -> None:
    from confluent_kafka.admin import AdminClient

    manifest = create_snapshot(env, TABLES, "latest")
    archive_topics(env, [f"{env.topic_prefix}.{t}" for t in TABLES])
    admin = AdminClient(env.kafka_config())
    for _topic, future in admin.delete_topics(
            [f"{env.topic_prefix}.public.snap_orders"]).items():
        future.result(timeout=30)
    rebuilt = rebuild_snapshot(env, manifest.cut, TABLES, Path(env.home) / "after-delete")
    assert rebuilt.digest == manifest.digest
    status = Archive(env.archive_root).status()
    assert any(r["topic"].endswith("snap_orders") for r in status)


def _produce_recorded(env: Settings, topic: str, names: list[str]) -> None:
    """Replay real Debezium envelopes (tests/fixtures/recorded) into `topic`."""
    from confluent_kafka import Producer

    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "recorded"
    producer = Producer(env.kafka_config())
    for name in names:
        msg = json.loads((fixtures / name).read_text())
        producer.produce(topic, value=msg["value"].encode() if msg["value"] else None,
                         key=msg["key"].encode() if msg["key"] else None)
    producer.flush(30)


def test_recreated_topic_is_a_new_generation_and_never_mixed(
        settings: Settings, tmp_path: Path) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    from tidelog.errors import LogIdentityError

    prefix = unique_name("gen")
    env = dataclasses.replace(settings, topic_prefix=prefix, home=tmp_path,
                              archive_root=str(tmp_path / "archive"),
                              snapshot_root=str(tmp_path / "snapshots"))
    topic = f"{prefix}.public.t1"
    admin = AdminClient(env.kafka_config())

    def create() -> None:
        for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
            future.result(timeout=30)

    create()
    _produce_recorded(env, topic, ["rec_public_t1_000_r.json", "rec_public_t1_001_u.json",
                                   "rec_public_t1_002_c.json"])
    # Fed by the test, not by a connector: nothing to check capture against.
    first = create_snapshot(env, ["public.t1"], "latest", allow_stale=True)
    assert first.tables["public.t1"].rows == 2
    for future in admin.delete_topics([topic]).values():
        future.result(timeout=30)
    time.sleep(1)
    create()
    # the new log starts mid-history (no `r` events): the rows written before are not in it
    _produce_recorded(env, topic, ["rec_public_t1_003_d.json"])
    archive = Archive(env.archive_root)
    with pytest.raises(LogIdentityError, match="different log"):
        archive_topics(env, [topic], on_new_log="fail")
    archive_topics(env, [topic])
    generations = archive.generations(topic, 0)
    assert len(generations) == 2 and generations[0].topic_id != generations[1].topic_id
    with pytest.raises(CutError, match="does not begin with a Debezium snapshot"):
        create_snapshot(env, ["public.t1"], "latest", catch_up=False)
    # cuts on the old log still rebuild exactly, from the archive alone
    rebuilt = rebuild_snapshot(env, first.cut, ["public.t1"], tmp_path / "old-log")
    assert rebuilt.digest == first.digest
    # a cut naming the new log with offsets from the old one is refused
    mixed = first.cut.to_json()
    mixed["partitions"][0]["topic_id"] = generations[1].topic_id
    mixed["partitions"][0]["end"] = 3
    with pytest.raises(CutError, match="beyond the archived high-water mark"):
        create_snapshot(env, ["public.t1"], Cut.from_json(mixed), catch_up=False)


def test_archive_on_s3_compatible_storage(settings: Settings, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The archive root may be object storage: moto's S3 server stands in for it."""
    import subprocess
    import sys

    import pyarrow.fs as pafs
    from confluent_kafka.admin import AdminClient, NewTopic

    from tidelog.stack.process import free_port

    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H",
                               "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "tidelog")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "tidelog")
        s3 = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                               region="us-east-1", allow_bucket_creation=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                s3.create_dir("tidelog-archive")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        prefix = unique_name("s3")
        remote = dataclasses.replace(
            settings, topic_prefix=prefix, home=tmp_path / "remote",
            archive_root=f"s3://tidelog-archive/archive?endpoint_override=127.0.0.1:{port}"
                         "&scheme=http&region=us-east-1",
            snapshot_root=str(tmp_path / "remote" / "snapshots"))
        local = dataclasses.replace(remote, home=tmp_path / "local",
                                    archive_root=str(tmp_path / "local" / "archive"),
                                    snapshot_root=str(tmp_path / "local" / "snapshots"))
        topic = f"{prefix}.public.t1"
        admin = AdminClient(settings.kafka_config())
        for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
            future.result(timeout=30)
        _produce_recorded(remote, topic, sorted(
            p.name for p in (Path(__file__).resolve().parents[1] / "fixtures" / "recorded")
            .glob("rec_public_t1_*.json"))[:6])
        # The test writes the topic itself: there is no connector whose capture could be
        # checked, so the 'latest' cut is explicitly allowed to be unchecked.
        on_s3 = create_snapshot(remote, ["public.t1"], "latest", allow_stale=True)
        on_disk = create_snapshot(local, ["public.t1"], "latest", allow_stale=True)
        # Two archives of one topic: the same cut and rows, but each archive drew its own
        # row salts (docs/digest.md), so the digests differ while the content is equal.
        assert on_s3.id == on_disk.id and on_s3.digest != on_disk.digest
        table_s3, table_disk = on_s3.tables["public.t1"], on_disk.tables["public.t1"]
        assert table_s3.salted and table_disk.salted and table_s3.rows == table_disk.rows
        unsalted = [table_digest(duckdb.connect(), visible_sql(
            Path(side.snapshot_root) / on_s3.id, table)).digest
            for side, table in ((remote, table_s3), (local, table_disk))]
        assert unsalted[0] == unsalted[1]
        assert s3.get_file_info(pafs.FileSelector("tidelog-archive/archive", recursive=True))
        rebuilt = rebuild_snapshot(remote, on_s3.cut, ["public.t1"], tmp_path / "rebuilt")
        assert rebuilt.digest == on_s3.digest
    finally:
        server.terminate()
        server.wait(10)
