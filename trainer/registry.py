"""The MLflow model registry as the audit page and the serving worker read it: models,
versions, aliases, and a version's pyfunc model with the data it was trained on."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tidelog.errors import TrainingError
from tidelog.settings import Settings
from trainer.tags import SNAPSHOT_ID
from trainer.tracking import DEFAULT_EXPERIMENT, Tracking, connect, mlflow_errors

__all__ = ["ModelVersionRef", "AliasTarget", "registered_models", "versions_for_runs",
           "alias_version", "resolve_alias", "load_version"]

DIGEST = "tidelog.digest"


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


@dataclass(frozen=True)
class AliasTarget:
    """The version a model's alias points at, and the data behind it (run tags)."""

    name: str
    alias: str
    version: str
    run_id: str
    snapshot_id: str
    cut_digest: str  # the snapshot's content digest, `tidelog.digest` (docs/digest.md)

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "run_id": self.run_id,
                "alias": self.alias, "snapshot_id": self.snapshot_id,
                "cut_digest": self.cut_digest}


def alias_version(tracking: Tracking, name: str, alias: str) -> str:
    """The version number `name@alias` points at now: one registry call, cheap enough to
    ask between batches."""
    return str(tracking.version_by_alias(name, alias).version)


def resolve_alias(tracking: Tracking, name: str, alias: str) -> AliasTarget:
    """`name@alias` now with its data: a registry call and a run read. ModelNotFound when
    the alias is unset; TrainingError when the version has no tidelog lineage."""
    version = tracking.version_by_alias(name, alias)
    return _target(tracking, name, alias, str(version.version), str(version.run_id or ""),
                   dict(getattr(version, "tags", None) or {}))


def _target(tracking: Tracking, name: str, alias: str, version: str, run_id: str,
            version_tags: dict[str, str]) -> AliasTarget:
    tags = dict(version_tags)
    if run_id:
        tags.update(tracking.get_run(run_id).data.tags)
    if not tags.get(SNAPSHOT_ID) or not tags.get(DIGEST):
        raise TrainingError(
            f"version {version} of model {name!r} (run {run_id or 'none'}) was not trained "
            f"by tidelog: it has no {SNAPSHOT_ID} / {DIGEST} tags, so its predictions could "
            "not name their data; register a model trained with `tidelog train --register`",
            model=name, version=version, run_id=run_id)
    return AliasTarget(name, alias, version, run_id, tags[SNAPSHOT_ID], tags[DIGEST])


def load_version(tracking: Tracking, target: AliasTarget) -> Any:
    """The pyfunc model of exactly `target.version` (never through the alias, which may
    have moved since it was resolved)."""
    return tracking.load_pyfunc(f"models:/{target.name}/{target.version}")
