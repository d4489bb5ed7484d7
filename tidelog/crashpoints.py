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
    "snapshot.after_publish": "the snapshot directory is in place, the catalog not updated",
    "catalog.before_publish": "the new catalog file is written, not yet renamed into place",
    "catalog.after_public": "catalog.duckdb is replaced, tidelog's own copy not yet",
    "serve.before_commit": "a batch's results are on the broker, its transaction open",
}


def crash_point(name: str) -> None:
    """Exit immediately if `TIDELOG_CRASH_AT` names this point."""
    if name not in POINTS:
        raise ValueError(f"unknown crash point {name!r}; add it to tidelog.crashpoints.POINTS")
    wanted = os.environ.get(CRASH_ENV)
    if wanted and name in wanted.split(","):
        os._exit(KILLED_STATUS)
