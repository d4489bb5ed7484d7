"""The DuckDB catalog: one schema per snapshot, `latest`, `changes` and `tidelog.snapshots`.

    duckdb -readonly .tidelog/catalog.duckdb -c "select * from snap_<id>.customers"

Views reference the snapshot's Parquet files by absolute path, so the catalog is small and
always agrees with the files; schema names use the table name without its source schema
(`public.customers` -> `snap_<id>.customers`); when two chosen tables share a name in
different source schemas, the view is named `<schema>__<table>`.

People hold the catalog open (docs/catalog.md). DuckDB allows one read-write process or
many read-only ones on a file, never both, so tidelog never opens the published file for
writing: each change copies tidelog's own copy to a temporary file, applies the change
there, checkpoints and closes it (no WAL left), syncs it, and renames copies of it onto
`catalog.duckdb` and onto the own copy. A reader keeps the file it opened; the next one
opens the new file. Writers serialise on a lock file, never on a catalog file.

The catalog is derived from the manifests: `sync_catalog` makes it hold exactly the
snapshots that have a manifest, so a crash anywhere (between publishing a snapshot and
registering it, or inside a catalog change) is repaired by the next sync.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import duckdb

from snapshotter import engine
from snapshotter.layout import fsync as _fsync
from snapshotter.layout import sql_text, visible_sql
from snapshotter.manifest import Manifest
from snapshotter.store import SnapshotStore
from tidelog.crashpoints import crash_point
from tidelog.errors import SnapshotError
from tidelog.settings import Settings
from tidelog.sql import ident

__all__ = ["CatalogFiles", "catalog_path", "ensure_catalog", "sync_catalog",
           "register_snapshot", "run_sql", "view_names"]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogFiles:
    """Every path of the catalog under `$TIDELOG_HOME`."""

    home: Path

    @property
    def published(self) -> Path:
        """What people open: replaced whole at every change, never written in place."""
        return self.home / "catalog.duckdb"

    @property
    def directory(self) -> Path:
        return self.home / ".catalog"

    @property
    def own(self) -> Path:
        """tidelog's copy: the base of the next change and what `tidelog sql` reads.
        Nobody opens it read-write, so a person's session on the published file can
        neither lock it nor write into it."""
        return self.directory / "catalog.duckdb"

    @property
    def lock(self) -> Path:
        return self.directory / "writer.lock"

    @property
    def listing(self) -> Path:
        """What tidelog's copy registers, as JSON: lets the agreement check skip DuckDB."""
        return self.directory / "listing.json"

    def temporary(self) -> Path:
        return self.directory / f".tmp-{uuid.uuid4().hex}.duckdb"


def catalog_path(settings: Settings) -> Path:
    return CatalogFiles(Path(settings.home)).published


def view_names(manifest: Manifest) -> dict[str, str]:
    short = [t.split(".", 1)[1] for t in manifest.tables]
    return {t: (t.split(".", 1)[1] if short.count(t.split(".", 1)[1]) == 1
                else t.replace(".", "__")) for t in manifest.tables}


# -- what the catalog should hold ------------------------------------------------------

Row = tuple[str, str]  # (created_at, path) of a registered snapshot


def _wanted(settings: Settings, manifests: Sequence[Manifest]) -> dict[str, Row]:
    store = SnapshotStore.of(settings)
    return {m.id: (m.created_at, str(store.path(m.id))) for m in manifests}


def _listing_text(rows: dict[str, Row]) -> str:
    return json.dumps(sorted([i, *row] for i, row in rows.items()))


def _write_listing(files: CatalogFiles, rows: dict[str, Row]) -> None:
    text = _listing_text(rows)
    if files.listing.exists() and files.listing.read_text() == text:
        return
    tmp = files.directory / f".tmp-{uuid.uuid4().hex}.json"
    tmp.write_text(text)
    os.replace(tmp, files.listing)


def _registered(con: duckdb.DuckDBPyConnection) -> dict[str, Row] | None:
    """The snapshots a catalog file lists; None when it is not a tidelog catalog."""
    try:
        rows = con.execute("select id, created_at, path from tidelog.snapshots").fetchall()
    except duckdb.CatalogException:
        return None
    return {str(i): (str(c), str(p)) for i, c, p in rows}


