"""What a CI job asks: is this run still exactly what it claims (`verify_run`), and does
it beat the champion (`pipelines.gate.gate`)? Both return reports; the CLI maps them to
exit codes (0 yes, 1 no, 2 could not tell)."""

from __future__ import annotations

from typing import Any

from tidelog.errors import SnapshotError
from tidelog.settings import Settings

__all__ = ["verify_run"]


def verify_run(settings: Settings, run_id: str, *, rebuild: bool = False,
               experiment: str = "tidelog") -> dict[str, Any]:
    """The run's snapshot against the digests the run recorded; with `rebuild`, also
    re-materialise from the archive and retrain (`trainer.rebuild`)."""
    from snapshotter.verify import verify_snapshot
    from trainer.tracking import connect

    lineage = connect(settings, experiment).lineage(run_id)
    report: dict[str, Any] = {"run_id": run_id, "snapshot_id": lineage.snapshot_id,
                              "digest_recorded": lineage.digest}
    try:
        snap = verify_snapshot(settings, lineage.snapshot_id)
        report["snapshot"] = {
            "present": True, "ok": snap.ok and snap.digest_recorded == lineage.digest,
            "digest": snap.digest_recomputed,
            "tables": {t: v.ok and v.recorded == lineage.table_digests.get(t)
                       for t, v in snap.tables.items()}}
    except SnapshotError as exc:
        # Snapshots may be deleted; the archive can rebuild them (--rebuild).
        report["snapshot"] = {"present": False, "ok": None, "reason": exc.message}
    ok = report["snapshot"]["ok"] is not False
    if rebuild:
        from trainer.rebuild import rebuild as rebuild_run

        rebuilt = rebuild_run(settings, run_id, experiment=experiment)
        report["rebuild"] = rebuilt.to_json()
        ok = ok and rebuilt.verified
    elif report["snapshot"]["ok"] is None:
        ok = False  # nothing was checked: say so instead of passing
    report["ok"] = ok
    return report
