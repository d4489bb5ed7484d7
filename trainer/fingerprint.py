"""Fingerprints that let `rebuild` prove it reproduced a model, and the row order that
makes a refit reproducible in the first place.

- Tables reach the recipe sorted by their key columns (all columns when there is no key):
  a snapshot's digest ignores row order, but a fit (bootstrap samples, float sums) does not.
- `array_sha256(predict(model, features))`: sha256 over dtype, shape and bytes of the
  predictions.
- `model_sha256`: sha256 of the cloudpickle bytes at pickle's default protocol, the same
  bytes MLflow's sklearn flavour writes to `model.pkl`.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Sequence
from typing import Any

import polars as pl

from tidelog.errors import TrainingError

__all__ = ["canonical_order", "to_pandas", "predict", "array_sha256", "model_sha256"]


def canonical_order(frame: pl.DataFrame, key_columns: Sequence[str]) -> pl.DataFrame:
    columns = [c for c in key_columns if c in frame.columns] or frame.columns
    sortable = [c for c in columns
                if not isinstance(frame.schema[c], pl.List | pl.Struct | pl.Array | pl.Object)]
    if not sortable or frame.height < 2:
        return frame
    return frame.sort(sortable, nulls_last=True, maintain_order=True)


def to_pandas(features: Any) -> Any:
    if isinstance(features, pl.DataFrame):
        return features.to_pandas()
    return features


def predict(model: Any, features: Any) -> Any:
    import numpy as np

    try:
        return np.asarray(model.predict(features))
    except Exception as exc:
        raise TrainingError(
            f"the model failed to predict on the recipe's features: {type(exc).__name__}: "
            f"{exc}; return in RecipeResult.features the frame the model was fitted on"
        ) from exc


def array_sha256(values: Any) -> str:
    import numpy as np

    array = np.asarray(values)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    if array.dtype.hasobject:
        digest.update(json.dumps(array.tolist(), default=str).encode())
    else:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def model_sha256(model: Any) -> str:
    import cloudpickle

    try:
        data = cloudpickle.dumps(model, protocol=pickle.DEFAULT_PROTOCOL)
    except Exception as exc:
        raise TrainingError(f"the model cannot be pickled ({type(exc).__name__}: {exc}); "
                            "MLflow's sklearn flavour needs a picklable estimator") from exc
    return hashlib.sha256(data).hexdigest()
