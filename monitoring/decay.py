"""Decay: the model's metric on served requests whose true label arrived, against the
metric its training run recorded.

Classifiers get accuracy and F1 (binary when the labels are two classes, else macro);
regressors MAE and RMSE. The verdict looks at the first of those the run also recorded:
decayed when it is worse than the recorded value by more than `threshold` (relative).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DECAY_THRESHOLD", "Decay", "live_metrics", "decay"]

DECAY_THRESHOLD = 0.1
HIGHER_IS_BETTER = {"accuracy": True, "f1": True, "mae": False, "rmse": False}


@dataclass(frozen=True)
class Decay:
    labelled: int  # served requests with a label
    live: dict[str, float]
    recorded: dict[str, float]  # the same metrics as the training run logged them
    metric: str | None  # the one the verdict is about
    degradation: float | None  # relative: 0.2 = 20% worse than recorded
    threshold: float
    decayed: bool

    def to_json(self) -> dict[str, Any]:
        return {"labelled": self.labelled, "live": self.live, "recorded": self.recorded,
                "metric": self.metric, "degradation": self.degradation,
                "threshold": self.threshold, "decayed": self.decayed}


def live_metrics(classifier: bool, truth: Sequence[Any], predicted: Sequence[Any]
                 ) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error

    if classifier:
        y, p = np.asarray(truth), np.asarray(predicted)
        classes = sorted(set(y.tolist()) | set(p.tolist()), key=str)
        if len(classes) <= 2 and set(classes) <= {0, 1}:
            f1 = f1_score(y, p, average="binary", zero_division=0)
        else:
            f1 = f1_score(y.astype(str), p.astype(str), average="macro", zero_division=0)
        return {"accuracy": float(accuracy_score(y, p)), "f1": float(f1)}
    y_f, p_f = np.asarray(truth, dtype=float), np.asarray(predicted, dtype=float)
    return {"mae": float(mean_absolute_error(y_f, p_f)),
            "rmse": float(math.sqrt(mean_squared_error(y_f, p_f)))}


def decay(classifier: bool, truth: Sequence[Any], predicted: Sequence[Any],
          recorded: Mapping[str, float], threshold: float = DECAY_THRESHOLD) -> Decay | None:
    """None when no served request has a label yet."""
    if not truth:
        return None
    live = live_metrics(classifier, truth, predicted)
    same = {k: float(recorded[k]) for k in live if k in recorded}
    metric = next(iter(same), None)
    degradation = None
    if metric is not None:
        base, now = same[metric], live[metric]
        worse = base - now if HIGHER_IS_BETTER[metric] else now - base
        degradation = worse / abs(base) if base else (math.inf if worse > 0 else 0.0)
    decayed = degradation is not None and degradation > threshold
    return Decay(len(truth), live, same, metric, degradation, threshold, decayed)
