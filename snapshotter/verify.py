"""Verify the archive against its checksums, a snapshot against its manifest, and diff two
snapshots, in DuckDB."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from snapshotter.archive import Archive
from snapshotter.digest import ContentSum, digest_with_erased, overall_digest, table_digest
from snapshotter.layout import file_sha256, visible_sql
from snapshotter.manifest import TableManifest
from snapshotter.snapshots import KEY_COLUMN, open_snapshot
from tidelog.errors import DigestMismatch, SnapshotError
from tidelog.settings import Settings

__all__ = ["verify_archive", "verify_snapshot", "diff_snapshots", "DAMAGED_HINT",
           "ArchiveReport", "SnapshotReport", "TableReport", "SnapshotDiff", "TableDiff"]

DAMAGED_HINT = (
    "snapshots refuse to read a damaged segment. Restore it from a backup; or, while "
    "Kafka's retention still holds its first offset, move it and every later segment of "
    "its generation out of the archive and run `tidelog archive run` to archive them "
    "again. Events archived again draw new row salts (docs/digest.md): snapshots and runs "
    "built from the old segments then keep their rows but no longer rebuild to their "
    "recorded digests, so build later snapshots with `snapshot create --full`")


@dataclass(frozen=True)
class ArchiveReport:
    """`verify_archive`'s answer, the same for `tidelog archive verify` and the API."""

    segments_checked: int
    damaged: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.damaged

    def to_json(self) -> dict[str, Any]:
        report: dict[str, Any] = {"ok": self.ok, "segments_checked": self.segments_checked,
                                  "damaged": list(self.damaged)}
        if self.damaged:
            report["hint"] = DAMAGED_HINT
        return report


def verify_archive(settings: Settings) -> ArchiveReport:
    """Check every archived segment of every generation against its recorded checksum."""
    archive = Archive(settings.archive_root)
    damaged: list[str] = []
    checked = 0
    for row in archive.status():
        topic, partition = str(row["topic"]), int(str(row["partition"]))
        for gen in archive.generations(topic, partition):
            segments = archive.segments(topic, partition, gen.number)
            checked += len(segments)
            damaged += [s.path for s in archive.damaged(segments)]
    return ArchiveReport(checked, tuple(damaged))


@dataclass(frozen=True)
class TableReport:
    """One table of a snapshot, recomputed: its digest and row count against the
    manifest's, and the files whose bytes changed (or why it could not be read)."""

    ok: bool
    error: str | None = None
    recorded: str = ""
    recomputed: str = ""
    rows_recorded: int = 0
    rows_recomputed: int = 0
    files: int = 0
    files_damaged: tuple[str, ...] = ()
    erased: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"ok": False, "error": self.error, "recorded": self.recorded,
                    "files": self.files, "files_damaged": list(self.files_damaged)}
        report: dict[str, Any] = {
            "ok": self.ok, "recorded": self.recorded, "recomputed": self.recomputed,
            "rows_recorded": self.rows_recorded, "rows_recomputed": self.rows_recomputed,
            "files": self.files, "files_damaged": list(self.files_damaged)}
        if self.erased:
            report["erased"] = list(self.erased)
        return report


@dataclass(frozen=True)
class SnapshotReport:
    """`verify_snapshot`'s answer; `source` is the comparison with the source database
    when it was asked for (`against_source`), or why it could not be made."""

    id: str
    ok: bool
    digest_recorded: str
    digest_recomputed: str | None
    tables: dict[str, TableReport]
    source: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "id": self.id, "ok": self.ok, "digest_recorded": self.digest_recorded,
            "digest_recomputed": self.digest_recomputed,
            "tables": {n: t.to_json() for n, t in self.tables.items()}}
        if self.source is not None:
            report["source"] = self.source
        return report


def _damaged_files(directory: Path, table: TableManifest) -> list[str]:
    """Files whose bytes differ from the checksum the manifest recorded (format 2)."""
    return [name for name, expected in sorted(table.checksums.items())
            if not (directory / name).is_file() or file_sha256(directory / name) != expected]


