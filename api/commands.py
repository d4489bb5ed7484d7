"""`tidelog api serve`, `tidelog api keys create|list|revoke` and `tidelog api audit verify`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tidelog.output import print_json as _print_json

__all__ = ["register"]


def _keys() -> Any:
    from api.config import load_api_config
    from api.keys import KeyStore
    from api.store import Database
    from tidelog.settings import load_settings

    return KeyStore(Database(load_api_config(load_settings()).db_path))


def _audit_verify(args: argparse.Namespace) -> int:
    from api.audit import AuditLog
    from api.config import load_api_config
    from api.store import Database
    from tidelog.settings import load_settings

    db = Database(load_api_config(load_settings()).db_path)
    try:
        report = AuditLog(db).verify()
    finally:
        db.close()
    if args.json:
        _print_json(report)
    elif report["ok"]:
        head = report["head"]
        print(f"audit log intact: {report['entries']} entries"
              + (f", head seq {head['seq']} hash {head['hash']}" if head else ""))
    else:
        print(f"audit log broken at seq {report['first_broken_seq']}: {report['reason']} "
              f"({report['entries']} entries before it are intact)", file=sys.stderr)
    return 0 if report["ok"] else 1


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from tidelog.settings import load_settings

    # Recipes are imported by module path; like `tidelog train`, look in --app-dir.
    path = str(Path(args.app_dir).resolve())
    if path not in sys.path:
        sys.path.insert(0, path)
    app = create_app(load_settings())
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                access_log=args.access_log)
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    info, token = _keys().create(args.role, args.name or "", "cli")
    if args.json:
        _print_json({**info.to_json(), "key": token})
    else:
        print(f"created {args.role} key {info.id} ({info.name or 'unnamed'}); it is shown "
              "only now:", file=sys.stderr)
        print(token)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    keys = [k.to_json() for k in _keys().all()]
    if args.json:
        _print_json(keys)
    else:
        for k in keys:
            state = "active" if k["active"] else f"revoked {k['revoked_at']}"
            print(f"{k['id']}  {k['role']:6}  {state:40}  {k['name']}")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    info = _keys().revoke(args.key_id, "cli")
    print(f"key {info.id} revoked at {info.revoked_at}")
    return 0


def _gc(args: argparse.Namespace) -> int:
    from api.gc import collect_garbage, pins_of
    from tidelog.settings import load_settings

    settings = load_settings()
    report = collect_garbage(settings, pins_of(settings), dry_run=args.dry_run,
                             keep_days=args.keep_days, keep_snapshots=args.keep_snapshots)
    if args.json:
        _print_json(report)
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    policy = report["policy"]
    print(f"gc ({'dry run' if args.dry_run else 'done'}): window {policy['keep_days']:g} "
          f"days, newest {policy['keep_snapshots']} snapshot(s) kept")
    for item in report["keep"]["snapshots"]:
        print(f"  keep snapshot {item['snapshot_id']}: {'; '.join(item['why'])}")
    for item in report["keep"]["segments"]:
        print(f"  keep {item['topic']}[{item['partition']}] g{item['generation']} offsets "
              f"{item['offsets'][0]}..{item['offsets'][1]} ({item['segments']} segments): "
              f"{'; '.join(item['why']) or 'within a kept range'}")
    for item in report["delete"]["snapshots"]:
        print(f"  {verb} snapshot {item['snapshot_id']}: {item['why']}")
    for item in report["delete"]["segments"]:
        print(f"  {verb} segment {item['path']}: {item['why']}")
    if not report["delete"]["snapshots"] and not report["delete"]["segments"]:
        print("  nothing to delete")
    return 0


def _pins() -> Any:
    from api.config import load_api_config
    from api.retention import Pins
    from api.store import Database
    from tidelog.settings import load_settings

    return Pins(Database(load_api_config(load_settings()).db_path))


def _snapshot_pin(args: argparse.Namespace) -> int:
    from snapshotter.store import SnapshotStore
    from tidelog.settings import load_settings

    store = SnapshotStore.of(load_settings())
    pin = _pins().pin(args.id, "cli", args.reason or "", exists=store.manifest,
                      guard=store.shared)
    if args.json:
        _print_json({"snapshot_id": args.id, "pinned": True, **pin})
    else:
        print(f"snapshot {args.id} pinned by {pin['pinned_by']} at {pin['pinned_at']}")
    return 0


def _snapshot_unpin(args: argparse.Namespace) -> int:
    from snapshotter.store import SnapshotStore
    from tidelog.settings import load_settings

    SnapshotStore.of(load_settings()).manifest(args.id)
    _pins().unpin(args.id)
    if args.json:
        _print_json({"snapshot_id": args.id, "pinned": False})
    else:
        print(f"snapshot {args.id} unpinned")
    return 0


def _snapshot_delete(args: argparse.Namespace) -> int:
    from api.core import Core
    from api.retention import delete_unless_kept
    from tidelog.settings import load_settings

    delete_unless_kept(Core(load_settings()), _pins(), args.id)
    if args.json:
        _print_json({"deleted": args.id})
    else:
        print(f"snapshot {args.id} deleted")
    return 0


def register(sub: Any) -> None:
    from snapshotter.commands import ACTIONS

    snap_sub = ACTIONS["snapshot"]  # the same rules as POST /snapshots/{id}/pin|unpin, DELETE
    p = snap_sub.add_parser("pin", help="keep a snapshot: delete and gc refuse it until unpinned")
    p.add_argument("id")
    p.add_argument("--reason", help="why it is kept (shown to whoever tries to delete it)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_snapshot_pin)
    p = snap_sub.add_parser("unpin", help="let delete and gc remove a snapshot again")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_snapshot_unpin)
    p = snap_sub.add_parser("delete", help="delete a snapshot unless pinned or used by a "
                                           "registered model version")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_snapshot_delete)

    p = sub.add_parser("gc", help="delete snapshots and archive segments no model, pin or "
                                  "recent run needs (retention by reachability)")
    p.add_argument("--dry-run", action="store_true",
                   help="list what would go and why each kept item is kept; delete nothing")
    p.add_argument("--keep-days", type=float, metavar="N",
                   help="keep runs and snapshots younger than N days (default "
                        "TIDELOG_GC_KEEP_DAYS, else 30)")
    p.add_argument("--keep-snapshots", type=int, metavar="N",
                   help="keep the newest N snapshots (default TIDELOG_GC_KEEP_SNAPSHOTS, "
                        "else 1)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_gc)

    api = sub.add_parser("api", help="serve the REST API and manage its keys")
    api_sub = api.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = api_sub.add_parser("serve", help="run the REST API (uvicorn)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--app-dir", default=".",
                   help="directory to import recipes from (default: .)")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                   help="log every request (default on)")
    p.set_defaults(handler=_serve)

    keys = api_sub.add_parser("keys", help="create, list and revoke API keys")
    keys_sub = keys.add_subparsers(dest="keys_action", required=True, metavar="ACTION")
    p = keys_sub.add_parser("create", help="create a key and print it (shown once)")
    p.add_argument("--role", required=True, choices=["reader", "writer", "admin"])
    p.add_argument("--name", help="who or what the key is for")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_keys_create)
    p = keys_sub.add_parser("list", help="every key, without secrets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_keys_list)
    p = keys_sub.add_parser("revoke", help="revoke a key at once")
    p.add_argument("key_id")
    p.set_defaults(handler=_keys_revoke)

    audit = api_sub.add_parser("audit", help="check the audit log")
    audit_sub = audit.add_subparsers(dest="audit_action", required=True, metavar="ACTION")
    p = audit_sub.add_parser("verify", help="check the audit log's hash chain; exit 1 at "
                                            "the first changed, replaced or missing entry")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_audit_verify)
