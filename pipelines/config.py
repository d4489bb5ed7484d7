"""The pipeline file (TOML): what to train, when, and what a new model must beat.

Reference with every key: docs/pipelines.md. Parsing is strict: an unknown key or a value
of the wrong type is refused with the file and key named, never ignored.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.cron import CronSchedule
from tidelog.errors import ConfigError

__all__ = [
    "ChangedRowsTrigger",
    "ScheduleTrigger",
    "DriftTrigger",
    "ManualTrigger",
    "Trigger",
    "Debounce",
    "MetricThreshold",
    "Pipeline",
    "load_pipeline",
    "parse_pipeline",
]


@dataclass(frozen=True)
class ChangedRowsTrigger:
    """Fires when at least `min_rows` change events (inserts, updates, deletes, truncates)
    were committed since the champion's training cut, in `table` or in all tables."""

    min_rows: int
    table: str | None = None
    kind: str = "changed_rows"


@dataclass(frozen=True)
class ScheduleTrigger:
    cron: CronSchedule
    kind: str = "schedule"


@dataclass(frozen=True)
class DriftTrigger:
    """Fires on a `drift.detected` event for the pipeline's model with score > threshold."""

    threshold: float
    metric: str | None = None  # only drift events of this metric, when set
    kind: str = "drift"


@dataclass(frozen=True)
class ManualTrigger:
    """Fires on a `retrain.requested` event naming the pipeline."""

    kind: str = "manual"


Trigger = ChangedRowsTrigger | ScheduleTrigger | DriftTrigger | ManualTrigger


@dataclass(frozen=True)
class Debounce:
    """A due trigger waits until no change arrived for `quiet_seconds`, but never longer
    than `max_wait_seconds` after it became due; two trainings are at least
    `min_interval_seconds` apart."""

    quiet_seconds: float = 0.0
    max_wait_seconds: float = 3600.0
    min_interval_seconds: float = 0.0


@dataclass(frozen=True)
class MetricThreshold:
    """As MLflow's `MetricThreshold`: the candidate's value must reach `threshold`, and beat
    the champion's by `min_absolute_change` and by `min_relative_change` (a fraction)."""

    metric: str
    greater_is_better: bool = True
    threshold: float | None = None
    min_absolute_change: float | None = None
    min_relative_change: float | None = None


@dataclass(frozen=True)
class Pipeline:
    name: str
    recipe: str
    tables: tuple[str, ...]
    model: str
    triggers: tuple[Trigger, ...]
    params: dict[str, str | int | float] = field(default_factory=dict)
    seed: int = 0
    experiment: str = "tidelog"
    alias: str = "champion"
    evaluate: str = ""  # "pkg.module:fn"; default: `evaluate` next to the recipe
    debounce: Debounce = Debounce()
    gate: tuple[MetricThreshold, ...] = ()
    source: str = ""  # the file it was read from

    @property
    def evaluator(self) -> str:
        return self.evaluate or f"{self.recipe.partition(':')[0]}:evaluate"


def _take(data: dict[str, Any], key: str, kinds: type | tuple[type, ...], where: str,
          default: Any = ..., ) -> Any:
    if key not in data:
        if default is ...:
            raise ConfigError(f"{where}: missing required key {key!r}")
        return default
    value = data.pop(key)
    bad_bool = isinstance(value, bool) and bool not in (
        kinds if isinstance(kinds, tuple) else (kinds,))
    if not isinstance(value, kinds) or bad_bool:
        raise ConfigError(f"{where}: {key} = {value!r} should be "
                          f"{getattr(kinds, '__name__', kinds)}")
    return value


def _no_more(data: Mapping[str, Any], where: str, known: list[str]) -> None:
    if data:
        raise ConfigError(f"{where}: unknown keys {sorted(data)}; known: {sorted(known)}")


def _number(data: dict[str, Any], key: str, where: str, default: Any = ...) -> Any:
    value = _take(data, key, (int, float), where, default)
    return float(value) if value is not None and value is not ... else value


