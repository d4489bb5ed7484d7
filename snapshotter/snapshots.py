"""Create, open, list and rebuild offset-bounded snapshots: the snapshotter's public API.

A snapshot lives in `<snapshot_root>/<id>/`: a directory of Parquet files per table
(layout.py, docs/archive.md "Snapshot layout on disk") and `manifest.json`, written last.
The pieces: which offsets a cut covers (planning.py), how one table's files are written
(writers.py picks full_build.py or layered_build.py), and how a build directory becomes a
published snapshot, atomically and under the id's lock (store.py). The id is derived from
the cut and the tables, so asking twice for the same data yields one snapshot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa

from snapshotter import engine
from snapshotter.archive import Archive
from snapshotter.cut import Cut
from snapshotter.digest import overall_digest, table_digest
from snapshotter.layout import changed_files, read_table, visible_sql
from snapshotter.manifest import Manifest, TableManifest
from snapshotter.openlineage import describe_snapshot
from snapshotter.planning import (
    check_archive,
    find_base,
    plan_cut,
    resolve_cut,
    snapshot_id,
    validate_cut,
)
from snapshotter.store import SnapshotStore
from snapshotter.table_files import KEY_COLUMN, Base
from snapshotter.writers import build_each, build_table, build_workers
from tidelog import __version__
from tidelog.crashpoints import crash_point
from tidelog.errors import (
    DigestMismatch,
    SnapshotError,
    SnapshotWriteError,
    TidelogError,
)
from tidelog.openlineage import traced
from tidelog.redact import redact_dsn
from tidelog.settings import Settings

__all__ = [
    "KEY_COLUMN",
    "Snapshot",
    "create_snapshot",
    "open_snapshot",
    "list_snapshots",
    "rebuild_snapshot",
    "resolve_cut",
    "plan_cut",
    "validate_cut",
    "snapshot_id",
]


@dataclass(frozen=True)
class Snapshot:
    """A published snapshot. Every read checks the table's files against the manifest
    first (`verify`), so nothing is ever read that differs from what its digest says."""

    manifest: Manifest
    path: Path
    _verified: set[str] = dataclasses.field(default_factory=set, compare=False, repr=False)

    def verify(self, name: str) -> None:
        """Refuse with DigestMismatch unless table `name`'s files are those the manifest
        describes: sha256 per file (skipped for files that still stat as recorded), or,
        for a manifest without checksums, the recomputed digest."""
        if name in self._verified:
            return
        table = self.manifest.tables[name]
        sid = self.manifest.id
        if table.checksums:
            bad = changed_files(self.path, table)
            what = (f"file{'s' if len(bad) > 1 else ''} {', '.join(bad)} "
                    "missing or failing the sha256 its manifest recorded")
        else:
            try:
                relation = visible_sql(self.path, table, with_salt=True)
                got = table_digest(duckdb.connect(), relation).digest
            except TidelogError:
                got = "unreadable"
            bad = [name] if got != table.digest else []
            what = f"content digest {got} where the manifest recorded {table.digest}"
        if bad:
            raise DigestMismatch(
                f"snapshot {sid} table {name} was changed after it was built ({what}); "
                "refusing to read it, since anything built from it would record a digest "
                f"its data does not have. See `tidelog snapshot verify {sid}`, then delete "
                "the snapshot and create it again from the archive at the same cut "
                f"(`tidelog snapshot show {sid}` prints the cut)",
                snapshot_id=sid, table=name, files=bad)
        self._verified.add(name)

    def table(self, name: str) -> pl.DataFrame:
        """The table's rows in the canonical order (key columns, then `__key`)."""
        if name not in self.manifest.tables:
            raise SnapshotError(f"snapshot {self.manifest.id} has no table {name}; it has "
                                f"{sorted(self.manifest.tables)}")
        self.verify(name)
        return read_table(self.path, self.manifest.tables[name])

    def tables(self) -> dict[str, pl.DataFrame]:
        return {name: self.table(name) for name in sorted(self.manifest.tables)}

    def duckdb(self) -> duckdb.DuckDBPyConnection:
        for name in self.manifest.tables:
            self.verify(name)
        con = duckdb.connect()
        for name, table in self.manifest.tables.items():
            schema, rel = name.split(".", 1)
            con.execute(f'create schema if not exists "{schema}"')
            con.execute(f'create view "{schema}"."{rel}" as '
                        f"select * from {visible_sql(self.path, table)}")
        return con


