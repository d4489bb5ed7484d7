"""`tidelog train`, `tidelog rebuild`, `tidelog lineage`, `tidelog erase`, `tidelog
erasures`: argument parsing and printing only; the work is in trainer.train,
trainer.rebuild, trainer.lineage and trainer.erasure."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tidelog.errors import TrainingError
from tidelog.output import print_json as _print_json

__all__ = ["register", "parse_param", "parse_at"]


def parse_param(text: str) -> tuple[str, str | int | float]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise TrainingError(f"--param {text!r} is not KEY=VALUE, e.g. --param n_estimators=100")
    for cast in (int, float):
        try:
            return key, cast(raw)
        except ValueError:
            pass
    return key, raw


def parse_at(text: str | None) -> Any:
    """"latest", a cut as JSON, or @FILE holding one (snapshotter.cut.parse_at)."""
    from snapshotter.cut import parse_at as parse

    return parse(text)


def _app_dir(args: argparse.Namespace) -> None:
    # A console script does not put the working directory on sys.path; recipes live there.
    path = str(Path(args.app_dir).resolve())
    if path not in sys.path:
        sys.path.insert(0, path)


def _train(args: argparse.Namespace) -> int:
    from tidelog.settings import load_settings
    from trainer.train import train

    _app_dir(args)
    result = train(
        load_settings(), args.recipe, snapshot_id=args.snapshot, at=parse_at(args.at),
        tables=[t.strip() for t in args.tables.split(",") if t.strip()] if args.tables else None,
        params=dict(parse_param(p) for p in args.param), seed=args.seed,
        register=args.register, since=parse_at(args.since) if args.since else None,
        experiment=args.experiment)
    if args.json:
        _print_json(result.to_json())
        return 0
    print(f"run {result.run_id}: {args.recipe} on snapshot {result.snapshot_id} "
          f"(cut {result.manifest.cut.fingerprint()[:12]}, digest {result.manifest.digest[:16]})")
    for name, table in sorted(result.manifest.tables.items()):
        print(f"  {name:32} {table.rows:>10} rows  {table.digest[:16]}")
    print("  metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics.items())))
    if result.registered_version:
        print(f"  registered as {args.register}/{result.registered_version}")
    return 0


def _rebuild(args: argparse.Namespace) -> int:
    from tidelog.settings import load_settings
    from trainer.rebuild import rebuild

    _app_dir(args)
    report = rebuild(load_settings(), args.run_id, experiment=args.experiment,
                     without_erased=args.without_erased)
    if args.json:
        _print_json(report.to_json())
    else:
        print(f"rebuild of run {report.run_id} -> run {report.new_run_id}")
        for name, check in sorted(report.tables.items()):
            print(f"  {name:32} {'same' if check.match else 'DIFFERENT':9} {check.rebuilt_digest}")
        print(f"  dataset_match={report.dataset_match} model_match={report.model_match} "
              f"artifact_match={report.artifact_match}")
        print("  seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in report.timings.items()))
    return 0 if report.verified else 1


def _lineage_model(args: argparse.Namespace) -> int:
    from tidelog.settings import load_settings
    from trainer.lineage import model_lineage, parse_model_ref

    name, version = parse_model_ref(args.model)
    found = model_lineage(load_settings(), name, version, experiment=args.experiment)
    data = found.to_json()
    if args.json:
        _print_json(data)
        return 0
    print(f"model {found.name}/{found.version} <- run {data['run_id']} <- snapshot "
          f"{data['snapshot_id']}")
    for part in data["cut"]["partitions"]:
        print(f"  {part['topic']}[{part['partition']}] offsets {part['start']}..{part['end']} "
              f"(cluster {part['cluster_id']}, topic id {part['topic_id']})")
    print(f"  lsn {data['lsn']}, commit time {data['commit_time_ms']} ms, source "
          + ", ".join(f"{k}={v}" for k, v in sorted(data["source"].items())))
    print(f"  recipe {data['recipe']['reference']} @ {data['recipe']['git_commit']}")
    if data.get("exclusions"):
        ex = data["exclusions"]
        removed = ", ".join(f"{t} {n}" for t, n in sorted(ex["rows_removed"].items()))
        print(f"  trained without exclusion set {ex['id']} ({ex['count']} entries, digest "
              f"{ex['digest'][:16]}; rows removed: {removed or 'none'})")
    return 0


def _lineage_row(args: argparse.Namespace) -> int:
    from tidelog.settings import load_settings
    from trainer.lineage import row_lineage

    try:
        key = json.loads(args.key)
    except ValueError as exc:
        raise TrainingError(f'KEY must be a JSON object like \'{{"id": 5}}\': {exc}') from exc
    if not isinstance(key, dict):
        raise TrainingError('KEY must be a JSON object like \'{"id": 5}\'')
    found = row_lineage(load_settings(), args.table, key, experiment=args.experiment)
    if args.json:
        _print_json(found.to_json())
        return 0
    for snap in found.snapshots:
        runs = ", ".join(r["run_id"] for r in snap.runs) or "no runs"
        row = json.dumps(snap.rows[0], default=str) if snap.rows else "absent"
        print(f"{snap.snapshot_id} {snap.created_at}  {snap.version or '-':12}  {row}  [{runs}]")
    return 0


def _actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry for this uid (a container)
        return "cli:unknown"


def _erase(args: argparse.Namespace) -> int:
    from tidelog.settings import load_settings
    from trainer.erasure import erase, key_from_text

    report = erase(load_settings(), args.table, key_from_text(args.key), args.reason,
                   _actor(), dry_run=args.dry_run, experiment=args.experiment)
    if args.json:
        _print_json(report.to_json())
        return 0
    for resumed in report.resumed:
        print(f"completed the interrupted erasure {resumed}")
    head = "would erase" if report.dry_run else f"erasure {report.erasure_id}"
    print(f"{head}: {report.table}, {len(report.segments)} archive segment(s), "
          f"{len(report.snapshots)} snapshot(s), {len(report.runs)} run(s), "
          f"{len(report.model_versions)} model version(s)")
    for seg in report.segments:
        print(f"  segment  {seg}")
    for sid, hit in sorted(report.snapshots.items()):
        print(f"  snapshot {sid} ({hit['rows']} row(s))")
    for run_id in sorted(report.runs):
        print(f"  run      {run_id} (tagged tidelog.erasure.<id>=affected)")
    for version in report.model_versions:
        print(f"  model    {version['name']}/{version['version']}")
    for note in report.notes:
        print(f"  note: {note}")
    print("tidelog cannot erase these; do it there:")
    for what, item in report.cannot_erase.items():
        where = item["where"] if isinstance(item["where"], str) else ", ".join(item["where"])
        print(f"  {what}: {where}\n    {item['how']}")
    return 0


def _erasures_list(args: argparse.Namespace) -> int:
    from tidelog.settings import load_settings
    from trainer.erasure import list_erasures

    found = list_erasures(load_settings())
    if args.json:
        _print_json(found.to_json())
        return 0
    for entry in found.items:
        print(f"{entry['id']}  {entry['completed_at']}  {entry['table']}  by {entry['actor']}"
              f"  segments {len(entry['segments'])}, snapshots {len(entry['snapshots'])}, "
              f"runs {len(entry['runs'])}: {entry['reason']}")
    for pending in found.pending:
        print(f"{pending}  PENDING (interrupted; the next `tidelog erase` completes it)")
    return 0


def _erasures_verify(args: argparse.Namespace) -> int:
    from tidelog.settings import load_settings
    from trainer.erasure import verify_ledger

    report = verify_ledger(load_settings())
    if args.json:
        _print_json(report.to_json())
    elif report.ok:
        print(f"erasure ledger ok: {report.entries} entries, head {report.head}")
    else:
        print(f"erasure ledger BROKEN at entry {report.broken_at}: {report.problem}")
    return 0 if report.ok else 1


def _exclude(args: argparse.Namespace) -> int:
    from tidelog.settings import load_settings
    from trainer.exclusions import ExclusionStore, parse_key

    store = ExclusionStore.for_settings(load_settings())
    if args.remove:
        if args.table or args.key:
            raise TrainingError("--remove ID takes no --table or --key")
        removed = store.remove(args.remove, args.reason or "")
        _print_json(removed.to_json()) if args.json else print(
            f"exclusion {removed.id} removed: later runs train on {removed.table} "
            f"{json.dumps(removed.key)} again (earlier runs keep their recorded set)")
        return 0
    if not args.table or not args.key or not args.reason:
        raise TrainingError("give --table, --key and --reason (or --remove ID)")
    added = store.add(args.table, parse_key(args.key), args.reason)
    _print_json(added.to_json()) if args.json else print(
        f"exclusion {added.id}: {added.table} {json.dumps(added.key)} is left out of "
        "training from now on (the snapshots keep it)")
    return 0


def _exclusions_list(args: argparse.Namespace) -> int:
    from tidelog.settings import load_settings
    from trainer.exclusions import ExclusionStore

    store = ExclusionStore.for_settings(load_settings())
    if args.all:
        history = store.history()
        if args.json:
            _print_json(history)
        for r in [] if args.json else history:
            print(f"{r['seq']:>5} {r['op']:6} {r['id']}  {r.get('table', ''):24} "
                  f"{json.dumps(r.get('key')) if 'key' in r else '':16} {r['at']} "
                  f"{r['by']}: {r.get('reason', '')}")
        return 0
    active = store.active()
    if args.json:
        _print_json(active.to_json())
        return 0
    print(f"exclusion set {active.id} (digest {active.digest[:16]}): "
          f"{len(active.entries)} active")
    for e in active.entries:
        print(f"  {e.id}  {e.table:24} {json.dumps(e.key):16} {e.at} {e.by}: {e.reason}")
    return 0


def register(sub: Any) -> None:
    def common(p: argparse.ArgumentParser, app_dir: bool = False) -> None:
        p.add_argument("--experiment", default="tidelog", help="MLflow experiment")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if app_dir:
            p.add_argument("--app-dir", default=".",
                           help="directory to import the recipe from (default: .)")

    p = sub.add_parser("train", help="snapshot, train a recipe and log the run with its cut")
    p.add_argument("--recipe", required=True, help="pkg.module:function")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--snapshot", metavar="ID", help="train on an existing snapshot")
    source.add_argument("--at", metavar="CUT",
                        help='"latest" (default), a cut as JSON, or @FILE')
    p.add_argument("--tables", help="schema.table[,...] (default: those the recipe declares)")
    p.add_argument("--param", action="append", default=[], metavar="K=V",
                   help="recipe parameter (repeatable); ints and floats are parsed")
    p.add_argument("--seed", type=int, default=0, help="seed handed to the recipe")
    p.add_argument("--register", metavar="NAME", help="register the model under NAME")
    p.add_argument("--since", metavar="RUN_ID|CUT",
                   help="train on the changes after that run's cut (or that cut)")
    common(p, app_dir=True)
    p.set_defaults(handler=_train)

    p = sub.add_parser("rebuild", help="rebuild a run's dataset and model, and verify them")
    p.add_argument("run_id")
    p.add_argument("--without-erased", action="store_true",
                   help="a run an erasure changed: rebuild its cut minus the erased "
                        "subjects as a new run linked to it and to the erasures")
    common(p, app_dir=True)
    p.set_defaults(handler=_rebuild)

    p = sub.add_parser("erase", help="erase a subject (table + key) from the archive, every "
                                     "snapshot and the catalog; flag the models that saw it",
                       description="Removes every change event and row of the key from "
                       "tidelog's stores by atomic rewrites (crash-safe: a re-run completes "
                       "an interrupted one), keeps the recorded digests verifiable, tags "
                       "affected MLflow runs and model versions, and appends to the erasure "
                       "ledger. It cannot erase the source database or the Kafka topics: "
                       "the output says how to. See docs/erasure.md.")
    p.add_argument("--table", required=True, help="schema.table")
    p.add_argument("--key", required=True, help='the primary key as JSON, e.g. \'{"id": 42}\'')
    p.add_argument("--reason", required=True, help="why (recorded in the ledger)")
    p.add_argument("--dry-run", action="store_true", help="list what would change; change nothing")
    common(p)
    p.set_defaults(handler=_erase)

    p = sub.add_parser("erasures", help="the erasure ledger")
    erasures_sub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    q = erasures_sub.add_parser("list", help="completed erasures (and any still pending)")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(handler=_erasures_list)
    q = erasures_sub.add_parser("verify", help="check the ledger's hash chain")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(handler=_erasures_verify)
    p = sub.add_parser("exclude", help="leave a row out of training from now on (not erased)")
    p.add_argument("--table", help="schema.table")
    p.add_argument("--key", help='primary key as JSON, e.g. \'{"id": 42}\'')
    p.add_argument("--reason", help="why (kept for auditors; required to add)")
    p.add_argument("--remove", metavar="ID", help="end an exclusion (later runs see the row)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_exclude)

    p = sub.add_parser("exclusions", help="list the exclusions training applies")
    ex_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = ex_sub.add_parser("list", help="the active exclusion set (--all: every add/remove)")
    q.add_argument("--all", action="store_true", help="the whole append-only log")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(handler=_exclusions_list)

    p = sub.add_parser("lineage", help="trace a model or a row back through tidelog")
    lineage_sub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    q = lineage_sub.add_parser("model", help="model version -> run -> snapshot -> cut -> source")
    q.add_argument("model", metavar="NAME[/VERSION]")
    common(q)
    q.set_defaults(handler=_lineage_model)
    q = lineage_sub.add_parser("row", help="which snapshots and runs saw a row, and which version")
    q.add_argument("table", metavar="TABLE", help="schema.table")
    q.add_argument("key", metavar="KEY", help='primary key as JSON, e.g. \'{"id": 5}\'')
    common(q)
    q.set_defaults(handler=_lineage_row)
