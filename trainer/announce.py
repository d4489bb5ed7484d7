"""The event the trainer publishes: model.trained, once a run is logged with its cut."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tidelog.events import CloudEvent, new_event
from tidelog.settings import Settings

if TYPE_CHECKING:
    from trainer.train import TrainResult

__all__ = ["PIPELINE_TAG", "model_trained", "model_trained_from_run"]

PIPELINE_TAG = "tidelog.pipeline"


def model_trained(settings: Settings, result: TrainResult, register: str | None = None
                  ) -> CloudEvent:
    manifest = result.manifest
    data = {
        "run_id": result.run_id,
        "experiment_id": result.experiment_id,
        "recipe": result.recipe.reference,
        "snapshot_id": manifest.id,
        "cut_fingerprint": manifest.cut.fingerprint(),
        "digest": manifest.digest,
        "metrics": dict(sorted(result.metrics.items())),
        "params": dict(result.params),
        "seed": result.seed,
        "model_uri": result.model_uri,
        "pipeline": result.tags.get(PIPELINE_TAG),
        "registered_model": register,
        "registered_version": result.registered_version,
    }
    return new_event(settings, "model.trained", result.run_id, data, (result.run_id,),
                     "trainer")


def model_trained_from_run(settings: Settings, run: Any, model_uri: str,
                           register: str | None = None, version: str | None = None
                           ) -> CloudEvent:
    """The same event, rebuilt from a logged MLflow run (a restarted pipeline resends it)."""
    tags = run.data.tags
    run_id = run.info.run_id
    data = {
        "run_id": run_id,
        "experiment_id": run.info.experiment_id,
        "recipe": tags.get("tidelog.recipe", ""),
        "snapshot_id": tags.get("tidelog.snapshot_id", ""),
        "cut_fingerprint": tags.get("tidelog.cut.fingerprint", ""),
        "digest": tags.get("tidelog.digest", ""),
        "metrics": {k: v for k, v in sorted(run.data.metrics.items())
                    if not k.startswith("tidelog.")},
        "params": json.loads(tags.get("tidelog.params", "{}")),
        "seed": int(tags.get("tidelog.seed", "0")),
        "model_uri": model_uri,
        "pipeline": tags.get(PIPELINE_TAG),
        "registered_model": register,
        "registered_version": version,
    }
    return new_event(settings, "model.trained", run_id, data, (run_id,), "trainer")
