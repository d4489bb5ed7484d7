"""One monitoring pass: the champion's training data against a current sample, as a
`MonitorReport` (drift per feature and of the dataset, prediction drift, latency,
distance from the training data, decay). The CLI, the API and the loop all call
`monitor_report`; `compare` is the pure part (tests and the benchmark call it directly).

The reference is what the champion learned from: its run's recipe, called again on the
run's training snapshot with the run's params and seed, gives the recipe's own features
(`RecipeResult.features`), and the registered model predicts on them. The current sample
is either a snapshot (`against`: an id, or "latest" for a new snapshot of the training
tables at the latest cut, through the same recipe) or the newest `window` results the
serving worker wrote for that version.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from monitoring.decay import DECAY_THRESHOLD, Decay, decay
from monitoring.outliers import Outliers, outliers
from monitoring.served import ServedResult, read_labels, read_results, results_topic
from monitoring.stattests import (
    DATASET_SHARE,
    DISTANCE,
    P_VALUE,
    PSI_THRESHOLD,
    SMALL_REFERENCE,
    ColumnDrift,
    column_drift,
    drift_share,
    is_categorical,
)
from tidelog.errors import MonitorError, NoServedResults, SnapshotError
from tidelog.settings import Settings
from trainer.provider import SnapshotProvider, default_provider

__all__ = ["Target", "Reference", "Current", "MonitorReport", "load_reference",
           "current_from_snapshot", "current_from_results", "compare", "monitor_report",
           "parse_model_ref", "DEFAULT_WINDOW"]

DEFAULT_WINDOW = 1000
_PLOT_BINS = 20
_PLOT_CATEGORIES = 20


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_model_ref(text: str) -> tuple[str, str]:
    """"churn@champion" -> ("churn", "champion")."""
    name, sep, alias = text.rpartition("@")
    if not sep or not name or not alias:
        raise MonitorError(f"{text!r} is not MODEL@ALIAS; name the registered model and the "
                           "alias to monitor, e.g. churn@champion")
    return name, alias


@dataclass(frozen=True)
class Target:
    """The monitored model version and the data it was trained on."""

    model: str
    alias: str
    version: str
    run_id: str
    snapshot_id: str
    cut_digest: str
    cut_fingerprint: str
    recipe: str

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "alias": self.alias, "version": self.version,
                "run_id": self.run_id, "snapshot_id": self.snapshot_id,
                "cut_digest": self.cut_digest, "cut_fingerprint": self.cut_fingerprint,
                "recipe": self.recipe,
                "links": {"audit": f"/ui/models/{self.model}/{self.version}",
                          "lineage": f"/lineage/models/{self.model}?version={self.version}",
                          "run": f"/runs/{self.run_id}",
                          "snapshot": f"/snapshots/{self.snapshot_id}"}}


@dataclass(frozen=True)
class Reference:
    target: Target
    features: pl.DataFrame
    predictions: np.ndarray[Any, Any]
    classifier: bool
    recorded: dict[str, float]  # the training run's metrics
    model: Any
    lineage: Any  # trainer.tags.RunLineage of the run


@dataclass(frozen=True)
class Current:
    basis: str  # "snapshot" | "results"
    identity: str  # the snapshot id, or the offsets of the results window
    features: pl.DataFrame
    predictions: list[Any] | None
    latency_ms: list[float] = field(default_factory=list)
    truth: list[Any] = field(default_factory=list)  # labels of the labelled requests ...
    labelled_predictions: list[Any] = field(default_factory=list)  # ... and their predictions
    errors: int = 0  # results that carried an error instead of a prediction
    other_versions: int = 0  # results of other versions, left out
    snapshot_id: str | None = None
    cut_digest: str | None = None


@dataclass(frozen=True)
class MonitorReport:
    target: Target
    current: dict[str, Any]  # basis, identity, rows, ...
    columns: tuple[ColumnDrift, ...]
    drift_share: float
    dataset_drift: bool
    prediction: ColumnDrift | None
    latency: dict[str, float] | None
    outliers: Outliers | None
    decay: Decay | None
    distributions: dict[str, dict[str, Any]]
    generated_at: str

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.target.to_json(),
            "current": self.current,
            "generated_at": self.generated_at,
            "thresholds": {"p_value": P_VALUE, "distance": DISTANCE, "psi": PSI_THRESHOLD,
                           "dataset_share": DATASET_SHARE, "small_reference": SMALL_REFERENCE,
                           "decay": self.decay.threshold if self.decay else DECAY_THRESHOLD},
            "dataset": {"drift_share": self.drift_share, "drifted": self.dataset_drift,
                        "columns": len(self.columns),
                        "drifted_columns": self.drifted_columns},
            "features": [c.to_json() for c in self.columns],
            "prediction": self.prediction.to_json() if self.prediction else None,
            "latency_ms": self.latency,
            "outliers": self.outliers.to_json() if self.outliers else None,
            "decay": self.decay.to_json() if self.decay else None,
            "distributions": self.distributions,
        }


# -- reference --------------------------------------------------------------------------

def _recipe_features(settings: Settings, recipe: str, tables: dict[str, pl.DataFrame],
                     params: dict[str, Any], seed: int) -> pl.DataFrame:
    from trainer.recipe import load_recipe, run_recipe

    result = run_recipe(load_recipe(recipe), tables, params, seed)
    features = result.features
    return features if isinstance(features, pl.DataFrame) else pl.from_pandas(features)


def _training_tables(provider: SnapshotProvider, settings: Settings, lineage: Any
                     ) -> dict[str, pl.DataFrame]:
    import tempfile
    from pathlib import Path

    from trainer.train import read_tables

    try:
        return read_tables(provider.open_snapshot(settings, lineage.snapshot_id))
    except SnapshotError:
        # A deleted snapshot: the same rows again from the archive, proven by the digest.
        with tempfile.TemporaryDirectory(prefix="tidelog-monitor-") as scratch:
            manifest = provider.rebuild_snapshot(settings, lineage.cut, lineage.tables,
                                                 Path(scratch))
            if manifest.digest != lineage.digest:
                raise MonitorError(
                    f"rebuilding snapshot {lineage.snapshot_id} of run {lineage.run_id} gave "
                    f"digest {manifest.digest}, not the recorded {lineage.digest}; `tidelog "
                    "verify run RUN --rebuild` says where", run_id=lineage.run_id) from None
            return read_tables(provider.open_rebuilt(manifest, Path(scratch)))


def _predict(model: Any, features: pl.DataFrame) -> np.ndarray[Any, Any]:
    from trainer.fingerprint import predict

    return np.asarray(predict(model, features))


def load_reference(settings: Settings, model: str, alias: str = "champion",
                   experiment: str = "tidelog",
                   allow_recipe: Callable[[str], None] | None = None,
                   provider: SnapshotProvider | None = None) -> Reference:
    """The model version `model@alias` points at, its training features and predictions.
    `allow_recipe(reference)` may refuse to run the recipe (the API's allow-list)."""
    from sklearn.base import is_classifier

    from pipelines.registry import Registry

    registry = Registry(settings, experiment)
    champ = registry.champion(model, alias)
    if champ is None:
        raise MonitorError(f"no version of model {model!r} has the alias {alias!r}; promote "
                           f"one (`tidelog pipeline ...` or the MLflow UI) or name another "
                           "alias", model=model)
    lineage = champ.lineage
    if allow_recipe is not None:
        allow_recipe(lineage.recipe)
    target = Target(model, alias, champ.version, champ.run_id, lineage.snapshot_id,
                    lineage.digest, lineage.cut.fingerprint(), lineage.recipe)
    tables = _training_tables(provider or default_provider(), settings, lineage)
    features = _recipe_features(settings, lineage.recipe, tables, dict(lineage.params),
                                lineage.seed)
    loaded = registry.tracking.load_model(f"models:/{model}/{champ.version}")
    recorded = {k: float(v) for k, v in registry.get_run(champ.run_id).data.metrics.items()}
    return Reference(target, features, _predict(loaded, features), bool(is_classifier(loaded)),
                     recorded, loaded, lineage)


# -- current ----------------------------------------------------------------------------

def current_from_snapshot(settings: Settings, reference: Reference, against: str,
                          provider: SnapshotProvider | None = None) -> Current:
    """The recipe's features on another snapshot; "latest" makes (or finds) the snapshot
    of the training tables at the latest cut."""
    from trainer.train import read_tables

    provider = provider or default_provider()
    lineage_tables = list(reference.lineage.tables)
    if against == "latest":
        against = provider.create_snapshot(settings, lineage_tables, "latest").id
    snapshot = provider.open_snapshot(settings, against)
    missing = sorted(set(lineage_tables) - set(snapshot.manifest.tables))
    if missing:
        raise MonitorError(f"snapshot {against} lacks {', '.join(missing)}, which the "
                           f"recipe of run {reference.target.run_id} reads; compare with a "
                           "snapshot of the same tables (--against latest makes one)",
                           snapshot_id=against)
    lineage = reference.lineage
    features = _recipe_features(settings, reference.target.recipe, read_tables(snapshot),
                                dict(lineage.params), lineage.seed)
    predictions = _predict(reference.model, features).tolist()
    return Current("snapshot", against, features, predictions,
                   snapshot_id=against, cut_digest=snapshot.manifest.digest)


def _frame(results: Sequence[ServedResult], reference: pl.DataFrame) -> pl.DataFrame:
    columns = reference.columns
    missing = sorted({c for r in results for c in columns if c not in r.instance})
    if missing:
        raise MonitorError(f"served instances lack the features {', '.join(missing)} the "
                           "model was trained on; the serving worker must write the instance "
                           "it predicted on")
    raw = {c: [r.instance[c] for r in results] for c in columns}
    try:
        return pl.DataFrame({c: pl.Series(c, raw[c], strict=False).cast(reference.schema[c])
                             for c in columns})
    except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
        raise MonitorError(f"served instances do not fit the training features' types "
                           f"({exc}); each feature must hold values of its training type"
                           ) from exc


def _scalar(prediction: Any) -> Any:
    if isinstance(prediction, list) and len(prediction) == 1:
        return prediction[0]
    return prediction


def current_from_results(settings: Settings, reference: Reference, window: int) -> Current:
    if window < 1:
        raise MonitorError(f"--window must be at least 1 result, not {window}")
    target = reference.target
    topic = results_topic(settings.topic_prefix, target.model)
    refused = {"errors": 0, "other_versions": 0}

    def keep(r: ServedResult) -> bool:
        # The window is the last N *predictions* of this version: a result of another
        # version says nothing about this one's training data, an error has no prediction.
        if r.version != target.version:
            refused["other_versions"] += 1
            return False
        if r.error is not None:
            refused["errors"] += 1
            return False
        return True

    ok, _ = read_results(settings, target.model, window, keep=keep)
    others = refused["other_versions"]
    if not ok:
        raise NoServedResults(
            f"{topic} holds no result of {target.model} version {target.version}"
            f"{f' ({others} of other versions)' if others else ''}; serve it (`tidelog "
            "serve`) or compare with a snapshot: --against latest", topic=topic)
    labels = read_labels(settings, target.model, {r.request_id for r in ok})
    labelled = [r for r in ok if r.request_id in labels]
    spans: dict[int, tuple[int, int]] = {}
    for r in ok:
        low, high = spans.get(r.partition, (r.offset, r.offset))
        spans[r.partition] = (min(low, r.offset), max(high, r.offset))
    identity = topic + "@" + ",".join(f"{p}:{a}-{b}" for p, (a, b) in sorted(spans.items()))
    return Current(
        "results", identity, _frame(ok, reference.features),
        [_scalar(r.prediction) for r in ok],
        latency_ms=[r.latency_ms for r in ok if r.latency_ms is not None],
        truth=[labels[r.request_id] for r in labelled],
        labelled_predictions=[_scalar(r.prediction) for r in labelled],
        errors=refused["errors"], other_versions=others)


# -- comparison -------------------------------------------------------------------------

def _distribution(reference: Any, current: Any, categorical: bool) -> dict[str, Any]:
    """Shares per bin (numbers) or per category, for the report's plots."""
    from monitoring.stattests import clean

    ref, cur = clean(reference), clean(current)
    if categorical:
        counts: dict[str, list[int]] = {}
        for i, sample in enumerate((ref, cur)):
            values, found = np.unique(sample, return_counts=True)
            for v, n in zip(values.tolist(), found.tolist(), strict=True):
                counts.setdefault(str(v), [0, 0])[i] += int(n)
        top = sorted(counts, key=lambda k: (-sum(counts[k]), k))[:_PLOT_CATEGORIES]
        return {"kind": "cat", "categories": top,
                "reference": [counts[k][0] / max(len(ref), 1) for k in top],
                "current": [counts[k][1] / max(len(cur), 1) for k in top]}
    r, c = ref.astype(float), cur.astype(float)
    edges = np.histogram_bin_edges(np.concatenate([r, c]), bins=_PLOT_BINS)
    return {"kind": "num", "edges": [float(e) for e in edges],
            "reference": (np.histogram(r, edges)[0] / max(len(r), 1)).tolist(),
            "current": (np.histogram(c, edges)[0] / max(len(c), 1)).tolist()}


def _latency(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    array = np.asarray(values, dtype=float)
    return {"p50": float(np.percentile(array, 50)), "p95": float(np.percentile(array, 95)),
            "p99": float(np.percentile(array, 99)), "mean": float(array.mean()),
            "max": float(array.max()), "count": float(len(array))}


def _is_scalar(value: Any) -> bool:
    return isinstance(value, int | float | str | bool) and not (
        isinstance(value, float) and math.isnan(value))


def compare(reference: Reference, current: Current,
            decay_threshold: float = DECAY_THRESHOLD) -> MonitorReport:
    columns = []
    distributions: dict[str, dict[str, Any]] = {}
    for name in reference.features.columns:
        ref = reference.features[name].to_numpy()
        cur = current.features[name].to_numpy()
        try:
            drift = column_drift(name, ref, cur)
        except ValueError:
            continue  # a column with no values on one side has no distribution to compare
        columns.append(drift)
        distributions[name] = _distribution(ref, cur, drift.kind == "cat")
    share, drifted = drift_share(columns)
    prediction = None
    preds = current.predictions
    if preds and all(_is_scalar(p) for p in preds):
        ref_preds = reference.predictions
        cat = reference.classifier or is_categorical(reference.predictions)
        prediction = column_drift("prediction", ref_preds, preds, categorical=cat)
        distributions["prediction"] = _distribution(ref_preds, preds, cat)
    shared = [c for c in reference.features.columns if c in current.features.columns]
    found = decay(reference.classifier, current.truth, current.labelled_predictions,
                  reference.recorded, decay_threshold)
    return MonitorReport(
        target=reference.target,
        current={"basis": current.basis, "identity": current.identity,
                 "rows": current.features.height, "reference_rows":
                 reference.features.height, "errors": current.errors,
                 "other_versions": current.other_versions,
                 "snapshot_id": current.snapshot_id, "cut_digest": current.cut_digest},
        columns=tuple(columns), drift_share=share, dataset_drift=drifted,
        prediction=prediction, latency=_latency(current.latency_ms),
        outliers=outliers(reference.features.select(shared), current.features.select(shared)),
        decay=found, distributions=distributions, generated_at=_now())


def monitor_report(settings: Settings, model: str, alias: str = "champion", *,
                   against: str | None = None, window: int | None = None,
                   experiment: str = "tidelog", decay_threshold: float = DECAY_THRESHOLD,
                   allow_recipe: Callable[[str], None] | None = None,
                   reference: Reference | None = None,
                   provider: SnapshotProvider | None = None) -> MonitorReport:
    """Compare `model@alias`'s training data with a snapshot (`against`) or with the
    newest `window` served results (the default: the last 1000)."""
    if against is not None and window is not None:
        raise MonitorError("compare with a snapshot (--against) or with served results "
                           "(--window), not both")
    reference = reference or load_reference(settings, model, alias, experiment, allow_recipe,
                                            provider)
    if against is not None:
        current = current_from_snapshot(settings, reference, against, provider)
    else:
        current = current_from_results(settings, reference, window or DEFAULT_WINDOW)
    return compare(reference, current, decay_threshold)
