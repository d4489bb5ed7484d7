"""MLflow, seen from tidelog: one place that calls it and maps its errors.

Datasets are logged as MLflow dataset inputs whose source (type "tidelog") is
``tidelog://snapshot/<id>/<table>?cut=<cut fingerprint>``, so MLflow's own UI and API name
the cut each table came from.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

import polars as pl

from snapshotter.manifest import Manifest
from tidelog.errors import TrainingError
from tidelog.settings import Settings
from trainer.fingerprint import to_pandas
from trainer.recipe import RecipeResult
from trainer.tags import MANIFEST_ARTIFACT, RunLineage

__all__ = [
    "DEFAULT_EXPERIMENT",
    "Tracking",
    "LoggedRun",
    "connect",
    "dataset_source",
]

DEFAULT_EXPERIMENT = "tidelog"
MODEL_NAME = "model"
_REMOTE_SCHEMES = ("http", "https", "databricks", "databricks-uc", "uc")


@contextmanager
def mlflow_errors(what: str, uri: str) -> Iterator[None]:
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        raise TrainingError(
            f"MLflow at {uri} failed to {what}: {exc.message}; check that the tracking "
            "server is up (`tidelog stack status`) and TIDELOG_MLFLOW_URI points at it",
            mlflow_uri=uri) from exc


@dataclass(frozen=True)
class LoggedRun:
    run_id: str
    model_uri: str


def dataset_source(manifest: Manifest, table: str) -> Any:
    from mlflow.data.dataset_source import DatasetSource

    source_cls = _source_class()
    assert issubclass(source_cls, DatasetSource)
    return source_cls(f"tidelog://snapshot/{manifest.id}/{table}"
                      f"?cut={manifest.cut.fingerprint()}")


_SOURCE_CLASS: Any = None


def _source_class() -> Any:
    """The MLflow dataset source type "tidelog", registered with MLflow on first use."""
    global _SOURCE_CLASS
    if _SOURCE_CLASS is not None:
        return _SOURCE_CLASS
    from mlflow.data.dataset_source import DatasetSource
    from mlflow.data.dataset_source_registry import register_dataset_source

    class SnapshotDatasetSource(DatasetSource):  # type: ignore[misc]
        def __init__(self, uri: str) -> None:
            self.uri = uri

        @staticmethod
        def _get_source_type() -> str:
            return "tidelog"

        def load(self, **kwargs: Any) -> Any:
            raise NotImplementedError(f"open {self.uri} with tidelog: `tidelog rebuild RUN_ID` "
                                      "or snapshotter.snapshots.open_snapshot")

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return isinstance(raw_source, str) and raw_source.startswith("tidelog://")

        @classmethod
        def _resolve(cls, raw_source: Any) -> SnapshotDatasetSource:
            return cls(str(raw_source))

        def to_dict(self) -> dict[str, Any]:
            parsed = urlparse(self.uri)
            snapshot_id, _, table = parsed.path.strip("/").partition("/")
            return {"uri": self.uri, "snapshot_id": snapshot_id, "table": table,
                    "cut_fingerprint": parse_qs(parsed.query).get("cut", [""])[0]}

        @classmethod
        def from_dict(cls, source_dict: dict[Any, Any]) -> SnapshotDatasetSource:
            return cls(str(source_dict["uri"]))

    register_dataset_source(SnapshotDatasetSource)  # type: ignore[arg-type]  # wants the class
    _SOURCE_CLASS = SnapshotDatasetSource
    return _SOURCE_CLASS


class Tracking:
    """An MLflow tracking store and the experiment tidelog logs into."""

    def __init__(self, settings: Settings, experiment: str = DEFAULT_EXPERIMENT) -> None:
        import mlflow
        from mlflow import MlflowClient

        self.uri = settings.require("mlflow_uri")
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        self._settings = settings
        self._experiment_name = experiment
        self._experiment_id: str | None = None

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            with mlflow_errors(f"open experiment {self._experiment_name!r}", self.uri):
                found = self.client.get_experiment_by_name(self._experiment_name)
                if found is not None:
                    self._experiment_id = found.experiment_id
                else:
                    self._experiment_id = self.client.create_experiment(
                        self._experiment_name, artifact_location=self._artifact_location())
        return self._experiment_id

    def _artifact_location(self) -> str | None:
        # A database store would put artefacts in ./mlruns of whatever the cwd is.
        if urlparse(self.uri).scheme in _REMOTE_SCHEMES:
            return None
        return (self._settings.home / "mlartifacts").absolute().as_uri()

    # -- reading --------------------------------------------------------------------

    def get_run(self, run_id: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise TrainingError(
                    f"unknown run {run_id!r}: MLflow at {self.uri} has no such run; copy the "
                    "run id from `tidelog train --json` or the MLflow UI", run_id=run_id
                ) from exc
            raise TrainingError(f"MLflow at {self.uri} failed to read run {run_id}: "
                                f"{exc.message}", run_id=run_id) from exc

    def lineage(self, run_id: str) -> RunLineage:
        run = self.get_run(run_id)
        return RunLineage.from_tags(run_id, run.data.tags,
                                    read_manifest=lambda: self._read_text(run_id))

    def _read_text(self, run_id: str) -> str:
        import mlflow

        with mlflow_errors(f"read {MANIFEST_ARTIFACT} of run {run_id}", self.uri):
            return str(mlflow.artifacts.load_text(f"runs:/{run_id}/{MANIFEST_ARTIFACT}"))

    def runs_with_tag(self, key: str, value: str) -> list[Any]:
        with mlflow_errors(f"search runs tagged {key}={value}", self.uri):
            experiments = [e.experiment_id for e in self.client.search_experiments()]
            if not experiments:
                return []
            escaped = value.replace("'", "\\'")
            return list(self.client.search_runs(experiments, f"tags.`{key}` = '{escaped}'",
                                                order_by=["attributes.start_time ASC"]))

    # -- writing --------------------------------------------------------------------

    def log_run(self, *, run_name: str, params: Mapping[str, Any], seed: int,
                result: RecipeResult, predictions: Any, tags: Mapping[str, str],
                manifest: Manifest, tables: Mapping[str, pl.DataFrame],
                timings: Mapping[str, float]) -> LoggedRun:
        import mlflow
        import mlflow.sklearn
        from mlflow.data.polars_dataset import from_polars
        from mlflow.models import infer_signature

        # MLflow writes "View run ... at: URL" to stdout when a run against a server ends;
        # stdout belongs to `--json` output, so its chatter goes to stderr.
        with mlflow_errors(f"log run {run_name!r}", self.uri), redirect_stdout(sys.stderr):
            with mlflow.start_run(experiment_id=self.experiment_id, run_name=run_name) as run:
                mlflow.log_params({**{k: str(v) for k, v in params.items()}, "seed": seed})
                mlflow.log_metrics(dict(result.metrics))
                mlflow.log_metrics({f"tidelog.{k}_seconds": v for k, v in timings.items()})
                mlflow.set_tags({**result.tags, **tags})
                mlflow.log_text(manifest.dumps(), MANIFEST_ARTIFACT)
                for name in sorted(tables):
                    dataset = from_polars(
                        tables[name], source=dataset_source(manifest, name), name=name,
                        digest=manifest.tables[name].digest[:36])
                    mlflow.log_input(dataset, context="training")
                features = to_pandas(result.features)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    signature = infer_signature(features, predictions)
                info = mlflow.sklearn.log_model(
                    result.model, name=MODEL_NAME, signature=signature,
                    input_example=features.head(5), pip_requirements=_requirements(result))
        return LoggedRun(run.info.run_id, info.model_uri)

    def log_metric(self, run_id: str, key: str, value: float) -> None:
        with mlflow_errors(f"log metric {key} on run {run_id}", self.uri):
            self.client.log_metric(run_id, key, value)

    def register(self, model_uri: str, name: str) -> str:
        import mlflow

        with mlflow_errors(f"register {model_uri} as {name!r}", self.uri):
            return str(mlflow.register_model(model_uri, name).version)


def _requirements(result: RecipeResult) -> list[str] | None:
    import mlflow.sklearn

    if result.pip_requirements == "infer":
        return None  # MLflow infers them in a subprocess: several seconds
    if isinstance(result.pip_requirements, list):
        return result.pip_requirements
    return list(mlflow.sklearn.get_default_pip_requirements(include_cloudpickle=True))


def connect(settings: Settings, experiment: str = DEFAULT_EXPERIMENT) -> Tracking:
    return Tracking(settings, experiment)
