"""Verify the archive against its checksums, a snapshot against its manifest, and diff two
snapshots, in DuckDB."""

from __future__ import annotations

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

__all__ = ["verify_archive", "verify_snapshot", "diff_snapshots", "DAMAGED_HINT"]

DAMAGED_HINT = (
    "snapshots refuse to read a damaged segment. Restore it from a backup; or, while "
    "Kafka's retention still holds its first offset, move it and every later segment of "
    "its generation out of the archive and run `tidelog archive run` to archive them again")


def verify_archive(settings: Settings) -> dict[str, Any]:
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
    report: dict[str, Any] = {"ok": not damaged, "segments_checked": checked,
                              "damaged": damaged}
    if damaged:
        report["hint"] = DAMAGED_HINT
    return report


def _damaged_files(directory: Path, table: TableManifest) -> list[str]:
    """Files whose bytes differ from the checksum the manifest recorded (format 2)."""
    return [name for name, expected in sorted(table.checksums.items())
            if not (directory / name).is_file() or file_sha256(directory / name) != expected]


def verify_snapshot(settings: Settings, snapshot_id: str, against_source: bool = False
                    ) -> dict[str, Any]:
    """Recompute every digest from the Parquet files; report each table."""
    snap = open_snapshot(settings, snapshot_id)
    con = duckdb.connect()
    tables: dict[str, Any] = {}
    recomputed: dict[str, str] = {}
    for name, table in sorted(snap.manifest.tables.items()):
        try:
            got = table_digest(con, visible_sql(snap.path, table, with_salt=True))
        except SnapshotError as exc:
            tables[name] = {"ok": False, "error": f"unreadable: {exc}"}
            continue
        if table.erased:
            # docs/erasure.md: the remaining rows plus the kept sums of the erased ones
            got = digest_with_erased(got, [ContentSum.parse(e.content_digest, e.rows)
                                           for e in table.erased])
        recomputed[name] = got.digest
        damaged = _damaged_files(snap.path, table)
        tables[name] = {"ok": got.digest == table.digest and got.rows == table.rows
                        and not damaged,
                        "recorded": table.digest, "recomputed": got.digest,
                        "rows_recorded": table.rows, "rows_recomputed": got.rows,
                        "files": len(table.all_files), "files_damaged": damaged}
        if table.erased:
            tables[name]["erased"] = [e.to_json() for e in table.erased]
    overall = overall_digest(recomputed) if len(recomputed) == len(tables) else None
    report: dict[str, Any] = {
        "id": snapshot_id,
        "ok": all(t["ok"] for t in tables.values()) and overall == snap.manifest.digest,
        "digest_recorded": snap.manifest.digest,
        "digest_recomputed": overall,
        "tables": tables,
    }
    if against_source:
        from snapshotter.source_check import compare_with_source

        try:
            report["source"] = compare_with_source(settings, snap)
        except DigestMismatch as exc:  # changed files are not read, not even to compare
            report["source"] = {"error": exc.message}
            report["ok"] = False
        else:
            report["ok"] = report["ok"] and all(t["ok"] for t in report["source"].values())
    return report


def diff_snapshots(settings: Settings, a: str, b: str, limit: int = 20) -> dict[str, Any]:
    """Keys inserted, updated and deleted from snapshot `a` to snapshot `b`, per table."""
    snap_a, snap_b = open_snapshot(settings, a), open_snapshot(settings, b)
    common = sorted(set(snap_a.manifest.tables) & set(snap_b.manifest.tables))
    if not common:
        raise SnapshotError(f"snapshots {a} and {b} share no table")
    con = duckdb.connect()
    result: dict[str, Any] = {"a": a, "b": b, "tables": {}}
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
        result["tables"][name] = {
            "inserted": counts.get("inserted", 0), "updated": counts.get("updated", 0),
            "deleted": counts.get("deleted", 0), "examples": examples,
            "columns_added": sorted(
                {c for c, _ in snap_b.manifest.tables[name].columns}
                - {c for c, _ in snap_a.manifest.tables[name].columns}),
            "columns_dropped": sorted(
                {c for c, _ in snap_a.manifest.tables[name].columns}
                - {c for c, _ in snap_b.manifest.tables[name].columns}),
        }
    return result


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
