"""Distance of served instances from the training data: an isolation forest fitted on the
training features (numeric columns, fixed seed), its score for every current row, and the
share of current rows it calls outliers — beside the same share on the training rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

__all__ = ["RANDOM_STATE", "Outliers", "outliers"]

RANDOM_STATE = 0
N_ESTIMATORS = 100


@dataclass(frozen=True)
class Outliers:
    columns: tuple[str, ...]
    share: float  # of the current rows that the forest calls outliers
    reference_share: float  # of the training rows (what "normal" looks like)
    score_p50: float  # sklearn's score_samples: lower is more abnormal
    score_p05: float
    scores: tuple[float, ...]  # per current row, in the order given
    rows: int  # current rows scored (rows with a missing value are not)

    def to_json(self, with_scores: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "method": "isolation_forest", "random_state": RANDOM_STATE,
            "n_estimators": N_ESTIMATORS, "columns": list(self.columns),
            "share": self.share, "reference_share": self.reference_share,
            "score_p50": self.score_p50, "score_p05": self.score_p05, "rows": self.rows}
        if with_scores:
            body["scores"] = list(self.scores)
        return body


def _numeric(frame: pl.DataFrame, columns: Sequence[str]) -> np.ndarray[Any, Any]:
    matrix = frame.select([pl.col(c).cast(pl.Float64) for c in columns]).to_numpy()
    return np.asarray(matrix[~np.isnan(matrix).any(axis=1)])


def outliers(reference: pl.DataFrame, current: pl.DataFrame) -> Outliers | None:
    """None when the frames share no numeric column (nothing to measure distance on)."""
    from sklearn.ensemble import IsolationForest

    columns = tuple(c for c in reference.columns
                    if reference.schema[c].is_numeric() and c in current.columns)
    if not columns:
        return None
    ref, cur = _numeric(reference, columns), _numeric(current, columns)
    if len(ref) == 0 or len(cur) == 0:
        return None
    forest = IsolationForest(n_estimators=N_ESTIMATORS, random_state=RANDOM_STATE)
    forest.fit(ref)
    scores = forest.score_samples(cur)
    return Outliers(columns, float(np.mean(forest.predict(cur) == -1)),
                    float(np.mean(forest.predict(ref) == -1)),
                    float(np.percentile(scores, 50)), float(np.percentile(scores, 5)),
                    tuple(float(s) for s in scores), len(cur))
