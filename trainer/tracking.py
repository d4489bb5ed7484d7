"""MLflow, seen from tidelog: one place that calls it and maps its errors.

Datasets are logged as MLflow dataset inputs whose source (type "tidelog") is
``tidelog://snapshot/<id>/<table>?cut=<cut fingerprint>``, so MLflow's own UI and API name
the cut each table came from.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Hashable, Iterator, Mapping
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import polars as pl

from snapshotter.manifest import Manifest
from tidelog.errors import ModelNotFound, RunNotFound, TrackingUnavailable, TrainingError
from tidelog.redact import redact_url
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
        raise _unavailable(exc, what, uri) from exc


def _unavailable(exc: Any, what: str, uri: str) -> TrackingUnavailable:
    return TrackingUnavailable(
        f"MLflow at {uri} failed to {what}: {exc.message}; check that the tracking "
        "server is up (`tidelog stack status`) and TIDELOG_MLFLOW_URI points at it",
        mlflow_uri=uri)


def filter_literal(text: str) -> str:
    """The inside of a string literal in an MLflow search filter (backslash-escaped)."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


@dataclass(frozen=True)
class LoggedRun:
    run_id: str
    model_uri: str


def dataset_source(manifest: Manifest, table: str) -> Any:
    """The MLflow dataset source of one table of a snapshot (trainer/datasets.py)."""
    from trainer.datasets import dataset_for

    return dataset_for(manifest, table).source