def _build(settings: Settings, archive: Archive, cut: Cut, tables: Sequence[str],
           store: SnapshotStore, sid: str, incremental: bool, *,
           row_hashes: bool = True) -> Manifest:
    """Build snapshot `sid` of `cut` into `store` and publish it (the caller holds its
    lock); incrementally on the newest usable snapshot of the settings' root.
    `row_hashes`: full builds may sum the archive's row hashes; False hashes every row
    of every file (what a rebuild's proof needs: docs/digest.md)."""
    tmp = store.build_dir(sid)
    try:
        bases = SnapshotStore.of(settings)
        found = (find_base(bases.manifests(), cut, tables)
                 if incremental and not cut.is_window else None)
        with contextlib.ExitStack() as hold:
            con = engine.connection()
            hold.callback(con.close)
            base = None
            if found is not None:
                # A shared lock on the base: deleting it waits until this build is done.
                hold.enter_context(bases.shared(found.id))
                if bases.intact(found, con):
                    # never build on a damaged snapshot; a full build is always right
                    base = Base(found, bases.path(found.id))
            workers, memory = build_workers(settings, len(tables))

            def build(table: str) -> TableManifest:
                # a connection of its own per table (same database): builds run at once
                cursor = engine.connection()
                try:
                    return build_table(cursor, settings, archive, cut, table, tmp, base,
                                       row_hashes=row_hashes, memory_bytes=memory)
                except (pl.exceptions.PolarsError, duckdb.Error, pa.ArrowException) as exc:
                    if _storage_failure(exc):
                        raise _write_failed(sid, store.root, exc) from exc
                    also = (f" and the base snapshot with `tidelog snapshot verify "
                            f"{base.manifest.id}`") if base else ""
                    raise SnapshotError(
                        f"building table {table} of snapshot {sid} failed: {exc}; check the "
                        f"archive with `tidelog archive verify`{also}", table=table) from exc
                finally:
                    cursor.close()

            table_manifests = build_each(build, sorted(tables), workers)
        manifest = Manifest(
            id=sid, cut=cut, tables=table_manifests,
            digest=overall_digest({k: v.digest for k, v in table_manifests.items()}),
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
            tidelog_version=__version__,
            built_from=base.manifest.id if base else "full",
            source={"topic_prefix": settings.topic_prefix,
                    "connector": settings.connector_name,
                    "database": redact_dsn(settings.postgres_dsn)},
        )
        store.publish(tmp, manifest)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# What polars, DuckDB and Arrow say when the disk (not the data) is the problem; they
# wrap the OS error in their own exception types and keep only its text.
_STORAGE_FAILURES = tuple(os.strerror(code) for code in (
    errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO))


def _storage_failure(exc: BaseException) -> bool:
    return isinstance(exc, OSError) or any(text in str(exc) for text in _STORAGE_FAILURES)


def _write_failed(sid: str, root: Path, exc: BaseException) -> SnapshotWriteError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return SnapshotWriteError(
        f"writing snapshot {sid} under {root} failed: {reason}; nothing of it was kept. "
        f"Free space (or fix permissions) under {root}, then retry", snapshot_id=sid,
        root=str(root))


