"""CLI commands of the snapshotter: `archive`, `snapshot`, `sql`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from tidelog.errors import ConfigError
from tidelog.output import print_json as _print_json
from tidelog.settings import load_settings

__all__ = ["register"]


def _tables(text: str) -> list[str]:
    from cdc.spec import parse_tables

    return list(parse_tables(text))


def _archive_run(args: argparse.Namespace) -> int:
    from snapshotter.archiving import run_archiver

    settings = load_settings()
    topics = args.topics.split(",") if args.topics else None

    def report(marks: dict[tuple[str, int], int]) -> None:
        if args.json:
            return
        for (topic, partition), mark in sorted(marks.items()):
            print(f"{topic}[{partition}] archived up to offset {mark}")

    def on_failure(failures: list[Any]) -> None:
        for failure in failures:  # every pass, so a follower's log shows it until fixed
            print(f"FAILED {failure.describe()}", file=sys.stderr)

    marks = run_archiver(settings, topics, follow=args.follow, interval=args.interval,
                         on_new_log=args.on_new_log, report=report,
                         batch_size=args.batch_size,
                         on_failure=on_failure if args.follow else None)
    if args.json:
        _print_json([{"topic": t, "partition": p, "high_water_mark": m}
                     for (t, p), m in sorted(marks.items())])
    return 0


def _archive_status(args: argparse.Namespace) -> int:
    from snapshotter.archive import Archive

    rows = Archive(load_settings().archive_root).status()
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            failure = r["failure"]
            stopped = (f"  FAILED at offset {failure['offset']}"  # type: ignore[index]
                       f" column {failure['column']}: {failure['error']}"  # type: ignore[index]
                       if failure else "")
            print(f"{r['topic']}[{r['partition']}] gen {r['generation']} "
                  f"hwm {r['high_water_mark']} ({r['segments']} segments){stopped}")
    return 0


def _archive_verify(args: argparse.Namespace) -> int:
    from snapshotter.verify import DAMAGED_HINT, verify_archive

    report = verify_archive(load_settings())
    if args.json:
        _print_json(report.to_json())
    else:
        print(f"{report.segments_checked} segments checked, {len(report.damaged)} damaged")
        for path in report.damaged:
            print(f"  damaged: {path}")
        if report.damaged:
            print(DAMAGED_HINT)
    return 0 if report.ok else 1


def _snapshot_create(args: argparse.Namespace) -> int:
    from snapshotter.cut import Cut, parse_at
    from snapshotter.snapshots import create_snapshot

    settings = load_settings()
    at = parse_at(args.at)
    if not isinstance(at, Cut) and at != "latest":
        at = Cut.from_json(at)  # refused with what a cut looks like
    manifest = create_snapshot(settings, _tables(args.tables), at,
                               incremental=not args.full, allow_stale=args.allow_stale)
    if args.json:
        _print_json(manifest.to_json())
    else:
        print(f"snapshot {manifest.id} ({manifest.built_from} build) digest {manifest.digest}")
        for name, table in sorted(manifest.tables.items()):
            print(f"  {name}: {table.rows} rows, digest {table.digest}")
    return 0


def _snapshot_list(args: argparse.Namespace) -> int:
    from snapshotter.catalog import ensure_catalog
    from snapshotter.snapshots import list_snapshots

    settings = load_settings()
    ensure_catalog(settings)  # the catalog lists what this lists, even after a crash
    manifests = list_snapshots(settings)
    if args.json:
        _print_json([{"id": m.id, "created_at": m.created_at, "tables": sorted(m.tables),
                      "rows": sum(t.rows for t in m.tables.values()), "digest": m.digest,
                      "cut": m.cut.to_json()} for m in manifests])
    else:
        for m in manifests:
            rows = sum(t.rows for t in m.tables.values())
            print(f"{m.id}  {m.created_at}  {rows:>10} rows  {','.join(sorted(m.tables))}")
    return 0


def _snapshot_show(args: argparse.Namespace) -> int:
    from snapshotter.snapshots import open_snapshot

    _print_json(open_snapshot(load_settings(), args.id).manifest.to_json())
    return 0


def _snapshot_verify(args: argparse.Namespace) -> int:
    from snapshotter.verify import verify_snapshot

    report = verify_snapshot(load_settings(), args.id, against_source=args.against_source)
    _print_json(report.to_json()) if args.json else print(
        "\n".join(f"{k}: {v}" for k, v in report.to_json().items()))
    return 0 if report.ok else 1


def _snapshot_diff(args: argparse.Namespace) -> int:
    from snapshotter.verify import diff_snapshots

    report = diff_snapshots(load_settings(), args.a, args.b, limit=args.limit)
    _print_json(report.to_json())
    return 0


def _snapshot_publish(args: argparse.Namespace) -> int:
    from snapshotter.remote import publish_snapshot

    done = publish_snapshot(load_settings(), args.id, args.to)
    if args.json:
        _print_json({"snapshot_id": done.snapshot_id, "root": done.root,
                     "uploaded": list(done.uploaded), "files": done.files,
                     "bytes": done.bytes})
    else:
        print(f"snapshot {done.snapshot_id} at {done.root}/{done.snapshot_id}: "
              f"{done.files} files ({done.bytes} bytes) copied for "
              f"{', '.join(done.uploaded) or 'nothing (already there)'}")
    return 0


def _snapshot_sync(args: argparse.Namespace) -> int:
    from snapshotter.mirror import sync

    report = sync(load_settings())
    if report is None:
        raise ConfigError("TIDELOG_SNAPSHOT_ROOT is a local directory: there is nothing to "
                          "sync; set it to an s3:// URI (docs/catalog.md \"Snapshots on "
                          "object storage\"), or copy one snapshot with `tidelog snapshot "
                          "publish SID --to ROOT`")
    if args.json:
        _print_json(dataclasses.asdict(report))
    else:
        print(f"{report.root}: {len(report.published)} manifests written "
              f"({', '.join(report.published) or 'none'}), {len(report.removed)} removed, "
              f"{report.files} files ({report.bytes} bytes) uploaded, {report.swept} "
              "objects no manifest needs deleted")
    return 0


def _snapshot_sql(args: argparse.Namespace) -> int:
    from snapshotter.remote import snapshot_sql

    print(snapshot_sql(load_settings(), args.id, args.root, credentials=args.credentials,
                       with_salt=args.with_salt),
          end="")
    return 0


def _sql(args: argparse.Namespace) -> int:
    from snapshotter.catalog import run_sql

    columns, rows = run_sql(load_settings(), args.query)
    if args.json:
        _print_json([dict(zip(columns, r, strict=True)) for r in rows])
    else:
        print("\t".join(columns))
        for row in rows:
            print("\t".join("NULL" if v is None else str(v) for v in row))
    return 0


# The `ACTION` subparsers of each command group, for later stages to add to.
ACTIONS: dict[str, Any] = {}


def register(sub: Any) -> None:
    archive = sub.add_parser("archive", help="archive the CDC topics as Parquet segments")
    archive_sub = archive.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = archive_sub.add_parser("run", help="append everything new to the archive")
    p.add_argument("--follow", action="store_true", help="keep archiving until interrupted")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    p.add_argument("--topics", help="comma-separated topics (default: all of the prefix)")
    p.add_argument("--batch-size", type=int, default=50_000,
                   help="most events per segment (smaller: more, smaller segments)")
    p.add_argument("--on-new-log", choices=["new-generation", "fail"],
                   default="new-generation",
                   help="what to do when a topic now belongs to a different log")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_archive_run)
    p = archive_sub.add_parser("status", help="high-water mark and log identity per partition")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_archive_status)

    p = archive_sub.add_parser("verify", help="check every segment against its checksum")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_archive_verify)

    snap = sub.add_parser("snapshot", help="create and inspect offset-bounded snapshots")
    snap_sub = snap.add_subparsers(dest="action", required=True, metavar="ACTION")
    ACTIONS["snapshot"] = snap_sub  # pin, unpin and delete are added by api.commands
    p = snap_sub.add_parser("create", help="materialise tables at a cut")
    p.add_argument("--tables", required=True, help="schema.table[,schema.table...]")
    p.add_argument("--at", default="latest", help="'latest', a cut as JSON, or @FILE holding one")
    p.add_argument("--full", action="store_true",
                   help="build from the archive alone, replacing a snapshot of the same id")
    p.add_argument("--allow-stale", action="store_true",
                   help="take a 'latest' cut even while capture is failing or behind "
                        "(recorded in the cut)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_snapshot_create)
    p = snap_sub.add_parser("list", help="every snapshot, oldest first")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_snapshot_list)
    p = snap_sub.add_parser("show", help="a snapshot's manifest")
    p.add_argument("id")
    p.set_defaults(handler=_snapshot_show)
    p = snap_sub.add_parser("verify", help="recompute every digest from the files")
    p.add_argument("id")
    p.add_argument("--against-source", action="store_true",
                   help="also compare with live Postgres (for a snapshot of the current cut)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_snapshot_verify)
    p = snap_sub.add_parser("diff", help="keys inserted, updated and deleted between two")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--limit", type=int, default=20, help="example keys per kind and table")
    p.set_defaults(handler=_snapshot_diff)

    p = snap_sub.add_parser("publish", help="copy a snapshot to object storage (S3)")
    p.add_argument("id")
    p.add_argument("--to", required=True,
                   help="root URI, e.g. s3://bucket/prefix?endpoint_override=host:port")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_snapshot_publish)
    p = snap_sub.add_parser("sync", help="bring the S3 snapshot root in line with the "
                                         "local snapshots (after a failed upload)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_snapshot_sync)
    p = snap_sub.add_parser("sql", help="print DuckDB SQL creating views of a snapshot")
    p.add_argument("id")
    p.add_argument("--root", help="a root the snapshot was published to (default: local)")
    p.add_argument("--credentials", choices=["env", "chain"], default="env",
                   help="how DuckDB finds the S3 key: env (AWS_* variables, DuckDB CLI) "
                        "or chain (credential chain, aws extension)")
    p.add_argument("--with-salt", action="store_true",
                   help="views also give each row's __salt, for checking the digest with "
                        "DuckDB alone (docs/digest.md)")
    p.set_defaults(handler=_snapshot_sql)

    p = sub.add_parser("sql", help="run a query against the DuckDB catalog")
    p.add_argument("query")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_sql)