def verify_snapshot(settings: Settings, snapshot_id: str, against_source: bool = False
                    ) -> SnapshotReport:
    """Recompute every digest from the Parquet files; report each table."""
    snap = open_snapshot(settings, snapshot_id)
    con = duckdb.connect()
    tables: dict[str, TableReport] = {}
    recomputed: dict[str, str] = {}
    for name, table in sorted(snap.manifest.tables.items()):
        # Checksums first: a damaged file may not even read, and must be named either way.
        damaged = _damaged_files(snap.path, table)
        try:
            got = table_digest(con, visible_sql(snap.path, table, with_salt=True))
        except SnapshotError as exc:
            tables[name] = TableReport(ok=False, error=f"unreadable: {exc}",
                                       recorded=table.digest, files=len(table.all_files),
                                       files_damaged=tuple(damaged))
            continue
        if table.erased:
            # docs/erasure.md: the remaining rows plus the kept sums of the erased ones
            got = digest_with_erased(got, [ContentSum.parse(e.content_digest, e.rows)
                                           for e in table.erased])
        recomputed[name] = got.digest
        tables[name] = TableReport(
            ok=got.digest == table.digest and got.rows == table.rows and not damaged,
            recorded=table.digest, recomputed=got.digest, rows_recorded=table.rows,
            rows_recomputed=got.rows, files=len(table.all_files),
            files_damaged=tuple(damaged), erased=tuple(e.to_json() for e in table.erased))
    overall = overall_digest(recomputed) if len(recomputed) == len(tables) else None
    ok = all(t.ok for t in tables.values()) and overall == snap.manifest.digest
    source: dict[str, Any] | None = None
    if against_source:
        from snapshotter.source_check import compare_with_source

        try:
            source = compare_with_source(settings, snap)
        except DigestMismatch as exc:  # changed files are not read, not even to compare
            source = {"error": exc.message}
            ok = False
        else:
            ok = ok and all(t["ok"] for t in source.values())
    return SnapshotReport(snapshot_id, ok, snap.manifest.digest, overall, tables, source)


@dataclass(frozen=True)
class TableDiff:
    """Keys inserted, updated and deleted in one table (counts, and the first `limit` of
    each in key order), and the columns added and dropped."""

    inserted: int
    updated: int
    deleted: int
    examples: dict[str, list[str]]
    columns_added: tuple[str, ...]
    columns_dropped: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"inserted": self.inserted, "updated": self.updated, "deleted": self.deleted,
                "examples": self.examples, "columns_added": list(self.columns_added),
                "columns_dropped": list(self.columns_dropped)}


@dataclass(frozen=True)
class SnapshotDiff:
    """`diff_snapshots`'s answer: from snapshot `a` to snapshot `b`, per shared table."""

    a: str
    b: str
    tables: dict[str, TableDiff]

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b,
                "tables": {n: t.to_json() for n, t in self.tables.items()}}


def diff_snapshots(settings: Settings, a: str, b: str, limit: int = 20) -> SnapshotDiff:
    """Keys inserted, updated and deleted from snapshot `a` to snapshot `b`, per table."""
    snap_a, snap_b = open_snapshot(settings, a), open_snapshot(settings, b)
    common = sorted(set(snap_a.manifest.tables) & set(snap_b.manifest.tables))
    if not common:
        raise SnapshotError(f"snapshots {a} and {b} share no table")
    con = duckdb.connect()
    tables: dict[str, TableDiff] = {}
    for name in common:
        _diff_view(con, visible_sql(snap_a.path, snap_a.manifest.tables[name], with_key=True),
                   visible_sql(snap_b.path, snap_b.manifest.tables[name], with_key=True))
        counts = dict(con.execute("select kind, count(*) from diff group by kind").fetchall())
        examples = {
            kind: [r[0] for r in con.execute(
                "select key from diff where kind = ? order by key limit ?",
                [kind, limit]).fetchall()]
            for kind in ("inserted", "updated", "deleted")
        }
        columns_a = {c for c, _ in snap_a.manifest.tables[name].columns}
        columns_b = {c for c, _ in snap_b.manifest.tables[name].columns}
        tables[name] = TableDiff(
            counts.get("inserted", 0), counts.get("updated", 0), counts.get("deleted", 0),
            examples, tuple(sorted(columns_b - columns_a)), tuple(sorted(columns_a - columns_b)))
    return SnapshotDiff(a, b, tables)


def _diff_view(con: duckdb.DuckDBPyConnection, relation_a: str, relation_b: str) -> None:
    # A row's fingerprint is the md5 of the whole row rendered as text; the key is part of
    # it on both sides, so only the other columns can make two fingerprints differ.
    def side(relation: str) -> str:
        return f"select t.{KEY_COLUMN} as k, md5(cast(t as varchar)) as h from {relation} t"

    con.execute(f"""
        create or replace temp view diff as
        with a as ({side(relation_a)}), b as ({side(relation_b)})
        select coalesce(a.k, b.k) as key,
               case when a.k is null then 'inserted' when b.k is null then 'deleted'
                    else 'updated' end as kind
        from a full outer join b on a.k = b.k
        where a.k is null or b.k is null or a.h is distinct from b.h
    """)
