"""What training and rebuilds read and wrote, as OpenLineage datasets and run facets.

A training run's OpenLineage run id is derived from its MLflow run id
(`tidelog.openlineage.run_id_for`), so a rebuild names its original as its parent without
anything else being stored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from snapshotter.openlineage import cut_facet, snapshot_table
from tidelog.openlineage import Lineage, LineageDataset, mlflow_namespace, run_id_for
from tidelog.settings import Settings

if TYPE_CHECKING:  # the decorated modules import this one
    from trainer.rebuild import RebuildReport
    from trainer.train import TrainResult

__all__ = ["describe_train", "describe_rebuild"]


def _mlflow_facet(settings: Settings, run_id: str, experiment_id: str, model_uri: str,
                  version: str | None) -> Any:
    from tidelog.openlineage_facets import MlflowRunFacet

    return MlflowRunFacet(runId=run_id, experimentId=experiment_id,
                          trackingUri=mlflow_namespace(settings.mlflow_uri), modelUri=model_uri,
                          registeredModelVersion=version)


def _model(settings: Settings, run_id: str, registered: str | None, version: str | None
           ) -> LineageDataset:
    name = f"models/{registered}" if registered else f"runs/{run_id}/model"
    return LineageDataset(mlflow_namespace(settings.mlflow_uri), name, version=version or run_id)


def describe_train(result: TrainResult, _: Any, settings: Settings, *__: Any,
                   register: str | None = None, **___: Any) -> Lineage:
    manifest = result.manifest
    inputs = tuple(snapshot_table(settings, manifest, t) for t in sorted(manifest.tables))
    facets = {"tidelog_cut": cut_facet(manifest.cut),
              "mlflow": _mlflow_facet(settings, result.run_id, result.experiment_id,
                                      result.model_uri, result.registered_version)}
    if result.exclusions:
        from tidelog.openlineage_facets import ExclusionsRunFacet

        facets["tidelog_exclusions"] = ExclusionsRunFacet(
            setId=result.exclusions["id"], digest=result.exclusions["digest"],
            count=len(result.exclusions["entries"]),
            rowsRemoved=dict(result.exclusions["rows_removed"]))
    return Lineage(
        inputs=inputs,
        outputs=(_model(settings, result.run_id, register, result.registered_version),),
        run_facets=facets, run_id=run_id_for(result.run_id))


def describe_rebuild(report: RebuildReport, _: Any, settings: Settings, *__: Any, **___: Any
                     ) -> Lineage:
    from tidelog.openlineage import storage_dataset

    inputs = tuple(LineageDataset(*storage_dataset(settings.snapshot_location, table),
                                  version=report.rebuilt_snapshot_id)
                   for table in sorted(report.tables))
    return Lineage(
        inputs=inputs, outputs=(_model(settings, report.new_run_id, None, None),),
        run_facets={"mlflow": _mlflow_facet(settings, report.new_run_id, "",
                                            f"runs:/{report.new_run_id}/model", None)},
        run_id=run_id_for(report.new_run_id), parent=("train", run_id_for(report.run_id)))
