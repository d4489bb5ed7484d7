"""The event the trainer publishes: model.trained, once a run is logged with its cut."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidelog.events import CloudEvent, new_event
from tidelog.settings import Settings

if TYPE_CHECKING:
    from trainer.train import TrainResult

__all__ = ["PIPELINE_TAG", "model_trained"]

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