class Tracking:
    """An MLflow tracking store and the experiment tidelog logs into."""

    def __init__(self, settings: Settings, experiment: str = DEFAULT_EXPERIMENT) -> None:
        import mlflow
        from mlflow import MlflowClient

        self.uri = settings.require("mlflow_uri")
        if redact_url(self.uri) != self.uri:
            # MLflow writes "View run at <tracking URI>" to stdout (the API log), with
            # the URI's credentials; a message it never prints cannot leak them.
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
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
                raise RunNotFound(
                    f"unknown run {run_id!r}: MLflow at {self.uri} has no such run; copy the "
                    "run id from `tidelog train --json` or the MLflow UI", run_id=run_id
                ) from exc
            raise _unavailable(exc, f"read run {run_id}", self.uri) from exc

    def lineage(self, run_id: str) -> RunLineage:
        run = self.get_run(run_id)
        return RunLineage.from_tags(run_id, run.data.tags,
                                    read_manifest=lambda: self._read_text(run_id))

    def _read_text(self, run_id: str, path: str = MANIFEST_ARTIFACT) -> str:
        import mlflow

        with mlflow_errors(f"read {path} of run {run_id}", self.uri):
            return str(mlflow.artifacts.load_text(f"runs:/{run_id}/{path}"))

    def read_text(self, run_id: str, path: str) -> str:
        """A text artefact of a run (TrackingUnavailable when it cannot be read)."""
        return self._read_text(run_id, path)

    def model_versions(self, filter_string: str) -> list[Any]:
        with mlflow_errors(f"search model versions where {filter_string}", self.uri):
            return list(self.client.search_model_versions(filter_string))

    def model_version(self, name: str, version: str | int | None = None) -> Any:
        """A registered model's version, the newest when `version` is None."""
        from mlflow.exceptions import MlflowException

        if version is None:
            versions = self.model_versions(f"name = '{filter_literal(name)}'")
            if not versions:
                raise ModelNotFound(f"no registered model {name!r} in MLflow at {self.uri}; "
                                    "register one with `tidelog train ... --register NAME`",
                                    model=name)
            return max(versions, key=lambda v: int(v.version))
        try:
            return self.client.get_model_version(name, str(version))
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise _unavailable(exc, f"read version {version} of model {name!r}",
                                   self.uri) from exc
            raise ModelNotFound(
                f"model {name!r} has no version {version} in MLflow at {self.uri}; "
                f"`tidelog lineage model {name}` shows the newest", model=name) from exc

    def version_by_alias(self, name: str, alias: str) -> Any:
        """The version `name@alias` points at; ModelNotFound when the alias is unset."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise _unavailable(exc, f"read {name}@{alias}", self.uri) from exc
            raise ModelNotFound(
                f"model {name!r} has no alias {alias!r} in MLflow at {self.uri}; register "
                "a version and point the alias at it (a pipeline's gate does, or "
                f"`MlflowClient().set_registered_model_alias({name!r}, {alias!r}, V)`)",
                model=name, alias=alias) from exc

    def load_pyfunc(self, model_uri: str) -> Any:
        """The pyfunc model at `model_uri` (`models:/NAME/VERSION`)."""
        import mlflow.pyfunc

        with mlflow_errors(f"load {model_uri}", self.uri):
            try:
                return mlflow.pyfunc.load_model(model_uri)
            except (OSError, ImportError, ValueError) as exc:
                raise TrainingError(
                    f"cannot load {model_uri} from MLflow at {self.uri} as a pyfunc model: "
                    f"{exc}; check that its flavour's packages are installed here",
                    model_uri=model_uri) from exc

    def change_marks(self) -> Hashable:
        """Changes whenever a run starts or ends or a model version is registered or
        changed: three cheap calls, for caches of lineage answers."""
        client = self.client
        with mlflow_errors("check for new runs", self.uri):
            experiments = [e.experiment_id for e in client.search_experiments()]
            latest = [r.info.run_id for r in client.search_runs(
                experiments, max_results=1, order_by=["attributes.start_time DESC"])] \
                if experiments else []
            running = frozenset(r.info.run_id for r in client.search_runs(
                experiments, "attributes.status = 'RUNNING'", max_results=1000)) \
                if experiments else frozenset()
            versions = [(v.name, v.version, v.last_updated_timestamp, v.current_stage)
                        for v in client.search_model_versions(
                            max_results=1, order_by=["last_updated_timestamp DESC"])]
        return tuple(experiments), tuple(latest), running, tuple(versions)

    def runs_with_tag(self, key: str, value: str) -> list[Any]:
        with mlflow_errors(f"search runs tagged {key}={value}", self.uri):
            experiments = [e.experiment_id for e in self.client.search_experiments()]
            if not experiments:
                return []
            return list(self.client.search_runs(experiments,
                                                f"tags.`{key}` = '{filter_literal(value)}'",
                                                order_by=["attributes.start_time ASC"]))

    def runs_with_table(self, table: str) -> list[Any]:
        """Every tidelog run whose dataset includes `table` (any experiment)."""
        with mlflow_errors(f"search runs of table {table}", self.uri):
            experiments = [e.experiment_id for e in self.client.search_experiments()]
            if not experiments:
                return []
            found = self.client.search_runs(
                experiments, f"tags.`tidelog.tables` LIKE '%{filter_literal(table)}%'",
                max_results=50_000, order_by=["attributes.start_time ASC"])
        return [r for r in found
                if table in r.data.tags.get("tidelog.tables", "").split(",")]

    # -- writing --------------------------------------------------------------------

    def set_run_tag(self, run_id: str, key: str, value: str) -> None:
        with mlflow_errors(f"tag run {run_id} with {key}", self.uri):
            self.client.set_tag(run_id, key, value)

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        with mlflow_errors(f"tag version {version} of model {name!r} with {key}", self.uri):
            self.client.set_model_version_tag(name, version, key, value)

    def versions_of_run(self, run_id: str) -> list[tuple[str, str]]:
        """(model name, version) of every registered version made from the run."""
        return [(str(v.name), str(v.version))
                for v in self.model_versions(f"run_id = '{filter_literal(run_id)}'")]

    def log_run(self, *, run_name: str, params: Mapping[str, Any], seed: int,
                result: RecipeResult, predictions: Any, tags: Mapping[str, str],
                manifest: Manifest, tables: Mapping[str, pl.DataFrame],
                timings: Mapping[str, float],
                texts: Mapping[str, str] | None = None) -> LoggedRun:
        """`texts`: more text artefacts of the run (path -> content), logged inside it."""
        import mlflow
        import mlflow.sklearn
        from mlflow.models import infer_signature

        from trainer.datasets import dataset_for

        # MLflow writes "View run ... at: URL" to stdout when a run against a server ends;
        # stdout belongs to `--json` output, so its chatter goes to stderr.
        with mlflow_errors(f"log run {run_name!r}", self.uri), redirect_stdout(sys.stderr):
            with mlflow.start_run(experiment_id=self.experiment_id, run_name=run_name) as run:
                mlflow.log_params({**{k: str(v) for k, v in params.items()}, "seed": seed})
                mlflow.log_metrics(dict(result.metrics))
                mlflow.log_metrics({f"tidelog.{k}_seconds": v for k, v in timings.items()})
                mlflow.set_tags({**result.tags, **tags})
                mlflow.log_text(manifest.dumps(), MANIFEST_ARTIFACT)
                for path, text in sorted((texts or {}).items()):
                    mlflow.log_text(text, path)
                datasets = [dataset_for(manifest, name) for name in sorted(tables)]
                for dataset in datasets:
                    mlflow.log_input(dataset, context="training")
                features = to_pandas(result.features)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    signature = infer_signature(features, predictions)
                # MLflow 3.17 defaults to skops, which refuses any estimator whose types
                # are not listed as trusted (a DecisionTree's Tree already); a recipe may
                # return any picklable model, and model_sha256 is over cloudpickle bytes.
                info = mlflow.sklearn.log_model(
                    result.model, name=MODEL_NAME, signature=signature,
                    input_example=features.head(5), pip_requirements=_requirements(result),
                    serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE)
                # MLflow 3: the metrics also belong to the LoggedModel, each table's dataset
                # named beside them, so the model page shows what it was evaluated on.
                for dataset in datasets:
                    mlflow.log_metrics(dict(result.metrics), model_id=info.model_id,
                                       dataset=dataset)
        return LoggedRun(run.info.run_id, info.model_uri)

    def log_metric(self, run_id: str, key: str, value: float) -> None:
        with mlflow_errors(f"log metric {key} on run {run_id}", self.uri):
            self.client.log_metric(run_id, key, value)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], timestamp_ms: int,
                    step: int = 0) -> None:
        """Several metrics at one moment on an existing (possibly finished) run, in one
        request: monitoring appends a point to each metric's history per pass."""
        from mlflow.entities import Metric

        batch = [Metric(k, float(v), timestamp_ms, step) for k, v in sorted(metrics.items())]
        with mlflow_errors(f"log {len(batch)} metrics on run {run_id}", self.uri):
            for start in range(0, len(batch), 1000):  # MLflow's per-request limit
                self.client.log_batch(run_id, metrics=batch[start:start + 1000])

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(timestamp ms, value) of every point logged for `key` on the run, oldest first."""
        with mlflow_errors(f"read the history of metric {key} of run {run_id}", self.uri):
            points = self.client.get_metric_history(run_id, key)
        return sorted((int(m.timestamp), float(m.value)) for m in points)

    def load_model(self, model_uri: str) -> Any:
        """The scikit-learn model at `model_uri` (models:/NAME/VERSION, runs:/...)."""
        import mlflow.sklearn
        from mlflow.exceptions import MlflowException

        try:
            return mlflow.sklearn.load_model(model_uri)
        except (MlflowException, OSError) as exc:
            raise TrainingError(f"cannot load the model {model_uri} from MLflow at {self.uri}: "
                                f"{exc}; check that the version exists (`tidelog lineage "
                                "model NAME`)", model_uri=model_uri) from exc

    def register(self, model_uri: str, name: str,
                 tags: Mapping[str, str] | None = None) -> str:
        """Register the model; `tags` go on the model version (its snapshot and cut)."""
        import mlflow

        with mlflow_errors(f"register {model_uri} as {name!r}", self.uri):
            return str(mlflow.register_model(model_uri, name, tags=dict(tags or {})).version)


def _requirements(result: RecipeResult) -> list[str] | None:
    import mlflow.sklearn

    if result.pip_requirements == "infer":
        return None  # MLflow infers them in a subprocess: several seconds
    if isinstance(result.pip_requirements, list):
        return result.pip_requirements
    return list(mlflow.sklearn.get_default_pip_requirements(include_cloudpickle=True))


def connect(settings: Settings, experiment: str = DEFAULT_EXPERIMENT) -> Tracking:
    return Tracking(settings, experiment)
