"""`tidelog train`: snapshot, recipe, MLflow run — with the cut recorded on the run."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import polars as pl

from snapshotter.cut import Cut
from snapshotter.manifest import Manifest
from tidelog.errors import CutError, LogIdentityError, TrainingError
from tidelog.openlineage import traced
from tidelog.settings import Settings
from trainer.exclusions import (
    EXCLUSIONS_ARTIFACT,
    ExclusionStore,
    apply_exclusions,
    exclusion_tags,
)
from trainer.fingerprint import array_sha256, canonical_order, model_sha256, predict
from trainer.openlineage import describe_train
from trainer.provider import SnapshotLike, SnapshotProvider, default_provider
from trainer.recipe import Params, Recipe, RecipeVersion, load_recipe, run_recipe
from trainer.tags import lineage_tags, version_tags
from trainer.tracking import DEFAULT_EXPERIMENT, Tracking, connect

__all__ = ["TrainResult", "train", "window_cut", "recipe_tables", "read_tables"]

RESERVED_PARAMS = frozenset({"seed"})


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    experiment_id: str
    model_uri: str
    registered_version: str | None
    manifest: Manifest
    recipe: RecipeVersion
    params: Params
    seed: int
    metrics: dict[str, float]
    predictions_sha256: str
    model_sha256: str
    tags: dict[str, str]
    timings: dict[str, float]
    exclusions: dict[str, Any] | None = None  # the set trained without (id, digest, rows)

    @property
    def snapshot_id(self) -> str:
        return self.manifest.id

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "model_uri": self.model_uri,
            "registered_version": self.registered_version,
            "snapshot_id": self.manifest.id,
            "cut": self.manifest.cut.to_json(),
            "digest": self.manifest.digest,
            "tables": {name: {"digest": t.digest, "rows": t.rows}
                       for name, t in sorted(self.manifest.tables.items())},
            "recipe": self.recipe.to_json(),
            "params": self.params,
            "seed": self.seed,
            "metrics": self.metrics,
            "predictions_sha256": self.predictions_sha256,
            "model_sha256": self.model_sha256,
            "timings": self.timings,
            "exclusions": self.exclusions,
        }


def window_cut(end: Cut, since: Cut) -> Cut:
    """`end` with each partition starting where `since` ended: the changes in between."""
    before = {(p.topic, p.partition): p for p in since.partitions}
    parts = []
    for p in end.partitions:
        s = before.get((p.topic, p.partition))
        if s is None:
            parts.append(p)
            continue
        if (s.cluster_id, s.topic_id) != (p.cluster_id, p.topic_id):
            raise LogIdentityError(
                f"--since names {p.topic}[{p.partition}] in log cluster={s.cluster_id!r} "
                f"topic={s.topic_id!r}, but the log now is cluster={p.cluster_id!r} "
                f"topic={p.topic_id!r} (topic recreated or another cluster); offsets of two "
                "logs cannot be compared: train on a full snapshot instead")
        if s.end > p.end:
            raise CutError(f"--since ends at offset {s.end} of {p.topic}[{p.partition}], after "
                           f"the end of the chosen cut ({p.end}); pick an earlier --since")
        parts.append(replace(p, start=s.end))
    return Cut(tuple(parts), end.lsn, end.commit_time_ms, end.transaction_aligned)


def _since_cut(tracking: Tracking, since: str | Cut) -> tuple[Cut, str]:
    if isinstance(since, Cut):
        return since, f"cut:{since.fingerprint()}"
    if since.lstrip().startswith("{"):
        cut = Cut.from_json(since)
        return cut, f"cut:{cut.fingerprint()}"
    return tracking.lineage(since).cut, since


def recipe_tables(recipe: Recipe, tables: Sequence[str] | None) -> list[str]:
    chosen = list(tables or recipe.tables or ())
    if not chosen:
        raise TrainingError(
            f"no tables for recipe {recipe.reference}: pass --tables schema.table[,...] or "
            "declare them with @trainer.recipe.recipe(tables=[...])")
    return sorted(set(chosen))


def read_tables(snapshot: SnapshotLike) -> dict[str, pl.DataFrame]:
    """The snapshot's tables in canonical row order (sorted by key)."""
    tables = snapshot.manifest.tables
    return {n: canonical_order(snapshot.table(n), tables[n].key_columns) for n in sorted(tables)}


def _check_params(params: Mapping[str, Any]) -> Params:
    clash = RESERVED_PARAMS & set(params)
    if clash:
        raise TrainingError(f"parameter name {sorted(clash)} is reserved; pass the seed with "
                            "--seed / seed=")
    bad = {k: type(v).__name__ for k, v in params.items()
           if not isinstance(v, str | int | float) or isinstance(v, bool)}
    if bad:
        raise TrainingError(f"parameters must be str, int or float; got {bad}")
    return dict(params)


