"""Named crash points, for tests that kill tidelog between two steps of a change.

    TIDELOG_CRASH_AT=snapshot.after_publish tidelog snapshot create ...

makes the process exit at once (status 137, as after SIGKILL: no cleanup, no `finally`)
when it reaches `crash_point("snapshot.after_publish")`. Several names may be given,
comma-separated. Unset, a crash point costs one environment lookup. The points in use
are listed in `POINTS` so a test can refer to them and docs can name them.
"""

from __future__ import annotations

import os

__all__ = ["CRASH_ENV", "POINTS", "crash_point"]

CRASH_ENV = "TIDELOG_CRASH_AT"
KILLED_STATUS = 137

POINTS = {
    # archive run: Storage.write_bytes, Archive.write_segment, Archive.open_generation
    "archive.segment_before_rename": "a segment's bytes are synced in a `.tmp-` file, not "
                                     "renamed into place",
    "archive.after_segment": "a segment is in place; the rest of the batch is not written",
    "archive.log_before_rename": "a partition's new log.json (generations) is synced in a "
                                 "`.tmp-` file, not renamed into place",
    "archive.after_generation": "a new generation is recorded; no segment of it is written",
    # snapshot create: snapshotter.store.SnapshotStore.publish / snapshots.create_snapshot
    "snapshot.before_manifest": "the data files are synced in the build directory; no "
                                "manifest yet",
    "snapshot.manifest_in_build_dir": "the build directory is complete with its manifest, "
                                      "not yet renamed into place",
    "snapshot.old_set_aside": "a `--full` rebuild of an existing id moved the old snapshot "
                              "to `.old-<id>`; the new one is not in place",
    "snapshot.after_publish": "the snapshot directory is in place, the catalog not updated",
    "catalog.before_publish": "the new catalog file is written, not yet renamed into place",
    "catalog.after_public": "catalog.duckdb is replaced, tidelog's own copy not yet",
    "erasure.after_journal": "the erasure journal is written, nothing rewritten yet",
    "erasure.segment_written": "a rewritten segment is in place, the old one not yet removed",
    "erasure.snapshot_files_written": "a snapshot's rewritten files are written, its "
                                      "manifest not yet replaced",
    "erasure.snapshot_manifest_replaced": "a snapshot's manifest is replaced, its old files "
                                          "not yet removed",
    "erasure.before_catalog": "archive and snapshots are rewritten, the catalog not re-synced",
    "erasure.before_ledger": "stores and catalog are done, MLflow flagged, no ledger entry yet",
    "erasure.before_journal_removed": "the ledger entry is written, the journal not removed",
    "serve.before_commit": "a batch's results are on the broker, its transaction open",
}


def crash_point(name: str) -> None:
    """Exit immediately if `TIDELOG_CRASH_AT` names this point."""
    if name not in POINTS:
        raise ValueError(f"unknown crash point {name!r}; add it to tidelog.crashpoints.POINTS")
    wanted = os.environ.get(CRASH_ENV)
    if wanted and name in wanted.split(","):
        os._exit(KILLED_STATUS)
