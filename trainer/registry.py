"""The MLflow model registry as the audit page reads it: models, versions, aliases."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tidelog.settings import Settings
from trainer.tags import SNAPSHOT_ID
from trainer.tracking import DEFAULT_EXPERIMENT, connect, mlflow_errors

__all__ = ["ModelVersionRef", "registered_models", "versions_for_runs"]


@dataclass(frozen=True)
class ModelVersionRef:
    name: str
    version: str
    run_id: str
    aliases: tuple[str, ...]
    snapshot_id: str  # from the version's tags; "" for versions tidelog did not register

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"


def _ref(version: object) -> ModelVersionRef:
    tags = dict(getattr(version, "tags", None) or {})
    return ModelVersionRef(str(getattr(version, "name", "")), str(getattr(version, "version", "")),
                           str(getattr(version, "run_id", "") or ""),
                           tuple(sorted(getattr(version, "aliases", None) or ())),
                           str(tags.get(SNAPSHOT_ID, "")))


def registered_models(settings: Settings, experiment: str = DEFAULT_EXPERIMENT
                      ) -> dict[str, list[ModelVersionRef]]:
    """Every registered model and its versions, newest version first."""
    tracking = connect(settings, experiment)
    with mlflow_errors("list registered models", tracking.uri):
        versions = [_ref(v) for v in tracking.client.search_model_versions(max_results=10_000)]
    models: dict[str, list[ModelVersionRef]] = {}
    for v in sorted(versions, key=lambda v: (v.name, -int(v.version or 0))):
        models.setdefault(v.name, []).append(v)
    return models


def versions_for_runs(settings: Settings, run_ids: Iterable[str],
                      experiment: str = DEFAULT_EXPERIMENT) -> dict[str, list[ModelVersionRef]]:
    """The registered versions made from each run (a run may be registered several times)."""
    wanted = set(run_ids)
    found: dict[str, list[ModelVersionRef]] = {r: [] for r in sorted(wanted)}
    for versions in registered_models(settings, experiment).values():
        for v in versions:
            if v.run_id in wanted:
                found[v.run_id].append(v)
    return found
