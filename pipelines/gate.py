"""The gate: does a candidate model beat the champion on the same held-out data?

Both models are scored by the pipeline's evaluator on the candidate's snapshot, with the
candidate's params and seed, so both see exactly the same held-out split. Thresholds work
as MLflow's `validate_evaluation_results`: per metric an absolute `threshold` the
candidate must reach, and a `min_absolute_change` / `min_relative_change` by which it must
beat the champion (higher is better unless `greater_is_better = false`).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.config import MetricThreshold
from pipelines.registry import Champion, Registry
from tidelog.errors import ConfigError, SnapshotError, TrainingError
from tidelog.settings import Settings

__all__ = ["Check", "GateResult", "compare", "score", "gate", "parse_threshold"]


@dataclass(frozen=True)
class Check:
    metric: str
    passed: bool
    candidate: float | None
    champion: float | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "passed": self.passed, "candidate": self.candidate,
                "champion": self.champion, "reason": self.reason}


@dataclass(frozen=True)
class GateResult:
    passed: bool
    checks: tuple[Check, ...]
    candidate_run_id: str
    candidate_metrics: dict[str, float]
    champion_run_id: str | None = None
    champion_version: str | None = None
    champion_metrics: dict[str, float] | None = None

    @property
    def decision(self) -> str:
        return "promote" if self.passed else "reject"

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "decision": self.decision,
                "checks": [c.to_json() for c in self.checks],
                "candidate_run_id": self.candidate_run_id,
                "candidate_metrics": self.candidate_metrics,
                "champion_run_id": self.champion_run_id,
                "champion_version": self.champion_version,
                "champion_metrics": self.champion_metrics}


def _check(t: MetricThreshold, candidate: Mapping[str, float],
           champion: Mapping[str, float] | None) -> Check:
    cand = candidate.get(t.metric)
    base = None if champion is None else champion.get(t.metric)
    if cand is None or math.isnan(cand):
        return Check(t.metric, False, cand, base, "the candidate has no value for it")
    sign = 1.0 if t.greater_is_better else -1.0
    better = "higher" if t.greater_is_better else "lower"
    reasons = []
    ok = True
    if t.threshold is not None:
        meets = sign * (cand - t.threshold) >= 0
        ok &= meets
        reasons.append(f"{cand:.6g} {'meets' if meets else 'misses'} the threshold "
                       f"{t.threshold:g} ({better} is better)")
    if t.min_absolute_change is not None or t.min_relative_change is not None:
        if champion is None:
            reasons.append("no champion to compare with")
        elif base is None or math.isnan(base):
            ok = False
            reasons.append("the champion has no value for it")
        else:
            gain = sign * (cand - base)
            if t.min_absolute_change is not None:
                meets = gain >= t.min_absolute_change
                ok &= meets
                reasons.append(f"gain {gain:+.6g} over the champion's {base:.6g} "
                               f"{'>=' if meets else '<'} {t.min_absolute_change:g}")
            if t.min_relative_change is not None:
                if base == 0:  # relative change of a zero baseline: any gain counts
                    meets = gain > 0
                    reasons.append(f"champion is 0: gain {gain:+.6g} "
                                   f"{'>' if meets else '<='} 0")
                else:
                    rel = gain / abs(base)
                    meets = rel >= t.min_relative_change
                    reasons.append(f"relative gain {rel:+.4%} "
                                   f"{'>=' if meets else '<'} {t.min_relative_change:.4%}")
                ok &= meets
    if not reasons:
        reasons.append("no condition set")
    return Check(t.metric, ok, cand, base, "; ".join(reasons))


def compare(thresholds: Sequence[MetricThreshold], candidate: Mapping[str, float],
            champion: Mapping[str, float] | None, candidate_run_id: str = "",
            champ: Champion | None = None) -> GateResult:
    """Pure: the gate decision for these metrics (champion None: no model yet)."""
    if not thresholds:
        raise ConfigError("a gate needs at least one metric threshold ([[gate]] in the "
                          "pipeline file, or --threshold)")
    checks = tuple(_check(t, candidate, champion) for t in thresholds)
    return GateResult(all(c.passed for c in checks), checks, candidate_run_id,
                      dict(candidate), champ.run_id if champ else None,
                      champ.version if champ else None,
                      dict(champion) if champion is not None else None)


def parse_threshold(text: str) -> MetricThreshold:
    """METRIC[:key=value,...] with the keys of a [[gate]] entry, e.g.
    accuracy:threshold=0.7,min_relative_change=0.01 or log_loss:greater_is_better=false."""
    metric, _, rest = text.partition(":")
    if not metric:
        raise ConfigError(f"--threshold {text!r} names no metric")
    values: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--threshold {text!r}: {item!r} is not key=value")
        if key == "greater_is_better":
            if raw.lower() not in ("true", "false"):
                raise ConfigError(f"--threshold {text!r}: greater_is_better is true or false")
            values[key] = raw.lower() == "true"
        elif key in ("threshold", "min_absolute_change", "min_relative_change"):
            try:
                values[key] = float(raw)
            except ValueError:
                raise ConfigError(f"--threshold {text!r}: {key} is not a number") from None
        else:
            raise ConfigError(f"--threshold {text!r}: unknown key {key!r}; use threshold, "
                              "min_absolute_change, min_relative_change, greater_is_better")
    return MetricThreshold(metric, **values)


def _load_model(registry: Registry, run_id: str) -> Any:
    import mlflow.sklearn
    from mlflow.exceptions import MlflowException

    uri = registry.model_uri(run_id)
    try:
        return mlflow.sklearn.load_model(uri)
    except (MlflowException, OSError) as exc:
        raise TrainingError(f"cannot load the model of run {run_id} from MLflow: {exc}",
                            run_id=run_id) from exc


def score(evaluator: str, tables: Mapping[str, Any], params: Mapping[str, Any], seed: int,
          model: Any) -> dict[str, float]:
    """Call `evaluator(tables, params, seed, model) -> {metric: value}`."""
    from trainer.recipe import load_recipe

    fn = load_recipe(evaluator).fn
    try:
        metrics = fn(dict(tables), dict(params), seed, model)
        return {str(k): float(v) for k, v in dict(metrics).items()}
    except Exception as exc:
        raise TrainingError(f"evaluator {evaluator} raised {type(exc).__name__}: {exc}; it is "
                            "called as fn(tables, params, seed, model) and returns "
                            "{metric: number}", evaluator=evaluator) from exc


def _candidate_tables(settings: Settings, registry: Registry, run_id: str,
                      scratch: Path) -> dict[str, Any]:
    from snapshotter.snapshots import open_snapshot, rebuild_snapshot
    from trainer.train import read_tables

    lineage = registry.lineage(run_id)
    try:
        return read_tables(open_snapshot(settings, lineage.snapshot_id))
    except SnapshotError:
        # Deleted snapshot: the same data again from the archive, proven by its digest.
        from snapshotter.snapshots import Snapshot

        manifest = rebuild_snapshot(settings, lineage.cut, lineage.tables, scratch)
        if manifest.digest != lineage.digest:
            raise SnapshotError(f"rebuilding the snapshot of run {run_id} gave digest "
                                f"{manifest.digest}, not the recorded {lineage.digest}; "
                                "`tidelog verify run RUN --rebuild` says where") from None
        return read_tables(Snapshot(manifest, scratch / manifest.id))


def gate(settings: Settings, candidate_run_id: str, model: str, alias: str,
         thresholds: Sequence[MetricThreshold], *, evaluator: str | None = None,
         experiment: str = "tidelog", registry: Registry | None = None) -> GateResult:
    """Score the candidate run's model and `model@alias` on the candidate's snapshot."""
    registry = registry or Registry(settings, experiment)
    lineage = registry.lineage(candidate_run_id)
    evaluator = evaluator or f"{lineage.recipe.partition(':')[0]}:evaluate"
    champ = registry.champion(model, alias)
    with tempfile.TemporaryDirectory(prefix="tidelog-gate-") as scratch:
        tables = _candidate_tables(settings, registry, candidate_run_id, Path(scratch))
        candidate = score(evaluator, tables, lineage.params, lineage.seed,
                          _load_model(registry, candidate_run_id))
        champion = None
        if champ is not None and champ.run_id != candidate_run_id:
            champion = score(evaluator, tables, lineage.params, lineage.seed,
                             _load_model(registry, champ.run_id))
        elif champ is not None:
            champion = candidate  # already the champion: compared with itself
    return compare(thresholds, candidate, champion, candidate_run_id, champ)