def _manifests(settings: Settings) -> list[Manifest]:
    return SnapshotStore.of(settings).manifests()


def ensure_catalog(settings: Settings) -> bool:
    """Repair the catalog if it disagrees with the manifests; True if it changed.

    Cheap when it agrees: the manifests are compared with `listing.json`, which every
    sync writes after the catalog files; no DuckDB, no lock.
    Called when `snapshot create`, `snapshot list` and the API start.
    """
    files = CatalogFiles(Path(settings.home))
    manifests = _manifests(settings)
    if not manifests and not files.own.exists() and not files.published.exists():
        return False
    if _agrees(files, settings, manifests):
        return False
    return sync_catalog(settings)


def _agrees(files: CatalogFiles, settings: Settings, manifests: Sequence[Manifest]) -> bool:
    if not (files.own.exists() and files.published.exists() and files.listing.exists()):
        return False
    try:
        return files.listing.read_text() == _listing_text(_wanted(settings, manifests))
    except OSError:
        return False  # unreadable: a sync rewrites it


# -- changing it -----------------------------------------------------------------------

@contextmanager
def _writer_lock(files: CatalogFiles) -> Iterator[None]:
    files.directory.mkdir(parents=True, exist_ok=True)
    with open(files.lock, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove(path: Path) -> None:
    with _suppress_missing():
        path.unlink()


@contextmanager
def _suppress_missing() -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        pass


@contextmanager
def _attached(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection whose current database is the catalog file at `path`, read-write.

    The file is attached to the process's in-memory database (about 3 ms) rather than
    opened as a database of its own (about 14 ms); it is checkpointed when the block
    succeeds, and always detached."""
    alias = f"catalog_{uuid.uuid4().hex[:12]}"
    con = engine.connection()
    try:
        con.execute(f"attach {sql_text(str(path))} as {ident(alias)}")
    except BaseException:
        con.close()
        raise
    try:
        con.execute(f"use {ident(alias)}")
        yield con
        con.execute(f"checkpoint {ident(alias)}")
    except BaseException:
        with suppress(duckdb.Error):
            con.execute("rollback")  # a transaction the caller left open
        raise
    finally:
        _detach(con, alias)


def _detach(con: duckdb.DuckDBPyConnection, alias: str) -> None:
    """Detach `alias` even when DuckDB invalidated it (a checkpoint that failed, e.g. on
    a full disk, makes every statement on it fail, `use` included). Left attached, it
    would fail every later catalog change of the process: `information_schema` reads
    every attached database."""
    with suppress(duckdb.Error):
        con.close()  # `con`'s default database is `alias`, which blocks detaching it
    other = engine.connection()
    try:
        other.execute(f"detach database if exists {ident(alias)}")
    except duckdb.Error as exc:  # not seen; the next change says why it fails
        _LOG.error("could not detach the catalog copy %s from this process's DuckDB "
                   "(%s); restart the process if catalog changes keep failing", alias, exc)
    finally:
        other.close()


@contextmanager
def _start_from(files: CatalogFiles, tmp: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection on a copy of tidelog's copy (or an empty file)."""
    with ExitStack() as attached:
        if files.own.exists():
            shutil.copyfile(files.own, tmp)
            usable = False
            try:
                con = attached.enter_context(_attached(tmp))
                usable = _registered(con) is not None
            except duckdb.Error as exc:
                _LOG.warning("catalog copy %s is unreadable (%s); rebuilding it from the "
                             "manifests", files.own, exc)
            if usable:
                yield con  # outside the try: the caller's errors are the caller's
                return
            with suppress(duckdb.Error):  # not a tidelog catalog: start from an empty file
                attached.close()
            _remove(tmp)
            _remove(Path(f"{tmp}.wal"))
        con = attached.enter_context(_attached(tmp))
        con.execute("create schema if not exists tidelog")
        con.execute(
            # No primary key: DuckDB (1.4, 1.5) then grows the file by a block per change;
            # the sync keeps ids unique.
            "create table if not exists tidelog.snapshots (id varchar, "
            "created_at varchar, tables varchar[], rows bigint, cut json, digest varchar, "
            "built_from varchar, path varchar)"
        )
        yield con


def sync_catalog(settings: Settings, *, rebuild: bool = False) -> bool:
    """Make the catalog hold exactly the snapshots that have a manifest; True if changed.

    `rebuild` starts from an empty catalog instead of tidelog's copy.
    """
    files = CatalogFiles(Path(settings.home))
    with _writer_lock(files):
        manifests = _manifests(settings)  # read under the lock: no newer sync is undone
        if rebuild:
            _remove(files.own)
        for stale in files.directory.glob(".tmp-*"):  # left by a writer that was killed
            _remove(stale)
        if not rebuild and _agrees(files, settings, manifests):
            return False
        tmp = files.temporary()
        try:
            with _start_from(files, tmp) as con:
                manifests = _queryable(settings, manifests)
                changed = _apply(con, settings, manifests)
            if not changed and files.published.exists():
                _write_listing(files, _wanted(settings, manifests))
                return False
            if Path(f"{tmp}.wal").exists():
                raise SnapshotError(f"catalog: DuckDB left a WAL beside {tmp} after a "
                                    "checkpoint; the catalog was not changed")
            _publish(files, tmp)
            _write_listing(files, _wanted(settings, manifests))
            return True
        except duckdb.Error as exc:
            raise SnapshotError(f"updating the DuckDB catalog {files.published} failed: {exc}; "
                                "the previous catalog is unchanged, and the next "
                                "`tidelog snapshot create` or `snapshot list` retries") from exc
        except OSError as exc:
            raise SnapshotError(f"writing the DuckDB catalog under {files.directory} failed: "
                                f"{exc}; the previous catalog is unchanged") from exc
        finally:
            _remove(tmp)
            _remove(Path(f"{tmp}.wal"))


def _queryable(settings: Settings, manifests: Sequence[Manifest]) -> list[Manifest]:
    """The snapshots whose files are all there. One with a file missing is left out of
    the catalog, loudly, rather than stopping every later catalog change; the listing
    then disagrees with the manifests, so each `snapshot create` tries it again."""
    kept = []
    for manifest in manifests:
        directory = SnapshotStore.of(settings).path(manifest.id)
        missing = [f for t in manifest.tables.values() for f in t.all_files
                   if not (directory / f).is_file()]
        if missing:
            _LOG.warning("snapshot %s is left out of the DuckDB catalog: its file %s is "
                         "missing; check it with `tidelog snapshot verify %s`",
                         manifest.id, directory / missing[0], manifest.id)
            continue
        kept.append(manifest)
    return kept


def _publish(files: CatalogFiles, tmp: Path) -> None:
    """Rename complete, synced copies of `tmp` onto the published file and tidelog's copy."""
    _fsync(tmp)
    public = files.temporary()
    try:
        shutil.copyfile(tmp, public)
        _fsync(public)
        crash_point("catalog.before_publish")
        os.replace(public, files.published)
    finally:
        _remove(public)
    # A WAL beside the published file belongs to someone's read-write session on an older
    # file; left there, DuckDB would replay it into the new file for the next reader.
    _remove(Path(f"{files.published}.wal"))
    _fsync(files.home)
    crash_point("catalog.after_public")
    os.replace(tmp, files.own)
    _fsync(files.directory)


def _apply(con: duckdb.DuckDBPyConnection, settings: Settings,
           manifests: Sequence[Manifest]) -> bool:
    """Bring the catalog behind `con` to `manifests`, in one transaction."""
    registered = _registered(con) or {}
    wanted = _wanted(settings, manifests)
    removed = [i for i in registered if wanted.get(i) != registered[i]]
    added = [m for m in manifests if registered.get(m.id) != wanted[m.id]]
    orphans = [s for (s,) in con.execute(
        "select schema_name from information_schema.schemata where catalog_name = "
        "current_database() and schema_name like 'snap\\_%' escape '\\'").fetchall()
        if s[len("snap_"):] not in wanted]
    has_latest = con.execute(
        "select count(*) from information_schema.schemata where catalog_name = "
        "current_database() and schema_name = 'latest'").fetchone() == (1,)
    if not (removed or added or orphans) and has_latest == bool(manifests):
        return False
    con.execute("begin")
    for sid in removed:
        con.execute(f"drop schema if exists {ident('snap_' + sid)} cascade")
        con.execute("delete from tidelog.snapshots where id = ?", [sid])
    for schema in orphans:
        con.execute(f"drop schema if exists {ident(schema)} cascade")
    for manifest in added:  # in creation order: the newest one's change views win
        _insert(con, settings, manifest)
    con.execute("drop schema if exists latest cascade")
    if manifests:
        newest = manifests[-1]
        _create_views(con, "latest", newest, Path(wanted[newest.id][1]))
    con.execute("commit")
    return True


def _insert(con: duckdb.DuckDBPyConnection, settings: Settings, manifest: Manifest) -> None:
    snapshot_dir = SnapshotStore.of(settings).path(manifest.id)
    con.execute(
        "insert into tidelog.snapshots values (?, ?, ?, ?, ?, ?, ?, ?)",
        [manifest.id, manifest.created_at, sorted(manifest.tables),
         sum(t.rows for t in manifest.tables.values()), json.dumps(manifest.cut.to_json()),
         manifest.digest, manifest.built_from, str(snapshot_dir)],
    )
    try:
        _create_views(con, f"snap_{manifest.id}", manifest, snapshot_dir)
        _create_change_views(con, settings, manifest)
    except duckdb.Error as exc:
        raise SnapshotError(
            f"catalog: the views of snapshot {manifest.id} cannot be created ({exc}); check "
            f"it with `tidelog snapshot verify {manifest.id}`, or delete it",
            snapshot_id=manifest.id) from exc


def _create_views(con: duckdb.DuckDBPyConnection, schema: str, manifest: Manifest,
                  snapshot_dir: Path) -> None:
    con.execute(f"create schema if not exists {ident(schema)}")
    for table, view in view_names(manifest).items():
        relation = visible_sql(snapshot_dir, manifest.tables[table])
        con.execute(f"create or replace view {ident(schema)}.{ident(view)} as "
                    f"select * from {relation}")


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
    # Each view's comment is the statement that made it. DuckDB binds a view again at
    # every query, so segments (and columns) archived later show without recreating it;
    # creating one binds it, which reads the footer of every segment of its generation.
    made = dict(con.execute(
        "select view_name, comment from duckdb_views() where database_name = "
        "current_database() and schema_name = 'changes'").fetchall())
    for table, view in view_names(manifest).items():
        part = next(p for p in manifest.cut.partitions if p.topic == manifest.tables[table].topic)
        generation = _generation_number(root, part.topic, part.partition, part.topic_id)
        if generation is None:
            continue
        pattern = f"{root}/{part.topic}/p{part.partition}/g{generation}/*.parquet"
        statement = (
            f"create or replace view changes.{ident(view)} as select "
            "__offset, __op, __key, __lsn, __txid, __ts_ms, __before, "
            "columns(c -> c not in ('__partition', '__offset', '__op', '__key', '__lsn', "
            "'__txid', '__tx', '__ts_ms', '__before', '__salt', '__row_hash')) "
            f"from read_parquet({sql_text(pattern)}, union_by_name = true)")
        if made.get(view) == statement:
            continue
        con.execute(statement)
        con.execute(f"comment on view changes.{ident(view)} is {sql_text(statement)}")


def _generation_number(root: str, topic: str, partition: int, topic_id: str) -> int | None:
    log = Path(root) / topic / f"p{partition}" / "log.json"
    if not log.exists():
        return None
    for gen in json.loads(log.read_text())["generations"]:
        if gen["topic_id"] == topic_id:
            return int(gen["generation"])
    return None


def register_snapshot(settings: Settings, manifest: Manifest) -> None:
    """Make a just-published snapshot queryable (and anything else the manifests say)."""
    sync_catalog(settings)


# -- reading it ------------------------------------------------------------------------

def run_sql(settings: Settings, sql: str) -> tuple[list[str], list[tuple[object, ...]]]:
    files = CatalogFiles(Path(settings.home))
    ensure_catalog(settings)
    if not files.own.exists():
        raise SnapshotError(f"no catalog at {files.published} yet; create a snapshot first "
                            "(`tidelog snapshot create --tables ...`)")
    # tidelog's copy, not the published file: a person's read-write session there would
    # lock a read-only open out.
    con = duckdb.connect(str(files.own), read_only=True)
    try:
        cur = con.execute(sql)
        columns = [d[0] for d in cur.description or []]
        return columns, cur.fetchall()
    except duckdb.Error as exc:
        raise SnapshotError(f"query failed: {exc}") from exc
    finally:
        con.close()
