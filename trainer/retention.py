"""The roots of retention that MLflow knows: registered model versions (with their
aliases), runs pinned with the tag `tidelog.keep=true`, and runs younger than the gc
window. Each root names the snapshot and the cut its run was trained on
(snapshotter/retention.py plans what they keep)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from snapshotter.retention import Root
from tidelog.errors import RunNotFound, TrainingError
from tidelog.settings import Settings
from trainer.registry import registered_models
from trainer.tags import CUT, SNAPSHOT_ID, RunLineage
from trainer.tracking import DEFAULT_EXPERIMENT, connect, mlflow_errors

__all__ = ["KEEP_TAG", "mlflow_roots"]

KEEP_TAG = "tidelog.keep"  # "true" on a run: gc keeps what rebuilding it needs


def mlflow_roots(settings: Settings, keep_days: float, now: dt.datetime,
                 experiment: str = DEFAULT_EXPERIMENT) -> list[Root]:
    tracking = connect(settings, experiment)
    lineages: dict[str, RunLineage | None] = {}

    def lineage(run_id: str, tags: dict[str, str] | None = None) -> RunLineage | None:
        if run_id not in lineages:
            try:
                if tags is None:
                    lineages[run_id] = tracking.lineage(run_id)
                else:
                    lineages[run_id] = RunLineage.from_tags(
                        run_id, tags, read_manifest=lambda: tracking.read_text(
                            run_id, "tidelog/manifest.json"))
            except (RunNotFound, TrainingError):
                lineages[run_id] = None  # deleted, or not a tidelog run: nothing to rebuild
        return lineages[run_id]

    roots: list[Root] = []
    for versions in registered_models(settings, experiment).values():
        for v in versions:
            found = lineage(v.run_id) if v.run_id else None
            aliases = f" (alias {', '.join(v.aliases)})" if v.aliases else ""
            ref = f"{v.ref}{aliases}, run {v.run_id}"
            if found is not None:
                roots.append(Root("model_version", ref, found.snapshot_id, found.cut))
            elif v.snapshot_id:
                roots.append(Root("model_version", ref, v.snapshot_id, None))
    with mlflow_errors("search runs for gc", tracking.uri):
        experiments = [e.experiment_id for e in tracking.client.search_experiments()]
        pinned = _search(tracking, experiments, f"tags.`{KEEP_TAG}` = 'true'")
        recent = (_search(tracking, experiments, "attributes.start_time >= "
                          f"{int((now - dt.timedelta(days=keep_days)).timestamp() * 1000)}")
                  if keep_days and experiments else [])
    for kind, runs in (("pinned_run", pinned), ("recent_run", recent)):
        for run in runs:
            tags = dict(run.data.tags)
            if SNAPSHOT_ID not in tags or CUT not in tags:
                continue
            found = lineage(run.info.run_id, tags)
            if found is not None:
                started = dt.datetime.fromtimestamp(run.info.start_time / 1000, dt.UTC)
                ref = (run.info.run_id if kind == "pinned_run" else
                       f"{run.info.run_id} (started {started.isoformat(timespec='seconds')})")
                roots.append(Root(kind, ref, found.snapshot_id, found.cut))
    return roots


def _search(tracking: Any, experiments: list[str], where: str) -> list[Any]:
    if not experiments:
        return []
    return list(tracking.client.search_runs(experiments, where, max_results=50_000))
