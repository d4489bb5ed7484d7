"""Lineage questions answered from MLflow tags and snapshot manifests.

- `model_lineage`: registered model version -> run -> snapshot -> cut -> connector/source.
- `row_lineage`: which snapshots hold a row key, which version of the row each saw, and
  which runs trained on those snapshots.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tidelog.errors import TableNotFound, TrainingError
from tidelog.settings import Settings
from trainer.provider import SnapshotProvider, default_provider
from trainer.tags import REBUILD_OF, SNAPSHOT_ID, RunLineage, tag_json
from trainer.tracking import DEFAULT_EXPERIMENT, Tracking, connect

__all__ = ["ModelLineage", "RowVersion", "RowLineage", "model_lineage", "row_lineage",
           "parse_model_ref"]


def parse_model_ref(ref: str) -> tuple[str, str | None]:
    """"NAME" or "NAME/VERSION" (model names may themselves contain slashes)."""
    name, sep, version = ref.rpartition("/")
    if sep and version.isdigit() and name:
        return name, version
    return ref, None


def _run_summary(run: Any) -> dict[str, Any]:
    tags = run.data.tags
    return {"run_id": run.info.run_id, "run_name": run.info.run_name,
            "rebuild_of": tags.get(REBUILD_OF), "recipe": tags.get("tidelog.recipe"),
            "status": run.info.status}


@dataclass(frozen=True)
class ModelLineage:
    name: str
    version: str
    model_source: str
    run: RunLineage
    rebuilds: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        run = self.run
        return {
            "model": {"name": self.name, "version": self.version, "source": self.model_source},
            "run_id": run.run_id,
            "snapshot_id": run.snapshot_id,
            "cut": run.cut.to_json(),
            "window": run.cut.is_window,
            "lsn": run.cut.lsn,
            "commit_time_ms": run.cut.commit_time_ms,
            "digest": run.digest,
            "tables": {t: {"digest": run.table_digests[t], "rows": run.table_rows.get(t)}
                       for t in run.tables},
            "source": run.source,
            "recipe": {"reference": run.recipe, "sha256": run.recipe_sha256,
                       "git_commit": run.recipe_git_commit},
            "params": run.params,
            "seed": run.seed,
            "exclusions": run.exclusions,
            "rebuilds": self.rebuilds,
        }


def model_lineage(settings: Settings, name: str, version: str | int | None = None, *,
                  experiment: str = DEFAULT_EXPERIMENT) -> ModelLineage:
    tracking = connect(settings, experiment)
    model_version = tracking.model_version(name, version)
    if not model_version.run_id:
        raise TrainingError(f"model {name}/{model_version.version} is not linked to a run; "
                            "it was not registered by `tidelog train --register`")
    run = tracking.lineage(model_version.run_id)
    rebuilds = [_run_summary(r) for r in tracking.runs_with_tag(REBUILD_OF, run.run_id)]
    return ModelLineage(name, str(model_version.version), str(model_version.source), run,
                        rebuilds)


@dataclass(frozen=True)
class RowVersion:
    snapshot_id: str
    created_at: str
    cut: dict[str, Any]
    window: bool
    rows: list[dict[str, Any]]  # normally 0 or 1; a window snapshot may hold changes only
    runs: list[dict[str, Any]]

    @property
    def present(self) -> bool:
        return bool(self.rows)

    @property
    def version(self) -> str | None:
        """A short fingerprint of the row values: equal versions saw the same row."""
        if not self.rows:
            return None
        return hashlib.sha256(tag_json(self.rows).encode()).hexdigest()[:12]

    def to_json(self) -> dict[str, Any]:
        return {"snapshot_id": self.snapshot_id, "created_at": self.created_at,
                "cut": self.cut, "window": self.window, "present": self.present,
                "version": self.version, "rows": self.rows, "runs": self.runs}


@dataclass(frozen=True)
class RowLineage:
    table: str
    key: dict[str, Any]
    snapshots: list[RowVersion]

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "key": self.key,
                "snapshots": [s.to_json() for s in self.snapshots]}


def _find_rows(snapshot: Any, table: str, key: Mapping[str, Any]) -> list[dict[str, Any]]:
    import duckdb

    schema, _, rel = table.rpartition(".")
    relation = f'"{schema}"."{rel}"' if schema else f'"{rel}"'
    where = " and ".join(f'"{column}" = ?' for column in key)
    con = snapshot.duckdb()
    try:
        cursor = con.execute(f"select * from {relation} where {where}", list(key.values()))
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    except duckdb.Error as exc:
        raise TrainingError(
            f"cannot look up key {json.dumps(dict(key), default=str)} in {table} of snapshot "
            f"{snapshot.manifest.id}: {exc}; give key values of the column types") from exc
    finally:
        con.close()


def row_lineage(settings: Settings, table: str, key: Mapping[str, Any], *,
                provider: SnapshotProvider | None = None,
                experiment: str = DEFAULT_EXPERIMENT) -> RowLineage:
    if not key:
        raise TrainingError('a row key needs at least one column, e.g. {"id": 5}')
    provider = provider or default_provider()
    manifests = [m for m in provider.list_snapshots(settings) if table in m.tables]
    if not manifests:
        known = sorted({t for m in provider.list_snapshots(settings) for t in m.tables})
        raise TableNotFound(f"no snapshot holds table {table!r}; snapshots hold "
                            f"{', '.join(known) or 'nothing yet'} (`tidelog snapshot create`)")
    columns = {c for m in manifests for c, _ in m.tables[table].columns}
    unknown = sorted(set(key) - columns)
    if unknown:
        raise TrainingError(f"{table} has no column {', '.join(unknown)}; its columns are "
                            f"{', '.join(sorted(columns))}")
    tracking: Tracking = connect(settings, experiment)
    found = []
    for manifest in manifests:
        has_key = set(key) <= {c for c, _ in manifest.tables[table].columns}
        rows = (_find_rows(provider.open_snapshot(settings, manifest.id), table, key)
                if has_key else [])
        runs = [_run_summary(r) for r in tracking.runs_with_tag(SNAPSHOT_ID, manifest.id)]
        found.append(RowVersion(manifest.id, manifest.created_at, manifest.cut.to_json(),
                                manifest.cut.is_window, rows, runs))
    return RowLineage(table, dict(key), found)
