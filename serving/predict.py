"""Synchronous prediction, for callers that want an answer in the HTTP response
(`POST /models/{name}/predict`): the same checks, the same model loading and the same
provenance as the worker, without the broker.

Loaded versions are kept per model and alias; the alias is looked at again at most every
`alias_interval` seconds, so a moved alias is followed within that time and one call
answers with exactly one version.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from serving.batch import AliasCheck, should_switch
from serving.contract import check_instance
from serving.model import Registry, ServedModel, predict_rows
from tidelog.errors import InvalidInstance, TrainingError
from tidelog.settings import Settings

__all__ = ["Prediction", "Predictor", "MAX_INSTANCES"]

MAX_INSTANCES = 10_000


@dataclass(frozen=True)
class Prediction:
    model: ServedModel
    predictions: list[Any]

    def to_json(self) -> dict[str, Any]:
        target = self.model.target
        return {"model": {"name": target.name, "version": target.version,
                          "run_id": target.run_id, "alias": target.alias},
                "snapshot_id": target.snapshot_id, "cut_digest": target.cut_digest,
                "predictions": self.predictions}


class Predictor:
    def __init__(self, settings: Settings, *, alias_interval: float = 5.0,
                 registry: Callable[[], Registry] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._registry_factory = registry or (lambda: Registry(settings))
        self._registry: Registry | None = None
        self._alias_interval = alias_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._loaded: dict[tuple[str, str], tuple[ServedModel, AliasCheck]] = {}

    def _model(self, name: str, alias: str) -> ServedModel:
        # One lock: two first calls for a model load it once, not twice.
        with self._lock:
            if self._registry is None:
                self._registry = self._registry_factory()
            registry = self._registry
            now = self._clock()
            held = self._loaded.get((name, alias))
            if held is not None:
                model, check = held
                if not check.due(now):
                    return model
                check.done(now)
                if not should_switch(model.version, registry.alias_version(name, alias)):
                    return model
            model = registry.load(name, alias)
            check = AliasCheck(self._alias_interval)
            check.done(now)
            self._loaded[(name, alias)] = (model, check)
            return model

    def predict(self, name: str, instances: Sequence[Mapping[str, Any]],
                alias: str = "champion") -> Prediction:
        """Predictions for `instances` in order, or InvalidInstance naming every
        instance that does not fit the signature (then nothing is predicted)."""
        if not instances:
            raise InvalidInstance("send at least one instance: {\"instances\": [{...}]}")
        if len(instances) > MAX_INSTANCES:
            raise InvalidInstance(f"{len(instances)} instances in one call; send at most "
                                  f"{MAX_INSTANCES}, or use `tidelog serve` for bulk")
        model = self._model(name, alias)
        rows: list[dict[str, Any]] = []
        problems: list[dict[str, Any]] = []
        for index, instance in enumerate(instances):
            row, error = check_instance(instance, model.features)
            if error is not None or row is None:
                assert error is not None
                problems.append({"index": index, **error.to_json()})
            else:
                rows.append(row)
        if problems:
            first = problems[0]
            raise InvalidInstance(
                f"{len(problems)} of {len(instances)} instances do not fit model {name!r} "
                f"version {model.version}; instance {first['index']}: {first['message']}",
                errors=problems, model=name, version=model.version)
        answers = predict_rows(model, rows)
        failed = [{"index": i, **e.to_json()} for i, (_, e) in enumerate(answers) if e]
        if failed:
            raise TrainingError(
                f"model {name!r} version {model.version} failed on {len(failed)} of "
                f"{len(rows)} instances; instance {failed[0]['index']}: "
                f"{failed[0]['message']}", errors=failed, model=name, version=model.version)
        return Prediction(model, [p for p, _ in answers])
