"""One loaded model version and how rows go through it: its input features (from the
MLflow signature), a batch prediction turned into JSON values, row by row when the batch
as a whole fails, so one bad row cannot take the others' answers with it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from serving.contract import PREDICTION_FAILED, Feature, RequestError
from tidelog.settings import Settings
from trainer.registry import AliasTarget, alias_version, load_version, resolve_alias
from trainer.tracking import Tracking, connect

__all__ = ["ServedModel", "Registry", "features_of", "predict_rows", "json_predictions"]


@dataclass(frozen=True)
class ServedModel:
    target: AliasTarget
    pyfunc: Any  # anything with predict(pandas.DataFrame) and metadata
    features: tuple[Feature, ...] | None

    @property
    def version(self) -> str:
        return self.target.version

    @property
    def provenance(self) -> dict[str, str]:
        return self.target.to_json()


def features_of(pyfunc: Any) -> tuple[Feature, ...] | None:
    """The named input columns of the model's signature, None without a signature (or a
    tensor one, whose inputs have no names)."""
    metadata = getattr(pyfunc, "metadata", None)
    schema = metadata.get_input_schema() if metadata is not None else None
    if schema is None or not getattr(schema, "has_input_names", lambda: False)():
        return None
    found = []
    for spec in schema.inputs:
        kind = getattr(spec.type, "name", str(spec.type))
        found.append(Feature(str(spec.name), str(kind)))
    return tuple(found)


def _scalar(value: Any) -> Any:
    item = value.item() if hasattr(value, "item") and not isinstance(value, list) else value
    if isinstance(item, float) and not math.isfinite(item):
        raise ValueError(f"the model answered {item}, which JSON cannot carry")
    if isinstance(item, bool | int | float | str):
        return item
    raise ValueError(f"the model answered a {type(item).__name__}, not a JSON scalar")


def _json_value(value: Any) -> Any:
    if hasattr(value, "tolist") and getattr(value, "ndim", 0) > 0:
        value = value.tolist()
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return _scalar(value)


def json_predictions(output: Any, rows: int) -> list[Any]:
    """A pyfunc's answer for `rows` rows as one JSON value per row: a scalar, or a list
    (a DataFrame row, a probability vector)."""
    if hasattr(output, "to_numpy") and hasattr(output, "columns"):  # a DataFrame
        output = output.to_numpy()
    elif hasattr(output, "to_numpy"):  # a Series
        output = output.to_numpy()
    values = list(output) if not isinstance(output, list) else output
    if len(values) != rows:
        raise ValueError(f"the model answered {len(values)} predictions for {rows} rows")
    return [_json_value(v) for v in values]


def _frame(model: ServedModel, rows: Sequence[dict[str, Any]]) -> Any:
    import pandas as pd

    columns = ([f.name for f in model.features] if model.features is not None
               else sorted({k for row in rows for k in row}))
    return pd.DataFrame([[row.get(c) for c in columns] for row in rows], columns=columns)


def _predict(model: ServedModel, rows: Sequence[dict[str, Any]]) -> list[Any]:
    return json_predictions(model.pyfunc.predict(_frame(model, rows)), len(rows))


def predict_rows(model: ServedModel, rows: Sequence[dict[str, Any]]
                 ) -> list[tuple[Any, RequestError | None]]:
    """(prediction, None) or (None, error) per row: one call for the batch; when that
    fails, one call per row, so only the rows that fail get an error."""
    if not rows:
        return []
    try:
        return [(p, None) for p in _predict(model, rows)]
    except Exception:  # noqa: BLE001 - a model may raise anything; retried row by row
        pass
    answers: list[tuple[Any, RequestError | None]] = []
    for row in rows:
        try:
            answers.append((_predict(model, [row])[0], None))
        except Exception as exc:  # noqa: BLE001 - the row's result names the failure
            answers.append((None, RequestError(
                PREDICTION_FAILED, f"the model failed on this instance: "
                f"{type(exc).__name__}: {exc}"[:1000])))
    return answers


class Registry:
    """The registry as serving needs it: the alias's version cheaply, a version loaded."""

    def __init__(self, settings: Settings, tracking: Tracking | None = None) -> None:
        self.tracking = tracking or connect(settings)

    def alias_version(self, name: str, alias: str) -> str:
        return alias_version(self.tracking, name, alias)

    def load(self, name: str, alias: str) -> ServedModel:
        target = resolve_alias(self.tracking, name, alias)
        pyfunc = load_version(self.tracking, target)
        return ServedModel(target, pyfunc, features_of(pyfunc))
