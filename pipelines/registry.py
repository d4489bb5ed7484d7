"""The MLflow side of a pipeline: its runs, the model registry, the champion alias.

All calls go through `trainer.tracking` (the one MLflow adapter) and its error mapping.
Moving an alias is one registry call, so a promotion is either done or not: there is no
half-promoted model.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from tidelog.errors import TrainingError
from tidelog.settings import Settings
from trainer.announce import PIPELINE_TAG
from trainer.tags import REBUILD_OF, RunLineage
from trainer.tracking import Tracking, connect, filter_literal, mlflow_errors

__all__ = ["PIPELINE_TAG", "TRIGGER_TAG", "SIGNALS_TAG", "Champion", "Registry"]

TRIGGER_TAG = "tidelog.pipeline.trigger"  # the kinds that fired, comma-separated
SIGNALS_TAG = "tidelog.pipeline.signals"  # ids of the drift/retrain events acted on
_MAX_SIGNALS = 150  # 37 characters each: well below MLflow's 8000-character tag limit


@dataclass(frozen=True)
class Champion:
    model: str
    version: str
    run_id: str
    lineage: RunLineage
    trained_at: dt.datetime

    @property
    def ref(self) -> str:
        return f"{self.model}/{self.version}"


def _started(run: Any) -> dt.datetime:
    return dt.datetime.fromtimestamp(run.info.start_time / 1000, dt.UTC)


class Registry:
    def __init__(self, settings: Settings, experiment: str) -> None:
        self.tracking: Tracking = connect(settings, experiment)
        self.client = self.tracking.client
        self.uri = self.tracking.uri

    # -- runs -----------------------------------------------------------------------

    def _search(self, query: str, newest_first: bool = False, limit: int | None = None
                ) -> list[Any]:
        """Runs of a pipeline, without rebuilds: `tidelog rebuild` copies every tidelog.*
        tag (pipeline, cut fingerprint) to its run, but a rebuild is not a training.
        Every page of results, not only MLflow's first 1000."""
        order = "DESC" if newest_first else "ASC"
        runs: list[Any] = []
        token = None
        with mlflow_errors(f"search runs {query}", self.uri):
            while True:
                page = self.client.search_runs(
                    [self.tracking.experiment_id], query, max_results=1000,
                    order_by=[f"attributes.start_time {order}"], page_token=token)
                runs.extend(r for r in page if REBUILD_OF not in r.data.tags)
                token = page.token
                if not token or (limit is not None and len(runs) >= limit):
                    break
        return runs[:limit] if limit is not None else runs

    def pipeline_runs(self, pipeline: str, status: str | None = "FINISHED") -> list[Any]:
        query = f"tags.`{PIPELINE_TAG}` = '{filter_literal(pipeline)}'"
        if status:
            query += f" and attributes.status = '{status}'"
        return self._search(query)

    def run_for_cut(self, pipeline: str, fingerprint: str) -> Any | None:
        """The finished run this pipeline trained at this cut, if any (idempotency)."""
        found = self._search(f"tags.`{PIPELINE_TAG}` = '{filter_literal(pipeline)}' and "
                             f"tags.`tidelog.cut.fingerprint` = '{fingerprint}' and "
                             "attributes.status = 'FINISHED'")
        return found[0] if found else None

    def abandon_unfinished(self, pipeline: str, fingerprint: str) -> list[str]:
        """Mark runs a killed worker left RUNNING at this cut as KILLED; return their ids."""
        found = self._search(f"tags.`{PIPELINE_TAG}` = '{filter_literal(pipeline)}' and "
                             f"tags.`tidelog.cut.fingerprint` = '{fingerprint}' and "
                             "attributes.status = 'RUNNING'")
        with mlflow_errors("mark abandoned runs KILLED", self.uri):
            for run in found:
                self.client.set_terminated(run.info.run_id, "KILLED")
        return [r.info.run_id for r in found]

    def last_training_at(self, pipeline: str) -> dt.datetime | None:
        runs = self._search(f"tags.`{PIPELINE_TAG}` = '{filter_literal(pipeline)}' and "
                            "attributes.status = 'FINISHED'", newest_first=True, limit=1)
        return _started(runs[0]) if runs else None

    def model_uri(self, run_id: str) -> str:
        """`models:/<id>` of the model the run logged (MLflow 3 keeps models beside runs,
        so `runs:/<id>/model` makes MLflow search and retry before it finds it)."""
        from trainer.tracking import MODEL_NAME

        run = self.get_run(run_id)
        with mlflow_errors(f"find the model logged by run {run_id}", self.uri):
            query = f"source_run_id = '{filter_literal(run_id)}'"
            found = [m for m in self.client.search_logged_models(
                [run.info.experiment_id], filter_string=query) if m.name == MODEL_NAME]
        if not found:
            raise TrainingError(f"run {run_id} logged no model named {MODEL_NAME!r}; only runs "
                                "made by `tidelog train` can be gated or registered",
                                run_id=run_id)
        return f"models:/{found[0].model_id}"

    def handled_signals(self, pipeline: str) -> frozenset[str]:
        ids: set[str] = set()
        for run in self.pipeline_runs(pipeline):
            ids.update(filter(None, run.data.tags.get(SIGNALS_TAG, "").split(",")))
        return frozenset(ids)

    def record_signals(self, run_id: str, event_ids: list[str]) -> None:
        """Add the events a cycle acted on to its run, so a replay of them is ignored."""
        if not event_ids:
            return
        old = [i for i in self.get_run(run_id).data.tags.get(SIGNALS_TAG, "").split(",") if i]
        merged = list(dict.fromkeys([*old, *event_ids]))[-_MAX_SIGNALS:]
        self.set_tags(run_id, {SIGNALS_TAG: ",".join(merged)})

    def get_run(self, run_id: str) -> Any:
        return self.tracking.get_run(run_id)

    def lineage(self, run_id: str) -> RunLineage:
        return self.tracking.lineage(run_id)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        with mlflow_errors(f"tag run {run_id}", self.uri):
            for key, value in tags.items():
                self.client.set_tag(run_id, key, value)

    # -- registry -------------------------------------------------------------------

    def champion(self, model: str, alias: str = "champion") -> Champion | None:
        from mlflow.exceptions import MlflowException

        try:
            version = self.client.get_model_version_by_alias(model, alias)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE",
                                  "NOT_FOUND"):
                return None
            raise TrainingError(f"MLflow at {self.uri} failed to read {model}@{alias}: "
                                f"{exc.message}", model=model) from exc
        if not version.run_id:
            raise TrainingError(f"{model}@{alias} (version {version.version}) is not linked to "
                                "a run; tidelog can only compare against models it trained",
                                model=model)
        run = self.get_run(version.run_id)
        return Champion(model, str(version.version), version.run_id,
                        self.lineage(version.run_id), _started(run))

    def version_of_run(self, model: str, run_id: str) -> str | None:
        with mlflow_errors(f"list versions of {model}", self.uri):
            query = f"name = '{filter_literal(model)}'"
            found = [v for v in self.client.search_model_versions(query) if v.run_id == run_id]
        return str(min(int(v.version) for v in found)) if found else None

    def register(self, model: str, run_id: str) -> str:
        """The model version of `run_id`, registering it once (a rerun finds it)."""
        existing = self.version_of_run(model, run_id)
        if existing is not None:
            return existing
        return self.tracking.register(self.model_uri(run_id), model)

    def set_alias(self, model: str, alias: str, version: str) -> None:
        with mlflow_errors(f"point {model}@{alias} at version {version}", self.uri):
            self.client.set_registered_model_alias(model, alias, version)
