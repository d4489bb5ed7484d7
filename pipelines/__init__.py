"""Pipelines: training that runs itself on data changes, schedules, drift and requests.

Sits between the trainer and the API: a pipeline file (docs/pipelines.md) names a recipe,
its tables and params, a registered model and the triggers that retrain it; a gate decides
whether the new model takes the `champion` alias.
"""

from __future__ import annotations

__all__: list[str] = []
