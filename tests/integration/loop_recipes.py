"""The churn recipe and evaluator, with a pause a test can ask for (to SIGKILL a worker in
the middle of training or of the gate): when the named environment variable holds a
path, the function writes it and sleeps."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from examples import churn
from trainer.recipe import RecipeResult

__all__ = ["train", "evaluate"]


def _pause(variable: str) -> None:
    marker = os.environ.get(variable)
    if marker:
        Path(marker).write_text(str(os.getpid()))
        time.sleep(600)


def train(tables: dict[str, Any], params: dict[str, Any], seed: int) -> RecipeResult:
    _pause("TIDELOG_TEST_PAUSE_IN_TRAIN")
    return churn.train(tables, params, seed)


def evaluate(tables: dict[str, Any], params: dict[str, Any], seed: int, model: Any
             ) -> dict[str, float]:
    _pause("TIDELOG_TEST_PAUSE_IN_GATE")
    return churn.evaluate(tables, params, seed, model)