def _trigger(raw: Any, where: str) -> Trigger:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a trigger is a table ([[triggers]])")
    data = dict(raw)
    kind = _take(data, "kind", str, where)
    if kind == "changed_rows":
        known = ["kind", "min_rows", "table"]
        changed = ChangedRowsTrigger(
            min_rows=_take(data, "min_rows", int, where), table=_take(data, "table", str, where,
                                                                      None))
        if changed.min_rows < 1:
            raise ConfigError(f"{where}: min_rows must be at least 1")
        trigger: Trigger = changed
    elif kind == "schedule":
        known = ["kind", "cron"]
        trigger = ScheduleTrigger(CronSchedule.parse(_take(data, "cron", str, where)))
    elif kind == "drift":
        known = ["kind", "threshold", "metric"]
        trigger = DriftTrigger(_number(data, "threshold", where),
                               _take(data, "metric", str, where, None))
    elif kind == "manual":
        known = ["kind"]
        trigger = ManualTrigger()
    else:
        raise ConfigError(f"{where}: unknown trigger kind {kind!r}; use changed_rows, "
                          "schedule, drift or manual")
    _no_more(data, where, known)
    return trigger


def _threshold(raw: Any, where: str) -> MetricThreshold:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a gate entry is a table ([[gate]])")
    data = dict(raw)
    found = MetricThreshold(
        metric=_take(data, "metric", str, where),
        greater_is_better=_take(data, "greater_is_better", bool, where, True),
        threshold=_number(data, "threshold", where, None),
        min_absolute_change=_number(data, "min_absolute_change", where, None),
        min_relative_change=_number(data, "min_relative_change", where, None))
    _no_more(data, where, ["metric", "greater_is_better", "threshold", "min_absolute_change",
                           "min_relative_change"])
    return found


def parse_pipeline(data: Mapping[str, Any], where: str = "pipeline") -> Pipeline:
    data = dict(data)
    name = _take(data, "name", str, where)
    tables = _take(data, "tables", list, where)
    if not tables or not all(isinstance(t, str) and "." in t for t in tables):
        raise ConfigError(f"{where}: tables must be a non-empty list of 'schema.table'")
    params = _take(data, "params", dict, where, {})
    bad = {k: v for k, v in params.items()
           if isinstance(v, bool) or not isinstance(v, str | int | float)}
    if bad:
        raise ConfigError(f"{where}: params must be strings or numbers; got {bad}")
    triggers = tuple(_trigger(t, f"{where} trigger {i + 1}")
                     for i, t in enumerate(_take(data, "triggers", list, where)))
    if not triggers:
        raise ConfigError(f"{where}: no triggers; add at least one [[triggers]] table")
    raw_debounce = dict(_take(data, "debounce", dict, where, {}))
    dwhere = f"{where} [debounce]"
    debounce = Debounce(_number(raw_debounce, "quiet_seconds", dwhere, 0.0),
                        _number(raw_debounce, "max_wait_seconds", dwhere, 3600.0),
                        _number(raw_debounce, "min_interval_seconds", dwhere, 0.0))
    _no_more(raw_debounce, dwhere, ["quiet_seconds", "max_wait_seconds",
                                    "min_interval_seconds"])
    gate = tuple(_threshold(g, f"{where} gate {i + 1}")
                 for i, g in enumerate(_take(data, "gate", list, where, [])))
    if not gate:
        raise ConfigError(f"{where}: no [[gate]] entry; say which metric a new model must "
                          "reach or improve, e.g. [[gate]] metric = \"accuracy\" "
                          "min_absolute_change = 0.0")
    pipeline = Pipeline(
        name=name, recipe=_take(data, "recipe", str, where), tables=tuple(sorted(set(tables))),
        model=_take(data, "model", str, where), triggers=triggers, params=dict(params),
        seed=_take(data, "seed", int, where, 0),
        experiment=_take(data, "experiment", str, where, "tidelog"),
        alias=_take(data, "alias", str, where, "champion"),
        evaluate=_take(data, "evaluate", str, where, ""), debounce=debounce, gate=gate,
        source=where)
    _no_more(data, where, ["name", "recipe", "tables", "model", "triggers", "params", "seed",
                           "experiment", "alias", "evaluate", "debounce", "gate"])
    return pipeline


def load_pipeline(path: str | Path) -> Pipeline:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read pipeline file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"pipeline file {path} is not valid TOML: {exc}") from exc
    return parse_pipeline(data, str(path))
