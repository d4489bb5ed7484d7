"""The DuckDB catalog: one schema per snapshot, `latest`, and `tidelog.snapshots`.

    duckdb .tidelog/catalog.duckdb -c "select * from snap_<id>.customers"

Views reference the snapshot's Parquet files by absolute path, so the catalog is small and
always agrees with the files; schema names use the table name without its source schema
(`public.customers` -> `snap_<id>.customers`); when two chosen tables share a name in
different source schemas, the view is named `<schema>__<table>`.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from snapshotter.layout import sql_text, visible_sql
from snapshotter.manifest import Manifest
from tidelog.errors import SnapshotError
from tidelog.settings import Settings

__all__ = ["catalog_path", "register_snapshot", "rebuild_catalog", "run_sql", "view_names"]


def catalog_path(settings: Settings) -> Path:
    return Path(settings.home) / "catalog.duckdb"


@contextmanager
def _writer(settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    path = catalog_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        con = duckdb.connect(str(path))
        try:
            yield con
        finally:
            con.close()
            fcntl.flock(lock, fcntl.LOCK_UN)


def view_names(manifest: Manifest) -> dict[str, str]:
    short = [t.split(".", 1)[1] for t in manifest.tables]
    return {t: (t.split(".", 1)[1] if short.count(t.split(".", 1)[1]) == 1
                else t.replace(".", "__")) for t in manifest.tables}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _create_views(con: duckdb.DuckDBPyConnection, schema: str, manifest: Manifest,
                  snapshot_dir: Path) -> None:
    con.execute(f"create schema if not exists {_quote(schema)}")
    for table, view in view_names(manifest).items():
        relation = visible_sql(snapshot_dir, manifest.tables[table])
        con.execute(f"create or replace view {_quote(schema)}.{_quote(view)} as "
                    f"select * from {relation}")


def register_snapshot(settings: Settings, manifest: Manifest) -> None:
    snapshot_dir = Path(settings.snapshot_root) / manifest.id
    with _writer(settings) as con:
        con.execute("create schema if not exists tidelog")
        con.execute(
            "create table if not exists tidelog.snapshots (id varchar primary key, "
            "created_at varchar, tables varchar[], rows bigint, cut json, digest varchar, "
            "built_from varchar, path varchar)"
        )
        con.execute("delete from tidelog.snapshots where id = ?", [manifest.id])
        con.execute(
            "insert into tidelog.snapshots values (?, ?, ?, ?, ?, ?, ?, ?)",
            [manifest.id, manifest.created_at, sorted(manifest.tables),
             sum(t.rows for t in manifest.tables.values()), json.dumps(manifest.cut.to_json()),
             manifest.digest, manifest.built_from, str(snapshot_dir)],
        )
        _create_views(con, f"snap_{manifest.id}", manifest, snapshot_dir)
        newest = con.execute(
            "select id, path from tidelog.snapshots order by created_at desc, id desc limit 1"
        ).fetchone()
        if newest and newest[0] == manifest.id:
            con.execute("drop schema if exists latest cascade")
            _create_views(con, "latest", manifest, snapshot_dir)
        _create_change_views(con, settings, manifest)


def _create_change_views(con: duckdb.DuckDBPyConnection, settings: Settings,
                         manifest: Manifest) -> None:
    """`changes.<table>`: every archived change event of the table, with before/after.

    Filter by `__offset` between two cuts' ends to get the changes between them; the
    view globs the archive, so it sees segments archived later too. Local archives only
    (an object-store archive would need DuckDB's httpfs extension).
    """
    root = settings.archive_root
    if "://" in root:
        return
    con.execute("create schema if not exists changes")
    for table, view in view_names(manifest).items():
        part = next(p for p in manifest.cut.partitions if p.topic == manifest.tables[table].topic)
        generation = _generation_number(root, part.topic, part.partition, part.topic_id)
        if generation is None:
            continue
        pattern = f"{root}/{part.topic}/p{part.partition}/g{generation}/*.parquet"
        con.execute(
            f"create or replace view changes.{_quote(view)} as select "
            "__offset, __op, __key, __lsn, __txid, __ts_ms, __before, "
            "* exclude (__partition, __offset, __op, __key, __lsn, __txid, __tx, __ts_ms, "
            f"__before) from read_parquet({sql_text(pattern)}, union_by_name = true)")


def _generation_number(root: str, topic: str, partition: int, topic_id: str) -> int | None:
    log = Path(root) / topic / f"p{partition}" / "log.json"
    if not log.exists():
        return None
    for gen in json.loads(log.read_text())["generations"]:
        if gen["topic_id"] == topic_id:
            return int(gen["generation"])
    return None


def unregister_snapshot(settings: Settings, snapshot_id: str) -> None:
    with _writer(settings) as con:
        con.execute(f"drop schema if exists {_quote('snap_' + snapshot_id)} cascade")
        con.execute("delete from tidelog.snapshots where id = ?", [snapshot_id])


def rebuild_catalog(settings: Settings, manifests: list[Manifest]) -> None:
    for manifest in sorted(manifests, key=lambda m: (m.created_at, m.id)):
        register_snapshot(settings, manifest)


def run_sql(settings: Settings, sql: str) -> tuple[list[str], list[tuple[object, ...]]]:
    path = catalog_path(settings)
    if not path.exists():
        raise SnapshotError(f"no catalog at {path} yet; create a snapshot first "
                            "(`tidelog snapshot create --tables ...`)")
    con = duckdb.connect(str(path), read_only=True)
    try:
        cur = con.execute(sql)
        columns = [d[0] for d in cur.description or []]
        return columns, cur.fetchall()
    except duckdb.Error as exc:
        raise SnapshotError(f"query failed: {exc}") from exc
    finally:
        con.close()