@traced("train", describe_train)
def train(settings: Settings, recipe: str, *, snapshot_id: str | None = None,
          at: str | Cut | None = "latest", tables: Sequence[str] | None = None,
          params: Mapping[str, str | int | float] | None = None, seed: int = 0,
          register: str | None = None, since: str | Cut | None = None,
          experiment: str = DEFAULT_EXPERIMENT,
          provider: SnapshotProvider | None = None,
          tags: Mapping[str, str] | None = None) -> TrainResult:
    """`tags` are added to the run (pipelines tag theirs); `tidelog.*` lineage tags win."""
    started = time.perf_counter()
    provider = provider or default_provider()
    checked = _check_params(params or {})
    loaded = load_recipe(recipe)
    tracking = connect(settings, experiment)
    _ = tracking.experiment_id  # fail on an unreachable MLflow before any heavy work
    snapshot_started = time.perf_counter()
    since_ref: str | None = None
    if snapshot_id is not None:
        if since is not None:
            raise TrainingError("--since builds a new window snapshot; it cannot be combined "
                                "with --snapshot (use --at with --since)")
        snapshot = provider.open_snapshot(settings, snapshot_id)
        if tables and sorted(set(tables)) != sorted(snapshot.manifest.tables):
            raise TrainingError(
                f"snapshot {snapshot_id} holds {', '.join(sorted(snapshot.manifest.tables))}; "
                "a recipe trains on a whole snapshot: omit --tables, or create a snapshot of "
                "exactly the tables you want (--at latest --tables ...)")
    else:
        only = recipe_tables(loaded, tables)
        target: str | Cut = at or "latest"
        if since is not None:
            since_cut, since_ref = _since_cut(tracking, since)
            target = window_cut(provider.resolve_cut(settings, only, target), since_cut)
        manifest = provider.create_snapshot(settings, only, target)
        snapshot = provider.open_snapshot(settings, manifest.id)
    # Exclusions apply here, at read time: the snapshot stays an exact copy of the cut.
    exclusions = ExclusionStore.for_settings(settings).active().for_tables(
        snapshot.manifest.tables)
    frames, removed = apply_exclusions(read_tables(snapshot), exclusions)
    snapshot_done = time.perf_counter()

    result = run_recipe(loaded, frames, checked, seed)
    predictions = predict(result.model, result.features)
    trained = time.perf_counter()

    manifest = snapshot.manifest
    run_tags = {**(tags or {}), **lineage_tags(manifest, loaded.version, checked, seed,
                                                since_ref)}
    run_tags.update(_model_tags(result.deterministic, array_sha256(predictions),
                                model_sha256(result.model)))
    run_tags.update(exclusion_tags(exclusions, removed))
    timings = {"snapshot": snapshot_done - snapshot_started, "train": trained - snapshot_done}
    logged = tracking.log_run(
        run_name=f"{recipe}@{manifest.id[:12]}", params=checked, seed=seed, result=result,
        predictions=predictions, tags=run_tags, manifest=manifest, tables=frames,
        timings=timings,
        texts={EXCLUSIONS_ARTIFACT: exclusions.dumps()} if exclusions.entries else {})
    version = (tracking.register(logged.model_uri, register, tags=version_tags(run_tags))
               if register else None)
    timings["total"] = time.perf_counter() - started
    tracking.log_metric(logged.run_id, "tidelog.total_seconds", timings["total"])
    trained_result = TrainResult(
        run_id=logged.run_id, experiment_id=tracking.experiment_id, model_uri=logged.model_uri,
        registered_version=version, manifest=manifest, recipe=loaded.version, params=checked,
        seed=seed, metrics=result.metrics,
        predictions_sha256=run_tags["tidelog.predictions.sha256"],
        model_sha256=run_tags["tidelog.model.sha256"], tags=run_tags, timings=timings,
        exclusions={**exclusions.to_json(), "rows_removed": removed}
        if exclusions.entries else None)
    _announce(settings, trained_result, register)
    return trained_result


def _announce(settings: Settings, result: TrainResult, register: str | None) -> None:
    from tidelog.events import publish
    from trainer.announce import model_trained

    publish(settings, model_trained(settings, result, register))


def _model_tags(deterministic: bool, predictions: str, model: str) -> dict[str, str]:
    return {"tidelog.predictions.sha256": predictions, "tidelog.model.sha256": model,
            "tidelog.model.deterministic": str(deterministic).lower()}
