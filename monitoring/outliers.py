"""Distance of served instances from the training data: an isolation forest fitted on the
training features (numeric columns, fixed seed), its score for every current row, and the
share of current rows it calls outliers — beside the same share on the training rows.

Scoring costs ~100 tree walks per row, so above `MAX_ROWS` rows a sample sees a uniform
sample of `MAX_ROWS` rows, drawn with a fixed seed (the report says `sampled`); a window
of served results (1000 by default) is always scored whole."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

__all__ = ["RANDOM_STATE", "Outliers", "outliers"]

RANDOM_STATE = 0
N_ESTIMATORS = 100
MAX_ROWS = 20_000


@dataclass(frozen=True)
class Outliers:
    columns: tuple[str, ...]
    share: float  # of the current rows that the forest calls outliers
    reference_share: float  # of the training rows (what "normal" looks like)
    score_p50: float  # sklearn's score_samples: lower is more abnormal
    score_p05: float
    scores: tuple[float, ...]  # per current row, in the order given
    rows: int  # current rows scored (rows with a missing value are not)
    sampled: bool = False  # more than MAX_ROWS rows: the shares are of a fixed-seed sample

    def to_json(self, with_scores: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "method": "isolation_forest", "random_state": RANDOM_STATE,
            "n_estimators": N_ESTIMATORS, "columns": list(self.columns),
            "share": self.share, "reference_share": self.reference_share,
            "score_p50": self.score_p50, "score_p05": self.score_p05, "rows": self.rows,
            "sampled": self.sampled, "max_rows": MAX_ROWS}
        if with_scores:
            body["scores"] = list(self.scores)
        return body


def _numeric(frame: pl.DataFrame, columns: Sequence[str]) -> np.ndarray[Any, Any]:
    matrix = frame.select([pl.col(c).cast(pl.Float64) for c in columns]).to_numpy()
    return np.asarray(matrix[~np.isnan(matrix).any(axis=1)])


def _sample(matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    if len(matrix) <= MAX_ROWS:
        return matrix
    rng = np.random.default_rng(RANDOM_STATE)
    return matrix[np.sort(rng.choice(len(matrix), MAX_ROWS, replace=False))]


def outliers(reference: pl.DataFrame, current: pl.DataFrame) -> Outliers | None:
    """None when the frames share no numeric column (nothing to measure distance on)."""
    from sklearn.ensemble import IsolationForest

    columns = tuple(c for c in reference.columns
                    if reference.schema[c].is_numeric() and c in current.columns)
    if not columns:
        return None
    full_ref, full_cur = _numeric(reference, columns), _numeric(current, columns)
    if len(full_ref) == 0 or len(full_cur) == 0:
        return None
    ref, cur = _sample(full_ref), _sample(full_cur)
    forest = IsolationForest(n_estimators=N_ESTIMATORS, random_state=RANDOM_STATE)
    forest.fit(ref)
    # predict() is score_samples() against the fitted offset: one pass per sample
    scores, ref_scores = forest.score_samples(cur), forest.score_samples(ref)
    return Outliers(columns, float(np.mean(scores < forest.offset_)),
                    float(np.mean(ref_scores < forest.offset_)),
                    float(np.percentile(scores, 50)), float(np.percentile(scores, 5)),
                    tuple(float(s) for s in scores), len(cur),
                    sampled=len(cur) < len(full_cur) or len(ref) < len(full_ref))
