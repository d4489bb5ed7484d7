"""`tidelog gc` and `POST /gc`: one service function over the retention planner.

The roots come from MLflow (trainer/retention.py) and from the API's snapshot pins;
`snapshotter.retention` plans and carries out the deletion. Every gc that deletes
appends its report to `$TIDELOG_HOME/gc/log.jsonl`, which the audit page shows.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from snapshotter.retention import (
    GcPlan,
    archive_history,
    collect,
    gc_policy,
    plan_gc,
    roots_of_snapshots,
)
from tidelog.errors import SnapshotPinned
from tidelog.settings import Settings

__all__ = ["plan_garbage", "collect_garbage", "gc_history", "pins_of"]


def pins_of(settings: Settings) -> dict[str, dict[str, Any]]:
    """The API's snapshot pins, read from its database if there is one."""
    from api.config import load_api_config
    from api.retention import Pins
    from api.store import Database

    path = load_api_config(settings).db_path
    if not path.exists():
        return {}
    db = Database(path)
    try:
        return Pins(db).all()
    finally:
        db.close()


def _refuse_if_pinned_now(settings: Settings, snapshot_id: str) -> None:
    """SnapshotPinned if a pin was taken since the plan (read again from the database,
    under the snapshot's exclusive lock: `Pins`)."""
    pin = pins_of(settings).get(snapshot_id)
    if pin is not None:
        raise SnapshotPinned(f"snapshot {snapshot_id} was pinned by {pin['pinned_by']} "
                             "during gc; it is kept", snapshot_id=snapshot_id, pin=pin)


def plan_garbage(settings: Settings, pins: Mapping[str, Mapping[str, Any]], *,
                 keep_days: float | None = None, keep_snapshots: int | None = None,
                 now: dt.datetime | None = None) -> GcPlan:
    from snapshotter.archive import Archive
    from snapshotter.snapshots import list_snapshots
    from trainer.retention import mlflow_roots

    now = now or dt.datetime.now(dt.UTC)
    policy = gc_policy(settings, keep_days, keep_snapshots)
    roots = mlflow_roots(settings, policy.keep_days, now)
    roots += roots_of_snapshots(
        (sid, f"pinned by {p.get('pinned_by')}: {p.get('reason') or 'no reason given'}")
        for sid, p in sorted(pins.items()))
    return plan_gc(list_snapshots(settings), roots,
                   archive_history(Archive(settings.archive_root)), policy, now)


def collect_garbage(settings: Settings, pins: Mapping[str, Mapping[str, Any]], *,
                    dry_run: bool, keep_days: float | None = None,
                    keep_snapshots: int | None = None, by: str = "cli") -> dict[str, Any]:
    """Plan, and unless `dry_run` delete; the report says what goes and why each kept
    item is kept."""
    plan = plan_garbage(settings, pins, keep_days=keep_days, keep_snapshots=keep_snapshots)
    report: dict[str, Any] = {"dry_run": dry_run, **plan.to_json()}
    report["at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    report["by"] = by
    if not dry_run:
        report["result"] = collect(settings, plan, check=lambda sid: _refuse_if_pinned_now(
            settings, sid))
        _append(settings, report)
    return report


def _log(settings: Settings) -> Path:
    return Path(settings.home) / "gc" / "log.jsonl"


def _append(settings: Settings, report: Mapping[str, Any]) -> None:
    path = _log(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(report, sort_keys=True, separators=(",", ":"), default=str) + "\n"
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def gc_history(settings: Settings, limit: int = 20) -> list[dict[str, Any]]:
    """The newest gc reports first (a torn last line from a crash is skipped)."""
    path = _log(settings)
    if not path.exists():
        return []
    reports = []
    for line in path.read_text().splitlines():
        try:
            reports.append(json.loads(line))
        except ValueError:
            continue
    return list(reversed(reports))[:limit]