@traced("snapshot", describe_snapshot)
def create_snapshot(settings: Settings, tables: Sequence[str], at: str | Cut = "latest", *,
                    incremental: bool = True, catch_up: bool = True,
                    allow_stale: bool = False) -> Manifest:
    from snapshotter.catalog import ensure_catalog, register_snapshot
    from snapshotter.mirror import sync_or_raise

    tables = sorted(set(tables))
    if not tables:
        raise SnapshotError("no tables given: pass --tables schema.table[,...]")
    ensure_catalog(settings)  # repairs what a crash between publish and register left
    archive = Archive(settings.archive_root)
    cut = resolve_cut(settings, tables, at, archive, catch_up=catch_up,
                      allow_stale=allow_stale)
    store = SnapshotStore.of(settings)
    sid = snapshot_id(cut, tables)
    try:
        store.root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_failed(sid, store.root, exc) from exc
    # One builder per snapshot id: a second identical request waits and reuses the result.
    found: Manifest | None = None
    with store.exclusive(sid):
        store.restore_replaced(sid)
        if store.has(sid) and incremental:
            found = store.manifest(sid)
        else:
            store.clear_unpublished(sid)
            store.remove_abandoned_builds()
            try:
                # `--full` of an existing id builds it again from the archive and swaps it in.
                manifest = _build(settings, archive, cut, tables, store, sid, incremental)
            except OSError as exc:
                raise _write_failed(sid, store.root, exc) from exc
    if found is not None:
        # after the build lock: the S3 root's sync reads the snapshot under a shared one
        sync_or_raise(settings, f"snapshot {sid} is built and listed here")
        _announce(settings, found)  # same event id: a crash after the build resends
        if cut.stale_allowed:
            # Built earlier from the same offsets; this request's cut was stale, and
            # the caller (and a run trained on it) must see that.
            return dataclasses.replace(found, cut=dataclasses.replace(
                found.cut, stale_allowed=cut.stale_allowed))
        return found
    crash_point("snapshot.after_publish")
    register_snapshot(settings, manifest)
    # Before `dataset.ready`: a consumer told of it may read it from the S3 root.
    sync_or_raise(settings, f"snapshot {sid} is built and listed here")
    _announce(settings, manifest)
    return manifest


def _announce(settings: Settings, manifest: Manifest) -> None:
    from snapshotter.announce import dataset_ready
    from tidelog.events import publish

    publish(settings, dataset_ready(settings, manifest))


def rebuild_snapshot(settings: Settings, cut: Cut, tables: Sequence[str], into: Path
                     ) -> Manifest:
    """Materialise `cut` again from the archive alone (no Kafka, no earlier snapshot)."""
    archive = Archive(settings.archive_root)
    cut = resolve_cut(settings, tables, cut, archive, catch_up=False)
    check_archive(settings, archive, cut, tables)
    sid = snapshot_id(cut, tables)
    store = SnapshotStore(into)
    try:
        into.mkdir(parents=True, exist_ok=True)
        if store.path(sid).exists():
            shutil.rmtree(store.path(sid))
        # The proof hashes the rebuilt files' content, not the archive's row hashes.
        return _build(settings, archive, cut, sorted(tables), store, sid, incremental=False,
                      row_hashes=False)
    except OSError as exc:
        raise _write_failed(sid, into, exc) from exc


def open_snapshot(settings: Settings, sid: str) -> Snapshot:
    """Snapshot `sid` of the working copy; with an S3 snapshot root, one the working copy
    lacks is fetched from there first (snapshotter/mirror.py)."""
    from snapshotter.catalog import register_snapshot
    from snapshotter.mirror import fetch

    store = SnapshotStore.of(settings)
    if not store.has(sid) and (fetched := fetch(settings, sid)) is not None:
        register_snapshot(settings, fetched)
    if not store.has(sid):
        known = store.ids()
        hint = f"; known snapshots: {', '.join(known[-5:])}" if known else ""
        store.manifest(sid, hint)  # raises SnapshotNotFound with the hint
    return Snapshot(store.manifest(sid), store.path(sid))


def list_snapshots(settings: Settings) -> list[Manifest]:
    """Every published snapshot's manifest, oldest first."""
    return SnapshotStore.of(settings).manifests()
